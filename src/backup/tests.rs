//! The restore's refusals, on the library: what is not a snapshot, an existing
//! database, another server secret, a PostgreSQL configuration; and a restore
//! with `force` that keeps the database it replaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;

use super::*;
use crate::keys::secret::ServerSecret;
use crate::model::{KeyKind, KeyRecord};
use crate::store::{Change, Storage};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A configuration whose state directory is `dir/state`, holding `secret`.
fn machine(dir: &Path, secret: Option<&str>) -> Config {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    if let Some(s) = secret {
        std::fs::write(state.join("server.secret"), s).unwrap();
    }
    crate::config::from_text(&format!(
        "[server]\nstate_dir = \"{}\"\n[groups.G]\nscopes = [\"a\"]\n[users.alice]\ngroups = [\"G\"]\n",
        state.display()
    ))
    .unwrap()
}

/// A snapshot of a store with one key, taken under `secret`, written to `dir/FILE`.
fn snapshot(dir: &Path, secret: &str) -> PathBuf {
    let store = RedbStore::open(&dir.join("source.redb")).unwrap();
    let rec = KeyRecord::new("alice", "k", &[1; 32], KeyKind::Generated, Utc::now());
    store
        .commit(Change {
            put_keys: vec![rec],
            ..Change::default()
        })
        .unwrap();
    let hasher = KeyHasher::new(&ServerSecret::from_bytes(secret.as_bytes().to_vec()).unwrap());
    let mut snap = store
        .snapshot(SnapshotInfo::new(Utc::now(), &hasher.fingerprint()))
        .unwrap();
    let path = dir.join("backup.redb");
    std::io::copy(&mut snap.file, &mut std::fs::File::create(&path).unwrap()).unwrap();
    path
}

fn env() -> Environment {
    Environment::default()
}

#[test]
fn a_snapshot_restores_and_an_existing_database_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let file = snapshot(dir.path(), SECRET);
    let config = machine(dir.path(), Some(SECRET));
    let done = restore(&config, &env(), &file, false).unwrap();
    assert_eq!(done.info.counts.keys, 1);
    assert!(done.replaced.is_none());
    // The database is in place, private, and not a snapshot any more.
    let db = config.server.database_path();
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        RedbStore::open(&db).unwrap().export_counts().unwrap().keys,
        1
    );
    // Again: refused without force, and nothing moves.
    let err = restore(&config, &env(), &file, false).unwrap_err();
    assert!(matches!(err, RestoreError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("1 keys"), "{err}");
    // With force: replaced, the old one kept aside.
    let done = restore(&config, &env(), &file, true).unwrap();
    assert!(done.replaced.as_ref().unwrap().exists());
    assert!(!db.with_extension("redb.restoring").exists());
}

#[test]
fn what_is_not_a_snapshot_is_refused_and_nothing_is_put_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = machine(dir.path(), Some(SECRET));
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a database").unwrap();
    // A live database: a redb file without the snapshot's record.
    let live = dir.path().join("live.redb");
    drop(RedbStore::open(&live).unwrap());
    for file in [&junk, &live] {
        let err = restore(&config, &env(), file, false).unwrap_err();
        assert!(matches!(err, RestoreError::Snapshot { .. }), "{err}");
        assert!(err.to_string().contains("not an apikeyd snapshot"), "{err}");
    }
    let missing = restore(&config, &env(), &dir.path().join("nope"), false).unwrap_err();
    assert!(
        matches!(missing, RestoreError::Unreadable { .. }),
        "{missing}"
    );
    let db = config.server.database_path();
    assert!(!db.exists());
    assert!(!db.with_extension("redb.restoring").exists());
}

#[test]
fn another_secret_or_none_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = snapshot(dir.path(), SECRET);
    let other = tempfile::tempdir().unwrap();
    let config = machine(other.path(), Some(&"f".repeat(64)));
    let err = restore(&config, &env(), &file, false).unwrap_err();
    assert!(matches!(err, RestoreError::WrongSecret), "{err}");
    assert!(!config.server.database_path().exists());
    let bare = tempfile::tempdir().unwrap();
    let config = machine(bare.path(), None);
    let err = restore(&config, &env(), &file, false).unwrap_err();
    assert!(matches!(err, RestoreError::NoSecret(_)), "{err}");
    // A restore never makes a secret up.
    assert!(!config.server.secret_file.exists());
}

#[test]
fn a_postgresql_configuration_is_sent_to_pg_restore() {
    let dir = tempfile::tempdir().unwrap();
    let file = snapshot(dir.path(), SECRET);
    machine(dir.path(), Some(SECRET));
    let config = crate::config::from_text(&format!(
        "[server]\nstate_dir = \"{}\"\n[store]\nbackend = \"postgres\"\nurl = \"host=db dbname=apikeyd user=apikeyd\"\n[groups.G]\nscopes = [\"a\"]\n[users.alice]\ngroups = [\"G\"]\n",
        dir.path().join("state").display()
    ))
    .unwrap();
    let err = restore(&config, &env(), &file, false).unwrap_err();
    assert!(err.to_string().contains("pg_restore"), "{err}");
}

#[test]
fn a_postgresql_store_refuses_a_backup_and_names_pg_dump() {
    let err = crate::store::MemoryStore::new()
        .snapshot(SnapshotInfo::new(Utc::now(), &[0; 32]))
        .unwrap_err();
    assert!(matches!(err, StoreError::Unsupported(_)));
    assert!(err.to_string().contains("pg_dump"), "{err}");
}
