//! A private PostgreSQL server for the tests, from the binaries of Debian's
//! `postgresql` package (`.ci/run` installs it): `initdb` into a temporary directory,
//! then `postgres` on a free loopback port. PostgreSQL refuses to run as root, and CI
//! runs as root, so there both run as the `postgres` account (else `nobody`), through
//! `setpriv`, which execs the server itself: dropping the [`TestServer`] kills it.
//!
//! Without the binaries the tests that need them fail, naming the package; outside
//! CI, `APIKEYD_ALLOW_SKIP=1` turns that into a `SKIPPED` line, as in `tests/it`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private server; killed when dropped.
pub(crate) struct TestServer {
    child: Child,
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    // Removed after the server is killed (fields drop in order).
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl TestServer {
    /// A fast shutdown (SIGINT), so the server stops its own processes; SIGKILL if
    /// it has not stopped within 10 s.
    fn shut_down(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory holding `initdb` and `postgres`: the newest version installed.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

/// The account (user, group) to run as when we are root: `setpriv` looks the names
/// up.
fn account() -> Option<(&'static str, &'static str)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let exists = |user: &str| {
        Command::new("id")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let found = [("postgres", "postgres"), ("nobody", "nogroup")]
        .into_iter()
        .find(|(user, _)| exists(user));
    match found {
        Some(account) => Some(account),
        None => panic!(
            "running as root and there is neither a 'postgres' nor a 'nobody' account to run PostgreSQL as"
        ),
    }
}

/// A test CA and a server certificate for `names` in the data directory (made by
/// the server's account, so that the key is its own and private, as PostgreSQL
/// demands), and `ssl = on`.
fn make_certificates(data: &Path, names: &[&str], user: Option<(&str, &str)>) {
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let script = format!(
        "set -e; cd '{dir}'
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout test-ca.key -out test-ca.crt -days 2 -subj /CN=apikeyd-test-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout server.key -out server.csr -subj /CN={cn}
         printf 'subjectAltName={sans}\nextendedKeyUsage=serverAuth\n' > server.ext
         openssl x509 -req -in server.csr -CA test-ca.crt -CAkey test-ca.key \
             -CAcreateserial -out server.crt -days 2 -extfile server.ext
         chmod 600 server.key
         echo 'ssl = on' >> postgresql.conf",
        dir = data.display(),
        cn = names.first().copied().unwrap_or("localhost"),
        sans = sans.join(","),
    );
    let out = command(Path::new("/bin/sh"), user)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "making test certificates failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_server(bin: &Path, data: &Path, port: u16, user: Option<(&str, &str)>) -> Child {
    command(&bin.join("postgres"), user)
        .arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(data.parent().unwrap_or(data))
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn command(program: &Path, as_user: Option<(&str, &str)>) -> Command {
    match as_user {
        Some((user, group)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={user}"))
                .arg(format!("--regid={group}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    /// Start a server, or `None` when PostgreSQL is not installed and skipping is
    /// allowed (never under `CI`).
    pub(crate) fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// A server speaking TLS (`ssl = on`) with a certificate for `names` (DNS names)
    /// signed by a test CA made for it, and that CA's certificate file.
    #[allow(dead_code, reason = "the TLS tests use it")]
    pub(crate) fn start_tls(names: &[&str]) -> Option<(Self, PathBuf)> {
        let server = Self::start_with(Some(names))?;
        let ca = server.data.join("test-ca.crt");
        Some((server, ca))
    }

    fn start_with(tls_names: Option<&[&str]>) -> Option<Self> {
        let Some(bin) = bin_dir() else {
            let why = "needs PostgreSQL (Debian package `postgresql`: /usr/lib/postgresql/*/bin)";
            if std::env::var_os("CI").is_none() && std::env::var_os("APIKEYD_ALLOW_SKIP").is_some()
            {
                eprintln!("SKIPPED: PostgreSQL store tests: {why}");
                return None;
            }
            panic!("{why}; outside CI, APIKEYD_ALLOW_SKIP=1 skips these tests");
        };
        let user = account();
        let dir = tempfile::tempdir().unwrap();
        if user.is_some() {
            // The server's account creates its data directory and socket in here.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), user)
            .arg("-D")
            .arg(&data)
            .args(["-U", "apikeyd", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(names) = tls_names {
            make_certificates(&data, names, user);
        }
        let port = free_port();
        let child = run_server(&bin, &data, port, user);
        let server = Self {
            child,
            port,
            bin,
            data,
            _dir: dir,
        };
        server.wait_ready();
        Some(server)
    }

    /// Stop the server (a fast shutdown: clients are cut off), keeping its data.
    #[allow(dead_code, reason = "used by tests/it, which includes this file")]
    pub(crate) fn stop(&mut self) {
        self.shut_down();
    }

    /// Start it again on the same data and port, and wait until it answers.
    #[allow(dead_code, reason = "used by tests/it, which includes this file")]
    pub(crate) fn restart(&mut self) {
        self.child = run_server(&self.bin, &self.data, self.port, account());
        self.wait_ready();
    }

    /// Connection parameters for database `db` (no password: `trust` on loopback).
    pub(crate) fn url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=apikeyd dbname={db}", self.port)
    }

    /// A new empty database.
    pub(crate) fn database(&self, name: &str) -> String {
        self.sql(&format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    fn sql(&self, statement: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) =
                tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            let conn = tokio::spawn(conn);
            client.batch_execute(statement).await.unwrap();
            drop(client);
            let _ = conn.await;
        });
    }

    fn wait_ready(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = rt.block_on(async {
                tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                    .await
                    .is_ok()
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
