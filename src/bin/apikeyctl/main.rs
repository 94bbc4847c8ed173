//! `apikeyctl`: the admin CLI. Parses arguments, calls the daemon's admin API over
//! the Unix socket (or TCP with an admin key), prints tables or JSON.

// Every line of output goes through `out_line`/`err_line`. std's println! panics when
// stdout is a closed pipe (`apikeyctl audit | head -1`); these stop quietly instead.
// Defined before `mod alerts` so that module's output takes the same way.
macro_rules! println {
    () => {
        $crate::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out_line(format_args!($($arg)*))
    };
}

macro_rules! eprintln {
    ($($arg:tt)*) => {
        $crate::err_line(format_args!($($arg)*))
    };
}

#[path = "apikeyctl/alerts.rs"]
mod alerts;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use apikeyd::client::{Client, Endpoint};
use apikeyd::config::{self, Environment};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

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
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Manage keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check a key as a service would (exit 0 only for VALID). Use "-" to read it from stdin.
    Verify {
        /// "-" to read the key from stdin (preferred: an argument is visible to every
        /// local user, e.g. in `ps`), or the key itself.
        key: String,
        /// Client address to check against the key's IP filters.
        #[arg(long)]
        ip: Option<String>,
        /// Scope the request needs.
        #[arg(long)]
        scope: Option<String>,
        /// Print the full answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the audit trail, newest first.
    Audit {
        /// Only entries for this key.
        #[arg(long)]
        key: Option<String>,
        /// How many entries (one page; at most 10000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after the previous page (its "more: --cursor C" or next_cursor).
        #[arg(long)]
        cursor: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show who the daemon thinks you are.
    Whoami,
    /// Alert jobs (notifications) and the maintenance jobs.
    #[command(subcommand)]
    Job(alerts::JobCommand),
    /// Operator messages.
    #[command(subcommand)]
    Message(alerts::MessageCommand),
}

#[derive(Debug, Args)]
struct ExpiryArgs {
    /// Expiry as an RFC 3339 time.
    #[arg(long, group = "expiry")]
    expires_at: Option<String>,
    /// Expiry as an ISO 8601 period from now (e.g. p3m, p30d).
    #[arg(long, group = "expiry")]
    expires_in: Option<String>,
}

#[derive(Debug, Args)]
struct NewKeyArgs {
    /// Owner (default: yourself).
    #[arg(long)]
    user: Option<String>,
    /// Name, unique per owner.
    #[arg(long)]
    name: String,
    /// Description.
    #[arg(long)]
    description: Option<String>,
    /// Comma-separated scopes (default: all the owner may hold).
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// Allowed client address: ADDR, ADDR/PREFIX or ADDR/NETMASK (repeatable).
    #[arg(long)]
    ip: Vec<String>,
    /// Response header NAME=TEMPLATE, e.g. X-Tenant=${key.owner} (repeatable).
    #[arg(long)]
    header: Vec<String>,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Never expire (only when MaxExpirationPeriod is empty).
    #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
    never_expires: bool,
    #[command(flatten)]
    notify: alerts::CreateNotifyArgs,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a key; the secret is printed once.
    Create {
        #[command(flatten)]
        new: NewKeyArgs,
        /// Write the secret to this *.APIKEY file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import a user-defined ("generic") token.
    Import {
        #[command(flatten)]
        new: NewKeyArgs,
        /// File holding the token.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// List keys.
    List {
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
        /// Include removed keys.
        #[arg(long)]
        all: bool,
        /// How many keys (one page; default 1000, at most 10000).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after the previous page (its "more: --cursor C" or next_cursor).
        #[arg(long)]
        cursor: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        /// Key id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change description, name, IP filters, headers; narrow scopes; shorten expiry.
    Edit {
        /// Key id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// Narrower comma-separated scopes.
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Replace the IP filters (repeatable).
        #[arg(long, conflicts_with = "clear_ips")]
        ip: Vec<String>,
        /// Remove all IP filters.
        #[arg(long)]
        clear_ips: bool,
        /// Replace the headers (repeatable).
        #[arg(long, conflicts_with = "clear_headers")]
        header: Vec<String>,
        /// Remove all headers.
        #[arg(long)]
        clear_headers: bool,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Disable a key.
    Disable {
        /// Key id.
        id: String,
    },
    /// Enable a disabled key.
    Enable {
        /// Key id.
        id: String,
    },
    /// Remove a key (it stops working at once).
    Remove {
        /// Key id.
        id: String,
    },
    /// New secret, same settings. With --grace the old secret keeps working for that period.
    Rotate {
        /// Key id.
        id: String,
        /// Grace period for the old secret (e.g. pt1h, p1d).
        #[arg(long)]
        grace: Option<String>,
        /// Write the new secret to this *.APIKEY file (mode 0600).
        #[arg(long)]
        out: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set, change (--at/--before/--source) or cancel (--cancel) the key's notification.
    Notify(alerts::NotifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Key(cmd) => key_command(&client, cmd).await,
        Command::Verify {
            key,
            ip,
            scope,
            json,
        } => {
            let key = if key == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s.trim().to_owned()
            } else {
                key
            };
            let body = json!({"key": key, "scope": scope, "ip": ip});
            let v = client.call(Method::POST, "/v1/verify", Some(&body)).await?;
            let code = v
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            if json {
                print_json(&v);
            } else if code == "VALID" {
                println!(
                    "VALID: key {} \"{}\" of {}",
                    s(&v, "id"),
                    s(&v, "name"),
                    s(&v, "owner")
                );
            } else {
                println!("{code}");
            }
            Ok(if code == "VALID" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit {
            key,
            limit,
            cursor,
            json,
        } => {
            let mut path = format!("/v1/admin/audit?limit={limit}");
            if let Some(k) = key {
                path += &format!("&key={}", urlencode(&k));
            }
            path += &cursor_param(cursor.as_deref());
            let v = client.call(Method::GET, &path, None).await?;
            if json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        vec![
                            e["seq"].to_string(),
                            s(e, "at"),
                            s(e, "actor"),
                            s(e, "action"),
                            s(e, "key_id"),
                            s(e, "detail"),
                        ]
                    })
                    .collect();
                print_table(&["SEQ", "TIME", "ACTOR", "ACTION", "KEY", "DETAIL"], &rows);
                print_more(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job(cmd) => alerts::job_command(&client, cmd).await,
        Command::Message(cmd) => alerts::message_command(&client, cmd).await,
        Command::Whoami => {
            let v = client.call(Method::GET, "/v1/admin/whoami", None).await?;
            println!(
                "{}{}",
                s(&v, "user"),
                if v["admin"] == true { " (admin)" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn new_key_body(new: &NewKeyArgs) -> Value {
    let mut body = json!({
        "user": new.user,
        "name": new.name,
        "description": new.description,
        "scopes": new.scopes,
        "expires_at": new.expiry.expires_at,
        "expires_in": new.expiry.expires_in,
        "never_expires": new.never_expires,
        "ip": new.ip,
        "headers": new.header,
    });
    new.notify.add_to(&mut body);
    body
}

async fn key_command(client: &Client, cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Create { new, out } => {
            // The key file exists before the key does: a bad --out changes nothing, and
            // a failed call leaves no file behind (KeyFile's drop removes it).
            let out = out.map(|p| KeyFile::create(&p, "created")).transpose()?;
            let v = client
                .call(Method::POST, "/v1/admin/keys", Some(&new_key_body(&new)))
                .await?;
            Ok(issued(&v, out, new.json, "Created"))
        }
        KeyCommand::Import { new, secret_file } => {
            let secret = std::fs::read_to_string(&secret_file)
                .with_context(|| format!("reading {}", secret_file.display()))?;
            let mut body = new_key_body(&new);
            body["secret"] = Value::String(secret.trim_end_matches(['\n', '\r']).to_owned());
            let v = client
                .call(Method::POST, "/v1/admin/keys/import", Some(&body))
                .await?;
            if new.json {
                print_json(&v);
            } else {
                println!(
                    "Imported key {} \"{}\" for {}",
                    s(&v, "id"),
                    s(&v, "name"),
                    s(&v, "owner")
                );
                println!("  {}", s(&v, "details"));
                if let Some(n) = v["notice"].as_str() {
                    println!("  note: {n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::List {
            user,
            all,
            limit,
            cursor,
            json,
        } => {
            let mut path = format!("/v1/admin/keys?all={all}");
            if let Some(u) = user {
                path += &format!("&user={}", urlencode(&u));
            }
            if let Some(n) = limit {
                path += &format!("&limit={n}");
            }
            path += &cursor_param(cursor.as_deref());
            let v = client.call(Method::GET, &path, None).await?;
            if json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        vec![
                            s(k, "id"),
                            s(k, "name"),
                            s(k, "owner"),
                            s(k, "status"),
                            s(k, "created_at"),
                            s(k, "updated_at"),
                            or_dash(s(k, "last_used_at")),
                            or_never(s(k, "expires_at")),
                            s(k, "details"),
                            s(k, "notification"),
                            s(k, "description"),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "NAME",
                        "OWNER",
                        "STATUS",
                        "CREATED",
                        "CHANGED",
                        "LAST USED",
                        "EXPIRES",
                        "DETAILS",
                        "NOTIFICATION",
                        "DESCRIPTION",
                    ],
                    &rows,
                );
                print_more(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Show { id, json } => {
            let v = client
                .call(
                    Method::GET,
                    &format!("/v1/admin/keys/{}", urlencode(&id)),
                    None,
                )
                .await?;
            show(&v, json);
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Edit {
            id,
            name,
            description,
            scopes,
            ip,
            clear_ips,
            header,
            clear_headers,
            expiry,
            json,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(d) = description {
                body.insert("description".into(), json!(d));
            }
            if let Some(sc) = scopes {
                body.insert("scopes".into(), json!(sc));
            }
            if clear_ips || !ip.is_empty() {
                body.insert("ip".into(), json!(ip));
            }
            if clear_headers || !header.is_empty() {
                body.insert("headers".into(), json!(header));
            }
            if let Some(e) = expiry.expires_at {
                body.insert("expires_at".into(), json!(e));
            }
            if let Some(e) = expiry.expires_in {
                body.insert("expires_in".into(), json!(e));
            }
            let v = client
                .call(
                    Method::PATCH,
                    &format!("/v1/admin/keys/{}", urlencode(&id)),
                    Some(&Value::Object(body)),
                )
                .await?;
            show(&v, json);
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Disable { id } => {
            simple(
                client,
                Method::POST,
                &format!("/v1/admin/keys/{}/disable", urlencode(&id)),
                "Disabled",
            )
            .await
        }
        KeyCommand::Enable { id } => {
            simple(
                client,
                Method::POST,
                &format!("/v1/admin/keys/{}/enable", urlencode(&id)),
                "Enabled",
            )
            .await
        }
        KeyCommand::Remove { id } => {
            simple(
                client,
                Method::DELETE,
                &format!("/v1/admin/keys/{}", urlencode(&id)),
                "Removed",
            )
            .await
        }
        KeyCommand::Rotate {
            id,
            grace,
            out,
            json,
        } => {
            let out = out.map(|p| KeyFile::create(&p, "rotated")).transpose()?;
            let v = client
                .call(
                    Method::POST,
                    &format!("/v1/admin/keys/{}/rotate", urlencode(&id)),
                    Some(&json!({ "grace": grace })),
                )
                .await?;
            Ok(issued(&v, out, json, "Rotated"))
        }
        KeyCommand::Notify(args) => alerts::notify(client, args).await,
    }
}

async fn simple(
    client: &Client,
    method: Method,
    path: &str,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let v = client.call(method, path, None).await?;
    println!(
        "{verb} key {} \"{}\" ({})",
        s(&v, "id"),
        s(&v, "name"),
        s(&v, "status")
    );
    Ok(ExitCode::SUCCESS)
}

/// The `--out` file of `key create` and `key rotate`: `FILE.APIKEY` (the suffix is
/// added unless present), created before the API call, so a name that cannot be used
/// (it exists, is a symlink, sits in a directory that is missing or not writable)
/// is refused while nothing has changed yet. Removed on drop unless the secret was
/// written to it, so a failed call leaves nothing behind.
struct KeyFile {
    path: PathBuf,
    file: std::fs::File,
    /// The file's identity, so drop removes only the file it created.
    dev_ino: (u64, u64),
    written: bool,
}

impl KeyFile {
    /// `not_done` says what did not happen when the file is refused ("created", "rotated").
    fn create(p: &Path, not_done: &str) -> anyhow::Result<Self> {
        let path = if p.extension().is_some_and(|e| e == "APIKEY") {
            p.to_path_buf()
        } else {
            let mut s = p.as_os_str().to_owned();
            s.push(".APIKEY");
            PathBuf::from(s)
        };
        // O_EXCL (create_new) refuses any existing name, a dangling symlink included;
        // O_NOFOLLOW says the same of a symlink should create_new ever be dropped.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    "it already exists (a file or a symlink); refusing to overwrite a key file"
                        .to_owned()
                } else {
                    e.to_string()
                };
                anyhow::anyhow!(
                    "cannot create {}: {why}; the key was not {not_done}",
                    path.display()
                )
            })?;
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                bail!(
                    "cannot create {}: {e}; the key was not {not_done}",
                    path.display()
                );
            }
        };
        Ok(Self {
            path,
            file,
            dev_ino: (meta.dev(), meta.ino()),
            written: false,
        })
    }

    /// Write the secret and sync it to disk.
    fn write_secret(&mut self, secret: &str) -> std::io::Result<()> {
        self.file.write_all(secret.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.file.sync_all()?;
        self.written = true;
        Ok(())
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.dev_ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Print a freshly issued key. With `--out` the secret goes to the file; should writing
/// it fail (disk full, ...), the key exists all the same, so the secret is printed on
/// stdout instead, with a warning on stderr, and the exit status is non-zero.
fn issued(v: &Value, out: Option<KeyFile>, json: bool, verb: &str) -> ExitCode {
    let secret = s(v, "key");
    let (saved, failed) = match out {
        None => (None, None),
        Some(mut f) => match f.write_secret(&secret) {
            Ok(()) => (Some(f.path.clone()), None),
            // Dropping `f` removes the partial file: it holds no usable key.
            Err(e) => (None, Some((f.path.clone(), e))),
        },
    };
    let text = issued_text(v, saved.as_deref(), json, verb);
    match failed {
        None => {
            out_text(&text);
            ExitCode::SUCCESS
        }
        Some((path, e)) => {
            eprintln!(
                "apikeyctl: warning: cannot write the key to {}: {e}. The key was {} all the \
                 same; its secret is printed on stdout instead (shown once; store it now).",
                path.display(),
                verb.to_lowercase()
            );
            rescue_secret(&text);
            ExitCode::FAILURE
        }
    }
}

/// What `issued` prints: the secret itself unless it was `saved` to a file.
fn issued_text(v: &Value, saved: Option<&Path>, json: bool, verb: &str) -> String {
    if json {
        let mut v = v.clone();
        if let Some(path) = saved {
            // The secret went to the file; do not also print it.
            v.as_object_mut().map(|o| o.remove("key"));
            v["key_file"] = json!(path.display().to_string());
        }
        return serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    }
    let mut t = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        t,
        "{verb} key {} \"{}\" for {}",
        s(v, "id"),
        s(v, "name"),
        s(v, "owner")
    );
    let _ = writeln!(
        t,
        "  scopes:  {}",
        v["scopes"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    let _ = writeln!(t, "  expires: {}", or_never(s(v, "expires_at")));
    let _ = writeln!(t, "  notify:  {}", s(v, "notification"));
    if let Some(n) = v["notice"].as_str() {
        let _ = writeln!(t, "  note:    {n}");
    }
    if let Some(g) = v["rotation_grace_until"].as_str() {
        let _ = writeln!(t, "  the previous secret keeps working until {g}");
    }
    match saved {
        Some(path) => {
            let _ = writeln!(
                t,
                "The key was written to {} (mode 0600). It is not shown again.",
                path.display()
            );
        }
        None => {
            let _ = writeln!(t, "The key (shown once; store it now):");
            let _ = writeln!(t, "{}", s(v, "key"));
        }
    }
    t
}

fn show(v: &Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let headers = v["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| format!("{}={}", s(h, "name"), s(h, "template")))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    for (label, value) in [
        ("id", s(v, "id")),
        ("name", s(v, "name")),
        ("description", s(v, "description")),
        ("owner", s(v, "owner")),
        ("status", s(v, "status")),
        ("kind", s(v, "kind")),
        ("scopes", list("scopes")),
        // What verification allows: the scopes the owner's groups still grant.
        ("in force", list("effective_scopes")),
        ("created", s(v, "created_at")),
        ("changed", s(v, "updated_at")),
        ("last used", or_dash(s(v, "last_used_at"))),
        ("expires", or_never(s(v, "expires_at"))),
        ("effective", or_dash(s(v, "effective_expires_at"))),
        ("details", s(v, "details")),
        ("ip filters", list("ip_filters")),
        ("headers", headers),
        ("notification", s(v, "notification")),
        ("verified", v["usage"]["verifications"].to_string()),
        ("denied", v["usage"]["denied"].to_string()),
    ] {
        println!("{label:<13}{value}");
    }
    if let Some(routes) = v["usage"]["routes"].as_object().filter(|r| !r.is_empty()) {
        println!("per route:");
        for (prefix, n) in routes {
            println!("  {prefix:<30}{n}");
        }
    }
}

fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn or_never(s: String) -> String {
    if s.is_empty() {
        "never".into()
    } else {
        s
    }
}

/// Exit status when stdout is a closed pipe: what a shell reports for a process that
/// SIGPIPE ended (128 + 13), as `cat big | head -1` gives.
const EXIT_CLOSED_PIPE: u8 = 141;

/// One line on stdout (the crate's println!).
fn out_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        output_failed(&e);
    }
}

/// Text on stdout as it is.
fn out_text(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        output_failed(&e);
    }
}

/// Stop at once when stdout cannot take more: quietly if its reader went away (the
/// reader chose to stop reading), else with the reason.
fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(i32::from(EXIT_CLOSED_PIPE));
    }
    eprintln!("apikeyctl: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// One line on stderr (the crate's eprintln!); if stderr is gone there is nobody left
/// to tell.
fn err_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// The output of a key whose file could not be written: on stdout, or on stderr if
/// stdout is gone too, so the secret is not lost.
fn rescue_secret(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out += cell;
            } else {
                out += &format!("{cell:<w$}  ");
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// `&cursor=C` for a listing's query, or nothing.
fn cursor_param(cursor: Option<&str>) -> String {
    cursor.map_or_else(String::new, |c| format!("&cursor={}", urlencode(c)))
}

/// In table mode, where the next page of a listing starts (on stderr, so that the
/// table on stdout stays only rows).
fn print_more(v: &Value) {
    if let Some(c) = v["next_cursor"].as_str() {
        eprintln!("more: --cursor {c}");
    }
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
