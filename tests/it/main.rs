//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod alerts;
mod lifecycle;
mod service;
mod systemd;
mod util;
