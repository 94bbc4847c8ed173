//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod alerts;
mod caddy;
mod edge;
mod lifecycle;
mod nginx;
mod openapi;
mod routes;
mod service;
mod systemd;
mod util;
