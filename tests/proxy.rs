//! Forwarding: bodies both ways, header hygiene, identity, the upstream signature, upgrades and upstream failures.

use http::{Method, Request, StatusCode};

use crate::util::*;

#[tokio::test]
async fn get_and_post_pass_through_unchanged() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;

    let (res, body) = get(&gw.url("/some/page?a=1&b=%20x")).await;
    assert_eq!(res.status, StatusCode::OK);
    let e = echo(&body);
    assert_eq!(
        (e.method.as_str(), e.uri.as_str()),
        ("GET", "/some/page?a=1&b=%20x")
    );
    assert_eq!(e.header("host"), Some(gw.addr.to_string().as_str()));

    let req = Request::post(gw.url("/form"))
        .header("content-type", "text/plain")
        .body(upgate::body::full("hello upstream"))
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(res.status, StatusCode::OK);
    let e = echo(&body);
    assert_eq!(e.method, "POST");
    assert_eq!(e.body_len, 14);
    assert_eq!(e.header("content-type"), Some("text/plain"));
    assert_eq!(
        e.body_sha256,
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            b"hello upstream"
        ))
    );
}

#[tokio::test]
async fn chunked_request_and_large_response_stream() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let len = 20 * 1024 * 1024 + 7;
    let req = Request::put(gw.url("/chunked"))
        .body(pattern_body(len, false))
        .expect("req");
    let (_, body) = send(req).await;
    let e = echo(&body);
    assert_eq!(
        e.header("transfer-encoding"),
        Some("chunked"),
        "{:?}",
        e.headers
    );
    assert_eq!(e.body_len, len);
    assert_eq!(e.body_sha256, pattern_digest(len));

    let res = get_streaming(&gw.url(&format!("/stream/{len}")), 30).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (got, digest) = within(60, digest_body(res.into_body())).await;
    assert_eq!((got, digest), (len, pattern_digest(len)));
}

#[tokio::test]
async fn every_forged_header_is_removed() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let req = Request::get(gw.url("/forged"))
        .header("X-Upload-Handle", "stolen")
        .header("X-Upload-Session", "forged-session")
        .header("x_upload_session", "forged-underscore")
        .header("X-Upgate-Client", "forged-client")
        .header("X-UPGATE-SIGNATURE", "t=1,v1=00")
        .header("x_upgate_client", "forged-underscore")
        .header("X-Upgate-Anything", "x")
        .header("Forwarded", "for=6.6.6.6")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Host", "evil.test")
        .header("X-Forwarded-Proto", "https")
        .header("x_forwarded_for", "6.6.6.6")
        .header("X-Request-Id", "forged-id")
        .header("Connection", "x-hop-secret")
        .header("X-Hop-Secret", "1")
        .header("Keep-Alive", "timeout=1")
        .header("TE", "trailers")
        .header("X-Kept", "yes")
        .body(upgate::body::empty())
        .expect("req");
    let (res, body) = send(req).await;
    let e = echo(&body);
    for name in [
        "x-upload-handle",
        "x-upload-session",
        "x_upload_session",
        "x_upgate_client",
        "x-upgate-anything",
        "forwarded",
        "x_forwarded_for",
        "x-hop-secret",
        "keep-alive",
        "te",
        "x-upgate-client",
    ] {
        assert!(
            !e.headers.contains_key(name),
            "{name} reached the upstream: {:?}",
            e.headers
        );
    }
    assert_eq!(
        e.header("x-upgate-signature")
            .map(|s| s.starts_with("t=1,")),
        Some(false)
    );
    assert_eq!(e.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        e.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    assert_eq!(e.header("x-kept"), Some("yes"));
    let id = e.header("x-request-id").expect("request id");
    assert_ne!(id, "forged-id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(
        res.headers["x-request-id"], id,
        "the client sees the same id"
    );
}

#[tokio::test]
async fn trusted_proxy_headers_are_kept_and_appended() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "trusted_proxies = [\"127.0.0.0/8\"]\n").await;
    let req = Request::get(gw.url("/"))
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "app.example")
        .header("X-Request-Id", "edge-42")
        .header("X-Upgate-Client", "still-forged")
        .body(upgate::body::empty())
        .expect("req");
    let (res, body) = send(req).await;
    let e = echo(&body);
    assert_eq!(e.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
    assert_eq!(e.header("x-forwarded-host"), Some("app.example"));
    assert_eq!(e.header("x-request-id"), Some("edge-42"));
    assert_eq!(res.headers["x-request-id"], "edge-42");
    assert!(
        e.header("x-upgate-client").is_none(),
        "never trusted, even from a proxy"
    );
}

/// The upstream's check of `X-Upgate-Signature`, done here with the secret and nothing of upgate's.
fn verify_signature(e: &Echo, method: &str, path: &str, client: &str, session: &str) {
    let header = e.header("x-upgate-signature").expect("signature header");
    let (t, v1) = header.split_once(",v1=").expect("t=..,v1=..");
    let t = t.strip_prefix("t=").expect("t=");
    let now = upgate::proxy::unix_now();
    assert!(t.parse::<u64>().expect("unix time").abs_diff(now) < 60);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let msg = format!("upstream\n{t}\n{method}\n{path}\n{client}\n{session}");
    let tag = hex::decode(v1).expect("hex");
    ring::hmac::verify(&key, msg.as_bytes(), &tag).expect("signature verifies with the secret");
}

#[tokio::test]
async fn identity_header_and_signature() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(
        &up.url(),
        "[identity]\nfrom = \"cookie:sessionid\"\nissue_cookie = false\n",
    )
    .await;
    let req = Request::post(gw.url("/api/x?y=2"))
        .header("cookie", "csrftoken=a; sessionid=django-session-1")
        .body(upgate::body::empty())
        .expect("req");
    let (_, body) = send(req).await;
    let e = echo(&body);
    let key = client_key("django-session-1");
    assert_eq!(e.header("x-upgate-client"), Some(key.as_str()));
    verify_signature(&e, "POST", "/api/x?y=2", &key, "");

    let (_, body) = get(&gw.url("/anon")).await;
    let e = echo(&body);
    assert!(e.header("x-upgate-client").is_none());
    verify_signature(&e, "GET", "/anon", "", "");
}

#[tokio::test]
async fn identity_from_a_header_and_unsigned_issued_cookies_are_ignored() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(
        &up.url(),
        "[identity]\nfrom = \"header:Authorization\"\nissue_cookie = false\n",
    )
    .await;
    let req = Request::get(gw.url("/"))
        .header("authorization", "Bearer abc")
        .body(upgate::body::empty())
        .expect("req");
    let e = echo(&send(req).await.1);
    assert_eq!(
        e.header("x-upgate-client"),
        Some(client_key("Bearer abc").as_str())
    );
    assert_eq!(
        e.header("authorization"),
        Some("Bearer abc"),
        "the header itself still goes upstream"
    );

    // With issue_cookie, only a cookie upgate signed is an identity.
    let gw = TestGateway::start(&up.url(), "").await;
    let req = Request::get(gw.url("/"))
        .header("cookie", "upgate_client=made-up")
        .body(upgate::body::empty())
        .expect("req");
    let e = echo(&send(req).await.1);
    assert!(e.header("x-upgate-client").is_none(), "{:?}", e.headers);
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let (mut ws, res) = within(
        10,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)),
    )
    .await
    .expect("ws handshake");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "upgate"] {
        within(10, ws.send(Message::text(text)))
            .await
            .expect("send");
        let back = within(10, ws.next()).await.expect("open").expect("message");
        assert_eq!(back, Message::text(text));
    }
    let big = vec![7u8; 1 << 20];
    within(10, ws.send(Message::binary(big.clone())))
        .await
        .expect("send");
    assert_eq!(
        within(10, ws.next())
            .await
            .expect("open")
            .expect("message")
            .into_data(),
        big
    );
    within(10, ws.close(None)).await.expect("close");
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gw = TestGateway::start(&format!("http://{closed}"), "").await;
    let (res, body) = get(&gw.url("/")).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["error"], "upstream_unreachable");
    assert!(res.headers.contains_key("x-request-id"));

    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    // A config of its own: the upstream table is the one being changed.
    // 1 s: long enough that a busy machine does not turn the fast answer below into a 504.
    let text = config_text(dir.path(), &up.url(), "")
        .replace("response_timeout = \"10s\"", "response_timeout = \"1s\"");
    assert!(text.contains("\"1s\""), "{text}");
    let config = upgate::config::Config::from_file(
        upgate::config::parse_file(&text).expect("parse"),
        dir.path(),
    )
    .expect("config");
    let running = within(10, upgate::cli::start(config)).await.expect("start");
    let (res, body) = get(&format!("http://{}/sleep/3000", running.http[0])).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(&body)["error"], "upstream_timeout");
    let (res, _) = get(&format!("http://{}/sleep/10", running.http[0])).await;
    assert_eq!(res.status, StatusCode::OK, "a fast answer still passes");
    running.stop();
}

#[tokio::test]
async fn control_health_readiness_and_metrics() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let (res, _) = get(&gw.control_url("/healthz")).await;
    assert_eq!(res.status, StatusCode::OK);
    let (res, body) = get(&gw.control_url("/readyz")).await;
    assert_eq!(res.status, StatusCode::OK, "{body:?}");
    get(&gw.url("/count-me")).await;
    let (_, body) = get(&gw.control_url("/metrics")).await;
    let text = String::from_utf8_lossy(&body);
    for series in [
        "upgate_requests_total{class=\"2xx\"}",
        "upgate_requests_in_flight",
        "upgate_upstream_latency_seconds_bucket",
        "upgate_received_bytes_total",
        "upgate_sent_bytes_total",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    drop(up);
    // The upstream's listener closes once its aborted task is dropped: poll for it.
    let body = within(10, async {
        loop {
            let (res, body) = get(&gw.control_url("/readyz")).await;
            if res.status == StatusCode::SERVICE_UNAVAILABLE {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(json(&body)["upstream"], false);
    assert_eq!(json(&body)["storage"], true);
    let (res, _) = send(
        Request::builder()
            .method(Method::GET)
            .uri(gw.control_url("/nope"))
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_upgate_prefix_is_never_forwarded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let (res, body) = get(&gw.url("/_upgate/uploader.js")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/javascript")
    );
    assert!(String::from_utf8_lossy(&body).contains("export function upload"));
    let (res, body) = get(&gw.url("/_upgate/secret-admin")).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"], "not_found");
    assert_eq!(
        up.hits(),
        0,
        "nothing under /_upgate/ reached the application"
    );
}

#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    use futures_util::StreamExt;
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let text = config_text(dir.path(), &up.url(), "")
        .replace("response_timeout = \"10s\"", "response_timeout = \"600ms\"");
    let config = upgate::config::Config::from_file(
        upgate::config::parse_file(&text).expect("parse"),
        dir.path(),
    )
    .expect("config");
    let running = within(10, upgate::cli::start(config)).await.expect("start");
    // Ten chunks 300 ms apart: the body alone takes five times the response timeout.
    let chunks = futures_util::stream::iter(0..10).then(|_| async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from_static(
            b"0123456789",
        )))
    });
    let body = upgate::body::boxed(http_body_util::StreamBody::new(chunks));
    let req = Request::put(format!("http://{}/slow-upload", running.http[0]))
        .body(body)
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(res.status, StatusCode::OK, "{body:?}");
    assert_eq!(echo(&body).body_len, 100);
    running.stop();
}

/// A raw HTTP/1.1 upstream: answers every request head with `200 ok` (a `POST` to `/early` with
/// `413` at once, leaving its body unread for `stall`), counting the connections it accepted;
/// `close_after_each` closes each connection after one answer, without saying so, and
/// `lose_second` closes it when a second request has come, without answering it (an upstream
/// closing an idle connection just as a request goes out on it).
async fn raw_upstream(
    close_after_each: bool,
    stall: std::time::Duration,
    lose_second: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = 0;
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    if lose_second && answered == 1 {
                        return;
                    }
                    answered += 1;
                    if head.starts_with("post /early") {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                        tokio::time::sleep(stall).await;
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() || close_after_each {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_closed_ones_replaced() {
    use std::sync::atomic::Ordering;
    let (url, accepted) = raw_upstream(false, std::time::Duration::ZERO, false).await;
    let gw = TestGateway::start(&url, "").await;
    let client = client();
    for _ in 0..20 {
        let (res, _) = get_on(&client, &gw.url("/")).await;
        assert_eq!(res.status, StatusCode::OK);
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=upgate::server::workers()).contains(&opened),
        "20 requests one after another used {opened} upstream connections"
    );

    // An upstream that drops each connection after one answer: every request still gets through,
    // on a new connection.
    let (url, accepted) = raw_upstream(true, std::time::Duration::ZERO, false).await;
    let gw = TestGateway::start(&url, "").await;
    for i in 0..10 {
        let (res, body) = get(&gw.url(&format!("/{i}"))).await;
        assert_eq!(res.status, StatusCode::OK, "request {i}: {body:?}");
        assert_eq!(&body[..], b"ok");
        // Let the closing connection's end reach the gateway before the next request.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn a_connection_still_sending_a_body_is_not_reused() {
    // The upstream answers 413 at once and leaves the body unread for 30 s: that connection is
    // busy until then (1 GiB cannot all wait in socket buffers), and the next requests must not
    // wait for it.
    let (url, _) = raw_upstream(false, std::time::Duration::from_secs(30), false).await;
    let gw = TestGateway::start(&url, "").await;
    let client = client();
    let req = Request::post(gw.url("/early"))
        .body(pattern_body(1 << 30, true))
        .expect("req");
    let res = within(10, client.request(req)).await.expect("response");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(res);
    for i in 0..4 {
        let res = within(5, client.get(gw.url("/next").parse().expect("uri")))
            .await
            .expect("response");
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
    }
}

#[tokio::test]
async fn a_bodiless_idempotent_request_lost_on_a_pooled_connection_is_sent_again() {
    use std::sync::atomic::Ordering;
    // Every upstream connection answers one request and drops the next unanswered.
    let (url, accepted) = raw_upstream(false, std::time::Duration::ZERO, true).await;
    let gw = TestGateway::start(&url, "").await;
    let client = client();
    for i in 0..4 {
        if i > 0 {
            // The pooled connection has been idle long enough to be closed by an upstream's
            // keep-alive timeout: what this test is about, not a wait for readiness.
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
        let (res, _) = get_on(&client, &gw.url(&format!("/get/{i}"))).await;
        assert_eq!(res.status, StatusCode::OK, "GET {i}");
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 4,
        "each GET after the first needed a new connection"
    );

    // A POST with a body is never sent twice: the lost one is a 502.
    let mut refused = 0;
    for i in 0..4 {
        let req = Request::post(gw.url(&format!("/post/{i}")))
            .body(upgate::body::full("x"))
            .expect("req");
        let (res, _) = send_on(&client, req).await;
        if res.status == StatusCode::BAD_GATEWAY {
            refused += 1;
        } else {
            assert_eq!(res.status, StatusCode::OK, "POST {i}");
        }
    }
    assert!(
        refused > 0,
        "a POST lost on a pooled connection is not replayed"
    );
}

/// Sends a gateway a `POST` head announcing 100 bytes and only the first 10 of them, then reads
/// the answer head and what follows it (at most 4 KiB); the connection stays open.
async fn stall_a_body(gw: &TestGateway) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tcp(gw.addr).await;
    let head = b"POST /form HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n0123456789";
    within(5, stream.write_all(head))
        .await
        .expect("a tenth of the body");
    let mut answer = vec![0u8; 4096];
    let n = within(15, stream.read(&mut answer))
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    (stream, text)
}

/// A proxied request body that stops arriving is cut after `idle_timeout` (nginx's
/// `client_body_timeout`), rather than holding the upstream's connection (and, behind it, one of
/// the application's workers) for as long as the client likes.
#[tokio::test]
async fn a_proxied_body_that_stalls_is_408() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "idle_timeout = \"500ms\"\n").await;
    let (_stream, text) = stall_a_body(&gw).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

/// A client that stalls after the upstream has answered early (before reading the body) is cut
/// too: the upstream connection, which hyper goes on feeding with the body, is closed after
/// `idle_timeout` rather than held until the client goes.
#[tokio::test]
async fn a_body_stalled_after_an_early_answer_lets_the_upstream_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (released, let_go) = tokio::sync::oneshot::channel::<()>();
    let url = one_connection_upstream(|mut stream| async move {
        let mut buf = vec![0u8; 8192];
        let _ = stream.read(&mut buf).await;
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let _ = stream.write_all(answer).await;
        // Reads on until the gateway lets go of the connection.
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = released.send(());
    })
    .await;
    let gw = TestGateway::start(&url, "idle_timeout = \"500ms\"\n").await;
    let (_client, text) = stall_a_body(&gw).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    within(10, let_go)
        .await
        .expect("the upstream connection is let go");
}

/// An upstream that serves one connection with `serve`; its URL.
async fn one_connection_upstream<F, Fut>(serve: F) -> String
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", upstream.local_addr().expect("addr"));
    tokio::spawn(async move {
        let (stream, _) = upstream.accept().await.expect("accept");
        serve(stream).await;
    });
    url
}

/// A gateway of its own whose `upstream.response_timeout` is `timeout` (the upstream table is
/// the one changed, so the shared helper's extra text cannot set it).
async fn gateway_with_response_timeout(
    upstream: &str,
    timeout: &str,
) -> (upgate::server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let text = config_text(dir.path(), upstream, "").replace(
        "response_timeout = \"10s\"",
        &format!("response_timeout = \"{timeout}\""),
    );
    assert!(text.contains(timeout), "{text}");
    let config = upgate::config::Config::from_file(
        upgate::config::parse_file(&text).expect("parse"),
        dir.path(),
    )
    .expect("config");
    let running = within(10, upgate::cli::start(config)).await.expect("start");
    (running, dir)
}

/// Sends `POST /form` with a body of `len` zero bytes, written by a task of its own as fast as
/// the gateway takes them; the connection's reading half, for the answer.
async fn post_zeros(addr: std::net::SocketAddr, len: usize) -> tokio::net::tcp::OwnedReadHalf {
    use tokio::io::AsyncWriteExt;
    let stream = tcp(addr).await;
    let (read, mut write) = stream.into_split();
    tokio::spawn(async move {
        let head = format!("POST /form HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n");
        let _ = write.write_all(head.as_bytes()).await;
        let chunk = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if write.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        // Held open until the answer is read.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
    read
}

/// The answer on `read` until its body has `body_len` bytes (or the connection ends).
async fn answer(read: &mut tokio::net::tcp::OwnedReadHalf, body_len: usize, secs: u64) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 4096];
    within(secs, async {
        loop {
            // A reset once the gateway has answered and closed ends the answer too.
            let n = read.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if n == 0
                || text
                    .split_once("\r\n\r\n")
                    .is_some_and(|(_, b)| b.len() >= body_len)
            {
                return text.into_owned();
            }
        }
    })
    .await
}

/// An upstream that takes a request's head and then reads no more of it is let go after
/// `response_timeout` with the body still unsent (nginx's `proxy_send_timeout`): `504
/// upstream_timeout`, rather than the request and the upstream's connection held for good.
#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_504() {
    use tokio::io::AsyncReadExt;
    let url = one_connection_upstream(|mut stream| async move {
        let mut head = vec![0u8; 4096];
        let _ = stream.read(&mut head).await;
        // Reads nothing more, and keeps the connection open.
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    })
    .await;
    let (running, _dir) = gateway_with_response_timeout(&url, "1s").await;
    // Far more than the sockets' buffers between the gateway and the upstream hold.
    let mut read = post_zeros(running.http[0], 256 << 20).await;
    let text = answer(&mut read, 1, 20).await;
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("upstream_timeout"), "{text}");
    running.stop();
}

/// An upstream that reads a large body slowly but steadily, pausing less than
/// `response_timeout` between reads, is never cut, though the whole body takes longer.
#[tokio::test]
async fn an_upstream_that_reads_slowly_but_steadily_gets_the_whole_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let len = 48usize << 20;
    let url = one_connection_upstream(move |mut stream| async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut seen = Vec::new();
        // The head, then the body a mebibyte at a time with a pause between reads.
        let body_start = loop {
            let n = stream.read(&mut buf).await.expect("read");
            seen.extend_from_slice(&buf[..n]);
            if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let mut got = seen.len() - body_start;
        while got < len {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut chunk = 0;
            while chunk < (1 << 20) && got < len {
                let n = stream.read(&mut buf[chunk..]).await.expect("read");
                assert!(n > 0, "the gateway closed the connection");
                chunk += n;
                got += n;
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nread {:>4}",
            got >> 20
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    })
    .await;
    // 48 reads 100 ms apart: the whole body takes well over the timeout. (The timeout is ample
    // for what the socket buffers still hold when the last byte has left the gateway's hands:
    // the wait for the answer starts then, as nginx's `proxy_read_timeout` does.)
    let (running, _dir) = gateway_with_response_timeout(&url, "3s").await;
    let mut read = post_zeros(running.http[0], len).await;
    let text = answer(&mut read, 9, 60).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("read   48"), "{text}");
    running.stop();
}

/// An upstream that answers early, streaming its answer, and never reads the body: the answer
/// reaches the client whole (each piece of it is progress on the connection, as nginx stops
/// sending a body once the answer has come), though the body's writes wait far longer than
/// `response_timeout`.
#[tokio::test]
async fn an_early_answer_streams_whole_while_the_body_waits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = one_connection_upstream(|mut stream| async move {
        let mut head = vec![0u8; 4096];
        let _ = stream.read(&mut head).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n")
            .await;
        for piece in 0..5u8 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let _ = stream.write_all(&[b'0' + piece; 10]).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    })
    .await;
    let (running, _dir) = gateway_with_response_timeout(&url, "1s").await;
    let mut read = post_zeros(running.http[0], 256 << 20).await;
    let whole = answer(&mut read, 50, 20).await;
    assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
    let body = whole.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert_eq!(
        body, "00000000001111111111222222222233333333334444444444",
        "{whole}"
    );
    running.stop();
}
