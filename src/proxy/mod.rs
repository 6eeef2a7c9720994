//! Forwarding to the upstream application: the pooled client, header hygiene and upgrades (SPEC §3).

pub mod directives;
pub mod headers;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{self, Body};
use crate::config;
use crate::error::{Error, Kind, Result};
use crate::gateway::Ctx;
use crate::signing::Secret;

/// The upstream application: where it is and a keep-alive connection pool to it.
pub struct Upstream {
    pool: Arc<Pool>,
    authority: Authority,
    /// `host:port` to connect to (the port defaulted from the scheme).
    address: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// The longest a request body may wait for its next piece from the client
    /// (`server.idle_timeout`; nginx's `client_body_timeout`).
    body_timeout: Duration,
}

/// Idle keep-alive connections, one list per public worker thread and one (index 0) for every
/// other thread: a connection is driven by the runtime that opened it, so each worker reuses its
/// own, and a request and its upstream connection never change threads. Each worker serves one
/// request at a time per connection, so a connection is taken for a request and put back when
/// its response has been read to the end, the way nginx's `keepalive` pool works; no task or
/// channel per request stands between the request and its connection.
struct Pool {
    /// Oldest first: taken from the back (the warmest), expired ones closed from the front.
    idle: Vec<Mutex<VecDeque<Idle>>>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// An idle connection older than this is closed rather than reused (nginx's `keepalive_timeout`).
const POOL_IDLE: Duration = Duration::from_secs(60);
/// A pooled connection idle for this long may be closed by the upstream's keep-alive timeout as
/// a request goes out on it, so an idempotent request without a body keeps a copy to send again.
/// One used more recently is not (no upstream times out so soon), and the copy, an eighth of a
/// proxied request's cost, is not made under load.
const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Idle connections a worker keeps at most; more are closed as they come back.
const POOL_MAX_IDLE: usize = 1024;

impl Pool {
    /// The warmest live idle connection, and how long it has been idle.
    fn take(&self, slot: usize) -> Option<(http1::SendRequest<Body>, Duration)> {
        let mut idle = self.idle[slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        expire(&mut idle);
        while let Some(conn) = idle.pop_back() {
            if !conn.sender.is_closed() {
                return Some((conn.sender, conn.since.elapsed()));
            }
        }
        None
    }

    fn put(&self, slot: usize, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle[slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        expire(&mut idle);
        if idle.len() < POOL_MAX_IDLE {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Closes the connections idle for [`POOL_IDLE`] or more (the oldest are at the front), so a
/// burst's connections do not hold the upstream's workers once the burst is over.
fn expire(idle: &mut VecDeque<Idle>) {
    while idle.front().is_some_and(|c| c.since.elapsed() >= POOL_IDLE) {
        idle.pop_front();
    }
}

/// Puts its connection back in the pool when dropped, if the response was read to its end.
struct GiveBack {
    pool: Arc<Pool>,
    slot: usize,
    sender: Option<http1::SendRequest<Body>>,
    /// Set once the request body has been sent to its end.
    sent: Arc<AtomicBool>,
    done: bool,
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        let (true, Some(mut sender)) = (self.done, self.sender.take()) else {
            return;
        };
        if self.sent.load(Ordering::Acquire) && sender.is_ready() {
            self.pool.put(self.slot, sender);
            return;
        }
        // Still busy (the request body may still be going out after an early answer): it joins
        // the pool once the connection is idle and the body was sent whole, so a request never
        // waits behind another's body; a body hyper gave up on closes the connection.
        let (pool, slot, sent) = (self.pool.clone(), self.slot, self.sent.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if sender.ready().await.is_ok() && sent.load(Ordering::Acquire) {
                    pool.put(slot, sender);
                }
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream response's body; its end hands the connection back to the pool. Dropped
    /// before its end, it closes the connection (hyper cannot reuse a half-read one).
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        back: Option<GiveBack>,
    }
}

impl UpstreamBody {
    fn new(inner: Incoming, mut back: GiveBack) -> Self {
        if http_body::Body::is_end_stream(&inner) {
            back.done = true;
            drop(back);
            return Self { inner, back: None };
        }
        Self {
            inner,
            back: Some(back),
        }
    }
}

/// What a body's `poll_frame` returns.
type Polled<B> = Poll<
    Option<
        std::result::Result<
            http_body::Frame<<B as http_body::Body>::Data>,
            <B as http_body::Body>::Error,
        >,
    >,
>;

/// Whether a poll of `body` shows it at its end: no frame left, or the last one just given.
fn at_end<B: http_body::Body>(polled: &Polled<B>, body: &B) -> bool {
    match polled {
        Poll::Ready(None) => true,
        Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
        _ => false,
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if at_end(&polled, &*this.inner)
            && let Some(mut back) = this.back.take()
        {
            back.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Upstream {
    pub fn new(cfg: &config::Upstream, body_timeout: Duration) -> Self {
        let port = cfg.authority.port_u16().unwrap_or(80);
        Self {
            pool: Arc::new(Pool {
                idle: (0..=crate::server::workers())
                    .map(|_| Mutex::default())
                    .collect(),
            }),
            address: format!("{}:{port}", cfg.authority.host()),
            authority: cfg.authority.clone(),
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            body_timeout,
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The request target sent upstream: the path and query in origin form (RFC 9112 §3.2.1).
    pub fn target(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        Uri::from(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
    }

    /// A new connection, driven by a task on this thread's runtime.
    async fn connect(&self) -> Result<http1::SendRequest<Body>> {
        let unreachable = |e: std::io::Error| {
            Error::new(Kind::UpstreamUnreachable, "cannot connect to the upstream").with_source(e)
        };
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(unreachable(e)),
                Err(_) => {
                    return Err(unreachable(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", self.connect_timeout),
                    )));
                }
            };
        let _ = stream.set_nodelay(true);
        let stream = SendTimed {
            io: stream,
            wait: Wait::new(self.response_timeout),
        };
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
            Error::new(Kind::UpstreamUnreachable, "cannot connect to the upstream").with_source(e)
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends a request on a pooled connection, or a new one. A request the pooled connection
    /// could not even start to send (the upstream had just closed it) is sent again; so is an
    /// idempotent request without a body that a connection idle for [`REPLAY_AFTER_IDLE`] lost
    /// before any answer (the upstream closed it as the request went out), once, on a new
    /// connection, as nginx's `proxy_next_upstream error` does. Nothing has reached the client.
    async fn exchange(
        &self,
        req: Request<Body>,
        sent: Arc<AtomicBool>,
    ) -> Result<Response<UpstreamBody>> {
        let slot = crate::server::worker() % self.pool.idle.len();
        let mut req = req;
        let mut must_connect = false;
        loop {
            let pooled = if must_connect {
                None
            } else {
                self.pool.take(slot)
            };
            let fresh = pooled.is_none();
            let (mut sender, idle_for) = match pooled {
                Some(pooled) => pooled,
                None => (self.connect().await?, Duration::ZERO),
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(Error::new(
                        Kind::UpstreamUnreachable,
                        "the upstream connection failed",
                    ));
                }
                continue;
            }
            let replay = if idle_for >= REPLAY_AFTER_IDLE {
                replay_of(&req)
            } else {
                None
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    let back = GiveBack {
                        pool: self.pool.clone(),
                        slot,
                        sender: Some(sender),
                        sent,
                        done: false,
                    };
                    return Ok(res.map(|body| UpstreamBody::new(body, back)));
                }
                Err(mut e) => match (e.take_message(), replay) {
                    (Some(unsent), _) if !fresh => req = unsent,
                    (None, Some(copy)) => {
                        tracing::debug!(error = %e.error(), "pooled upstream connection lost; sending again");
                        req = copy;
                        must_connect = true;
                    }
                    _ => {
                        return Err(Error::new(
                            Kind::UpstreamUnreachable,
                            "the upstream connection failed",
                        )
                        .with_source(e.into_error()));
                    }
                },
            }
        }
    }

    /// Sends a prepared request; once its body is sent, waits at most `response_timeout` for the
    /// response headers (nginx's `proxy_read_timeout`: a long upload is not a slow upstream).
    /// Each piece of the body must come from the client within `body_timeout`, whenever the
    /// upstream asks for it (before its answer or after an early one): `408 request_timeout`
    /// otherwise, and the upstream connection is closed.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<UpstreamBody>> {
        let (dropped, body_done) = tokio::sync::oneshot::channel::<()>();
        let sent = Arc::new(AtomicBool::new(false));
        let req = req.map(|b| {
            body::boxed(RequestBody {
                ended: Ended::new(&b, sent.clone()),
                inner: b,
                dropped: Some(dropped),
                wait: Wait::new(self.body_timeout),
            })
        });
        let exchange = self.exchange(req, sent);
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
            Ok(Err(e)) if caused_by::<Stalled>(&e) => {
                Err(Error::new(Kind::RequestTimeout, "the request body stalled"))
            }
            Ok(Err(e)) if caused_by::<SendStalled>(&e) => Err(Error::new(
                Kind::UpstreamTimeout,
                format!(
                    "the upstream read none of the request for {:?}",
                    self.response_timeout
                ),
            )),
            Ok(res) => res,
        }
    }
}

/// A copy of an idempotent request without a body (RFC 9110 §9.2.2: it may be sent again), or
/// `None` for any other request.
fn replay_of(req: &Request<Body>) -> Option<Request<Body>> {
    if !req.method().is_idempotent() || !http_body::Body::is_end_stream(req.body()) {
        return None;
    }
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// How long something has waited: a request body on its way upstream for its client (armed when
/// the upstream asks for a piece the client has not sent, disarmed when it comes), or a write to
/// the upstream for the upstream ([`SendTimed`]). The timer is allocated only for what ever has
/// to wait.
struct Wait {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

/// The error a request body ends with when its client kept it waiting too long.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
struct Stalled;

/// Whether `e` has an error of type `T` among its causes, hyper's and I/O's wrappings included.
fn caused_by<T: std::error::Error + 'static>(e: &Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if c.is::<T>() || inner.is_some_and(|i| i.is::<T>()) {
            return true;
        }
        cause = c.source();
    }
    false
}

impl Wait {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// After a `Pending`: whether the wait, counted from the first `Pending` since it was last
    /// disarmed, has now lasted too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            timer.as_mut().reset(tokio::time::Instant::now() + limit);
            self.armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// The upstream connection's socket, timing the upstream's reading (nginx's
/// `proxy_send_timeout`, here `upstream.response_timeout`): a write that cannot go on fails once
/// nothing has moved on the connection, either way, for that long; the request ends `504` and
/// the connection is closed. Only a waiting write is timed, and any progress starts the count
/// again: an upstream that reads slowly but steadily is never cut, nor one with nothing sent to
/// it, nor an answer the upstream sends early while it leaves the body unread (each piece of the
/// answer is progress; nginx stops sending the body then). Such a connection is closed once its
/// answer has ended and the count runs out.
struct SendTimed {
    io: TcpStream,
    wait: Wait,
}

/// The error a write to the upstream ends with when the upstream kept it waiting too long.
#[derive(Debug, thiserror::Error)]
#[error("the upstream stopped reading the request")]
struct SendStalled;

impl SendTimed {
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.wait.armed = false;
        } else if self.wait.expired(cx) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                SendStalled,
            )));
        }
        polled
    }
}

impl tokio::io::AsyncRead for SendTimed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.wait.armed = false;
        }
        polled
    }
}

impl tokio::io::AsyncWrite for SendTimed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Marks its flag when the body it watches has been read to its end.
struct Ended(Arc<AtomicBool>);

impl Ended {
    fn new(body: &Body, flag: Arc<AtomicBool>) -> Self {
        if http_body::Body::is_end_stream(body) {
            flag.store(true, Ordering::Release);
        }
        Self(flag)
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream: says when it has been sent whole (`ended`), and fires
    /// `dropped` once hyper lets go of it (sent, or given up on).
    struct RequestBody {
        #[pin]
        inner: Body,
        ended: Ended,
        dropped: Option<tokio::sync::oneshot::Sender<()>>,
        wait: Wait,
    }

    impl PinnedDrop for RequestBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(tx) = this.project().dropped.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if at_end(&polled, &*this.inner) {
            this.ended.0.store(true, Ordering::Release);
        }
        if polled.is_ready() {
            this.wait.armed = false;
        } else if this.wait.expired(cx) {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
    // Room for the fields set below at once, rather than growing the map one field at a time.
    h.reserve(8);
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
    set_header(h, headers::X_REQUEST_ID, ctx.id());
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
) -> Result<Response<UpstreamBody>> {
    let upgrade =
        headers::upgrade_protocol(req.headers()).map(|p| (p, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    prepare_headers(&mut parts, ctx, secret, session);
    extra(&mut parts.headers);
    parts.uri = upstream.target(parts.uri.path_and_query());
    if !parts.headers.contains_key(HOST)
        && let Ok(v) = HeaderValue::from_str(upstream.authority().as_str())
    {
        parts.headers.insert(HOST, v);
    }
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
            tokio::spawn(tunnel(on_client, on_upstream, ctx.id().to_string()));
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
pub fn into_client_response(res: Response<UpstreamBody>) -> Response<Body> {
    res.map(body::boxed)
}
