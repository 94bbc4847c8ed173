//! Regression tests for issue 9 (security review), items 2, 7 and 9 (quota; owners
//! without an address are in `address_tests`): the store and the in-memory index
//! always agree, whatever a caller does, and a purge or a quota never touches what is
//! not its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::task::Context;

use super::index::Index;
use super::secret::Secret;
use super::table::Hit;
use super::*;
use crate::model::*;
use crate::test_support::{admin, fixture_on_redb, Fixture};
use chrono::Duration;

pub(super) const CONFIG: &str = r#"
[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
DefaultAlertSource = "operator"
RetentionPeriod = "p1d"
[groups.Admin]
scopes = ["catalog:read", "catalog:sync"]
create_keys = true
manage_all_keys = true
[groups.Synchronizer]
scopes = ["catalog:read", "catalog:sync"]
create_keys = true
[users.admin]
groups = ["Admin"]
email = "admin@example.org"
[users.alice]
groups = ["Synchronizer"]
email = "alice@example.org"
"#;

// These tests compare the index with what a restart loads through redb's decoder,
// and cut changes off during a durable commit: they run on redb.
pub(super) fn fixture_with(text: &str) -> Fixture {
    fixture_on_redb(text)
}

fn fixture() -> Fixture {
    fixture_on_redb(CONFIG)
}

fn token(n: usize) -> String {
    format!("generic-token-{n:04}-0123456789abcdefghijklmnopqrstuv")
}

fn import_req(name: &str, secret: &str) -> CreateKey {
    CreateKey {
        user: Some("alice".into()),
        name: name.into(),
        secret: Some(Secret::new(secret.to_owned())),
        ..CreateKey::default()
    }
}

/// Poll `fut` up to `polls` times, `pause` apart (so the blocking pool gets on with
/// a commit the future started), then drop it: a client that hung up.
async fn cut_off<T>(fut: impl Future<Output = T>, polls: usize, pause: std::time::Duration) {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for _ in 0..polls {
        if fut.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        std::thread::sleep(pause);
    }
}

/// Wait until no change is in flight: the writer lock is free, and anything a
/// dropped caller left on the blocking pool has landed.
async fn settle(keys: &Keys) {
    drop(keys.lock_writer().await);
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    drop(keys.lock_writer().await);
}

/// The index holds exactly what a restart would build from the store, and every
/// secret in `secrets` verifies the way the stored record says it should.
fn assert_consistent(keys: &Keys, secrets: &[String], context: &str) {
    // Scopes in the index are the effective ones: what the owner's groups grant now.
    let mut fresh = Index {
        grants: super::grants_of(&keys.settings().directory),
        ..Index::default()
    };
    keys.store.load_keys(&mut |row| fresh.load(row)).unwrap();
    let index = keys.index.read();
    let mut ids: Vec<Uuid> = index.by_id.keys().copied().collect();
    let mut stored: Vec<Uuid> = fresh.by_id.keys().copied().collect();
    ids.sort();
    stored.sort();
    assert_eq!(ids, stored, "{context}: keys in the index vs the store");
    for live in index.all() {
        let want = fresh.get(&live.id).unwrap();
        let what = format!("{context}: key {} ({})", live.id, live.name);
        assert_eq!(live.life, want.life, "{what}: state and times");
        assert_eq!(live.hash, want.hash, "{what}: secret");
        assert_eq!(live.previous(), want.previous(), "{what}: previous secret");
        assert_eq!(live.name, want.name, "{what}: name");
        assert_eq!(live.scopes, want.scopes, "{what}: scopes");
        assert_eq!(live.ip_filters(), want.ip_filters(), "{what}: IP filters");
        assert_eq!(
            index.slot(live).is_some(),
            live.life.state != KeyState::Removed,
            "{what}: verification slot"
        );
    }
    for (owner, n) in &fresh.owned {
        assert_eq!(index.owned_by(owner), *n, "{context}: keys of {owner}");
    }
    drop(index);
    let now = keys.clock.now();
    let policy = keys.settings().policy.clone();
    for s in secrets {
        let hash = keys.hasher.hash(s);
        let hex = hex::encode(hash);
        let fresh_slot = fresh.table.get(&hash);
        let expected = match fresh_slot {
            None => Code::NotFound,
            Some(Hit::Current(slot)) => match slot.status(&policy, now) {
                Status::Active if !fresh.admits(slot, None) => Code::IpNotAllowed,
                Status::Active => Code::Valid,
                Status::Disabled => Code::Disabled,
                Status::Removed => Code::NotFound,
                Status::Expired => Code::Expired,
                Status::Inactive => Code::Inactive,
            },
            Some(Hit::Previous { until_ms, .. }) if now.timestamp_millis() < until_ms => {
                Code::Valid
            }
            Some(Hit::Previous { .. }) => Code::NotFound,
        };
        assert_eq!(
            keys.verify(s, None, None).code,
            expected,
            "{context}: verification of the secret with hash {hex}"
        );
    }
}

const PAUSES: [u64; 5] = [0, 50, 300, 1000, 3000];

/// Every admin change, cut off by its caller at many points, leaves the store and
/// the index in agreement.
///
/// Bug (issue 9, item 2): a change awaited the redb commit and only then updated the
/// in-memory index. A client that hung up during the commit dropped the handler's
/// future: the database (and the audit trail) said "disabled", "removed" or
/// "rotated" while verification went on answering as before until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_cut_off_by_its_caller_is_applied_to_store_and_index_or_not_at_all() {
    let f = fixture();
    let keys = &f.keys;
    let mut secrets = Vec::new();
    let mut n = 0;
    for polls in 1..=3 {
        for pause_us in PAUSES {
            let pause = std::time::Duration::from_micros(pause_us);
            let at = format!("{polls} poll(s) {pause_us}µs apart");
            // Each change on a key of its own, made in full first.
            let mut ids = Vec::new();
            for op in 0..9 {
                n += 1;
                let s = token(n);
                let view = keys
                    .import(&admin(), import_req(&format!("k{n}-{op}"), &s))
                    .await
                    .unwrap();
                secrets.push(s);
                ids.push(view.id.to_string());
            }
            let a = admin();
            cut_off(keys.set_enabled(&a, &ids[0], false), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("disable, {at}"));
            cut_off(keys.remove(&a, &ids[1]), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("remove, {at}"));
            cut_off(keys.rotate(&a, &ids[2], None), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("rotate, {at}"));
            cut_off(keys.rotate(&a, &ids[3], Some("pt1h")), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("rotate with grace, {at}"));
            let edit = EditKey {
                name: Some(format!("renamed-{n}")),
                ip: Some(vec!["10.0.0.0/8".into()]),
                ..EditKey::default()
            };
            cut_off(keys.edit(&a, &ids[4], edit), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("edit, {at}"));
            n += 1;
            let s = token(n);
            cut_off(
                keys.import(&a, import_req(&format!("new-{n}"), &s)),
                polls,
                pause,
            )
            .await;
            secrets.push(s);
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("import, {at}"));
            let mut create = import_req(&format!("created-{n}"), "");
            create.secret = None;
            cut_off(keys.create(&a, create), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("create, {at}"));
            let notify = NotifyRequest {
                before: Some("p1d".into()),
                source: Some("operator".into()),
                ..NotifyRequest::default()
            };
            cut_off(keys.notify(&a, &ids[5], notify), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("notify, {at}"));
            keys.set_enabled(&a, &ids[6], false).await.unwrap();
            cut_off(keys.set_enabled(&a, &ids[6], true), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("enable, {at}"));
            // The alerts side: a key's job and its notification change together.
            for (id, delete) in [(&ids[7], false), (&ids[8], true)] {
                let job = keys.show(&a, id).await.unwrap().alert_job.unwrap();
                cut_off(
                    f.alerts.cancel_or_delete_job(&a, &job.to_string(), delete),
                    polls,
                    pause,
                )
                .await;
                settle(keys).await;
                let what = if delete { "job delete" } else { "job cancel" };
                assert_consistent(keys, &secrets, &format!("{what}, {at}"));
                let rec = keys
                    .store
                    .key(Uuid::parse_str(id).unwrap())
                    .unwrap()
                    .unwrap();
                let stored = keys.store.job(job).unwrap();
                let done = if delete {
                    stored.is_none()
                } else {
                    stored.unwrap().state == crate::model::job::JobState::Canceled
                };
                assert_eq!(
                    rec.alerting.notification.is_none(),
                    done,
                    "{what}, {at}: the key's notification and its job"
                );
            }
        }
    }
}

/// Maintenance changes (the purge, the expiry sweep) cut off by their caller leave
/// the store and the index in agreement too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_cut_off_by_its_caller_leaves_store_and_index_in_agreement() {
    for polls in 1..=3 {
        for pause_us in PAUSES {
            let f = fixture();
            let keys = &f.keys;
            let pause = std::time::Duration::from_micros(pause_us);
            let at = format!("{polls} poll(s) {pause_us}µs apart");
            let mut secrets = Vec::new();
            for n in 0..4 {
                let s = token(n);
                let mut r = import_req(&format!("k{n}"), &s);
                r.expires_in = Some("p1d".into());
                let v = keys.import(&admin(), r).await.unwrap();
                if n % 2 == 0 {
                    keys.remove(&admin(), &v.id.to_string()).await.unwrap();
                }
                secrets.push(s);
            }
            f.clock.advance(Duration::days(3));
            cut_off(maintenance::sweep_expired(keys), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("sweep, {at}"));
            cut_off(maintenance::purge(keys), polls, pause).await;
            settle(keys).await;
            assert_consistent(keys, &secrets, &format!("purge, {at}"));
        }
    }
}

/// A failed commit publishes nothing: the change is neither saved nor seen.
#[tokio::test]
async fn a_record_the_index_cannot_hold_is_refused_before_it_is_saved() {
    let f = fixture();
    let keys = &f.keys;
    let s = token(1);
    let view = keys.import(&admin(), import_req("k", &s)).await.unwrap();
    let live = keys.live(view.id).unwrap();
    let mut rec = keys.record(&live).await.unwrap();
    rec.state = KeyState::Disabled;
    rec.hash = "not hex".into();
    let writer = keys.lock_writer().await;
    let audit = AuditEntry::new(
        keys.clock().now(),
        "admin",
        "disable",
        Some(rec.id),
        String::new(),
    );
    let change = crate::store::Change {
        put_keys: vec![rec],
        audit: vec![audit],
        ..Default::default()
    };
    assert!(keys.commit(writer, change).await.is_err());
    assert_eq!(
        keys.store.key(view.id).unwrap().unwrap().state,
        KeyState::Enabled
    );
    assert_consistent(keys, &[s], "refused record");
}

/// A purge removes only what belongs to the purged record.
///
/// Bug (issue 9, item 7): a removed key gives up its secret, so the same imported
/// token can be imported again as a new key. Purging the old record later took the
/// secret's verification slot out by hash, which was now the new key's: the new key
/// answered NOT_FOUND while `key list` showed it active.
#[tokio::test]
async fn purging_a_removed_key_leaves_a_new_key_with_the_same_token_working() {
    let f = fixture();
    let keys = &f.keys;
    let s = token(7);
    let old = keys
        .import(&admin(), import_req("first", &s))
        .await
        .unwrap();
    keys.remove(&admin(), &old.id.to_string()).await.unwrap();
    f.clock.advance(Duration::hours(1));
    let new = keys
        .import(&admin(), import_req("second", &s))
        .await
        .unwrap();
    assert_eq!(keys.verify(&s, None, None).code, Code::Valid);
    f.clock.advance(Duration::days(2));
    assert_eq!(maintenance::purge(keys).await.unwrap(), 1);
    assert!(keys.live(old.id).is_none());
    assert_eq!(keys.verify(&s, None, None).code, Code::Valid);
    let v = keys.show(&admin(), &new.id.to_string()).await.unwrap();
    assert_eq!(v.status, "active");
    assert_consistent(keys, &[s], "after the purge");
}

/// Neither a purge nor any other change of a key touches a slot or a name that is
/// now another key's (the class of item 7: every removal by hash checks its owner).
#[tokio::test]
async fn forgetting_a_key_only_takes_out_its_own_slots() {
    let f = fixture();
    let keys = &f.keys;
    let a = token(1);
    let b = token(2);
    let old = keys.import(&admin(), import_req("same", &a)).await.unwrap();
    keys.remove(&admin(), &old.id.to_string()).await.unwrap();
    let new = keys.import(&admin(), import_req("same", &a)).await.unwrap();
    let other = keys
        .import(&admin(), import_req("other", &b))
        .await
        .unwrap();
    // A stale entry of the removed key, published again (as a maintenance pass
    // might), must not take the new key's slot or its name out.
    let rec = keys.store.key(old.id).unwrap().unwrap();
    keys.index
        .write()
        .publish(KeyRow::from_record(&rec).unwrap());
    assert_eq!(keys.verify(&a, None, None).code, Code::Valid);
    assert!(matches!(
        keys.edit(
            &admin(),
            &other.id.to_string(),
            EditKey {
                name: Some("same".into()),
                ..EditKey::default()
            }
        )
        .await,
        Err(KeyError::Taken { field: "name", .. })
    ));
    f.clock.advance(Duration::days(2));
    assert_eq!(maintenance::purge(keys).await.unwrap(), 1);
    assert_eq!(keys.verify(&a, None, None).code, Code::Valid);
    assert_eq!(keys.verify(&b, None, None).code, Code::Valid);
    assert_eq!(keys.live(new.id).unwrap().name.as_ref(), "same");
    assert_consistent(keys, &[a, b], "after the purge");
}

// ---------------------------------------------------------------- key quota

fn with_quota(n: u32) -> String {
    CONFIG.replace("[ApiKey]\n", &format!("[ApiKey]\nMaxKeysPerUser = {n}\n"))
}

pub(super) fn create_req(user: &str, name: &str) -> CreateKey {
    CreateKey {
        user: Some(user.into()),
        name: name.into(),
        ..CreateKey::default()
    }
}

fn is_quota(e: &KeyError) -> bool {
    matches!(e, KeyError::Conflict(m) if m.contains("MaxKeysPerUser") && m.contains("3 keys"))
}

/// `[ApiKey] MaxKeysPerUser` bounds the keys one user holds (issue 9, item 9: work
/// bounded by the caller): create and import past it are refused with a message
/// naming the limit and change nothing; removed keys do not count; other users are
/// not affected.
#[tokio::test]
async fn the_key_quota_is_enforced_on_create_and_import() {
    let f = fixture_with(&with_quota(3));
    let keys = &f.keys;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            keys.create(&admin(), create_req("alice", &format!("k{i}")))
                .await
                .unwrap()
                .view
                .id,
        );
    }
    let before = keys.len();
    let e = keys
        .create(&admin(), create_req("alice", "k3"))
        .await
        .unwrap_err();
    assert!(is_quota(&e), "{e}");
    let e = keys
        .import(&admin(), import_req("k3", &token(3)))
        .await
        .unwrap_err();
    assert!(is_quota(&e), "{e}");
    assert_eq!(keys.len(), before, "a refused create changes nothing");
    // Another user has a quota of their own.
    keys.create(&admin(), create_req("admin", "mine"))
        .await
        .unwrap();
    // A removed key frees its place.
    keys.remove(&admin(), &ids[0].to_string()).await.unwrap();
    keys.create(&admin(), create_req("alice", "k3"))
        .await
        .unwrap();
    let e = keys
        .create(&admin(), create_req("alice", "k4"))
        .await
        .unwrap_err();
    assert!(is_quota(&e), "{e}");
    // The count survives a restart (it is rebuilt from the store).
    assert_consistent(keys, &[], "quota");
}

/// Concurrent creates cannot take a user past the quota: it is checked under the
/// writer lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_cannot_pass_the_key_quota() {
    let f = fixture_with(&with_quota(3));
    let keys = &f.keys;
    let a = admin();
    let c = |n: &str| keys.create(&a, create_req("alice", n));
    let (r1, r2, r3, r4, r5, r6) = tokio::join!(c("a"), c("b"), c("c"), c("d"), c("e"), c("f"));
    let results = [r1, r2, r3, r4, r5, r6];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(is_quota));
    assert_eq!(keys.index.read().owned_by("alice"), 3);
}

#[test]
fn max_keys_per_user_defaults_to_1000_and_0_lifts_it() {
    let parse = |t: &str| crate::config::from_text(t);
    assert_eq!(parse(CONFIG).unwrap().policy.max_keys_per_user, Some(1000));
    assert_eq!(
        parse(&with_quota(0)).unwrap().policy.max_keys_per_user,
        None
    );
    let e = parse(&CONFIG.replace("[ApiKey]\n", "[ApiKey]\nMaxKeysPerUser = -1\n")).unwrap_err();
    assert!(e.to_string().contains("ApiKey.MaxKeysPerUser"), "{e}");
}

// ---------------------------------------------------------------- purge

/// Regression (review F1, at purge): an expired key still holds its imported token
/// until it is purged; the purge then freed the token, so an owner could import it
/// again without the IP filters an admin had put on the key. The purge retires it.
#[tokio::test]
async fn a_purge_retires_the_token_an_expired_key_still_held() {
    let f = fixture();
    let keys = &f.keys;
    let alice = Actor {
        name: "alice".into(),
        admin: false,
    };
    let (restricted, own) = (token(11), token(12));
    for (name, s) in [("restricted", &restricted), ("own", &own)] {
        let mut r = import_req(name, s);
        r.expires_in = Some("pt10m".into());
        let v = keys.import(&alice, r).await.unwrap();
        if name == "restricted" {
            let ip = EditKey {
                ip: Some(vec!["10.9.9.9/32".into()]),
                ..EditKey::default()
            };
            keys.edit(&admin(), &v.id.to_string(), ip).await.unwrap();
        }
    }
    f.clock.advance(Duration::days(2));
    assert_eq!(maintenance::purge(keys).await.unwrap(), 2);
    let e = keys
        .import(&alice, import_req("again", &restricted))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KeyError::Conflict(m) if m.contains("removed or rotated")),
        "{e:?}"
    );
    assert_eq!(keys.verify(&restricted, None, None).code, Code::NotFound);
    keys.import(&alice, import_req("own-again", &own))
        .await
        .unwrap();
}
