//! Signed URLs (every refusal of SPEC §7), `/files` and `/media` serving, X-Accel-Redirect,
//! `upgate sign`, `POST /v1/sign` and the README's Python signer.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use upgate::db::{FileRecord, Owner};

use crate::util::*;

const PRIVATE: &str = "private text, for signed URLs only\n";
const OUTSIDE: &str = "TOP SECRET: outside the media root";
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";
const ID: &str = "0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// 1000 bytes, each `i % 251`: any wrong offset shows.
fn data() -> Vec<u8> {
    (0..1000u32).map(|i| (i % 251) as u8).collect()
}

/// SPEC §7's `sig`, computed here with `ring` alone, independently of the gateway's code.
fn sig_with(key: &[u8], method: &str, path: &str, query: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, format!("url\n{method}\n{path}\n{query}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
}

/// `path?expires=…&sig=…` for `method`, expiring at `expires`.
fn signed(method: &str, path: &str, expires: u64) -> String {
    let query = format!("expires={expires}");
    let sig = sig_with(SECRET, method, path, &query);
    format!("{path}?{query}&sig={sig}")
}

/// A GET URL valid for five minutes.
fn signed_get(path: &str) -> String {
    signed("GET", path, now() + 300)
}

/// `media/` with a private file, a public folder, a folder, a symlink out of the root and
/// one out of the public folder; `outside.txt` lies beside `media/`, never to be served.
fn make_media(dir: &Path) {
    let media = dir.join("media");
    for sub in ["private", "public", "invoices"] {
        std::fs::create_dir_all(media.join(sub)).expect("mkdir");
    }
    std::fs::write(media.join("private/a.txt"), PRIVATE).expect("write");
    std::fs::write(media.join("private/my report.txt"), PRIVATE).expect("write");
    std::fs::write(media.join("public/data.bin"), data()).expect("write");
    std::fs::write(media.join("invoices/42.pdf"), PDF).expect("write");
    std::fs::write(dir.join("outside.txt"), OUTSIDE).expect("write");
    std::os::unix::fs::symlink(dir.join("outside.txt"), media.join("public/escape.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(media.join("private/a.txt"), media.join("public/peek.txt"))
        .expect("symlink");
}

fn media_config(dir: &Path) -> String {
    format!(
        "[files]\nmedia_root = \"{}\"\n",
        dir.join("media").display()
    )
}

async fn media_gateway() -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(&up.url(), |dir| {
        make_media(dir);
        media_config(dir)
    })
    .await;
    (up, gw)
}

async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, bytes::Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(upgate::body::empty()).expect("request")).await
}

/// The status and JSON `error` of a refused request.
async fn refusal(method: Method, url: &str) -> (StatusCode, String) {
    let (res, body) = request(method, url, &[]).await;
    let code = json(&body)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (res.status, code)
}

async fn assert_refused(method: Method, target: &str, code: &str) {
    let (_up, gw) = media_gateway().await;
    let (status, got) = refusal(method, &gw.url(target)).await;
    assert_eq!(
        (status, got.as_str()),
        (StatusCode::FORBIDDEN, code),
        "{target}"
    );
}

fn header<'a>(res: &'a http::response::Parts, name: &str) -> &'a str {
    res.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", res.headers))
        .to_str()
        .expect("ascii")
}

// ---- Signed URLs: each refusal of SPEC §7 ----

#[tokio::test]
async fn a_signed_url_serves_and_admits_head() {
    let (_up, gw) = media_gateway().await;
    let url = signed_get("/media/private/a.txt");
    let (res, body) = get(&gw.url(&url)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(body, PRIVATE.as_bytes());
    assert_eq!(header(&res, "content-type"), "text/plain");
    let (res, body) = request(Method::HEAD, &gw.url(&url), &[]).await;
    assert_eq!(res.status, StatusCode::OK, "a GET signature admits HEAD");
    assert!(body.is_empty());
}

#[tokio::test]
async fn no_signature() {
    assert_refused(Method::GET, "/media/private/a.txt", "bad_signature").await;
}

#[tokio::test]
async fn forged_signature() {
    let expires = now() + 300;
    let query = format!("expires={expires}");
    let forged = sig_with(
        b"another secret, also 32 bytes long",
        "GET",
        "/media/private/a.txt",
        &query,
    );
    let target = format!("/media/private/a.txt?{query}&sig={forged}");
    assert_refused(Method::GET, &target, "bad_signature").await;
}

#[tokio::test]
async fn truncated_signature() {
    let url = signed_get("/media/private/a.txt");
    assert_refused(Method::GET, &url[..url.len() - 2], "bad_signature").await;
}

#[tokio::test]
async fn non_base64_signature() {
    let target = format!(
        "/media/private/a.txt?expires={}&sig=not*base64!!",
        now() + 300
    );
    assert_refused(Method::GET, &target, "bad_signature").await;
}

#[tokio::test]
async fn signature_twice() {
    let url = signed_get("/media/private/a.txt");
    let sig = url.rsplit_once("&sig=").expect("sig").1;
    assert_refused(Method::GET, &format!("{url}&sig={sig}"), "bad_signature").await;
}

#[tokio::test]
async fn signature_not_last() {
    let expires = now() + 300;
    let sig = sig_with(
        SECRET,
        "GET",
        "/media/private/a.txt",
        &format!("expires={expires}"),
    );
    let target = format!("/media/private/a.txt?sig={sig}&expires={expires}");
    assert_refused(Method::GET, &target, "bad_signature").await;
}

#[tokio::test]
async fn expired_url() {
    let target = signed("GET", "/media/private/a.txt", now() - 5);
    assert_refused(Method::GET, &target, "expired").await;
}

#[tokio::test]
async fn expiry_further_than_max_url_ttl() {
    let target = signed("GET", "/media/private/a.txt", now() + 3600 + 600);
    assert_refused(Method::GET, &target, "ttl_too_long").await;
}

#[tokio::test]
async fn get_signature_used_for_post() {
    let target = signed_get("/media/private/a.txt");
    assert_refused(Method::POST, &target, "bad_signature").await;
}

#[tokio::test]
async fn signature_for_another_path() {
    let url = signed_get("/media/private/a.txt");
    let query = url.split_once('?').expect("query").1;
    assert_refused(
        Method::GET,
        &format!("/media/invoices/42.pdf?{query}"),
        "bad_signature",
    )
    .await;
}

#[tokio::test]
async fn parameter_added_after_signing() {
    let url = signed_get("/media/private/a.txt");
    let (signed_part, sig) = url.rsplit_once("&sig=").expect("sig");
    assert_refused(
        Method::GET,
        &format!("{signed_part}&dl=1&sig={sig}"),
        "bad_signature",
    )
    .await;
    assert_refused(Method::GET, &format!("{url}&dl=1"), "bad_signature").await;
}

#[tokio::test]
async fn signature_is_checked_before_existence() {
    let (_up, gw) = media_gateway().await;
    let (status, code) = refusal(Method::GET, &gw.url("/media/private/nope.txt")).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "bad_signature")
    );
    let (status, code) =
        refusal(Method::GET, &gw.url(&signed_get("/media/private/nope.txt"))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, code) = refusal(Method::GET, &gw.url(&format!("/files/{ID}/a.pdf"))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "bad_signature")
    );
}

// ---- /media: serving as nginx does ----

#[tokio::test]
async fn media_headers_and_content_type_by_extension() {
    let (_up, gw) = media_gateway().await;
    let (res, body) = get(&gw.url(&signed_get("/media/invoices/42.pdf"))).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(body, PDF);
    assert_eq!(header(&res, "content-type"), "application/pdf");
    assert_eq!(header(&res, "content-length"), PDF.len().to_string());
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(header(&res, "accept-ranges"), "bytes");
    assert!(header(&res, "etag").starts_with('"'));
    assert!(header(&res, "last-modified").ends_with(" GMT"));
    assert!(res.headers.get("content-disposition").is_none());
}

#[tokio::test]
async fn public_prefix_needs_no_signature() {
    let (_up, gw) = media_gateway().await;
    let (res, body) = get(&gw.url("/media/public/data.bin")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(body, data());
    assert_eq!(header(&res, "content-type"), "application/octet-stream");
    let (status, code) = refusal(Method::GET, &gw.url("/media/publicity/data.bin")).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "bad_signature")
    );
}

#[tokio::test]
async fn single_range_is_206() {
    let (_up, gw) = media_gateway().await;
    let url = gw.url("/media/public/data.bin");
    let (res, body) = request(Method::GET, &url, &[("range", "bytes=100-199")]).await;
    assert_eq!(res.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&res, "content-range"), "bytes 100-199/1000");
    assert_eq!(header(&res, "content-length"), "100");
    assert_eq!(body, data()[100..200]);
    let (res, body) = request(Method::GET, &url, &[("range", "bytes=-10")]).await;
    assert_eq!(res.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&res, "content-range"), "bytes 990-999/1000");
    assert_eq!(body, data()[990..]);
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let (_up, gw) = media_gateway().await;
    let (res, body) = request(
        Method::GET,
        &gw.url("/media/public/data.bin"),
        &[("range", "bytes=1000-")],
    )
    .await;
    assert_eq!(res.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&res, "content-range"), "bytes */1000");
    assert_eq!(json(&body)["error"], "range_not_satisfiable");
}

#[tokio::test]
async fn if_none_match_is_304() {
    let (_up, gw) = media_gateway().await;
    let url = gw.url("/media/public/data.bin");
    let (res, _) = get(&url).await;
    let etag = header(&res, "etag").to_string();
    let (res, body) = request(Method::GET, &url, &[("if-none-match", &etag)]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(header(&res, "etag"), etag);
    let (res, _) = request(Method::GET, &url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn if_modified_since_is_304() {
    let (_up, gw) = media_gateway().await;
    let url = gw.url("/media/public/data.bin");
    let (res, _) = get(&url).await;
    let modified = header(&res, "last-modified").to_string();
    let (res, body) = request(Method::GET, &url, &[("if-modified-since", &modified)]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let long_ago = "Thu, 01 Jan 1998 00:00:00 GMT";
    let (res, _) = request(Method::GET, &url, &[("if-modified-since", long_ago)]).await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn head_has_length_and_no_body() {
    let (_up, gw) = media_gateway().await;
    let (res, body) = request(Method::HEAD, &gw.url("/media/public/data.bin"), &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(header(&res, "content-length"), "1000");
    assert!(body.is_empty());
}

#[tokio::test]
async fn a_large_file_streams_intact() {
    let len = 5 * 1024 * 1024 + 3;
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(&up.url(), |dir| {
        make_media(dir);
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut bytes = Vec::new();
        while bytes.len() < len {
            bytes.extend_from_slice(&chunk);
        }
        bytes.truncate(len);
        std::fs::write(dir.join("media/public/big.bin"), bytes).expect("write");
        media_config(dir)
    })
    .await;
    let res = get_streaming(&gw.url("/media/public/big.bin"), 30).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (got, digest) = within(60, digest_body(res.into_body())).await;
    assert_eq!((got, digest), (len as u64, pattern_digest(len as u64)));
}

/// Sends `GET <target>` byte for byte, so no client can tidy the path first; (status, whole answer).
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = tcp(addr).await;
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    within(10, stream.write_all(req.as_bytes()))
        .await
        .expect("write");
    let mut answer = Vec::new();
    within(10, stream.read_to_end(&mut answer))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn traversal_never_returns_the_file() {
    let (_up, gw) = media_gateway().await;
    let signed_traversal = signed_get("/media/%2e%2e/outside.txt");
    let hostile = [
        "/media/..%2f..%2fetc/passwd",
        "/media/..%2Foutside.txt",
        "/media/%2e%2e/outside.txt",
        "/media/public/%2e%2e/%2e%2e/outside.txt",
        "/media/public/..%5c..%5coutside.txt",
        "/media/public\\..\\..\\outside.txt",
        "/media/public/../../outside.txt",
        "/media/..",
        "/media/public/data.bin%00.txt",
        "/media/%c0%ae%c0%ae/outside.txt",
        "/media/public/escape.txt",
        "/media/public/peek.txt",
        "/media/public/",
        "/media/invoices",
        &signed_traversal,
    ];
    for target in hostile {
        let (status, answer) = raw_get(gw.addr, target).await;
        assert!(
            [400, 403, 404].contains(&status),
            "{target}: {status}\n{answer}"
        );
        assert!(!answer.contains(OUTSIDE), "{target} leaked the file");
        assert!(!answer.contains(PRIVATE), "{target} leaked a private file");
        assert!(!answer.contains("root:"), "{target} leaked /etc/passwd");
    }
    // A public symlink to a private file serves it to a signed URL only.
    let (res, body) = get(&gw.url(&signed_get("/media/public/peek.txt"))).await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::OK, PRIVATE.as_bytes())
    );
    let (res, _) = get(&gw.url(&signed_get("/media/public/escape.txt"))).await;
    assert_eq!(
        res.status,
        StatusCode::FORBIDDEN,
        "a symlink out of the root, signed or not"
    );
}

/// A media file is opened first with no symlink allowed on its way; every path with one
/// (in `media_root` itself or below it) must still answer by the real path.
#[tokio::test]
async fn symlinks_on_the_way_to_media_files() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(&up.url(), |dir| {
        make_media(dir);
        let media = dir.join("media");
        let link = |to: &Path, at: &Path| std::os::unix::fs::symlink(to, at).expect("symlink");
        link(&media, &dir.join("media-link"));
        link(Path::new("data.bin"), &media.join("public/alias.bin"));
        link(Path::new("../invoices"), &media.join("public/inv"));
        format!(
            "[files]\nmedia_root = \"{}\"\n",
            dir.join("media-link").display()
        )
    })
    .await;
    let (res, body) = get(&gw.url("/media/public/data.bin")).await;
    assert_eq!((res.status, body.as_ref()), (StatusCode::OK, &data()[..]));
    let (res, body) = get(&gw.url("/media/public/alias.bin")).await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::OK, &data()[..]),
        "a public link to a public file"
    );
    let (res, body) = get(&gw.url(&signed_get("/media/private/a.txt"))).await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::OK, PRIVATE.as_bytes())
    );
    let refused = refusal(Method::GET, &gw.url("/media/public/inv/42.pdf")).await;
    assert_eq!(
        refused,
        (StatusCode::FORBIDDEN, "bad_signature".to_string()),
        "a public link to a private folder"
    );
    let (res, body) = get(&gw.url(&signed_get("/media/public/inv/42.pdf"))).await;
    assert_eq!((res.status, body.as_ref()), (StatusCode::OK, PDF));
    let (res, _) = get(&gw.url(&signed_get("/media/public/escape.txt"))).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let (res, _) = get(&gw.url(&signed_get("/media/private/missing.txt"))).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn routes_own_their_prefix_only() {
    let (_up, gw) = media_gateway().await;
    for path in ["/filesystem", "/mediaeval/x", "/files.txt"] {
        let (res, body) = get(&gw.url(path)).await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
        assert_eq!(echo(&body).uri, path, "went upstream");
    }
    let up = TestUpstream::start().await;
    let plain = TestGateway::start(&up.url(), "").await;
    let (res, body) = get(&plain.url("/media/public/data.bin")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        echo(&body).uri,
        "/media/public/data.bin",
        "no media_root: /media is the upstream's"
    );
}

// ---- /files/<id>/<name> ----

/// Puts a stored file in the index and on disk, as the upload API will.
fn store_file(gw: &TestGateway, id: &str, name: &str, bytes: &[u8]) {
    let gateway = gw.running().gateway();
    let store = &gateway.store;
    let path = store.blob_path(id);
    std::fs::create_dir_all(path.parent().expect("shard")).expect("mkdir");
    std::fs::write(&path, bytes).expect("blob");
    let record = FileRecord {
        id: id.into(),
        owner: Owner::Intercept {
            expires_at: now() + 86_400,
        },
        name: name.into(),
        size: bytes.len() as u64,
        content_type: "application/pdf".into(),
        format: "pdf".into(),
        sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes)),
        created: now(),
    };
    let added = store.db.add_files(&[record]).expect("index");
    assert!(matches!(added, upgate::db::Added::Done { .. }));
}

#[tokio::test]
async fn stored_file_by_signed_url() {
    let (_up, gw) = media_gateway().await;
    store_file(&gw, ID, "résumé 2024.pdf", PDF);
    let path = format!("/files/{ID}/r%C3%A9sum%C3%A9%202024.pdf");
    let (res, body) = get(&gw.url(&signed_get(&path))).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(body, PDF);
    assert_eq!(header(&res, "content-type"), "application/pdf");
    assert_eq!(
        header(&res, "content-disposition"),
        "attachment; filename=\"r_sum_ 2024.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202024.pdf"
    );
    assert!(header(&res, "etag").contains(ID));
    let (res, body) = request(
        Method::GET,
        &gw.url(&signed_get(&path)),
        &[("range", "bytes=0-3")],
    )
    .await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::PARTIAL_CONTENT, &b"%PDF"[..])
    );

    let other_name = format!("/files/{ID}/other.pdf");
    let (status, code) = refusal(Method::GET, &gw.url(&signed_get(&other_name))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found"),
        "the name is part of the URL"
    );
    let unknown = "/files/11111111-2222-3333-4444-555555555555/a.pdf";
    let (status, code) = refusal(Method::GET, &gw.url(&signed_get(unknown))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

// ---- X-Accel-Redirect ----

/// The gateway URL of the test upstream's `/accel`, naming `to` and the other parameters.
fn accel(gw: &TestGateway, to: &str, more: &[(&str, &str)]) -> String {
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut url = gw.url(&format!("/accel?to={}", enc(to)));
    for (k, v) in more {
        url.push_str(&format!("&{k}={}", enc(v)));
    }
    url
}

#[tokio::test]
async fn accel_to_media_keeps_the_upstreams_headers() {
    let (_up, gw) = media_gateway().await;
    let url = accel(
        &gw,
        "/media/invoices/42.pdf",
        &[
            ("ct", "application/x-invoice"),
            ("cd", "inline; filename=\"invoice-42.pdf\""),
            ("cc", "private, max-age=60"),
        ],
    );
    let (res, body) = get(&url).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(body, PDF, "the file, in place of the upstream's body");
    assert_eq!(header(&res, "content-type"), "application/x-invoice");
    assert_eq!(
        header(&res, "content-disposition"),
        "inline; filename=\"invoice-42.pdf\""
    );
    assert_eq!(header(&res, "cache-control"), "private, max-age=60");
    assert_eq!(header(&res, "content-length"), PDF.len().to_string());
    assert!(res.headers.get("x-accel-redirect").is_none());

    let (res, body) = request(Method::GET, &url, &[("range", "bytes=0-3")]).await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::PARTIAL_CONTENT, &b"%PDF"[..])
    );
    assert_eq!(
        header(&res, "content-range"),
        format!("bytes 0-3/{}", PDF.len())
    );

    let (res, body) = get(&accel(&gw, "/media/invoices/42.pdf", &[])).await;
    assert_eq!(
        header(&res, "content-type"),
        "application/pdf",
        "by extension when the upstream sets none"
    );
    assert_eq!(body, PDF);
}

#[tokio::test]
async fn accel_keeps_a_non_200_status_and_ignores_range() {
    let (_up, gw) = media_gateway().await;
    let url = accel(&gw, "/media/public/data.bin", &[("status", "403")]);
    let (res, body) = request(Method::GET, &url, &[("range", "bytes=0-9")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        data(),
        "the whole file: a range applies to a 200 only"
    );
}

#[tokio::test]
async fn accel_to_a_stored_file_and_x_sendfile() {
    let (_up, gw) = media_gateway().await;
    store_file(&gw, ID, "a.pdf", PDF);
    let (res, body) = get(&accel(&gw, &format!("/files/{ID}"), &[("status", "201")])).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(body, PDF);
    assert_eq!(header(&res, "content-type"), "application/pdf");
    assert_eq!(
        header(&res, "content-disposition"),
        "attachment; filename=\"a.pdf\"; filename*=UTF-8''a.pdf"
    );
    let url = accel(
        &gw,
        &format!("/files/{ID}/a.pdf"),
        &[("header", "x-sendfile"), ("cd", "inline")],
    );
    let (res, body) = get(&url).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(body, PDF);
    assert_eq!(header(&res, "content-disposition"), "inline");
    assert!(res.headers.get("x-sendfile").is_none());
}

#[tokio::test]
async fn accel_to_a_bad_target_is_502() {
    let (_up, gw) = media_gateway().await;
    for to in [
        "/etc/passwd",
        "/media/%2e%2e/outside.txt",
        "/media/../outside.txt",
        "/files/../../secret",
        "media/invoices/42.pdf",
    ] {
        let (res, body) = get(&accel(&gw, to, &[])).await;
        assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{to}");
        assert_eq!(json(&body)["error"], "bad_upstream_directive", "{to}");
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(ACCEL_DECOY) && !text.contains(OUTSIDE),
            "{to}"
        );
    }
    let (res, body) = get(&accel(&gw, "/media/invoices/none.pdf", &[])).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&body).contains(ACCEL_DECOY));
}

// ---- Minting URLs: `upgate sign`, `POST /v1/sign`, the README's Python ----

#[tokio::test]
async fn upgate_sign_prints_a_working_url() {
    let (up, gw) = media_gateway().await;
    let config = write_config(
        gw.dir(),
        &config_text(gw.dir(), &up.url(), &media_config(gw.dir())),
    );
    let sign = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_upgate"))
            .arg("sign")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run upgate sign")
    };
    let out = sign(&["/media/private/my report.txt", "--ttl", "5m"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).expect("utf-8");
    let url = url.trim();
    assert!(
        url.starts_with("/media/private/my%20report.txt?expires="),
        "{url}"
    );
    let (res, body) = get(&gw.url(url)).await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::OK, PRIVATE.as_bytes())
    );

    let out = sign(&["/media/private/a.txt", "--ttl", "2h"]);
    assert!(!out.status.success(), "a ttl past max_url_ttl is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_url_ttl"));
}

async fn post_sign(
    gw: &TestGateway,
    body: impl Into<bytes::Bytes>,
) -> (StatusCode, serde_json::Value) {
    let req = Request::post(gw.control_url("/v1/sign"))
        .header("content-type", "application/json")
        .body(upgate::body::full(body))
        .expect("request");
    let (res, body) = send(req).await;
    (res.status, json(&body))
}

#[tokio::test]
async fn control_sign_returns_a_working_url() {
    let (_up, gw) = media_gateway().await;
    let (status, answer) = post_sign(&gw, r#"{"path":"/media/private/a.txt","ttl":"5m"}"#).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let url = answer["url"].as_str().expect("url");
    let (res, body) = get(&gw.url(url)).await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::OK, PRIVATE.as_bytes())
    );

    let (status, answer) = post_sign(
        &gw,
        r#"{"path":"/media/private/a.txt","method":"POST","ttl":60}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, code) = refusal(Method::GET, &gw.url(answer["url"].as_str().expect("url"))).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "bad_signature"),
        "a POST URL is not a GET URL"
    );

    let too_big = format!(r#"{{"path":"/{}"}}"#, "a".repeat(70 * 1024));
    for bad in [
        r#"{"path":"media/a.txt"}"#,
        r#"{"path":"/a","ttl":"2h"}"#,
        r#"{"path":"/a","ttl":"soon"}"#,
        r#"{"path":"/a","extra":1}"#,
        r#"{"method":"GET"}"#,
        "not json",
        too_big.as_str(),
    ] {
        let (status, answer) = post_sign(&gw, bad.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:.60}");
        assert_eq!(answer["error"], "bad_request", "{bad:.60}");
        assert!(answer["verbose_error"].is_string());
    }
}

/// The ```python block between the signer markers of README.md, exactly as written there.
fn readme_signer() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let block = readme
        .split_once("<!-- signer:start -->")
        .and_then(|(_, rest)| rest.split_once("<!-- signer:end -->"))
        .expect("signer markers in README.md")
        .0;
    block
        .trim()
        .strip_prefix("```python")
        .and_then(|b| b.strip_suffix("```"))
        .expect("one ```python block between the markers")
        .to_string()
}

#[tokio::test]
async fn readme_python_signer_mints_urls_the_gateway_serves() {
    let (_up, gw) = media_gateway().await;
    let script = gw.dir().join("sign.py");
    std::fs::write(&script, readme_signer()).expect("write");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(gw.dir().join("secret"))
        .arg("/media/private/my report.txt")
        .arg("120")
        .output()
        .expect("python3 runs (the README's signer test needs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).expect("utf-8");
    let (res, body) = get(&gw.url(url.trim())).await;
    assert_eq!(
        (res.status, body.as_ref()),
        (StatusCode::OK, PRIVATE.as_bytes()),
        "{url}"
    );
}

/// Content-Length over HTTP/1.1 and HTTP/2 (prior knowledge), an empty file's included: upgate
/// leaves the length of a small file's body to hyper, which writes none for an empty body over
/// HTTP/2.
#[tokio::test]
async fn content_length_over_h1_and_h2_empty_files_too() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(&up.url(), |dir| {
        make_media(dir);
        std::fs::write(dir.join("media/public/empty.bin"), b"").expect("write");
        media_config(dir)
    })
    .await;
    let (res, body) = get(&gw.url("/media/public/empty.bin")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(header(&res, "content-length"), "0");
    let (mut send, _conn) = h2_connect(gw.addr).await;
    for (path, length) in [
        ("/media/public/empty.bin", "0"),
        ("/media/public/data.bin", "1000"),
    ] {
        let req = Request::get(format!("http://x{path}"))
            .body(upgate::body::empty())
            .expect("request");
        let res = within(10, send.send_request(req)).await.expect("h2 answer");
        assert_eq!(res.status(), StatusCode::OK);
        let got = res
            .headers()
            .get("content-length")
            .map(|v| v.to_str().expect("ascii"));
        assert_eq!(got, Some(length), "{path} over HTTP/2");
    }
}
