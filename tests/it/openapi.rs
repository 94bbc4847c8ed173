//! The served routes and the OpenAPI document agree, checked against the real daemon:
//! every documented (path, method) is served, every undocumented method on a
//! documented path is refused with 405, and the route table equals the document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::Value;

use crate::util::{request, TestDaemon};

const PROBED: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[test]
fn served_routes_and_openapi_document_agree() {
    let d = TestDaemon::start();
    let (id, _) = d.create("alice", "k", &[]);
    // Admin routes on TCP check the bearer before the method: present an admin key.
    let (_, admin_key) = d.create("admin", "ops", &["--scopes", "apikeyd:admin"]);
    let bearer = format!("Bearer {admin_key}");
    let served = request(d.addr, "GET", "/openapi.json", &[]);
    assert_eq!(served.status, 200);
    let doc: Value = serde_json::from_str(&served.body).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc, file,
        "the served document is the one in the repository"
    );
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((path.clone(), method.to_ascii_uppercase()));
        }
    }
    let table: BTreeSet<(String, String)> = apikeyd::api::route_table()
        .into_iter()
        .flat_map(|(p, ms)| ms.into_iter().map(move |m| (p.clone(), m.to_owned())))
        .collect();
    assert_eq!(table, documented, "route table and OpenAPI paths differ");

    // Probe the real daemon: documented methods are served, others get 405.
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in paths {
        let concrete = path.replace("{id}", &id).replace("{path}", "some/where");
        for method in PROBED {
            let a = request(
                d.addr,
                method,
                &concrete,
                &[("Authorization", bearer.as_str())],
            );
            if documented.contains(&(path.clone(), method.to_owned())) {
                // A 404 from a handler (no such key or job) is fine; the router's own
                // 404 (code "no_route") or a 405 is not.
                assert!(
                    !a.body.contains("\"no_route\"") && a.status != 405,
                    "{method} {path} is documented but answered {}: {}",
                    a.status,
                    a.body
                );
            } else {
                assert_eq!(
                    a.status, 405,
                    "{method} {path} is not documented but answered {}",
                    a.status
                );
            }
        }
    }
    // Undocumented paths are not served.
    assert_eq!(request(d.addr, "GET", "/v1/nothing", &[]).status, 404);
}

/// Every admin operation that writes to the store says how a failing disk answers:
/// 507 `disk_full`, 503 `read_only`. (Only the backup route said so.)
#[test]
fn every_admin_write_documents_the_disk_answers() {
    // Writes nothing to the store: a plan, and a login link kept in memory.
    const NOT_WRITES: [&str; 2] = ["/v1/admin/plan/policy", "/v1/admin/console-link"];
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let mut writes = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/admin/") || NOT_WRITES.contains(&path.as_str()) {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            if !["post", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            writes += 1;
            for code in ["503", "507"] {
                assert!(
                    op["responses"].get(code).is_some(),
                    "{method} {path} does not document {code}"
                );
            }
        }
    }
    assert!(writes >= 13, "{writes}");
}
