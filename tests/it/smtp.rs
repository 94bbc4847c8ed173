//! A real SMTP server (mailin-embedded) on 127.0.0.1 that keeps every message it
//! receives and when: the mail sink of the alert tests and of the alerts benchmark,
//! which includes this file with `#[path]`. For the outage tests it can also hang
//! after DATA, speak STARTTLS with a certificate of a test CA and take AUTH PLAIN,
//! and sit behind a front door that the test closes and opens (the server down and
//! back on its port) or that speaks TLS from the first byte; `Silent` accepts
//! connections and never answers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailin_embedded::{response, AuthMechanism, Handler, Response, Server, SslConfig};

/// One message as the server took it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope recipients.
    pub to: Vec<String>,
    /// Headers and body, lines ending in `\n`.
    pub data: String,
    /// When the end of its data arrived (before any `delay` of the server).
    pub received_at: DateTime<Utc>,
}

impl Mail {
    /// The data with quoted-printable's soft line breaks joined, so that a value the
    /// encoder wrapped (an id, a time) reads whole wherever a longer line put the
    /// break.
    pub fn unwrapped(&self) -> String {
        self.data.replace("=\r\n", "").replace("=\n", "")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_lowercase());
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }
}

#[derive(Clone)]
struct Sink {
    mails: Arc<Mutex<Vec<Mail>>>,
    to: Vec<String>,
    data: Vec<u8>,
    delay: Duration,
    hang: Arc<Hang>,
    /// The logins AUTH PLAIN saw (user, password); it takes any.
    logins: Arc<Mutex<Vec<(String, String)>>>,
}

/// Whether the server hangs at the end of a message's data, and how many sessions
/// hang there now.
#[derive(Default)]
struct Hang {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Handler for Sink {
    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.logins
            .lock()
            .unwrap()
            .push((user.to_owned(), password.to_owned()));
        response::AUTH_OK
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let received_at = Utc::now();
        {
            // Hang until the test lets go (a minute at most), then give up on the
            // message: the client stopped waiting long ago.
            let mut state = self.hang.state.lock().unwrap();
            if state.0 {
                state.1 += 1;
                self.hang.changed.notify_all();
                let (mut state, _) = self
                    .hang
                    .changed
                    .wait_timeout_while(state, Duration::from_secs(60), |s| s.0)
                    .unwrap();
                state.1 -= 1;
                return response::TRANSACTION_FAILED;
            }
        }
        std::thread::sleep(self.delay);
        self.mails.lock().unwrap().push(Mail {
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).replace("\r\n", "\n"),
            received_at,
        });
        response::OK
    }
}

/// The server; its threads live until the process exits.
pub struct Smtp {
    /// Where clients connect: the server's port, or its front door's.
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    hang: Arc<Hang>,
    logins: Arc<Mutex<Vec<(String, String)>>>,
    door: Option<FrontDoor>,
}

/// How a server is set up.
#[derive(Default)]
struct Setup {
    delay: Duration,
    threads: u32,
    /// STARTTLS with this certificate.
    starttls: Option<(PathBuf, PathBuf)>,
    /// AUTH PLAIN (mailin offers it only after STARTTLS).
    auth: bool,
}

impl Smtp {
    /// On a port of its own, answering at once.
    pub fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), Duration::ZERO)
    }

    /// On `listener` (say a port the daemon was given while nothing listened on it),
    /// answering each message after `delay`.
    pub fn on(listener: TcpListener, delay: Duration) -> Self {
        Self::serve(
            listener,
            Setup {
                delay,
                ..Setup::new()
            },
        )
    }

    /// On a port of its own, offering STARTTLS with `ca`'s certificate for
    /// localhost, and AUTH PLAIN after it (any password: `logins` has them).
    pub fn starttls(ca: &TestCa) -> Self {
        Self::serve(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            Setup {
                starttls: Some((ca.cert.clone(), ca.key.clone())),
                auth: true,
                ..Setup::new()
            },
        )
    }

    /// Behind a front door: `port` is the door's, which `stop` closes (connections
    /// refused, those open cut) and `start` opens again on the same port. With
    /// `tls`, the door speaks TLS from the first byte (implicit TLS, port 465's
    /// way) with `tls`'s certificate for localhost.
    pub fn behind_door(tls: Option<&TestCa>) -> Self {
        let mut smtp = Self::start();
        let door = FrontDoor::open(smtp.port, tls);
        smtp.port = door.port;
        smtp.door = Some(door);
        smtp
    }

    /// The server goes down: its port refuses connections.
    pub fn stop(&mut self) {
        self.door.as_mut().expect("behind_door").close();
    }

    /// The server is back on its port.
    pub fn start_again(&mut self) {
        self.door.as_mut().expect("behind_door").reopen();
    }

    /// From now on (`true`) the server hangs at the end of each message's data
    /// and never answers it; `false` lets the hung sessions go (they fail the
    /// message) and later messages through.
    pub fn hang_after_data(&self, hang: bool) {
        self.hang.state.lock().unwrap().0 = hang;
        self.hang.changed.notify_all();
    }

    /// Wait until `n` sessions hang after DATA.
    pub fn wait_hanging(&self, n: usize, timeout: Duration) {
        let state = self.hang.state.lock().unwrap();
        let (state, _) = self
            .hang
            .changed
            .wait_timeout_while(state, timeout, |s| s.1 < n)
            .unwrap();
        assert!(
            state.1 >= n,
            "{} sessions hang after DATA, not {n}",
            state.1
        );
    }

    /// The logins AUTH PLAIN saw, as (user, password).
    pub fn logins(&self) -> Vec<(String, String)> {
        self.logins.lock().unwrap().clone()
    }

    /// On a port of its own, answering at once, on up to `threads` connections at a
    /// time (the benchmark's pooled transport opens many).
    pub fn with_threads(threads: u32) -> Self {
        Self::serve(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            Setup {
                threads,
                ..Setup::new()
            },
        )
    }

    fn serve(listener: TcpListener, setup: Setup) -> Self {
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let hang = Arc::new(Hang::default());
        let logins = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink {
            mails: mails.clone(),
            to: Vec::new(),
            data: Vec::new(),
            delay: setup.delay,
            hang: hang.clone(),
            logins: logins.clone(),
        };
        let mut server = Server::new(sink);
        server
            .with_name("smtp.test")
            .with_num_threads(setup.threads)
            .with_tcp_listener(listener);
        if let Some((cert, key)) = setup.starttls {
            install_crypto_provider();
            server
                .with_ssl(SslConfig::SelfSigned {
                    cert_path: cert.display().to_string(),
                    key_path: key.display().to_string(),
                })
                .unwrap();
        }
        if setup.auth {
            server.with_auth(AuthMechanism::Plain);
        }
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self {
            port,
            mails,
            hang,
            logins,
            door: None,
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// How many messages arrived so far.
    pub fn count(&self) -> usize {
        self.mails.lock().unwrap().len()
    }

    /// The messages after the first `skip`, in the order they arrived.
    pub fn mails_since(&self, skip: usize) -> Vec<Mail> {
        self.mails.lock().unwrap()[skip..].to_vec()
    }
}

impl Setup {
    fn new() -> Self {
        Self {
            threads: 8,
            ..Self::default()
        }
    }
}

/// rustls is built with two crypto providers here (ring, and aws-lc-rs through
/// other crates), so mailin-embedded's `ServerConfig::builder()` needs the process
/// default set; ring, as apikeyd uses.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A test CA and a server certificate it signed for `localhost` (openssl, as the
/// PostgreSQL TLS test makes its own).
pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA certificate (PEM): what `[smtp] ca_file` names.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = "set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout ca.key -out ca.pem -days 2 -subj /CN=apikeyd-smtp-test-ca \
                -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout server.key -out server.csr -subj /CN=localhost
            printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                -out server.pem -days 2 -extfile server.ext 2>/dev/null";
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "making the test CA failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let at = |name: &str| dir.path().join(name);
        // Readable by a daemon that runs as another account.
        for f in ["ca.pem", "server.pem"] {
            std::fs::set_permissions(at(f), std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
        Self {
            ca: at("ca.pem"),
            cert: at("server.pem"),
            key: at("server.key"),
            _dir: dir,
        }
    }
}

/// A TCP front door to a server on 127.0.0.1: forwards each connection, or ends
/// TLS first (`tls`). Closing it closes the port and cuts the connections through
/// it; reopening binds the same port again.
struct FrontDoor {
    rt: tokio::runtime::Runtime,
    port: u16,
    backend: u16,
    tls: Option<tokio_rustls::TlsAcceptor>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FrontDoor {
    fn open(backend: u16, tls: Option<&TestCa>) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = tls.map(|ca| {
            let certs = CertificateDer::pem_file_iter(&ca.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&ca.key).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut door = Self {
            rt,
            port: 0,
            backend,
            tls,
            task: None,
        };
        door.reopen();
        door
    }

    fn reopen(&mut self) {
        assert!(self.task.is_none(), "the door is open");
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port)))
            .unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (backend, tls) = (self.backend, self.tls.clone());
        self.task = Some(self.rt.spawn(async move {
            // Dropped with the task: every connection through the door is cut.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                conns.spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let _ = match tls {
                        None => {
                            let mut client = client;
                            tokio::io::copy_bidirectional(&mut client, &mut server).await
                        }
                        Some(acceptor) => match acceptor.accept(client).await {
                            Ok(mut client) => {
                                tokio::io::copy_bidirectional(&mut client, &mut server).await
                            }
                            Err(e) => Err(e),
                        },
                    };
                });
                while conns.try_join_next().is_some() {}
            }
        }));
    }

    fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = self.rt.block_on(task);
        }
    }
}

/// A server that accepts connections and never says a word.
pub struct Silent {
    pub port: u16,
    accepted: Arc<Mutex<usize>>,
}

impl Silent {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            // Held open until the process exits.
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                held.push(conn);
                *count.lock().unwrap() += 1;
            }
        });
        Self { port, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}
