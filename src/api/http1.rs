//! `/v1/auth` answered on the connection. A reverse proxy asks about every request it
//! forwards, over a few keep-alive connections that carry nothing else, so the
//! connection reads request heads itself (httparse, as hyper does) and writes each
//! answer as bytes: no request or response header maps, no body machinery. Answers
//! to requests that arrived together go out in one write.
//!
//! Anything else — another path, HTTP/1.0, a request body, `Expect`, `Upgrade`,
//! headers over `auth.max_header_bytes` (which hyper's path refuses with a JSON
//! error), a head this parser refuses — hands the connection to hyper, which reads
//! the bytes already read first ([`Rewind`]) and serves the rest of the connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::HeaderName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::auth::{self, Outcome, ReadHeaders};
use super::AppState;

/// The forward-auth path, answered here (and by hyper without the router).
pub const AUTH_PATH: &str = "/v1/auth";
/// Header lines one request may have here; one with more goes to hyper.
const MAX_HEADERS: usize = 48;
/// A head still incomplete at this size goes to hyper, which refuses what is too large.
const MAX_HEAD: usize = 16 * 1024;
/// Free room to read into.
const READ_ROOM: usize = 4 * 1024;

/// How [`serve`] left the connection.
#[derive(Debug)]
pub enum End {
    /// Finished: closed by the client, after `Connection: close`, on an I/O error or
    /// because the server is stopping.
    Closed,
    /// A request this path does not answer: hyper serves the connection from here,
    /// reading these bytes first.
    Handoff(Vec<u8>),
}

/// How long a connection on [`serve`] may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request head: the first from the connection's start, every later one
    /// from its first byte (`server.header_read_timeout`).
    pub head: Duration,
    /// Idle between requests, from the last answer (`server.idle_timeout`).
    pub idle: Duration,
}

/// Answer `/v1/auth` requests on `stream` until the connection ends or carries
/// something else. `stop` resolves when the server stops; a connection between
/// requests then closes, as hyper's graceful shutdown closes idle ones. The first
/// request head must be complete within `timeouts.head` of the connection's start,
/// and every later one within `timeouts.head` of its first byte, or the connection
/// is closed (slow-loris clients). Between requests a connection may stay idle for
/// `timeouts.idle`, longer than proxies keep idle upstream connections, so that the
/// proxy, not this end, is the one to close them.
pub async fn serve(
    stream: &mut TcpStream,
    peer: SocketAddr,
    st: &AppState,
    timeouts: Timeouts,
    mut stop: impl std::future::Future<Output = ()> + Unpin,
) -> End {
    let mut input: Vec<u8> = Vec::with_capacity(2 * READ_ROOM);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let start = Instant::now();
    // When the head being read must be complete: the first one counts from now.
    let mut head_deadline = Some(start + timeouts.head);
    // When the last answer was written, once there was one.
    let mut last_answer: Option<Instant> = None;
    // One timer for the connection's life. It is moved earlier when a deadline
    // comes before it, and otherwise left to fire and be set again then: answers
    // move the idle deadline later all the time, and resetting a timer on every
    // request would cost the runtime's timer lock each time.
    let timer = tokio::time::sleep_until(start + timeouts.head);
    tokio::pin!(timer);
    let mut timer_at = start + timeouts.head;
    loop {
        // A busy connection may never wait for the stop below: look at it here, and
        // when stopping, answer one more request (with `Connection: close`), as
        // hyper's graceful shutdown finishes the request in flight.
        let stopping =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut stop).poll(cx).is_ready())).await;
        if stopping && input.is_empty() {
            return End::Closed;
        }
        // Answer every complete request read so far, in order.
        let mut used = 0;
        let mut next = Next::Read;
        while used < input.len() {
            match answer(st, peer, &input[used..], stopping, &mut out) {
                Step::Answered { len, close } => {
                    used += len;
                    if close {
                        next = Next::Close;
                        break;
                    }
                }
                Step::Partial => break,
                Step::Handoff => {
                    next = Next::Handoff;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return End::Closed;
            }
            out.clear();
        }
        input.drain(..used);
        // A burst of pipelined requests may have grown the buffers: give it back.
        if input.is_empty() && input.capacity() > 4 * MAX_HEAD {
            input = Vec::with_capacity(2 * READ_ROOM);
        }
        if out.capacity() > 4 * MAX_HEAD {
            out = Vec::with_capacity(1024);
        }
        match next {
            Next::Close => {
                let _ = stream.shutdown().await;
                return End::Closed;
            }
            Next::Handoff => return End::Handoff(input),
            Next::Read if input.len() > MAX_HEAD => return End::Handoff(input),
            Next::Read => {}
        }
        if input.capacity() - input.len() < READ_ROOM / 2 {
            input.reserve(READ_ROOM);
        }
        let now = (used > 0).then(Instant::now);
        if now.is_some() {
            last_answer = now;
        }
        // Idle after an answer, or reading a head (the first, or one begun since).
        let (deadline, idle) = match (input.is_empty(), last_answer) {
            (true, Some(at)) => {
                head_deadline = None;
                (at + timeouts.idle, true)
            }
            _ => {
                if head_deadline.is_none() || used > 0 {
                    head_deadline = Some(now.unwrap_or_else(Instant::now) + timeouts.head);
                }
                (head_deadline.unwrap_or(start + timeouts.head), false)
            }
        };
        if deadline < timer_at {
            timer.as_mut().reset(deadline);
            timer_at = deadline;
        }
        tokio::select! {
            biased;
            r = stream.read_buf(&mut input) => match r {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            },
            () = &mut stop => return End::Closed,
            () = &mut timer => {
                if Instant::now() >= deadline {
                    if idle {
                        tracing::debug!(%peer, "keep-alive connection idle for server.idle_timeout; closing");
                    } else {
                        tracing::debug!(%peer, "request head not finished in time; closing");
                    }
                    return End::Closed;
                }
                // Fired for an earlier deadline since moved: wait for the current one.
                timer.as_mut().reset(deadline);
                timer_at = deadline;
            }
        }
    }
}

enum Next {
    Read,
    Close,
    Handoff,
}

/// What became of the bytes at the front of the input.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A request of `len` bytes was answered; `close` after it.
    Answered { len: usize, close: bool },
    /// Not a whole request head yet.
    Partial,
    /// Not for this path.
    Handoff,
}

/// Parse one request at the front of `input` and, if it is a plain `/v1/auth`
/// request, write its answer to `out`, closing after it if `closing`.
fn answer(st: &AppState, peer: SocketAddr, input: &[u8], closing: bool, out: &mut Vec<u8>) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Step::Partial,
        Err(_) => return Step::Handoff,
    };
    if req.version != Some(1) || !req.method.is_some_and(plain_method) {
        return Step::Handoff;
    }
    let Some(target) = req.path else {
        return Step::Handoff;
    };
    // The usual target is the bare path. One with a query or fragment is read as
    // hyper reads it (which also refuses characters a URI may not have).
    let parsed;
    let (path, query) = if target == AUTH_PATH {
        (target, None)
    } else {
        let Ok(pq) = axum::http::uri::PathAndQuery::try_from(target) else {
            return Step::Handoff;
        };
        parsed = pq;
        (parsed.path(), parsed.query())
    };
    if path != AUTH_PATH {
        return Step::Handoff;
    }
    let Some((close, size)) = plain_head(req.headers) else {
        return Step::Handoff;
    };
    let close = close || closing;
    let plan = st.edge.auth();
    if size > plan.config.max_header_bytes {
        return Step::Handoff;
    }
    let outcome = auth::decide(st, &plan, Some(peer.ip()), query, &Head(req.headers), None);
    write_answer(out, &outcome, close);
    Step::Answered { len, close }
}

/// Methods answered here. CONNECT (whose 200 opens a tunnel) and anything unusual
/// go to hyper.
fn plain_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS"
    )
}

/// For a head without a body or protocol change: whether it asks to close the
/// connection after the answer, and its size as `auth.max_header_bytes` counts it.
/// None for anything hyper should handle.
fn plain_head(headers: &[httparse::Header<'_>]) -> Option<(bool, usize)> {
    let mut close = false;
    let mut size = 0;
    for h in headers {
        let name = h.name;
        size += auth::header_bytes(name.len(), h.value.len());
        if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    Some((close, size))
}

/// A parsed head's headers, read as hyper's header map reads them.
struct Head<'h, 'b>(&'h [httparse::Header<'b>]);

impl ReadHeaders for Head<'_, '_> {
    fn each_value<'a>(&'a self, name: &HeaderName, mut f: impl FnMut(Option<&'a str>)) {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .for_each(|h| f(text(h.value)));
    }

    fn first(&self, name: &HeaderName) -> Option<&str> {
        // The first header of that name, as `HeaderMap::get`: a later one must not
        // stand in for a first value that is not text.
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .and_then(|h| text(h.value))
    }
}

/// A value as text when it is visible ASCII, spaces and tabs (`HeaderValue::to_str`).
fn text(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// The answer as HTTP/1.1, the same status and headers as hyper writes for
/// [`Outcome::response`].
fn write_answer(out: &mut Vec<u8>, outcome: &Outcome, close: bool) {
    let status = outcome.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\ncache-control: no-store\r\n");
    outcome.headers(|name, value| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        auth::encode_value(value, out);
        out.extend_from_slice(b"\r\n");
    });
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    date::write(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// The `Date` header's value, formatted once a second.
mod date {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }

    pub fn write(out: &mut Vec<u8>) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse).tv_sec;
        CACHE.with_borrow_mut(|(second, text)| {
            if *second != now {
                let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap_or(0));
                *text = httpdate::fmt_http_date(at);
                *second = now;
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

/// A connection handed to hyper: the bytes already read, then the stream.
#[derive(Debug)]
pub struct Rewind {
    first: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl Rewind {
    /// `stream`, read from `first` on until that is used up.
    pub fn new(stream: TcpStream, first: Vec<u8>) -> Self {
        Self {
            first,
            at: 0,
            stream,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            if this.at == this.first.len() {
                this.first = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn heads(raw: &[u8], f: impl FnOnce(&[httparse::Header<'_>])) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        f(req.headers);
    }

    #[test]
    fn bodies_and_protocol_changes_go_to_hyper() {
        let plain = |raw: &str| {
            let mut r = None;
            heads(raw.as_bytes(), |h| {
                r = Some(plain_head(h).map(|(close, _)| close))
            });
            r.unwrap()
        };
        assert_eq!(
            plain("HEAD /v1/auth HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(false)
        );
        assert_eq!(
            plain("GET /v1/auth HTTP/1.1\r\nContent-Length:  0 \r\nConnection: keep-alive, Close\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            plain("POST /v1/auth HTTP/1.1\r\nContent-Length: 2\r\n\r\n"),
            None
        );
        assert_eq!(
            plain("POST /v1/auth HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
        assert_eq!(
            plain("GET /v1/auth HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
            None
        );
        assert_eq!(plain("GET /v1/auth HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"), None);
        assert_eq!(
            plain("GET /v1/auth HTTP/1.1\r\nConnection: closed\r\n\r\n"),
            Some(false)
        );
    }

    #[test]
    fn headers_read_like_a_header_map() {
        heads(
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\nX-Real-IP: \xff\r\n\r\n",
            |h| {
                let head = Head(h);
                let mut map = axum::http::HeaderMap::new();
                for h in h {
                    map.append(
                        HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                        axum::http::HeaderValue::from_bytes(h.value).unwrap(),
                    );
                }
                for name in ["x-forwarded-for", "x-real-ip", "authorization"] {
                    let name = HeaderName::from_static(name);
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    head.each(&name, |v| a.push(v));
                    map.each(&name, |v| b.push(v));
                    assert_eq!(a, b, "{name}");
                    assert_eq!(head.first(&name), map.first(&name), "{name}");
                }
            },
        );
    }

    #[test]
    fn answers_match_what_hyper_would_send() {
        let outcome = Outcome::Denied(axum::http::StatusCode::UNAUTHORIZED, "NOT_FOUND");
        let mut out = Vec::new();
        write_answer(&mut out, &outcome, true);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, "");
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/1.1 401 Unauthorized"));
        let mut got: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_owned(), v.to_owned())
            })
            .filter(|(k, _)| k != "date")
            .collect();
        got.sort();
        let r = outcome.response();
        assert_eq!(r.status(), 401);
        let mut want: Vec<(String, String)> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .chain([("connection".to_owned(), "close".to_owned())])
            .collect();
        want.sort();
        assert_eq!(got, want);
        assert!(
            text.contains("\r\ndate: ") && text.ends_with(" GMT\r\n\r\n"),
            "{text}"
        );
    }
}

/// The fast path and hyper's path must decide alike on any head: the same
/// generated requests go to [`answer`] and to hyper (the `/v1/auth` service of the
/// server, on an in-memory connection), over one real [`AppState`] with keys and
/// routes, and their statuses and headers are compared.
#[cfg(test)]
pub(super) mod differential {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::convert::Infallible;
    use std::sync::{Arc, OnceLock};

    use axum::response::IntoResponse;
    use hyper_util::rt::TokioIo;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::keys::{Actor, CreateKey, Keys};

    const CONFIG: &str = r#"
[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
[groups.Synchronizer]
scopes = ["catalog:read", "catalog:sync"]
create_keys = true
[groups.User]
scopes = ["catalog:read"]
[groups.Admin]
scopes = ["catalog:read", "catalog:write", "apikeyd:admin"]
create_keys = true
manage_all_keys = true
[users.admin]
groups = ["Admin"]
[users.alice]
groups = ["Synchronizer"]
[auth]
trusted_proxies = ["127.0.0.1/32"]
query_param = "api_key"
[[auth.routes]]
prefix = "/catalog"
scope = "catalog:read"
[[auth.routes]]
prefix = "/catalog/sync"
scope = "catalog:sync"
[[auth.routes]]
prefix = "/admin"
scope = "catalog:write"
[rate_limit]
failures_per_minute = 0
"#;

    pub(super) struct Fixture {
        _dir: tempfile::TempDir,
        pub rt: tokio::runtime::Runtime,
        pub st: AppState,
        /// alice's keys: read and sync; read only; from 203.0.113.0/24 only; with
        /// an `X-Tenant` header; disabled.
        pub keys: Vec<String>,
    }

    pub(super) fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let c = crate::config::parse(
                std::path::Path::new("t.toml"),
                CONFIG,
                &crate::config::Environment::default(),
            )
            .unwrap();
            let store = Arc::new(crate::store::Store::open(&dir.path().join("db.redb")).unwrap());
            let hasher = crate::keys::secret::KeyHasher::new(
                &crate::keys::secret::ServerSecret::from_bytes(vec![7; 32]).unwrap(),
            );
            let settings = crate::keys::Settings {
                policy: c.policy,
                directory: c.directory,
            };
            let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
            let keys = Arc::new(Keys::open(store, hasher, clock, settings).unwrap());
            let admin = Actor {
                name: "admin".into(),
                admin: true,
            };
            let mut secrets = Vec::new();
            rt.block_on(async {
                for (i, (scopes, ip, header)) in [
                    (None, None, None),
                    (Some("catalog:read"), None, None),
                    (None, Some("203.0.113.0/24"), None),
                    (None, None, Some("X-Tenant=${key.owner}")),
                    (None, None, None),
                ]
                .into_iter()
                .enumerate()
                {
                    let req = CreateKey {
                        user: Some("alice".into()),
                        scopes: scopes.map(|s: &str| vec![s.to_owned()]),
                        name: format!("k{i}"),
                        ip: ip.into_iter().map(str::to_owned).collect(),
                        headers: header.into_iter().map(str::to_owned).collect(),
                        ..CreateKey::default()
                    };
                    let issued = keys.create(&admin, req).await.unwrap();
                    if i == 4 {
                        let id = issued.view.id.to_string();
                        keys.set_enabled(&admin, &id, false).await.unwrap();
                    }
                    secrets.push(issued.key.expose().to_owned());
                }
            });
            let st = AppState::new(keys, c.auth, c.rate_limit);
            Fixture {
                _dir: dir,
                rt,
                st,
                keys: secrets,
            }
        })
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

    /// Status and headers but `date` and `connection`, sorted.
    type Seen = (u16, Vec<(String, String)>);

    fn parse_response(raw: &[u8]) -> Option<(Seen, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = r.parse(raw).ok()? else {
            return None;
        };
        let body = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let mut seen: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).into_owned();
                (h.name.to_ascii_lowercase(), value)
            })
            .filter(|(n, _)| n != "date" && n != "connection")
            .collect();
        seen.sort();
        Some(((r.code?, seen), len + body))
    }

    /// The fast path's answer, or `None` when it hands the request to hyper.
    pub(super) fn fast(st: &AppState, raw: &[u8]) -> Option<Seen> {
        let mut out = Vec::new();
        match answer(st, PEER, raw, false, &mut out) {
            Step::Answered { .. } => Some(parse_response(&out).expect("a whole answer").0),
            Step::Handoff => None,
            Step::Partial => panic!("generated heads are complete"),
        }
    }

    /// hyper's answer, as the server gives it to a connection handed over.
    pub(super) fn hyper(f: &Fixture, raw: &[u8]) -> Seen {
        let st = f.st.clone();
        f.rt.block_on(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let r = if req.uri().path() == AUTH_PATH {
                        auth::check(&st, Some(PEER.ip()), req.uri(), req.headers(), None)
                    } else {
                        axum::http::StatusCode::NOT_FOUND.into_response()
                    };
                    std::future::ready(Ok::<_, Infallible>(r))
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service);
            let task = tokio::spawn(conn);
            let (mut rd, mut wr) = tokio::io::split(client);
            wr.write_all(raw).await.unwrap();
            let mut got = Vec::new();
            let read = async {
                loop {
                    if let Some((seen, len)) = parse_response(&got) {
                        if got.len() >= len {
                            return seen;
                        }
                    }
                    let mut buf = [0u8; 4096];
                    let n = rd.read(&mut buf).await.unwrap();
                    assert!(n > 0, "hyper closed without a whole answer: {got:?}");
                    got.extend_from_slice(&buf[..n]);
                }
            };
            let seen = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .expect("hyper answered");
            task.abort();
            seen
        })
    }

    fn header_names() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "Authorization",
            "X-Api-Key",
            "x-api-key",
            "X-Forwarded-Uri",
            "x-forwarded-uri",
            "X-Original-URI",
            "X-Required-Scope",
            "X-Forwarded-For",
            "X-Real-IP",
            "Connection",
            "Content-Length",
            "Host",
            "X-Filler",
        ])
    }

    /// Paths near the protected ones, spelled in the ways that matter.
    fn paths() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop::sample::select(vec![
            "/", "//", "/./", "/x/../", "/..", ";p", "%73", "%2e", "%2f", "%5c", "\\", "%zz", "%4",
            "%00", "%C3%A9", "?", "#", "catalog", "CATALOG", "sync", "run", "items", "admin",
            "http://h", "\u{e9}", "\t", " ", ".",
        ]);
        (
            prop::sample::select(vec![
                "/catalog/sync/run",
                "/catalog/items",
                "/admin/x",
                "/x",
            ]),
            prop::collection::vec((0usize..24, piece), 0..4),
        )
            .prop_map(|(base, inserts)| {
                let mut p = base.to_owned();
                for (at, piece) in inserts {
                    let at = (0..=at.min(p.len()))
                        .rev()
                        .find(|i| p.is_char_boundary(*i))
                        .unwrap_or(0);
                    p.insert_str(at, piece);
                }
                p.into_bytes()
            })
    }

    fn values(keys: &'static [String]) -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(keys.to_vec());
        prop_oneof![
            key.clone().prop_map(|k| format!("Bearer {k}").into_bytes()),
            key.prop_map(String::into_bytes),
            paths(),
            prop::sample::select(vec![
                "catalog:sync",
                "catalog:read",
                "203.0.113.9",
                "198.51.100.1, 203.0.113.9",
                "close",
                "keep-alive",
                "0",
                "Bearer akd_wrong",
                "",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(prop::sample::select(b"ab/%.;\x80\xff \t".to_vec()), 0..6),
        ]
    }

    fn heads(keys: &'static [String]) -> impl Strategy<Value = Vec<u8>> {
        let key = prop::sample::select(keys.to_vec());
        (
            prop::sample::select(vec!["GET", "HEAD", "POST"]),
            prop_oneof![
                Just("/v1/auth".to_owned()),
                Just("/v1/auth?x=1".to_owned()),
                key.prop_map(|k| format!("/v1/auth?api_key={k}")),
            ],
            prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
            prop::collection::vec((header_names(), values(keys)), 0..8),
        )
            .prop_map(|(method, target, version, headers)| {
                let mut raw = format!("{method} {target} {version}\r\n").into_bytes();
                for (name, value) in headers {
                    raw.extend_from_slice(name.as_bytes());
                    raw.extend_from_slice(b": ");
                    raw.extend_from_slice(&value);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"\r\n");
                raw
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Regression (issue 9, item 1): `Head::first` skipped a first value that
        /// was not text and took the next, where hyper's header map reads none, so
        /// the two paths could check different URIs and keys for one request.
        #[test]
        fn fast_path_and_hyper_decide_alike(raw in heads(&fixture().keys)) {
            let f = fixture();
            let fast = fast(&f.st, &raw);
            let hyper = hyper(f, &raw);
            if let Some(fast) = fast {
                prop_assert_eq!(fast, hyper, "{}", String::from_utf8_lossy(&raw));
            }
        }
    }
}

/// The bypass spellings of issue 9, item 1, through both paths.
#[cfg(test)]
mod route_checks {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::differential::{fast, fixture, hyper};

    fn head(extra: &str) -> Vec<u8> {
        format!("GET /v1/auth HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes()
    }

    fn reason(seen: &(u16, Vec<(String, String)>)) -> Option<String> {
        seen.1
            .iter()
            .find(|(n, _)| n == "x-api-key-reason")
            .map(|(_, v)| v.clone())
    }

    /// Both paths' answer to `raw`, which the fast path must answer itself.
    fn both(raw: &[u8]) -> (u16, Option<String>) {
        let f = fixture();
        let fast = fast(&f.st, raw).expect("answered on the fast path");
        assert_eq!(fast, hyper(f, raw), "{}", String::from_utf8_lossy(raw));
        (fast.0, reason(&fast))
    }

    /// Regression (issue 9, item 1): with only `catalog:read`, spellings of
    /// `/catalog/sync/run` that the application reads as that path passed the
    /// `/catalog/sync` route (200), and so did unreadable or conflicting URI
    /// headers (no route found: fail open).
    #[test]
    fn bypass_spellings_are_refused_on_both_paths() {
        let reader = &fixture().keys[1];
        let ask = |uri_headers: &str| both(&head(&format!("X-Api-Key: {reader}\r\n{uri_headers}")));
        for p in [
            "/catalog/sync/run",
            "//catalog/sync/run",
            "/catalog/./sync/run",
            "/catalog/x/../sync/run",
            "/catalog/%73ync/run",
            "/catalog/sync/run;jsessionid=1",
            "http://h/catalog/sync/run",
        ] {
            assert_eq!(
                ask(&format!("X-Forwarded-Uri: {p}\r\n")),
                (403, Some("INSUFFICIENT_SCOPE".into())),
                "{p}"
            );
        }
        for p in [
            "/catalog/sync%2frun",
            "/catalog%2Fsync/run",
            "/catalog\\sync/run",
            "/catalog/%zz/../sync/run",
            "/catalog/sync%00",
            "/catalog/../../catalog/sync/run",
            "/public#/../catalog/sync/run",
            "/catalog./sync/run",
            "*",
            // Letter case and ;parameters that change the route.
            "/CATALOG/Sync/run",
            "/catalog;p/sync/run",
            "/catalog/x/..;/sync/run",
        ] {
            assert_eq!(
                ask(&format!("X-Forwarded-Uri: {p}\r\n")),
                (400, Some("BAD_PATH".into())),
                "{p}"
            );
        }
        // Unreadable or conflicting URI headers, in either order.
        for h in [
            "X-Forwarded-Uri: /catalog/sync/r\u{fc}n\r\n",
            "X-Original-URI: /catalog/items\r\nX-Forwarded-Uri: /catalog/sync/run\r\n",
            "X-Forwarded-Uri: /catalog/items\r\nX-Forwarded-Uri: /catalog/sync/run\r\n",
            "X-Forwarded-Uri: /catalog/items\r\nX-Original-URI: /catalog/sync/run\r\n",
        ] {
            assert_eq!(ask(h), (400, Some("BAD_PATH".into())), "{h}");
        }
        let mut raw = head(&format!(
            "X-Api-Key: {reader}\r\nX-Forwarded-Uri: /catalog/sync/"
        ));
        raw.splice(raw.len() - 2..raw.len() - 2, b"\xffrun\r\n".iter().copied());
        assert_eq!(both(&raw), (400, Some("BAD_PATH".into())));
        // What the key may do still passes; the same URI twice is one URI.
        for h in [
            "X-Forwarded-Uri: /catalog/items?page=2\r\n",
            "X-Forwarded-Uri: /catalog/items\r\nX-Original-URI: /catalog/items\r\n",
            "X-Forwarded-Uri: /catalog/synced\r\n",
            "X-Forwarded-Uri: /catalog/sync%20list\r\n",
            "X-Forwarded-Uri: /catalog/items;v=2\r\n",
            "X-Forwarded-Uri: /catalog/Items\r\n",
            "",
        ] {
            assert_eq!(ask(h).0, 200, "{h}");
        }
    }

    /// Regression (issue 9, item 1): for a repeated header whose first value was
    /// not text, the fast path read the second value and hyper none.
    #[test]
    fn a_first_value_that_is_not_text_reads_as_absent_on_both_paths() {
        let good = &fixture().keys[0];
        let mut raw = head(&format!("X-Api-Key: x\r\nX-Api-Key: {good}\r\n"));
        let at = raw.windows(2).position(|w| w == b"x\r").unwrap();
        raw[at] = 0xff;
        assert_eq!(both(&raw), (401, Some("MISSING".into())));
    }

    /// Regression (issue 9, item 9): with `query_param`, a key in the forwarded
    /// URI's query was not read.
    #[test]
    fn query_key_from_the_forwarded_uri() {
        let good = &fixture().keys[0];
        let h = format!("X-Forwarded-Uri: /catalog/items?api_key={good}\r\n");
        assert_eq!(both(&head(&h)).0, 200);
    }
}
