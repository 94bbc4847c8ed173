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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tower::ServiceExt;

use super::auth;
pub use super::connections::ConnectionLimits;
use super::http1;
use super::lifetime::{Activity, Busy, Expired, Shutdown, Stopping, Watched};
use super::limits::Client;
use super::peer::UnixPeer;
use super::state::AppState;
use crate::config::ServerConfig;

/// How long a connection may take to finish the request in flight once the server
/// stops; then it is closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
            let peer = Peer::Unix(UnixPeer::of(uid).await);
            serve_hyper(stream, peer, state, router, &builder, timeouts, stopping).await;
            drop(close_rx);
        });
    }
    shutdown.trigger();
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
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
            Peer::Unix(UnixPeer { uid: Some(uid), .. }) => write!(f, "local uid {uid}"),
            Peer::Unix(UnixPeer { uid: None, .. }) => write!(f, "a local caller"),
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
