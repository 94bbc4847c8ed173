//! `apikeyctl`: the admin CLI. Parses arguments, calls the daemon's admin API over
//! the Unix socket (or TCP with an admin key), prints tables or JSON. Each
//! subcommand is one function in the module of its domain; requests and answers are
//! the library's own types.

// Every line of output goes through `out_line`/`err_line`. std's println! panics when
// stdout is a closed pipe (`apikeyctl audit | head -1`); these stop quietly instead.
// Defined before the modules so that their output takes the same way.
macro_rules! println {
    () => {
        $crate::output::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::out_line(format_args!($($arg)*))
    };
}

macro_rules! eprintln {
    ($($arg:tt)*) => {
        $crate::output::err_line(format_args!($($arg)*))
    };
}

mod alerts;
mod audit;
mod backup;
mod import;
mod issued;
mod keys;
mod listing;
mod output;
mod plan;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use apikeyd::client::{Client, Endpoint};
use apikeyd::config::{self, Environment};
use apikeyd::keys::Whoami;
use clap::{CommandFactory, Parser, Subcommand};
use hyper::Method;

#[derive(Debug, Parser)]
#[command(
    name = "apikeyctl",
    version,
    about = "Administer apikeyd: issue, list, change and verify API keys"
)]
struct Cli {
    /// Admin socket of the daemon [default: from the config file, else /run/apikeyd/apikeyd.sock].
    #[arg(long, global = true, env = "APIKEYD_SOCKET")]
    socket: Option<PathBuf>,
    /// Configuration file to read the socket path from.
    #[arg(long, global = true, env = "APIKEYD_CONFIG")]
    config: Option<PathBuf>,
    /// Use the admin API over TCP (host:port) instead of the socket; needs --token-file.
    #[arg(long, global = true, env = "APIKEYD_ADDR")]
    addr: Option<String>,
    /// File holding a key with the apikeyd:admin scope (for --addr).
    #[arg(long, global = true, env = "APIKEYD_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Show times in local time (also when TZ is set); JSON output stays in UTC.
    #[arg(long, global = true)]
    local: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Manage keys.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Check a key as a service would (exit 0 only for VALID). Use "-" to read it from stdin.
    Verify(verify::VerifyArgs),
    /// Show the audit trail, newest first.
    Audit(audit::AuditArgs),
    /// Show who the daemon thinks you are, what you may do, and the policy in force.
    Whoami {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Alert jobs (notifications) and the maintenance jobs.
    #[command(subcommand)]
    Job(alerts::JobCommand),
    /// Operator messages.
    #[command(subcommand)]
    Message(alerts::MessageCommand),
    /// What will happen to your keys within a window (expiries, notifications, warnings, maintenance); --policy FILE: how a new configuration would change them.
    Plan(plan::PlanArgs),
    /// Write a consistent snapshot of the daemon's database to FILE while it keeps serving (admins only).
    Backup(backup::BackupArgs),
    /// Print a one-time link that logs you in to the web console; it works once, within minutes.
    ConsoleLink {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write the man pages and shell completions (packaging/generate.sh).
    #[command(hide = true)]
    GenerateDocs(apikeyd::manual::GenerateDocsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::use_local_times(cli.local || std::env::var_os("TZ").is_some_and(|tz| !tz.is_empty()));
    if let Command::GenerateDocs(a) = &cli.command {
        return match apikeyd::manual::generate(Cli::command(), "1", &a.out) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("apikeyctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apikeyctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("apikeyctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn endpoint(cli: &Cli) -> anyhow::Result<Endpoint> {
    if let Some(addr) = &cli.addr {
        let Some(file) = &cli.token_file else {
            bail!("--addr needs --token-file with a key holding the apikeyd:admin scope");
        };
        let token =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return Ok(Endpoint::Tcp {
            addr: addr.clone(),
            token: token.trim().to_owned(),
        });
    }
    if let Some(s) = &cli.socket {
        return Ok(Endpoint::Unix(s.clone()));
    }
    let config_path = cli.config.clone().or_else(|| {
        ["/etc/apikeyd/apikeyd.toml", "config/apikeyd.toml"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    });
    if let Some(path) = config_path {
        let env = if path.starts_with("/etc/apikeyd") {
            Environment {
                runtime_directory: Some("/run/apikeyd".into()),
                ..Environment::default()
            }
        } else {
            Environment::default()
        };
        if let Ok(c) = config::load(&path, &env) {
            return Ok(Endpoint::Unix(c.server.admin_socket));
        }
    }
    Ok(Endpoint::Unix("/run/apikeyd/apikeyd.sock".into()))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(endpoint(&cli)?);
    match cli.command {
        Command::Key(cmd) => keys::key_command(&client, cmd).await,
        Command::Verify(a) => verify::verify(&client, a).await,
        Command::Audit(a) => audit::audit(&client, a).await,
        Command::Job(cmd) => alerts::job_command(&client, cmd).await,
        Command::Message(cmd) => alerts::message_command(&client, cmd).await,
        Command::Plan(a) => plan::plan(&client, a).await,
        Command::Whoami { json } => whoami(&client, json).await,
        Command::Backup(a) => backup::backup(&client, a).await,
        Command::ConsoleLink { json } => console_link(&client, json).await,
        // Answered in main, before there is a runtime or a client.
        Command::GenerateDocs(_) => Ok(ExitCode::SUCCESS),
    }
}

/// `whoami`: the user on the first line (scripts read it), then what they may do
/// and the policy.
async fn whoami(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let me: Whoami = client.fetch(Method::GET, "/v1/admin/whoami").await?;
    if json {
        output::print_json(&me);
        return Ok(ExitCode::SUCCESS);
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let list = |l: &[String]| {
        if l.is_empty() {
            "none".to_owned()
        } else {
            l.join(", ")
        }
    };
    println!("{}{}", me.user, if me.admin { " (admin)" } else { "" });
    println!("  groups: {}", list(&me.groups));
    println!("  scopes you may give keys: {}", list(&me.scopes));
    println!(
        "  may create keys: {}; manages everyone's keys: {}",
        yes(me.create_keys),
        yes(me.manage_all_keys)
    );
    for line in &me.policy {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `console-link`: the link on stdout (alone, for scripts), how long it works on
/// stderr.
async fn console_link(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let link = client
        .call(Method::POST, "/v1/admin/console-link", None)
        .await?;
    if json {
        output::print_json(&link);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(url) = link["url"].as_str().filter(|u| !u.is_empty()) else {
        anyhow::bail!("the daemon answered no console link (is apikeyd older than apikeyctl?)");
    };
    println!("{url}");
    eprintln!(
        "Open it in your browser to log in as {} before {}; it works once.",
        link["user"].as_str().unwrap_or_default(),
        link["expires_at"].as_str().unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `&cursor=C` for a listing's query, or nothing.
fn cursor_param(cursor: Option<&str>) -> String {
    cursor.map_or_else(String::new, |c| format!("&cursor={}", urlencode(c)))
}

fn urlencode(s: &str) -> String {
    // Everything but RFC 3986's unreserved characters is escaped, so an id, user
    // name or cursor is one path segment or query value whatever it holds.
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}
