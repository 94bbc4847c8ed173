//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod edge;
mod lifecycle;
mod service;
mod systemd;
mod util;
