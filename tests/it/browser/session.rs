//! Logging in and out of the console in the browser, what a session shows, and
//! the links and requests it refuses: expired and reused links, another owner's
//! keys, and state changes without the CSRF token, from another origin too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, FixedOffset};
use serde_json::json;

use super::{Browser, CSRF_STORAGE_KEY};
use crate::console::{daemon, link, move_clock};
use crate::echo::Echo;
use crate::util::{request, require_root};

/// The account `nobody`, which the test config maps to alice.
const ALICE_UID: Option<u32> = Some(65534);

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A time as en-US shows it with `dateStyle: medium, timeStyle: short` (the
/// page's format), with ICU's narrow space before AM/PM made a plain one.
fn en_us(t: DateTime<FixedOffset>) -> String {
    t.format("%b %-d, %Y, %-I:%M %p").to_string()
}

#[test]
fn a_console_link_logs_in_and_lists_the_users_keys_in_the_browsers_time_zone() {
    if !require_root("apikeyctl console-link runs as alice's account, nobody") {
        return;
    }
    // India: +05:30 all year, so a time rendered in UTC, or in any whole-hour
    // zone, cannot pass for it.
    let Some(b) = Browser::start_in("Asia/Kolkata") else {
        return;
    };
    let (d, _) = daemon("");
    let (export, _) = d.create(
        "alice",
        "nightly-export",
        &["--description", "Catalog export for the warehouse"],
    );
    d.create(
        "alice",
        "catalog-sync",
        &["--description", "Sync from the ERP", "--expires-in", "p30d"],
    );
    let (deploy, _) = d.create("alice", "ci-deploy", &["--description", "Deploy pipeline"]);
    d.ok(&["key", "disable", &deploy]);
    d.create("bob", "bobs-key", &[]);

    assert_eq!(b.login(&d, ALICE_UID), "alice");
    assert_eq!(b.text("#key-caption"), "Your keys");
    assert_eq!(
        sorted(b.key_names()),
        ["catalog-sync", "ci-deploy", "nightly-export"]
    );
    let row = |id: &str| format!("#key-rows tr[data-id='{id}']");
    let cells = b.texts(&format!("{} > td", row(&export)));
    assert!(
        cells.contains(&"Catalog export for the warehouse".into())
            && cells.contains(&"active".into()),
        "{cells:?}"
    );
    let cells = b.texts(&format!("{} > td", row(&deploy)));
    assert!(cells.contains(&"disabled".into()), "{cells:?}");

    // Created, in the browser's zone; the exact instant stays in the markup.
    let created = d.json(&["key", "show", &export])["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let time = b.find(&format!("{} time", row(&export)));
    let datetime = b.run("read datetime", time.attr("datetime"));
    assert_eq!(datetime.as_deref(), Some(created.as_str()));
    let kolkata = FixedOffset::east_opt(5 * 3600 + 30 * 60).unwrap();
    let local = DateTime::parse_from_rfc3339(&created)
        .unwrap()
        .with_timezone(&kolkata);
    let shown = b.run("read the time", time.text()).replace('\u{202f}', " ");
    assert_eq!(shown, en_us(local), "created_at {created}");

    // The README's picture of the list.
    b.resize(1280, 740);
    b.screenshot("key-list");
}

#[test]
fn an_expired_or_reused_console_link_is_refused_in_the_browser() {
    let Some(b) = Browser::start() else { return };
    let (d, clock) = daemon("");
    d.create("admin", "ops-key", &[]);

    // A link works for five minutes.
    let late = link(&d, None);
    move_clock(&clock, 301);
    b.use_link(&late);
    let said = b.wait_text("#status", "expired");
    assert!(said.contains("apikeyctl console-link"), "{said}");
    b.wait_gone("#keys");
    b.wait_gone("#who");

    // Used once, a link logs in no more, in the tab it logged in or elsewhere.
    let url = link(&d, None);
    assert!(b.login_with(&url).starts_with("admin"));
    assert_eq!(b.key_names(), ["ops-key"]);
    b.use_link(&url);
    let said = b.wait_text("#status", "used already");
    assert!(said.contains("apikeyctl console-link"), "{said}");
    b.wait_gone("#keys");
    assert!(b.key_names().is_empty());
}

#[test]
fn an_owner_does_not_see_another_owners_keys_in_the_page_and_an_admin_sees_all() {
    if !require_root("apikeyctl console-link runs as alice's account, nobody") {
        return;
    }
    let Some(b) = Browser::start() else { return };
    let (d, _) = daemon("");
    d.create("alice", "alices-key", &[]);
    d.create("bob", "bobs-key", &["--description", "bob's only"]);
    d.create("admin", "ops-key", &[]);

    assert_eq!(b.login(&d, ALICE_UID), "alice");
    assert_eq!(b.key_names(), ["alices-key"]);
    let page = b.text("main");
    assert!(
        !page.contains("bobs-key") && !page.contains("ops-key") && !page.contains("bob's only"),
        "{page}"
    );
    // No owner column for an owner.
    assert!(b.texts("#key-rows .owner-col").is_empty());

    // The admin, in the same tab: a new login replaces alice's session.
    assert_eq!(b.login(&d, None), "admin (admin: all keys)");
    assert_eq!(b.text("#key-caption"), "All keys");
    assert_eq!(sorted(b.key_names()), ["alices-key", "bobs-key", "ops-key"]);
    assert_eq!(
        sorted(b.texts("#key-rows td.owner-col")),
        ["admin", "alice", "bob"]
    );
    // The search finds bob's key by its owner.
    b.fill("#search", "bob");
    b.click("#search-form button[type=submit]");
    b.poll("only bob's key listed", || {
        (b.key_names() == ["bobs-key"]).then_some(())
    });
    assert_eq!(b.value("#search"), "bob");
}

/// A state change from another origin of the same host (same site: SameSite does
/// not tell ports apart, so the browser sends the session cookie along) and one
/// from the console's own origin without the token are refused; the key stays
/// enabled.
#[test]
fn a_state_change_without_the_csrf_token_is_refused_in_the_browser() {
    let Some(b) = Browser::start() else { return };
    let (d, _) = daemon("");
    let (key, _) = d.create("admin", "ops-key", &[]);
    let (other, _) = d.create("admin", "spare-key", &[]);
    let status = |id: &str| d.json(&["key", "show", id])["status"].clone();
    b.login(&d, None);
    let disable = |id: &str| format!("/v1/admin/keys/{id}/disable");

    // The console's own origin, its cookie, no token.
    let (code, body) = b.fetch("POST", &disable(&key), false);
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], "csrf", "{body}");
    assert_eq!(status(&key), "active");
    // With the page's token the same request works (on another key).
    let (code, body) = b.fetch("POST", &disable(&other), true);
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&other), "disabled");

    // Another origin: a page on another loopback port that posts the change
    // by fetch() and then by a form, both with the browser's cookies.
    let target = format!("http://127.0.0.1:{}{}", d.addr.port(), disable(&key));
    let page = format!(
        r#"<!doctype html><title>another site</title>
<form id="f" method="post" action="{target}"></form>
<p id="said">sending</p>
<script>
fetch("{target}", {{ method: "POST", mode: "no-cors", credentials: "include" }})
  .then(() => document.getElementById("f").submit())
  .catch((e) => {{ document.getElementById("said").textContent = "fetch failed: " + e; }});
</script>"#
    );
    let site = Echo::serving(&page);
    b.open(&format!("http://127.0.0.1:{}/", site.addr().port()));
    // The form's answer is the daemon's, shown in the browser: refused for the
    // CSRF defence. Without the cookie it would have been 401 `unauthorized`
    // (the TCP admin API without a key), so the cookie did go along.
    let answer = b.wait_text("body", "\"error\"");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["error"]["code"], "csrf", "{answer}");
    assert_eq!(b.url(), target);
    assert_eq!(status(&key), "active");

    // The other port also got the cookie itself (SameSite=Strict and all):
    // why the cookie alone must open nothing.
    let (head, _) = &site.requests()[0];
    assert!(head.starts_with("GET / "), "{head}");
    let stolen = head
        .lines()
        .find_map(|l| l.strip_prefix("Cookie: "))
        .unwrap_or_else(|| panic!("no cookie sent to the other port: {head}"));
    assert!(stolen.contains("apikeyd_session="), "{stolen}");
    let replayed = request(d.addr, "POST", &disable(&key), &[("Cookie", stolen)]);
    assert_eq!(replayed.status, 403, "{}", replayed.body);
    assert_eq!(status(&key), "active");
}

#[test]
fn logging_out_ends_the_console_session() {
    let Some(b) = Browser::start() else { return };
    let (d, _) = daemon("");
    d.create("admin", "ops-key", &[]);
    b.login(&d, None);
    let token = b.exec(
        "return sessionStorage.getItem(arguments[0])",
        vec![json!(CSRF_STORAGE_KEY)],
    );
    let token = token.as_str().unwrap().to_owned();
    let cookies = b.run("read cookies", b.client().get_all_cookies());
    let cookie = cookies
        .iter()
        .find(|c| c.name() == "apikeyd_session")
        .map(|c| format!("apikeyd_session={}", c.value()))
        .unwrap();

    b.click("#logout");
    b.wait_text("#status", "Logged out");
    b.wait_gone("#keys");
    b.wait_gone("#logout");
    b.reload();
    b.wait_text("#status", "Not logged in");
    assert!(b.key_names().is_empty());

    // Ended in the daemon, not just forgotten by the page: the old cookie and
    // token open nothing.
    let a = request(
        d.addr,
        "GET",
        "/v1/admin/keys",
        &[("Cookie", &cookie), ("X-CSRF-Token", &token)],
    );
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("console_session"), "{}", a.body);
    // The page, given its token back, hears the same from the daemon.
    b.exec(
        "sessionStorage.setItem(arguments[0], arguments[1])",
        vec![json!(CSRF_STORAGE_KEY), json!(token)],
    );
    b.reload();
    b.wait_text("#status", "not logged in to the console");
}
