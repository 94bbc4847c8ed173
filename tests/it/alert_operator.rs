//! Operator-message sources with their own title and text templates: what
//! `apikeyctl message list` shows, and templates refused by check-config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::alerts::{messages, nightly_notified_at_restart, start};
use crate::util::{check_config, free_port};

const OPS: &str = r#"
[alert_sources.ops]
kind = "operator_message"
title = "[ops] ${key.owner}/${key.name} ${alert.reason}"
text = "Rotate ${key.name} (${key.id}) before ${key.effective_expires_at}; job ${job.id}."
"#;

#[test]
fn a_notification_through_an_operator_source_uses_its_title_and_text() {
    let mut d = start(free_port(), "", OPS);
    let (k, job) = nightly_notified_at_restart(&mut d, "ops");
    let id = k["id"].as_str().unwrap();

    let expires = k["expires_at"].as_str().unwrap();
    let title = format!("[ops] alice/nightly expires on {expires}");
    let msgs = messages(&d, false);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["title"], title.as_str());
    let effective = k["effective_expires_at"].as_str().unwrap();
    assert_eq!(
        msgs[0]["text"],
        format!("Rotate nightly ({id}) before {effective}; job {job}.").as_str()
    );
    let table = d.ok(&["message", "list"]);
    assert!(table.contains(&title), "{table}");
}

#[test]
fn check_config_names_the_source_and_setting_of_a_bad_operator_template() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, OPS.replace("${key.owner}/", "${key.secret}/")).unwrap();
    let out = check_config(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alert_sources.ops.title") && err.contains("${key.secret}"),
        "{err}"
    );
}
