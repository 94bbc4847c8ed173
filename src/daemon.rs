//! Wiring: open the store, load keys, bind the TCP listener and the admin socket,
//! run the background last-used flush, and stop or reload on signals. `run` takes its
//! shutdown and reload triggers as parameters so tests can drive it.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};

use crate::alerts::maintenance::{Maintenance, MaintenanceStatus};
use crate::alerts::{AlertError, Alerts, Dispatcher};
use crate::api::{self, AppState};
use crate::channels::{ChannelError, Channels};
use crate::clock::SharedClock;
use crate::config::credential::read_password;
use crate::config::store::POSTGRES_PASSWORD_CREDENTIAL;
use crate::config::StoreConfig;
use crate::config::{self, Config, Environment};
use crate::keys::secret::{load_or_create_server_secret, KeyHasher, SecretSource};
use crate::keys::{Keys, Settings};
use crate::store::{PostgresStore, RedbStore, Storage};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The server secret could not be loaded or created.
    #[error(transparent)]
    Secret(#[from] crate::keys::secret::SecretFileError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A delivery channel could not be set up.
    #[error(transparent)]
    Channels(#[from] ChannelError),
    /// A start-up task died.
    #[error("start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Jobs left Running by a crash could not be replaced.
    #[error("cannot recover alert jobs: {0}")]
    Jobs(#[from] AlertError),
    /// The console's proxy secret could not be read, or is too short.
    #[error("console.proxy_secret_file: {0}")]
    ProxySecret(#[from] crate::config::console::ProxySecretError),
    /// The PostgreSQL password could not be read.
    #[error("cannot read the PostgreSQL password from {path}: {source}")]
    StorePassword {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory could not be created or is not a directory.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A daemon with its listeners bound and keys loaded, not yet serving.
pub struct Daemon {
    config: Config,
    keys: Arc<Keys>,
    alerts: Arc<Alerts>,
    channels: Arc<Channels>,
    tcp: TcpListener,
    unix: UnixListener,
    socket_path: PathBuf,
    /// Where the server secret came from (for backups: a restore needs it).
    secret_source: SecretSource,
    /// What the console's authenticating proxy proves itself with.
    proxy_secret: Option<String>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.socket_path)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Open everything the daemon needs.
    pub async fn start(
        config: Config,
        env: &Environment,
        clock: SharedClock,
    ) -> Result<Self, StartError> {
        prepare_state_dir(&config.server.state_dir, env.state_directory.is_some())?;
        let (secret, source) = load_or_create_server_secret(
            &config.server.secret_file,
            env.credentials_directory.as_deref(),
        )?;
        match &source {
            SecretSource::Created(p) => {
                tracing::info!(path = %p.display(), "created a new server secret")
            }
            SecretSource::File(p) => tracing::info!(path = %p.display(), "server secret loaded"),
            SecretSource::Credential(p) => {
                tracing::info!(path = %p.display(), "server secret loaded from systemd credential")
            }
        }
        let proxy_secret = load_proxy_secret(&config, env)?;
        let db_path = config.server.database_path();
        let fingerprint = KeyHasher::new(&secret).fingerprint();
        let store = open_store(&config, env, fingerprint).await?;
        let keys = {
            let store = store.clone();
            let settings = Settings::from(&config);
            let hasher = KeyHasher::new(&secret);
            let clock = clock.clone();
            tokio::task::spawn_blocking(move || Keys::open(store, hasher, clock, settings))
                .await??
        };
        match &config.store {
            StoreConfig::Redb => {
                tracing::info!(db = %db_path.display(), keys = keys.len(), "database opened")
            }
            StoreConfig::Postgres(_) => {
                tracing::info!(keys = keys.len(), "PostgreSQL database opened")
            }
        }
        keys.alerting().set_config(config.alerts.clone());
        let keys = Arc::new(keys);
        let alerts =
            Arc::new(Alerts::new(keys.clone(), store).with_console(config.console.clone()));
        let channels = Channels::new(
            &config.alerts,
            alerts.clone(),
            env.credentials_directory.as_deref(),
        )?;
        let replaced = alerts.recover_running_jobs().await?;
        if replaced > 0 {
            tracing::warn!(
                jobs = replaced,
                "alert jobs interrupted by the last stop were replaced by new jobs"
            );
        }

        let tcp = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Bind {
                what: config.server.listen.to_string(),
                source,
            })?;
        let socket_path = config.server.admin_socket.clone();
        if socket_path.starts_with(&config.server.state_dir) {
            // Fine for one account running everything (the shipped config outside
            // systemd); worth knowing when other local users need the socket.
            tracing::info!(
                socket = %socket_path.display(),
                "the admin socket is inside the private state directory: only its owner and root can reach it; set [server] admin_socket elsewhere for other local users"
            );
        }
        let unix = bind_unix(&socket_path).await?;
        Ok(Self {
            config,
            keys,
            alerts,
            channels: Arc::new(channels),
            tcp,
            unix,
            socket_path,
            secret_source: source,
            proxy_secret,
        })
    }

    /// The bound TCP address (useful with port 0).
    pub fn tcp_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The admin socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The key service.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.clone()
    }

    /// Serve until `shutdown` completes; each message on `reload` re-reads the
    /// configuration file. Flushes last-used times before returning.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        mut reload: mpsc::Receiver<()>,
        env: Environment,
    ) -> Result<(), crate::keys::KeyError> {
        let maintenance_status = MaintenanceStatus::default();
        let mut state = AppState::new(
            self.alerts.clone(),
            self.config.auth.clone(),
            self.config.rate_limit.clone(),
        );
        state.maintenance = maintenance_status.clone();
        state.secret_source = Arc::from(self.secret_source.to_string());
        state.start_only = Some(Arc::new(config::StartOnly::of(&self.config)));
        let mut console = api::console::Sessions::new(
            self.config.console.clone(),
            console_base(&self.config.console, self.tcp.local_addr().ok()),
            self.keys.clock().clone(),
        );
        if let Some(secret) = self.proxy_secret {
            console = console.with_proxy_secret(secret);
        }
        state.console = Arc::new(console);
        let state_for_reload = state.clone();
        let max_body = self.config.server.max_body_bytes;
        let (stop_tx, stop_rx) = watch::channel(false);

        let tcp_app = api::tcp_router(state.clone(), max_body);
        // One budget of connections (file descriptors) for both listeners.
        let limits = api::server::ConnectionLimits::new(&self.config.server, state.clone());
        let tcp_task = tokio::spawn(api::server::serve_tcp(
            self.tcp,
            tcp_app,
            self.config.server.clone(),
            limits.clone(),
            stop_rx.clone(),
        ));
        let unix_task = tokio::spawn(api::server::serve_unix(
            self.unix,
            api::unix_router(state, max_body),
            self.config.server.clone(),
            limits,
            stop_rx.clone(),
        ));

        let keys = self.keys.clone();
        // Other nodes' changes (cluster mode; returns at once on redb).
        let poll = match &self.config.store {
            StoreConfig::Postgres(pg) => pg.poll_interval,
            StoreConfig::Redb => std::time::Duration::from_secs(1),
        };
        let follower = tokio::spawn(crate::keys::follow::follow(
            keys.clone(),
            poll,
            stop_rx.clone(),
        ));
        let dispatcher = tokio::spawn(
            Dispatcher::new(self.alerts.clone(), self.channels.clone()).run(stop_rx.clone()),
        );
        // Rotations waiting for a new secret's first use switch off the request path.
        // It stops after the listeners, so the first uses of the last requests are
        // recorded by its final round.
        let (switch_stop_tx, switch_stop_rx) = watch::channel(false);
        let switcher = tokio::spawn(crate::keys::rotation::switch_on_first_use(
            keys.clone(),
            switch_stop_rx,
        ));
        // The last-used flush, expiry sweep, purge and inactivity warning.
        let mut maintenance = match Maintenance::start(
            keys.clone(),
            &self.config.alerts,
            maintenance_status,
        )
        .await
        {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "maintenance jobs could not start; last-used times are flushed at stop only");
                None
            }
        };

        notify("READY=1");
        tracing::info!("apikeyd ready");
        let source = self.config.source.clone();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = reload.recv() => reload_config(&state_for_reload, &source, &env, &self.config),
            }
        }
        notify("STOPPING=1");
        tracing::info!("stopping: finishing requests in flight");
        let _ = stop_tx.send(true);
        let _ = tcp_task.await;
        let _ = unix_task.await;
        let _ = switch_stop_tx.send(true);
        if let Some(m) = maintenance.as_mut() {
            m.shutdown().await;
        }
        let _ = dispatcher.await;
        let _ = switcher.await;
        let _ = follower.await;
        let written = keys.flush_last_used(true).await?;
        let _ = std::fs::remove_file(&self.socket_path);
        tracing::info!(last_used_written = written, "stopped");
        Ok(())
    }
}

/// Where console links point: `[console] public_url`, else the TCP listener
/// (loopback for an address that means "every interface").
fn console_base(console: &config::ConsoleConfig, listen: Option<SocketAddr>) -> String {
    if let Some(url) = &console.public_url {
        return url.to_string();
    }
    match listen {
        Some(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}")
        }
        None => String::new(),
    }
}

/// The console's proxy secret (read at start only, as all of `[console]`);
/// one its group can read is named in a warning (every account: refused).
fn load_proxy_secret(config: &Config, env: &Environment) -> Result<Option<String>, StartError> {
    let Some(secret) = config
        .console
        .proxy_secret(env.credentials_directory.as_deref())?
    else {
        return Ok(None);
    };
    let path = secret.path.display();
    if secret.group_readable {
        tracing::warn!(
            path = %path,
            "the console proxy secret is readable by its group, whose accounts could then log in as anyone through the proxy header; chmod 600 it unless the group is the proxy's"
        );
    } else {
        tracing::info!(path = %path, "console proxy secret loaded");
    }
    Ok(Some(secret.value))
}

/// Open the configured store: redb in the state directory, or PostgreSQL (only under
/// the server secret it was written with; see [`PostgresStore::check_secret`]).
async fn open_store(
    config: &Config,
    env: &Environment,
    fingerprint: [u8; 32],
) -> Result<Arc<dyn Storage>, StartError> {
    match &config.store {
        StoreConfig::Redb => {
            let p = config.server.database_path();
            let store = tokio::task::spawn_blocking(move || RedbStore::open(&p)).await??;
            Ok(Arc::new(store))
        }
        StoreConfig::Postgres(pg) => {
            let password = read_password(
                env.credentials_directory.as_deref(),
                POSTGRES_PASSWORD_CREDENTIAL,
                pg.password_file.as_deref(),
            )
            .map_err(|e| StartError::StorePassword {
                path: e.path.display().to_string(),
                source: e.source,
            })?;
            let pg = pg.clone();
            let store = tokio::task::spawn_blocking(move || {
                let store = PostgresStore::connect(&pg, password.as_deref())?;
                store.check_secret(&fingerprint)?;
                tracing::info!(node = %store.node(), "joined the nodes on this PostgreSQL database");
                Ok::<_, crate::store::StoreError>(store)
            })
            .await??;
            Ok(Arc::new(store))
        }
    }
}

/// The state directory holds the database and the server secret. Create it 0700
/// whatever the umask; warn when an existing one lets group or others in. Under systemd
/// (`managed`: `$STATE_DIRECTORY` is set) the unit's StateDirectoryMode= decides.
pub fn prepare_state_dir(dir: &Path, managed: bool) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| StartError::StateDir {
        path: dir.display().to_string(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ))),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 && !managed {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format!("{mode:o}"),
                    "the state directory (database, server secret) is open to group or others; chmod 700 it"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Keep the daemon's memory (the server secret, keys being issued) out of core dumps
/// and out of reach of other processes running as the same user (ptrace,
/// /proc/PID/mem): prctl(PR_SET_DUMPABLE, 0). The unit's LimitCORE=0 covers core
/// dumps under systemd only; this holds wherever the daemon runs.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

async fn bind_unix(path: &Path) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Bind {
        what: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if path.exists() {
        // A live daemon answers; a stale file from a crash does not.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another apikeyd is listening on this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // Anyone may connect; who they are (SO_PEERCRED) decides what they may do.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

/// The proxy secret is read at start only: say so when a reload finds another
/// one (the file rotated), since the proxy sending the new one is refused.
fn warn_if_proxy_secret_changed(
    state: &AppState,
    running: &Config,
    new: &Config,
    env: &Environment,
) {
    if running.console.proxy_user_header.is_none() || new.console != running.console {
        // Off, or [console] changed, which is named as a whole.
        return;
    }
    let dir = env.credentials_directory.as_deref();
    if let Ok(Some(secret)) = new.console.proxy_secret(dir) {
        if !state.console.is_proxy_secret(secret.value.as_bytes()) {
            tracing::warn!(
                path = %secret.path.display(),
                "the console proxy secret changed; it takes effect after a restart (until then only the old one is accepted)"
            );
        }
    }
}

fn reload_config(state: &AppState, path: &Path, env: &Environment, running: &Config) {
    let keys = &state.keys;
    notify_reloading();
    match config::load(path, env) {
        Ok(new) => {
            let restart = config::StartOnly::of(running).changed_in(&new);
            if !restart.is_empty() {
                tracing::warn!(
                    "{} settings changed; they take effect after a restart",
                    restart.join(" and ")
                );
            }
            warn_if_proxy_secret_changed(state, running, &new, env);
            let users = new.directory.users.len();
            let groups = new.directory.groups.len();
            if new.alerts.smtp != running.alerts.smtp
                || new.alerts.jobs != running.alerts.jobs
                || new.alerts.plugins_dir != running.alerts.plugins_dir
            {
                tracing::warn!(
                    "[smtp], [jobs] and plugins_dir changes take effect after a restart"
                );
            }
            keys.alerting().set_config(new.alerts.clone());
            let changed = keys.reload(Settings::from(&new));
            state
                .edge
                .reconfigure(new.auth.clone(), new.rate_limit.clone());
            tracing::info!(
                users,
                groups,
                keys_lost_scopes = changed.lost_scopes,
                keys_refused = changed.refused,
                keys_restored = changed.restored,
                "configuration reloaded"
            );
        }
        Err(e) => {
            for p in &e.problems {
                tracing::error!(problem = %p, "reload rejected; the previous configuration stays in force");
            }
        }
    }
    notify("READY=1");
}

fn notify_reloading() {
    let usec = monotonic_usec();
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

fn monotonic_usec() -> u128 {
    // CLOCK_MONOTONIC, as systemd expects with RELOADING=1.
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u128::try_from(ts.tv_nsec / 1000).unwrap_or(0)
}

/// Send a state line to systemd if `$NOTIFY_SOCKET` is set (Type=notify).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
