//! Store-and-forward (SPEC §6): intercepted upload routes and signed single-use upload slots.
//! The files are stored exactly as the upload API stores them; the application receives their description.

use std::collections::HashMap;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};

use crate::body::{self, Body};
use crate::config::{Intercept, Rewrite};
use crate::db::{FileRecord, Owner};
use crate::error::{Error, Kind, Result};
use crate::gateway::{Ctx, Gateway};
use crate::proxy::unix_now;
use crate::upload;
use crate::upload::ingest::{self, Ingested, Policy};

pub const X_UPGATE_SLOT: http::HeaderName = http::HeaderName::from_static("x-upgate-slot");
/// On every forward whose body upgate rewrote: `form` or `json`.
pub const X_UPGATE_INTERCEPT: http::HeaderName =
    http::HeaderName::from_static("x-upgate-intercept");

/// The intercept that owns a path, if any. The path is compared in its normal form, so that
/// `/profile/%61vatar` or `/profile//avatar` cannot carry a raw file past the route.
pub fn find<'a>(intercepts: &'a [Intercept], path: &str) -> Option<&'a Intercept> {
    if intercepts.is_empty() {
        return None;
    }
    let path = normalize(path);
    let path = path.as_str();
    intercepts.iter().find(|i| {
        if i.prefix {
            path.starts_with(&i.path)
        } else {
            path == i.path
        }
    })
}

/// RFC 3986 normal form of a path as servers behind upgate read it: percent-decoded where the
/// byte is unreserved, empty and `.` segments dropped, `..` resolved.
pub fn normalize(path: &str) -> String {
    let decoded: Vec<u8> = {
        let bytes = path.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    let b = (h * 16 + l) as u8;
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    };
    let text = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = text.ends_with('/') && !segments.is_empty();
    format!("/{}{}", segments.join("/"), if trailing { "/" } else { "" })
}

/// Whether a request carries a multipart form: only those are intercepted, the rest goes upstream untouched.
pub fn is_multipart(req: &Request<Body>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// Where the stored files' description goes, and how.
struct Target {
    method: Method,
    uri: Uri,
    rewrite: Rewrite,
    slot: Option<String>,
}

/// An intercepted route: store the files, then forward the request with their description.
pub async fn intercepted(
    gw: &Gateway,
    req: Request<Body>,
    ctx: &mut Ctx,
    route: &Intercept,
) -> Result<Response<Body>> {
    ctx.upload_api = true;
    let cfg = &gw.config.uploads;
    let policy = policy(
        gw,
        route.accept.as_ref().unwrap_or(&cfg.accept),
        route.max_file_bytes.unwrap_or(cfg.max_file_bytes),
    );
    let target = Target {
        method: req.method().clone(),
        uri: req.uri().clone(),
        rewrite: route.rewrite,
        slot: None,
    };
    store_and_forward(gw, req, ctx, &policy, target).await
}

/// A slot: `POST <slots.route>?cb=..&expires=..[&accept=..][&max-bytes=..]&sig=..`, good once.
pub async fn slot(gw: &Gateway, req: Request<Body>, ctx: &mut Ctx) -> Result<Response<Body>> {
    ctx.upload_api = true;
    if req.method() != Method::POST {
        return Err(Error::new(Kind::MethodNotAllowed, "a slot takes POST only"));
    }
    let now = unix_now();
    let signed = gw
        .secret
        .verify_url(
            "POST",
            req.uri().path(),
            req.uri().query(),
            now,
            gw.config.files.max_url_ttl.as_secs(),
        )
        .map_err(|e| Error::new(url_error_kind(e), format!("slot URL: {}", e.code())))?;
    let cb = callback(signed.get("cb").unwrap_or(""))?;
    let cfg = &gw.config.uploads;
    let accept = match signed.get("accept") {
        Some(list) => crate::proxy::directives::accept(list)
            .map_err(|why| Error::new(Kind::BadRequest, why))?,
        None => cfg.accept.clone(),
    };
    let max_bytes = match signed.get("max-bytes") {
        Some(s) => crate::config::parse_size(s)
            .map_err(|why| Error::new(Kind::BadRequest, format!("max-bytes: {why}")))?,
        None => cfg.max_file_bytes,
    };
    let policy = policy(gw, &accept, max_bytes);
    let sig = signed.sig().to_string();
    let (store, key, expires) = (gw.store.clone(), sig.clone(), signed.expires);
    let fresh = crate::db::off_thread(move || store.db.use_slot(&key, expires)).await?;
    if !fresh {
        return Err(Error::new(Kind::SlotUsed, "this upload slot has been used"));
    }
    let target = Target {
        method: Method::POST,
        uri: cb,
        rewrite: gw.config.slots.rewrite,
        slot: Some(sig),
    };
    store_and_forward(gw, req, ctx, &policy, target).await
}

pub fn url_error_kind(e: crate::signing::UrlError) -> Kind {
    match e {
        crate::signing::UrlError::BadSignature => Kind::BadSignature,
        crate::signing::UrlError::Expired => Kind::Expired,
        crate::signing::UrlError::TtlTooLong => Kind::TtlTooLong,
    }
}

/// A callback must be a path on the upstream: no scheme, no host, nothing that could send upgate elsewhere.
fn callback(cb: &str) -> Result<Uri> {
    let bad = |why: &str| Error::new(Kind::BadRequest, format!("slot callback {cb:?}: {why}"));
    if !cb.starts_with('/') || cb.starts_with("//") {
        return Err(bad("must be a path starting with a single /"));
    }
    if cb.contains(['\\', '#']) || cb.chars().any(char::is_control) {
        return Err(bad("has a character a path may not have"));
    }
    let uri: Uri = cb.parse().map_err(|_| bad("is not a valid path"))?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(bad("names a host"));
    }
    Ok(uri)
}

/// A store-and-forward request may hold what one upload session may: `max_session_files` files
/// of at most `max_file_bytes`, `max_session_bytes` in all.
fn policy(gw: &Gateway, accept: &[String], max_file_bytes: u64) -> Policy {
    let cfg = &gw.config.uploads;
    Policy {
        accept: upload::formats(accept),
        max_file_bytes,
        max_total_bytes: cfg.max_session_bytes,
        max_files: cfg.max_session_files,
        existing: HashMap::new(),
        body_timeout: gw.config.server.idle_timeout,
    }
}

async fn store_and_forward(
    gw: &Gateway,
    req: Request<Body>,
    ctx: &mut Ctx,
    policy: &Policy,
    target: Target,
) -> Result<Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let ingested = ingest::ingest(&gw.store, &parts.headers, body, policy).await?;
    refuse_shadowing(&ingested)?;
    let fields = ingested.fields.clone();
    let field_of: Vec<String> = ingested.parts.iter().map(|p| p.field.clone()).collect();
    let owner = Owner::Intercept {
        expires_at: unix_now() + gw.config.uploads.intercept_retention.as_secs(),
    };
    let store = gw.store.clone();
    let records =
        crate::db::off_thread(move || upload::commit(&store, &owner, ingested, None)).await?;
    gw.count_accepted(&records);
    // Until the application has said yes, the files are provisional, even if this request is dropped.
    let mut provisional = Provisional {
        store: gw.store.clone(),
        ids: records.iter().map(|r| r.id.clone()).collect(),
    };
    let (content_type, description) = describe(gw, target.rewrite, &fields, &field_of, &records);
    parts.method = target.method;
    parts.uri = target.uri;
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(description.len()));
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    let req = Request::from_parts(parts, body::full(description));
    let (slot, rewrite) = (target.slot, target.rewrite);
    let outcome = gw
        .proxy_with(req, ctx, |headers| {
            // Only upgate can set X-Upgate-* upstream: this tells the application that the body is
            // upgate's description, not something a client posted to the same path.
            headers.insert(X_UPGATE_INTERCEPT, HeaderValue::from_static(rewrite.name()));
            if let Some(v) = slot.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
                headers.insert(X_UPGATE_SLOT, v);
            }
        })
        .await;
    let ids = std::mem::take(&mut provisional.ids);
    if !matches!(&outcome, Ok(r) if r.status().is_success())
        && let Err(e) = upload::api::remove(gw, ids).await
    {
        tracing::error!(id = %ctx.id(), error = %e, "cannot remove the files of a refused forward");
    }
    outcome
}

/// Files stored for a forward that has not (yet) been accepted; dropped armed, it removes them.
struct Provisional {
    store: std::sync::Arc<upload::store::Store>,
    ids: Vec<String>,
}

impl Drop for Provisional {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let (store, ids) = (self.store.clone(), std::mem::take(&mut self.ids));
        let remove = move || {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            match store.db.remove_files(&refs) {
                Ok(removed) => removed.iter().for_each(|f| store.remove_blob(&f.id)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot remove the files of a refused forward")
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// The keys of a file's description; a text field may not pose as one of them.
const DESCRIPTION_KEYS: [&str; 7] = [
    "name",
    "id",
    "size",
    "content_type",
    "sha256",
    "path",
    "url",
];

/// Refuses a text field named like a file's description (`doc.path` beside a file field `doc`),
/// which would otherwise reach the application next to upgate's own.
fn refuse_shadowing(ingested: &Ingested) -> Result<()> {
    for (name, _) in &ingested.fields {
        let posing = name.split_once('.').is_some_and(|(field, key)| {
            DESCRIPTION_KEYS.contains(&key) && ingested.parts.iter().any(|p| p.field == field)
        });
        if posing {
            return Err(Error::new(
                Kind::BadRequest,
                format!("the text field {name:?} would pose as a file's description"),
            ));
        }
    }
    Ok(())
}

/// The small body the application receives in place of the files.
fn describe(
    gw: &Gateway,
    rewrite: Rewrite,
    fields: &[(String, String)],
    field_of: &[String],
    records: &[FileRecord],
) -> (&'static str, Bytes) {
    let files: Vec<(String, Vec<(&'static str, String)>)> = records
        .iter()
        .zip(field_of)
        .map(|(f, field)| {
            let described = upload::describe(gw, f);
            let text = |k: &str| {
                described[k]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| described[k].to_string())
            };
            let path = gw.store.blob_path(&f.id).display().to_string();
            let props = vec![
                ("name", f.name.clone()),
                ("id", f.id.clone()),
                ("size", f.size.to_string()),
                ("content_type", f.content_type.clone()),
                ("sha256", f.sha256.clone()),
                ("path", path),
                ("url", text("url")),
            ];
            (field.clone(), props)
        })
        .collect();
    match rewrite {
        Rewrite::Form => {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                form.append_pair(k, v);
            }
            for (field, props) in &files {
                for (k, v) in props {
                    form.append_pair(&format!("{field}.{k}"), v);
                }
            }
            (
                "application/x-www-form-urlencoded",
                Bytes::from(form.finish()),
            )
        }
        Rewrite::Json => {
            let mut map = serde_json::Map::new();
            for (k, v) in fields {
                let value = serde_json::Value::String(v.clone());
                match map.get_mut(k) {
                    Some(serde_json::Value::Array(list)) => list.push(value),
                    Some(first) => *first = serde_json::Value::Array(vec![first.clone(), value]),
                    None => {
                        map.insert(k.clone(), value);
                    }
                }
            }
            let files: Vec<serde_json::Value> = files
                .iter()
                .zip(records)
                .map(|((field, props), f)| {
                    let mut o = serde_json::Map::new();
                    o.insert("field".into(), field.clone().into());
                    for (k, v) in props {
                        o.insert((*k).into(), v.clone().into());
                    }
                    o.insert("size".into(), f.size.into());
                    o.into()
                })
                .collect();
            let body = serde_json::json!({ "fields": map, "files": files });
            ("application/json", Bytes::from(body.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_must_be_upstream_paths() {
        assert_eq!(callback("/docs/new?a=1").expect("path").path(), "/docs/new");
        for bad in [
            "",
            "docs",
            "//evil.test/x",
            "http://evil.test/x",
            "/a\\b",
            "/a\nb",
            "/a#frag",
            "https:x",
        ] {
            assert!(callback(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn normal_forms() {
        assert_eq!(normalize("/profile/avatar"), "/profile/avatar");
        assert_eq!(normalize("/profile/%61vatar"), "/profile/avatar");
        assert_eq!(normalize("/profile//avatar"), "/profile/avatar");
        assert_eq!(normalize("/profile/./avatar"), "/profile/avatar");
        assert_eq!(normalize("/x/../profile/avatar"), "/profile/avatar");
        assert_eq!(normalize("/docs/a/"), "/docs/a/");
        assert_eq!(
            normalize("/a%2Fb"),
            "/a%2Fb",
            "an encoded slash stays encoded"
        );
        assert_eq!(normalize("/%"), "/%");
        assert_eq!(normalize("/%6"), "/%6");
    }

    #[test]
    fn intercept_matching() {
        let exact = Intercept {
            path: "/avatar".into(),
            prefix: false,
            accept: None,
            max_file_bytes: None,
            rewrite: Rewrite::Form,
        };
        let prefix = Intercept {
            path: "/docs/".into(),
            prefix: true,
            ..exact.clone()
        };
        let list = [exact, prefix];
        assert!(find(&list, "/avatar").is_some());
        assert!(find(&list, "/avatar/x").is_none());
        assert!(find(&list, "/docs/a/b").is_some());
        assert!(find(&list, "/docs").is_none());
    }
}
