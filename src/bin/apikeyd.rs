//! `apikeyd`: parse arguments, set up logging, load the configuration, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use apikeyd::clock::SharedClock;
use apikeyd::config::{self, Environment};
use apikeyd::daemon::Daemon;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "apikeyd", version, about = "API key lifecycle daemon")]
struct Args {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/apikeyd/apikeyd.toml",
        env = "APIKEYD_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and exit (non-zero listing every problem).
    CheckConfig {
        /// The file to check [default: the --config file].
        file: Option<PathBuf>,
    },
    /// Run in the foreground (the default).
    Run,
    /// Copy every record (keys with their usage, the audit trail, alert jobs,
    /// operator messages, retired secrets) from one store into another, then check
    /// the counts on both.
    ///
    /// Stop every apikeyd that uses either database first: a redb file is locked
    /// while a daemon holds it, but PostgreSQL has no such lock. The keys are copied
    /// as keyed hashes, so the daemon on the target must run with the source's
    /// server secret. A target that already holds records is refused unless
    /// --into-non-empty.
    #[command(
        after_help = "Examples:\n  apikeyd migrate --from redb:/var/lib/apikeyd/apikeyd.redb --to 'postgres:host=db.example dbname=apikeyd user=apikeyd' --password-file /etc/apikeyd/pg.password\n  apikeyd migrate --from 'postgres:host=db.example dbname=apikeyd user=apikeyd' --to redb:/var/lib/apikeyd/new.redb"
    )]
    Migrate {
        /// The store to read: redb:PATH (an existing file) or postgres:URL (a
        /// libpq connection string or URL without the password).
        // Parsed after clap, whose errors repeat the value given (which might
        // hold a password).
        #[arg(long, value_name = "STORE")]
        from: String,
        /// The store to write: redb:PATH (created when missing) or postgres:URL.
        #[arg(long, value_name = "STORE")]
        to: String,
        /// File holding the PostgreSQL password (the systemd credential
        /// postgres-password wins over it). Never put it in the URL.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Add to a target that already holds records (none with the same ids;
        /// moved operator messages get new ids).
        #[arg(long)]
        into_non_empty: bool,
    },
    /// Put a snapshot written by `apikeyctl backup` in place of the database named
    /// by the configuration (this machine or a new one), after checking it whole.
    ///
    /// Stop apikeyd first (the database's lock tells whether it runs). The server
    /// secret must be the one the backup was taken under, in place before the
    /// restore: it is checked against the snapshot's fingerprint. An existing
    /// database is replaced only with --force, and then kept beside the new one
    /// as apikeyd.redb.replaced-TIME.
    #[command(
        after_help = "Example:\n  systemctl stop apikeyd\n  apikeyd restore /backup/apikeyd-2026-11-27.redb\n  systemctl start apikeyd"
    )]
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// Replace an existing database (it is kept aside, not deleted).
        #[arg(long)]
        force: bool,
    },
    /// Write the man pages and shell completions (packaging/generate.sh).
    #[command(hide = true)]
    GenerateDocs(apikeyd::manual::GenerateDocsArgs),
    /// Write COUNT keys for USER straight into the database (daemon stopped) and
    /// print one of their secrets. For benchmarks and load tests only: the records
    /// bypass the key rules, so the subcommand exists only in builds with the
    /// `test-hooks` feature, never in a release build.
    #[cfg(feature = "test-hooks")]
    #[command(hide = true)]
    SeedKeys {
        /// How many keys.
        #[arg(long)]
        count: usize,
        /// Owner (a configured user whose groups allow keys).
        #[arg(long)]
        user: String,
        /// Print one valid secret on stdout.
        #[arg(long)]
        print_key: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = Environment::from_process();
    match args.command {
        Some(Command::CheckConfig { file }) => {
            check_config(file.as_deref().unwrap_or(&args.config), &env)
        }
        Some(Command::GenerateDocs(a)) => {
            match apikeyd::manual::generate(Args::command(), "8", &a.out) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("apikeyd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "test-hooks")]
        Some(Command::SeedKeys {
            count,
            user,
            print_key,
        }) => match seed(&args.config, &env, count, &user, print_key) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apikeyd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Migrate {
            from,
            to,
            password_file,
            into_non_empty,
        }) => match migrate(&from, &to, &env, password_file.as_deref(), into_non_empty) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apikeyd migrate: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Restore { file, force }) => match restore(&args.config, &env, &file, force) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apikeyd restore: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Run) | None => match run(&args.config, env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apikeyd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(path: &std::path::Path, env: &Environment) -> ExitCode {
    match config::load(path, env) {
        Ok(c) => {
            let p = &c.policy;
            let show = |v: &Option<config::Period>| {
                v.as_ref()
                    .map_or_else(|| "off".to_owned(), |p| p.to_string())
            };
            println!(
                "{}: configuration OK ({} users, {} groups; MaxExpirationPeriod={}, NotAccessedExpirationPeriod={}, DefaultExpirationPeriod={})",
                path.display(),
                c.directory.users.len(),
                c.directory.groups.len(),
                show(&p.max_expiration),
                show(&p.not_accessed_expiration),
                show(&p.default_expiration),
            );
            for w in c.warnings() {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{}: {} problem(s); configuration rejected",
                path.display(),
                e.problems.len()
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "test-hooks")]
fn seed(
    path: &std::path::Path,
    env: &Environment,
    count: usize,
    user: &str,
    print_key: bool,
) -> anyhow::Result<()> {
    use apikeyd::keys::secret::{load_or_create_server_secret, KeyHasher};
    let config = config::load(path, env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rights = config
        .directory
        .rights(user)
        .ok_or_else(|| anyhow::anyhow!("unknown user {user:?}"))?;
    if !rights.create_keys {
        anyhow::bail!("user {user:?} may not have keys (no group with create_keys)");
    }
    let (secret, _) = load_or_create_server_secret(
        &config.server.secret_file,
        env.credentials_directory.as_deref(),
    )?;
    let store = apikeyd::store::RedbStore::open(&config.server.database_path())?;
    let now = chrono::Utc::now();
    let expires = config
        .policy
        .max_expiration
        .as_ref()
        .and_then(|p| p.add_to(now));
    let scopes: Vec<String> = rights.scopes.into_iter().collect();
    let started = std::time::Instant::now();
    let sample = apikeyd::keys::seed(
        &store,
        &KeyHasher::new(&secret),
        user,
        &scopes,
        count,
        now,
        expires,
    )?;
    eprintln!(
        "seeded {count} keys for {user} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let Some(sample) = sample else {
        anyhow::bail!("nothing to seed (count is 0)");
    };
    if print_key {
        println!("{}", sample.expose());
    }
    Ok(())
}

fn migrate(
    from: &str,
    to: &str,
    env: &Environment,
    password_file: Option<&std::path::Path>,
    into_non_empty: bool,
) -> anyhow::Result<()> {
    use apikeyd::migrate::{self, Endpoint, Options, Side};
    // Every error below carries its cause in its message: shown without a chain.
    let from: Endpoint = from.parse().map_err(|e| anyhow::anyhow!("--from {e}"))?;
    let to: Endpoint = to.parse().map_err(|e| anyhow::anyhow!("--to {e}"))?;
    if from == to {
        anyhow::bail!("the source and the target are the same store");
    }
    let started = std::time::Instant::now();
    let creds = env.credentials_directory.as_deref();
    let source = migrate::open(&from, Side::Source, creds, password_file)?;
    let target = migrate::open(&to, Side::Target, creds, password_file)?;
    // A large store takes minutes: say what is coming.
    if let Ok(counts) = source.export_counts() {
        eprintln!("copying {counts} from {from} to {to}");
    }
    let report = migrate::migrate(&*source, &*target, &Options { into_non_empty })?;
    let m = &report.moved;
    println!(
        "migrated {from} to {to} in {:.1} s, counts checked on both:",
        started.elapsed().as_secs_f64()
    );
    for (n, what) in [
        (m.keys, "keys (with their usage)"),
        (m.audit, "audit entries"),
        (m.jobs, "alert jobs"),
        (m.messages, "operator messages"),
        (m.retired, "retired secrets"),
    ] {
        println!("{n:>10} {what}");
    }
    if report.renumbered_messages {
        println!("The target had operator messages already: the moved ones got new ids.");
    }
    println!(
        "Start apikeyd on the target with the same server secret as the source's: keys were moved as keyed hashes."
    );
    Ok(())
}

fn restore(
    path: &std::path::Path,
    env: &Environment,
    file: &std::path::Path,
    force: bool,
) -> anyhow::Result<()> {
    let config = config::load(path, env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = std::time::Instant::now();
    let done = apikeyd::backup::restore(&config, env, file, force)?;
    println!(
        "restored {} (taken at {} by apikeyd {}) as {} in {:.1} s: {}",
        file.display(),
        done.info.taken_at.to_rfc3339(),
        done.info.apikeyd,
        done.database.display(),
        started.elapsed().as_secs_f64(),
        done.info.counts
    );
    if let Some(old) = done.replaced {
        println!("The database it replaced is kept as {}.", old.display());
    }
    println!("Start apikeyd: it runs with the same server secret the backup was taken under.");
    Ok(())
}

fn run(path: &std::path::Path, env: Environment) -> anyhow::Result<()> {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Quiet by default, even at RUST_LOG=debug: the maintenance scheduler's own
    // lines ("Job creator created", ...) say nothing an operator needs. Naming it
    // in RUST_LOG brings them back.
    let asked = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("tokio_cron_scheduler"));
    if let (false, Ok(quiet)) = (asked, "tokio_cron_scheduler=warn".parse()) {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    if let Err(e) = apikeyd::daemon::forbid_core_dumps() {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable; its memory may end up in core dumps");
    }
    let config = config::load(path, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    // One worker: a current-thread runtime serves everything on the thread that
    // calls block_on, with no cross-thread wake-ups or work stealing. redb writes
    // still go to the blocking pool (spawn_blocking).
    let mut rt = match config.server.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = rt
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let clock = clock()?;
        let daemon = Daemon::start(config, &env, clock).await?;
        let addr = daemon.tcp_addr()?;
        tracing::info!(tcp = %addr, socket = %daemon.socket_path().display(), "listening");
        // One machine-readable line on stdout for scripts and tests using port 0.
        println!(
            "apikeyd listening tcp={addr} socket={}",
            daemon.socket_path().display()
        );

        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = reload_tx.try_send(());
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        daemon.run(shutdown, reload_rx, env).await?;
        Ok(())
    })
}

/// The daemon's clock: the system clock. Builds with the `test-hooks` feature (tests
/// and benchmarks only) honour `APIKEYD_CLOCK_OFFSET_SECS`, which runs the real binary
/// "in the future"; a shipped binary must not, since a negative offset would make
/// expired keys valid again.
#[cfg(not(feature = "test-hooks"))]
fn clock() -> anyhow::Result<SharedClock> {
    Ok(Arc::new(apikeyd::clock::SystemClock))
}

#[cfg(feature = "test-hooks")]
fn clock() -> anyhow::Result<SharedClock> {
    use apikeyd::clock::{FileOffsetClock, OffsetClock, SystemClock};
    if let Some(file) = std::env::var_os("APIKEYD_CLOCK_OFFSET_FILE") {
        tracing::warn!("clock offset read from a file (testing only)");
        return Ok(Arc::new(FileOffsetClock::new(file.into())));
    }
    Ok(match std::env::var("APIKEYD_CLOCK_OFFSET_SECS") {
        Ok(s) => {
            let secs: i64 = s
                .parse()
                .context("APIKEYD_CLOCK_OFFSET_SECS must be an integer")?;
            tracing::warn!(secs, "clock offset in effect (testing only)");
            Arc::new(OffsetClock::new(chrono::Duration::seconds(secs)))
        }
        Err(_) => Arc::new(SystemClock),
    })
}
