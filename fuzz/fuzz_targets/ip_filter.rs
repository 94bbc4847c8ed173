//! IP filters (`ip` of a key, `trusted_proxies`): no input panics, a filter reads
//! back from its printed form as the same network, and its own network address is
//! allowed by it.
#![no_main]

use apikeyd::config::ipfilter::{allows, allows_any, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(net) = parse(text) else {
        return;
    };
    assert_eq!(parse(&net.to_string()), Ok(net), "{text:?}");
    assert!(allows(&[net], net.network()), "{text:?}");
    assert!(allows_any(&[net], net.broadcast()), "{text:?}");
});
