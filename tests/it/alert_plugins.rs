//! Exec plugins as alert channels: the shipped webhook plugin posts the alert JSON,
//! and failing or hanging plugins are failed attempts that keep their stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

use crate::alerts::{alert_tables, at, key, messages, start, wait_job};
use crate::echo::Echo;
use crate::util::{free_port, wait_until, TestDaemon, DEFAULT_POLICY};

#[test]
fn webhook_plugin_posts_the_alert_json() {
    let hook = Echo::start();
    let d = start(
        free_port(),
        "",
        &format!(
            "[alert_sources.webhook]\nkind = \"plugin\"\nplugin = \"webhook\"\nargs = [\"http://{}/hook\"]\ntimeout = \"pt20s\"\n",
            hook.addr()
        ),
    );
    let (id, _) = d.create(
        "alice",
        "hooked",
        &["--notify-at", &at(2), "--alert-source", "webhook"],
    );
    let job_id = key(&d, &id)["alert_job"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(20), || hook.count() > 0);
    let (head, body) = hook.requests().remove(0);
    assert!(head.starts_with("POST /hook"), "{head}");
    assert!(
        head.to_lowercase()
            .contains(&format!("idempotency-key: <alert-{job_id}@apikeyd>")),
        "{head}"
    );
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["kind"], "notification");
    assert_eq!(doc["job_id"], job_id.as_str());
    assert_eq!(doc["key"]["id"], id.as_str());
    assert_eq!(doc["key"]["name"], "hooked");
    assert_eq!(doc["key"]["owner_email"], "alice@example.com");
    wait_job(&d, &job_id, "Completed", 10);
}

#[test]
fn failing_and_hanging_plugins_are_failed_attempts_with_their_stderr() {
    let plugins = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = plugins.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "fails",
        "#!/bin/sh\ncat >/dev/null\necho 'boom: receiver said no' >&2\nexit 3\n",
    );
    write("hangs", "#!/bin/sh\nsleep 30\n");
    let d = TestDaemon::start_with(
        DEFAULT_POLICY,
        &alert_tables(
            free_port(),
            plugins.path(),
            "max_attempts = 2",
            "[alert_sources.fails]\nkind = \"plugin\"\nplugin = \"fails\"\n\n[alert_sources.hangs]\nkind = \"plugin\"\nplugin = \"hangs\"\ntimeout = \"pt1s\"\n\n[alert_sources.missing]\nkind = \"plugin\"\nplugin = \"missing\"\n",
        ),
    );
    let mut expect = Vec::new();
    for (source, error) in [
        ("fails", "boom: receiver said no"),
        ("hangs", "killed after its timeout"),
        ("missing", "not found"),
    ] {
        let (id, _) = d.create(
            "alice",
            source,
            &["--notify-at", &at(2), "--alert-source", source],
        );
        expect.push((
            key(&d, &id)["alert_job"].as_str().unwrap().to_owned(),
            error,
        ));
    }
    for (job_id, error) in expect {
        let j = wait_job(&d, &job_id, "Failed", 30);
        assert_eq!(j["attempts"], 2);
        assert!(j["last_error"].as_str().unwrap().contains(error), "{j}");
    }
    assert_eq!(messages(&d, true).len(), 3);
}
