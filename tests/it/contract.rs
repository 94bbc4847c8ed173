//! Regressions found by the schemathesis contract run (tests/contract/run.sh): answers
//! of the admin API over TCP that the OpenAPI document did not describe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::util::{bearer, request, Answer, TestDaemon};

fn admin(d: &TestDaemon) -> String {
    let (_, key) = d.create("admin", "contract", &["--scopes", "apikeyd:admin"]);
    bearer(&key)
}

fn get(d: &TestDaemon, auth: &str, path: &str) -> Answer {
    request(d.addr, "GET", path, &[("Authorization", auth)])
}

/// The status and the error code of a JSON error answer; panics on any other body.
fn json_error(a: &Answer) -> (u16, String) {
    assert_eq!(
        a.header("content-type"),
        Some("application/json"),
        "{}",
        a.body
    );
    let v: Value = serde_json::from_str(&a.body).unwrap();
    (a.status, v["error"]["code"].as_str().unwrap().to_owned())
}

/// Regression: a query string that did not parse (an unknown parameter, a limit
/// that is not a number) on `GET /v1/admin/audit`, `/v1/admin/jobs`,
/// `/v1/admin/messages` and `/v1/admin/plan` was answered with axum's own 400 in
/// `text/plain`, where the document (and every other error) says
/// `{"error": {"code", "message"}}` in JSON; only the key listing converted it. A
/// path segment that is not UTF-8 once decoded got the same plain-text answer on
/// every route with an id.
#[test]
fn unreadable_queries_and_paths_are_json_errors() {
    let d = TestDaemon::start();
    let auth = admin(&d);
    for path in [
        "/v1/admin/audit?colour=red",
        "/v1/admin/jobs?colour=red",
        "/v1/admin/messages?limit=many",
        "/v1/admin/plan?colour=red",
        "/v1/admin/keys?colour=red",
        "/v1/admin/keys/%FF",
        "/v1/admin/jobs/%FF%FE",
    ] {
        let a = get(&d, &auth, path);
        assert_eq!(json_error(&a), (400, "bad_request".into()), "{path}");
    }
}

/// Regression: `GET /v1/admin/messages?limit=0` answered 200 with no messages,
/// while the document (and every other listing) refuses a limit under 1.
#[test]
fn message_list_refuses_a_zero_limit() {
    let d = TestDaemon::start();
    let auth = admin(&d);
    let a = get(&d, &auth, "/v1/admin/messages?limit=0");
    assert_eq!(json_error(&a), (400, "invalid".into()));
    assert!(a.body.contains("limit"), "{}", a.body);
    assert_eq!(get(&d, &auth, "/v1/admin/messages?limit=1").status, 200);
}

/// Regression: `GET /v1/admin/jobs?maintenance=true` dropped every other parameter
/// unread, so `key=<not an id>`, `state`, `cursor` or `limit=0` were answered 200
/// with the cron jobs as if they filtered them. apikeyctl already refuses
/// `--key`, `--state` and `--cursor` with `--maintenance`; the API now does too,
/// and checks the limit apikeyctl always sends.
#[test]
fn maintenance_job_list_refuses_the_job_filters() {
    let d = TestDaemon::start();
    let auth = admin(&d);
    for query in [
        "maintenance=true&key=not-an-id",
        "maintenance=true&state=Failed",
        "maintenance=true&cursor=x",
        "maintenance=true&limit=0",
    ] {
        let a = get(&d, &auth, &format!("/v1/admin/jobs?{query}"));
        assert_eq!(json_error(&a).0, 400, "{query}: {}", a.body);
    }
    let a = get(&d, &auth, "/v1/admin/jobs?maintenance=true&limit=100");
    assert_eq!(a.status, 200, "{}", a.body);
    let v: Value = serde_json::from_str(&a.body).unwrap();
    assert!(v["maintenance"].is_array(), "{v}");
    // What apikeyctl sends still works.
    d.ok(&["job", "list", "--maintenance"]);
}

/// Regression: a body over `max_body_bytes` on the admin operations that take one
/// (create, import, edit, rotate, notify, plan/policy) is answered 413 with the
/// JSON error, but only verify and the bulk import documented a 413. Every
/// operation with a body documents it now.
#[test]
fn every_operation_with_a_body_documents_413() {
    let doc: Value = serde_json::from_str(apikeyd::api::OPENAPI).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_some() {
                assert!(
                    op["responses"].get("413").is_some(),
                    "{method} {path} takes a body but does not document 413"
                );
            }
        }
    }
    let d = TestDaemon::start();
    let auth = admin(&d);
    let body = format!("{{\"name\": \"{}\"}}", "x".repeat(70_000));
    let (status, v) = crate::util::http(
        d.addr,
        "POST",
        "/v1/admin/keys",
        &[("Authorization", auth.as_str())],
        body.as_bytes(),
    );
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "bad_body", "{v}");
}

/// Regression (the long contract run): serde reads a struct from a JSON array,
/// field by field, so `PATCH /v1/admin/keys/{id}` with `["False"]` answered 200 and
/// renamed the key to "False", and `/v1/verify` took `["<key>"]`. A body that is
/// not a JSON object is a 400 now.
#[test]
fn bodies_that_are_not_json_objects_are_refused() {
    let d = TestDaemon::start();
    let auth = admin(&d);
    let (id, secret) = d.create("alice", "before", &[]);
    let (status, v) = crate::util::http(
        d.addr,
        "PATCH",
        &format!("/v1/admin/keys/{id}"),
        &[("Authorization", auth.as_str())],
        br#"["False"]"#,
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    assert_eq!(d.json(&["key", "show", &id])["name"], "before");
    let (status, v) = d.post("/v1/verify", &format!("[\"{secret}\"]"));
    assert_eq!(status, 400, "{v}");
}
