//! `/v1/auth` (and Envoy's `/v1/auth/{path}`) answered on the connection. A reverse
//! proxy asks about every request it forwards, over a few keep-alive connections
//! that carry nothing else, so the connection reads request heads itself
//! (httparse, as hyper does) and writes each answer as bytes: no request or
//! response header maps, no body machinery. Answers to requests that arrived
//! together go out in one write.
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

use super::auth::{self, Outcome, ReadHeaders, AUTH_PATH};
use super::state::AppState;

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

/// A connection's clock for its time limits: `Instant`s read from the coarse
/// monotonic clock, which costs about 13 ns here where `Instant::now()` costs about
/// 75 ns (both measured on the 2-core test machine). It runs a tick (a few ms)
/// behind, nothing next to timeouts of seconds.
#[derive(Debug, Clone, Copy)]
pub struct Coarse {
    start: Instant,
    coarse_start: Duration,
}

impl Coarse {
    /// A clock that starts now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            coarse_start: Self::read(),
        }
    }

    fn read() -> Duration {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    }

    /// When the clock started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        Self::read().saturating_sub(self.coarse_start)
    }

    /// Now, to a tick.
    pub fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
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
    let clock = Coarse::start();
    let start = clock.started();
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
        // Nothing more is read, so no more is answered, until this is written.
        if !out.is_empty() {
            if !write_out(stream, &out, &mut stop, timeouts.idle).await {
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
        let now = (used > 0).then(|| clock.now());
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
                    head_deadline = Some(now.unwrap_or_else(|| clock.now()) + timeouts.head);
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

/// Write `out` to `stream`; false when the connection is to be closed instead: on
/// an error, when the server stops, or when the client has taken none of it for
/// `patience` (`server.idle_timeout`: a client that never reads its answers must
/// not hold the connection, or a stop, for ever). An answer that fits the socket
/// buffer, as nearly all do, is written at once without a timer.
async fn write_out(
    stream: &TcpStream,
    out: &[u8],
    stop: &mut (impl std::future::Future<Output = ()> + Unpin),
    patience: Duration,
) -> bool {
    let mut written = 0;
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        match stream.try_write(&out[written..]) {
            Ok(0) => return false,
            Ok(n) => {
                written += n;
                if written == out.len() {
                    return true;
                }
                if let Some(t) = timer.as_mut() {
                    t.as_mut().reset(Instant::now() + patience);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
        tokio::select! {
            biased;
            r = stream.writable() => if r.is_err() {
                return false;
            },
            () = &mut *stop => return false,
            () = timer.as_mut() => return false,
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
    // The usual target is the bare path. Any other is read as hyper reads it
    // (which also refuses characters a URI may not have): one with a query, or
    // Envoy's `/v1/auth/ORIGINAL` (`/v1/auth/` for the site root).
    let parsed;
    let (query, appended) = if target == AUTH_PATH {
        (None, None)
    } else {
        let Ok(pq) = axum::http::uri::PathAndQuery::try_from(target) else {
            return Step::Handoff;
        };
        parsed = pq;
        match auth::forward_auth_kind(parsed.path()) {
            Some(false) => (parsed.query(), None),
            Some(true) => (parsed.query(), auth::appended(&parsed)),
            None => return Step::Handoff,
        }
    };
    let Some((close, size)) = plain_head(req.headers) else {
        return Step::Handoff;
    };
    let close = close || closing;
    let plan = st.edge.auth();
    if size > plan.config.max_header_bytes {
        return Step::Handoff;
    }
    let outcome = auth::decide(st, &plan, peer.ip(), query, &Head(req.headers), appended);
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

#[cfg(test)]
mod differential;
#[cfg(any(test, feature = "fuzzing"))]
pub(super) mod harness;
