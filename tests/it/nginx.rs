//! End to end through a real nginx: the shipped `config/proxies/nginx.conf`, with only
//! its addresses changed, in front of a small echo upstream, asking the real apikeyd.
//! Needs nginx (`.ci/run` installs it); without it the test fails, see `util::require`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::echo::Echo;
use crate::util::{bearer, find_program, is_root, request, Answer, TestDaemon, DEFAULT_POLICY};

/// The snippet users install, compiled in so the test always runs the shipped file.
const SNIPPET: &str = include_str!("../../config/proxies/nginx.conf");

const EDGE: &str = r#"
[auth]
trusted_proxies = ["127.0.0.1/32"]

query_param = "api_key"

[[auth.routes]]
prefix = "/admin"
scope = "catalog:write"

[[auth.routes]]
prefix = "/catalog"
scope = "catalog:read"

[[auth.routes]]
prefix = "/catalog/sync"
scope = "catalog:sync"

[rate_limit]
failures_per_minute = 1
burst = 5
"#;

/// A running nginx (master and worker in their own process group); stopped on drop.
pub(crate) struct Nginx {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// The shipped snippet with the daemon's, the upstream's and the listen address
    /// put in place of the ones it ships with (each must appear exactly once).
    fn snippet(apikeyd: SocketAddr, app: SocketAddr, port: u16) -> String {
        let mut s = SNIPPET.to_owned();
        for (from, to) in [
            ("server 127.0.0.1:8700;", format!("server {apikeyd};")),
            ("server 127.0.0.1:9000;", format!("server {app};")),
            ("listen 8080;", format!("listen 127.0.0.1:{port};")),
        ] {
            assert_eq!(
                s.matches(from).count(),
                1,
                "config/proxies/nginx.conf must contain {from:?} exactly once"
            );
            s = s.replace(from, &to);
        }
        s
    }

    fn main_conf(dir: &Path) -> String {
        let d = dir.display();
        // As root the workers would switch to "nobody", which cannot enter the
        // private temp dir; a test nginx can simply stay root.
        let user = if is_root() { "user root;" } else { "" };
        format!(
            r#"{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/apikeyd.conf;
}}
"#
        )
    }

    fn start(bin: &Path, apikeyd: SocketAddr, app: SocketAddr) -> Self {
        Self::start_with(bin, &|port| Self::snippet(apikeyd, app, port))
    }

    /// nginx with the `http` block's contents `server(port)`, which must listen
    /// on 127.0.0.1:`port`.
    pub(crate) fn start_with(bin: &Path, server: &dyn Fn(u16) -> String) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, Self::main_conf(dir.path())).unwrap();
        // A free port is found by binding port 0 and letting it go; someone else may
        // take it in between, so try a few times.
        for _attempt in 0..5 {
            let port = crate::util::free_port();
            std::fs::write(dir.path().join("apikeyd.conf"), server(port)).unwrap();
            // Fresh logs, so a clash is told from another failure by this attempt's.
            std::fs::write(dir.path().join("error.log"), "").unwrap();
            let out = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let child = {
                use std::os::unix::process::CommandExt;
                Command::new(bin)
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(dir.path().join("error.log"))
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .process_group(0)
                    .spawn()
                    .unwrap()
            };
            let mut n = Self {
                child: Some(child),
                port,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = n.child.as_mut().unwrap().try_wait().unwrap() {
                    n.child = None;
                    let log = n.log();
                    assert!(
                        log.contains("Address already in use"),
                        "nginx exited with {status}:\n{log}"
                    );
                    break; // another port
                }
                if n.dir.path().join("nginx.pid").exists()
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    return n;
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not listen on port {port} within 10 s:\n{}",
                    n.log()
                );
                std::thread::sleep(Duration::from_millis(25));
            }
            dir = std::mem::replace(&mut n.dir, tempfile::tempdir().unwrap());
        }
        panic!("nginx found no free port in 5 tries");
    }

    pub(crate) fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
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

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        // SIGTERM: the master stops its worker and exits; SIGKILL the whole group
        // if that takes too long.
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = child.wait();
    }
}

/// TCP sockets on this host whose remote end is 127.0.0.1:`port`, in any state
/// (TIME_WAIT included): the connections nginx opened to apikeyd.
fn sockets_to(port: u16) -> usize {
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some(remote.as_str()))
        .count()
}

/// Sends a GET with these headers through a proxy.
pub(crate) type Get<'a> = dyn Fn(&str, &[(&str, &str)]) -> Answer + 'a;

/// Spellings of `/catalog/sync/run` (route `/catalog/sync`, scope `catalog:sync`)
/// that an application may read as that path, and URIs that cannot be read for
/// sure. Each must be refused for a key holding only `catalog:read`.
pub(crate) const BYPASS_SPELLINGS: &[&str] = &[
    "/catalog/sync/run",
    "//catalog/sync/run",
    "/catalog//sync/run",
    "/catalog/./sync/run",
    "/catalog/x/../sync/run",
    "/catalog/x/%2e%2e/sync/run",
    "/catalog/%73ync/run",
    "/catalog/%73%79%6E%63/run",
    "/catalog;p/sync/run",
    "/catalog/sync;jsessionid=1/run",
    "/catalog/x/..;/sync/run",
    "/CATALOG/Sync/run",
    "/catalog/sync%2frun",
    "/catalog%2Fsync/run",
    "/catalog/sync%5crun",
    "/catalog\\sync/run",
    "/catalog/%zz/../sync/run",
    "/catalog/sync%00/run",
    "/catalog/sync/r\u{fc}n",
    "/catalog/syn%C3%A7/run",
    "/catalog./sync/run",
    "/catalog/../../catalog/sync/run",
    "http://localhost/catalog/sync/run",
    // Issue 9 review, F1: dot segments after the protected prefix were resolved
    // to `/catalog/`, while most applications route them under `/catalog/sync`.
    "/catalog/sync/..",
    "/catalog/sync/%2e%2e",
    "/catalog/sync/%2E%2E/",
    "/catalog/sync//..",
    "/catalog/sync/..;",
];

/// Issue 9, item 1, through a real proxy (`get` sends a request to it): with a
/// `catalog:read` key every spelling in [`BYPASS_SPELLINGS`] is refused and never
/// reaches the upstream, a URI header sent by the client changes nothing, and the
/// legitimate `/catalog/items` passes and arrives as sent.
pub(crate) fn route_spellings_are_refused(
    proxy: &str,
    get: &Get,
    echo: &Echo,
    reader: &str,
    log: &dyn Fn() -> String,
) {
    let auth = bearer(reader);
    let a = get("/catalog/items?page=1", &[("Authorization", auth.as_str())]);
    assert_eq!(a.status, 200, "{proxy}: {}\n{}", a.body, log());
    assert!(
        echo.last_request_line()
            .starts_with("GET /catalog/items?page=1 "),
        "{proxy}: {}",
        echo.last_request_line()
    );
    let before = echo.count();
    let mut seen = Vec::new();
    for path in BYPASS_SPELLINGS {
        let a = get(path, &[("Authorization", auth.as_str())]);
        seen.push(format!(
            "{path} -> {} {}",
            a.status,
            a.header("x-api-key-reason").unwrap_or("-")
        ));
        assert!(
            matches!(a.status, 400 | 403),
            "{proxy}: {path} with a catalog:read key got {} (reason {:?}); the upstream saw {:?}\n{}",
            a.status,
            a.header("x-api-key-reason"),
            echo.last_request_line(),
            log()
        );
        assert_eq!(echo.count(), before, "{proxy}: {path} reached the upstream");
    }
    // The client cannot name the URI that is checked.
    for name in ["X-Original-URI", "X-Forwarded-Uri"] {
        let a = get(
            "/catalog/sync/run",
            &[("Authorization", auth.as_str()), (name, "/catalog/items")],
        );
        assert!(
            matches!(a.status, 400 | 403),
            "{proxy}: {name}: {}",
            a.status
        );
    }
    assert_eq!(echo.count(), before);
    let _ = writeln!(std::io::stderr(), "{proxy}: {}", seen.join("; "));
    // Legitimate spellings still pass.
    let a = get("/catalog/items", &[("Authorization", auth.as_str())]);
    assert_eq!(a.status, 200, "{proxy}: {}", a.body);
    assert_eq!(echo.count(), before + 1);
}

/// Issue 9, item 9, through a real proxy: with `query_param` set, a key in the
/// client's query string is found in the URI the proxy forwards.
pub(crate) fn query_key_is_read(proxy: &str, get: &Get, echo: &Echo, key: &str) {
    let before = echo.count();
    let a = get(&format!("/catalog/items?page=1&api_key={key}"), &[]);
    assert_eq!(a.status, 200, "{proxy}: {} {:?}", a.body, a.headers);
    assert_eq!(echo.count(), before + 1);
    let a = get("/catalog/items?api_key=akd_wrong", &[]);
    assert_eq!(a.status, 401, "{proxy}");
    assert_eq!(echo.count(), before + 1);
}

#[test]
fn nginx_auth_request_with_shipped_snippet() {
    let bin = find_program(
        "nginx",
        &["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"],
    );
    if !crate::util::require(
        "nginx on PATH or in /usr/sbin (apt-get install nginx; .ci/run installs it)",
        bin.is_some(),
    ) {
        return;
    }
    let bin = bin.unwrap();
    let d = TestDaemon::start_with(DEFAULT_POLICY, EDGE);
    let echo = Echo::start();
    let nginx = Nginx::start(&bin, d.addr, echo.addr());
    let reason = |a: &Answer| a.header("x-api-key-reason").map(str::to_owned);

    // A valid key reaches the upstream, which sees the identity and not the secret;
    // identity headers sent by the client are replaced.
    let (id, key) = d.create("alice", "nginx e2e", &[]);
    let auth = bearer(&key);
    let a = nginx.get(
        "/catalog/items?page=2",
        &[
            ("Authorization", auth.as_str()),
            ("X-Api-Key-Name", "forged"),
            ("X-Api-Key-Owner", "mallory"),
        ],
    );
    assert_eq!(a.status, 200, "{}\n{}", a.body, nginx.log());
    assert_eq!(echo.count(), 1);
    let seen = a.body.to_ascii_lowercase();
    let saw = |line: &str| seen.contains(&format!("\r\n{line}\r\n"));
    assert!(seen.starts_with("get /catalog/items?page=2 "), "{}", a.body);
    assert!(saw("x-api-key-name: nginx e2e"), "{}", a.body);
    assert!(saw("x-api-key-owner: alice"), "{}", a.body);
    assert!(saw(&format!("x-api-key-id: {id}")), "{}", a.body);
    assert!(
        saw("x-api-key-scopes: catalog:read,catalog:sync"),
        "{}",
        a.body
    );
    assert!(seen.contains("\r\nx-api-key-expires-in: "), "{}", a.body);
    assert!(!seen.contains("forged"), "{}", a.body);
    assert!(!seen.contains("mallory"), "{}", a.body);
    assert!(!a.body.contains(&key), "the secret reached the upstream");
    assert!(!seen.contains("\r\nauthorization:"), "{}", a.body);
    assert_eq!(reason(&a), None);

    // X-Api-Key works as well.
    let a = nginx.get("/x", &[("X-Api-Key", key.as_str())]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(echo.count(), 2);
    assert!(!a.body.contains(&key), "the secret reached the upstream");

    // The client address apikeyd checks is the one nginx saw (trusted_proxies), not
    // the one the client claims.
    let (_, local) = d.create("alice", "local only", &["--ip", "127.0.0.1/32"]);
    let (_, remote) = d.create("alice", "remote only", &["--ip", "203.0.113.0/24"]);
    let a = nginx.get(
        "/x",
        &[
            ("Authorization", &bearer(&local)),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = nginx.get(
        "/x",
        &[
            ("Authorization", &bearer(&remote)),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Real-IP", "203.0.113.9"),
        ],
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(reason(&a).as_deref(), Some("IP_NOT_ALLOWED"));
    assert_eq!(echo.count(), 3);

    // Route scopes apply to the original URI; the client cannot name its own scope
    // or its own URI.
    let a = nginx.get(
        "/admin/users",
        &[
            ("Authorization", auth.as_str()),
            ("X-Required-Scope", "catalog:read"),
            ("X-Forwarded-Uri", "/public"),
        ],
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(reason(&a).as_deref(), Some("INSUFFICIENT_SCOPE"));
    assert_eq!(echo.count(), 3);

    // Route scopes hold for every spelling of a protected path (issue 9, item 1).
    let (_, reader) = d.create("alice", "reader", &["--scopes", "catalog:read"]);
    let get = |p: &str, h: &[(&str, &str)]| nginx.get(p, h);
    let log = || nginx.log();
    route_spellings_are_refused("nginx", &get, &echo, &reader, &log);
    query_key_is_read("nginx", &get, &echo, &reader);
    let base = echo.count();

    // A missing or invalid key gets 401 from nginx and never reaches the upstream.
    let a = nginx.get("/x", &[]);
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(reason(&a).as_deref(), Some("MISSING"));
    let a = nginx.get("/x", &[("Authorization", "Bearer akd_not-a-real-key")]);
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        a.headers
    );
    assert_eq!(reason(&a).as_deref(), Some("MALFORMED"));
    assert_eq!(echo.count(), base);

    // A key disabled between two requests: 200, then 403.
    let (id2, key2) = d.create("alice", "to be disabled", &[]);
    let auth2 = bearer(&key2);
    let a = nginx.get("/x", &[("Authorization", auth2.as_str())]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(echo.count(), base + 1);
    d.ok(&["key", "disable", &id2]);
    let a = nginx.get("/x", &[("Authorization", auth2.as_str())]);
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(reason(&a).as_deref(), Some("DISABLED"));
    assert_eq!(echo.count(), base + 1);

    // The checks reuse kept-alive connections to apikeyd (nginx closes a connection
    // whose response body it did not read: the snippet asks with HEAD).
    for _ in 0..20 {
        assert_eq!(
            nginx.get("/x", &[("Authorization", auth.as_str())]).status,
            200
        );
    }
    let opened = sockets_to(d.addr.port());
    assert!(
        (1..=5).contains(&opened),
        "nginx opened {opened} connections to apikeyd for about 30 checks: upstream keepalive is not working"
    );

    // Too many failures from one client: 429 with Retry-After (not nginx's 500).
    let mut limited = None;
    for _ in 0..20 {
        let a = nginx.get("/x", &[("Authorization", "Bearer wrong")]);
        assert_ne!(a.status, 500, "{}", nginx.log());
        if a.status == 429 {
            limited = Some(a);
            break;
        }
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let a = limited.expect("no 429 after 20 failures with burst = 5");
    assert_eq!(reason(&a).as_deref(), Some("RATE_LIMITED"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    // Now even the valid key from this client waits.
    assert_eq!(
        nginx.get("/x", &[("Authorization", auth.as_str())]).status,
        429
    );
    assert_eq!(echo.count(), base + 21);
}
