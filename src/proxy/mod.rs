//! Forwarding to the upstream application: the pooled client, header hygiene and upgrades (SPEC §3).

pub mod directives;
pub mod headers;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{self, Body};
use crate::config;
use crate::error::{Error, Kind, Result};
use crate::gateway::Ctx;
use crate::signing::Secret;

/// The upstream application: where it is and a keep-alive connection pool to it.
pub struct Upstream {
    /// One pool per public worker thread, and one for every other thread (index 0): a pooled
    /// connection is driven by the runtime that opened it, so each worker keeps its own.
    clients: Vec<Client<HttpConnector, Body>>,
    scheme: Scheme,
    authority: Authority,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let pool = || {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector.clone())
        };
        Self {
            clients: (0..=crate::server::workers()).map(|_| pool()).collect(),
            scheme: cfg.scheme.clone(),
            authority: cfg.authority.clone(),
            response_timeout: cfg.response_timeout,
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The upstream's URI for a request path.
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query.map_or("/", |p| p.as_str()))
            .build()
            .map_err(|e| {
                Error::new(Kind::BadRequest, "request target cannot be forwarded").with_source(e)
            })
    }

    /// Sends a prepared request; once its body is sent, waits at most `response_timeout` for the
    /// response headers (nginx's `proxy_read_timeout`: a long upload is not a slow upstream).
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>> {
        let (sent, body_done) = tokio::sync::oneshot::channel::<()>();
        let req = req.map(|b| {
            body::boxed(crate::body::Counted::new(
                b,
                Default::default(),
                OnDrop(Some(sent)),
            ))
        });
        let client = &self.clients[crate::server::worker() % self.clients.len()];
        let exchange = client.request(req);
        tokio::pin!(exchange);
        let early = tokio::select! {
            res = &mut exchange => Some(res),
            _ = body_done => None,
        };
        let answered = match early {
            Some(res) => Ok(res),
            None => tokio::time::timeout(self.response_timeout, exchange).await,
        };
        match answered {
            Err(_) => Err(Error::new(
                Kind::UpstreamTimeout,
                format!("no response headers within {:?}", self.response_timeout),
            )),
            Ok(Err(e)) => {
                let what = if e.is_connect() {
                    "cannot connect to the upstream"
                } else {
                    "the upstream connection failed"
                };
                Err(Error::new(Kind::UpstreamUnreachable, what).with_source(e))
            }
            Ok(Ok(res)) => Ok(res),
        }
    }
}

/// Fires when dropped: the request body (and so this guard) is dropped once it is fully sent.
struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Sets every header SPEC §3 has upgate set, after removing what a client may not send.
pub fn prepare_headers(
    req: &mut http::request::Parts,
    ctx: &Ctx,
    secret: &Secret,
    session: Option<&str>,
) {
    let host = headers::request_host(&req.headers, &req.uri).map(str::to_string);
    let h = &mut req.headers;
    headers::remove_hop_by_hop(h);
    headers::strip_reserved(h, ctx.trusted_peer);
    headers::set_forwarded(
        h,
        headers::Origin {
            peer: ctx.peer.ip(),
            trusted_peer: ctx.trusted_peer,
            tls: ctx.tls,
            host: host.as_deref(),
        },
    );
    if let Some(v) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        h.insert(HOST, v);
    }
    join_cookies(h);
    set_header(h, headers::X_REQUEST_ID, &ctx.id);
    if let Some(client) = &ctx.client {
        set_header(h, headers::X_UPGATE_CLIENT, client);
    }
    if let Some(session) = session {
        set_header(h, headers::X_UPLOAD_SESSION, session);
    }
    let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let signature = secret.upstream_signature(
        unix_now(),
        req.method.as_str(),
        path_and_query,
        ctx.client.as_deref().unwrap_or(""),
        session.unwrap_or(""),
    );
    set_header(h, headers::X_UPGATE_SIGNATURE, &signature);
}

/// HTTP/2 clients send each cookie as its own field; an HTTP/1.1 upstream expects one `Cookie`
/// line, joined with "; " (RFC 9113 §8.2.3), or frameworks read `a=1,b=2` as one cookie.
fn join_cookies(h: &mut http::HeaderMap) {
    use http::header::COOKIE;
    if h.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = h
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        h.insert(COOKIE, v);
    }
}

fn set_header(h: &mut http::HeaderMap, name: http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Forwards a request upstream and streams the answer back; an accepted upgrade becomes a tunnel.
pub async fn forward(
    upstream: &Upstream,
    secret: &Secret,
    mut req: Request<Body>,
    ctx: &Ctx,
    session: Option<&str>,
    extra: impl FnOnce(&mut http::HeaderMap),
) -> Result<Response<Incoming>> {
    let upgrade =
        headers::upgrade_protocol(req.headers()).map(|p| (p, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    prepare_headers(&mut parts, ctx, secret, session);
    extra(&mut parts.headers);
    parts.uri = upstream.uri(parts.uri.path_and_query())?;
    parts.version = Version::HTTP_11;
    let client_upgrade = upgrade.map(|(protocol, on_client)| {
        headers::set_upgrade(&mut parts.headers, protocol);
        on_client
    });
    let started = Instant::now();
    let mut res = upstream.send(Request::from_parts(parts, body)).await?;
    ctx.exchange.set_upstream_time(started.elapsed());
    match client_upgrade {
        Some(on_client) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let on_upstream = hyper::upgrade::on(&mut res);
            tokio::spawn(tunnel(on_client, on_upstream, ctx.id.clone()));
        }
        _ => headers::remove_hop_by_hop(res.headers_mut()),
    }
    Ok(res)
}

/// Copies bytes both ways between an upgraded client and upstream connection until either side closes.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, id: String) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%id, error = %e, "upgrade not completed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(%id, up, down, "tunnel closed"),
        Err(e) => tracing::debug!(%id, error = %e, "tunnel ended"),
    }
}

/// An upstream response as the client's response body type.
pub fn into_client_response(res: Response<Incoming>) -> Response<Body> {
    res.map(body::boxed)
}
