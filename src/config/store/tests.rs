//! `[store]` as check-config reads it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::{from_text, problems};

#[test]
fn redb_is_the_default_and_postgres_needs_a_url_without_a_password() {
    assert_eq!(from_text("").unwrap().store, StoreConfig::Redb);
    let pg = from_text("[store]\nbackend = \"postgres\"\nurl = \"host=127.0.0.1 dbname=k user=k\"\npassword_file = \"/run/pg\"\n").unwrap();
    assert_eq!(
        pg.store,
        StoreConfig::Postgres(PostgresConfig {
            password_file: Some("/run/pg".into()),
            ..PostgresConfig::new("host=127.0.0.1 dbname=k user=k")
        })
    );
    let tuned = from_text("[store]\nbackend = \"postgres\"\nurl = \"host=h\"\npool_size = 3\njob_lease = \"pt10s\"\npoll_interval = \"pt2s\"\nchange_log_retention = \"p1d\"\n").unwrap();
    let StoreConfig::Postgres(c) = tuned.store else {
        panic!("not postgres")
    };
    assert_eq!(c.pool_size, 3);
    assert_eq!(c.job_lease, Duration::from_secs(10));
    assert_eq!(c.poll_interval, Duration::from_secs(2));
    assert_eq!(c.change_log_retention, Duration::from_secs(86_400));
    let p = problems(
        "[store]\nbackend = \"postgres\"\nurl = \"host=h\"\npool_size = 0\njob_lease = \"pt1s\"\n",
    );
    let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["store.pool_size", "store.job_lease"], "{p:?}");
    let p = problems("[store]\njob_lease = \"pt1m\"\n");
    assert_eq!(p[0].0, "store.job_lease");
    assert!(p[0].1.contains("only used with backend"), "{p:?}");
    let p = problems("[store]\nbackend = \"postgres\"\n");
    assert_eq!(p[0].0, "store.url");
    for url in [
        "host=h password=hunter2hunter2 dbname=k",
        "postgresql://k:hunter2hunter2@h/k",
    ] {
        let p = problems(&format!("[store]\nbackend = \"postgres\"\nurl = {url:?}\n"));
        assert_eq!(p[0].0, "store.url", "{url}");
        assert!(p[0].1.contains("must not hold the password"), "{p:?}");
        // The password itself is not repeated in the message.
        assert!(!p[0].1.contains("hunter2"), "{p:?}");
    }
    let p = problems("[store]\nbackend = \"mysql\"\n");
    assert_eq!(p[0].0, "store.backend");
    let p = problems("[store]\nurl = \"host=h\"\n");
    assert_eq!(p[0].0, "store.url");
    let p = problems("[store]\nbackend = \"postgres\"\nurl = \"host=h\"\nport = 5\n");
    assert_eq!(p[0].0, "store.port");
}
