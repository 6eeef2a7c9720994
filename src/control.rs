//! The control API on its own listener (SPEC §8): health, readiness and metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::gateway::Gateway;

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
