//! The public listener's service: each request passes named phases and is answered once, never with a failure.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::SET_COOKIE;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::access::Exchange;
use crate::body::{self, Body, Counted};
use crate::config::Config;
use crate::error::{Error, Fault, Kind, Result};
use crate::files::{self, paths};
use crate::identity;
use crate::metrics::Metrics;
use crate::proxy::{self, Upstream, directives, headers};
use crate::server::Activity;
use crate::signing::Secret;
use crate::upload::store::Store;

/// Everything the request path shares: the validated config, the key, the upstream pool and the metrics.
pub struct Gateway {
    pub config: Config,
    pub secret: Secret,
    pub upstream: Upstream,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
}

/// The phase a request belongs to, with the path after its route.
enum Route<'a> {
    Files(&'a str),
    Media(&'a str),
    Upstream,
}

/// The connection a request came on.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
    pub activity: Arc<Activity>,
}

/// What the gateway knows of one request once its headers are read.
pub struct Ctx {
    pub id: String,
    pub peer: SocketAddr,
    pub trusted_peer: bool,
    pub tls: bool,
    /// The client key (SPEC §2), when the request has an identity.
    pub client: Option<String>,
    /// A cookie value minted for this response, set by a phase that needed an identity.
    pub issued_cookie: Option<String>,
    /// Set by the upload routes, whose errors carry `"accepted": false`.
    pub upload_api: bool,
    pub exchange: Arc<Exchange>,
}

impl Gateway {
    pub fn new(config: Config, secret: Secret, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        let upstream = Upstream::new(&config.upstream);
        Self {
            config,
            secret,
            upstream,
            store,
            metrics,
        }
    }

    /// The hyper service: never fails; every error becomes the JSON body of SPEC.md, logged once.
    pub async fn serve(self: Arc<Self>, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let mut ctx = self.context(&req, &conn);
        let exchange = ctx.exchange.clone();
        let req =
            req.map(|b| body::boxed(Counted::new(b, exchange.bytes_in.clone(), exchange.clone())));
        let res = match self.dispatch(req, &mut ctx).await {
            Ok(res) => res,
            Err(e) => {
                log_error(&ctx, &e);
                body::json(e.status(), &e.body(ctx.upload_api))
            }
        };
        self.finish(res, ctx)
    }

    /// The phases, in order; the first that owns the request answers it.
    async fn dispatch(&self, req: Request<Body>, ctx: &mut Ctx) -> Result<Response<Body>> {
        match self.route(req.uri().path()) {
            Route::Files(rest) => files::routes::files_route(self, &req, rest).await,
            Route::Media(rest) => files::routes::media_route(self, &req, rest).await,
            Route::Upstream => self.upstream(req, ctx).await,
        }
    }

    /// Which phase owns a path; a route owns itself and what is below it (`/files/...`, not `/filesystem`).
    fn route<'a>(&self, path: &'a str) -> Route<'a> {
        let files = &self.config.files;
        if let Some(rest) = paths::route_rest(path, &files.route) {
            return Route::Files(rest);
        }
        if files.media_root.is_some()
            && let Some(rest) = paths::route_rest(path, &files.media_route)
        {
            return Route::Media(rest);
        }
        Route::Upstream
    }

    /// The fallthrough: forward upstream; a file named by `X-Accel-Redirect` replaces the answer's body.
    async fn upstream(&self, req: Request<Body>, ctx: &Ctx) -> Result<Response<Body>> {
        let method = req.method().clone();
        let conditional = files::conditional_headers(req.headers());
        let mut res = proxy::forward(&self.upstream, &self.secret, req, ctx, None).await?;
        let files = &self.config.files;
        let accel = directives::take_accel(res.headers_mut(), &files.route, &files.media_route)
            .map_err(|e| Error::new(Kind::BadUpstreamDirective, e))?;
        match accel {
            Some(target) => files::routes::accel(self, &method, &conditional, res, target).await,
            None => Ok(proxy::into_client_response(res)),
        }
    }

    fn context(&self, req: &Request<Incoming>, conn: &Conn) -> Ctx {
        let trusted_peer = self
            .config
            .server
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&conn.peer.ip()));
        let id = trusted_peer
            .then(|| headers::trusted_request_id(req.headers()))
            .flatten()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let client = identity::identity_value(req.headers(), &self.config.identity, &self.secret)
            .map(|v| self.secret.client_key(&v));
        let exchange = Arc::new(Exchange::begin(
            id.clone(),
            req.method().clone(),
            req.uri().path().to_string(),
            self.metrics.clone(),
            conn.activity.clone(),
        ));
        Ctx {
            id,
            peer: conn.peer,
            trusted_peer,
            tls: conn.tls,
            client,
            issued_cookie: None,
            upload_api: false,
            exchange,
        }
    }

    /// Adds what every answer carries, and counts its body as it streams out.
    fn finish(&self, res: Response<Body>, ctx: Ctx) -> Response<Body> {
        let (mut parts, body) = res.into_parts();
        if let Ok(v) = HeaderValue::from_str(&ctx.id) {
            parts.headers.insert(headers::X_REQUEST_ID, v);
        }
        if let (Some(value), crate::config::IdentitySource::Cookie(name)) =
            (&ctx.issued_cookie, &self.config.identity.source)
            && let Some(v) = identity::issued_cookie(name, value, ctx.tls)
        {
            parts.headers.append(SET_COOKIE, v);
        }
        ctx.exchange.set_status(parts.status);
        let body = body::boxed(Counted::new(
            body,
            ctx.exchange.bytes_out.clone(),
            ctx.exchange,
        ));
        Response::from_parts(parts, body)
    }
}

fn log_error(ctx: &Ctx, e: &Error) {
    match e.fault() {
        Fault::Client => tracing::info!(id = %ctx.id, error = %e, "request refused"),
        Fault::Upstream => tracing::warn!(id = %ctx.id, error = %e, "upstream failure"),
        Fault::Internal => tracing::error!(id = %ctx.id, error = %e, "internal error"),
    }
}
