//! Parts 3 and 4: a node's cold start from PostgreSQL at N keys against redb's,
//! where that time goes, and verification on `Keys` loaded from each store.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::clock::{SharedClock, SystemClock};
use apikeyd::keys::model::{Code, KeyRecord};
use apikeyd::keys::Keys;
use apikeyd::model::KeyRow;
use apikeyd::store::{PostgresStore, Storage};
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Row};

use crate::build::Built;
use crate::fixtures::{plain_settings, SCOPE};
use crate::measure::{median_f64, secs, text_of, time_hot, Stats};

pub(crate) struct Seeded {
    pub(crate) time: Duration,
}

/// Records read from the built redb store a batch at a time.
const SEED_BATCH: usize = 20_000;

/// Copy the built redb database's keys into the empty PostgreSQL database at `url`:
/// the schema from `PostgresStore::open`, then one multi-row `INSERT` per batch.
/// `apikeyd migrate`'s code writes a row per statement (a few thousand keys/s
/// here, minutes for 1M keys), and a cold start reads only the `keys` table.
pub(crate) fn seed_postgres(built: &Built, url: &str) -> Seeded {
    drop(PostgresStore::open(url, None).expect("create the schema"));
    eprintln!("[seed] {} keys redb -> PostgreSQL ...", built.n);
    let t = Instant::now();
    with_client(url, async |client| {
        let mut after = None;
        let mut done = 0;
        loop {
            let recs = built
                .store
                .export_keys(after, SEED_BATCH)
                .expect("read redb");
            let Some(last) = recs.last() else { break };
            after = Some(last.id);
            let ids: Vec<uuid::Uuid> = recs.iter().map(|r| r.id).collect();
            let owners: Vec<&str> = recs.iter().map(|r| r.owner.as_str()).collect();
            let records: Vec<Json<&KeyRecord>> = recs.iter().map(Json).collect();
            client
                .execute(
                    "INSERT INTO keys (id, owner, record)
                     SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[])",
                    &[&ids, &owners, &records],
                )
                .await
                .expect("insert");
            done += recs.len();
            if done % 200_000 < recs.len() {
                eprintln!("[seed] {done} ({:.1} s)", secs(t.elapsed()));
            }
        }
        assert_eq!(done, built.n);
    });
    let time = t.elapsed();
    eprintln!("[seed] done in {:.1} s", secs(time));
    Seeded { time }
}

fn open_keys(store: Arc<dyn Storage>, built: &Built) -> Keys {
    Keys::open(
        store,
        built.hasher.clone(),
        Arc::new(SystemClock) as SharedClock,
        plain_settings(),
    )
    .expect("Keys::open")
}

pub(crate) struct ColdStart {
    /// Seconds of each `Keys::open` over the open redb store.
    pub(crate) redb: Vec<f64>,
    /// Seconds of each `PostgresStore::connect` (pool, schema check, listener).
    pub(crate) pg_connect: Vec<f64>,
    /// Seconds of each `Keys::open` over it.
    pub(crate) pg_open: Vec<f64>,
}

/// `rounds` cold starts of each, alternating.
pub(crate) fn cold_start(built: &Built, url: &str, rounds: usize) -> ColdStart {
    let mut out = ColdStart {
        redb: Vec::new(),
        pg_connect: Vec::new(),
        pg_open: Vec::new(),
    };
    for r in 0..rounds {
        let t = Instant::now();
        let keys = open_keys(built.store.clone(), built);
        out.redb.push(secs(t.elapsed()));
        assert_eq!(keys.len(), built.n);
        drop(keys);

        let t = Instant::now();
        let store: Arc<dyn Storage> = Arc::new(PostgresStore::open(url, None).expect("open"));
        out.pg_connect.push(secs(t.elapsed()));
        let t = Instant::now();
        let keys = open_keys(store, built);
        out.pg_open.push(secs(t.elapsed()));
        assert_eq!(keys.len(), built.n);
        drop(keys);
        eprintln!(
            "[cold start {}] redb {:.2} s, PostgreSQL connect {:.3} s + Keys::open {:.2} s",
            r + 1,
            out.redb[r],
            out.pg_connect[r],
            out.pg_open[r]
        );
    }
    out
}

/// Where a PostgreSQL load spends its time, one step added at a time.
pub(crate) struct LoadProfile {
    /// `SELECT record::text` through a cursor, 8192 rows a fetch: the server's
    /// work and the transfer.
    pub(crate) fetch_text: f64,
    /// The same records as `json` (kept as text: no conversion on output),
    /// `SELECT record` read as text.
    pub(crate) fetch_json_column: f64,
    /// `SELECT record` read as `serde_json::Value`, as `load_keys` reads it.
    pub(crate) fetch_value: f64,
    /// ... and each `Value` decoded into a `KeyRecord`, then a `KeyRow`.
    pub(crate) value_record_row: f64,
    /// `PostgresStore::load_keys` with an index that drops each row.
    pub(crate) pg_load_keys: f64,
    /// The same on redb (`RedbStore::load_keys`: parallel decoders of only the
    /// fields the index keeps).
    pub(crate) redb_load_keys: f64,
    /// Alternative: `record` read straight into a `KeyRecord` (`Json<KeyRecord>`,
    /// no `Value` in between), then a `KeyRow`.
    pub(crate) json_record_row: f64,
    /// Prototype: raw jsonb bytes fetched on a thread of their own while this
    /// thread decodes the chunk before (`KeyRecord`, then `KeyRow`).
    pub(crate) overlapped: f64,
}

/// A jsonb value's JSON text, as the server sends it (a version byte, then the
/// text), without parsing it.
struct RawJson(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawJson {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, text)) => Ok(Self(text.to_vec())),
            _ => Err("not jsonb version 1".into()),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }
}

/// The prototype of [`LoadProfile::overlapped`].
fn overlapped(url: &str) -> (f64, usize) {
    let t = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<RawJson>>(4);
    std::thread::scope(|s| {
        s.spawn(move || {
            scan(url, "SELECT record FROM keys", {
                let mut chunk = Vec::with_capacity(8192);
                move |r| {
                    chunk.push(r.get::<_, RawJson>(0));
                    if chunk.len() == 8192 {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(8192));
                        tx.send(full).expect("send");
                    }
                }
            });
        });
        let mut n = 0;
        for chunk in rx {
            for raw in chunk {
                let rec: KeyRecord = serde_json::from_slice(&raw.0).expect("KeyRecord");
                black_box(KeyRow::from_record(&rec).expect("KeyRow"));
                n += 1;
            }
        }
        (secs(t.elapsed()), n)
    })
}

/// Run `f` on a plain connection to `url`, driven by this thread.
pub(crate) fn with_client<T>(url: &str, f: impl AsyncFnOnce(&mut Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let conn = tokio::spawn(conn);
        let out = f(&mut client).await;
        drop(client);
        let _ = conn.await;
        out
    })
}

/// Read every row of `sql` through a cursor, 8192 rows a fetch, as `load_keys`
/// does; `f` sees each row.
fn scan(url: &str, sql: &str, mut f: impl FnMut(&Row)) -> f64 {
    with_client(url, async |client| {
        let t = Instant::now();
        let tx = client.transaction().await.expect("begin");
        tx.batch_execute(&format!("DECLARE scan NO SCROLL CURSOR FOR {sql}"))
            .await
            .expect("declare");
        loop {
            let rows = tx.query("FETCH 8192 FROM scan", &[]).await.expect("fetch");
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                f(row);
            }
        }
        tx.commit().await.expect("commit");
        secs(t.elapsed())
    })
}

pub(crate) fn load_profile(built: &Built, url: &str) -> LoadProfile {
    eprintln!("[profile] the steps of a PostgreSQL load ...");
    let mut bytes = 0usize;
    let fetch_text = scan(url, "SELECT record::text FROM keys", |r| {
        bytes += r.get::<_, &str>(0).len();
    });
    black_box(bytes);
    let fetch_value = scan(url, "SELECT record FROM keys", |r| {
        black_box(r.get::<_, serde_json::Value>(0));
    });
    let value_record_row = scan(url, "SELECT record FROM keys", |r| {
        let rec: KeyRecord = serde_json::from_value(r.get(0)).expect("KeyRecord");
        black_box(KeyRow::from_record(&rec).expect("KeyRow"));
    });
    let json_record_row = scan(url, "SELECT record FROM keys", |r| {
        let rec: Json<KeyRecord> = r.get(0);
        black_box(KeyRow::from_record(&rec.0).expect("KeyRow"));
    });
    let fetch_json_column = {
        with_client(url, async |client| {
            client
                .batch_execute(
                    "CREATE TABLE keys_as_json AS SELECT id, record::json AS record FROM keys",
                )
                .await
                .expect("copy to a json column");
        });
        let mut bytes = 0usize;
        let took = scan(url, "SELECT record::text FROM keys_as_json", |r| {
            bytes += r.get::<_, &str>(0).len();
        });
        black_box(bytes);
        took
    };
    let (overlapped, decoded) = overlapped(url);
    // The last partial chunk stays with the reader (a prototype).
    assert!(decoded + 8192 > built.n, "{decoded} of {}", built.n);
    let pg = PostgresStore::open(url, None).expect("open");
    let t = Instant::now();
    let n = pg.load_keys(&mut |row| drop(black_box(row))).expect("load");
    let pg_load_keys = secs(t.elapsed());
    assert_eq!(n, built.n);
    let t = Instant::now();
    built
        .store
        .load_keys(&mut |row| drop(black_box(row)))
        .expect("load");
    let redb_load_keys = secs(t.elapsed());
    LoadProfile {
        fetch_text,
        fetch_json_column,
        fetch_value,
        value_record_row,
        pg_load_keys,
        redb_load_keys,
        json_record_row,
        overlapped,
    }
}

/// The `Keys` part 4 compares: loaded from redb when built, loaded again from redb
/// next to the PostgreSQL one (two indexes of the same keys in different memory:
/// how far apart placement alone puts them), and loaded from PostgreSQL.
pub(crate) const VERIFY_LABELS: [&str; 3] = ["redb (built)", "redb (reloaded)", "PostgreSQL"];

pub(crate) struct VerifyCompare {
    /// Per round, in the order of [`VERIFY_LABELS`].
    pub(crate) rounds: Vec<[Stats; 3]>,
    pub(crate) calls: usize,
}

impl VerifyCompare {
    /// The median of each `Keys`' per-round medians.
    pub(crate) fn medians(&self) -> [f64; 3] {
        [0, 1, 2].map(|k| {
            let v: Vec<f64> = self.rounds.iter().map(|r| r[k].median as f64).collect();
            median_f64(&v)
        })
    }
}

/// VALID verifications of the sample on `Keys` loaded from redb and from
/// PostgreSQL (the same keys), `rounds` interleaved rounds of `calls` each.
pub(crate) fn verify_compare(
    built: &Built,
    url: &str,
    calls: usize,
    rounds: usize,
) -> VerifyCompare {
    let store: Arc<dyn Storage> = Arc::new(PostgresStore::open(url, None).expect("open"));
    let reloaded = open_keys(built.store.clone(), built);
    let pg = open_keys(store, built);
    let all: [&Keys; 3] = [&built.keys, &reloaded, &pg];
    let sample = &built.sample;
    let time = |keys: &Keys| {
        for s in sample.iter().take(calls.min(200_000)) {
            assert_eq!(keys.verify(s, Some(SCOPE), None).code, Code::Valid);
        }
        Stats::of(time_hot(calls, String::new(), text_of(sample), |k| {
            let v = keys.verify(k, Some(SCOPE), None);
            assert!(v.code == Code::Valid);
        }))
    };
    let mut out = Vec::new();
    for r in 0..rounds {
        // Each goes first in turn.
        let mut stats: [Option<Stats>; 3] = [None; 3];
        for k in 0..3 {
            let i = (r + k) % 3;
            stats[i] = Some(time(all[i]));
        }
        let stats = stats.map(|s| s.expect("timed"));
        eprintln!(
            "[verify {}] VALID medians {} ns, {} ns, {} ns ({VERIFY_LABELS:?})",
            r + 1,
            stats[0].median,
            stats[1].median,
            stats[2].median
        );
        out.push(stats);
    }
    VerifyCompare { rounds: out, calls }
}
