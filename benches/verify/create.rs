//! Part 3: `Keys::create`, one durable redb commit each. The cluster benchmark
//! (`benches/cluster.rs`) times the same creations on PostgreSQL with [`rates`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::clock::{SharedClock, SystemClock};
use apikeyd::keys::secret::KeyHasher;
use apikeyd::keys::{Actor, CreateKey, Issued, Keys};
use apikeyd::store::{RedbStore, Storage};

use crate::fixtures::alice_settings;
use crate::measure::{nanos, Stats};

/// Creations on one store: one client, then several at once.
pub(crate) struct Rates {
    pub(crate) seq_n: usize,
    pub(crate) seq_time: Duration,
    pub(crate) seq_lat: Stats,
    pub(crate) conc_n: usize,
    pub(crate) conc_tasks: usize,
    pub(crate) conc_time: Duration,
}

pub(crate) struct CreateFigures {
    pub(crate) rates: Rates,
    pub(crate) big_n: usize,
    pub(crate) big_keys: usize,
    pub(crate) big_time: Duration,
    pub(crate) big_lat: Option<Stats>,
}

/// The admin the benchmarks act as.
pub(crate) fn admin() -> Actor {
    Actor {
        name: "admin".into(),
        admin: true,
    }
}

/// A key for alice named `name`, created by the admin.
pub(crate) async fn create_one(keys: &Keys, name: String) -> Issued {
    keys.create(
        &admin(),
        CreateKey {
            user: Some("alice".into()),
            name,
            ..Default::default()
        },
    )
    .await
    .expect("create")
}

async fn create_seq(keys: &Keys, n: usize, prefix: &str) -> (Duration, Vec<u64>) {
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let c = Instant::now();
        create_one(keys, format!("{prefix}{i}")).await;
        lat.push(nanos(c.elapsed()));
    }
    (t.elapsed(), lat)
}

/// `Keys` over `store` with the settings the creations need (alice may create keys).
pub(crate) fn keys_for_creations(store: Arc<dyn Storage>, hasher: &KeyHasher) -> Arc<Keys> {
    Arc::new(
        Keys::open(
            store,
            hasher.clone(),
            Arc::new(SystemClock) as SharedClock,
            alice_settings(),
        )
        .expect("open"),
    )
}

/// After 20 warm-up creations: `n` creations by one client, then about `n` by
/// `tasks` clients at once. Names start with `tag`, so one store can be timed again.
pub(crate) async fn rates(keys: &Arc<Keys>, n: usize, tasks: usize, tag: &str) -> Rates {
    eprintln!("[create{tag}] warm-up 20 ...");
    create_seq(keys, 20, &format!("{tag}w")).await;

    eprintln!("[create{tag}] {n} sequential ...");
    let (seq_time, lat) = create_seq(keys, n, &format!("{tag}k")).await;

    let per = n.div_ceil(tasks);
    eprintln!(
        "[create{tag}] {} with {tasks} concurrent tasks ...",
        per * tasks
    );
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let keys = keys.clone();
        let prefix = format!("{tag}c{task}-");
        set.spawn(async move { create_seq(&keys, per, &prefix).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("create task");
    }
    Rates {
        seq_n: n,
        seq_time,
        seq_lat: Stats::of(lat),
        conc_n: per * tasks,
        conc_tasks: tasks,
        conc_time: t.elapsed(),
    }
}

pub(crate) fn bench_create(
    dir: &Path,
    hasher: &KeyHasher,
    big: &Keys,
    seq_n: usize,
    big_n: usize,
) -> CreateFigures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("create runtime");
    let store: Arc<dyn Storage> =
        Arc::new(RedbStore::open(&dir.join("create.redb")).expect("open create store"));
    let keys = keys_for_creations(store, hasher);
    rt.block_on(async {
        let rates = rates(&keys, seq_n, 8, "").await;

        let big_keys = big.len();
        let (big_time, big_lat) = if big_n > 0 {
            eprintln!("[create] {big_n} sequential in the {big_keys}-key database ...");
            big.reload(alice_settings());
            let (d, lat) = create_seq(big, big_n, "big").await;
            (d, Some(Stats::of(lat)))
        } else {
            (Duration::ZERO, None)
        };

        CreateFigures {
            rates,
            big_n,
            big_keys,
            big_time,
            big_lat,
        }
    })
}
