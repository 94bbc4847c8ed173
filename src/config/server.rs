//! `[server]`: listeners, storage paths and connection limits. Relative paths land
//! in the directories systemd names ([`Environment`]) when it names them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::validator::Validator;

/// Listener and storage settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// TCP address for verification (and key-authenticated admin) requests.
    pub listen: SocketAddr,
    /// Path of the admin Unix socket.
    pub admin_socket: PathBuf,
    /// Directory holding the redb database.
    pub state_dir: PathBuf,
    /// File holding the HMAC server secret (created on first start).
    pub secret_file: PathBuf,
    /// Tokio worker threads; 0 means one per CPU, 1 a single-threaded runtime.
    pub worker_threads: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request head once it has started one.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Most connections open at once, TCP and admin socket together (one budget of
    /// file descriptors).
    pub max_connections: usize,
    /// Most connections open at once from one client: an address on TCP (IPv6: one
    /// network of `rate_limit.ipv6_prefix` bits), a local account on the socket.
    pub max_connections_per_client: usize,
}

impl ServerConfig {
    /// Where the database lives.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("apikeyd.redb")
    }
}

/// Environment that changes where relative paths land (systemd sets these).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$STATE_DIRECTORY`: replaces a relative `state_dir`.
    pub state_directory: Option<PathBuf>,
    /// `$RUNTIME_DIRECTORY`: holds a relative `admin_socket`.
    pub runtime_directory: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY`: a `server-secret` credential there is used as the secret.
    pub credentials_directory: Option<PathBuf>,
}

impl Environment {
    /// Read from the process environment.
    pub fn from_process() -> Self {
        let dir = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .map(|p| {
                    // systemd may list several directories separated by ':'; use the first.
                    let s = p.to_string_lossy().into_owned();
                    PathBuf::from(s.split(':').next().unwrap_or_default())
                })
                .filter(|p| !p.as_os_str().is_empty())
        };
        Self {
            state_directory: dir("STATE_DIRECTORY"),
            runtime_directory: dir("RUNTIME_DIRECTORY"),
            credentials_directory: dir("CREDENTIALS_DIRECTORY"),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    listen: Option<String>,
    admin_socket: Option<String>,
    state_dir: Option<String>,
    secret_file: Option<String>,
    worker_threads: Option<i64>,
    max_body_bytes: Option<i64>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<i64>,
    max_connections_per_client: Option<i64>,
}

pub(crate) const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_socket",
    "state_dir",
    "secret_file",
    "worker_threads",
    "max_body_bytes",
    "header_read_timeout",
    "idle_timeout",
    "max_connections",
    "max_connections_per_client",
];

/// Where the files go.
struct Paths {
    state_dir: PathBuf,
    admin_socket: PathBuf,
    secret_file: PathBuf,
}

/// The connection budget: the whole and one client's share.
struct Connections {
    max: i64,
    per_client: i64,
}

impl Validator {
    /// `None` when the listen address does not parse (reported).
    pub(crate) fn server(&mut self, s: &RawServer, env: &Environment) -> Option<ServerConfig> {
        let listen = self.listen(s.listen.as_deref().unwrap_or("127.0.0.1:8700"));
        let paths = self.server_paths(s, env);
        let worker_threads = self.int(
            "server.worker_threads",
            s.worker_threads,
            0,
            0..=256,
            Some("0 = one per CPU, up to 256"),
        );
        let max_body = self.int(
            "server.max_body_bytes",
            s.max_body_bytes,
            65_536,
            1024..=16 * 1024 * 1024,
            None,
        );
        let header_read_timeout = self.fixed_period(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref().unwrap_or("pt30s"),
            3600,
            "pt1s to pt1h",
        );
        let idle_timeout = self.fixed_period(
            "server.idle_timeout",
            s.idle_timeout.as_deref().unwrap_or("pt5m"),
            86_400,
            "pt1s to p1d",
        );
        let connections = self.connections(s);
        Some(ServerConfig {
            listen: listen?,
            admin_socket: paths.admin_socket,
            state_dir: paths.state_dir,
            secret_file: paths.secret_file,
            worker_threads: usize::try_from(worker_threads).unwrap_or(0),
            max_body_bytes: usize::try_from(max_body).unwrap_or(65_536),
            header_read_timeout: header_read_timeout?,
            idle_timeout: idle_timeout?,
            max_connections: usize::try_from(connections.max).unwrap_or(10_000),
            // Only the default may exceed a small total: it follows the total.
            max_connections_per_client: usize::try_from(
                connections.per_client.min(connections.max),
            )
            .unwrap_or(1_000),
        })
    }

    fn listen(&mut self, text: &str) -> Option<SocketAddr> {
        let parsed = text.parse::<SocketAddr>().ok();
        if parsed.is_none() {
            self.push(
                "server.listen",
                format!("{text:?} is not an address:port such as \"127.0.0.1:8700\""),
            );
        }
        parsed
    }

    fn server_paths(&mut self, s: &RawServer, env: &Environment) -> Paths {
        let state_dir_text = s.state_dir.as_deref().unwrap_or("var");
        if state_dir_text.trim().is_empty() {
            self.push("server.state_dir", "must not be empty".into());
        }
        let state_dir = match &env.state_directory {
            Some(dir) if Path::new(state_dir_text).is_relative() => dir.clone(),
            _ => PathBuf::from(state_dir_text),
        };
        let socket_text = s.admin_socket.as_deref().unwrap_or("apikeyd.sock");
        if socket_text.trim().is_empty() {
            self.push("server.admin_socket", "must not be empty".into());
        }
        let admin_socket = match &env.runtime_directory {
            Some(rt) if Path::new(socket_text).is_relative() => rt.join(
                Path::new(socket_text)
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("apikeyd.sock")),
            ),
            _ => PathBuf::from(socket_text),
        };
        if admin_socket.as_os_str().len() > 100 {
            self.push(
                "server.admin_socket",
                format!(
                    "{} is too long for a Unix socket path (at most 100 bytes)",
                    admin_socket.display()
                ),
            );
        }
        let secret_file = match s.secret_file.as_deref() {
            None | Some("") => state_dir.join("server.secret"),
            Some(p) if Path::new(p).is_relative() && env.state_directory.is_some() => {
                state_dir.join(Path::new(p).file_name().unwrap_or_default())
            }
            Some(p) => PathBuf::from(p),
        };
        Paths {
            state_dir,
            admin_socket,
            secret_file,
        }
    }

    fn connections(&mut self, s: &RawServer) -> Connections {
        let max = self.int(
            "server.max_connections",
            s.max_connections,
            10_000,
            1..=1_000_000,
            None,
        );
        let per_client = s.max_connections_per_client.unwrap_or(1_000);
        if !(1..=1_000_000).contains(&per_client) {
            self.push(
                "server.max_connections_per_client",
                format!("{per_client} is out of range (1 to 1000000)"),
            );
        } else if per_client > max && s.max_connections_per_client.is_some() {
            self.push(
                "server.max_connections_per_client",
                format!("{per_client} is more than server.max_connections ({max})"),
            );
        }
        Connections { max, per_client }
    }
}

#[cfg(test)]
mod tests;
