//! End to end through a real Caddy: the shipped `config/proxies/Caddyfile`, with only
//! its addresses changed, in front of a small echo upstream, asking the real apikeyd.
//! Without caddy (`.ci/run` installs it) the test fails when `CI` is set and is
//! skipped, saying so on stderr, otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::echo::Echo;
use crate::nginx::{query_key_is_read, route_spellings_are_refused};
use crate::util::{find_program, request, Answer, TestDaemon, DEFAULT_POLICY};

/// The file users install, compiled in so the test always runs the shipped one.
const CADDYFILE: &str = include_str!("../../config/proxies/Caddyfile");

const EDGE: &str = crate::util::CATALOG_ROUTES_QUERY_KEY;

/// A running caddy; stopped on drop.
struct Caddy {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Caddy {
    /// The shipped Caddyfile with the daemon's, the upstream's and the listen
    /// address put in place of the ones it ships with (each must appear exactly
    /// once), and no admin endpoint.
    fn caddyfile(apikeyd: SocketAddr, app: SocketAddr, port: u16) -> String {
        let mut s = CADDYFILE.to_owned();
        for (from, to) in [
            (
                "forward_auth 127.0.0.1:8700 {",
                format!("forward_auth {apikeyd} {{"),
            ),
            (
                "reverse_proxy 127.0.0.1:9000",
                format!("reverse_proxy {app}"),
            ),
            (
                "http://:8080 {",
                format!("http://:{port} {{\n\tbind 127.0.0.1"),
            ),
        ] {
            assert_eq!(
                s.matches(from).count(),
                1,
                "config/proxies/Caddyfile must contain {from:?} exactly once"
            );
            s = s.replace(from, &to);
        }
        format!("{{\n\tadmin off\n}}\n\n{s}")
    }

    /// `caddyfile` adapted to Caddy's JSON by `caddy adapt`, with the config not
    /// saved (`admin.config.persist`, which the Caddyfile of 2.6 cannot set).
    fn json(bin: &Path, env: &[(&str, PathBuf)], caddyfile: &Path) -> String {
        let out = Command::new(bin)
            .args(["adapt", "--adapter", "caddyfile", "--config"])
            .arg(caddyfile)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "caddy adapt failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        config["admin"] = serde_json::json!({"disabled": true, "config": {"persist": false}});
        config.to_string()
    }

    fn start(bin: &Path, apikeyd: SocketAddr, app: SocketAddr) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        // A free port is found by binding port 0 and letting it go; someone else may
        // take it in between, so try a few times.
        for _attempt in 0..5 {
            let port = crate::util::free_port();
            let home = dir.path().join("home");
            let env = [
                ("HOME", home.clone()),
                ("XDG_CONFIG_HOME", home.join("config")),
                ("XDG_DATA_HOME", home.join("data")),
            ];
            let caddyfile = dir.path().join("Caddyfile");
            std::fs::write(&caddyfile, Self::caddyfile(apikeyd, app, port)).unwrap();
            let conf = dir.path().join("caddy.json");
            std::fs::write(&conf, Self::json(bin, &env, &caddyfile)).unwrap();
            let out = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
            let child = Command::new(bin)
                .args(["run", "--config"])
                .arg(&conf)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            let mut c = Self {
                child: Some(child),
                port,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
                    c.child = None;
                    let log = c.log();
                    assert!(
                        log.contains("address already in use"),
                        "caddy exited with {status}:\n{log}"
                    );
                    break; // another port
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return c;
                }
                assert!(
                    Instant::now() < deadline,
                    "caddy did not listen on port {port} within 15 s:\n{}",
                    c.log()
                );
                std::thread::sleep(Duration::from_millis(25));
            }
            dir = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap());
        }
        panic!("caddy found no free port in 5 tries");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        request(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            "GET",
            path,
            headers,
        )
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn caddy_forward_auth_with_shipped_caddyfile() {
    let found = find_program("caddy", &["/usr/bin", "/usr/local/bin"]);
    if !crate::util::require(
        "caddy on PATH or in /usr/bin (apt-get install caddy; .ci/run installs it)",
        found.is_some(),
    ) {
        return;
    }
    let Some(bin) = found else { return };
    let d = TestDaemon::start_with(DEFAULT_POLICY, EDGE);
    let echo = Echo::start();
    let caddy = Caddy::start(&bin, d.addr, echo.addr());
    let reason = |a: &Answer| a.header("x-api-key-reason").map(str::to_owned);

    // A valid key reaches the upstream, which sees the identity and not the secret;
    // identity headers sent by the client are replaced.
    let (id, key) = d.create("alice", "caddy e2e", &[]);
    let auth = format!("Bearer {key}");
    let a = caddy.get(
        "/catalog/sync/run?x=1",
        &[
            ("Authorization", auth.as_str()),
            ("X-Api-Key-Name", "forged"),
            ("X-Api-Key-Owner", "mallory"),
        ],
    );
    assert_eq!(a.status, 200, "{}\n{}", a.body, caddy.log());
    assert_eq!(echo.count(), 1);
    let seen = a.body.to_ascii_lowercase();
    let saw = |line: &str| seen.contains(&format!("\r\n{line}\r\n"));
    assert!(seen.starts_with("get /catalog/sync/run?x=1 "), "{}", a.body);
    assert!(saw("x-api-key-name: caddy e2e"), "{}", a.body);
    assert!(saw("x-api-key-owner: alice"), "{}", a.body);
    assert!(saw(&format!("x-api-key-id: {id}")), "{}", a.body);
    assert!(
        saw("x-api-key-scopes: catalog:read,catalog:sync"),
        "{}",
        a.body
    );
    assert!(
        !seen.contains("forged") && !seen.contains("mallory"),
        "{}",
        a.body
    );
    assert!(!a.body.contains(&key), "the secret reached the upstream");
    assert_eq!(reason(&a), None);

    // Refusals reach the client as apikeyd gave them, and never the upstream.
    let a = caddy.get("/x", &[]);
    assert_eq!((a.status, reason(&a).as_deref()), (401, Some("MISSING")));
    let a = caddy.get("/x", &[("X-Api-Key", "akd_not-a-real-key")]);
    assert_eq!((a.status, reason(&a).as_deref()), (401, Some("MALFORMED")));
    // The client cannot name the scope it is checked against.
    let (_, reader) = d.create("alice", "reader", &["--scopes", "catalog:read"]);
    let a = caddy.get(
        "/catalog/sync/run",
        &[
            ("X-Api-Key", reader.as_str()),
            ("X-Required-Scope", "catalog:read"),
        ],
    );
    assert_eq!(
        (a.status, reason(&a).as_deref()),
        (403, Some("INSUFFICIENT_SCOPE"))
    );
    assert_eq!(echo.count(), 1);

    // Issue 9, item 1: the bypass spellings, and item 9: a key in the query.
    let get = |p: &str, h: &[(&str, &str)]| caddy.get(p, h);
    let log = || caddy.log();
    route_spellings_are_refused("caddy", &get, &echo, &reader, &log);
    query_key_is_read("caddy", &get, &echo, &reader);
}
