//! Alert settings tests. They load whole files with the parser of `config`, which
//! imports this section, so they live in a file of their own rather than inside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::from_text;

#[test]
fn defaults_have_owner_email_and_operator() {
    let c = from_text("").unwrap();
    let a = &c.alerts;
    assert_eq!(a.default_lead_time.as_ref().unwrap().as_str(), "p14d");
    assert_eq!(a.default_source.as_deref(), Some(OWNER_EMAIL));
    assert!(a.source(OWNER_EMAIL).is_some());
    assert!(a.source(OPERATOR).is_some());
    assert_eq!(a.max_attempts, 5);
    assert_eq!(a.smtp.port, 25);
    assert_eq!(a.retry_initial, Duration::from_secs(60));
}

#[test]
fn bad_cron_and_sources_are_config_errors() {
    let err = from_text(
        r#"
        [ApiKey]
        DefaultAlertSource = "nope"
        DefaultNotificationLeadTime = "14d"
        [jobs]
        purge = "every tuesday-ish"
        expiry_sweep = "61 * * * * *"
        [smtp]
        tls = "ssl"
        from = "not an address"
        [alert_sources.web]
        kind = "plugin"
        plugin = "../bin/sh"
        [alert_sources.mail]
        kind = "email"
        subject = "key ${key.secret}"
        to = ["x"]
        [alert_sources.odd]
        kind = "pager"
        "#,
    )
    .unwrap_err();
    let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "ApiKey.DefaultAlertSource",
        "ApiKey.DefaultNotificationLeadTime",
        "jobs.purge",
        "jobs.expiry_sweep",
        "smtp.tls",
        "smtp.from",
        "alert_sources.web.plugin",
        "alert_sources.mail.subject",
        "alert_sources.mail.to",
        "alert_sources.odd.kind",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    assert!(err.to_string().contains("key.secret"), "{err}");
}

#[test]
fn unknown_keys_in_alert_sections() {
    let err =
        from_text("[smtp]\npassword = \"x\"\n[alert_sources.a]\nkind = \"email\"\nsubj = \"\"\n")
            .unwrap_err();
    let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"smtp.password"), "{keys:?}");
    assert!(keys.contains(&"alert_sources.a.subj"), "{keys:?}");
}

#[test]
fn empty_default_turns_default_notification_off() {
    let c = from_text("[ApiKey]\nDefaultNotificationLeadTime = \"\"\nDefaultAlertSource = \"\"\n")
        .unwrap();
    assert!(c.alerts.default_lead_time.is_none());
    assert!(c.alerts.default_source.is_none());
}

#[test]
fn good_cron_accepted() {
    check_cron("*/10 * * * * *").unwrap();
    check_cron("0 17 3 * * *").unwrap();
    assert!(check_cron("* * * * *").is_err());
    assert!(check_cron("0 0 25 * * *").is_err());
}
