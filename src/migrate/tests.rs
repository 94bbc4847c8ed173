//! The migration between stores: a store with every kind of record round-trips
//! memory → redb → PostgreSQL → memory unchanged, a non-empty target is refused
//! unless asked, and an endpoint never repeats a password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::*;
use crate::model::{
    AuditEntry, JobKind, JobState, KeyHash, KeyKind, KeyRecord, KeyState, OperatorMessage,
    RetiredSecret, Severity,
};
use crate::store::postgres::test_server::TestServer;
use crate::store::{Export, MemoryStore, MAX_PAGE};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 8, 31, 10, 0, 0).unwrap()
}

fn message(title: &str, acked: bool) -> OperatorMessage {
    OperatorMessage {
        id: 0,
        at: t0(),
        severity: Severity::Warning,
        title: title.into(),
        text: "details".into(),
        key_id: None,
        job_id: None,
        acknowledged_by: acked.then(|| "admin".to_owned()),
        acknowledged_at: acked.then(t0),
    }
}

/// Keys (one used, one disabled, one rotated with grace), more audit entries than
/// a batch, jobs in three states, messages (one acknowledged) and a retired secret.
fn populated() -> MemoryStore {
    let s = MemoryStore::new();
    let mut used = KeyRecord::new("alice", "used", &[1; 32], KeyKind::Generated, t0());
    used.usage.verifications = 42;
    used.usage.denied = 3;
    used.usage.routes.insert("/catalog".into(), 40);
    used.last_used_at = Some(t0() + Duration::minutes(5));
    let mut disabled = KeyRecord::new("bob", "off", &[2; 32], KeyKind::Generated, t0());
    disabled.state = KeyState::Disabled;
    let mut rotated = KeyRecord::new("alice", "rot", &[3; 32], KeyKind::Imported, t0());
    rotated.previous_hash = Some(hex::encode([4u8; 32]));
    rotated.previous_valid_until = Some(t0() + Duration::days(1));
    let mut scheduled = AlertJob::new(used.id, JobKind::Notification, "ops", t0(), t0());
    scheduled.run_at = t0() + Duration::days(3);
    let mut running = AlertJob::new(rotated.id, JobKind::Notification, "ops", t0(), t0());
    running.state = JobState::Running;
    running.attempts = 1;
    let mut done = AlertJob::new(disabled.id, JobKind::InactivityWarning, "mail", t0(), t0());
    done.state = JobState::Completed;
    done.attempts = 2;
    done.finished_at = Some(t0());
    let audit = (0..MAX_PAGE.min(BATCH + 50))
        .map(|i| {
            let key = [Some(used.id), Some(rotated.id), None][i % 3];
            AuditEntry::new(t0(), "admin", "edit", key, format!("entry {i}"))
        })
        .collect();
    s.commit(Change {
        put_keys: vec![used, disabled, rotated.clone()],
        audit,
        put_jobs: vec![scheduled, running, done],
        messages: vec![message("one", true), message("two", false)],
        retire: vec![Retire {
            hash: [4; 32],
            entry: RetiredSecret {
                key_id: rotated.id,
                owner: "alice".into(),
                restricted: true,
                at: t0(),
            },
            refresh_only: false,
        }],
        ..Change::default()
    })
    .unwrap();
    s
}

type Dump = (
    Vec<KeyRecord>,
    Vec<AuditEntry>,
    Vec<AlertJob>,
    Vec<OperatorMessage>,
    Vec<(KeyHash, RetiredSecret)>,
);

/// Everything a store holds, in a stable order.
fn dump(s: &dyn Storage) -> Dump {
    let jobs = s
        .jobs(&JobFilter {
            limit: MAX_PAGE,
            ..JobFilter::default()
        })
        .unwrap()
        .items;
    (
        s.export_keys(None, usize::MAX).unwrap(),
        s.export_audit(0, usize::MAX).unwrap(),
        jobs,
        s.export_messages(0, usize::MAX).unwrap(),
        s.export_retired(None, usize::MAX).unwrap(),
    )
}

#[test]
fn every_record_round_trips_through_redb_and_postgresql() {
    let source = populated();
    let expected = dump(&source);
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(&dir.path().join("a.redb")).unwrap();
    let report = migrate(&source, &redb, &Options::default()).unwrap();
    let counts = source.export_counts().unwrap();
    assert_eq!(
        report,
        Report {
            moved: counts,
            renumbered_messages: false
        }
    );
    assert_eq!(counts.audit, u64::try_from(BATCH + 50).unwrap());
    assert_eq!(dump(&redb), expected);
    // What the dispatcher and /metrics read from the target's own indexes.
    assert_eq!(redb.job_state_counts(), source.job_state_counts());
    assert_eq!(redb.running_jobs(chrono::Utc::now()).unwrap().len(), 1);
    assert_eq!(redb.next_due().unwrap(), Some(t0() + Duration::days(3)));
    assert!(redb.retired(&[4; 32]).unwrap().is_some());

    let back = MemoryStore::new();
    let server = TestServer::start();
    let pg = server
        .as_ref()
        .map(|s| PostgresStore::open(&s.database("migrated"), None).unwrap());
    let last: &dyn Storage = match &pg {
        Some(pg) => {
            migrate(&redb, pg, &Options::default()).unwrap();
            assert_eq!(dump(pg), expected);
            // PostgreSQL counts jobs in the background.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while pg.job_state_counts() != source.job_state_counts() {
                assert!(std::time::Instant::now() < deadline, "job counts differ");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            pg
        }
        None => &redb,
    };
    migrate(last, &back, &Options::default()).unwrap();
    assert_eq!(dump(&back), expected);
    // The owner indexes were filled as the records arrived.
    let owned = back
        .audit_page(
            &crate::store::AuditFilter {
                owner: Some("alice".into()),
                ..Default::default()
            },
            None,
            MAX_PAGE,
        )
        .unwrap();
    assert_eq!(
        owned.items.len(),
        expected.1.iter().filter(|e| e.key_id.is_some()).count()
    );
}

#[test]
fn a_non_empty_target_is_refused_unless_asked_and_ids_never_collide() {
    let source = populated();
    let target = MemoryStore::new();
    target
        .commit(Change {
            messages: vec![message("the target's own", false)],
            ..Change::default()
        })
        .unwrap();
    let before = target.export_counts().unwrap();
    let err = migrate(&source, &target, &Options::default()).unwrap_err();
    assert!(
        matches!(err, MigrateError::NotEmpty(c) if c == before),
        "{err}"
    );
    assert!(
        err.to_string().contains("--into-non-empty")
            && err.to_string().contains("1 operator messages"),
        "{err}"
    );
    assert_eq!(target.export_counts().unwrap(), before, "nothing written");

    let into = Options {
        into_non_empty: true,
    };
    let report = migrate(&source, &target, &into).unwrap();
    assert!(report.renumbered_messages);
    let titles: Vec<String> = target
        .export_messages(0, 10)
        .unwrap()
        .into_iter()
        .map(|m| format!("{}:{}", m.id, m.title))
        .collect();
    assert_eq!(titles, ["1:the target's own", "2:one", "3:two"]);

    // Again: every key is there already.
    let counts = target.export_counts().unwrap();
    let err = migrate(&source, &target, &into).unwrap_err();
    assert!(matches!(err, MigrateError::Collision(_)), "{err}");
    assert_eq!(target.export_counts().unwrap(), counts, "nothing written");
}

#[test]
fn endpoints_name_a_store_and_never_repeat_a_password() {
    assert_eq!(
        "redb:/var/lib/apikeyd/apikeyd.redb"
            .parse::<Endpoint>()
            .unwrap(),
        Endpoint::Redb("/var/lib/apikeyd/apikeyd.redb".into())
    );
    for given in [
        "postgres:host=db port=5432 dbname=apikeyd user=apikeyd",
        "postgres:postgresql://apikeyd@db/apikeyd",
        "postgresql://apikeyd@db/apikeyd",
    ] {
        let e: Endpoint = given.parse().unwrap();
        assert!(matches!(e, Endpoint::Postgres(_)), "{given}");
        assert!(e.to_string().starts_with("postgres:"), "{e}");
    }
    for (given, said) in [
        (
            "postgres:postgresql://apikeyd:hunter2@db/apikeyd",
            "must not hold the password",
        ),
        (
            "postgres:host=db password=hunter2",
            "must not hold the password",
        ),
        ("mysql://u:hunter2@db", "redb:PATH or postgres:URL"),
        ("redb:", "path"),
    ] {
        let err = given.parse::<Endpoint>().unwrap_err().to_string();
        assert!(err.contains(said), "{given}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn a_missing_redb_source_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing.redb");
    let err = open(&Endpoint::Redb(path.clone()), Side::Source, None, None).unwrap_err();
    assert!(matches!(err, MigrateError::NoSource(_)), "{err}");
    assert!(!path.exists());
}
