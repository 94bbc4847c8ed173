//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod alerts;
mod authz;
mod caddy;
mod edge;
mod lifecycle;
mod nginx;
mod openapi;
mod paging;
mod security_keys;
mod routes;
mod service;
mod systemd;
mod util;
