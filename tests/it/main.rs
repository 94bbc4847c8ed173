//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod alerts;
mod authz;
mod caddy;
mod edge;
mod lifecycle;
mod nginx;
mod openapi;
mod ops;
mod paging;
mod routes;
mod security_keys;
mod service;
mod smtp;
mod systemd;
mod util;
