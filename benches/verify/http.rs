//! Part 2: `POST /v1/verify` over loopback TCP against a static JSON handler.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::alerts::Alerts;
use apikeyd::api::{tcp_router, AppState};
use apikeyd::config::{AuthConfig, RateLimitConfig};
use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::build::Built;
use crate::fixtures::SCOPE;
use crate::measure::{nanos, thread_sched_ns};

const MAX_BODY: usize = 65_536;

struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Serve `router` on 127.0.0.1 from its own runtime with one worker thread whose
/// name starts with `name`.
fn spawn_server(name: &'static str, router: Router) -> Server {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("{name}-main"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("send addr");
                let server = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                });
                // Run the accept loop on the worker too, so one thread does everything.
                tokio::spawn(async move { server.await })
                    .await
                    .expect("server task")
                    .expect("serve");
            });
        })
        .expect("spawn server thread");
    let addr = addr_rx.recv().expect("server address");
    Server { addr, stop, thread }
}

fn baseline_router() -> Router {
    // Reads the body (as any real handler must) and answers a fixed small JSON.
    Router::new().route(
        "/v1/verify",
        post(|body: Bytes| async move {
            black_box(body);
            (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"valid\":true}",
            )
        }),
    )
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Round {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// Server thread: % of the round on a CPU, % runnable but waiting for one.
    pub(crate) server_cpu: Option<[f64; 2]>,
    /// Load generator thread, likewise.
    pub(crate) client_cpu: Option<[f64; 2]>,
}

impl Round {
    pub(crate) fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// One round of `conns` keep-alive connections POSTing for `dur`. Runs on the
/// load generator's current-thread runtime.
async fn load_round(
    addr: SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    conns: usize,
    dur: Duration,
    server_thread: &str,
) -> Round {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(sender);
    }
    let server_cpu0 = thread_sched_ns(server_thread);
    let client_cpu0 = thread_sched_ns("loadgen");
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut sender) in senders.into_iter().enumerate() {
        let bodies = bodies.clone();
        tasks.spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut i = c.wrapping_mul(7919);
            while Instant::now() < deadline {
                if sender.ready().await.is_err() {
                    errors += 1;
                    break;
                }
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let req = Request::builder()
                    .method("POST")
                    .uri("/v1/verify")
                    .header(header::HOST, "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))
                    .expect("request");
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let good = match resp.into_body().collect().await {
                            Ok(b) => {
                                status == StatusCode::OK
                                    && b.to_bytes().starts_with(b"{\"valid\":true")
                            }
                            Err(_) => false,
                        };
                        if good {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (ok, errors)
        });
    }
    let (mut ok, mut errors) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (o, e) = r.expect("client task");
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    let pct = |a: Option<[u64; 2]>, b: Option<[u64; 2]>| {
        let (a, b) = (a?, b?);
        let p = |i: usize| b[i].saturating_sub(a[i]) as f64 / nanos(elapsed) as f64 * 100.0;
        Some([p(0), p(1)])
    };
    Round {
        ok,
        errors,
        elapsed,
        server_cpu: pct(server_cpu0, thread_sched_ns(server_thread)),
        client_cpu: pct(client_cpu0, thread_sched_ns("loadgen")),
    }
}

pub(crate) struct HttpFigures {
    pub(crate) conns: usize,
    pub(crate) secs: u64,
    pub(crate) rounds: Vec<(&'static str, Round)>,
}

pub(crate) fn bench_http(b: &Built, conns: usize, dur: Duration, rounds: usize) -> HttpFigures {
    let apikeyd = spawn_server(
        "srv-apikeyd",
        tcp_router(
            AppState::new(
                Arc::new(Alerts::new(b.keys.clone(), b.store.clone())),
                AuthConfig::default(),
                RateLimitConfig::default(),
            ),
            MAX_BODY,
        ),
    );
    let baseline = spawn_server("srv-baseline", baseline_router());
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        b.sample
            .iter()
            .take(4096)
            .map(|k| Bytes::from(serde_json::json!({"key": k, "scope": SCOPE}).to_string()))
            .collect(),
    );
    let (a_addr, b_addr) = (apikeyd.addr, baseline.addr);
    let results = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            rt.block_on(async move {
                let warm = Duration::from_secs(1);
                eprintln!("[http] warm-up 1 s each ...");
                load_round(b_addr, bodies.clone(), conns, warm, "srv-baseline").await;
                load_round(a_addr, bodies.clone(), conns, warm, "srv-apikeyd").await;
                let mut out = Vec::new();
                for r in 1..=rounds {
                    for (label, addr, thread) in [
                        ("baseline", b_addr, "srv-baseline"),
                        ("apikeyd", a_addr, "srv-apikeyd"),
                    ] {
                        let round = load_round(addr, bodies.clone(), conns, dur, thread).await;
                        eprintln!(
                            "[http] round {r} {label:<8} {:>9.0} req/s ({} ok, {} errors)",
                            round.rps(),
                            round.ok,
                            round.errors
                        );
                        out.push((label, round));
                    }
                }
                out
            })
        })
        .expect("spawn load generator")
        .join()
        .expect("load generator");
    for s in [apikeyd, baseline] {
        let _ = s.stop.send(());
        s.thread.join().expect("server thread");
    }
    HttpFigures {
        conns,
        secs: dur.as_secs(),
        rounds: results,
    }
}
