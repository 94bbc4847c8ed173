//! The TCP server. Each connection starts on [`http1::serve`], which answers
//! `/v1/auth` — what a reverse proxy asks about every request it forwards — on the
//! connection itself. The first request it does not answer hands the connection to
//! hyper, where `/v1/auth` is still answered without the router (the same
//! [`auth::check`] the router's route calls) and every other request goes through
//! the router with the peer address as [`ConnectInfo`], as `axum::serve` would do.

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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use super::limits::{once_a_minute, Client};
use super::metrics::Refused;
use super::{auth, http1, AppState};
use crate::config::ServerConfig;

/// Serve `router` on `listener` until `stop` turns true, then stop accepting, let
/// each connection finish the request in flight, and return once all have closed.
/// `server` gives the time limits of a connection and how many may be open.
pub async fn serve_tcp(
    listener: TcpListener,
    state: AppState,
    router: Router,
    server: ServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let head_timeout = server.header_read_timeout;
    let idle_timeout = server.idle_timeout;
    // HTTP/1 only, keep-alive, no upgrades; otherwise the defaults axum::serve uses,
    // but for writev (answers are small, and copying a body behind the head into one
    // buffer costs less than queueing buffers for a vectored write) and a limit on
    // the time a request head may take, as on the fast path.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .writev(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    // Each connection task holds a receiver; `closed` resolves when all are gone.
    let (close_tx, close_rx) = watch::channel(());
    let shutdown = Arc::new(Shutdown::default());
    let slots = Arc::new(Slots::new(&server, state.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = stopped(&mut stop) => break,
        };
        // Over a limit the connection is closed at once, before anything is read:
        // the cheapest refusal, and the accept loop never waits for a client.
        let Some(slot) = slots.take(peer) else {
            drop(stream);
            continue;
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
            let end = http1::serve(
                &mut stream,
                peer,
                &state,
                http1::Timeouts {
                    head: head_timeout,
                    idle: idle_timeout,
                },
                &mut stopping,
            )
            .await;
            if let http1::End::Handoff(read) = end {
                let activity = Arc::new(Activity::new());
                let io = TokioIo::new(Watched {
                    io: http1::Rewind::new(stream, read),
                    activity: activity.clone(),
                });
                let service = Connection {
                    state,
                    router,
                    peer,
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
                        let _ = conn.await;
                    }
                    () = activity.idle(idle_timeout) => {
                        tracing::debug!(%peer, "keep-alive connection idle for server.idle_timeout; closing");
                    }
                }
            }
            drop(close_rx);
        });
    }
    shutdown.trigger();
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
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
        }
    }

    /// A slot for a connection from `peer`, or None (counted and logged) when a
    /// limit is reached.
    fn take(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        // IPv6 peers grouped as the rate limiter groups them: one subscriber's /64
        // is one client here too.
        let client = self.state.edge.limiter.client_of(peer.ip());
        let refused = if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_total {
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
            return None;
        }
        metrics.connection(true);
        Some(Slot {
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

/// When a connection hyper serves last moved bytes, and how many of its requests
/// are being answered: what [`Activity::idle`] closes an idle connection on.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Nanoseconds from `start` to the last read, write or answer.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// Resolves once the connection has answered everything it was asked and
    /// moved no bytes for `timeout`. Sleeps once per `timeout`, not per request.
    async fn idle(&self, timeout: Duration) {
        loop {
            let at = if self.busy.load(Ordering::Relaxed) > 0 {
                Instant::now() + timeout
            } else {
                self.last() + timeout
            };
            tokio::time::sleep_until(at).await;
            if self.busy.load(Ordering::Relaxed) == 0 && self.last() + timeout <= Instant::now() {
                return;
            }
        }
    }
}

/// A request being answered; the connection counts as idle again once it is done.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
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
            this.activity.touch();
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
            this.activity.touch();
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
            this.activity.touch();
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

/// The service of one connection.
#[derive(Clone)]
struct Connection {
    state: AppState,
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let busy = Busy::new(&self.activity);
        if req.uri().path() == http1::AUTH_PATH {
            let r = auth::check(
                &self.state,
                Some(self.peer.ip()),
                req.uri(),
                req.headers(),
                None,
            );
            return Answer {
                kind: AnswerKind::Ready(Some(r)),
                _busy: busy,
            };
        }
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
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

    async fn futures_poll<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
