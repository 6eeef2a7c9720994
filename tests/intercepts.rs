//! Store-and-forward (SPEC §6): intercepted routes (form and JSON rewrites) and single-use slots.

use http::{Request, StatusCode};

use crate::uploads::{elf, multipart, multipart_type, pdf, png};
use crate::util::*;

const ROUTES: &str = r#"
[[intercept]]
path = "/profile/avatar"
accept = ["png", "jpeg"]
max_file_bytes = "5MiB"
rewrite = "form"

[[intercept]]
path = "/docs/*"
rewrite = "json"
"#;

async fn post(url: String, parts: &[(&str, Option<&str>, &[u8])]) -> (StatusCode, bytes::Bytes) {
    let req = Request::post(url)
        .header("content-type", multipart_type())
        .body(upgate::body::full(multipart(parts)))
        .expect("req");
    let (res, body) = send(req).await;
    (res.status, body)
}

fn blobs(gw: &TestGateway) -> usize {
    std::fs::read_dir(gw.storage().join("files"))
        .map(|d| {
            d.flat_map(|s| std::fs::read_dir(s.expect("shard").path()).expect("shard"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn form_rewrite_hands_the_application_a_description() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), ROUTES).await;
    let (status, body) = post(
        gw.url("/profile/avatar?x=1"),
        &[
            ("user", None, b"bob & co"),
            ("avatar", Some("me.png"), &png()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let e = echo(&body);
    assert_eq!(
        (e.method.as_str(), e.uri.as_str()),
        ("POST", "/profile/avatar?x=1")
    );
    assert_eq!(
        e.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = e.body.clone().expect("small body");
    assert_eq!(
        e.header("content-length"),
        Some(form.len().to_string().as_str())
    );
    let pairs = url_pairs(&form);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{k} missing in {form}"))
    };
    assert_eq!(get("user"), "bob & co");
    assert_eq!(get("avatar.name"), "me.png");
    assert_eq!(get("avatar.size"), png().len().to_string());
    assert_eq!(get("avatar.content_type"), "image/png");
    assert_eq!(
        get("avatar.sha256"),
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &png()))
    );
    assert!(uuid::Uuid::parse_str(get("avatar.id")).is_ok());
    assert_eq!(
        std::fs::read(get("avatar.path")).expect("the file is on disk"),
        png()
    );
    assert!(get("avatar.url").starts_with(&format!("/files/{}/me.png?expires=", get("avatar.id"))));
    assert!(e.header("x-upgate-signature").is_some());
    assert_eq!(
        e.header("x-upgate-intercept"),
        Some("form"),
        "the application can tell upgate's description"
    );

    // Not multipart: the route is the application's, untouched.
    let req = Request::post(gw.url("/profile/avatar"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(upgate::body::full("user=bob"))
        .expect("req");
    let (_, body) = send(req).await;
    assert_eq!(echo(&body).body.as_deref(), Some("user=bob"));
}

#[tokio::test]
async fn json_rewrite_on_a_prefix_route() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), ROUTES).await;
    let (status, body) = post(
        gw.url("/docs/contracts/new"),
        &[
            ("title", None, b"Lease"),
            ("scan", Some("lease.pdf"), &pdf()),
            ("scan", Some("annex.pdf"), &pdf()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let e = echo(&body);
    assert_eq!(e.header("content-type"), Some("application/json"));
    let v: serde_json::Value =
        serde_json::from_str(e.body.as_deref().expect("body")).expect("json");
    assert_eq!(v["fields"]["title"], "Lease");
    let files = v["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["field"], "scan");
    assert_eq!(files[0]["name"], "lease.pdf");
    assert_eq!(files[1]["name"], "annex.pdf");
    assert_eq!(files[0]["size"], pdf().len());
    assert_eq!(files[0]["content_type"], "application/pdf");
    assert_eq!(blobs(&gw), 2);
}

#[tokio::test]
async fn rejected_files_are_never_forwarded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), ROUTES).await;
    let before = up.hits();
    let (status, body) = post(
        gw.url("/profile/avatar"),
        &[("avatar", Some("me.png"), &elf())],
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(json(&body)["error"], "unsupported_format");
    let (status, _) = post(
        gw.url("/profile/avatar"),
        &[("avatar", Some("doc.pdf"), &pdf())],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "pdf is not accepted on this route"
    );
    assert_eq!(up.hits(), before, "nothing reached the application");
    assert_eq!(blobs(&gw), 0);
}

#[tokio::test]
async fn a_refusing_or_absent_application_gets_the_files_removed() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), ROUTES).await;
    let (status, body) = post(
        gw.url("/profile/avatar?status=422"),
        &[("avatar", Some("me.png"), &png())],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the application's answer reaches the client"
    );
    let form = echo(&body).body.expect("body");
    let path = url_pairs(&form)
        .into_iter()
        .find(|(k, _)| k == "avatar.path")
        .expect("path")
        .1;
    assert!(!std::path::Path::new(&path).exists(), "removed after a 4xx");
    assert_eq!(blobs(&gw), 0);

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gw = TestGateway::start(&format!("http://{dead}"), ROUTES).await;
    let (status, body) = post(
        gw.url("/profile/avatar"),
        &[("avatar", Some("me.png"), &png())],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["error"], "upstream_unreachable");
    assert_eq!(blobs(&gw), 0, "removed when the application is down");
}

/// A slot URL signed here with the secret, as an application (or the README's Python) would.
fn slot_url(query: &str) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, format!("url\nPOST\n/slots\n{query}").as_bytes());
    format!(
        "/slots?{query}&sig={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

fn slot_query(cb: &str, expires: u64, extra: &str) -> String {
    format!("cb={}{extra}&expires={expires}", enc(cb))
}

#[tokio::test]
async fn slots_are_signed_single_use_and_bounded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let now = upgate::proxy::unix_now();
    let url = slot_url(&slot_query(
        "/invoices/42/attach?via=slot",
        now + 600,
        "&accept=pdf&max-bytes=64KiB",
    ));
    let sig = url.rsplit("sig=").next().expect("sig").to_string();
    let (status, body) = post(gw.url(&url), &[("invoice", Some("inv.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let e = echo(&body);
    assert_eq!(
        (e.method.as_str(), e.uri.as_str()),
        ("POST", "/invoices/42/attach?via=slot")
    );
    assert_eq!(e.header("x-upgate-slot"), Some(sig.as_str()));
    assert!(e.header("x-upgate-signature").is_some());
    assert!(
        url_pairs(e.body.as_deref().expect("body"))
            .iter()
            .any(|(k, v)| k == "invoice.name" && v == "inv.pdf")
    );

    let (status, body) = post(gw.url(&url), &[("invoice", Some("inv.pdf"), &pdf())]).await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (StatusCode::CONFLICT, Some("slot_used"))
    );

    let check = |query: String,
                 parts: Vec<(&'static str, Option<&'static str>, Vec<u8>)>,
                 want: StatusCode,
                 code: &'static str| {
        let gw_url = gw.url(&slot_url(&query));
        async move {
            let parts: Vec<(&str, Option<&str>, &[u8])> = parts
                .iter()
                .map(|(f, n, b)| (*f, *n, b.as_slice()))
                .collect();
            let (status, body) = post(gw_url, &parts).await;
            assert_eq!(
                (status, json(&body)["error"].as_str()),
                (want, Some(code)),
                "{query}"
            );
        }
    };
    let file = || vec![("f", Some("a.pdf"), pdf())];
    check(
        slot_query("http://evil.test/x", now + 600, ""),
        file(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    check(
        slot_query("//evil.test/x", now + 600, ""),
        file(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    check(
        slot_query("/ok", now - 5, ""),
        file(),
        StatusCode::FORBIDDEN,
        "expired",
    )
    .await;
    check(
        slot_query("/ok", now + 600, "&max-bytes=1KiB"),
        vec![("f", Some("big.txt"), vec![b'a'; 4096])],
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    )
    .await;
    check(
        slot_query("/ok", now + 600, "&accept=png"),
        file(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_format",
    )
    .await;

    // A callback changed after signing.
    let signed = slot_url(&slot_query("/invoices/42/attach", now + 600, ""));
    let tampered = signed.replace(&enc("/invoices/42/attach"), &enc("/admin/delete"));
    let (status, body) = post(gw.url(&tampered), &[("f", Some("a.pdf"), &pdf())]).await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_signature"))
    );

    // Single use holds across a restart.
    let gw = gw.restart(&up.url()).await;
    let (status, _) = post(gw.url(&url), &[("invoice", Some("inv.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn look_alike_paths_and_fields_do_not_get_past_the_route() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), ROUTES).await;
    for path in [
        "/profile/%61vatar",
        "/profile//avatar",
        "/profile/./avatar",
        "/x/../profile/avatar",
    ] {
        let (status, body) = post(gw.url(path), &[("avatar", Some("me.png"), &elf())]).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path} was not intercepted: {body:?}"
        );
    }
    let (status, body) = post(
        gw.url("/profile/avatar"),
        &[
            ("avatar.path", None, b"/etc/passwd"),
            ("avatar", Some("me.png"), &png()),
        ],
    )
    .await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    assert_eq!(blobs(&gw), 0);
}

#[tokio::test]
async fn a_client_gone_before_the_application_answers_leaves_no_files() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "[[intercept]]\npath = \"/sleep/*\"\n").await;
    let req = Request::post(gw.url("/sleep/3000"))
        .header("content-type", multipart_type())
        .body(upgate::body::full(multipart(&[(
            "f",
            Some("a.pdf"),
            &pdf(),
        )])))
        .expect("req");
    let pending = tokio::spawn(async move { client().request(req).await });
    within(10, async {
        while up.hits() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(blobs(&gw), 1, "stored while the application thinks");
    pending.abort();
    within(10, async {
        while blobs(&gw) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}
