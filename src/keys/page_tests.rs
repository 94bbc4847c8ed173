//! Paging of `key list` and `audit` with a cursor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Duration;

use super::tests::is_invalid;
use super::*;
use crate::test_support::*;

/// Walk every page of `list`, returning the ids in order.
async fn walk_keys(f: &Fixture, actor: &Actor, all: bool, limit: usize) -> Vec<Uuid> {
    let mut page = PageRequest {
        cursor: None,
        limit: Some(limit),
    };
    let mut seen = Vec::new();
    loop {
        let query = KeyQuery {
            include_removed: all,
            ..KeyQuery::default()
        };
        let p = f.keys.list_page(actor, &query, &page).await.unwrap();
        assert!(p.items.len() <= limit);
        seen.extend(p.items.iter().map(|k| k.id));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => return seen,
        }
    }
}

/// `key list` and `audit` page with a cursor: every key (entry) visible to the
/// caller comes exactly once, in order, and a non-admin sees only their own.
#[tokio::test]
async fn key_list_and_audit_pages_walk_every_visible_row_once() {
    let f = fixture();
    let mut alices = Vec::new();
    for i in 0..5 {
        let k = f
            .keys
            .create(&admin(), req("alice", &format!("a{i}")))
            .await
            .unwrap();
        alices.push(k.view.id);
        let b = f
            .keys
            .create(&admin(), req("bob", &format!("b{i}")))
            .await
            .unwrap();
        f.keys
            .set_enabled(&admin(), &b.view.id.to_string(), false)
            .await
            .unwrap();
        f.clock.advance(Duration::seconds(1));
    }
    f.keys
        .remove(&admin(), &alices[1].to_string())
        .await
        .unwrap();
    let every: Vec<Uuid> = list(&f.keys, &admin(), None, true)
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(every.len(), 10);
    for limit in [1, 3, 10, 20] {
        assert_eq!(walk_keys(&f, &admin(), true, limit).await, every);
    }
    let mut visible = alices.clone();
    visible.remove(1);
    assert_eq!(walk_keys(&f, &alice(), false, 2).await, visible);
    assert_eq!(walk_keys(&f, &alice(), true, 2).await, alices);

    let trail = audit(&f.keys, &admin(), None, 1000).await.unwrap();
    assert_eq!(trail.len(), 16);
    let hers: Vec<u64> = trail
        .iter()
        .filter(|e| e.key_id.is_some_and(|k| alices.contains(&k)))
        .map(|e| e.seq)
        .collect();
    assert_eq!(hers.len(), 6);
    let mut page = PageRequest {
        cursor: None,
        limit: Some(4),
    };
    let mut seen = Vec::new();
    loop {
        let p = f.keys.audit_page(&alice(), None, &page).await.unwrap();
        seen.extend(p.items.iter().map(|e| e.seq));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, hers);

    // A cursor of another listing, or a page of nothing, is refused.
    let wrong = PageRequest {
        cursor: Some(page::audit_cursor(3)),
        limit: None,
    };
    let e = f
        .keys
        .list_page(&admin(), &KeyQuery::default(), &wrong)
        .await
        .unwrap_err();
    assert!(is_invalid(&e, "cursor"), "{e}");
    let zero = PageRequest {
        cursor: None,
        limit: Some(0),
    };
    let e = f.keys.audit_page(&admin(), None, &zero).await.unwrap_err();
    assert!(is_invalid(&e, "limit"), "{e}");
}
