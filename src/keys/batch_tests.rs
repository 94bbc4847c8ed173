//! Group commit of creations (`batch.rs`): many creations at once are all written
//! and each is answered after its write; one the store refuses fails alone and
//! leaves the index; a change after them sees them in the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::model::Code;
use crate::store::{MemoryStore, Storage};
use crate::test_support::{admin, fixture_on, fixture_on_redb, req, CONFIG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_are_all_durable_and_verify() {
    let f = fixture_on_redb(CONFIG);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let keys = f.keys.clone();
        tasks.spawn(async move {
            let mut issued = Vec::new();
            for i in 0..25 {
                let key = keys
                    .create(&admin(), req("alice", &format!("k{t}-{i}")))
                    .await
                    .unwrap();
                issued.push(key);
            }
            issued
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    assert_eq!(all.len(), 200);
    // Answered only once written: every answered key is in the store, with its
    // audit entry, and verifies.
    let ids: Vec<_> = all.iter().map(|k| k.view.id).collect();
    assert_eq!(f.store.keys(&ids).unwrap().len(), 200);
    assert_eq!(f.store.key_count().unwrap(), 200);
    for k in &all {
        assert_eq!(
            f.keys.verify(k.key.expose(), None, None).code,
            Code::Valid,
            "{}",
            k.view.name
        );
    }
    // A change right after reads the store, which shows the key.
    let last = all.last().unwrap().view.id.to_string();
    f.keys.set_enabled(&admin(), &last, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_the_store_refuses_fails_alone_and_leaves_the_index() {
    let memory = Arc::new(MemoryStore::new());
    memory.refuse_names.lock().push("bad".into());
    let f = fixture_on(memory.clone() as Arc<dyn Storage>, None, CONFIG);
    let mut tasks = tokio::task::JoinSet::new();
    for name in ["ok-1", "bad", "ok-2", "ok-3"] {
        let keys = f.keys.clone();
        tasks.spawn(async move { (name, keys.create(&admin(), req("alice", name)).await) });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        let (name, outcome) = done.unwrap();
        assert_eq!(
            outcome.is_err(),
            name == "bad",
            "{name}: {:?}",
            outcome.err()
        );
        answered += 1;
    }
    assert_eq!(answered, 4);
    assert_eq!(f.store.key_count().unwrap(), 3);
    assert_eq!(f.keys.len(), 3, "the refused key left the index");
    // Its name is free again once the store takes it.
    memory.refuse_names.lock().clear();
    f.keys.create(&admin(), req("alice", "bad")).await.unwrap();
    assert_eq!(f.store.key_count().unwrap(), 4);
}
