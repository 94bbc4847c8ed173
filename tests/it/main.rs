//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod lifecycle;
mod systemd;
mod util;
