//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod alerts;
mod edge;
mod lifecycle;
mod nginx;
mod openapi;
mod ops;
mod service;
mod systemd;
mod util;
