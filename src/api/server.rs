//! The TCP server. Each connection starts on [`http1::serve`], which answers
//! `/v1/auth` — what a reverse proxy asks about every request it forwards — on the
//! connection itself. The first request it does not answer hands the connection to
//! hyper, where `/v1/auth` is still answered without the router (the same
//! [`auth::check`] the router's route calls) and every other request goes through
//! the router with the peer address as [`ConnectInfo`], as `axum::serve` would do.
//!
//! Both paths close a connection idle for `server.idle_timeout` and one whose
//! request head takes longer than `server.header_read_timeout` from its first byte.
//! Connections over `server.max_connections` (trusted proxies excepted), or over
//! `server.max_connections_per_client` from one client, are answered 503 naming
//! the limit (when the socket takes it at once) and closed when accepted.
//! The admin socket is served by hyper the same way (no fast path), within the
//! same limits, a local account being one client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use super::limits::{once_a_minute, Client};
use super::metrics::Refused;
use super::peer::UnixPeer;
use super::{auth, http1, AppState};
use crate::config::ServerConfig;

/// How long a connection may take to finish the request in flight once the server
/// stops; then it is closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The connection limits (`server.max_connections`, `max_connections_per_client`)
/// that the TCP listener and the admin socket share: one budget of file
/// descriptors.
#[derive(Debug, Clone)]
pub struct ConnectionLimits(Arc<Slots>);

impl ConnectionLimits {
    /// The limits of `server`, counting into `state`'s metrics.
    pub fn new(server: &ServerConfig, state: AppState) -> Self {
        Self(Arc::new(Slots::new(server, state)))
    }
}

/// hyper's HTTP/1 settings for both listeners: HTTP/1 only, keep-alive, no
/// upgrades; otherwise the defaults axum::serve uses, but for writev (answers are
/// small, and copying a body behind the head into one buffer costs less than
/// queueing buffers for a vectored write). hyper's own header_read_timeout is off:
/// it runs from the end of the previous answer, so it would close idle connections
/// after the head timeout. [`Activity`] times heads from their first byte and idle
/// connections by `idle_timeout`, as the fast path does.
fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .writev(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None);
    builder
}

fn timeouts_of(server: &ServerConfig) -> http1::Timeouts {
    http1::Timeouts {
        head: server.header_read_timeout,
        idle: server.idle_timeout,
    }
}

/// Serve `router` on `listener` (with the state `limits` counts into) until `stop` turns true, then stop accepting, let
/// each connection finish the request in flight (for up to [`SHUTDOWN_GRACE`]), and
/// return once all have closed. `server` gives the time limits of a connection;
/// `limits` how many may be open.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    server: ServerConfig,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let builder = http1_builder();
    let timeouts = timeouts_of(&server);
    // Each connection task holds a receiver; `closed` resolves when all are gone.
    let (close_tx, close_rx) = watch::channel(());
    let shutdown = Arc::new(Shutdown::default());
    let slots = limits.0;
    let state = slots.state.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = stopped(&mut stop) => break,
        };
        // Over a limit the connection is closed at once, before anything is read:
        // the cheapest refusal, and the accept loop never waits for a client.
        // IPv6 peers grouped as the rate limiter groups them: one subscriber's /64
        // is one client here too. Trusted proxies are held to their per-client
        // limit only: otherwise a few clients filling `max_connections` would lock
        // out the proxy, and with it every client behind it.
        let client = state.edge.limiter.client_of(peer.ip());
        let slot = match slots.take(client, || {
            crate::config::ipfilter::allows_any(
                &state.edge.auth().config.trusted_proxies,
                peer.ip(),
            )
        }) {
            Ok(slot) => slot,
            Err(why) => {
                // Say why if the socket takes it now; never wait for the client.
                let _ = stream.try_write(slots.refusal(why));
                drop(stream);
                continue;
            }
        };
        // Answers are written in one piece; do not hold them back for more.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let router = router.clone();
        let builder = builder.clone();
        let mut stopping = shutdown.wait();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            // Held for the life of the task, released however it ends (a panic or
            // the runtime dropping it included).
            let _slot = slot;
            let mut stream = stream;
            let end = http1::serve(&mut stream, peer, &state, timeouts, &mut stopping).await;
            if let http1::End::Handoff(read) = end {
                let io = http1::Rewind::new(stream, read);
                let peer = Peer::Tcp(peer);
                serve_hyper(io, peer, state, router, &builder, timeouts, stopping).await;
            }
            drop(close_rx);
        });
    }
    shutdown.trigger();
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// How long a refused socket connection is given to send its request before the
/// 503 answer is written: hyper's client (apikeyctl) fails on an answer that comes
/// before its request is written, instead of printing it.
const REFUSAL_WAIT: Duration = Duration::from_millis(250);
/// Refused socket connections answered at once; more are closed without answer.
const MAX_REFUSALS: usize = 32;

/// Serve `router` on the admin socket as [`serve_tcp`] serves TCP: the same head
/// and idle timeouts and bounded stop, and the same connection limits, a local
/// account (uid) being one client. Administrators (root, and accounts mapped to a
/// user who manages all keys) are exempt from `max_connections`, so an
/// administrator can always get in. A refused connection is answered 503 with the
/// limit it hit, so apikeyctl can say why.
pub async fn serve_unix(
    listener: UnixListener,
    router: Router,
    server: ServerConfig,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let builder = http1_builder();
    let timeouts = timeouts_of(&server);
    let (close_tx, close_rx) = watch::channel(());
    let shutdown = Arc::new(Shutdown::default());
    let slots = limits.0;
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = tokio::select! {
            accepted = accept_unix(&listener) => accepted,
            () = stopped(&mut stop) => break,
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        // Asked only when `max_connections` is reached: the account database and
        // the directory are read then, not on every connection.
        let exempt = || {
            uid.is_some_and(|uid| {
                super::peer::is_admin(uid, &slots.state.keys.settings().directory)
            })
        };
        let slot = match slots.take(Client::Local(uid), exempt) {
            Ok(slot) => slot,
            Err(why) => {
                if refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSALS {
                    let refusing = refusing.clone();
                    let slots = slots.clone();
                    tokio::spawn(async move {
                        refuse(stream, slots.refusal(why)).await;
                        refusing.fetch_sub(1, Ordering::Relaxed);
                    });
                } else {
                    refusing.fetch_sub(1, Ordering::Relaxed);
                }
                continue;
            }
        };
        let state = slots.state.clone();
        let router = router.clone();
        let builder = builder.clone();
        let stopping = shutdown.wait();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let peer = Peer::Unix(UnixPeer { uid });
            serve_hyper(stream, peer, state, router, &builder, timeouts, stopping).await;
            drop(close_rx);
        });
    }
    shutdown.trigger();
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// The 503 answer to a connection refused over `why`, naming the limit.
fn refusal(why: Refused, server: &ServerConfig) -> Vec<u8> {
    let message = match why {
        Refused::Total => format!(
            "too many connections to apikeyd: server.max_connections ({}) reached; try again later",
            server.max_connections
        ),
        Refused::PerClient => format!(
            "too many connections from this client: server.max_connections_per_client ({}) reached; close some and try again",
            server.max_connections_per_client
        ),
    };
    let body = serde_json::json!({"error": {"code": why.as_str(), "message": message}}).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answer a refused socket connection with `answer` once its request head is in
/// (or after [`REFUSAL_WAIT`]), then close it.
async fn refuse(mut stream: tokio::net::UnixStream, answer: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::sleep(REFUSAL_WAIT);
    tokio::pin!(deadline);
    let mut head: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                // Gone: nobody to answer.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    head.extend_from_slice(&buf[..n]);
                    if head.len() > 16 * 1024 || head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            },
            () = &mut deadline => break,
        }
    }
    let _ = tokio::time::timeout(REFUSAL_WAIT, async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serve one connection with hyper until it ends, expires ([`Activity`]) or the
/// server stops.
async fn serve_hyper<I>(
    io: I,
    peer: Peer,
    state: AppState,
    router: Router,
    builder: &hyper::server::conn::http1::Builder,
    timeouts: http1::Timeouts,
    mut stopping: Stopping,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
    });
    let service = Connection {
        state,
        router,
        peer: peer.clone(),
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        }
        () = &mut stopping => {
            conn.as_mut().graceful_shutdown();
            // The request in flight gets a while to finish, not for ever: a
            // client that sends no more of its body (or reads no more of the
            // answer) must not hold up the stop.
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = activity.expired(timeouts) => {}
                () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                    tracing::debug!(%peer, "request still in flight at shutdown; closing");
                }
            }
        }
        why = activity.expired(timeouts) => match why {
            Expired::Idle => tracing::debug!(%peer, "keep-alive connection idle for server.idle_timeout; closing"),
            Expired::Head => tracing::debug!(%peer, "request head not finished in time; closing"),
            Expired::Stalled => tracing::debug!(%peer, "request in flight moved no bytes for server.idle_timeout; closing"),
        },
    }
}

/// Who is on the other end of a connection hyper serves.
#[derive(Debug, Clone)]
enum Peer {
    Tcp(SocketAddr),
    Unix(UnixPeer),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix(UnixPeer { uid: Some(uid) }) => write!(f, "local uid {uid}"),
            Peer::Unix(UnixPeer { uid: None }) => write!(f, "a local caller"),
        }
    }
}

/// Connection counts against `server.max_connections` and
/// `server.max_connections_per_client`.
#[derive(Debug)]
struct Slots {
    max_total: usize,
    max_per_client: usize,
    open: AtomicUsize,
    /// Open connections per client; clients with none are not listed. SipHash: the
    /// keys are the clients' addresses.
    per_client: Mutex<HashMap<Client, usize>>,
    state: AppState,
    /// The minute of the last warning about refused connections.
    warned: AtomicU64,
    /// The 503 answers to refused connections: over `max_connections`, over
    /// `max_connections_per_client`.
    refusals: [Vec<u8>; 2],
}

/// One open connection's place in [`Slots`], given back on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    client: Client,
}

impl Slots {
    fn new(server: &ServerConfig, state: AppState) -> Self {
        Self {
            max_total: server.max_connections,
            max_per_client: server.max_connections_per_client,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            state,
            warned: AtomicU64::new(0),
            refusals: [
                refusal(Refused::Total, server),
                refusal(Refused::PerClient, server),
            ],
        }
    }

    /// The 503 answer to a connection refused over `why`.
    fn refusal(&self, why: Refused) -> &[u8] {
        match why {
            Refused::Total => &self.refusals[0],
            Refused::PerClient => &self.refusals[1],
        }
    }

    /// A slot for a connection from `client`, or the limit reached (counted and
    /// logged). `exempt` says whether the client is exempt from
    /// `max_connections` (keeping its per-client limit); it is asked only when
    /// that limit is reached.
    fn take(
        self: &Arc<Self>,
        client: Client,
        exempt: impl FnOnce() -> bool,
    ) -> Result<Slot, Refused> {
        let over_total = self.open.fetch_add(1, Ordering::Relaxed) >= self.max_total && !exempt();
        let refused = if over_total {
            Some(Refused::Total)
        } else {
            let mut per_client = self.per_client.lock();
            let n = per_client.entry(client).or_insert(0);
            if *n >= self.max_per_client {
                Some(Refused::PerClient)
            } else {
                *n += 1;
                None
            }
        };
        let metrics = &self.state.edge.metrics;
        if let Some(why) = refused {
            self.open.fetch_sub(1, Ordering::Relaxed);
            metrics.connection_refused(why);
            if once_a_minute(&self.warned).is_some() {
                tracing::warn!(
                    %client,
                    limit = why.as_str(),
                    "connection refused: limit reached (said once a minute; \
                     apikeyd_connections_refused_total counts them all)"
                );
            }
            return Err(why);
        }
        metrics.connection(true);
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.slots;
        {
            let mut per_client = slots.per_client.lock();
            if let Some(n) = per_client.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    per_client.remove(&self.client);
                }
            }
        }
        slots.open.fetch_sub(1, Ordering::Relaxed);
        slots.state.edge.metrics.connection(false);
    }
}

/// What a connection hyper serves is doing, for its time limits: when it last moved
/// bytes, whether a request head is being read and since when, and how many
/// requests are being answered.
#[derive(Debug)]
struct Activity {
    clock: http1::Coarse,
    /// Nanoseconds from `start` to the last read, write or answer.
    last: AtomicU64,
    /// Nanoseconds from `start` to the first byte of the head being read, plus one;
    /// 0 when none is.
    head_since: AtomicU64,
    busy: AtomicUsize,
}

/// Why [`Activity::expired`] ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// No request for `idle_timeout` since the last answer.
    Idle,
    /// A head begun `header_read_timeout` ago is not complete.
    Head,
    /// A request is being answered, but no bytes moved for `idle_timeout`: a
    /// request body that does not arrive, or an answer the client does not read.
    Stalled,
}

impl Activity {
    fn new() -> Self {
        Self {
            clock: http1::Coarse::start(),
            last: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.clock.started() + Duration::from_nanos(nanos)
    }

    /// Bytes were read: with no request being answered they begin a head (or go on
    /// with one). Bytes read while one is (a body, a pipelined head) do not.
    fn read(&self) {
        let now = self.nanos();
        self.last.store(now, Ordering::Relaxed);
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now + 1, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last.store(self.nanos(), Ordering::Relaxed);
    }

    /// When the connection is to be closed, as things stand, and why.
    fn deadline(&self, t: http1::Timeouts) -> (Instant, Expired) {
        let last = self.at(self.last.load(Ordering::Relaxed));
        if self.busy.load(Ordering::Relaxed) > 0 {
            // Handlers answer in far less than idle_timeout; a request that moves
            // no bytes that long waits for its client.
            return (last + t.idle, Expired::Stalled);
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => (last + t.idle, Expired::Idle),
            since => (self.at(since - 1) + t.head, Expired::Head),
        }
    }

    /// Resolves when the connection has been idle for `t.idle`, a head has taken
    /// longer than `t.head`, or a request in flight has moved no bytes for
    /// `t.idle`. Polled with the connection, after it, so it sees what that poll
    /// did; its one timer is moved only when a deadline comes earlier (a head
    /// begins) and otherwise set again when it fires, not per request.
    async fn expired(&self, t: http1::Timeouts) -> Expired {
        let mut timer_at = Instant::now() + t.head.min(t.idle);
        let timer = tokio::time::sleep_until(timer_at);
        tokio::pin!(timer);
        std::future::poll_fn(|cx| loop {
            let (at, why) = self.deadline(t);
            if at < timer_at {
                timer.as_mut().reset(at);
                timer_at = at;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if at <= Instant::now() {
                return Poll::Ready(why);
            }
            timer_at = at;
            timer.as_mut().reset(timer_at);
        })
        .await
    }
}

/// A request being answered; the connection counts as idle again once it is done.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Busy {
    /// A request whose head is complete.
    fn new(activity: &Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        activity.head_since.store(0, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's stream, noting each read and write that moved bytes (a slow
/// request body or a slowly read answer is not idle).
#[derive(Debug)]
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Tells connections to finish: a flag, and the wakers of the connections waiting
/// for it. A connection task is woken for every request; what it waits on besides
/// the connection should cost next to nothing to poll again, which a watch or
/// Notify future (a lock on every poll) does not.
#[derive(Debug, Default)]
struct Shutdown {
    stopping: AtomicBool,
    waiting: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
}

impl Shutdown {
    fn trigger(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    fn wait(self: &Arc<Self>) -> Stopping {
        Stopping {
            shutdown: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }
}

/// Resolves once [`Shutdown::trigger`] was called.
#[derive(Debug)]
struct Stopping {
    shutdown: Arc<Shutdown>,
    id: u64,
    /// The waker registered last, if any.
    waker: Option<Waker>,
}

impl Future for Stopping {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.stopping.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        self.shutdown.waiting.lock().insert(self.id, waker.clone());
        self.waker = Some(waker);
        // A trigger since the first check has either seen this waker or set the
        // flag before taking the lock this registration took after it.
        if self.shutdown.stopping.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.shutdown.waiting.lock().remove(&self.id);
        }
    }
}

/// The next connection. As in `axum::serve`, errors of one connection are ignored
/// and anything else (such as running out of file descriptors) is logged and retried
/// after a second.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    loop {
        match listener.accept().await {
            Ok(a) => return a,
            Err(e)
                if matches!(
                    e.kind(),
                    ConnectionRefused | ConnectionAborted | ConnectionReset
                ) => {}
            Err(e) => {
                tracing::error!(error = %e, "accept error");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The next connection on the admin socket, as [`accept`] does for TCP.
async fn accept_unix(listener: &UnixListener) -> tokio::net::UnixStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                tracing::error!(error = %e, "accept error on the admin socket");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The service of one connection.
#[derive(Clone)]
struct Connection {
    state: AppState,
    router: Router,
    peer: Peer,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let busy = Busy::new(&self.activity);
        let mut req = req.map(Body::new);
        match &self.peer {
            Peer::Tcp(peer) if auth::forward_auth_kind(req.uri().path()).is_some() => {
                let uri = req.uri();
                let r = auth::check(
                    &self.state,
                    peer.ip(),
                    uri,
                    req.headers(),
                    uri.path_and_query().and_then(auth::appended),
                );
                return Answer {
                    kind: AnswerKind::Ready(Some(r)),
                    _busy: busy,
                };
            }
            Peer::Tcp(peer) => {
                req.extensions_mut().insert(ConnectInfo(*peer));
            }
            Peer::Unix(peer) => {
                req.extensions_mut().insert(ConnectInfo(peer.clone()));
            }
        }
        Answer {
            kind: AnswerKind::Routed(Box::pin(self.router.clone().oneshot(req))),
            _busy: busy,
        }
    }
}

type Routed = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The answer to one request; the connection is busy until it is dropped.
struct Answer {
    kind: AnswerKind,
    _busy: Busy,
}

/// A response ready at once, or one the router is working on.
enum AnswerKind {
    Ready(Option<Response>),
    Routed(Routed),
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().kind {
            AnswerKind::Ready(r) => match r.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            AnswerKind::Routed(f) => f.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn shutdown_wakes_waiting_connections_and_later_ones_stop_at_once() {
        let shutdown = Arc::new(Shutdown::default());
        let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(shutdown.wait())).collect();
        tokio::task::yield_now().await;
        // A connection that ended before the shutdown leaves nothing behind.
        assert_eq!(shutdown.waiting.lock().len(), 3);
        let mut ended = Box::pin(shutdown.wait());
        assert!(futures_poll(ended.as_mut()).await.is_pending());
        assert_eq!(shutdown.waiting.lock().len(), 4);
        drop(ended);
        assert_eq!(shutdown.waiting.lock().len(), 3);
        shutdown.trigger();
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .unwrap();
        }
        assert!(shutdown.waiting.lock().is_empty());
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("resolves at once after the trigger");
    }

    #[tokio::test]
    async fn hyper_connections_time_heads_from_their_first_byte_and_idleness_apart() {
        let t = http1::Timeouts {
            head: Duration::from_millis(200),
            idle: Duration::from_millis(400),
        };
        let activity = Arc::new(Activity::new());
        let start = activity.clock.started();
        // Idle from the start (the handoff) until a byte arrives.
        assert_eq!(activity.deadline(t), (start + t.idle, Expired::Idle));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = Instant::now();
        activity.read();
        let (at, why) = activity.deadline(t);
        assert_eq!(why, Expired::Head);
        // The connection's clock is the coarse one: right to a tick (a few ms).
        let slack = Duration::from_millis(20);
        assert!(at + slack >= before + t.head && at <= Instant::now() + t.head + slack);
        // More of the same head does not move its deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
        activity.read();
        assert_eq!(activity.deadline(t), (at, Expired::Head));
        // Complete: busy until answered, held to t.idle without bytes moving
        // (regression, issue 9 review, F3: there was no deadline while busy).
        let busy = Busy::new(&activity);
        let (_, why) = activity.deadline(t);
        assert_eq!(why, Expired::Stalled);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body_at = Instant::now();
        activity.read(); // a body: not a head, but it moves the deadline
        let (at, why) = activity.deadline(t);
        assert_eq!(why, Expired::Stalled);
        assert!(at + slack >= body_at + t.idle && at <= Instant::now() + t.idle + slack);
        let expired = activity.expired(t);
        tokio::pin!(expired);
        assert!(futures_poll(expired.as_mut()).await.is_pending());
        let answered = Instant::now();
        drop(busy);
        let (at, why) = activity.deadline(t);
        assert_eq!(why, Expired::Idle);
        assert!(at + slack >= answered + t.idle && at <= Instant::now() + t.idle + slack);
        // The watcher resolves once idle for t.idle, not before.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(futures_poll(expired.as_mut()).await.is_pending());
        let why = tokio::time::timeout(Duration::from_secs(5), expired)
            .await
            .expect("expires");
        assert_eq!(why, Expired::Idle);
        assert!(answered.elapsed() + slack >= t.idle);
        // A request in flight that moves no bytes for t.idle expires.
        let _busy = Busy::new(&activity);
        let started = Instant::now();
        activity.read();
        let why = tokio::time::timeout(Duration::from_secs(5), activity.expired(t))
            .await
            .expect("expires");
        assert_eq!(why, Expired::Stalled);
        assert!(started.elapsed() + slack >= t.idle);
    }

    async fn futures_poll<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
