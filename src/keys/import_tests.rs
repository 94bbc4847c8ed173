//! Bulk import (`import.rs`) against the rules: line numbers as editors show them,
//! all or nothing, the file against itself and against the keys held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::keys::{Actor, ImportRefused, Keys};
use crate::model::Code;
use crate::test_support::{admin, alice, fixture, fixture_with, req, CONFIG};

fn token(i: usize) -> String {
    format!("imported-token-{i:04}-abcdefghijklmnopqrstuvwxyz")
}

fn line(owner: &str, name: &str, i: usize) -> String {
    format!(
        r#"{{"owner":"{owner}","name":"{name}","token":"{}"}}"#,
        token(i)
    )
}

/// The file refused: its bad lines.
async fn refuse(keys: &Arc<Keys>, actor: &Actor, text: &str) -> ImportRefused {
    keys.import_lines(actor, text.to_owned())
        .await
        .unwrap()
        .unwrap_err()
}

/// The numbers of the bad lines, in order.
fn lines_of(refused: &ImportRefused) -> Vec<usize> {
    refused.problems.iter().map(|p| p.line).collect()
}

#[tokio::test]
async fn line_numbers_count_blank_lines_crlf_and_a_byte_order_mark() {
    let f = fixture();
    let text = format!(
        "\u{feff}{}\r\n\r\n{}\r\n{{\"owner\":\"alice\"}}\r\n{}",
        line("alice", "a", 1),
        line("alice", "b", 2),
        line("alice", "a", 3)
    );
    let refused = refuse(&f.keys, &admin(), &text).await;
    let lines = lines_of(&refused);
    assert_eq!(lines, vec![4, 5], "{:?}", refused.problems);
    assert!(refused.problems[0].message.contains("\"name\" is required"));
    assert!(refused.problems[1].message.contains("on line 1"));
    assert_eq!(f.store.key_count().unwrap(), 0, "nothing written");
    assert!(f.keys.is_empty());
}

#[tokio::test]
async fn a_good_file_is_imported_whole_and_verifies() {
    let f = fixture();
    let text: String = (0..50)
        .map(|i| {
            line(
                if i % 2 == 0 { "alice" } else { "bob" },
                &format!("k{i}"),
                i,
            ) + "\n"
        })
        .collect();
    let summary = f
        .keys
        .import_lines(&admin(), text.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.imported, 50);
    assert_eq!(summary.owners["alice"], 25);
    assert_eq!(f.store.key_count().unwrap(), 50);
    assert_eq!(f.keys.verify(&token(7), None, None).code, Code::Valid);
    // Each key has its audit entry.
    let audit = crate::test_support::audit(&f.keys, &admin(), None, 1000)
        .await
        .unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "import").count(), 50);
}

#[tokio::test]
async fn the_file_is_checked_against_the_keys_held_and_the_quota() {
    let config = CONFIG.replace("[ApiKey]\n", "[ApiKey]\nMaxKeysPerUser = 3\n");
    let f = fixture_with(&config);
    f.keys
        .create(&admin(), req("alice", "taken"))
        .await
        .unwrap();
    let text = [
        line("alice", "Taken", 1),
        line("alice", "x", 2),
        line("alice", "y", 3),
        line("alice", "z", 4),
        line("bob", "mine", 5),
    ]
    .join("\n");
    let refused = refuse(&f.keys, &admin(), &text).await;
    let lines = lines_of(&refused);
    // Line 1 clashes with the key held. Alice holds 1 key and may have 3: every
    // line of hers counts (once line 1 is renamed it is imported too), so lines 3
    // and 4 are over the quota.
    assert_eq!(lines, vec![1, 3, 4], "{:?}", refused.problems);
    assert_eq!(f.store.key_count().unwrap(), 1);

    // An owner may import only their own keys.
    let text = [line("alice", "ok", 6), line("bob", "theirs", 7)].join("\n");
    let refused = refuse(&f.keys, &alice(), &text).await;
    assert_eq!(refused.problems.len(), 1);
    assert_eq!(refused.problems[0].line, 2);
}
