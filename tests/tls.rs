//! HTTPS through rustls: ALPN h2 and http/1.1 both reach the upstream.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;

use crate::util::*;

async fn tls_gateway(up: &TestUpstream) -> (TestGateway, rustls::RootCertStore) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let gw = TestGateway::start_with(&up.url(), |dir| {
        std::fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("cert");
        std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).expect("key");
        format!(
            "tls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        )
    })
    .await;
    (gw, roots)
}

async fn connect(
    gw: &TestGateway,
    roots: rustls::RootCertStore,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tcp(gw.running().https[0]).await;
    let name = ServerName::try_from("localhost").expect("name");
    within(
        10,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("tls handshake")
}

#[tokio::test]
async fn https_over_h2_and_http1() {
    let up = TestUpstream::start().await;
    let (gw, roots) = tls_gateway(&up).await;

    let tls = connect(&gw, roots.clone(), b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = within(
        10,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    let req = Request::post("https://localhost/over-h2")
        .body(upgate::body::full("h2 body"))
        .expect("req");
    let res = within(10, sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let e = echo(
        &within(10, res.into_body().collect())
            .await
            .expect("body")
            .to_bytes(),
    );
    assert_eq!((e.uri.as_str(), e.body_len), ("/over-h2", 7));
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        e.header("host"),
        Some("localhost"),
        "the :authority becomes Host"
    );

    let tls = connect(&gw, roots, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = within(10, hyper::client::conn::http1::handshake(TokioIo::new(tls)))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let req = Request::get("/over-h1")
        .header("host", "localhost")
        .body(upgate::body::empty())
        .expect("req");
    let res = within(10, sender.send_request(req))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let e = echo(
        &within(10, res.into_body().collect())
            .await
            .expect("body")
            .to_bytes(),
    );
    assert_eq!(e.uri, "/over-h1");
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
}
