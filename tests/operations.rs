//! Running it for months: reload, retention, metrics, and faults (resets, aborts, idle crowds, SIGTERM mid-upload).

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;

use crate::uploads::{multipart_type, pdf, register, register_at};
use crate::util::*;

async fn poll<F, Fut>(secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(secs, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

fn cert(dir: &std::path::Path, tag: &str) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.join(format!("{tag}.pem")), c.cert.pem()).expect("cert");
    std::fs::write(
        dir.join(format!("{tag}.key")),
        c.signing_key.serialize_pem(),
    )
    .expect("key");
    c.cert.der().to_vec()
}

/// The certificate a TLS listener presents now.
async fn presented(addr: std::net::SocketAddr) -> Vec<u8> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
        .with_no_client_auth();
    let tcp = tcp(addr).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = within(
        10,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

#[tokio::test]
async fn sighup_reloads_config_and_certificate_without_dropping_requests() {
    let (up1, up2) = (TestUpstream::start().await, TestUpstream::start().await);
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let (first, second) = (cert(dir.path(), "one"), cert(dir.path(), "two"));
    let tls = |tag: &str| {
        format!(
            "tls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{0}/{tag}.pem\"\ntls_key = \"{0}/{tag}.key\"\n",
            dir.path().display()
        )
    };
    let path = write_config(
        dir.path(),
        &config_text(dir.path(), &up1.url(), &tls("one")),
    );
    let gw = Spawned::start(&path);
    let https = gw.https.expect("https listener");
    assert_eq!(presented(https).await, first);

    let url = format!("http://{}/sleep/1500", gw.addr);
    let slow = tokio::spawn(async move { get(&url).await });
    poll(30, || async { up1.hits() > 0 }).await;
    write_config(
        dir.path(),
        &config_text(dir.path(), &up2.url(), &tls("two")),
    );
    gw.signal(rustix::process::Signal::HUP);
    let (res, _) = within(20, slow).await.expect("join");
    assert_eq!(
        res.status,
        StatusCode::OK,
        "the request in flight during the reload completed"
    );
    poll(30, || async {
        let before = up2.hits();
        get(&format!("http://{}/after", gw.addr)).await;
        up2.hits() > before
    })
    .await;
    poll(30, || async { presented(https).await == second }).await;

    // A broken config is refused; the one in force stays.
    write_config(
        dir.path(),
        &config_text(dir.path(), &up1.url(), "listen_backlog = 5\n"),
    );
    gw.signal(rustix::process::Signal::HUP);
    poll(30, || async {
        gw.log.lock().expect("log").contains("reload refused")
    })
    .await;
    assert!(
        gw.log
            .lock()
            .expect("log")
            .contains("server.listen_backlog")
    );
    let before = up2.hits();
    let (res, _) = get(&format!("http://{}/still", gw.addr)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(up2.hits(), before + 1, "still the reloaded upstream");
}

async fn control_post(gw: &TestGateway, path: &str) -> serde_json::Value {
    let (res, body) = send(
        Request::post(gw.control_url(path))
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{body:?}");
    json(&body)
}

/// `upgate ARGS`, awaited without blocking the runtime that serves the in-process gateway.
async fn upgate(args: &[&str], config: &std::path::Path) -> std::process::Output {
    let cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_upgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output();
    within(60, cmd).await.expect("run upgate")
}

#[tokio::test]
async fn retention_removes_what_outlived_its_session_through_control_and_cli() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(
        &up.url(),
        // 2 s: at least one whole second to upload with the handle (expiry counts whole seconds).
        "[uploads]\nhandle_ttl = \"2s\"\nretention = \"1s\"\n",
    )
    .await;
    let b = register(&gw, "short-lived").await;
    let (status, body) = b.upload(&[("f", Some("old.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::OK);
    let id = body["id"].as_str().expect("id").to_string();
    let blob = gw.storage().join("files").join(&id[..2]).join(&id);
    let report = control_post(&gw, "/v1/gc?dry_run=true").await;
    assert_eq!(
        (report["files"].as_u64(), report["dry_run"].as_bool()),
        (Some(0), Some(true)),
        "alive: {report}"
    );
    // Handle dead after 2 s, its session's files after 1 s more.
    poll(60, || async {
        control_post(&gw, "/v1/gc?dry_run=true").await["files"] == 1
    })
    .await;
    assert!(blob.exists(), "a dry run removes nothing");

    // `upgate gc` asks the running gateway through its control listener.
    let config = write_config(
        gw.dir(),
        &config_text(gw.dir(), &up.url(), "")
            .replace("127.0.0.1:0\"\n", &format!("{}\"\n", gw.control)),
    );
    let out = upgate(&["gc"], &config).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(
        (report["files"].as_u64(), report["sessions"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    assert_eq!(report["bytes"].as_u64(), Some(pdf().len() as u64));
    assert!(!blob.exists());
    let (_, metrics) = get(&gw.control_url("/metrics")).await;
    assert!(String::from_utf8_lossy(&metrics).contains("upgate_retention_removed_files_total 1"));

    // With no gateway running, `upgate gc` works on the storage itself.
    let dir = gw.stop().await;
    let config = write_config(dir.path(), &config_text(dir.path(), &up.url(), ""));
    let out = upgate(&["gc", "--dry-run"], &config).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"dry_run\":true"));
}

#[tokio::test]
async fn metrics_count_uploads_signatures_handles_and_disk() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "metered").await;
    b.upload(&[("f", Some("a.pdf"), &pdf())]).await;
    b.upload(&[("f", Some("a.png"), &pdf())]).await;
    get(&gw.url("/files/0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e/a.pdf?expires=1&sig=AAAA")).await;
    let text = within(10, async {
        loop {
            let text =
                String::from_utf8_lossy(&get(&gw.control_url("/metrics")).await.1).into_owned();
            if text.contains("upgate_handles_live 1")
                && !text.contains("upgate_storage_free_bytes 0")
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for series in [
        "upgate_uploads_total{result=\"accepted\"} 1",
        "upgate_uploads_total{result=\"unsupported_format\"} 1",
        &format!("upgate_stored_bytes_total {}", pdf().len()),
        "upgate_signature_failures_total{reason=\"bad_signature\"} 1",
        "upgate_storage_free_bytes",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

#[tokio::test]
async fn an_upstream_reset_mid_response_breaks_only_that_response() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let res = get_streaming(&gw.url("/reset"), 10).await;
    assert_eq!(res.status(), StatusCode::OK);
    let collected = within(10, res.into_body().collect()).await;
    assert!(
        collected.is_err(),
        "the client sees a broken body, not a short complete one"
    );
    let (res, _) = get(&gw.url("/fine")).await;
    assert_eq!(res.status, StatusCode::OK, "the gateway goes on");
}

#[tokio::test]
async fn ten_thousand_idle_connections_hold_bounded_memory() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // This process holds the client ends (the gateway, its own process, raises its own limit).
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let wanted = 10_000usize;
    if getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX) < wanted as u64 + 1000 {
        eprintln!(
            "SKIPPED ten_thousand_idle_connections_hold_bounded_memory: the open files limit is too low here"
        );
        return;
    }
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(
        dir.path(),
        &config_text(
            dir.path(),
            &up.url(),
            "header_timeout = \"2m\"\nidle_timeout = \"2m\"\n",
        ),
    );
    let gw = Spawned::start(&path);
    let baseline = gw.peak_rss();
    let mut idle = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        idle.push(tcp(gw.addr).await);
    }
    let (res, _) = get(&format!("http://{}/busy", gw.addr)).await;
    assert_eq!(
        res.status,
        StatusCode::OK,
        "still serving with {wanted} idle connections open"
    );
    let peak = gw.peak_rss();
    eprintln!(
        "{wanted} idle connections: peak RSS {:.1} MiB (baseline {:.1} MiB)",
        peak as f64 / 1048576.0,
        baseline as f64 / 1048576.0
    );
    assert!(peak < 128 << 20, "peak RSS {peak}");
    drop(idle);
}

/// A multipart upload that streams `chunks` × 64 KiB of text with a pause between chunks.
fn slow_upload(name: &str, chunks: usize, pause: Duration) -> upgate::body::Body {
    use futures_util::StreamExt;
    let head = bytes::Bytes::from(format!(
        "--{}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{name}\"\r\n\r\n",
        crate::uploads::BOUNDARY
    ));
    let tail = bytes::Bytes::from(format!("\r\n--{}--\r\n", crate::uploads::BOUNDARY));
    let middle = futures_util::stream::iter(0..chunks).then(move |_| async move {
        tokio::time::sleep(pause).await;
        text_chunk()
    });
    let stream = futures_util::stream::iter([head])
        .chain(middle)
        .chain(futures_util::stream::iter([tail]))
        .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b)));
    upgate::body::boxed(http_body_util::StreamBody::new(stream))
}

#[tokio::test]
async fn sigterm_during_uploads_lets_them_finish_and_lists_only_whole_files() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(
        dir.path(),
        &config_text(dir.path(), &up.url(), "shutdown_grace = \"30s\"\n"),
    );
    let mut gw = Spawned::start(&path);
    let b = register_at(gw.addr, "draining").await;
    let uploads: Vec<_> = (0..5)
        .map(|i| {
            let req = b
                .request("POST", "/uploads")
                .header("content-type", multipart_type())
                .body(slow_upload(
                    &format!("u{i}.txt"),
                    32,
                    Duration::from_millis(40),
                ))
                .expect("req");
            tokio::spawn(async move { send(req).await })
        })
        .collect();
    let tmp = dir.path().join("data/tmp");
    poll(20, || async {
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 5
    })
    .await;
    gw.signal(rustix::process::Signal::TERM);
    for u in uploads {
        let (res, body) = within(60, u).await.expect("join");
        assert_eq!(
            res.status,
            StatusCode::OK,
            "an upload in flight at SIGTERM completes: {body:?}"
        );
    }
    assert!(gw.wait_exit(30).await.success());
    let gw = Spawned::start(&path);
    let b = crate::uploads::Browser {
        base: format!("http://{}", gw.addr),
        ..b
    };
    let list = b.list().await;
    assert_eq!(list.len(), 5);
    assert!(
        list.iter().all(|f| f["size"] == 32 * 64 * 1024),
        "whole files only"
    );
}

#[tokio::test]
async fn kept_access_lines_are_written_while_the_server_runs() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(dir.path(), &config_text(dir.path(), &up.url(), ""));
    let gw = Spawned::start(&path);
    // An idle worker sleeps until it keeps a line; the first line wakes it to write them out.
    for round in 0..2 {
        let (res, _) = get_on(&client(), &format!("http://{}/kept/{round}", gw.addr)).await;
        assert_eq!(res.status, StatusCode::OK);
        let log = gw.log.clone();
        poll(10, || {
            let log = log.clone();
            async move {
                log.lock()
                    .expect("log")
                    .contains(&format!(" path=/kept/{round} "))
            }
        })
        .await;
    }
}

#[tokio::test]
async fn every_access_line_is_written_by_the_time_a_drained_server_exits() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(dir.path(), &config_text(dir.path(), &up.url(), ""));
    let mut gw = Spawned::start(&path);
    // Workers keep their lines for up to 100 ms: SIGTERM comes right after the last answer.
    let client = client();
    for i in 0..40 {
        let (res, _) = get_on(&client, &format!("http://{}/line/{i}", gw.addr)).await;
        assert_eq!(res.status, StatusCode::OK);
    }
    drop(client);
    gw.signal(rustix::process::Signal::TERM);
    assert!(gw.wait_exit(30).await.success());
    let log = gw.log.clone();
    poll(10, || {
        let log = log.clone();
        // The drain's own line comes after every access line, or the drain returned too soon.
        async move { log.lock().expect("log").contains(" drained") }
    })
    .await;
    let log = log.lock().expect("log").clone();
    for i in 0..40 {
        let line = log
            .lines()
            .find(|l| {
                l.contains(" INFO upgate::access: ") && l.contains(&format!(" path=/line/{i} "))
            })
            .unwrap_or_else(|| panic!("no access line for /line/{i}:\n{log}"));
        assert!(
            line.contains(" method=GET ") && line.contains(" status=200 "),
            "{line}"
        );
    }
}
