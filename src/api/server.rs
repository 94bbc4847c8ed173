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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{auth, http1, AppState};

/// Serve `router` on `listener` until `stop` turns true, then stop accepting, let
/// each connection finish the request in flight, and return once all have closed.
pub async fn serve_tcp(
    listener: TcpListener,
    state: AppState,
    router: Router,
    head_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
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
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = stopped(&mut stop) => break,
        };
        // Answers are written in one piece; do not hold them back for more.
        let _ = stream.set_nodelay(true);
        let service = Connection {
            state: state.clone(),
            router: router.clone(),
            peer,
        };
        let builder = builder.clone();
        let mut stopping = shutdown.wait();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let state = &service.state;
            let end = http1::serve(&mut stream, peer, state, head_timeout, &mut stopping).await;
            if let http1::End::Handoff(read) = end {
                let io = TokioIo::new(http1::Rewind::new(stream, read));
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
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        if req.uri().path() == http1::AUTH_PATH {
            let r = auth::check(
                &self.state,
                Some(self.peer.ip()),
                req.uri(),
                req.headers(),
                None,
            );
            return Answer::Ready(Some(r));
        }
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        Answer::Routed(Box::pin(self.router.clone().oneshot(req)))
    }
}

type Routed = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// A response ready at once, or one the router is working on.
enum Answer {
    Ready(Option<Response>),
    Routed(Routed),
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Ready(r) => match r.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            Answer::Routed(f) => f.as_mut().poll(cx),
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
