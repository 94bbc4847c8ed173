//! The PostgreSQL store's own rules, beside the conformance tests every backend passes:
//! migrations under several processes at once, and a database newer than the code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::test_server::TestServer;
use super::PostgresStore;
use crate::store::StoreError;

fn query_one_i64(url: &str, sql: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        drop(client);
        let _ = conn.await;
        n
    })
}

/// Nodes starting at once apply each migration once (an advisory lock serialises
/// them); every one of them opens the store.
#[test]
fn several_opens_at_once_migrate_once() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("together");
    let opened: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PostgresStore::open(&url, None).is_ok()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(opened, [true; 4]);
    assert_eq!(
        query_one_i64(&url, "SELECT COUNT(*) FROM apikeyd_schema"),
        i64::try_from(super::schema::MIGRATIONS.len()).unwrap()
    );
}

/// A database migrated by a newer apikeyd is refused, saying so, rather than
/// written in a form that version does not expect.
#[test]
fn a_database_newer_than_this_apikeyd_is_refused() {
    let Some(server) = TestServer::start() else {
        return;
    };
    let url = server.database("newer");
    drop(PostgresStore::open(&url, None).unwrap());
    query_one_i64(
        &url,
        "WITH v AS (INSERT INTO apikeyd_schema (version) VALUES (999) RETURNING version) SELECT COUNT(*) FROM v",
    );
    let err = PostgresStore::open(&url, None).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("upgrade apikeyd"), "{err}");
}

/// Loading at start reads the keys through a cursor, chunk after chunk: every key
/// comes back once, past the first chunk too.
#[test]
fn every_key_is_loaded_once_across_chunks() {
    use crate::model::{KeyKind, KeyRecord};
    use crate::store::{Change, Storage};
    let Some(server) = TestServer::start() else {
        return;
    };
    let store = PostgresStore::open(&server.database("many"), None).unwrap();
    let now = chrono::Utc::now();
    let mut want = Vec::new();
    for chunk in 0..2u32 {
        let mut put_keys = Vec::new();
        for i in 0..5000u32 {
            let n = chunk * 5000 + i;
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&n.to_le_bytes());
            let rec = KeyRecord::new("alice", &format!("k{n}"), &hash, KeyKind::Generated, now);
            want.push(rec.id);
            put_keys.push(rec);
        }
        store
            .commit(Change {
                put_keys,
                ..Change::default()
            })
            .unwrap();
    }
    let mut seen = Vec::new();
    assert_eq!(
        store.load_keys(&mut |row| seen.push(row.id)).unwrap(),
        10_000
    );
    seen.sort();
    want.sort();
    assert_eq!(seen, want);
}
