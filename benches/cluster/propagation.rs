//! Part 1: revocation propagation. Three nodes (each a `Keys` over its own
//! `PostgresStore`: own pool, own listening session) follow each other as the
//! daemon has them follow (`keys::follow::follow`). Each round disables a key on
//! one node through `Keys::set_enabled` (what the admin API calls) and polls the
//! other two nodes' `Keys::verify` every ~50 µs until both refuse it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::keys::model::Code;
use apikeyd::keys::secret::KeyHasher;
use apikeyd::keys::Keys;
use apikeyd::store::{PostgresStore, Storage};
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::create::{admin, create_one, keys_for_creations};

/// Milliseconds of each round.
#[derive(Default)]
pub(crate) struct Rounds {
    /// The disabling call (commit, change log, notification), until it answered.
    pub(crate) call: Vec<f64>,
    /// From the call's start until both other nodes refuse the key.
    pub(crate) both_from_request: Vec<f64>,
    /// From the call's answer until both other nodes refuse the key.
    pub(crate) both_from_answer: Vec<f64>,
}

pub(crate) struct Propagation {
    pub(crate) notify: Rounds,
    pub(crate) polling: Rounds,
    pub(crate) poll: Duration,
}

/// A node: `Keys` over its own connection to the database at `url`.
fn open_node(url: &str, hasher: &KeyHasher) -> Arc<Keys> {
    let store: Arc<dyn Storage> =
        Arc::new(PostgresStore::open(url, None).expect("connect to PostgreSQL"));
    keys_for_creations(store, hasher)
}

/// What `follow` does when the store gives no change signal (a server without
/// LISTEN/NOTIFY): read the change log every `poll`.
async fn poll_only(keys: Arc<Keys>, poll: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = keys.catch_up().await {
            eprintln!("[propagation] catch_up failed: {e}");
        }
    }
}

fn create_keys(rt: &Runtime, on: &Keys, n: usize, tag: &str) -> Vec<(String, String)> {
    rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let issued = create_one(on, format!("{tag}{i}")).await;
            out.push((issued.view.id.to_string(), issued.key.expose().to_owned()));
        }
        out
    })
}

fn wait_valid_everywhere(nodes: &[Arc<Keys>], keys: &[(String, String)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes.iter().all(|n| {
        keys.iter()
            .all(|(_, s)| n.verify(s, None, None).code == Code::Valid)
    }) {
        assert!(
            Instant::now() < deadline,
            "the keys did not reach every node"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Disable each of `keys` in turn, on nodes 0, 1, 2, 0, ..., and time until the
/// other two refuse it.
///
/// Rounds start 5 ms + a random part of `spread` after the previous one ended: with
/// polling only, a round ends at a poll, so the spread must cover the poll interval
/// or every disable would land just after a poll.
fn rounds(
    rt: &Runtime,
    nodes: &[Arc<Keys>],
    keys: &[(String, String)],
    spread: Duration,
    label: &str,
) -> Rounds {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let spread_us = u64::try_from(spread.as_micros()).unwrap_or(u64::MAX).max(1);
    let mut out = Rounds::default();
    for (i, (id, secret)) in keys.iter().enumerate() {
        std::thread::sleep(Duration::from_micros(5_000 + rng.gen_range(0..spread_us)));
        let on = i % nodes.len();
        let others: Vec<&Arc<Keys>> = (0..nodes.len())
            .filter(|&j| j != on)
            .map(|j| &nodes[j])
            .collect();
        let t0 = Instant::now();
        rt.block_on(nodes[on].set_enabled(&admin(), id, false))
            .expect("disable");
        let t1 = Instant::now();
        let mut seen: Vec<Option<Instant>> = vec![None; others.len()];
        while seen.iter().any(Option::is_none) {
            for (k, node) in others.iter().enumerate() {
                if seen[k].is_none() && node.verify(secret, None, None).code != Code::Valid {
                    seen[k] = Some(Instant::now());
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "a disabled key was still accepted after 30 s"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        let last = seen.iter().flatten().max().copied().unwrap_or(t1);
        out.call.push(ms(t1 - t0));
        out.both_from_request.push(ms(last - t0));
        out.both_from_answer
            .push(ms(last.saturating_duration_since(t1)));
        if (i + 1) % 50 == 0 {
            eprintln!("[propagation {label}] {}/{} rounds", i + 1, keys.len());
        }
    }
    out
}

pub(crate) fn bench_propagation(
    url: &str,
    hasher: &KeyHasher,
    n_rounds: usize,
    poll_rounds: usize,
    poll: Duration,
) -> Propagation {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    eprintln!("[propagation] three nodes ...");
    let nodes: Vec<Arc<Keys>> = (0..3).map(|_| open_node(url, hasher)).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let followers: Vec<JoinHandle<()>> = nodes
        .iter()
        .map(|k| {
            rt.spawn(apikeyd::keys::follow::follow(
                k.clone(),
                poll,
                stop_rx.clone(),
            ))
        })
        .collect();

    let notify_keys = create_keys(&rt, &nodes[0], n_rounds, "n");
    let poll_keys = create_keys(&rt, &nodes[0], poll_rounds, "p");
    wait_valid_everywhere(&nodes, &notify_keys);
    wait_valid_everywhere(&nodes, &poll_keys);

    eprintln!("[propagation] {n_rounds} rounds, NOTIFY and polling every {poll:?} ...");
    let notify = rounds(
        &rt,
        &nodes,
        &notify_keys,
        Duration::from_millis(20),
        "notify",
    );

    let _ = stop_tx.send(true);
    rt.block_on(async {
        for f in followers {
            let _ = f.await;
        }
    });
    eprintln!("[propagation] {poll_rounds} rounds, polling every {poll:?} only ...");
    let (stop_tx, stop_rx) = watch::channel(false);
    let pollers: Vec<JoinHandle<()>> = nodes
        .iter()
        .map(|k| rt.spawn(poll_only(k.clone(), poll, stop_rx.clone())))
        .collect();
    let polling = rounds(&rt, &nodes, &poll_keys, poll, "polling");
    let mut sorted = polling.both_from_request.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!("[propagation polling] ms, sorted: {sorted:.0?}");
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for p in pollers {
            let _ = p.await;
        }
    });
    drop(nodes);
    rt.shutdown_timeout(Duration::from_secs(5));
    Propagation {
        notify,
        polling,
        poll,
    }
}
