//! The control API on its own listener (SPEC §8): handles, sessions, files, signing, retention,
//! health, readiness and metrics.

pub mod client;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use serde_json::json;

use crate::body::{self, Body};
use crate::config::file::Size;
use crate::config::{parse_duration, parse_size};
use crate::db::Limits;
use crate::db::off_thread;
use crate::error::{Error, Kind, Result};
use crate::files::signed::sign_path;
use crate::gateway::{Gateway, Live};
use crate::proxy::{directives, unix_now};
use crate::upload;

/// The control listener's service.
pub struct Control {
    live: Live,
}

/// One control request, against the gateway in force when it arrived.
struct Api {
    gateway: Arc<Gateway>,
}

impl Control {
    pub fn new(live: Live) -> Self {
        Self { live }
    }

    /// The control service: never fails; errors become the JSON of SPEC.md.
    pub async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        if !local_host(
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok()),
        ) {
            // A browser page that rebinds its own name to 127.0.0.1 still sends its own Host.
            let e = Error::new(
                Kind::Forbidden,
                "the control API answers only to a local Host",
            );
            return body::json(e.status(), &e.body(false));
        }
        let api = Api {
            gateway: self.live.load_full(),
        };
        match api.route(req).await {
            Ok(res) => res,
            Err(e) => {
                tracing::info!(error = %e, "control request refused");
                body::json(e.status(), &e.body(false))
            }
        }
    }
}

impl Api {
    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>> {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let read = matches!(*req.method(), Method::GET | Method::HEAD);
        match (req.method().clone(), segments.as_slice()) {
            (_, ["healthz"]) if read => Ok(body::json(StatusCode::OK, &json!({ "status": "ok" }))),
            (_, ["readyz"]) if read => Ok(self.readyz().await),
            (_, ["metrics"]) if read => Ok(self.metrics()),
            (Method::POST, ["v1", "handles"]) => self.register(req).await,
            (Method::POST, ["v1", "sign"]) => self.sign(req).await,
            (Method::POST, ["v1", "gc"]) => {
                self.gc(req.uri().query() == Some("dry_run=true")).await
            }
            (Method::DELETE, ["v1", "sessions", token]) => self.end_session(&decode(token)?).await,
            (Method::GET, ["v1", "sessions", token, "files"]) => {
                self.session_files(&decode(token)?).await
            }
            (Method::DELETE, ["v1", "files", id]) => self.delete_file(id).await,
            _ => Err(Error::new(Kind::NotFound, "no such control endpoint")),
        }
    }

    fn metrics(&self) -> Response<Body> {
        let mut res = Response::new(body::full(self.gateway.metrics.render()));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        res
    }

    /// `POST /v1/handles`: what `X-Upgate-Register` does, for a client key the upstream already knows.
    async fn register(&self, req: Request<Incoming>) -> Result<Response<Body>> {
        let r: RegisterRequest = read_json(req).await?;
        let token = directives::token(&r.session)
            .map_err(|why| Error::new(Kind::BadRequest, format!("session: {why}")))?;
        let valid_client = r.client.len() == 22
            && r.client
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_client {
            return Err(Error::new(
                Kind::BadRequest,
                "client: not a client key (22 base64url characters, as in X-Upgate-Client)",
            ));
        }
        let limits = r.limits()?;
        let gw = self.gateway.clone();
        let (handle, expires_at) = off_thread(move || {
            gw.registry
                .register(&gw.store.db, &token, &r.client, limits, unix_now())
        })
        .await?;
        Ok(body::json(
            StatusCode::OK,
            &json!({ "handle": handle, "expires_at": rfc3339(expires_at) }),
        ))
    }

    /// `POST /v1/sign` `{"path","method"?,"ttl"?}`: the URL `upgate sign` would print.
    async fn sign(&self, req: Request<Incoming>) -> Result<Response<Body>> {
        let bad = |detail: String| Error::new(Kind::BadRequest, detail);
        let ask: SignRequest = read_json(req).await?;
        let files = &self.gateway.config.files;
        let ttl = match ask.ttl {
            None => files.max_url_ttl,
            Some(Ttl::Seconds(s)) => Duration::from_secs(s),
            Some(Ttl::Text(t)) => parse_duration(&t).map_err(|p| bad(format!("ttl: {p}")))?,
        };
        let method = ask.method.as_deref().unwrap_or("GET");
        let url = sign_path(
            &self.gateway.secret,
            method,
            &ask.path,
            ttl,
            files.max_url_ttl,
            unix_now(),
        )
        .map_err(bad)?;
        Ok(body::json(StatusCode::OK, &json!({ "url": url })))
    }

    /// `POST /v1/gc[?dry_run=true]`: a retention sweep now (what `upgate gc` asks for).
    async fn gc(&self, dry_run: bool) -> Result<Response<Body>> {
        let gw = self.gateway.clone();
        let report = off_thread(move || {
            crate::retention::sweep(
                &gw.store,
                Some(&gw.registry),
                &gw.config,
                unix_now(),
                dry_run,
            )
        })
        .await?;
        if !dry_run {
            crate::retention::record(&self.gateway, &report);
        }
        Ok(body::json(
            StatusCode::OK,
            &serde_json::to_value(&report).unwrap_or_default(),
        ))
    }

    /// `DELETE /v1/sessions/<token>`: handles ended, files removed.
    async fn end_session(&self, token: &str) -> Result<Response<Body>> {
        let gw = self.gateway.clone();
        let token = token.to_string();
        off_thread(move || {
            gw.registry.revoke(&gw.store.db, &token)?;
            let files = gw.store.db.remove_session(&token)?;
            files.iter().for_each(|f| gw.store.remove_blob(&f.id));
            Ok::<_, crate::db::DbError>(())
        })
        .await?;
        Ok(no_content())
    }

    async fn session_files(&self, token: &str) -> Result<Response<Body>> {
        let gw = self.gateway.clone();
        let token = token.to_string();
        let files = off_thread(move || gw.store.db.session_files(&token)).await?;
        let described: Vec<_> = files
            .iter()
            .map(|f| upload::describe(&self.gateway, f))
            .collect();
        Ok(body::json(StatusCode::OK, &json!({ "files": described })))
    }

    async fn delete_file(&self, id: &str) -> Result<Response<Body>> {
        let removed = upload::api::remove(&self.gateway, vec![id.to_string()]).await?;
        if removed.is_empty() {
            return Err(Error::new(Kind::NotFound, "no such file"));
        }
        Ok(no_content())
    }

    /// Ready when the upstream accepts a connection and the storage root takes a write.
    async fn readyz(&self) -> Response<Body> {
        let config = &self.gateway.config;
        let upstream = upstream_reachable(
            self.gateway.upstream.authority().as_str(),
            config.upstream.connect_timeout,
        )
        .await;
        let storage = storage_writable(config.storage_root.clone()).await;
        let ready = upstream.is_ok() && storage.is_ok();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let problems: Vec<String> = [upstream.as_ref().err(), storage.as_ref().err()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        body::json(
            status,
            &serde_json::json!({
                "ready": ready,
                "upstream": upstream.is_ok(),
                "storage": storage.is_ok(),
                "problems": problems,
            }),
        )
    }
}

async fn upstream_reachable(authority: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("upstream {authority}: {e}")),
        Err(_) => Err(format!("upstream {authority}: connect timed out")),
    }
}

async fn storage_writable(root: PathBuf) -> Result<(), String> {
    let probe = root.join(format!(".readyz-{}", uuid::Uuid::new_v4()));
    let shown = root.display().to_string();
    tokio::task::spawn_blocking(move || {
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(&probe)
    })
    .await
    .map_err(|e| format!("storage {shown}: {e}"))?
    .map_err(|e| format!("storage {shown}: {e}"))
}

/// The body of `POST /v1/sign`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    path: String,
    method: Option<String>,
    ttl: Option<Ttl>,
}

/// A lifetime as the config writes it (`"10m"`) or in seconds (`600`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
}

/// The body of `POST /v1/handles`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    session: String,
    client: String,
    accept: Option<Vec<String>>,
    max_bytes: Option<Size>,
    max_files: Option<u64>,
}

impl RegisterRequest {
    fn limits(&self) -> Result<Limits> {
        let bad = |why: String| Error::new(Kind::BadRequest, why);
        let accept = match &self.accept {
            Some(list) => Some(directives::accept(&list.join(",")).map_err(bad)?),
            None => None,
        };
        let max_bytes = match &self.max_bytes {
            Some(Size::Bytes(n)) => Some(*n),
            Some(Size::Text(t)) => Some(parse_size(t).map_err(|e| bad(format!("max_bytes: {e}")))?),
            None => None,
        };
        if max_bytes == Some(0) || self.max_files == Some(0) {
            return Err(bad(
                "max_bytes and max_files must be greater than zero".into()
            ));
        }
        Ok(Limits {
            accept,
            max_bytes,
            max_files: self.max_files,
        })
    }
}

/// Whether a `Host` names this machine: a loopback address, `localhost`, or the name upgate's own
/// client uses; no Host at all (HTTP/1.0) is local too.
fn local_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name == client::HOST
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a small JSON body (at most 64 KiB). `Content-Type: application/json` is required: a
/// browser cannot send it across origins without a preflight, which the control API never grants.
async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return Err(Error::new(
            Kind::BadRequest,
            "send the body as Content-Type: application/json",
        ));
    }
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| Error::new(Kind::BadRequest, "body unreadable or over 64 KiB").with_source(e))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(Kind::BadRequest, format!("invalid JSON: {e}")))
}

fn decode(segment: &str) -> Result<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::new(Kind::BadRequest, "path segment is not UTF-8"))
}

fn no_content() -> Response<Body> {
    let mut res = Response::new(body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    res
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_hosts() {
        for ok in [
            None,
            Some("127.0.0.1:9091"),
            Some("localhost"),
            Some("LOCALHOST:1"),
            Some("[::1]:9091"),
            Some("127.1.2.3"),
            Some("upgate-control"),
        ] {
            assert!(local_host(ok), "{ok:?}");
        }
        for bad in [
            Some("evil.example"),
            Some("evil.example:9091"),
            Some("10.0.0.1:9091"),
            Some("[::2]:1"),
            Some("localhost.evil"),
        ] {
            assert!(!local_host(bad), "{bad:?}");
        }
    }
}
