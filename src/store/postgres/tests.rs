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

/// TLS: with `sslmode=require` the store talks to a server whose certificate
/// `ca_file`'s CA signed for the host name in the URL; without that CA, or under
/// another host name, it refuses to connect, saying why.
#[test]
fn tls_is_verified_against_the_ca_file_and_the_host_name() {
    use crate::config::PostgresConfig;
    let Some((server, ca)) = TestServer::start_tls(&["localhost"]) else {
        return;
    };
    server.database("tls");
    let url = |host: &str| {
        server
            .url("tls")
            .replace("host=127.0.0.1", &format!("host={host} sslmode=require"))
    };
    let with_ca = PostgresConfig {
        ca_file: Some(ca.clone()),
        ..PostgresConfig::new(url("localhost"))
    };
    let store = PostgresStore::connect(&with_ca, None).unwrap();
    // The pool really speaks TLS.
    let ssl: bool = store
        .run(async |c| {
            Ok(c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(super::pg)?
            .get(0))
        })
        .unwrap();
    assert!(ssl, "the connection is not encrypted");
    drop(store);

    let err = PostgresStore::connect(&PostgresConfig::new(url("localhost")), None).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("cannot connect to PostgreSQL"), "{text}");
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer"),
        "{text}"
    );

    let wrong_name = PostgresConfig {
        ca_file: Some(ca),
        ..PostgresConfig::new(url("127.0.0.1"))
    };
    let err = PostgresStore::connect(&wrong_name, None).unwrap_err();
    assert!(
        err.to_string().contains("certificate not valid for name"),
        "{err}"
    );

    let bad = PostgresConfig {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..PostgresConfig::new(url("localhost"))
    };
    let err = PostgresStore::connect(&bad, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("store.ca_file /nonexistent/ca.pem"),
        "{err}"
    );
}
