//! Routes registered together with the methods they answer, so the route table
//! can be compared with the OpenAPI document (see `route_table`).

use axum::routing::MethodRouter;
use axum::Router;

use super::state::AppState;

/// A router and the table of what it serves.
pub(crate) struct Routes {
    pub(crate) router: Router<AppState>,
    pub(crate) table: Vec<(&'static str, &'static [&'static str])>,
}

/// Every method, for routes that answer them all.
pub(crate) const ANY: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE",
];

impl Routes {
    pub(crate) fn extend(self, more: impl FnOnce(Self) -> Self) -> Self {
        more(self)
    }

    pub(crate) fn new() -> Self {
        Self {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    pub(crate) fn add(
        mut self,
        path: &'static str,
        methods: &'static [&'static str],
        handler: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        self.table.push((path, methods));
        self
    }
}
