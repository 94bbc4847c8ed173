//! Paged listings through the real `apikeyctl`, as a non-admin user: `key list`,
//! `audit` and `job list` with `--limit` and `--cursor`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::Value;

use crate::util::{free_port, is_root, TestDaemon, DEFAULT_POLICY};

/// uid of `nobody`, which the test config maps to alice.
const NOBODY: u32 = 65534;

/// Alert settings whose SMTP server is never reached: the notifications made here
/// fall due long after the test.
fn alert_config() -> String {
    let port = free_port();
    format!(
        r#"
[smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "apikeyd <apikeyd@example.com>"
"#
    )
}

/// Run `args` as alice (uid nobody) with `--json`, following `next_cursor` until
/// the last page; returns every item of `field` and the number of pages.
fn walk(d: &TestDaemon, args: &[&str], field: &str, limit: usize) -> (Vec<Value>, usize) {
    let limit_s = limit.to_string();
    let mut cursor: Option<String> = None;
    let mut items = Vec::new();
    for pages in 1..1000 {
        let mut a = args.to_vec();
        a.extend(["--limit", &limit_s, "--json"]);
        if let Some(c) = &cursor {
            a.extend(["--cursor", c]);
        }
        let out = d.ctl_as(Some(NOBODY), &a);
        assert!(
            out.status.success(),
            "apikeyctl {a:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let page = v[field].as_array().unwrap();
        assert!(page.len() <= limit, "{a:?}: {} rows", page.len());
        items.extend(page.iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (items, pages),
        }
    }
    panic!("{args:?}: the pages never end");
}

fn ids(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[field].as_str().unwrap().to_owned())
        .collect()
}

/// Non-admin `audit` and `job list` decoded whole tables and filtered them
/// afterwards, and no listing could be paged. A non-admin now walks every page of
/// `key list`, `audit` and `job list` with `--limit` and `--cursor`: each of her
/// keys, entries and jobs comes exactly once, in order, and nobody else's.
#[test]
fn a_user_walks_every_page_of_her_keys_audit_and_jobs() {
    // Not skipped without root, so that a run which cannot exercise it fails.
    assert!(
        is_root(),
        "this test runs apikeyctl as nobody (mapped to alice): run it as root"
    );
    let d = TestDaemon::start_with(DEFAULT_POLICY, &alert_config());
    let mut hers = Vec::new();
    for i in 0..5 {
        let (id, _) = d.create("alice", &format!("a{i}"), &["--notify-before", "p1d"]);
        hers.push(id);
        let (bob, _) = d.create("bob", &format!("b{i}"), &["--notify-before", "p1d"]);
        d.ok(&["key", "disable", &bob]);
    }
    d.ok(&["key", "edit", &hers[2], "--description", "edited"]);

    // Keys: her own, oldest first, as the admin sees them.
    let (keys, pages) = walk(&d, &["key", "list"], "keys", 2);
    assert_eq!(ids(&keys, "id"), hers);
    assert_eq!(pages, 3);

    // Audit: exactly the entries about her keys, newest first, no gaps or repeats.
    let trail = d.json(&["audit", "--limit", "1000"]);
    let mine: BTreeSet<&str> = hers.iter().map(String::as_str).collect();
    let want: Vec<u64> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key_id"].as_str().is_some_and(|k| mine.contains(k)))
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(want.len(), 6);
    let (entries, _) = walk(&d, &["audit"], "entries", 4);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, want);

    // Jobs: one per key of hers, newest first.
    let all_jobs = d.json(&["job", "list", "--limit", "1000"]);
    let want: Vec<String> = all_jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| mine.contains(j["key_id"].as_str().unwrap()))
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(want.len(), 5);
    let (jobs, pages) = walk(&d, &["job", "list"], "jobs", 2);
    assert_eq!(ids(&jobs, "id"), want);
    assert_eq!(pages, 3);

    // Table mode: the rows on stdout, where the next page starts on stderr.
    let out = d.ctl_as(Some(NOBODY), &["key", "list", "--limit", "4"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 5, "{table}");
    let more = String::from_utf8(out.stderr).unwrap();
    let cursor = more
        .trim()
        .strip_prefix("more: --after ")
        .unwrap_or_else(|| panic!("no cursor in {more:?}"));
    let out = d.ctl_as(
        Some(NOBODY),
        &["key", "list", "--limit", "4", "--cursor", cursor],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
    assert!(out.stderr.is_empty(), "the last page has no cursor");

    // A cursor of another listing, or an empty page, is refused.
    let err = d.fails(&["audit", "--cursor", cursor]);
    assert!(err.contains("cursor"), "{err}");
    let err = d.fails(&["job", "list", "--limit", "0"]);
    assert!(err.contains("limit"), "{err}");
}
