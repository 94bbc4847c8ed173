//! Route-path normalisation of the original URI forward-auth matches routes against:
//! no input panics, and a path that comes out is an absolute path with no `.`, `..`
//! or empty segment but the last, no `?`, `#` or `\`, which normalises to itself.
#![no_main]

use apikeyd::config::edge::route_path::{normalise, normalise_with, Params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|uri: &str| {
    for params in [Params::Drop, Params::Keep] {
        let Ok(path) = normalise_with(uri, params) else {
            continue;
        };
        assert!(path.starts_with('/'), "{uri:?} -> {path:?}");
        assert!(!path.contains(['?', '#', '\\']), "{uri:?} -> {path:?}");
        let segments: Vec<&str> = path[1..].split('/').collect();
        for (i, s) in segments.iter().enumerate() {
            let bare = s.split(';').next().unwrap_or_default();
            assert!(bare != "." && bare != "..", "{uri:?} -> {path:?}");
            assert!(
                !s.is_empty() || i + 1 == segments.len(),
                "{uri:?} -> {path:?}"
            );
        }
        // `%20` comes out as a space, which a URI cannot carry: only the rest is
        // read again.
        if !path.contains(' ') && params == Params::Drop {
            assert_eq!(normalise(&path).as_deref(), Ok(&*path), "{uri:?}");
        }
    }
});
