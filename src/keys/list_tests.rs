//! `key list`'s filters, orders and paging, in the key service with an injected
//! clock: every filter alone, every column in both directions walked page by page
//! (by cursor and by the last id) against the whole listing, and bad parameters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use chrono::Duration;

use super::tests::is_invalid;
use super::*;
use crate::test_support::*;

/// Six keys of three owners, made a minute apart, in every state a listing tells
/// apart. Returns the fixture and the ids by name.
async fn keys() -> (Fixture, Vec<(String, Uuid)>) {
    let f = fixture();
    let mut made = Vec::new();
    let specs: [(&str, &str, &str, Option<&str>); 6] = [
        ("alice", "Billing sync", "nightly export", None),
        ("alice", "alpha", "", Some("p10d")),
        ("bob", "beta", "Payroll feed", Some("p20d")),
        ("bob", "Zeta", "payroll backup", None),
        ("admin", "gamma", "", None),
        ("alice", "omega", "reports", Some("p40d")),
    ];
    for (owner, name, description, expires_in) in specs {
        let mut r = req(owner, name);
        r.description = Some(description.into());
        r.expires_in = expires_in.map(str::to_owned);
        let issued = f.keys.create(&admin(), r).await.unwrap();
        made.push((name.to_owned(), issued.view.id));
        // Used once: a last-used time to sort by, unlike the others'.
        if name == "omega" {
            assert!(
                f.keys.verify(issued.key.expose(), None, None).code == crate::model::Code::Valid
            );
        }
        f.clock.advance(Duration::minutes(1));
    }
    let id = |n: &str| made.iter().find(|(m, _)| m == n).unwrap().1.to_string();
    f.keys
        .set_enabled(&admin(), &id("Zeta"), false)
        .await
        .unwrap();
    f.keys.remove(&admin(), &id("gamma")).await.unwrap();
    f.clock.advance(Duration::minutes(1));
    let edit = EditKey {
        description: Some("edited last".into()),
        ..EditKey::default()
    };
    f.keys.edit(&admin(), &id("alpha"), edit).await.unwrap();
    (f, made)
}

async fn names(f: &Fixture, actor: &Actor, query: &KeyQuery) -> Vec<String> {
    let page = f
        .keys
        .list_page(actor, query, &PageRequest::default())
        .await
        .unwrap();
    assert!(page.next_cursor.is_none());
    page.items.into_iter().map(|k| k.name).collect()
}

fn query(f: impl FnOnce(&mut KeyQuery)) -> KeyQuery {
    let mut q = KeyQuery::default();
    f(&mut q);
    q
}

#[tokio::test]
async fn each_filter_keeps_only_the_keys_it_names() {
    let (f, made) = keys().await;
    let admin = admin();
    // Default: every key but the removed one, oldest first.
    let all = names(&f, &admin, &KeyQuery::default()).await;
    assert_eq!(all, ["Billing sync", "alpha", "beta", "Zeta", "omega"]);

    let by_status = |s: &str| query(|q| q.status = Some(s.into()));
    assert_eq!(names(&f, &admin, &by_status("disabled")).await, ["Zeta"]);
    assert_eq!(names(&f, &admin, &by_status("removed")).await, ["gamma"]);
    assert_eq!(
        names(&f, &admin, &by_status(" Disabled , removed")).await,
        ["Zeta", "gamma"]
    );
    assert_eq!(names(&f, &admin, &by_status("active")).await.len(), 4);

    let owned = |o: &str| query(|q| q.owner = Some(o.into()));
    assert_eq!(names(&f, &admin, &owned("bob")).await, ["beta", "Zeta"]);

    // Search: case-insensitive, in the name, description (record only), owner, id.
    let found = |s: &str| query(|q| q.search = Some(s.into()));
    assert_eq!(names(&f, &admin, &found("PAYROLL")).await, ["beta", "Zeta"]);
    assert_eq!(names(&f, &admin, &found("sync")).await, ["Billing sync"]);
    assert_eq!(
        names(&f, &admin, &found("alic")).await,
        ["Billing sync", "alpha", "omega"]
    );
    let omega = made[5].1.to_string();
    assert_eq!(names(&f, &admin, &found(&omega[24..])).await, ["omega"]);

    // Expiring within: the hard limits first; 70 days on, inactivity (p3m after
    // the last use, or the creation) brings the unused keys in too.
    let within = |p: &str| query(|q| q.expiring_within = Some(p.into()));
    assert_eq!(names(&f, &admin, &within("p15d")).await, ["alpha"]);
    assert_eq!(names(&f, &admin, &within("P30D")).await, ["alpha", "beta"]);
    f.clock.advance(Duration::days(70));
    assert_eq!(
        names(&f, &admin, &within("p30d")).await,
        ["Billing sync", "Zeta"],
        "alpha, beta and omega's hard limits have passed; gamma is removed"
    );

    // Filters combine; a non-admin sees her own keys only, and no one else's.
    let q = query(|q| {
        q.search = Some("a".into());
        q.status = Some("active".into());
        q.owner = Some("alice".into());
    });
    assert_eq!(names(&f, &alice(), &q).await, ["Billing sync"]);
    assert_eq!(
        names(&f, &alice(), &KeyQuery::default()).await,
        ["Billing sync", "alpha", "omega"]
    );
    let e = f
        .keys
        .list_page(&alice(), &owned("bob"), &PageRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(e, KeyError::Forbidden(_)), "{e}");
}

#[tokio::test]
async fn sorts_by_every_column_in_both_directions() {
    let (f, _) = keys().await;
    let sorted = |s: &str| query(|q| q.sort = Some(s.into()));
    let admin = admin();
    assert_eq!(
        names(&f, &admin, &sorted("name")).await,
        ["alpha", "beta", "Billing sync", "omega", "Zeta"]
    );
    assert_eq!(
        names(&f, &admin, &sorted("-name")).await,
        ["Zeta", "omega", "Billing sync", "beta", "alpha"]
    );
    assert_eq!(
        names(&f, &admin, &sorted("owner")).await,
        ["Billing sync", "alpha", "omega", "beta", "Zeta"]
    );
    assert_eq!(
        names(&f, &admin, &sorted("description")).await,
        ["alpha", "Billing sync", "Zeta", "beta", "omega"]
    );
    // Times: the most recently changed first; expiry with "never" last.
    assert_eq!(names(&f, &admin, &sorted("-changed")).await[0], "alpha");
    assert_eq!(
        names(&f, &admin, &sorted("expires")).await[..3],
        ["alpha", "beta", "omega"]
    );
    // The only key used is the most recently used; never used sorts first.
    assert_eq!(names(&f, &admin, &sorted("-last_used")).await[0], "omega");
    assert_eq!(names(&f, &admin, &sorted("last-used")).await[4], "omega");
    assert_eq!(
        names(&f, &admin, &sorted("status")).await,
        ["Billing sync", "alpha", "beta", "omega", "Zeta"]
    );
}

/// Walk every page of `query` with pages of `limit`, continuing by cursor or by
/// the last id of the page; returns the ids in order.
async fn walk(f: &Fixture, query: &KeyQuery, limit: usize, by_id: bool) -> Vec<Uuid> {
    let mut q = query.clone();
    let mut page = PageRequest {
        cursor: None,
        limit: Some(limit),
    };
    let mut seen = Vec::new();
    for _ in 0..100 {
        let p = f.keys.list_page(&admin(), &q, &page).await.unwrap();
        assert!(p.items.len() <= limit);
        seen.extend(p.items.iter().map(|k| k.id));
        let Some(c) = p.next_cursor else {
            return seen;
        };
        if by_id {
            q.after = seen.last().map(Uuid::to_string);
        } else {
            page.cursor = Some(c);
        }
    }
    panic!("the pages never end");
}

#[tokio::test]
async fn pages_of_every_order_walk_every_key_once() {
    let (f, _) = keys().await;
    let columns = [
        "id",
        "name",
        "description",
        "owner",
        "status",
        "created",
        "changed",
        "last_used",
        "expires",
        "effective",
        "notification",
    ];
    for column in columns {
        for sort in [column.to_owned(), format!("-{column}")] {
            let q = query(|q| {
                q.sort = Some(sort.clone());
                q.include_removed = true;
            });
            let whole: Vec<Uuid> = f
                .keys
                .list_page(&admin(), &q, &PageRequest::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|k| k.id)
                .collect();
            assert_eq!(whole.len(), 6, "{sort}");
            assert_eq!(whole.iter().collect::<BTreeSet<_>>().len(), 6);
            for limit in [1, 2, 4] {
                assert_eq!(walk(&f, &q, limit, false).await, whole, "{sort} by cursor");
                assert_eq!(walk(&f, &q, limit, true).await, whole, "{sort} by id");
            }
        }
    }
}

#[tokio::test]
async fn bad_parameters_are_refused_by_name() {
    let (f, made) = keys().await;
    let refused = |q: KeyQuery, page: PageRequest| {
        let keys = f.keys.clone();
        async move { keys.list_page(&admin(), &q, &page).await.unwrap_err() }
    };
    let none = PageRequest::default;
    for (q, field) in [
        (query(|q| q.status = Some("frozen".into())), "status"),
        (
            query(|q| q.expiring_within = Some("30 days".into())),
            "expiring_within",
        ),
        (query(|q| q.sort = Some("colour".into())), "sort"),
        (query(|q| q.after = Some(Uuid::nil().to_string())), "after"),
        (query(|q| q.after = Some("k00".into())), "after"),
    ] {
        let e = refused(q, none()).await;
        assert!(is_invalid(&e, field), "{field}: {e}");
        assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
    }
    // A cursor of one order is not taken for another's, nor with `after`.
    let by_name = query(|q| q.sort = Some("name".into()));
    let first = f
        .keys
        .list_page(
            &admin(),
            &by_name,
            &PageRequest {
                cursor: None,
                limit: Some(1),
            },
        )
        .await
        .unwrap();
    let cursor = first.next_cursor.unwrap();
    let page = PageRequest {
        cursor: Some(cursor.clone()),
        limit: None,
    };
    let e = refused(query(|q| q.sort = Some("-name".into())), page.clone()).await;
    assert!(is_invalid(&e, "cursor"), "{e}");
    let with_after = query(|q| {
        q.sort = Some("name".into());
        q.after = Some(made[0].1.to_string());
    });
    let e = refused(with_after, page).await;
    assert!(is_invalid(&e, "after"), "{e}");
    // The cursor also works given as `after`.
    let q = query(|q| {
        q.sort = Some("name".into());
        q.after = Some(cursor);
    });
    assert_eq!(
        names(&f, &admin(), &q).await,
        ["beta", "Billing sync", "omega", "Zeta"]
    );
}
