//! The test bench: a real echo upstream, the real gateway on 127.0.0.1:0, clients with a timeout on every await.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use upgate::body::Body;

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef-0123456789";

/// Every await of the tests goes through this: a hang is a failure, not a stuck CI.
pub async fn within<F: Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s"))
}

/// A raw TCP connection to `addr`, for tests that write HTTP by hand.
pub async fn tcp(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    within(10, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect")
}

/// An HTTP/2 connection with prior knowledge to `addr`, driven by a task of its own that ends
/// when the connection does.
pub async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Body>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tcp(addr).await;
    let (send, conn) = within(
        5,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// A body of `len` bytes made on the fly (never held whole), with or without a known length.
pub struct Pattern {
    remaining: u64,
    exact: bool,
    chunk: Bytes,
}

impl Pattern {
    pub fn new(len: u64, exact: bool) -> Self {
        Self::of(binary_chunk(), len, exact)
    }

    /// Repeats `chunk` up to `len` bytes.
    pub fn of(chunk: Bytes, len: u64, exact: bool) -> Self {
        Self {
            remaining: len,
            exact,
            chunk,
        }
    }
}

impl http_body::Body for Pattern {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

pub fn pattern_body(len: u64, exact: bool) -> Body {
    upgate::body::boxed(Pattern::new(len, exact))
}

/// Streams a body through SHA-256, returning (length, hex digest).
pub async fn digest_body<B>(body: B) -> (u64, String)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            len += data.len() as u64;
            ctx.update(&data);
        }
    }
    (len, hex::encode(ctx.finish()))
}

/// 64 KiB of every byte value: binary content.
pub fn binary_chunk() -> Bytes {
    (0..64 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// 64 KiB of lines of lowercase letters: text content.
pub fn text_chunk() -> Bytes {
    (0..64 * 1024)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Like [`digest_body`], also keeping the first 64 KiB.
async fn digest_head(body: Incoming) -> (u64, String, Vec<u8>) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    let mut head = Vec::new();
    let mut body = std::pin::pin!(body);
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            ctx.update(&data);
            if head.len() < 64 * 1024 {
                head.extend_from_slice(&data[..data.len().min(64 * 1024 - head.len())]);
            }
        }
    }
    (len, hex::encode(ctx.finish()), head)
}

pub fn pattern_digest(len: u64) -> String {
    digest_of(&binary_chunk(), len)
}

/// SHA-256 of `chunk` repeated up to `len` bytes.
pub fn digest_of(chunk: &[u8], len: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        ctx.update(&chunk[..n]);
        left -= n as u64;
    }
    hex::encode(ctx.finish())
}

/// What the echo upstream saw of a request.
#[derive(Debug, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    pub uri: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: u64,
    pub body_sha256: String,
    /// The body itself, when it is at most 64 KiB.
    pub body: Option<String>,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A real HTTP/1.1 upstream: `/sleep/<ms>` delays its headers, `/stream/<n>` sends n bytes,
/// `/ws` is a WebSocket echo, `/accel?...` answers with an `X-Accel-Redirect` (see
/// [`accel_reply`]), anything else echoes the request as JSON.
pub struct TestUpstream {
    pub addr: SocketAddr,
    /// Requests received so far.
    hits: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        upstream_route(req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn upstream_route(
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(n) = path.strip_prefix("/stream/") {
        return Ok(Response::new(pattern_body(n.parse().unwrap_or(0), true)));
    }
    if path == "/ws" {
        return Ok(websocket_echo(req));
    }
    if path == "/reset" {
        // Headers and 64 KiB of a promised 1 MiB, then the connection breaks.
        use futures_util::StreamExt;
        let first = futures_util::stream::iter([Ok(http_body::Frame::data(binary_chunk()))]);
        let broken = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err(std::io::Error::other("reset"))
        });
        let body = upgate::body::boxed(http_body_util::StreamBody::new(first.chain(broken)));
        let mut res = Response::new(body);
        res.headers_mut()
            .insert("content-length", "1048576".parse().expect("value"));
        return Ok(res);
    }
    if path == "/accel" {
        return Ok(accel_reply(req.uri().query().unwrap_or("")));
    }
    // `h-<name>=<value>` query parameters become response headers: how tests make the upstream send directives.
    let directives: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("h-")?.to_string(), v)))
                .collect()
        })
        .unwrap_or_default();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    // `status=<code>` sets the answer's status.
    let status = req
        .uri()
        .query()
        .and_then(|q| url_pairs(q).into_iter().find(|(k, _)| k == "status"))
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let (body_len, body_sha256, head) = digest_head(req.into_body()).await;
    let json = serde_json::json!({
        "method": method, "uri": uri, "headers": headers, "body_len": body_len, "body_sha256": body_sha256,
        "body": (body_len <= 64 * 1024).then(|| String::from_utf8_lossy(&head).into_owned()),
    });
    let mut res = Response::new(upgate::body::full(json.to_string()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    for (k, v) in directives {
        let name = http::HeaderName::from_bytes(k.as_bytes()).expect("name");
        res.headers_mut().append(name, v.parse().expect("value"));
    }
    Ok(res)
}

/// The body of every `/accel` answer: a gateway that honours the directive never forwards it.
pub const ACCEL_DECOY: &str = "the upstream's own body, which must never reach the client";

/// `/accel?to=T[&status=S][&header=NAME][&ct=..][&cd=..][&cc=..]` (values percent-encoded):
/// status S (default 200), `NAME: T` (default `X-Accel-Redirect`), and Content-Type,
/// Content-Disposition and Cache-Control when given; the body is [`ACCEL_DECOY`].
fn accel_reply(query: &str) -> Response<Body> {
    let params: BTreeMap<&str, String> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            (k, v.into_owned())
        })
        .collect();
    let mut res = Response::new(upgate::body::full(ACCEL_DECOY));
    *res.status_mut() = params
        .get("status")
        .and_then(|s| StatusCode::from_bytes(s.as_bytes()).ok())
        .unwrap_or(StatusCode::OK);
    let directive = params
        .get("header")
        .map_or("x-accel-redirect", String::as_str);
    for (name, key) in [
        (directive, "to"),
        ("content-type", "ct"),
        ("content-disposition", "cd"),
        ("cache-control", "cc"),
    ] {
        if let Some(v) = params.get(key) {
            res.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
    }
    res
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", key)
        .body(upgate::body::empty())
        .expect("response")
}

/// A config for a gateway on 127.0.0.1:0 in front of `upstream`, with storage and secret in `dir`.
/// `extra` is TOML: its lines before the first `[table]` go into `[server]`, the rest is appended.
pub fn config_text(dir: &Path, upstream: &str, extra: &str) -> String {
    let split = extra.find("\n[").map_or(
        if extra.trim_start().starts_with('[') {
            0
        } else {
            extra.len()
        },
        |i| i + 1,
    );
    let (extra_server, extra) = extra.split_at(split);
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
{extra_server}
[upstream]
url = "{upstream}"
connect_timeout = "2s"
response_timeout = "10s"

[secret]
file = "{secret}"

[storage]
root = "{root}"

[control]
listen = "127.0.0.1:0"
{extra}
"#,
        secret = dir.join("secret").display(),
        root = dir.join("data").display(),
    )
}

pub fn write_secret(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("secret");
    std::fs::write(&path, SECRET).expect("secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The real gateway, in this process, on ports picked by the kernel; shut down on drop.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub control: SocketAddr,
    pub dir: tempfile::TempDir,
    extra: String,
    running: Option<upgate::server::Running>,
}

impl TestGateway {
    pub async fn start(upstream: &str, extra: &str) -> Self {
        Self::start_with(upstream, |_| extra.to_string()).await
    }

    /// `extra` sees the temp dir, for configs that name files in it.
    pub async fn start_with(upstream: &str, extra: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        write_secret(dir.path());
        let extra = extra(dir.path());
        Self::start_in(dir, upstream, extra).await
    }

    /// Stops this gateway, waits for it to drain (and let go of its storage); keeps its folder.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let running = self.running.take().expect("running");
        assert!(
            within(30, running.drain(Duration::from_secs(20))).await,
            "drained"
        );
        std::mem::replace(
            &mut self.dir,
            tempfile::TempDir::new().expect("placeholder"),
        )
    }

    /// Stops this gateway, waits for it to drain, and starts a new one on the same storage and secret.
    pub async fn restart(self, upstream: &str) -> Self {
        let extra = self.extra.clone();
        let dir = self.stop().await;
        Self::start_in(dir, upstream, extra).await
    }

    async fn start_in(dir: tempfile::TempDir, upstream: &str, extra: String) -> Self {
        let text = config_text(dir.path(), upstream, &extra);
        let config = upgate::config::Config::from_file(
            upgate::config::parse_file(&text).expect("parse"),
            dir.path(),
        )
        .expect("valid config");
        let running = within(10, upgate::cli::start(config))
            .await
            .expect("gateway starts");
        Self {
            addr: running
                .http
                .first()
                .copied()
                .or(running.https.first().copied())
                .expect("a listener"),
            control: running.control.expect("tcp control"),
            dir,
            extra,
            running: Some(running),
        }
    }

    /// The storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn running(&self) -> &upgate::server::Running {
        self.running.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The temp dir holding the secret (`secret`), the storage root (`data`) and any fixtures.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn control_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.control)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and collects the answer (small bodies only).
pub async fn send(req: Request<Body>) -> (http::response::Parts, Bytes) {
    send_on(&client(), req).await
}

/// [`send`] on a given client, whose keep-alive connections the next request may reuse.
pub async fn send_on(client: &TestClient, req: Request<Body>) -> (http::response::Parts, Bytes) {
    let res = within(120, client.request(req)).await.expect("request");
    let (parts, body) = res.into_parts();
    let bytes = within(120, body.collect()).await.expect("body").to_bytes();
    (parts, bytes)
}

/// A `GET` whose answer is read by the caller as it streams: the response once its headers
/// have come, within `secs`.
pub async fn get_streaming(url: &str, secs: u64) -> Response<Incoming> {
    let req = Request::get(url)
        .body(upgate::body::empty())
        .expect("request");
    within(secs, client().request(req)).await.expect("response")
}

pub async fn get(url: &str) -> (http::response::Parts, Bytes) {
    get_on(&client(), url).await
}

/// [`get`] on a given client (see [`send_on`]).
pub async fn get_on(client: &TestClient, url: &str) -> (http::response::Parts, Bytes) {
    let req = Request::get(url)
        .body(upgate::body::empty())
        .expect("request");
    send_on(client, req).await
}

pub fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

pub fn echo(bytes: &Bytes) -> Echo {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not an echo ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// The expected client key for an identity value, computed here independently of the gateway.
pub fn client_key(value: &str) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, format!("client\n{value}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())[..22].to_string()
}

/// A gateway binary run as its own process, for signals, memory and crash tests.
pub struct Spawned {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The TLS listener, when the config has one (logged before the control listener).
    pub https: Option<SocketAddr>,
    pub control: SocketAddr,
    pub log: Arc<std::sync::Mutex<String>>,
    /// The thread copying the gateway's stderr into `log`: done once the gateway's last line is in.
    reader: std::thread::JoinHandle<()>,
}

impl Spawned {
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// Starts with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_with_env(config: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_upgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn upgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().expect("log").push_str(&(line + "\n"));
            }
        });
        let (mut addr, mut https, mut control) = (None, None, None);
        while addr.is_none() || control.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("upgate did not start: {}", log.lock().expect("log")));
            let found = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok());
            if line.contains("kind=\"http\"") {
                addr = found;
            } else if line.contains("kind=\"https\"") {
                https = found;
            } else if line.contains("kind=\"control\"") {
                control = found;
            }
        }
        Self {
            child,
            addr: addr.expect("addr"),
            https,
            control: control.expect("control"),
            log,
            reader,
        }
    }

    /// Sends `sig` to the gateway by kill(2).
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Peak resident memory of the process so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// Waits for the process to exit, polling.
    /// Waits for the gateway to exit and for its last log line to be in `log`.
    pub async fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        within(secs, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait")
                    && self.reader.is_finished()
                {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("upgate.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// Decodes `a=1&b=%20x` pairs (form encoding, `+` as space).
pub fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// Form-encodes one value for a query string.
pub fn enc(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}
