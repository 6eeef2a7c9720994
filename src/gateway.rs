//! The public listener's service: each request passes named phases and is answered once, never with a failure.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::SET_COOKIE;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::access::{self, Exchange};
use crate::assets;
use crate::body::{self, Body, Counted};
use crate::config::{Config, IdentitySource};
use crate::cors;
use crate::db::off_thread;
use crate::error::{Error, Fault, Kind, Result};
use crate::files::{self, paths};
use crate::handles::{Registry, Token};
use crate::identity;
use crate::intercept;
use crate::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::proxy::{self, Upstream, directives, headers};
use crate::server::Activity;
use crate::signing::Secret;
use crate::upload::{self, SessionLocks, store::Store};

/// The gateway in force; SIGHUP swaps in a new one, each request takes the one current when it starts.
pub type Live = Arc<arc_swap::ArcSwap<Gateway>>;

/// Everything the request path shares: the validated config, the key, the upstream pool and the metrics.
pub struct Gateway {
    pub config: Config,
    pub secret: Secret,
    pub upstream: Upstream,
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub session_locks: Arc<SessionLocks>,
    pub metrics: Arc<Metrics>,
}

/// The phase a request belongs to, with the path after its route.
enum Route<'a> {
    Assets(&'a str),
    Uploads(&'a str),
    Slot,
    Intercept(&'a crate::config::Intercept),
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
    pub peer: SocketAddr,
    pub trusted_peer: bool,
    pub tls: bool,
    /// The client key (SPEC §2), when the request has an identity.
    pub client: Option<String>,
    /// A cookie value minted for this response, set by a phase that needed an identity.
    pub issued_cookie: Option<String>,
    /// Set by the upload routes, whose errors carry `"accepted": false`.
    pub upload_api: bool,
    /// An allowed CORS origin of a request to upgate's own routes (cleared for upstream ones).
    pub cors_origin: Option<HeaderValue>,
    /// The request's exchange, which also holds its id.
    pub exchange: Arc<Exchange>,
}

impl Ctx {
    /// The request id (`X-Request-Id`).
    pub fn id(&self) -> &str {
        &self.exchange.id
    }
}

impl Gateway {
    pub fn new(
        config: Config,
        secret: Secret,
        store: Arc<Store>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let upstream = Upstream::new(&config.upstream, config.server.idle_timeout);
        Self {
            config,
            secret,
            upstream,
            store,
            registry,
            session_locks: Arc::default(),
            metrics,
        }
    }

    /// The same gateway under a new config and key (SIGHUP): the state, the locks and the metrics
    /// are shared, so nothing in flight notices.
    pub fn reloaded(&self, config: Config, secret: Secret) -> Self {
        self.registry.set_ttl(config.uploads.handle_ttl);
        Self {
            upstream: Upstream::new(&config.upstream, config.server.idle_timeout),
            config,
            secret,
            store: self.store.clone(),
            registry: self.registry.clone(),
            session_locks: self.session_locks.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The hyper service: never fails; every error becomes the JSON body of SPEC.md, logged once.
    pub async fn serve(self: Arc<Self>, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let mut ctx = self.context(&req, &conn);
        let exchange = ctx.exchange.clone();
        let req = req.map(|b| {
            body::boxed(Counted::new(
                body::Linger::new(b),
                access::Received(exchange.clone()),
            ))
        });
        let res = match self.dispatch(req, &mut ctx).await {
            Ok(res) => res,
            Err(e) => {
                log_error(&ctx, &e);
                self.count_error(&ctx, &e);
                body::json(e.status(), &e.body(ctx.upload_api))
            }
        };
        self.finish(res, ctx)
    }

    /// The phases, in order; the first that owns the request answers it.
    async fn dispatch(&self, req: Request<Body>, ctx: &mut Ctx) -> Result<Response<Body>> {
        let path = req.uri().path().to_string();
        let route = self.route(&path, &req);
        if matches!(route, Route::Upstream) {
            ctx.cors_origin = None;
        } else if let Some(origin) = &ctx.cors_origin
            && cors::is_preflight(req.method(), req.headers())
        {
            return Ok(cors::preflight(origin.clone()));
        }
        // The upload phases' futures are 4.4-5.4 KiB (multipart parsing, the writer, the record):
        // boxed, so that every request's future, the proxy's included, is not that size and is
        // not copied at that size where hyper and tokio move it.
        match route {
            Route::Assets(rest) => assets::serve(req.method(), rest),
            Route::Uploads(rest) => Box::pin(upload::api::route(self, req, ctx, rest)).await,
            Route::Slot => Box::pin(intercept::slot(self, req, ctx)).await,
            Route::Intercept(route) => {
                Box::pin(intercept::intercepted(self, req, ctx, route)).await
            }
            Route::Files(rest) => files::routes::files_route(self, &req, rest).await,
            Route::Media(rest) => files::routes::media_route(self, &req, rest).await,
            Route::Upstream => self.proxy_with(req, ctx, |_| {}).await,
        }
    }

    /// Which phase owns a path; a route owns itself and what is below it (`/files/...`, not `/filesystem`).
    fn route<'a>(&'a self, path: &'a str, req: &Request<Body>) -> Route<'a> {
        let (uploads, files) = (&self.config.uploads, &self.config.files);
        if let Some(rest) = paths::route_rest(path, "/_upgate") {
            return Route::Assets(rest);
        }
        if let Some(rest) = paths::route_rest(path, &uploads.route) {
            return Route::Uploads(rest);
        }
        if path == self.config.slots.route {
            return Route::Slot;
        }
        if intercept::is_multipart(req)
            && let Some(route) = intercept::find(&self.config.intercepts, path)
        {
            return Route::Intercept(route);
        }
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

    /// The fallthrough: resolve the handle, forward (`extra` adds headers of upgate's own after the
    /// hygiene), act on the upstream's directives; a file named by `X-Accel-Redirect` replaces the body.
    pub async fn proxy_with(
        &self,
        req: Request<Body>,
        ctx: &mut Ctx,
        extra: impl FnOnce(&mut http::HeaderMap),
    ) -> Result<Response<Body>> {
        let method = req.method().clone();
        let conditional = files::conditional_headers(req.headers());
        let session = self.resolve_handle(req.headers(), ctx);
        let mut res = proxy::forward(
            &self.upstream,
            &self.secret,
            req,
            ctx,
            session.as_ref().map(Token::as_str),
            extra,
        )
        .await?;
        let files = &self.config.files;
        let mut accel = None;
        if directives::present(res.headers()) {
            accel = directives::take_accel(res.headers_mut(), &files.route, &files.media_route)
                .map_err(|e| Error::new(Kind::BadUpstreamDirective, e))?;
            self.apply_directives(res.headers_mut(), ctx).await?;
        }
        match accel {
            Some(target) => files::routes::accel(self, &method, &conditional, res, target).await,
            None => Ok(proxy::into_client_response(res)),
        }
    }

    /// The upstream session token of a valid `X-Upload-Handle` of this client.
    fn resolve_handle(&self, headers: &http::HeaderMap, ctx: &Ctx) -> Option<Token> {
        let handle = headers.get(headers::X_UPLOAD_HANDLE)?.to_str().ok()?;
        let client = ctx.client.as_deref()?;
        self.registry
            .resolve_token(handle.trim(), client, proxy::unix_now())
    }

    /// Consumes `X-Upgate-Revoke` and `X-Upgate-Register` (SPEC §3); a malformed one fails the request.
    async fn apply_directives(&self, headers: &mut http::HeaderMap, ctx: &mut Ctx) -> Result<()> {
        let parsed = directives::take(headers);
        let found = parsed.map_err(|why| {
            self.metrics
                .upstream_errors
                .get_or_create(&ReasonLabel {
                    reason: "bad_directive",
                })
                .inc();
            Error::new(Kind::BadUpstreamDirective, why)
        })?;
        for token in found.revoke {
            let (registry, store) = (self.registry.clone(), self.store.clone());
            off_thread(move || registry.revoke(&store.db, &token)).await?;
        }
        let Some(register) = found.register else {
            return Ok(());
        };
        let Some(client) = self.registration_client(headers, ctx)? else {
            self.metrics.registrations_without_identity.inc();
            tracing::warn!(id = %ctx.id(), "registration for a request without identity: no handle issued");
            return Ok(());
        };
        let (registry, store) = (self.registry.clone(), self.store.clone());
        let (handle, _) = off_thread(move || {
            registry.register(
                &store.db,
                &register.token,
                &client,
                register.limits,
                proxy::unix_now(),
            )
        })
        .await?;
        if let Ok(v) = HeaderValue::from_str(&handle) {
            headers.insert(headers::X_UPLOAD_HANDLE, v);
        }
        Ok(())
    }

    /// Whom a registration binds to: the identity cookie this response sets, else the request's
    /// identity, else a cookie issued now (when configured).
    fn registration_client(
        &self,
        res_headers: &http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<String>> {
        let ident = &self.config.identity;
        if let IdentitySource::Cookie(name) = &ident.source
            && let Some(v) = identity::set_cookie(res_headers, name)
        {
            // The response sets the identity cookie itself: bind to it, and never issue another
            // over it (that would overwrite the application's own session cookie).
            let usable = !ident.issue_cookie || self.secret.verify_cookie_value(v);
            return Ok(usable.then(|| self.secret.client_key(v)));
        }
        if let Some(client) = &ctx.client {
            return Ok(Some(client.clone()));
        }
        if !ident.issue_cookie {
            return Ok(None);
        }
        let value = self
            .secret
            .new_cookie_value()
            .map_err(|_| Error::new(Kind::Internal, "no system randomness"))?;
        let key = self.secret.client_key(&value);
        ctx.issued_cookie = Some(value);
        Ok(Some(key))
    }

    fn count_error(&self, ctx: &Ctx, e: &Error) {
        let code = e.kind.code();
        if ctx.upload_api {
            self.metrics
                .uploads
                .get_or_create(&ResultLabel { result: code })
                .inc();
        }
        if matches!(
            e.kind,
            Kind::BadSignature | Kind::Expired | Kind::TtlTooLong
        ) {
            self.metrics
                .signature_failures
                .get_or_create(&ReasonLabel { reason: code })
                .inc();
        }
    }

    /// Counts stored files: one accepted upload request and its bytes.
    pub fn count_accepted(&self, files: &[crate::db::FileRecord]) {
        self.metrics
            .uploads
            .get_or_create(&ResultLabel { result: "accepted" })
            .inc();
        self.metrics
            .stored_bytes
            .inc_by(files.iter().map(|f| f.size).sum());
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
            .unwrap_or_else(|| {
                // Straight into the string, without the formatting machinery.
                let mut buf = uuid::Uuid::encode_buffer();
                (*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf)).to_owned()
            });
        let client = identity::identity_value(req.headers(), &self.config.identity, &self.secret)
            .map(|v| self.secret.client_key(&v));
        let exchange = Arc::new(Exchange::begin(
            id,
            req.method().clone(),
            req.uri().path().to_string(),
            self.metrics.clone(),
            conn.activity.clone(),
        ));
        Ctx {
            peer: conn.peer,
            trusted_peer,
            tls: conn.tls,
            client,
            issued_cookie: None,
            upload_api: false,
            cors_origin: cors::allowed_origin(req.headers(), &self.config.cors_origins),
            exchange,
        }
    }

    /// Adds what every answer carries, and counts its body as it streams out.
    fn finish(&self, res: Response<Body>, ctx: Ctx) -> Response<Body> {
        let (mut parts, body) = res.into_parts();
        if let Ok(v) = HeaderValue::from_str(ctx.id()) {
            parts.headers.insert(headers::X_REQUEST_ID, v);
        }
        if let (Some(value), crate::config::IdentitySource::Cookie(name)) =
            (&ctx.issued_cookie, &self.config.identity.source)
            && let Some(v) = identity::issued_cookie(name, value, ctx.tls)
        {
            parts.headers.append(SET_COOKIE, v);
        }
        if let Some(origin) = ctx.cors_origin.clone() {
            cors::decorate(&mut parts.headers, origin);
        }
        ctx.exchange.set_status(parts.status);
        let body = body::boxed(Counted::new(body, access::Sent(ctx.exchange)));
        Response::from_parts(parts, body)
    }
}

fn log_error(ctx: &Ctx, e: &Error) {
    match e.fault() {
        Fault::Client => tracing::info!(id = %ctx.id(), error = %e, "request refused"),
        Fault::Upstream => tracing::warn!(id = %ctx.id(), error = %e, "upstream failure"),
        Fault::Internal => tracing::error!(id = %ctx.id(), error = %e, "internal error"),
    }
}
