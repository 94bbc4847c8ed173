//! The admin API's JSON bodies (`CreateKey`, `EditKey`, `RotateKey`,
//! `NotifyRequest`; the first byte picks one and the actor): read as the handlers
//! read them and checked with the functions they call, over a key store in memory.
//! No body panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    apikeyd::fuzzing::admin_body(data);
});
