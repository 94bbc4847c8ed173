//! Part 1: in-process `Keys::verify`, and the baselines it is compared with.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;

use apikeyd::keys::model::Code;
use apikeyd::keys::secret::{self, KeyHash};
use chrono::Utc;

use crate::build::Built;
use crate::fixtures::SCOPE;
use crate::measure::{filled_map, text_of, time_each, time_hot, time_loop, PrefixHasher, Stats};

pub(crate) struct VerifyFigures {
    pub(crate) timer: Stats,
    pub(crate) valid: Stats,
    pub(crate) valid_cold: Stats,
    pub(crate) valid_loop_mean: f64,
    pub(crate) not_found: Stats,
    pub(crate) malformed: Stats,
    pub(crate) hash: Stats,
    pub(crate) shape: Stats,
    pub(crate) now: Stats,
    pub(crate) map_sip: Stats,
    pub(crate) map_prefix: Stats,
}

pub(crate) fn bench_verify(b: &Built, calls: usize) -> VerifyFigures {
    let keys = &b.keys;
    let sample = &b.sample;
    let m = sample.len();
    assert!(m > 0, "empty sample");
    let warm = calls.min(200_000);

    // Secrets of the right format that are not in the store, and ones with a bad checksum.
    let absent: Vec<String> = (0..m.min(10_000))
        .map(|_| secret::generate().expose().to_owned())
        .collect();
    let malformed: Vec<String> = sample
        .iter()
        .take(10_000)
        .map(|s| {
            let mut bytes = s.clone().into_bytes();
            let last = bytes.len() - 1;
            bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).expect("ascii")
        })
        .collect();
    for s in absent.iter().take(100) {
        assert_eq!(keys.verify(s, Some(SCOPE), None).code, Code::NotFound);
    }
    for s in malformed.iter().take(100) {
        assert_eq!(keys.verify(s, Some(SCOPE), None).code, Code::Malformed);
    }

    eprintln!("[verify] timer overhead ...");
    let timer = Stats::of(time_each(calls, |i| {
        black_box(i);
    }));

    eprintln!("[verify] VALID: warm-up {warm}, timed {calls} ...");
    for i in 0..warm {
        assert_eq!(
            keys.verify(&sample[i % m], Some(SCOPE), None).code,
            Code::Valid
        );
    }
    let valid = Stats::of(time_hot(calls, String::new(), text_of(sample), |k| {
        let v = keys.verify(k, Some(SCOPE), None);
        assert!(v.code == Code::Valid);
    }));
    // The same with the key's text read from a 100k-entry list inside the timed
    // region: one more cache miss, as a caller holding many keys in memory pays.
    let valid_cold = Stats::of(time_each(calls, |i| {
        let v = keys.verify(&sample[i % m], Some(SCOPE), None);
        assert!(v.code == Code::Valid);
    }));
    let valid_loop_mean = time_loop(calls, |i| {
        let v = keys.verify(&sample[i % m], Some(SCOPE), None);
        assert!(v.code == Code::Valid);
    });

    eprintln!("[verify] NOT_FOUND ...");
    for i in 0..warm.min(50_000) {
        black_box(keys.verify(&absent[i % absent.len()], Some(SCOPE), None));
    }
    let not_found = Stats::of(time_hot(calls, String::new(), text_of(&absent), |k| {
        let v = keys.verify(k, Some(SCOPE), None);
        assert!(v.code == Code::NotFound);
    }));

    eprintln!("[verify] MALFORMED ...");
    let malformed_stats = Stats::of(time_hot(calls, String::new(), text_of(&malformed), |k| {
        let v = keys.verify(k, Some(SCOPE), None);
        assert!(v.code == Code::Malformed);
    }));

    eprintln!("[verify] baseline KeyHasher::hash ...");
    let hasher = &b.hasher;
    let hash = Stats::of(time_hot(calls, String::new(), text_of(sample), |k| {
        black_box(hasher.hash(black_box(k)));
    }));

    eprintln!("[verify] baseline secret::shape and Utc::now ...");
    let shape = Stats::of(time_hot(calls, String::new(), text_of(sample), |k| {
        black_box(secret::shape(black_box(k), 32));
    }));
    let now = Stats::of(time_each(calls, |_| {
        black_box(Utc::now());
    }));

    eprintln!("[verify] baseline HashMap hits at N = {} ...", b.n);
    let probe: Vec<KeyHash> = sample.iter().map(|s| hasher.hash(s)).collect();
    let map_hits = |map: &mut dyn FnMut(&KeyHash) -> bool| {
        for p in probe.iter().take(warm) {
            black_box(map(p));
        }
        Stats::of(time_hot(
            calls,
            [0u8; 32],
            |i, h| *h = probe[i % m],
            |h| assert!(black_box(map(black_box(h)))),
        ))
    };
    let map_sip = {
        let map: HashMap<KeyHash, u32> = filled_map(&b.hashes, Default::default());
        map_hits(&mut |h| map.contains_key(h))
    };
    let map_prefix = {
        let map: HashMap<KeyHash, u32, BuildHasherDefault<PrefixHasher>> =
            filled_map(&b.hashes, Default::default());
        map_hits(&mut |h| map.contains_key(h))
    };

    VerifyFigures {
        timer,
        valid,
        valid_cold,
        valid_loop_mean,
        not_found,
        malformed: malformed_stats,
        hash,
        shape,
        now,
        map_sip,
        map_prefix,
    }
}
