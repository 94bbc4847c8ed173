//! The key format and its checksum: no input panics; a string taken for a generated
//! key has the format, is caught by the secret scanner, and stops being one when any
//! character of it changes (the CRC32 catches every single-character typo).
#![no_main]

use apikeyd::keys::secret::{looks_like_key, shape, Shape, KEY_LEN, PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = looks_like_key(text);
    let got = shape(text, 16);
    if got != Shape::Generated {
        return;
    }
    assert!(
        text.len() == KEY_LEN && text.starts_with(PREFIX),
        "{text:?}"
    );
    assert!(looks_like_key(text), "{text:?}");
    let mut typo = text.as_bytes().to_vec();
    for at in PREFIX.len()..typo.len() {
        let was = typo[at];
        typo[at] = if was == b'z' { b'0' } else { b'z' };
        let changed = std::str::from_utf8(&typo).unwrap_or_default();
        assert_eq!(shape(changed, 16), Shape::Malformed, "{changed:?}");
        typo[at] = was;
    }
});
