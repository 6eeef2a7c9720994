//! The upload load client of `bench/run`: registers handles through the gateway, then streams
//! generated multipart uploads to `/uploads`, many at once, and reports what was accepted and how fast.
//!
//! `upgate-load --addr 127.0.0.1:8080 --size 1073741824 --count 1 --parallel 1`
//! prints one line: `accepted=N of=N bytes=B secs=S mbps=M` (and `url=...` with `--print-url`).
//! The upstream must answer `GET /register` with `X-Upgate-Register` (bench/run's nginx does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const BOUNDARY: &str = "upgate-bench-boundary-5d1c0e9b";
/// The piece the generated file is cut from, sent again and again (zero-copy).
const PIECE: usize = 1 << 20;

struct Args {
    addr: SocketAddr,
    size: u64,
    count: usize,
    parallel: usize,
    ext: String,
    print_url: bool,
    keep: bool,
    /// Also write the file's bytes here (to serve the same file from elsewhere).
    write_file: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse()?,
        size: 1 << 20,
        count: 1,
        parallel: 1,
        ext: "pdf".into(),
        print_url: false,
        keep: false,
        write_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value()?.parse()?,
            "--size" => a.size = value()?.parse()?,
            "--count" => a.count = value()?.parse()?,
            "--parallel" => a.parallel = value()?.parse()?,
            "--ext" => a.ext = value()?,
            "--print-url" => a.print_url = true,
            "--keep" => a.keep = true,
            "--write-file" => a.write_file = Some(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(
        a.count > 0 && a.parallel > 0,
        "--count and --parallel must be positive"
    );
    Ok(a)
}

/// A browser as the gateway sees it: the identity cookie and the handle it was given.
struct Browser {
    cookie: String,
    handle: String,
}

type SendRequest<B> = hyper::client::conn::http1::SendRequest<B>;

async fn connect<B>(addr: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn register(addr: SocketAddr) -> anyhow::Result<Browser> {
    let mut send = connect::<Full<Bytes>>(addr).await?;
    let req = Request::get("/register")
        .header("host", addr.to_string())
        .body(Full::default())?;
    let res = send.send_request(req).await?;
    ensure!(res.status() == StatusCode::OK, "register: {}", res.status());
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let handle = header("x-upload-handle").context("no X-Upload-Handle")?;
    let cookie = header("set-cookie").context("no identity cookie")?;
    let cookie = cookie.split(';').next().unwrap_or_default().to_string();
    Ok(Browser { cookie, handle })
}

/// The file's bytes: a PDF header, then a fixed pseudo-random piece repeated (binary, with NULs).
fn piece() -> Bytes {
    let mut v = vec![0u8; PIECE];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 56) as u8;
    }
    v[..16].copy_from_slice(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n\0");
    Bytes::from(v)
}

/// The multipart body of one file part, streamed in [`PIECE`]-sized frames; exact length known.
fn multipart(
    name: &str,
    size: u64,
    piece: &Bytes,
) -> (
    u64,
    impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + use<>,
) {
    let head = Bytes::from(format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ));
    let tail = Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"));
    let len = head.len() as u64 + size + tail.len() as u64;
    let mut frames = vec![head];
    let mut left = size;
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        frames.push(piece.slice(..n));
        left -= n as u64;
    }
    frames.push(tail);
    let stream = futures_util::stream::iter(frames.into_iter().map(|b| Ok(Frame::data(b))));
    (len, StreamBody::new(stream))
}

async fn upload(
    addr: SocketAddr,
    b: &Browser,
    name: &str,
    size: u64,
    piece: &Bytes,
) -> anyhow::Result<serde_json::Value> {
    let (len, body) = multipart(name, size, piece);
    let mut send = connect(addr).await?;
    let req = Request::post("/uploads")
        .header("host", addr.to_string())
        .header("cookie", &b.cookie)
        .header("x-upload-handle", &b.handle)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("content-length", len)
        .body(body)?;
    let res = send.send_request(req).await?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    ensure!(
        status == StatusCode::OK && json["accepted"] == true,
        "upload {name}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(json)
}

async fn delete_all(addr: SocketAddr, b: &Browser) -> anyhow::Result<()> {
    let mut send = connect::<Full<Bytes>>(addr).await?;
    let req = Request::delete("/uploads")
        .header("host", addr.to_string())
        .header("cookie", &b.cookie)
        .header("x-upload-handle", &b.handle)
        .body(Full::default())?;
    let res = send.send_request(req).await?;
    ensure!(
        res.status() == StatusCode::NO_CONTENT,
        "delete: {}",
        res.status()
    );
    Ok(())
}

async fn run(a: Args) -> anyhow::Result<()> {
    // Handles first, a few at a time (each is a durable registration), outside the timed part.
    let gate = Arc::new(Semaphore::new(16));
    let mut registering = Vec::new();
    for _ in 0..a.count {
        let gate = gate.clone();
        registering.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            register(a.addr).await
        }));
    }
    let mut browsers = Vec::new();
    for r in registering {
        browsers.push(Arc::new(r.await??));
    }
    let piece = piece();
    if let Some(path) = &a.write_file {
        ensure!(
            a.size <= PIECE as u64,
            "--write-file: at most {PIECE} bytes"
        );
        std::fs::write(path, &piece[..a.size as usize])?;
    }
    let gate = Arc::new(Semaphore::new(a.parallel));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, b) in browsers.iter().enumerate() {
        let (gate, b, piece, ext) = (gate.clone(), b.clone(), piece.clone(), a.ext.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            upload(a.addr, &b, &format!("bench-{i}.{ext}"), a.size, &piece).await
        }));
    }
    let (mut accepted, mut url, mut first_error) = (0usize, None, None);
    for t in tasks {
        match t.await? {
            Ok(json) => {
                accepted += 1;
                url = url.or_else(|| json["url"].as_str().map(str::to_string));
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = a.size * accepted as u64;
    let mbps = bytes as f64 / secs / 1e6;
    let mut line = format!(
        "accepted={accepted} of={} bytes={bytes} secs={secs:.3} mbps={mbps:.1}",
        a.count
    );
    if a.print_url
        && let Some(url) = url
    {
        line.push_str(&format!(" url={url}"));
    }
    println!("{line}");
    if let Some(e) = first_error {
        eprintln!("upgate-load: first failure: {e:#}");
    }
    if !a.keep {
        for b in &browsers {
            delete_all(a.addr, b).await?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async { tokio::time::timeout(Duration::from_secs(600), run(a)).await })
        .context("timed out")?
}
