//! Regression tests for issue 9 (security review), item 9: keys of owners without an
//! email address, whose notifications and warnings must still reach someone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::security_tests::{create_req, fixture_with, CONFIG};
use super::*;
use crate::test_support::{admin, audit};
use chrono::Duration;

/// `dave` may own keys but has no email address; `owner-email` is the default source.
fn no_address_config() -> String {
    CONFIG
        .replace("DefaultAlertSource = \"operator\"\n", "DefaultAlertSource = \"owner-email\"\nDefaultNotificationLeadTime = \"p14d\"\nInactivityWarningLeadTime = \"p7d\"\n")
        + "[users.dave]\ngroups = [\"Synchronizer\"]\n[groups.Reader]\nscopes = [\"catalog:read\"]\n[users.erin]\ngroups = [\"Reader\"]\n"
}

/// Bug (issue 9, item 9): a key whose owner has no email address got the default
/// `owner-email` notification, and one named explicitly was accepted too; either
/// failed only when it fell due. Naming such a source is now refused at once,
/// naming the field; the default falls back to the operator source and says so.
#[tokio::test]
async fn an_owner_without_an_address_is_refused_owner_email_when_it_is_named() {
    let f = fixture_with(&no_address_config());
    let keys = &f.keys;
    let mut r = create_req("dave", "k");
    r.alert_source = Some("owner-email".into());
    r.notify_before = Some("p1d".into());
    let e = keys.create(&admin(), r).await.unwrap_err();
    assert!(
        matches!(&e, KeyError::Invalid { field: "alert_source", message } if message.contains("dave") && message.contains("email")),
        "{e}"
    );
    // The same source alone (default lead time), and through key notify.
    let mut r = create_req("dave", "k");
    r.alert_source = Some("owner-email".into());
    assert!(matches!(
        keys.create(&admin(), r).await.unwrap_err(),
        KeyError::Invalid {
            field: "alert_source",
            ..
        }
    ));
    assert_eq!(keys.len(), 0, "a refused create changes nothing");
    let mut r = create_req("dave", "k");
    r.no_notification = true;
    let id = keys.create(&admin(), r).await.unwrap().view.id.to_string();
    let e = keys
        .notify(
            &admin(),
            &id,
            NotifyRequest {
                before: Some("p1d".into()),
                source: Some("owner-email".into()),
                ..NotifyRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            KeyError::Invalid {
                field: "alert_source",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(keys.show(&admin(), &id).await.unwrap().notification, "none");
}

#[tokio::test]
async fn the_default_notification_of_an_owner_without_an_address_goes_to_the_operators() {
    let f = fixture_with(&no_address_config());
    let keys = &f.keys;
    let issued = keys
        .create(&admin(), create_req("dave", "k"))
        .await
        .unwrap();
    assert_eq!(issued.view.alert_source.as_deref(), Some("operator"));
    let notice = issued.view.notice.clone().unwrap();
    assert!(
        notice.contains("owner-email") && notice.contains("\"operator\""),
        "{notice}"
    );
    let audit = audit(keys, &admin(), Some(&issued.view.id.to_string()), 10)
        .await
        .unwrap();
    assert!(audit[0].detail.contains("instead"), "{:?}", audit[0]);
    // Someone with an address keeps the default, without a notice.
    let alice = keys
        .create(&admin(), create_req("alice", "k"))
        .await
        .unwrap();
    assert_eq!(alice.view.alert_source.as_deref(), Some("owner-email"));
    assert!(alice.view.notice.is_none());
    // key notify without a source falls back the same way.
    let mut r = create_req("dave", "quiet");
    r.no_notification = true;
    let id = keys.create(&admin(), r).await.unwrap().view.id.to_string();
    let v = keys
        .notify(
            &admin(),
            &id,
            NotifyRequest {
                before: Some("p1d".into()),
                ..NotifyRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v.alert_source.as_deref(), Some("operator"));
    assert!(v.notice.is_some());
}

/// Inactivity warnings go through DefaultAlertSource; for an owner without an
/// address, through the operators instead (the same class as the default
/// notification).
#[tokio::test]
async fn inactivity_warnings_of_an_owner_without_an_address_go_to_the_operators() {
    let f = fixture_with(&no_address_config());
    let keys = &f.keys;
    let mut r = create_req("dave", "idle");
    r.no_notification = true;
    r.expires_in = Some("p6m".into());
    let idle = keys.create(&admin(), r).await.unwrap().view.id;
    f.clock.advance(Duration::days(85));
    maintenance::schedule_inactivity_warnings(keys)
        .await
        .unwrap();
    let jobs = f
        .alerts
        .jobs(
            &admin(),
            Some(&idle.to_string()),
            None,
            &crate::keys::page::PageRequest::default(),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].source, "operator");
    let audit = audit(keys, &admin(), Some(&idle.to_string()), 10)
        .await
        .unwrap();
    assert!(audit[0].detail.contains("instead"), "{:?}", audit[0]);
}

#[test]
fn check_config_warns_of_users_the_default_source_cannot_reach() {
    let parse = |t: &str| crate::config::from_text(t).unwrap();
    let w = parse(&no_address_config()).warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "ApiKey.DefaultAlertSource");
    // dave may own keys; erin may not, so she gets no notifications anyway.
    assert!(
        w[0].message.contains("dave") && !w[0].message.contains("erin"),
        "{}",
        w[0]
    );
    let operator = no_address_config().replace(
        "DefaultAlertSource = \"owner-email\"",
        "DefaultAlertSource = \"operator\"",
    );
    assert!(parse(&operator).warnings().is_empty());
    assert!(parse(CONFIG).warnings().is_empty());
}
