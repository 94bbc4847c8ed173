//! The `TestDaemon` fixture: the real `apikeyd` binary on a temp dir and port 0,
//! driven with the real `apikeyctl`. Stopped (SIGKILL) on drop. Beside it, what the
//! tests share: a raw HTTP client that sends the bytes it is given unchanged, also
//! from other 127.0.0.0/8 addresses. The echo upstream is in `echo`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const APIKEYD: &str = env!("CARGO_BIN_EXE_apikeyd");
pub const APIKEYCTL: &str = env!("CARGO_BIN_EXE_apikeyctl");

/// A config for tests: the shipped groups, users admin (root) and alice (nobody).
pub fn test_config(dir: &Path, api_key_table: &str, extra_users: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
state_dir = "{state}"
admin_socket = "{sock}"
worker_threads = 2

[ApiKey]
{api_key_table}

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
email = "admin@example.com"
groups = ["Admin"]
unix_user = "root"

[users.alice]
email = "alice@example.com"
groups = ["Synchronizer"]
unix_user = "nobody"

[users.bob]
email = "bob@example.com"
groups = ["Synchronizer"]

{extra_users}
"#,
        state = dir.join("state").display(),
        sock = dir.join("apikeyd.sock").display(),
    )
}

/// `[auth]` for forward-auth tests, with `$auth` added to the table: the local proxy
/// trusted, `/catalog` needs `catalog:read` and `/catalog/sync` needs `catalog:sync`.
macro_rules! catalog_routes {
    ($auth:literal) => {
        concat!(
            "\n[auth]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
            $auth,
            r#"
[[auth.routes]]
prefix = "/catalog"
scope = "catalog:read"

[[auth.routes]]
prefix = "/catalog/sync"
scope = "catalog:sync"
"#
        )
    };
}

/// The catalog routes, keys in headers.
pub const CATALOG_ROUTES: &str = catalog_routes!("");

/// The catalog routes, with keys also read from the `api_key` query parameter.
pub const CATALOG_ROUTES_QUERY_KEY: &str = catalog_routes!("query_param = \"api_key\"\n");

pub const DEFAULT_POLICY: &str = r#"MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
DefaultExpirationPeriod = "p1y""#;

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
    runs: usize,
    /// The binaries run: the test build's, or another build's (`use_bins`).
    apikeyd: PathBuf,
    apikeyctl: PathBuf,
}

impl TestDaemon {
    pub fn start() -> Self {
        Self::start_with(DEFAULT_POLICY, "")
    }

    pub fn start_with(api_key_table: &str, extra_users: &str) -> Self {
        let mut d = Self::configured(api_key_table, extra_users);
        d.spawn(&[]);
        d
    }

    /// A temp dir with a config, the daemon not started yet (`spawn`, `spawn_as`).
    pub fn configured(api_key_table: &str, extra_users: &str) -> Self {
        let dir = tempfile::tempdir_in(open_temp_dir()).unwrap();
        // Let a non-root apikeyctl (uid nobody) reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("apikeyd.toml");
        std::fs::write(&config, test_config(dir.path(), api_key_table, extra_users)).unwrap();
        Self {
            socket: dir.path().join("apikeyd.sock"),
            log: dir.path().join("daemon.log"),
            config,
            dir,
            addr: "127.0.0.1:1".parse().unwrap(),
            child: None,
            runs: 0,
            apikeyd: PathBuf::from(APIKEYD),
            apikeyctl: PathBuf::from(APIKEYCTL),
        }
    }

    /// Run the `apikeyd` and `apikeyctl` in `dir` (say the release build) instead of
    /// the test build's.
    pub fn use_bins(&mut self, dir: &Path) {
        self.apikeyd = dir.join("apikeyd");
        self.apikeyctl = dir.join("apikeyctl");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("state/apikeyd.redb")
    }

    /// Start the binary and wait for its "listening" line.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        self.spawn_as(env, None, None);
    }

    /// `spawn`, optionally as another uid (and the same gid; tests run as root) and
    /// under a given umask (through `sh -c 'umask ..; exec apikeyd ..'`, so the pid is
    /// still the daemon's).
    pub fn spawn_as(&mut self, env: &[(&str, &str)], uid: Option<u32>, umask: Option<u32>) {
        use std::os::unix::process::CommandExt;
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let program = match uid {
            Some(_) => self.runnable_by_all(&self.apikeyd),
            None => self.apikeyd.clone(),
        };
        let mut cmd = match umask {
            None => Command::new(&program),
            Some(mask) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                    .arg(&program);
                c
            }
        };
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "apikeyd did not start; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tcp="))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
        // The socket is bound before the line is printed; wait for READY anyway.
        wait_until(Duration::from_secs(10), || {
            self.ctl(&["whoami"]).status.success()
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "apikeyd exited with {status}");
                    break;
                }
                assert!(Instant::now() < deadline, "apikeyd did not stop on SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn(&[]);
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_as(None, args)
    }

    /// apikeyctl on this daemon's socket, not run yet.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        self.ctl_program(&self.apikeyctl, args)
    }

    /// `ctl_command` with apikeyctl at `program`.
    fn ctl_program(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("APIKEYD_SOCKET")
            // Times in UTC, as the tests expect, unless a test sets TZ.
            .env_remove("TZ");
        cmd
    }

    /// Run apikeyctl, optionally as another uid (tests run as root).
    pub fn ctl_as(&self, uid: Option<u32>, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt;
        let mut cmd = match uid {
            Some(_) => self.ctl_program(&self.runnable_by_all(&self.apikeyctl), args),
            None => self.ctl_command(args),
        };
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.output().unwrap()
    }

    /// `program` (one of the built binaries) at a path any account can run it from.
    /// The binaries live under the checkout's target directory, which other accounts
    /// cannot enter when the checkout is private (under /root, or a mode 0700 temp
    /// dir): then a hard link (a copy across file systems) in this daemon's dir,
    /// which every account may enter, stands in for it.
    pub fn runnable_by_all(&self, program: impl AsRef<Path>) -> PathBuf {
        let program = program.as_ref();
        if program.ancestors().skip(1).all(open_to_all) {
            return program.to_path_buf();
        }
        let bin = self.dir.path().join("bin");
        let link = bin.join(program.file_name().unwrap());
        if !link.exists() {
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            if std::fs::hard_link(program, &link).is_err() {
                std::fs::copy(program, &link).unwrap();
            }
        }
        link
    }

    /// apikeyctl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "apikeyctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// apikeyctl with --json that must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// apikeyctl that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            !out.status.success(),
            "apikeyctl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn create(&self, user: &str, name: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec!["key", "create", "--user", user, "--name", name];
        args.extend_from_slice(extra);
        let v = self.json(&args);
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    pub fn keys(&self) -> Vec<Value> {
        self.json(&["key", "list", "--all"])["keys"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn audit_len(&self) -> usize {
        self.json(&["audit", "--limit", "100000"])["entries"]
            .as_array()
            .unwrap()
            .len()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `apikeyd_connections_open` as another client sees it (counting itself).
    pub fn connections_open(&self) -> u64 {
        let m = request(self.addr, "GET", "/metrics", &[]).body;
        m.lines()
            .find_map(|l| l.strip_prefix("apikeyd_connections_open ")?.parse().ok())
            .unwrap()
    }

    /// POST to the daemon's TCP listener.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        http(self.addr, "POST", path, &[], body.as_bytes())
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether every account may pass through directory `dir` (its "others" execute
/// bit; a path that is not there counts as closed).
fn open_to_all(dir: &Path) -> bool {
    dir.as_os_str().is_empty()
        || std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
}

/// Where the daemons' temp dirs go: the usual temp dir when every account can reach
/// it (tests run apikeyctl and apikeyd as other accounts against the socket and
/// files inside), else /tmp.
pub fn open_temp_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if tmp.ancestors().all(open_to_all) {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

/// Restart `d` with these lines added to its `[server]` table.
pub fn restart_with_server_settings(d: &mut TestDaemon, lines: &str) {
    d.stop();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace(
        "worker_threads = 2\n",
        &format!("worker_threads = 2\n{lines}"),
    );
    std::fs::write(&d.config, text).unwrap();
    d.spawn(&[]);
}

/// A JSON request to the daemon's TCP listener (`Connection: close`): the status and
/// the body as JSON (a JSON string when it is not JSON).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    let a = send(addr, &[req.as_bytes(), body].concat());
    let value = serde_json::from_str(&a.body).unwrap_or(Value::String(a.body));
    (a.status, value)
}

/// `apikeyd check-config --config <config>`.
pub fn check_config(config: &Path) -> Output {
    Command::new(APIKEYD)
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// A port nothing listens on (yet): bound to port 0 and let go, so someone else may
/// take it in between.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The program `name` on PATH or, failing that, in one of `dirs`.
pub fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(dirs.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Whether this run is CI's (`.ci/run` runs with `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A test that cannot run here (not root, a tool missing) must never pass as if it had
/// run. `require(what, met)` returns true when `met`. Otherwise the test fails, naming
/// `what` it needs, unless the developer asked to skip such tests with
/// `APIKEYD_ALLOW_SKIP=1` outside CI: then it prints SKIPPED on stderr (past the test
/// harness's capture) and returns false, and the test returns at once.
pub fn require(what: &str, met: bool) -> bool {
    if met {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    let allowed = std::env::var("APIKEYD_ALLOW_SKIP").is_ok_and(|v| v == "1");
    if in_ci() {
        panic!("{test} needs {what}; CI must run it (CI is set, so skipping is not allowed)");
    }
    if !allowed {
        panic!(
            "{test} needs {what}; run it where that holds, or set APIKEYD_ALLOW_SKIP=1 to \
             skip such tests explicitly (never under CI)"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: needs {what} (APIKEYD_ALLOW_SKIP=1)"
    );
    false
}

/// `require` root, for tests that run apikeyctl or apikeyd as another uid.
pub fn require_root(why: &str) -> bool {
    require(&format!("root ({why})"), is_root())
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A raw HTTP answer.
pub struct Answer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// Everything after the head (on a pipelined connection, the later answers too).
    pub body: String,
}

impl Answer {
    /// The first answer in `text`, the bytes a server sent (0 for a status that is
    /// not there).
    pub fn parse(text: &str) -> Self {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A new connection to `addr` whose reads give up after `timeout`.
pub fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// A connection to the daemon from `source` (any 127.0.0.0/8 address is this host):
/// how the tests play clients other than 127.0.0.1.
pub fn connect_from(source: &str, addr: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
}

/// A connection as a writer and a reader of its answers one by one (keep-alive).
pub fn split(s: TcpStream) -> (TcpStream, BufReader<TcpStream>) {
    (s.try_clone().unwrap(), BufReader::new(s))
}

/// One answer read off a keep-alive connection (its body by Content-Length).
pub fn read_answer(r: &mut BufReader<TcpStream>) -> Answer {
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// `bytes` written to `stream` exactly as given, then everything the server sends
/// until it closes (or the stream's read timeout passes), as text. A server may
/// answer and close before it has read all (413 to an oversized body), so a failed
/// write counts only when nothing came back.
pub fn exchange(mut stream: impl Read + Write, bytes: &[u8]) -> String {
    let written = stream.write_all(bytes);
    let mut resp = Vec::new();
    let _ = stream.read_to_end(&mut resp);
    if resp.is_empty() {
        written.unwrap();
    }
    String::from_utf8_lossy(&resp).into_owned()
}

/// `bytes` (a whole request, or several) sent as given on a new connection to
/// `addr`; the first answer.
pub fn send(addr: SocketAddr, bytes: &[u8]) -> Answer {
    Answer::parse(&exchange(connect(addr, Duration::from_secs(10)), bytes))
}

/// Any request to the daemon's TCP listener, with the response headers.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    send(addr, req.as_bytes())
}

/// One request on a new connection from `source` (with `Connection: close`): the
/// status and the body.
pub fn request_from(source: &str, d: &TestDaemon, head: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{head}\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = Answer::parse(&exchange(connect_from(source, d.addr), req.as_bytes()));
    (a.status, a.body)
}

/// An `Authorization` header value for `key`.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A log without its ANSI colour sequences (`ESC [ ... m`).
pub fn strip_colours(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
