//! Paged listings: what every backend's audit and job listings return.

/// The most rows one page of a listing returns, and the most rows it examines: a
/// page filtered on something no index covers (a job state) stops there and hands
/// back a cursor, so no single request decodes a whole table.
pub const MAX_PAGE: usize = 10_000;

/// One page of a listing: its rows and, when there may be more, where the next page
/// starts (the position of the last row examined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, P> {
    /// The rows, in the listing's order.
    pub items: Vec<T>,
    /// Pass back to continue after the rows returned; `None` at the end.
    pub next: Option<P>,
}

/// Collects one page: stops after `limit` rows, or after [`MAX_PAGE`] rows
/// examined, remembering where it stopped.
pub(crate) struct Pager<T, P> {
    limit: usize,
    examined: usize,
    last: Option<P>,
    pub(crate) items: Vec<T>,
    next: Option<P>,
}

impl<T, P: Copy> Pager<T, P> {
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, MAX_PAGE);
        Self {
            limit,
            examined: 0,
            last: None,
            items: Vec::with_capacity(limit.min(1024)),
            next: None,
        }
    }

    /// Whether to examine the row at `pos`; on `false` the page is done, and since a
    /// row remains, it continues after the last row examined.
    pub(crate) fn admit(&mut self, pos: P) -> bool {
        if self.items.len() >= self.limit || self.examined >= MAX_PAGE {
            self.next = self.last;
            return false;
        }
        self.examined += 1;
        self.last = Some(pos);
        true
    }

    pub(crate) fn done(self) -> Page<T, P> {
        Page {
            items: self.items,
            next: self.next,
        }
    }
}
