//! The configuration file: no TOML text panics the validation (`config::parse` opens
//! no files), and what loads gives its warnings without panicking.
#![no_main]

use std::path::Path;

use apikeyd::config::{parse, Environment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(c) = parse(Path::new("fuzz.toml"), text, &Environment::default()) {
        let _ = c.warnings();
    }
});
