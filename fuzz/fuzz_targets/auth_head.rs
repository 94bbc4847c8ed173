//! Differential: any bytes as a request head on the `/v1/auth` fast path, and the same
//! bytes read by hyper; where the fast path answers, both give the same status and
//! headers (`X-Api-Key-*` included). The comparison is the library's own
//! (src/api/http1/harness.rs), behind the `fuzzing` feature.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    apikeyd::fuzzing::auth_head(raw);
});
