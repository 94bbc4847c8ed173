//! IP filters (`ip` of a key, `trusted_proxies`): no input panics, a filter reads
//! back from its printed form as the same network, and its own network address is
//! allowed by it (unless IPv4-mapped).
#![no_main]

use std::net::IpAddr;

use apikeyd::config::ipfilter::{allows, allows_any, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(net) = parse(text) else {
        return;
    };
    assert_eq!(parse(&net.to_string()), Ok(net), "{text:?}");
    // An IPv4-mapped address is matched as the IPv4 address it carries, which an
    // IPv6 network (`::/80`, whose last address is `::ffff:255.255.255.255`) does
    // not contain: only the other ends are checked.
    for ip in [net.network(), net.broadcast()] {
        let mapped = matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        if !mapped {
            assert!(allows(&[net], ip), "{text:?}: {ip}");
            assert!(allows_any(&[net], ip), "{text:?}: {ip}");
        }
    }
});
