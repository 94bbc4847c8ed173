//! How long a connection hyper serves may live: what it is doing, for its time
//! limits ([`Activity`]), and the signal that tells every connection to finish
//! ([`Shutdown`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::http1;

/// What a connection hyper serves is doing, for its time limits: when it last moved
/// bytes, whether a request head is being read and since when, and how many
/// requests are being answered.
#[derive(Debug)]
pub(crate) struct Activity {
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
pub(crate) enum Expired {
    /// No request for `idle_timeout` since the last answer.
    Idle,
    /// A head begun `header_read_timeout` ago is not complete.
    Head,
    /// A request is being answered, but no bytes moved for `idle_timeout`: a
    /// request body that does not arrive, or an answer the client does not read.
    Stalled,
}

impl Activity {
    pub(crate) fn new() -> Self {
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
    pub(crate) async fn expired(&self, t: http1::Timeouts) -> Expired {
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
pub(crate) struct Busy(Arc<Activity>);

impl Busy {
    /// A request whose head is complete.
    pub(crate) fn new(activity: &Arc<Activity>) -> Self {
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
pub(crate) struct Watched<T> {
    pub(crate) io: T,
    pub(crate) activity: Arc<Activity>,
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

/// Tells connections to finish: a flag, and the wakers of the connections waiting
/// for it. A connection task is woken for every request; what it waits on besides
/// the connection should cost next to nothing to poll again, which a watch or
/// Notify future (a lock on every poll) does not.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    stopping: AtomicBool,
    waiting: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
}

impl Shutdown {
    pub(crate) fn trigger(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    pub(crate) fn wait(self: &Arc<Self>) -> Stopping {
        Stopping {
            shutdown: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }
}

/// Resolves once [`Shutdown::trigger`] was called.
#[derive(Debug)]
pub(crate) struct Stopping {
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
        // Pending, unless this thread was kept off the CPU past the deadline (a
        // loaded machine): then the poll says nothing.
        assert!(futures_poll(expired.as_mut()).await.is_pending() || body_at.elapsed() >= t.idle);
        let answered = Instant::now();
        drop(busy);
        let (at, why) = activity.deadline(t);
        assert_eq!(why, Expired::Idle);
        assert!(at + slack >= answered + t.idle && at <= Instant::now() + t.idle + slack);
        // The watcher resolves once idle for t.idle, not before.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(futures_poll(expired.as_mut()).await.is_pending() || answered.elapsed() >= t.idle);
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
