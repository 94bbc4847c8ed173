//! What a key owner and an admin do to keys in the browser, checked outside it:
//! a key created in the page verifies with `apikeyctl verify` and its download
//! holds its secret; a refused create shows the daemon's message next to the
//! field; disable and enable decide `/v1/auth`; regenerate issues a secret that
//! works while the old one stops; remove asks first; an admin acknowledges an
//! operator message. The README's screenshots of the dialogs are taken here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Stdio;

use super::Browser;
use crate::alerts::{messages, nightly_notified_at_restart};
use crate::console::daemon;
use crate::util::{bearer, request, TestDaemon};

/// What `apikeyctl verify` says of `secret` (read from stdin, never argv).
pub(super) fn verify(d: &TestDaemon, secret: &str) -> String {
    let mut child = d
        .ctl_command(&["verify", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The status `/v1/auth` answers for `secret`, as nginx would ask.
pub(super) fn auth(d: &TestDaemon, secret: &str) -> u16 {
    request(
        d.addr,
        "GET",
        "/v1/auth",
        &[("Authorization", &bearer(secret))],
    )
    .status
}

/// Open the key `id`'s panel from its row.
pub(super) fn open_key(b: &Browser, id: &str) {
    b.click(&format!("#key-rows tr[data-id='{id}'] th button"));
    b.wait_for("#key-dialog[open]");
}

#[test]
fn a_key_created_in_the_page_shows_its_secret_once_and_verifies() {
    let Some(b) = Browser::start() else {
        return;
    };
    let (d, _) = daemon("");
    d.create(
        "admin",
        "older-key",
        &["--description", "Made with apikeyctl"],
    );
    b.login(&d, None);

    // From the keyboard: the button opens the dialog with the name focused.
    b.click("#create-button");
    b.wait_for("#create-dialog[open]");
    let focused = b.exec("return document.activeElement.id", vec![]);
    assert_eq!(focused, "create-name");
    // The policy the admin set, above the form; the picker stays within it.
    let policy = b.text("#create-policy");
    assert!(
        policy.contains("Max key lifespan: 6 months") && policy.contains("3 months"),
        "{policy}"
    );
    let max = b.run("read max", b.find("#create-expires_at").attr("max"));
    assert!(
        max.is_some_and(|m| !m.is_empty()),
        "no max on the expiry picker"
    );

    b.fill("#create-name", "ci-deploy");
    b.fill("#create-description", "Deploys from CI");
    b.screenshot("create-dialog");
    b.click("#create-submit");
    b.wait_for("#secret-dialog[open]");
    assert!(b
        .text("#secret-warning")
        .contains("will not be shown again"));
    let secret = b.value("#secret-value");
    assert!(secret.starts_with("akd_"), "{secret:?}");
    b.screenshot("secret-dialog");
    assert!(
        verify(&d, &secret).contains("VALID"),
        "{}",
        verify(&d, &secret)
    );

    // The download holds the secret, under the key's name.
    b.click("#secret-download");
    let file = b.wait_download("ci-deploy.APIKEY");
    assert_eq!(String::from_utf8(file).unwrap().trim(), secret);

    // Closed, the dialog keeps no copy; the list has the new key.
    b.click("#secret-close");
    b.wait_gone("#secret-dialog[open]");
    assert_eq!(b.value("#secret-value"), "");
    b.wait_text("#key-rows", "ci-deploy");
    let keys = d.keys();
    let made = keys.iter().find(|k| k["name"] == "ci-deploy").unwrap();
    assert_eq!(made["description"], "Deploys from CI");
    assert_eq!(made["owner"], "admin");
}

#[test]
fn a_refused_create_shows_the_daemons_message_next_to_its_field() {
    let Some(b) = Browser::start() else {
        return;
    };
    let (d, _) = daemon("");
    d.create("admin", "taken", &[]);
    b.login(&d, None);
    let before = d.keys().len();

    b.click("#create-button");
    b.fill("#create-name", "ci-deploy");
    b.fill("#create-ip", "10.0.0.300");
    b.click("#create-submit");
    let shown = b.wait_text("#create-ip-error", "not an IP address");
    assert!(shown.contains("10.0.0.300"), "{shown}");
    let invalid = b.run("aria-invalid", b.find("#create-ip").attr("aria-invalid"));
    assert_eq!(invalid.as_deref(), Some("true"));
    assert!(b.texts("#create-form-error").is_empty());

    // A name the owner already uses: next to the name, the other error gone.
    b.fill("#create-ip", "10.0.0.0/8");
    b.fill("#create-name", "TAKEN");
    b.click("#create-submit");
    b.wait_text("#create-name-error", "already has a key named");
    assert!(b.texts("#create-ip-error").is_empty());
    // An expiry past the max lifespan, typed past the picker's bound.
    b.fill("#create-name", "later");
    b.exec(
        "document.getElementById('create-expires_at').value = '2099-01-01T00:00'",
        vec![],
    );
    b.click("#create-submit");
    b.wait_text("#create-expires_at-error", "MaxExpirationPeriod");

    assert_eq!(d.keys().len(), before, "a refused create changed nothing");
    b.click("#create-cancel");
    b.wait_gone("#create-dialog[open]");
}

#[test]
fn disable_and_enable_in_the_page_decide_forward_auth() {
    let Some(b) = Browser::start() else {
        return;
    };
    let (d, _) = daemon("");
    let (id, secret) = d.create("admin", "gateway", &[]);
    assert_eq!(auth(&d, &secret), 200);
    b.login(&d, None);
    open_key(&b, &id);
    assert!(b.text("#key-title").contains("active"));

    b.click("#key-disable");
    b.wait_text("#key-status", "disabled");
    // 403 DISABLED: a key known and refused (docs/forward-auth.md).
    assert_eq!(auth(&d, &secret), 403, "a disabled key is refused at once");
    assert!(
        b.texts("#key-disable").is_empty(),
        "no Disable on a disabled key"
    );
    b.wait_text(&format!("#key-rows tr[data-id='{id}']"), "disabled");

    b.click("#key-enable");
    b.wait_text("#key-title", "active");
    assert_eq!(auth(&d, &secret), 200);
    let actions: Vec<String> = d.json(&["audit", "--key", &id])["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["action"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        actions.contains(&"disable".into()) && actions.contains(&"enable".into()),
        "{actions:?}"
    );
}

#[test]
fn regenerating_in_the_page_replaces_the_secret_and_remove_asks_first() {
    let Some(b) = Browser::start() else {
        return;
    };
    let (d, _) = daemon("");
    let (id, old) = d.create("admin", "rotating", &[]);
    b.login(&d, None);
    open_key(&b, &id);

    b.click("#key-rotate");
    // The default: the old secret stops now.
    assert_eq!(b.value("#rotate-grace"), "");
    b.click("#rotate-submit");
    b.wait_for("#secret-dialog[open]");
    let new = b.value("#secret-value");
    assert_ne!(new, old);
    assert!(b.text("#secret-note").contains("no longer works"));
    assert!(verify(&d, &new).contains("VALID"));
    assert!(!verify(&d, &old).contains("VALID"), "{}", verify(&d, &old));
    b.click("#secret-close");

    // Edit narrows: a description and one scope fewer.
    b.click("#key-edit");
    b.fill("#edit-description", "Rotated monthly");
    b.click("#edit-submit");
    b.wait_text("#key-status", "Saved");
    assert_eq!(
        d.json(&["key", "show", &id])["description"],
        "Rotated monthly"
    );

    // Remove: cancelled, nothing happens; confirmed, the key is gone.
    b.click("#key-remove");
    b.wait_for("#confirm-dialog[open]");
    assert!(b.text("#confirm-text").contains("rotating"));
    b.click("#confirm-no");
    b.wait_gone("#confirm-dialog[open]");
    assert_eq!(d.json(&["key", "show", &id])["status"], "active");
    b.click("#key-remove");
    b.click("#confirm-yes");
    b.wait_text("#key-title", "removed");
    assert_eq!(d.json(&["key", "show", &id])["status"], "removed");
    assert_eq!(auth(&d, &new), 401);
}

#[test]
fn an_admin_acknowledges_an_operator_message_in_the_page() {
    let Some(b) = Browser::start() else {
        return;
    };
    let (mut d, _) = daemon("");
    // Delivered at start, as an operator message.
    nightly_notified_at_restart(&mut d, "operator");

    b.login(&d, None);
    b.click("#tab-messages");
    b.wait_text("#message-rows", "nightly");
    b.screenshot("operator-messages");
    b.click("#message-rows button.ack");
    b.wait_text("#status", "Acknowledged");
    b.wait_text("#message-rows", "No messages.");
    let msgs = messages(&d, false);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["acknowledged_by"], "admin", "{msgs:?}");

    // The other admin views answer too.
    b.click("#tab-jobs");
    b.wait_text("#job-rows", "Completed");
    b.click("#tab-audit");
    b.wait_text("#audit-rows", "create");
}

/// An expiry email links `PUBLIC_URL#key=ID`: opened in a tab without a session,
/// the page says to log in and keeps the key; the login then shows that key.
#[test]
fn a_key_link_from_an_email_opens_the_key_after_the_login() {
    let Some(b) = Browser::start() else {
        return;
    };
    let (d, _) = daemon("");
    d.create("admin", "first", &[]);
    let (id, _) = d.create(
        "admin",
        "from-the-email",
        &["--description", "Expiring soon"],
    );
    b.open(&format!(
        "http://127.0.0.1:{}/console/#key={id}",
        d.addr.port()
    ));
    b.wait_text("#status", "console link");
    assert!(b.texts("#key-dialog[open]").is_empty());
    b.login(&d, None);
    b.wait_for("#key-dialog[open]");
    assert!(b.text("#key-title").contains("from-the-email"));
    assert!(b.text("#key-facts").contains(&id));
}
