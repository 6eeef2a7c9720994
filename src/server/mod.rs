//! Listeners and the connection loop: plain and TLS HTTP, timeouts, and the graceful drain.

pub mod notify;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::task::AtomicWaker;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use arc_swap::ArcSwap;

use crate::config::{Config, ControlListen};
use crate::control::Control;
use crate::gateway::{Conn, Gateway, Live};

/// Requests in flight on one connection and when the last one ended: what the idle timeout looks at.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_millis: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_millis: AtomicU64::new(0),
        }
    }

    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(now, Ordering::Release);
    }

    /// How long the connection has had no request in flight; zero while one is.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_millis.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// The sockets upgate listens on, bound before anything else starts so that errors come early.
pub struct Bound {
    http: Vec<TcpListener>,
    https: Vec<TcpListener>,
    control: ControlSocket,
}

enum ControlSocket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// Binds every listener of the config (port 0 picks a free port; see [`Running`] for the result).
    pub async fn bind(config: &Config) -> anyhow::Result<Bound> {
        let mut http = Vec::new();
        for addr in &config.server.listen {
            http.push(bind_tcp(*addr, "server.listen").await?);
        }
        let mut https = Vec::new();
        for addr in config.server.tls.iter().flat_map(|t| &t.listen) {
            https.push(bind_tcp(*addr, "server.tls_listen").await?);
        }
        let control = match &config.control {
            ControlListen::Tcp(addr) => {
                ControlSocket::Tcp(bind_tcp(*addr, "control.listen").await?)
            }
            ControlListen::Unix(path) => ControlSocket::Unix(bind_unix(path)?, path.clone()),
        };
        Ok(Bound {
            http,
            https,
            control,
        })
    }
}

async fn bind_tcp(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

/// A unix socket only its owner may use.
fn bind_unix(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("control.listen: cannot replace {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control.listen: cannot create {}", dir.display()))?;
    }
    // Created under a 0177 umask, so the socket is never, even for an instant, open to others.
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener =
        bound.with_context(|| format!("control.listen: cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control.listen: cannot chmod {}", path.display()))?;
    Ok(listener)
}

/// A started server: its actual addresses, and the handle to drain it.
pub struct Running {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    /// The control listener's address, when it is TCP.
    pub control: Option<SocketAddr>,
    live: Live,
    tls: Option<Arc<ArcSwap<TlsAcceptor>>>,
    shutdown: watch::Sender<bool>,
    alive: mpsc::Sender<()>,
    drained: mpsc::Receiver<()>,
}

impl Running {
    /// The gateway in force now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.load_full()
    }

    /// Puts a new config and key in force for every request that starts from now on (SIGHUP),
    /// and a new TLS certificate for every new connection. Listeners, timeouts of the connection
    /// loop and `storage.root` stay as they were started; a change to them is reported.
    pub fn reload(&self, config: Config, key: &[u8]) -> anyhow::Result<()> {
        let old = self.live.load_full();
        if config.storage_root != old.config.storage_root {
            anyhow::bail!("storage.root cannot change without a restart");
        }
        let tls = match (&config.server.tls, &self.tls) {
            (Some(t), Some(_)) => Some(tls::acceptor(&t.cert, &t.key)?),
            (None, None) => None,
            _ => anyhow::bail!("adding or removing TLS listeners needs a restart"),
        };
        let (a, b) = (&config.server, &old.config.server);
        if a.listen != b.listen
            || a.header_timeout != b.header_timeout
            || a.idle_timeout != b.idle_timeout
            || config.control != old.config.control
        {
            tracing::warn!(
                "listeners, server timeouts and control.listen keep their old values until a restart"
            );
        }
        if let (Some(cell), Some(acceptor)) = (&self.tls, tls) {
            cell.store(Arc::new(acceptor));
        }
        self.live.store(Arc::new(
            old.reloaded(config, crate::signing::Secret::new(key)),
        ));
        Ok(())
    }

    /// Asks the server to stop without waiting (what dropping a test gateway does).
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops accepting, asks every connection to finish its request and close, and waits up to `grace`;
    /// then writes the handle expiries the last requests refreshed.
    /// Returns false when connections were still open at the deadline.
    pub async fn drain(self, grace: Duration) -> bool {
        let Running {
            shutdown,
            alive,
            mut drained,
            live,
            ..
        } = self;
        let _ = shutdown.send(true);
        drop(alive);
        let drained = tokio::time::timeout(grace, drained.recv()).await.is_ok();
        crate::retention::last_flush(live.load_full()).await;
        drained
    }

    /// Runs a background task until shutdown; the drain waits for it to return.
    pub fn spawn_background<F, Fut>(&self, task: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let alive = self.alive.clone();
        let fut = task(self.shutdown.subscribe());
        tokio::spawn(async move {
            fut.await;
            drop(alive);
        });
    }
}

/// Timeouts and the graceful-shutdown signal every connection task shares.
#[derive(Clone)]
struct Shared {
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
    /// Dropped by each connection task when it ends; [`Running::drain`] waits for the last.
    alive: mpsc::Sender<()>,
    idle_timeout: Duration,
    header_timeout: Duration,
}

/// Starts serving on the bound sockets.
pub fn start(live: Live, control: Arc<Control>, bound: Bound) -> anyhow::Result<Running> {
    let gateway = live.load_full();
    let config = &gateway.config;
    let tls = match &config.server.tls {
        Some(t) => Some(Arc::new(ArcSwap::from_pointee(tls::acceptor(
            &t.cert, &t.key,
        )?))),
        None => None,
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (alive, drained) = mpsc::channel(1);
    let shared = Shared {
        builder: Arc::new(builder(config.server.header_timeout)),
        shutdown,
        alive: alive.clone(),
        idle_timeout: config.server.idle_timeout,
        header_timeout: config.server.header_timeout,
    };
    let addr = |l: &TcpListener| l.local_addr().context("listener address");
    let http = bound
        .http
        .iter()
        .map(addr)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let https = bound
        .https
        .iter()
        .map(addr)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for listener in bound.http {
        tracing::info!(kind = "http", addr = %addr(&listener)?, "listening");
        spawn_workers(listener, None, &live, &shared)?;
    }
    for listener in bound.https {
        tracing::info!(kind = "https", addr = %addr(&listener)?, "listening");
        spawn_workers(listener, tls.clone(), &live, &shared)?;
    }
    let control_addr = match &bound.control {
        ControlSocket::Tcp(listener) => {
            let a = addr(listener)?;
            tracing::info!(kind = "control", addr = %a, "listening");
            Some(a)
        }
        ControlSocket::Unix(_, path) => {
            tracing::info!(kind = "control", addr = %path.display(), "listening");
            None
        }
    };
    tokio::spawn(accept_control(bound.control, control, shared.clone()));
    Ok(Running {
        http,
        https,
        control: control_addr,
        live,
        tls,
        shutdown: shutdown_tx,
        alive,
        drained,
    })
}

/// The most a connection reads ahead (hyper's default is 400 KiB): request heads must fit, and a
/// body streams through it, so 500 uploads at once hold 16 MiB here rather than 200.
const READ_BUFFER: usize = 32 * 1024;

fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_buf_size(READ_BUFFER);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Threads each worker may run blocking work on (file writes, fsyncs, state commits); more
/// such jobs wait their turn. Hundreds of parallel uploads would otherwise each get a thread,
/// with its stack and its share of the allocator's arenas, to write to the same disk.
const BLOCKING_THREADS: usize = 32;

/// How many threads serve the public listeners: one per core.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

thread_local! {
    /// Which public worker this thread is (1-based), or 0 on any other thread.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The public worker this thread is (1..=[`workers`]), or 0 on any other thread.
pub fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

/// A connection accepted by one worker for another to serve, already counted against it (so that
/// a burst handed over before the other worker runs is not all sent the same way).
type Handed = (std::net::TcpStream, SocketAddr, Serving);

/// How many connections each worker of a listener serves.
type Counts = Arc<[AtomicUsize]>;

/// Counts a connection against its worker while it lives. It holds the counts only, not the
/// channels, so that a connection left in a channel cannot keep that channel alive.
struct Serving(Counts, usize);

impl Serving {
    fn new(counts: &Counts, n: usize) -> Serving {
        counts[n].fetch_add(1, Ordering::Relaxed);
        Serving(counts.clone(), n)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves a public listener on one thread per core, each with its own single-threaded runtime
/// (as nginx runs one worker process per core): a connection, its requests and the upstream
/// connection they use stay on one thread, so a request is never handed between threads. The
/// workers accept from the same socket; each ends when shutdown is asked for and its last
/// connection has closed.
///
/// The worker that wakes first would otherwise take a whole burst of new connections (a load
/// balancer's or a benchmark's keep-alive pool) and serve them all on one core for their whole
/// lives, while the other cores idle: a worker that serves more than one connection over the
/// least busy worker hands the new one to it instead. Only connections move, never requests.
fn spawn_workers(
    listener: TcpListener,
    tls: Option<Arc<ArcSwap<TlsAcceptor>>>,
    live: &Live,
    shared: &Shared,
) -> anyhow::Result<()> {
    let listener = listener.into_std().context("the public listener")?;
    let count = workers();
    let (hands, handed): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let hands: Arc<[_]> = hands.into();
    let counts: Counts = (0..count).map(|_| AtomicUsize::new(0)).collect();
    for (n, handed) in (1..=count).zip(handed) {
        let socket = listener.try_clone().context("the public listener")?;
        let (tls, live, shared) = (tls.clone(), live.clone(), shared.clone());
        let team = Team {
            counts: counts.clone(),
            hands: hands.clone(),
            me: n - 1,
            handed,
        };
        // Held until the worker's runtime is gone and its last access lines are written: a
        // drain does not return before that.
        let alive = shared.alive.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(BLOCKING_THREADS)
            .build()
            .context("starting a worker runtime")?;
        std::thread::Builder::new()
            .name(format!("upgate-worker-{n}"))
            .spawn(move || {
                WORKER.with(|w| w.set(n));
                crate::access::buffer_on_this_thread();
                runtime.block_on(async move {
                    let ticks = tokio::spawn(crate::access::flush_ticks());
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept_public(listener, team, tls, live, shared).await,
                        Err(e) => tracing::error!(error = %e, "a worker cannot listen"),
                    }
                    ticks.abort();
                });
                // Tasks the runtime still holds (an upstream connection owning a request body)
                // end with it, and may log as they go.
                drop(runtime);
                crate::access::flush();
                drop(alive);
            })
            .context("starting a worker thread")?;
    }
    Ok(())
}

/// One worker of a listener, among the others.
struct Team {
    counts: Counts,
    /// Where to hand each worker a connection.
    hands: Arc<[mpsc::UnboundedSender<Handed>]>,
    me: usize,
    handed: mpsc::UnboundedReceiver<Handed>,
}

impl Team {
    /// The worker a new connection should go to, if not this one: the least busy of those still
    /// accepting, when this one serves more than one connection over it.
    fn elsewhere(&self) -> Option<usize> {
        let count = |n: usize| self.counts[n].load(Ordering::Relaxed);
        let least = (0..self.counts.len())
            .filter(|&n| n == self.me || !self.hands[n].is_closed())
            .min_by_key(|&n| count(n))?;
        (count(self.me) > count(least) + 1).then_some(least)
    }
}

/// Hands a connection just accepted to a less busy worker, if one should take it; the stream
/// back if this worker is to serve it.
fn hand_over(
    team: &Team,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<tokio::net::TcpStream> {
    let Some(other) = team.elsewhere() else {
        return Some(stream);
    };
    let lost = |e: std::io::Error| tracing::warn!(%peer, error = %e, "a connection is lost");
    let std = stream.into_std().map_err(lost).ok()?;
    let serving = Serving::new(&team.counts, other);
    match team.hands[other].send((std, peer, serving)) {
        Ok(()) => None,
        // That worker has stopped: serve it here after all.
        Err(mpsc::error::SendError((std, _, _))) => {
            tokio::net::TcpStream::from_std(std).map_err(lost).ok()
        }
    }
}

async fn accept_public(
    listener: TcpListener,
    mut team: Team,
    tls: Option<Arc<ArcSwap<TlsAcceptor>>>,
    live: Live,
    shared: Shared,
) {
    // This worker's connections hold a sender each; the worker returns when the last is gone.
    let (mine, mut done) = mpsc::channel::<()>(1);
    let mut shutdown = shared.shutdown.clone();
    let start = |(stream, peer, serving): (tokio::net::TcpStream, SocketAddr, Serving)| {
        serve_public(stream, peer, serving, &tls, &live, &shared, mine.clone());
    };
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => {
                // From the drain on, each access line is written at once.
                crate::access::stop_buffering();
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(stream) = hand_over(&team, stream, peer) {
                        start((stream, peer, Serving::new(&team.counts, team.me)));
                    }
                }
                Err(e) => accept_failed(e).await,
            },
            Some(handed) = team.handed.recv() => {
                if let Some(conn) = take_handed(handed) {
                    start(conn);
                }
            }
        }
    }
    // Connections handed over before the other workers saw this one stop are served like those
    // accepted just before the drain: closing the channel and then emptying it leaves none in it.
    team.handed.close();
    while let Some(handed) = team.handed.recv().await {
        if let Some(conn) = take_handed(handed) {
            start(conn);
        }
    }
    drop((listener, mine, team));
    let _ = done.recv().await;
    // This worker's access lines are written before the drain signal too.
    crate::access::flush();
    // The gateway before the drain signal: once `shared` goes, a drain may return and expect the
    // storage to be free for the next start.
    drop(live);
    drop(shared);
}

/// A connection another worker handed over, registered with this worker's runtime.
fn take_handed(
    (stream, peer, serving): Handed,
) -> Option<(tokio::net::TcpStream, SocketAddr, Serving)> {
    match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => Some((stream, peer, serving)),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "a connection handed over is lost");
            None
        }
    }
}

/// Serves one public connection on this worker, as a task of its own.
fn serve_public(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    serving: Serving,
    tls: &Option<Arc<ArcSwap<TlsAcceptor>>>,
    live: &Live,
    shared: &Shared,
    mine: mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let (live, shared) = (live.clone(), shared.clone());
    let tls = tls.as_ref().map(|cell| cell.load_full());
    tokio::spawn(async move {
        let _mine = mine;
        let _serving = serving;
        let activity = Arc::new(Activity::new());
        let conn = Conn {
            peer,
            tls: tls.is_some(),
            activity: activity.clone(),
        };
        let svc = move |req| {
            let (gateway, conn) = (live.load_full(), conn.clone());
            async move { Ok::<_, std::convert::Infallible>(gateway.serve(req, conn).await) }
        };
        match tls {
            None => serve_conn(stream, svc, activity, shared).await,
            Some(acceptor) => {
                match tokio::time::timeout(shared.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_conn(stream, svc, activity, shared).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    });
}

async fn accept_control(socket: ControlSocket, control: Arc<Control>, shared: Shared) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = socket.accept() => accepted,
        };
        let (control, shared) = (control.clone(), shared.clone());
        match accepted {
            Ok(Accepted::Tcp(stream)) => tokio::spawn(serve_control(stream, control, shared)),
            Ok(Accepted::Unix(stream)) => tokio::spawn(serve_control(stream, control, shared)),
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
    }
    // As for the public workers: the gateway goes before the drain signal.
    drop(control);
    drop(shared);
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl ControlSocket {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            ControlSocket::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
            ControlSocket::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

async fn serve_control<I>(io: I, control: Arc<Control>, shared: Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let svc = move |req| {
        let (control, activity) = (control.clone(), tracked.clone());
        async move {
            activity.begin();
            let res = control.serve(req).await;
            activity.end();
            Ok::<_, std::convert::Infallible>(res)
        }
    };
    serve_conn(io, svc, activity, shared).await;
}

/// Too many open files and the like: log, pause briefly so a full table can drain, go on.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Serves one connection until it closes, it idles past `idle_timeout`, or shutdown asks it to finish.
async fn serve_conn<I, S, F>(io: I, svc: S, activity: Arc<Activity>, shared: Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    let _alive = shared.alive;
    let mut shutdown = shared.shutdown;
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service_fn(svc));
    tokio::pin!(conn);
    let mut closing = false;
    let mut tick = tokio::time::interval(
        shared
            .idle_timeout
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(50)),
    );
    let stop = stopped(&mut shutdown);
    tokio::pin!(stop);
    // The idle tick and the shutdown watch are polled when one of them woke the task, not at
    // each of the connection's own wakes (a few a request): they wake it through `sides`.
    let sides = Arc::new(SidesWoken {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let side_waker = std::task::Waker::from(sides.clone());
    let ended = std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                return Poll::Ready(res);
            }
            if closing {
                return Poll::Pending;
            }
            sides.task.register(cx.waker());
            if !sides.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut side_cx = std::task::Context::from_waker(&side_waker);
            let mut close = stop.as_mut().poll(&mut side_cx).is_ready();
            while !close && tick.poll_tick(&mut side_cx).is_ready() {
                close = activity.idle_for() >= shared.idle_timeout;
            }
            if !close {
                return Poll::Pending;
            }
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Marks that a connection's idle tick or shutdown watch woke, and wakes the connection's task.
struct SidesWoken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for SidesWoken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Resolves once shutdown is asked for (or the server is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker `me` of a team with these counts, and the other workers' receivers (open while
    /// they are held).
    fn team(counts: &[usize], me: usize) -> (Team, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (hands, mut others): (Vec<_>, Vec<_>) =
            counts.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let handed = others.remove(me);
        let team = Team {
            counts: counts.iter().map(|&c| AtomicUsize::new(c)).collect(),
            hands: hands.into(),
            me,
            handed,
        };
        (team, others)
    }

    #[test]
    fn a_new_connection_goes_to_the_least_busy_worker_past_a_margin_of_one() {
        let elsewhere = |counts: &[usize]| team(counts, 0).0.elsewhere();
        assert_eq!(elsewhere(&[5, 3]), Some(1));
        assert_eq!(elsewhere(&[4, 3]), None, "one more is even enough");
        assert_eq!(elsewhere(&[3, 5]), None);
        assert_eq!(elsewhere(&[9, 2, 0]), Some(2));
        assert_eq!(elsewhere(&[0]), None);
    }

    /// A worker that no longer takes connections (stopped, or never started) is passed over.
    #[test]
    fn a_stopped_worker_is_not_handed_connections() {
        let (t, mut others) = team(&[5, 0], 0);
        assert_eq!(t.elsewhere(), Some(1));
        others.clear();
        assert_eq!(t.elsewhere(), None, "worker 1's receiver is gone");
    }

    /// A burst of connections accepted by one worker ends evenly spread, each connection counted
    /// while it lives.
    #[test]
    fn a_burst_taken_by_one_worker_ends_evenly_spread() {
        let (t, _others) = team(&[0, 0], 0);
        let mut serving = Vec::new();
        for _ in 0..64 {
            let to = t.elsewhere().unwrap_or(t.me);
            serving.push(Serving::new(&t.counts, to));
        }
        let count = |n: usize| t.counts[n].load(Ordering::Relaxed);
        assert_eq!((count(0), count(1)), (33, 31));
        serving.clear();
        assert_eq!((count(0), count(1)), (0, 0));
    }
}
