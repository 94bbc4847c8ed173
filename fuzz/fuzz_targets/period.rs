//! ISO 8601 periods (`[ApiKey]` settings, `expires_in`, `grace`): no input panics, and
//! a period reads back from its printed form as the same period.
#![no_main]

use apikeyd::config::period::{fixed_duration, Period};
use chrono::DateTime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = Period::parse_optional(text);
    let Ok(p) = Period::parse(text) else {
        return;
    };
    assert_eq!(Period::parse(&p.to_string()).as_ref(), Ok(&p), "{text:?}");
    assert!(p.min_seconds() <= p.max_seconds(), "{text:?}");
    let _ = p.describe();
    let _ = p.fixed();
    let _ = fixed_duration(&p);
    // The earliest and latest instants a key can be stamped with.
    for at in [
        DateTime::UNIX_EPOCH,
        DateTime::<chrono::Utc>::MAX_UTC,
        DateTime::<chrono::Utc>::MIN_UTC,
    ] {
        let _ = p.add_to(at);
        let _ = p.subtract_from(at);
    }
});
