//! Part 1: build the N-key store and open `Keys` over it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::clock::{SharedClock, SystemClock};
use apikeyd::config::Period;
use apikeyd::keys::model::KeyRecord;
use apikeyd::keys::secret::{self, KeyHash, KeyHasher};
use apikeyd::keys::Keys;
use apikeyd::store::{Change, RedbStore, Storage};
use chrono::Utc;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::fixtures::{plain_settings, record, record_template};
use crate::measure::secs;

pub(crate) const BATCH: usize = 20_000;

pub(crate) struct Built {
    pub(crate) n: usize,
    pub(crate) keys: Arc<Keys>,
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) hasher: KeyHasher,
    /// Clear secrets of a spread-out, shuffled sample of the stored keys.
    pub(crate) sample: Vec<String>,
    /// The keyed hashes of all N keys, for the `HashMap` baseline.
    pub(crate) hashes: Vec<KeyHash>,
    pub(crate) gen_threads: usize,
    pub(crate) build_wall: Duration,
    pub(crate) commit_time: Duration,
    pub(crate) load_time: Duration,
}

struct GenBatch {
    index: usize,
    recs: Vec<KeyRecord>,
    pub(crate) hashes: Vec<KeyHash>,
    pub(crate) sample: Vec<String>,
}

pub(crate) fn build(dir: &Path, n: usize, sample_size: usize, hasher: &KeyHasher) -> Built {
    let store: Arc<dyn Storage> =
        Arc::new(RedbStore::open(&dir.join("keys.redb")).expect("open store"));
    let now = Utc::now();
    let expires = Period::parse("p6m")
        .expect("period")
        .add_to(now)
        .expect("expiry")
        - chrono::Duration::hours(1);
    let template = record_template(now, expires);
    let stride = (n / sample_size.max(1)).max(1);
    let batches = n.div_ceil(BATCH);
    let gen_threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .max(1);

    let mut hashes = vec![[0u8; 32]; n];
    let mut sample = Vec::with_capacity(sample_size.min(n));
    let mut commit_time = Duration::ZERO;
    let started = Instant::now();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<GenBatch>(gen_threads * 2);
        for t in 0..gen_threads {
            let tx = tx.clone();
            let template = &template;
            std::thread::Builder::new()
                .name(format!("keygen-{t}"))
                .spawn_scoped(s, move || {
                    for b in (t..batches).step_by(gen_threads) {
                        let lo = b * BATCH;
                        let hi = (lo + BATCH).min(n);
                        let mut g = GenBatch {
                            index: b,
                            recs: Vec::with_capacity(hi - lo),
                            hashes: Vec::with_capacity(hi - lo),
                            sample: Vec::new(),
                        };
                        for i in lo..hi {
                            let secret = secret::generate();
                            let h = hasher.hash(secret.expose());
                            g.recs.push(record(template, i, &h));
                            g.hashes.push(h);
                            if i % stride == 0 {
                                g.sample.push(secret.expose().to_owned());
                            }
                        }
                        tx.send(g).expect("send batch");
                    }
                })
                .expect("spawn generator");
        }
        drop(tx);
        let mut done = 0usize;
        for g in rx {
            let lo = g.index * BATCH;
            hashes[lo..lo + g.hashes.len()].copy_from_slice(&g.hashes);
            sample.extend(g.sample);
            let rows = g.recs.len();
            let t = Instant::now();
            store
                .commit(Change {
                    put_keys: g.recs,
                    ..Change::default()
                })
                .expect("commit batch");
            commit_time += t.elapsed();
            done += rows;
            if done % 100_000 < rows || done == n {
                eprintln!(
                    "[build] {done}/{n} keys written ({:.1} s, commits {:.1} s)",
                    secs(started.elapsed()),
                    secs(commit_time)
                );
            }
        }
    });
    let build_wall = started.elapsed();
    sample.truncate(sample_size);
    sample.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));

    eprintln!("[load] Keys::open over {n} keys ...");
    let t = Instant::now();
    let keys = Keys::open(
        store.clone(),
        hasher.clone(),
        Arc::new(SystemClock) as SharedClock,
        plain_settings(),
    )
    .expect("Keys::open");
    let load_time = t.elapsed();
    assert_eq!(keys.len(), n);
    eprintln!("[load] done in {:.2} s", secs(load_time));

    Built {
        n,
        keys: Arc::new(keys),
        store,
        hasher: hasher.clone(),
        sample,
        hashes,
        gen_threads,
        build_wall,
        commit_time,
        load_time,
    }
}
