//! The comparison of the fast path with hyper's path on one request head, over one
//! real [`AppState`] with keys and routes: the proptest in `differential.rs` and the
//! `auth_head` fuzz target (fuzz/, through the non-default `fuzzing` feature) both
//! drive it. Never in a release build: it holds fixed test keys and a server secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The fuzz target uses only the comparison, the proptest only the parts.
#![allow(dead_code)]

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::response::IntoResponse;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::keys::{Actor, CreateKey, Keys};

const CONFIG: &str = r#"
[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
[groups.Synchronizer]
scopes = ["catalog:read", "catalog:sync"]
create_keys = true
[groups.User]
scopes = ["catalog:read"]
[groups.Admin]
scopes = ["catalog:read", "catalog:write", "apikeyd:admin"]
create_keys = true
manage_all_keys = true
[users.admin]
groups = ["Admin"]
[users.alice]
groups = ["Synchronizer"]
[auth]
trusted_proxies = ["127.0.0.1/32"]
query_param = "api_key"
[[auth.routes]]
prefix = "/catalog"
scope = "catalog:read"
[[auth.routes]]
prefix = "/catalog/sync"
scope = "catalog:sync"
[[auth.routes]]
prefix = "/admin"
scope = "catalog:write"
[rate_limit]
failures_per_minute = 0
"#;

/// The imported keys' secrets (fuzz/corpus/auth_head has them).
const IMPORTED: [&str; 5] = [
    "fuzz0-read-and-sync-0123456789abcdef",
    "fuzz1-read-only-0123456789abcdefghij",
    "fuzz2-from-203.0.113.0-0123456789abc",
    "fuzz3-x-tenant-0123456789abcdefghijk",
    "fuzz4-disabled-0123456789abcdefghijk",
];

pub(crate) struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub st: AppState,
    /// alice's keys: read and sync; read only; from 203.0.113.0/24 only; with
    /// an `X-Tenant` header; disabled. Generated first, then the same five
    /// imported with the fixed secrets of [`IMPORTED`], which the fuzz corpus
    /// can carry.
    pub keys: Vec<String>,
}

pub(crate) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = crate::config::parse(
            Path::new("test.toml"),
            CONFIG,
            &crate::config::Environment::default(),
        )
        .unwrap();
        let store = Arc::new(crate::store::MemoryStore::new());
        let hasher = crate::keys::secret::KeyHasher::new(
            &crate::keys::secret::ServerSecret::from_bytes(vec![7; 32]).unwrap(),
        );
        let settings = crate::keys::Settings::from(&c);
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let keys = Arc::new(Keys::open(store.clone(), hasher, clock, settings).unwrap());
        let admin = Actor {
            name: "admin".into(),
            admin: true,
        };
        let mut secrets = Vec::new();
        rt.block_on(async {
            let kinds = [
                (None, None, None),
                (Some("catalog:read"), None, None),
                (None, Some("203.0.113.0/24"), None),
                (None, None, Some("X-Tenant=${key.owner}")),
                (None, None, None),
            ];
            for imported in [false, true] {
                for (i, (scopes, ip, header)) in kinds.into_iter().enumerate() {
                    let req = CreateKey {
                        user: Some("alice".into()),
                        scopes: scopes.map(|s: &str| vec![s.to_owned()]),
                        name: format!("k{i}{}", if imported { "i" } else { "" }),
                        ip: ip.into_iter().map(str::to_owned).collect(),
                        headers: header.into_iter().map(str::to_owned).collect(),
                        ..CreateKey::default()
                    };
                    let (id, secret) = if imported {
                        let secret = IMPORTED[i].to_owned();
                        let req = CreateKey {
                            secret: Some(crate::keys::secret::Secret::new(secret.clone())),
                            ..req
                        };
                        (keys.import(&admin, req).await.unwrap().id, secret)
                    } else {
                        let issued = keys.create(&admin, req).await.unwrap();
                        (issued.view.id, issued.key.expose().to_owned())
                    };
                    if i == 4 {
                        keys.set_enabled(&admin, &id.to_string(), false)
                            .await
                            .unwrap();
                    }
                    secrets.push(secret);
                }
            }
        });
        let alerts = Arc::new(crate::alerts::Alerts::new(keys, store));
        let st = AppState::new(alerts, c.auth, c.rate_limit);
        Fixture {
            rt,
            st,
            keys: secrets,
        }
    })
}

const PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

/// Status and headers but `date` and `connection`, sorted.
pub(crate) type Seen = (u16, Vec<(String, String)>);

fn parse_response(raw: &[u8]) -> Option<(Seen, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = r.parse(raw).ok()? else {
        return None;
    };
    let body = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    let mut seen: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_ascii_lowercase(), value)
        })
        .filter(|(n, _)| n != "date" && n != "connection")
        .collect();
    seen.sort();
    Some(((r.code?, seen), len + body))
}

/// The fast path's answer, or `None` when it hands the request to hyper.
pub(crate) fn fast(st: &AppState, raw: &[u8]) -> Option<Seen> {
    fast_step(st, raw).expect("generated heads are complete")
}

/// The fast path's answer (`Some(None)`: handed to hyper), or `None` for a head
/// that is not whole yet.
fn fast_step(st: &AppState, raw: &[u8]) -> Option<Option<Seen>> {
    let mut out = Vec::new();
    match answer(st, PEER, raw, false, &mut out) {
        Step::Answered { .. } => Some(Some(parse_response(&out).expect("a whole answer").0)),
        Step::Handoff => Some(None),
        Step::Partial => None,
    }
}

/// Any bytes: where the fast path answers a head, hyper answers it the same (status,
/// `X-Api-Key-*` and every other header but `date` and `connection`). Panics when
/// they differ, with the head.
pub(crate) fn fast_path_agrees_with_hyper(raw: &[u8]) {
    let f = fixture();
    if let Some(Some(fast)) = fast_step(&f.st, raw) {
        let hyper = hyper(f, raw);
        assert_eq!(fast, hyper, "{}", String::from_utf8_lossy(raw));
    }
}

/// hyper's answer, as the server gives it to a connection handed over.
pub(crate) fn hyper(f: &Fixture, raw: &[u8]) -> Seen {
    let st = f.st.clone();
    f.rt.block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // As the server's connection service answers forward-auth.
                let uri = req.uri();
                let r = if auth::forward_auth_kind(uri.path()).is_some() {
                    auth::check(
                        &st,
                        PEER.ip(),
                        uri,
                        req.headers(),
                        uri.path_and_query().and_then(auth::appended),
                    )
                } else {
                    axum::http::StatusCode::NOT_FOUND.into_response()
                };
                std::future::ready(Ok::<_, Infallible>(r))
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service);
        let task = tokio::spawn(conn);
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(raw).await.unwrap();
        let mut got = Vec::new();
        let read = async {
            loop {
                if let Some((seen, len)) = parse_response(&got) {
                    if got.len() >= len {
                        return seen;
                    }
                }
                let mut buf = [0u8; 4096];
                let n = rd.read(&mut buf).await.unwrap();
                assert!(n > 0, "hyper closed without a whole answer: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
        };
        let seen = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("hyper answered");
        // Awaited so the connection and its buffers are dropped here, not left to
        // the runtime (which the fuzz target never drops: LeakSanitizer reports them).
        task.abort();
        let _ = task.await;
        seen
    })
}
