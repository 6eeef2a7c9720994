//! The control API on its own listener (SPEC §8): signing, health, readiness and metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::body::{self, Body};
use crate::config::parse_duration;
use crate::error::{Error, Kind, Result};
use crate::files::signed::sign_path;
use crate::gateway::Gateway;
use crate::proxy::unix_now;

/// The largest JSON body the control API reads.
const MAX_JSON: usize = 64 * 1024;

/// The body of `POST /v1/sign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    path: String,
    method: Option<String>,
    ttl: Option<Ttl>,
}

/// A lifetime as the config writes it (`"10m"`) or in seconds (`600`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
}

/// The control listener's service.
pub struct Control {
    gateway: Arc<Gateway>,
}

impl Control {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    pub async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => {
                body::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
            }
            (&Method::GET | &Method::HEAD, "/readyz") => self.readyz().await,
            (&Method::POST, "/v1/sign") => match self.sign(req).await {
                Ok(url) => body::json(StatusCode::OK, &serde_json::json!({ "url": url })),
                Err(e) => {
                    tracing::info!(error = %e, "sign request refused");
                    body::json(e.status(), &e.body(false))
                }
            },
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let mut res = Response::new(body::full(self.gateway.metrics.render()));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                res
            }
            _ => body::json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "not_found", "verbose_error": "no such control endpoint" }),
            ),
        }
    }

    /// `POST /v1/sign` `{"path","method"?,"ttl"?}`: the URL `upgate sign` would print.
    async fn sign(&self, req: Request<Incoming>) -> Result<String> {
        let bad = |detail: String| Error::new(Kind::BadRequest, detail);
        let bytes = Limited::new(req.into_body(), MAX_JSON)
            .collect()
            .await
            .map_err(|e| {
                bad(format!(
                    "the body could not be read (at most {MAX_JSON} bytes): {e}"
                ))
            })?
            .to_bytes();
        let ask: SignRequest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("the body: {e}")))?;
        let files = &self.gateway.config.files;
        let ttl = match ask.ttl {
            None => files.max_url_ttl,
            Some(Ttl::Seconds(s)) => Duration::from_secs(s),
            Some(Ttl::Text(t)) => parse_duration(&t).map_err(|p| bad(format!("ttl: {p}")))?,
        };
        sign_path(
            &self.gateway.secret,
            ask.method.as_deref().unwrap_or("GET"),
            &ask.path,
            ttl,
            files.max_url_ttl,
            unix_now(),
        )
        .map_err(bad)
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
