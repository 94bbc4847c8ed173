//! Entry points for the fuzz targets in `fuzz/` that need the library's private
//! parts: built only with the non-default `fuzzing` feature, which neither the
//! release build nor `cargo deb` turns on. The targets on public parsers (periods,
//! IP filters, key shapes, the config file, route paths) call those directly.

/// Where the `/v1/auth` fast path answers `raw` itself, hyper's reading of the same
/// bytes gives the same status and headers (`X-Api-Key-*` included). Panics when
/// they differ.
pub fn auth_head(raw: &[u8]) {
    crate::api::fast_path_agrees_with_hyper(raw);
}

/// An admin request body (the first byte picks `CreateKey`, `EditKey`, `RotateKey`
/// or `NotifyRequest`, and the actor) read and checked as the handlers do.
pub fn admin_body(data: &[u8]) {
    crate::keys::fuzzing::admin_body(data);
}
