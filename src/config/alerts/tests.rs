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
    check_cron("0 5,35 * * * *").unwrap();
}

/// Regression (the `config` fuzz target): a list with an empty entry made loading
/// the file hang for ever (its next run was searched without end). Refused at once.
#[test]
fn a_cron_list_with_an_empty_entry_is_refused_at_once() {
    let started = std::time::Instant::now();
    for schedule in [
        "25 , * * * *",
        "0 5, * * * *",
        "0 ,5 * * * *",
        "0 1,,2 * * * *",
    ] {
        let e = check_cron(schedule).unwrap_err();
        assert!(e.contains("empty entry in a list"), "{schedule}: {e}");
    }
    let e = from_text("[jobs]\nexpiry_sweep = \"25 , * * * *\"\n").unwrap_err();
    assert!(e.to_string().contains("empty entry in a list"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn operator_message_sources_take_title_and_text_templates() {
    let c = from_text(
        r#"
        [alert_sources.ops]
        kind = "operator_message"
        title = "[ops] ${key.owner}/${key.name} ${alert.reason}"
        text = """
        Rotate ${key.name} (${key.id}) before ${key.effective_expires_at}.
        Job ${job.id}."""
        "#,
    )
    .unwrap();
    assert_eq!(
        c.alerts.source("ops").unwrap().kind,
        SourceKind::OperatorMessage {
            title: "[ops] ${key.owner}/${key.name} ${alert.reason}".into(),
            text: "        Rotate ${key.name} (${key.id}) before ${key.effective_expires_at}.\n        Job ${job.id}.".into(),
        }
    );
}

#[test]
fn operator_message_defaults_are_the_fixed_wording() {
    let c = from_text("[alert_sources.ops]\nkind = \"operator_message\"\n").unwrap();
    let defaults = SourceKind::OperatorMessage {
        title: DEFAULT_TITLE.into(),
        text: DEFAULT_TEXT.into(),
    };
    assert_eq!(c.alerts.source("ops").unwrap().kind, defaults);
    assert_eq!(c.alerts.source(OPERATOR).unwrap().kind, defaults);
    // Emails keep theirs.
    assert!(matches!(
        &c.alerts.source(OWNER_EMAIL).unwrap().kind,
        SourceKind::Email { subject, body, .. } if subject == DEFAULT_SUBJECT && body == DEFAULT_BODY
    ));
}

#[test]
fn bad_operator_message_templates_are_config_errors_naming_source_and_setting() {
    let problems = crate::config::problems(
        r#"
        [alert_sources.ops]
        kind = "operator_message"
        title = "key ${key.secret}"
        text = "hash ${key.hash} ${key.name"
        [alert_sources.two-lines]
        kind = "operator_message"
        title = "a\nb"
        subject = "s"
        [alert_sources.mail]
        kind = "email"
        title = "t"
        text = "x"
        "#,
    );
    let message = |key: &str| {
        problems
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, m)| m.as_str())
            .unwrap_or_else(|| panic!("{key} missing from {problems:?}"))
    };
    let title = message("alert_sources.ops.title");
    assert!(
        title.contains("unknown placeholder ${key.secret}") && title.contains("${key.name}"),
        "says which placeholder and lists the known ones: {title}"
    );
    assert!(
        message("alert_sources.ops.text").contains("${key.hash}"),
        "{problems:?}"
    );
    assert_eq!(message("alert_sources.two-lines.title"), "must be one line");
    for key in [
        "alert_sources.two-lines.subject",
        "alert_sources.mail.title",
        "alert_sources.mail.text",
    ] {
        assert_eq!(message(key), "does not apply to this kind of source");
    }
}

/// `[smtp] ca_file` and `password_file` are files the daemon reads at start:
/// `load` (start, reload, check-config) refuses a file naming ones it cannot read,
/// naming the key and the path; `parse` (a posted configuration) opens neither.
#[test]
fn smtp_files_are_checked_when_a_file_is_loaded() {
    use crate::config::{load, parse, Environment};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("apikeyd.toml");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let text = format!(
        "[smtp]\ntls = \"starttls\"\nca_file = \"/nonexistent/ca.pem\"\nusername = \"u\"\npassword_file = \"/nonexistent/smtp.pw\"\n[server]\nstate_dir = \"{}\"\n",
        dir.path().display()
    );
    std::fs::write(&config, &text).unwrap();
    let env = Environment::default();
    assert!(parse(&config, &text, &env).is_ok());
    let problems: Vec<String> = load(&config, &env)
        .unwrap_err()
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("smtp.ca_file: /nonexistent/ca.pem: "),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("smtp.password_file: /nonexistent/smtp.pw: cannot read it"),
        "{problems:?}"
    );

    // A file that holds no certificate; the systemd credential replaces the file.
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join(SMTP_PASSWORD_CREDENTIAL), "pw\n").unwrap();
    std::fs::write(
        &config,
        text.replace("/nonexistent/ca.pem", not_pem.to_str().unwrap()),
    )
    .unwrap();
    let env = Environment {
        credentials_directory: Some(creds),
        ..Environment::default()
    };
    let problems = load(&config, &env).unwrap_err().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "smtp.ca_file");
    assert!(
        problems[0]
            .message
            .ends_with("not.pem: no PEM certificate in it"),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_ca_file_without_tls_is_a_config_error() {
    let problems = crate::config::problems("[smtp]\nca_file = \"/etc/ssl/ca.pem\"\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "smtp.ca_file");
    assert!(problems[0].1.contains("only used with TLS"), "{problems:?}");
}
