//! `upgate demo`: the gateway in front of a built-in demo application that shows every flow on one page.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{self, Body};
use crate::config::{self, Config};
use crate::proxy::unix_now;
use crate::signing::Secret;

const PAGE: &str = include_str!("page.html");

/// Where the demo keeps its secret, files and state, relative to the working folder.
pub const DATA: &str = "upgate-demo";

/// The demo's config: every flow switched on, everything under `data`.
pub fn config_text(listen: SocketAddr, upstream: SocketAddr, data: &Path) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
[upstream]
url = "http://{upstream}"
[secret]
file = "{data}/secret"
[storage]
root = "{data}"
[uploads]
max_file_bytes = "50MiB"
[files]
media_root = "{data}/media"
[[intercept]]
path = "/demo/avatar"
accept = ["png", "jpeg", "gif", "webp"]
max_file_bytes = "5MiB"
[control]
listen = "127.0.0.1:0"
"#,
        data = data.display()
    )
}

/// Runs the demo until SIGTERM or SIGINT.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let data = std::env::current_dir()
        .context("the working folder")?
        .join(DATA);
    let media = data.join("media");
    std::fs::create_dir_all(&media).with_context(|| format!("creating {}", media.display()))?;
    std::fs::write(
        media.join("welcome.txt"),
        "Welcome to upgate: this file came through a signed URL.\n",
    )?;
    std::fs::write(
        media.join("invoice.txt"),
        "Invoice 42: served through X-Accel-Redirect.\n",
    )?;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo application")?;
    let app_addr = app.local_addr()?;
    let text = config_text(listen, app_addr, &data);
    let config = Config::from_file(config::parse_file(&text)?, Path::new("."))?;
    let key = config::secret::load_or_create(&config.secret_file)?;
    let demo = Arc::new(Demo {
        secret: Secret::new(&key),
        slots_route: config.slots.route.clone(),
        media_route: config.files.media_route.clone(),
    });
    tokio::spawn(serve_app(app, demo));
    let grace = config.server.shutdown_grace;
    let stop = crate::cli::shutdown_signal()?;
    let running = crate::cli::start(config).await?;
    let url = format!("http://{}/", running.http[0]);
    println!(
        "upgate demo: open {url}  (data in {}; Ctrl-C to stop)",
        data.display()
    );
    tracing::info!(%url, "demo ready");
    stop.await;
    running.drain(grace).await;
    Ok(())
}

/// The demo application: what an existing web application would do behind upgate.
struct Demo {
    secret: Secret,
    slots_route: String,
    media_route: String,
}

async fn serve_app(listener: tokio::net::TcpListener, demo: Arc<Demo>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let demo = demo.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let demo = demo.clone();
                async move { Ok::<_, std::convert::Infallible>(demo.route(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl Demo {
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        match (req.method().as_str(), req.uri().path()) {
            ("GET", "/") => html(StatusCode::OK, self.page()),
            ("GET", "/demo/register") => {
                let token = format!("demo-{}", uuid::Uuid::new_v4());
                let mut res =
                    body::json(StatusCode::OK, &serde_json::json!({ "registered": true }));
                let directive = format!("{token}; max-files=20");
                if let Ok(v) = directive.parse() {
                    res.headers_mut().insert("x-upgate-register", v);
                }
                res
            }
            ("POST", "/demo/avatar") => self.received("the intercepted form", req).await,
            ("POST", "/demo/slot-done") => self.received("the slot callback", req).await,
            ("GET", "/demo/invoice") => {
                let mut res = Response::new(body::full("the application's body is never sent"));
                let h = res.headers_mut();
                h.insert(
                    "x-accel-redirect",
                    header::HeaderValue::from_static("/media/invoice.txt"),
                );
                h.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                res
            }
            _ => html(StatusCode::NOT_FOUND, "<p>Not found.</p>".into()),
        }
    }

    fn page(&self) -> String {
        let expires = unix_now() + 600;
        let cb = form_encode("/demo/slot-done");
        let slot = self.secret.sign_url(
            "POST",
            &self.slots_route,
            &format!("cb={cb}&accept=pdf,txt&max-bytes=10MiB"),
            expires,
        );
        let media = self.secret.sign_url(
            "GET",
            &format!("{}/welcome.txt", self.media_route),
            "",
            expires,
        );
        PAGE.replace("{{SLOT_URL}}", &slot)
            .replace("{{MEDIA_URL}}", &media)
    }

    /// Shows what the application received in place of the files.
    async fn received(&self, what: &str, req: Request<Incoming>) -> Response<Body> {
        use http_body_util::BodyExt;
        let bytes = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return html(StatusCode::BAD_REQUEST, "<p>Too large.</p>".into()),
        };
        let rows: String = form_urlencoded::parse(&bytes)
            .map(|(k, v)| {
                format!(
                    "<tr><td><code>{}</code></td><td>{}</td></tr>",
                    escape(&k),
                    escape(&v)
                )
            })
            .collect();
        html(
            StatusCode::OK,
            format!(
                "<!doctype html><meta charset=utf-8><title>received</title><h1>The application received, through {what}:</h1><table>{rows}</table><p><a href=\"/\">Back</a></p>"
            ),
        )
    }
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut res = Response::new(body::full(page));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

/// The demo's data folder, for the README and tests.
pub fn data_dir() -> PathBuf {
    PathBuf::from(DATA)
}
