//! The binary as an operator runs it: config errors, SIGTERM drain, bounded memory, slow and idle clients.

use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

fn upgate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_upgate"))
        .args(args)
        .output()
        .expect("run upgate")
}

#[test]
fn bad_config_key_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let text = config_text(dir.path(), "http://127.0.0.1:1", "listen_backlog = 5\n");
    let path = write_config(dir.path(), &text);
    for cmd in ["check", "run"] {
        let out = upgate(&[cmd, "--config", path.to_str().expect("utf-8")]);
        assert!(!out.status.success(), "{cmd} accepted a bad key");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("server.listen_backlog"), "{cmd}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let text = config_text(
        dir.path(),
        "http://127.0.0.1:1",
        "idle_timeout = \"soon\"\n",
    );
    let path = write_config(dir.path(), &text);
    let out = upgate(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.idle_timeout"));
}

#[test]
fn check_prints_the_effective_config_and_keygen_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(
        dir.path(),
        &config_text(dir.path(), "http://127.0.0.1:1", ""),
    );
    let out = upgate(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("max_session_files = 100"),
        "defaults are shown: {printed}"
    );
    let out = upgate(&["keygen"]);
    let key = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(key.trim().len(), 43);
    assert!(
        key.trim()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
}

#[test]
fn world_readable_secret_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    std::fs::set_permissions(
        dir.path().join("secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let path = write_config(
        dir.path(),
        &config_text(dir.path(), "http://127.0.0.1:1", ""),
    );
    let out = upgate(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret.file"));
}

async fn in_flight(control: std::net::SocketAddr) -> u64 {
    let (_, body) = get(&format!("http://{control}/metrics")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("upgate_requests_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(
        dir.path(),
        &config_text(dir.path(), &up.url(), "shutdown_grace = \"20s\"\n"),
    );
    let mut gw = Spawned::start(&path);
    let url = format!("http://{}/sleep/1500", gw.addr);
    let slow = tokio::spawn(async move { get(&url).await });
    within(10, async {
        while in_flight(gw.control).await < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    gw.signal(rustix::process::Signal::TERM);
    let (res, body) = within(20, slow).await.expect("join");
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(echo(&body).uri, "/sleep/1500");
    let status = gw.wait_exit(20).await;
    assert!(
        status.success(),
        "{status}: {}",
        gw.log.lock().expect("log")
    );
    assert!(gw.log.lock().expect("log").contains("drained"));
}

/// A gateway config with no upstream, and the sd_notify socket the gateway is told to report to.
struct Notify {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    socket: std::path::PathBuf,
    sock: tokio::net::UnixDatagram,
}

impl Notify {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        write_secret(dir.path());
        let config = write_config(
            dir.path(),
            &config_text(dir.path(), "http://127.0.0.1:1", ""),
        );
        let socket = dir.path().join("notify.sock");
        let sock = tokio::net::UnixDatagram::bind(&socket).expect("bind notify socket");
        Self {
            _dir: dir,
            config,
            socket,
            sock,
        }
    }

    fn spawn(&self) -> Spawned {
        Spawned::start_with_env(&self.config, &[("NOTIFY_SOCKET", self.socket.as_os_str())])
    }

    /// The next datagram the gateway sent holds `line`.
    async fn hears(&self, line: &str) {
        let mut buf = [0u8; 1024];
        let n = within(20, self.sock.recv(&mut buf)).await.expect("recv");
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.lines().any(|l| l == line), "{line} in {got:?}");
    }
}

#[tokio::test]
async fn systemd_hears_ready_reloads_and_stopping() {
    let notify = Notify::new();
    let mut gw = notify.spawn();
    notify.hears("READY=1").await;
    let (res, _) = get(&format!("http://{}/healthz", gw.control)).await;
    assert_eq!(res.status, StatusCode::OK, "serving once ready");
    gw.signal(rustix::process::Signal::HUP);
    notify.hears("RELOADING=1").await;
    notify.hears("READY=1").await;
    gw.signal(rustix::process::Signal::TERM);
    notify.hears("STOPPING=1").await;
    assert!(gw.wait_exit(20).await.success());
}

/// systemd may stop a unit at any moment of its start, and the moment it hears READY=1: once
/// the gateway says it listens it must already catch SIGTERM, and drain rather than die of the
/// signal's default action. The signal goes out by kill(2) the instant the log says so.
#[tokio::test]
async fn sigterm_once_listening_still_drains() {
    let notify = Notify::new();
    // The window a regression would open is microseconds wide: try it often.
    for _ in 0..20 {
        let mut gw = notify.spawn();
        gw.signal(rustix::process::Signal::TERM);
        let status = gw.wait_exit(20).await;
        assert!(
            status.success(),
            "{status}: {}",
            gw.log.lock().expect("log")
        );
        notify.hears("READY=1").await;
        notify.hears("STOPPING=1").await;
    }
}

#[tokio::test]
async fn big_bodies_stream_with_bounded_memory() {
    let mib: u64 = std::env::var("UPGATE_TEST_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let len = mib << 20;
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(dir.path(), &config_text(dir.path(), &up.url(), ""));
    let gw = Spawned::start(&path);
    let req = Request::put(format!("http://{}/big", gw.addr))
        .body(pattern_body(len, true))
        .expect("req");
    let (_, body) = within(300, async { send(req).await }).await;
    let e = echo(&body);
    assert_eq!(
        (e.body_len, e.body_sha256.as_str()),
        (len, pattern_digest(len).as_str())
    );
    let res = within(
        30,
        client().request(
            Request::get(format!("http://{}/stream/{len}", gw.addr))
                .body(upgate::body::empty())
                .expect("req"),
        ),
    )
    .await
    .expect("response");
    assert_eq!(within(300, digest_body(res.into_body())).await.0, len);
    let peak = gw.peak_rss();
    eprintln!(
        "gateway peak RSS after {mib} MiB each way: {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(peak < 64 << 20, "peak RSS {peak} bytes");
}

async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slowloris_is_closed_by_the_header_timeout() {
    let up = TestUpstream::start().await;
    // A long idle timeout, so only the header timeout can end this connection.
    let gw = TestGateway::start(
        &up.url(),
        "header_timeout = \"500ms\"\nidle_timeout = \"1h\"\n",
    )
    .await;
    let mut slow = tcp(gw.addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let dripping = async {
        for _ in 0..100 {
            if slow.write_all(b"X-A: b\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    within(30, dripping).await;
    let got = within(10, read_until_closed(&mut slow)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "a slowloris request must not be served"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed by the timeout, not after the client gave up"
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(
        &up.url(),
        "header_timeout = \"1h\"\nidle_timeout = \"700ms\"\n",
    )
    .await;
    let mut idle = tcp(gw.addr).await;
    assert!(within(10, read_until_closed(&mut idle)).await.is_empty());

    // A kept-alive connection idles out after its request too.
    let mut kept = tcp(gw.addr).await;
    kept.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let got = within(10, read_until_closed(&mut kept)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn control_on_a_private_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let socket = dir.path().join("run/control.sock");
    let text = config_text(dir.path(), &up.url(), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"", socket.display()),
    );
    let config = upgate::config::Config::from_file(
        upgate::config::parse_file(&text).expect("parse"),
        dir.path(),
    )
    .expect("config");
    let running = within(10, upgate::cli::start(config)).await.expect("start");
    assert!(running.control.is_none());
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "only its owner may talk to the control API");
    let listen = upgate::config::ControlListen::Unix(socket);
    let (status, body) = within(
        10,
        upgate::control::client::post(&listen, "/v1/gc?dry_run=true"),
    )
    .await
    .expect("control answers");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body)["dry_run"], true);
    running.stop();
}

/// A kept-alive connection idle at shutdown is closed by it, not left to its idle timeout.
#[tokio::test]
async fn a_drain_closes_idle_connections() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(
        &up.url(),
        "header_timeout = \"1h\"\nidle_timeout = \"1h\"\n",
    )
    .await;
    let mut kept = tcp(gw.addr).await;
    kept.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 4096];
    let n = within(10, kept.read(&mut answer)).await.expect("answer");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    // And an HTTP/2 one (prior knowledge), after one request.
    let (mut send, h2_ended) = h2_connect(gw.addr).await;
    let req = Request::get("http://x/k")
        .body(upgate::body::empty())
        .expect("request");
    let res = within(10, send.send_request(req)).await.expect("h2 answer");
    assert_eq!(res.status(), StatusCode::OK);
    // With the idle timeout an hour away, the drain ends within its grace (20 s) only if the
    // shutdown closes both idle connections.
    let _dir = gw.stop().await;
    assert!(within(5, read_until_closed(&mut kept)).await.is_empty());
    let _ = within(5, h2_ended).await;
}
