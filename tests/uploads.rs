//! Upload handles and the upload API (SPEC §3 Register/Revoke, §4, §5, §8, §9): the whole flow, every
//! rejection, hostile names, concurrency, restarts and crashes.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};

use crate::util::*;

pub const BOUNDARY: &str = "upgate-test-7MA4YWxkTrZu0gW";

pub fn png() -> Vec<u8> {
    let mut v = vec![
        0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R',
    ];
    v.extend_from_slice(&[
        0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89,
    ]);
    v
}

pub fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n".to_vec()
}

pub fn elf() -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\x00".to_vec();
    v.extend_from_slice(&[0u8; 120]);
    v
}

/// A multipart/form-data body: (field, file name or None for a text field, bytes).
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, file, bytes) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(name) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes()),
        }
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A browser as the application sees it: its identity cookie and the handle it was given.
#[derive(Clone, Debug)]
pub struct Browser {
    pub base: String,
    pub cookie: String,
    pub handle: String,
}

impl Browser {
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("x-upload-handle", &self.handle)
    }

    pub async fn upload(
        &self,
        parts: &[(&str, Option<&str>, &[u8])],
    ) -> (StatusCode, serde_json::Value) {
        let req = self
            .request("POST", "/uploads")
            .header("content-type", multipart_type())
            .body(upgate::body::full(multipart(parts)))
            .expect("req");
        let (res, body) = send(req).await;
        (res.status, json(&body))
    }

    pub async fn list(&self) -> Vec<serde_json::Value> {
        let (res, body) = send(
            self.request("GET", "/uploads")
                .body(upgate::body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{body:?}");
        json(&body)["files"].as_array().expect("files").clone()
    }

    pub async fn names(&self) -> Vec<String> {
        self.list()
            .await
            .iter()
            .map(|f| f["name"].as_str().expect("name").to_string())
            .collect()
    }
}

/// Has the upstream answer a page with `X-Upgate-Register: <directive>`; returns the browser holding the handle.
pub async fn register(gw: &TestGateway, directive: &str) -> Browser {
    register_at(gw.addr, directive).await
}

pub async fn register_at(addr: std::net::SocketAddr, directive: &str) -> Browser {
    let (res, body) = get(&format!(
        "http://{addr}/start?h-x-upgate-register={}",
        enc(directive)
    ))
    .await;
    assert_eq!(res.status, StatusCode::OK, "{body:?}");
    assert!(
        !res.headers.contains_key("x-upgate-register"),
        "directives never reach the client"
    );
    let handle = res
        .headers
        .get("x-upload-handle")
        .expect("a handle is issued")
        .to_str()
        .expect("ascii")
        .to_string();
    let set_cookie = res
        .headers
        .get("set-cookie")
        .expect("an identity cookie is issued")
        .to_str()
        .expect("ascii");
    assert!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Lax")
            && set_cookie.contains("Path=/"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().expect("pair").to_string();
    Browser {
        base: format!("http://{addr}"),
        cookie,
        handle,
    }
}

fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

fn temp_files(gw: &TestGateway) -> usize {
    std::fs::read_dir(gw.storage().join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_whole_flow() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "sess-1").await;
    assert!(b.handle.len() >= 22 && !b.handle.contains("sess-1"));

    // The handle turns into the session token upstream, for this client only.
    let (_, body) = send(
        b.request("GET", "/app/page")
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    let e = echo(&body);
    assert_eq!(e.header("x-upload-session"), Some("sess-1"));
    assert!(e.header("x-upload-handle").is_none());

    let (status, body) = b
        .upload(&[
            ("doc", Some("report.pdf"), &pdf()),
            ("note", None, b"hello"),
            ("img", Some("pic.png"), &png()),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], true);
    assert_eq!(body["file"], "report.pdf");
    let files = body["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    let f = &files[0];
    assert_eq!(body["id"], f["id"]);
    assert_eq!(body["url"], f["url"]);
    assert!(uuid::Uuid::parse_str(f["id"].as_str().expect("id")).is_ok());
    assert_eq!(f["size"], pdf().len());
    assert_eq!(f["content_type"], "application/pdf");
    assert_eq!(f["sha256"], sha256(&pdf()));
    assert!(
        humantime::parse_rfc3339(f["created"].as_str().expect("created")).is_ok(),
        "{}",
        f["created"]
    );
    let url = f["url"].as_str().expect("url");
    assert!(
        url.starts_with(&format!(
            "/files/{}/report.pdf?expires=",
            f["id"].as_str().expect("id")
        )),
        "{url}"
    );
    assert!(url.contains("&sig="));
    let stored = f["stored"].as_str().expect("stored");
    assert_eq!(
        stored,
        stored_ref(f["id"].as_str().expect("id"), "report.pdf")
    );
    assert_eq!(files[1]["content_type"], "image/png");

    assert_eq!(b.names().await, ["pic.png", "report.pdf"]);
    let (res, bytes) = send(
        b.request("GET", "/uploads/report.pdf")
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(bytes.as_ref(), pdf().as_slice());
    assert_eq!(res.headers["x-content-type-options"], "nosniff");
    assert!(
        res.headers["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("filename*=UTF-8''report.pdf")
    );

    // Its signed URL serves it until it is removed, then answers 404 (one connection, so
    // the same worker answers both).
    let keep_alive = client();
    let (res, bytes) = send_on(
        &keep_alive,
        b.request("GET", url)
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(bytes.as_ref(), pdf().as_slice());
    let (res, _) = send(
        b.request("DELETE", "/uploads/report.pdf")
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let (res, _) = send_on(
        &keep_alive,
        b.request("GET", url)
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let (res, body) = send(
        b.request("DELETE", "/uploads/report.pdf")
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{body:?}");
    assert_eq!(b.names().await, ["pic.png"]);
    let (res, _) = send(
        b.request("DELETE", "/uploads")
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert!(b.list().await.is_empty());
    assert_eq!(
        std::fs::read_dir(gw.storage().join("files"))
            .expect("files")
            .flat_map(|d| std::fs::read_dir(d.expect("shard").path()).expect("shard"))
            .count(),
        0,
        "blobs removed"
    );
}

fn stored_ref(id: &str, name: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, format!("stored\n{id}\n{name}").as_bytes());
    format!("{id}.{}.{}", b64.encode(name), b64.encode(tag.as_ref()))
}

#[tokio::test]
async fn handles_are_bound_stable_and_revocable() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let alice = register(&gw, "sess-a").await;

    // The same token for the same client: the same handle.
    let req = Request::get(gw.url(&format!("/again?h-x-upgate-register={}", enc("sess-a"))))
        .header("cookie", &alice.cookie)
        .body(upgate::body::empty())
        .expect("req");
    let (res, _) = send(req).await;
    assert_eq!(res.headers["x-upload-handle"], alice.handle.as_str());
    assert!(
        !res.headers.contains_key("set-cookie"),
        "the client already has its cookie"
    );

    // Another client with the stolen handle, an unknown handle, no handle: one and the same answer.
    let mallory = register(&gw, "sess-m").await;
    let stolen = Browser {
        handle: alice.handle.clone(),
        ..mallory.clone()
    };
    let unknown = Browser {
        handle: "A".repeat(22),
        ..alice.clone()
    };
    let mut answers = Vec::new();
    for b in [&stolen, &unknown] {
        let (status, body) = b.upload(&[("f", Some("a.pdf"), &pdf())]).await;
        answers.push((status, body));
    }
    let (res, body) = send(
        Request::get(gw.url("/uploads"))
            .header("cookie", &alice.cookie)
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    answers.push((res.status, json(&body)));
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::NOT_FOUND);
        assert_eq!(body["accepted"], false);
        assert_eq!(body["error"], "invalid_handle");
    }
    assert_eq!(
        answers[0].1, answers[1].1,
        "a foreign handle and an unknown one look alike"
    );
    let (_, body) = send(
        stolen
            .request("GET", "/x")
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(
        echo(&body).header("x-upload-session"),
        None,
        "a stolen handle is useless upstream too"
    );

    // Revoke ends it.
    let (res, _) = get(&gw.url(&format!("/logout?h-x-upgate-revoke={}", enc("sess-a")))).await;
    assert!(!res.headers.contains_key("x-upgate-revoke"));
    let (status, body) = alice.upload(&[("f", Some("a.pdf"), &pdf())]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("invalid_handle"))
    );
}

#[tokio::test]
async fn handles_expire_after_their_ttl() {
    let up = TestUpstream::start().await;
    // Handles expire on whole seconds: 1 s would leave a handle registered late in a second a
    // few milliseconds to live; 2 s leaves it at least one second.
    let gw = TestGateway::start(&up.url(), "[uploads]\nhandle_ttl = \"2s\"\n").await;
    let b = register(&gw, "short").await;
    assert!(b.list().await.is_empty(), "valid at first");
    // Every use renews the handle, so it is left alone for longer than its TTL: time passing is
    // what is under test here.
    let expired = within(10, async {
        loop {
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let (res, body) = send(
                b.request("GET", "/uploads")
                    .body(upgate::body::empty())
                    .expect("req"),
            )
            .await;
            if res.status != StatusCode::OK {
                return (res.status, json(&body));
            }
        }
    })
    .await;
    assert_eq!(expired.0, StatusCode::NOT_FOUND);
    assert_eq!(expired.1["error"], "invalid_handle");
}

#[tokio::test]
async fn every_rejection_code() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(
        &gw,
        "codes; accept=pdf,png,txt; max-bytes=64KiB; max-files=2",
    )
    .await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "program.png",
            elf(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_format",
        ),
        (
            "page.png",
            b"<!DOCTYPE html><html><body>hi</body></html>".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_format",
        ),
        (
            "doc.png",
            pdf(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_format",
        ),
        (
            "archive.zip",
            b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_format",
        ),
        (
            "big.txt",
            vec![b'a'; 65 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        ("..", b"x".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (name, bytes, status, code) in cases {
        let (got, body) = b.upload(&[("f", Some(name), &bytes)]).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{name}: {body}"
        );
        assert_eq!(body["accepted"], false);
        assert!(
            body["verbose_error"]
                .as_str()
                .is_some_and(|v| !v.is_empty())
        );
    }
    let (status, body) = b
        .upload(&[
            ("a", Some("1.txt"), b"1"),
            ("b", Some("2.txt"), b"2"),
            ("c", Some("3.txt"), b"3"),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("quota_exceeded"))
    );
    let (status, body) = b.upload(&[("note", None, b"no file here")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let req = b
        .request("POST", "/uploads")
        .header("content-type", "application/json")
        .body(upgate::body::full("{}"))
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(
        (res.status, json(&body)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let req = b
        .request("POST", "/uploads")
        .header("content-type", multipart_type())
        .body(upgate::body::full("--nonsense"))
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(
        (res.status, json(&body)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    assert!(
        b.list().await.is_empty(),
        "nothing of any rejected request was kept"
    );
    assert_eq!(temp_files(&gw), 0);
}

#[tokio::test]
async fn too_large_is_answered_before_the_body_ends() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "big; max-bytes=1MiB").await;
    // A 1 GiB part that is never read to the end: the answer comes once 1 MiB has passed.
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"huge.txt\"\r\n\r\n"
    );
    let body = upgate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        std::iter::once(Bytes::from(head))
            .chain(std::iter::repeat_n(
                Bytes::from(vec![b'a'; 64 * 1024]),
                16 * 1024,
            ))
            .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))),
    )));
    let req = b
        .request("POST", "/uploads")
        .header("content-type", multipart_type())
        .body(body)
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&body)["error"], "too_large");
    within(10, async {
        while temp_files(&gw) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn all_or_nothing_and_replace_by_name() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "aon").await;
    let (status, _) = b
        .upload(&[
            ("a", Some("good.pdf"), &pdf()),
            ("b", Some("bad.png"), &elf()),
        ])
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        b.list().await.is_empty(),
        "the good file of a rejected request is not kept"
    );

    let (status, first) = b.upload(&[("a", Some("notes.txt"), b"one")]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, second) = b.upload(&[("a", Some("notes.txt"), b"two!")]).await;
    assert_eq!(status, StatusCode::OK);
    let list = b.list().await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["sha256"], sha256(b"two!"));
    assert_eq!(list[0]["id"], second["id"]);
    let old = first["id"].as_str().expect("id");
    assert!(
        !gw.storage()
            .join("files")
            .join(&old[..2])
            .join(old)
            .exists(),
        "the replaced blob is gone"
    );
}

#[tokio::test]
async fn hostile_names_are_reduced_to_safe_base_names() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "names").await;
    let long = format!("{}.txt", "n".repeat(1000));
    let cases: [(&str, Option<&str>); 8] = [
        ("../../etc/passwd.txt", Some("passwd.txt")),
        ("..\\..\\windows\\win.txt", Some("win.txt")),
        ("/abs/path/abs.txt", Some("abs.txt")),
        // NUL is not even valid in a multipart header line: the request is refused whole.
        ("nul\u{0}byte.txt", None),
        ("evil\u{202e}txt.exe.txt", Some("eviltxt.exe.txt")),
        ("...", None),
        ("..", None),
        (&long, Some("")),
    ];
    for (raw, expected) in cases {
        let (status, body) = b.upload(&[("f", Some(raw), b"text")]).await;
        match expected {
            None => assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("bad_request")),
                "{raw:?}"
            ),
            Some(name) => {
                assert_eq!(status, StatusCode::OK, "{raw:?}: {body}");
                let got = body["file"].as_str().expect("name");
                if name.is_empty() {
                    assert!(got.len() <= 255 && got.ends_with(".txt"), "{got}");
                } else {
                    assert_eq!(got, name);
                }
                assert!(!got.contains(['/', '\\', '\u{0}']));
            }
        }
    }
}

#[tokio::test]
async fn a_body_cut_off_mid_part_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "cut").await;
    let body = multipart(&[("f", Some("cut.txt"), &vec![b'x'; 512 * 1024])]);
    let mut stream = raw_upload(gw.addr, &b, body.len()).await;
    within(5, stream.write_all(&body[..300 * 1024]))
        .await
        .expect("part");
    // The temp file exists while the part streams in; then the client vanishes.
    within(10, async {
        while temp_files(&gw) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(stream);
    within(10, async {
        while temp_files(&gw) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(b.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_honour_the_file_quota_exactly() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "race; max-files=50").await;
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                b.upload(&[(
                    "f",
                    Some(&format!("f{i}.txt")),
                    format!("file {i}").as_bytes(),
                )])
                .await
            })
        })
        .collect();
    let (mut ok, mut over) = (0, 0);
    for t in tasks {
        let (status, body) = within(120, t).await.expect("join");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::PAYLOAD_TOO_LARGE => {
                assert_eq!(body["error"], "quota_exceeded");
                over += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, over), (50, 950));
    assert_eq!(b.list().await.len(), 50);
    assert_eq!(temp_files(&gw), 0);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "persist; max-files=7").await;
    let (status, _) = b.upload(&[("f", Some("kept.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::OK);
    let gw = gw.restart(&up.url()).await;
    let b = Browser {
        base: format!("http://{}", gw.addr),
        ..b
    };
    assert_eq!(
        b.names().await,
        ["kept.pdf"],
        "the handle, its binding and the index survived"
    );
    let (_, body) = send(
        b.request("GET", "/p")
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(echo(&body).header("x-upload-session"), Some("persist"));
}

#[tokio::test]
async fn control_api_manages_handles_sessions_and_files() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    // The browser has an identity; the application learns its key from X-Upgate-Client.
    let b = register(&gw, "ignored").await;
    let (_, body) = send(
        Request::get(gw.url("/who"))
            .header("cookie", &b.cookie)
            .body(upgate::body::empty())
            .expect("req"),
    )
    .await;
    let client = echo(&body)
        .header("x-upgate-client")
        .expect("client key")
        .to_string();

    let req = Request::post(gw.control_url("/v1/handles"))
        .header("content-type", "application/json")
        .body(upgate::body::full(serde_json::json!({"session": "ctl", "client": client, "accept": ["pdf"], "max_files": 3}).to_string()))
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(res.status, StatusCode::OK, "{body:?}");
    let v = json(&body);
    assert!(humantime::parse_rfc3339(v["expires_at"].as_str().expect("expires_at")).is_ok());
    let b = Browser {
        handle: v["handle"].as_str().expect("handle").to_string(),
        ..b
    };
    let (status, body) = b.upload(&[("f", Some("x.png"), &png())]).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "the accept list of the registration applies: {body}"
    );
    let (status, body) = b
        .upload(&[("f", Some("a.pdf"), &pdf()), ("g", Some("b.pdf"), &pdf())])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (_, body) = get(&gw.control_url("/v1/sessions/ctl/files")).await;
    let files = json(&body)["files"].as_array().expect("files").clone();
    assert_eq!(files.len(), 2);
    let id = files[0]["id"].as_str().expect("id");
    let del = |path: String| async move {
        send(
            Request::delete(path)
                .body(upgate::body::empty())
                .expect("req"),
        )
        .await
        .0
        .status
    };
    assert_eq!(
        del(gw.control_url(&format!("/v1/files/{id}"))).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        del(gw.control_url(&format!("/v1/files/{id}"))).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(b.names().await, ["b.pdf"]);
    assert_eq!(
        del(gw.control_url("/v1/sessions/ctl")).await,
        StatusCode::NO_CONTENT
    );
    let (status, body) = b.upload(&[("f", Some("a.pdf"), &pdf())]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("invalid_handle"))
    );
    // A browser's cross-origin form post (no JSON type) and a rebinding page (foreign Host) are refused.
    let form = Request::post(gw.control_url("/v1/handles"))
        .header("content-type", "text/plain")
        .body(upgate::body::full(
            serde_json::json!({"session": "x", "client": client}).to_string(),
        ))
        .expect("req");
    assert_eq!(send(form).await.0.status, StatusCode::BAD_REQUEST);
    let rebound = Request::get(gw.control_url("/v1/sessions/ctl/files"))
        .header("host", "evil.example:9091")
        .body(upgate::body::empty())
        .expect("req");
    assert_eq!(send(rebound).await.0.status, StatusCode::FORBIDDEN);
    let (_, body) = get(&gw.control_url("/v1/sessions/ctl/files")).await;
    assert!(json(&body)["files"].as_array().expect("files").is_empty());

    for bad in [
        serde_json::json!({"session": "", "client": client}),
        serde_json::json!({"session": "s", "client": "short"}),
        serde_json::json!({"session": "s", "client": client, "accept": ["exe"]}),
        serde_json::json!({"session": "s", "client": client, "colour": "blue"}),
    ] {
        let (res, body) = send(
            Request::post(gw.control_url("/v1/handles"))
                .header("content-type", "application/json")
                .body(upgate::body::full(bad.to_string()))
                .expect("req"),
        )
        .await;
        assert_eq!(
            (res.status, json(&body)["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn registration_binds_to_the_session_cookie_the_response_sets() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(
        &up.url(),
        "[identity]\nfrom = \"cookie:sessionid\"\nissue_cookie = false\n",
    )
    .await;
    // Login: the application rotates its session cookie and registers in the same response.
    let path = format!(
        "/login?h-set-cookie={}&h-x-upgate-register={}",
        enc("sessionid=fresh; Path=/; HttpOnly"),
        enc("tok-login")
    );
    let req = Request::post(gw.url(&path))
        .header("cookie", "sessionid=stale")
        .body(upgate::body::empty())
        .expect("req");
    let (res, _) = send(req).await;
    let handle = res.headers["x-upload-handle"]
        .to_str()
        .expect("ascii")
        .to_string();
    let fresh = Browser {
        base: format!("http://{}", gw.addr),
        cookie: "sessionid=fresh".into(),
        handle,
    };
    assert!(
        fresh.list().await.is_empty(),
        "bound to the new session cookie"
    );
    let stale = Browser {
        cookie: "sessionid=stale".into(),
        ..fresh.clone()
    };
    let (status, _) = stale.upload(&[("f", Some("a.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // No identity at all: no handle, and it is counted.
    let (res, _) = get(&gw.url(&format!("/anon?h-x-upgate-register={}", enc("tok-anon")))).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(!res.headers.contains_key("x-upload-handle"));
    let (_, metrics) = get(&gw.control_url("/metrics")).await;
    assert!(
        String::from_utf8_lossy(&metrics).contains("upgate_registrations_without_identity_total 1")
    );
}

#[tokio::test]
async fn malformed_directives_are_502_and_never_passed_on() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    for bad in [
        "tok; max-files=lots",
        "tok; colour=blue",
        &"x".repeat(300),
        "two words",
    ] {
        let (res, body) = get(&gw.url(&format!("/bad?h-x-upgate-register={}", enc(bad)))).await;
        assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{bad}");
        assert_eq!(json(&body)["error"], "bad_upstream_directive");
        assert!(
            !res.headers.contains_key("x-upgate-register")
                && !res.headers.contains_key("x-upload-handle")
        );
    }
}

/// A streaming multipart body with one file part of `len` pattern bytes (never held whole).
fn big_upload(name: &str, len: u64) -> upgate::body::Body {
    use futures_util::StreamExt;
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{name}\"\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let middle = http_body_util::BodyDataStream::new(Pattern::of(text_chunk(), len, true));
    let stream = futures_util::stream::iter([Bytes::from(head)])
        .chain(middle.map(|b| b.expect("pattern")))
        .chain(futures_util::stream::iter([Bytes::from(tail)]))
        .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b)));
    upgate::body::boxed(http_body_util::StreamBody::new(stream))
}

#[tokio::test]
async fn big_upload_streams_to_disk_with_bounded_memory() {
    let mib: u64 = std::env::var("UPGATE_TEST_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let len = mib << 20;
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(
        dir.path(),
        &config_text(
            dir.path(),
            &up.url(),
            "[uploads]\nmax_file_bytes = \"2GiB\"\nmax_session_bytes = \"4GiB\"\n",
        ),
    );
    let gw = Spawned::start(&path);
    let b = register_at(gw.addr, "big").await;
    let started = std::time::Instant::now();
    let req = b
        .request("POST", "/uploads")
        .header("content-type", multipart_type())
        .body(big_upload("big.txt", len))
        .expect("req");
    let (res, body) = within(600, async { send(req).await }).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(res.status, StatusCode::OK, "{body:?}");
    let v = json(&body);
    assert_eq!(v["files"][0]["size"], len);
    assert_eq!(v["files"][0]["sha256"], digest_of(&text_chunk(), len));
    let peak = gw.peak_rss();
    eprintln!(
        "upload of {mib} MiB: {:.0} MB/s, gateway peak RSS {:.1} MiB",
        len as f64 / secs / 1e6,
        peak as f64 / 1048576.0
    );
    assert!(peak < 64 << 20, "peak RSS {peak} bytes");
}

#[tokio::test]
async fn kill_9_mid_upload_then_restart() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(dir.path());
    let path = write_config(dir.path(), &config_text(dir.path(), &up.url(), ""));
    let mut gw = Spawned::start(&path);
    let b = register_at(gw.addr, "crash").await;
    let (status, _) = b.upload(&[("f", Some("before.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::OK);

    // An upload far bigger than can finish, killed while it streams.
    let req = b
        .request("POST", "/uploads")
        .header("content-type", multipart_type())
        .body(big_upload("during.txt", 8 << 30))
        .expect("req");
    let inflight = tokio::spawn(async move { client().request(req).await });
    let tmp = dir.path().join("data/tmp");
    within(20, async {
        while std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    gw.child.kill().expect("kill -9");
    gw.wait_exit(10).await;
    let _ = within(10, inflight).await;
    assert!(
        std::fs::read_dir(&tmp).expect("tmp").count() > 0,
        "the crash left a partial temp file"
    );

    let gw = Spawned::start(&path);
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "the temp area is emptied at start"
    );
    let b = Browser {
        base: format!("http://{}", gw.addr),
        ..b
    };
    assert_eq!(
        b.names().await,
        ["before.pdf"],
        "the handle and the index survived; the partial upload is not listed"
    );
    let (status, _) = b.upload(&[("f", Some("after.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::OK);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_507_and_leaves_nothing() {
    let up = TestUpstream::start().await;
    let mut mounted = None;
    let gw = TestGateway::start_with(&up.url(), |dir| {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(&data)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            mounted = Some(Tmpfs(data));
        }
        String::new()
    })
    .await;
    let Some(_tmpfs) = mounted else {
        eprintln!(
            "SKIPPED a_full_disk_is_507_and_leaves_nothing: mounting a tmpfs was refused (needs root)"
        );
        return;
    };
    let b = register(&gw, "full").await;
    let req = b
        .request("POST", "/uploads")
        .header("content-type", multipart_type())
        .body(big_upload("huge.txt", 8 << 20))
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(res.status, StatusCode::INSUFFICIENT_STORAGE, "{body:?}");
    assert_eq!(json(&body)["error"], "insufficient_storage");
    assert_eq!(temp_files(&gw), 0, "the partial file is removed");
    assert!(b.list().await.is_empty());
    let (status, _) = b.upload(&[("f", Some("small.pdf"), &pdf())]).await;
    assert_eq!(status, StatusCode::OK, "and the disk is usable again");
}

#[tokio::test]
async fn cors_for_listed_origins_on_upgates_own_routes() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(
        &up.url(),
        "[cors]\nallow_origins = [\"https://app.example\"]\n",
    )
    .await;
    let b = register(&gw, "cors").await;
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri(gw.url("/uploads"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-upload-handle")
        .body(upgate::body::empty())
        .expect("req");
    let (res, _) = send(preflight).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert_eq!(
        res.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(res.headers["access-control-allow-credentials"], "true");
    assert!(
        res.headers["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .contains("X-Upload-Handle")
    );

    let req = b
        .request("GET", "/uploads")
        .header("origin", "https://app.example")
        .body(upgate::body::empty())
        .expect("req");
    let (res, _) = send(req).await;
    assert_eq!(
        res.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        res.headers["access-control-expose-headers"]
            .to_str()
            .expect("ascii")
            .contains("X-Upload-Handle")
    );

    for (origin, path) in [
        ("https://evil.example", "/uploads"),
        ("https://app.example", "/app/page"),
    ] {
        let req = b
            .request("GET", path)
            .header("origin", origin)
            .body(upgate::body::empty())
            .expect("req");
        let (res, _) = send(req).await;
        assert!(
            !res.headers.contains_key("access-control-allow-origin"),
            "{origin} {path}"
        );
    }
}

#[tokio::test]
async fn hostile_multipart_shapes_are_refused_with_bounded_memory() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "").await;
    let b = register(&gw, "bombs").await;
    // A part header that never ends.
    let mut bomb = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.txt\"\r\nX-Pad: "
    )
    .into_bytes();
    bomb.extend(std::iter::repeat_n(b'a', 8 << 20));
    let req = b
        .request("POST", "/uploads")
        .header("content-type", multipart_type())
        .body(upgate::body::full(bomb))
        .expect("req");
    let (res, body) = send(req).await;
    assert_eq!(
        (res.status, json(&body)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    // More text fields than a form has.
    let fields: Vec<(String, Vec<u8>)> = (0..1001).map(|i| (format!("f{i}"), Vec::new())).collect();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), None, v.as_slice()))
        .collect();
    parts.push(("file", Some("a.pdf"), b"%PDF-1.4\n"));
    let (status, body) = b.upload(&parts).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request")),
        "{body}"
    );
}

#[tokio::test]
async fn a_stalled_body_is_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&up.url(), "idle_timeout = \"500ms\"\n").await;
    let b = register(&gw, "stall").await;
    let body = multipart(&[("f", Some("slow.txt"), &vec![b'x'; 64 * 1024])]);
    let mut stream = raw_upload(gw.addr, &b, body.len()).await;
    within(5, stream.write_all(&body[..1000]))
        .await
        .expect("some body");
    let mut answer = vec![0u8; 4096];
    let n = within(10, stream.read(&mut answer))
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    within(10, async {
        while temp_files(&gw) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A raw connection that has sent the head of an upload of `len` body bytes, and nothing else yet.
async fn raw_upload(addr: std::net::SocketAddr, b: &Browser, len: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "POST /uploads HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nX-Upload-Handle: {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\n\r\n",
        b.cookie,
        b.handle,
        multipart_type(),
    );
    let mut stream = tcp(addr).await;
    within(5, stream.write_all(head.as_bytes()))
        .await
        .expect("head");
    stream
}
