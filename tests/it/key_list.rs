//! `apikeyctl key list` on a realistic set of keys, through the real daemon: the
//! default table fits 120 columns, `--wide` shows every column, each filter, sort,
//! paging with `--after` across pages, local times with `TZ`, and bad parameters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::Value;

use crate::util::{request, stdout, TestDaemon};

/// A long name, as people write them: cut in the default table, whole in `--json`.
const LONG_NAME: &str = "billing-export-nightly-to-the-data-warehouse-eu-west-production";

/// Ten keys of admin, alice and bob; one disabled, one removed, two expiring soon.
/// Returns the ids by name.
fn realistic(d: &TestDaemon) -> Vec<(String, String)> {
    let specs: [(&str, &str, &str, &[&str]); 10] = [
        ("alice", LONG_NAME, "Nightly export for Finance", &[]),
        (
            "alice",
            "catalog-sync",
            "Synchronizer for the catalog",
            &["--expires-in", "p10d"],
        ),
        ("alice", "ci-runner", "GitLab CI pipelines", &[]),
        (
            "bob",
            "payroll-feed",
            "Payroll system feed",
            &["--expires-in", "p20d"],
        ),
        ("bob", "Backup", "payroll BACKUP job", &[]),
        ("bob", "grafana", "dashboards", &[]),
        ("admin", "ops-monitoring", "Prometheus blackbox probes", &[]),
        ("admin", "old-import", "to be removed", &[]),
        ("alice", "recognizer", "image recognition batch", &[]),
        ("bob", "zz-legacy", "", &[]),
    ];
    let mut made = Vec::new();
    for (owner, name, description, extra) in specs {
        let mut args = vec!["--description", description];
        args.extend_from_slice(extra);
        let (id, _) = d.create(owner, name, &args);
        made.push((name.to_owned(), id));
    }
    let id = |n: &str| made.iter().find(|(m, _)| m == n).unwrap().1.clone();
    d.ok(&["key", "disable", &id("grafana")]);
    d.ok(&["key", "remove", &id("old-import")]);
    made
}

fn names(d: &TestDaemon, args: &[&str]) -> Vec<String> {
    let mut a = vec!["key", "list"];
    a.extend_from_slice(args);
    d.json(&a)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn key_list_fits_filters_sorts_and_pages() {
    let d = TestDaemon::start();
    let made = realistic(&d);
    let id = |n: &str| made.iter().find(|(m, _)| m == n).unwrap().1.clone();

    // Default: 120 columns at most, full ids, the long name cut with an ellipsis.
    let table = d.ok(&["key", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 10, "header and nine keys:\n{table}");
    for l in &lines {
        assert!(
            l.chars().count() <= 120,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    assert!(
        lines[0].starts_with("ID ") && lines[0].ends_with("  EFFECTIVE EXPIRY   LAST USED"),
        "{}",
        lines[0]
    );
    for (name, id) in &made {
        assert_eq!(table.contains(id.as_str()), name != "old-import", "{table}");
    }
    assert!(table.contains('…') && !table.contains(LONG_NAME), "{table}");
    assert!(table.contains("disabled"), "{table}");

    // --wide: every column (lifecycle checks their titles), only cells over 60
    // characters cut (the details line, last, never); --json never cut.
    let wide = d.ok(&["key", "list", "--wide"]);
    assert!(wide.starts_with("ID ") && wide.lines().next().unwrap().ends_with(" DETAILS"));
    assert!(wide.contains(&format!("{}…", &LONG_NAME[..59])), "{wide}");
    assert!(
        wide.contains("UTC if not used again (inactivity)"),
        "{wide}"
    );
    assert!(wide.contains("Prometheus blackbox probes"), "{wide}");
    assert!(names(&d, &[]).contains(&LONG_NAME.to_owned()));

    // Filters, each alone.
    assert_eq!(names(&d, &["--status", "disabled"]), ["grafana"]);
    assert_eq!(
        names(&d, &["--status", "disabled,removed"]),
        names(&d, &["--status", "disabled", "--status", "removed"])
    );
    assert_eq!(names(&d, &["--status", "removed"]), ["old-import"]);
    assert_eq!(names(&d, &["--expiring-within", "p15d"]), ["catalog-sync"]);
    assert_eq!(
        names(&d, &["--expiring-within", "p30d"]),
        ["catalog-sync", "payroll-feed"]
    );
    assert_eq!(
        names(&d, &["--search", "PAYROLL"]),
        ["payroll-feed", "Backup"]
    );
    assert_eq!(
        names(&d, &["--search", &id("ci-runner")[24..]]),
        ["ci-runner"]
    );
    let bobs = ["payroll-feed", "Backup", "grafana", "zz-legacy"];
    assert_eq!(names(&d, &["--owner", "bob"]), bobs);
    assert_eq!(names(&d, &["--user", "bob"]), bobs);

    // Sort by a column, descending with a leading '-'.
    let by_name = names(&d, &["--sort", "name"]);
    assert_eq!(by_name[..3], ["Backup", LONG_NAME, "catalog-sync"]);
    let mut reversed = names(&d, &["--sort", "-name"]);
    reversed.reverse();
    assert_eq!(reversed, by_name);
    assert_eq!(
        names(&d, &["--sort", "-expires"]).last().unwrap(),
        "catalog-sync"
    );

    // Paging with --after: the table's "more: --after C", and the last id of a page.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut args = vec!["key", "list", "--sort", "name", "--limit", "4"];
        if let Some(a) = &after {
            args.extend(["--after", a]);
        }
        let out = d.ctl(&args);
        assert!(out.status.success());
        let page = stdout(&out);
        seen.extend(
            page.lines()
                .skip(1)
                .map(|l| l.split(' ').next().unwrap().to_owned()),
        );
        let more = String::from_utf8(out.stderr).unwrap();
        match more.trim().strip_prefix("more: --after ") {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    let by_name_ids: Vec<String> = by_name.iter().map(|n| id(n)).collect();
    assert_eq!(seen, by_name_ids, "pages by cursor");
    let mut seen: Vec<String> = Vec::new();
    loop {
        let mut args = vec!["key", "list", "--sort", "-name", "--limit", "3"];
        let last = seen.last().cloned();
        if let Some(a) = &last {
            args.extend(["--after", a.as_str()]);
        }
        let page = d.json(&args);
        let ids: Vec<String> = page["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect();
        seen.extend(ids);
        if page["next_cursor"].is_null() {
            break;
        }
    }
    let mut want = by_name_ids.clone();
    want.reverse();
    assert_eq!(seen, want, "pages by last id");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 9);

    // Bad parameters: refused, naming the parameter.
    for (args, field) in [
        (&["--sort", "colour"][..], "sort"),
        (&["--status", "frozen"], "status"),
        (&["--expiring-within", "30 days"], "expiring_within"),
        (
            &["--after", "00000000-0000-0000-0000-000000000000"],
            "after",
        ),
    ] {
        let mut a = vec!["key", "list"];
        a.extend_from_slice(args);
        let err = d.fails(&a);
        assert!(err.contains(&format!("{field}: ")), "{args:?}: {err}");
    }
    let (_, admin_key) = d.create("admin", "console", &["--scopes", "apikeyd:admin"]);
    let bearer = format!("Bearer {admin_key}");
    let auth = [("Authorization", bearer.as_str())];
    for query in ["sort=colour", "limit=many", "colour=blue"] {
        let a = request(d.addr, "GET", &format!("/v1/admin/keys?{query}"), &auth);
        assert_eq!(a.status, 400, "{query}: {}", a.body);
        let body: Value = serde_json::from_str(&a.body).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        let name = query.split('=').next().unwrap();
        assert!(message.contains(name), "{query}: {message}");
    }
}

/// Times in local time with `--local` or `TZ`; JSON stays UTC.
#[test]
fn times_show_in_local_time_with_tz() {
    let d = TestDaemon::start();
    let (id, _) = d.create("alice", "tokyo", &[]);
    let run = |tz: Option<&str>, args: &[&str]| {
        let mut cmd = d.ctl_command(args);
        if let Some(tz) = tz {
            cmd.env("TZ", tz);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        stdout(&out)
    };
    let utc = run(None, &["key", "show", &id]);
    assert!(utc.contains("Z\n") && !utc.contains("+09:00"), "{utc}");
    let tokyo = run(Some("Asia/Tokyo"), &["key", "show", &id]);
    let created = tokyo.lines().find(|l| l.starts_with("created")).unwrap();
    assert!(created.ends_with("+09:00"), "{tokyo}");
    let details = tokyo.lines().find(|l| l.starts_with("details")).unwrap();
    assert!(
        details.contains("+09:00 if not used again") && !details.contains("UTC"),
        "{details}"
    );
    let table = run(Some("Asia/Tokyo"), &["key", "list"]);
    assert!(table.contains("+09:00"), "{table}");
    assert!(table.lines().all(|l| l.chars().count() <= 120), "{table}");
    assert!(run(Some("Asia/Tokyo"), &["key", "list", "--wide"]).contains("+09:00"));
    assert!(run(Some("Asia/Tokyo"), &["audit"]).contains("+09:00"));
    // --local is global; without TZ it shows the machine's zone (whatever it is
    // here), with TZ that zone.
    assert_eq!(
        run(Some("Asia/Tokyo"), &["--local", "key", "show", &id]),
        tokyo
    );
    assert_eq!(
        run(Some("Asia/Tokyo"), &["key", "show", &id, "--local"]),
        tokyo
    );
    // JSON keeps UTC.
    let json = run(
        Some("Asia/Tokyo"),
        &["key", "show", &id, "--json", "--local"],
    );
    assert!(!json.contains("+09:00") && json.contains("Z\""), "{json}");
}
