//! Address tests: lettre's parsers, and every address setting of a whole file
//! (loaded with the parser of `config`, which imports this module, so these tests
//! live in a file of their own rather than inside it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::{from_text, problems};

/// Bare addresses lettre refuses. The old check (text, an `@`, a dotted domain,
/// no white space) let the first four and the domain literal through.
const REFUSED: &[&str] = &[
    "a@b@c.example",
    "\"x\"<a@b.example>",
    "al(ice@example.com",
    "alice@example..com",
    "alice@",
    "@example.com",
    "alice",
    "\"x\" <a@b.example>",
    "ali ce@example.com",
    "alice@example.com\n",
    " alice@example.com",
    "alice@.example.com",
    // lettre's `Address` takes these two; delivery's mailbox parser does not.
    "ops@[127.0.0.1]",
    "\"a b\"@c.example",
];

const ACCEPTED: &[&str] = &[
    "alice@example.com",
    "alice.smith+keys@mail.example.org",
    "root@localhost",
    "ops@127.0.0.1",
    "jürgen@example.de",
    "alice@bücher.example",
];

#[test]
fn bare_addresses_are_what_lettre_parses_bare() {
    for a in REFUSED {
        assert!(!is_address(a, AddressForm::Bare), "{a:?} accepted");
    }
    for a in ACCEPTED {
        assert!(is_address(a, AddressForm::Bare), "{a:?} refused");
        // What loads, delivery parses.
        a.parse::<Mailbox>().unwrap();
    }
    let long = format!("{}@{}.example", "a".repeat(64), "b".repeat(60));
    assert!(is_address(&long, AddressForm::Bare));
    let too_long = format!(
        "{}@{}.example",
        "a".repeat(64),
        ["b"; 4].map(|b| b.repeat(60)).join(".")
    );
    assert!(too_long.len() > MAX_BARE_LEN);
    assert!(!is_address(&too_long, AddressForm::Bare));
    let long_local = format!("{}@example.com", "a".repeat(65));
    assert!(!is_address(&long_local, AddressForm::Bare));
}

#[test]
fn a_mailbox_may_carry_a_display_name() {
    for ok in [
        "apikeyd <apikeyd@example.com>",
        "\"API keys\" <keys@example.com>",
        "apikeyd@localhost",
    ] {
        assert!(is_address(ok, AddressForm::Mailbox), "{ok:?} refused");
    }
    for bad in ["not an address", "apikeyd <apikeyd@>", "a@b@c.example", ""] {
        assert!(!is_address(bad, AddressForm::Mailbox), "{bad:?} accepted");
    }
}

/// A file giving `address` as a user's email and a source's `to` and `cc`.
fn with_bare_address(address: &str) -> String {
    let quoted = toml::Value::String(address.to_owned()).to_string();
    format!(
        "[users.alice]\ngroups = [\"g\"]\nemail = {quoted}\n[groups.g]\n\
         [alert_sources.team]\nkind = \"email\"\nto = [{quoted}]\ncc = [{quoted}]\n"
    )
}

/// Regression (issue 10, item 5): an address that the old check passed, such as
/// `a@b@c.example`, loaded and then failed at delivery, when lettre parsed it.
#[test]
fn every_address_setting_is_refused_at_load_naming_its_field() {
    for bad in REFUSED {
        let text = with_bare_address(bad);
        let want = format!("{bad:?} is not an email address");
        assert_eq!(
            problems(&text),
            [
                ("users.alice.email".to_owned(), want.clone()),
                ("alert_sources.team.to".to_owned(), want.clone()),
                ("alert_sources.team.cc".to_owned(), want),
            ],
            "{bad:?}"
        );
    }
    assert_eq!(
        problems("[smtp]\nfrom = \"apikeyd <a@b@c.example>\"\n"),
        [(
            "smtp.from".to_owned(),
            "\"apikeyd <a@b@c.example>\" is not an address such as \"apikeyd <apikeyd@example.com>\""
                .to_owned()
        )]
    );
}

#[test]
fn addresses_lettre_accepts_load() {
    for ok in ACCEPTED {
        let from = toml::Value::String((*ok).to_owned());
        let text = format!("{}[smtp]\nfrom = {from}\n", with_bare_address(ok));
        let c = from_text(&text).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        assert_eq!(c.directory.users["alice"].email.as_deref(), Some(*ok));
    }
}
