//! `key rotate --until-used` through the real daemon and apikeyctl: the old
//! secret keeps working until the new one's first use (here through
//! forward-auth), then for the overlap
//! (`RotationOverlapPeriod`, pt5m by default), and `key show` and the audit trail
//! tell the switch. The daemon's clock moves forward by a restart with
//! `APIKEYD_CLOCK_OFFSET_SECS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::util::{
    bearer, request, stdout, wait_until, TestDaemon, CATALOG_ROUTES, DEFAULT_POLICY,
};

/// The code `apikeyctl verify` answers for `key`.
fn verify(d: &TestDaemon, key: &str) -> String {
    let said = stdout(&d.ctl(&["verify", key]));
    said.split(':').next().unwrap_or_default().trim().to_owned()
}

/// The `rotation` line of `key show` in text.
fn rotation_line(d: &TestDaemon, id: &str) -> String {
    let shown = d.ok(&["key", "show", id]);
    shown
        .lines()
        .find(|l| l.starts_with("rotation"))
        .unwrap_or_else(|| panic!("no rotation line in {shown}"))
        .to_owned()
}

#[test]
fn the_old_secret_works_until_the_new_ones_first_use_and_the_overlap() {
    let mut d = TestDaemon::start_with(DEFAULT_POLICY, CATALOG_ROUTES);
    let (id, old) = d.create("alice", "ci", &[]);
    assert_eq!(rotation_line(&d, &id), "rotation     none");
    let rotated = d.json(&["key", "rotate", &id, "--until-used", "--max-grace", "p2d"]);
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["rotation"]["state"], "pending", "{rotated}");
    let until = rotated["rotation"]["old_secret_until"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        rotation_line(&d, &id),
        format!(
            "rotation     pending: waiting for the new secret's first use; old secret valid until {until} (max grace)"
        )
    );

    // Until the new secret is used, the old one goes on working.
    assert_eq!(verify(&d, &old), "VALID");
    assert_eq!(verify(&d, &old), "VALID");
    // The first use through forward-auth (`/v1/auth`, answered without hyper).
    let auth = bearer(&new);
    let first = request(
        d.addr,
        "GET",
        "/v1/auth",
        &[
            ("Authorization", auth.as_str()),
            ("X-Original-URI", "/catalog/sync/run"),
        ],
    );
    assert_eq!(first.status, 200, "{}", first.body);
    wait_until(Duration::from_secs(10), || {
        d.json(&["key", "show", &id])["rotation"]["state"] == "switched"
    });
    let shown = d.json(&["key", "show", &id]);
    let switched_at = shown["rotation"]["switched_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let retired_at = shown["rotation"]["old_secret_until"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        rotation_line(&d, &id),
        format!("rotation     switched at {switched_at}; old secret valid until {retired_at}")
    );
    // Within the overlap the old secret still works.
    assert_eq!(verify(&d, &old), "VALID");
    let audit = d.ok(&["audit", "--key", &id]);
    assert!(
        audit.contains(&format!(
            "rotation switched: new secret first used at {switched_at}; old secret retired at {retired_at}"
        )),
        "{audit}"
    );
    assert!(
        audit.contains("until the new secret's first use"),
        "{audit}"
    );

    // Ten minutes on, past the pt5m overlap: the old secret is retired.
    d.stop();
    d.spawn(&[("APIKEYD_CLOCK_OFFSET_SECS", "600")]);
    assert_eq!(verify(&d, &old), "NOT_FOUND");
    assert_eq!(verify(&d, &new), "VALID");
    assert_eq!(
        rotation_line(&d, &id),
        format!("rotation     switched at {switched_at}; old secret retired at {retired_at}")
    );
}
