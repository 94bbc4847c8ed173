//! `key ...`: issue, import, list, show, change, disable, enable, remove and rotate
//! keys. One function per subcommand; requests and answers are the library's types.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use apikeyd::client::Client;
use apikeyd::keys::secret::Secret;
use apikeyd::keys::{CreateKey, EditKey, Issued, KeyView, RotateKey};
use clap::{Args, Subcommand};
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::alerts;
use crate::import;
use crate::issued::{issued, KeyFile};
use crate::output::{
    or_dash, or_never, print_fitted, print_json, print_more, prose_times, time_str, time_text, Fit,
    Precision,
};
use crate::urlencode;

#[derive(Debug, Args)]
pub struct ExpiryArgs {
    /// Expiry as an RFC 3339 time.
    #[arg(long, group = "expiry")]
    expires_at: Option<String>,
    /// Expiry as an ISO 8601 period from now (e.g. p3m, p30d).
    #[arg(long, group = "expiry")]
    expires_in: Option<String>,
}

#[derive(Debug, Args)]
pub struct NewKeyArgs {
    /// Owner (default: yourself).
    #[arg(long)]
    user: Option<String>,
    /// Name, unique per owner (required).
    // Not required by clap: `key import --file` takes names from the file.
    #[arg(long)]
    name: Option<String>,
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
}

// The subcommands' arguments below carry no doc comment: clap would take it for the
// subcommand's description, which the variant's comment gives.

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    new: NewKeyArgs,
    /// Write the secret to this *.APIKEY file (mode 0600) instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Import every line of this JSON-lines file, all or nothing: one object per
    /// line with owner, name and token (or token_file, read here, relative to the
    /// file's directory), and optionally description, expires_at, scopes, ip and
    /// headers.
    #[arg(long, conflicts_with_all = [
        "secret_file", "user", "name", "description", "scopes", "ip", "header", "expires_at",
        "expires_in", "never_expires", "notify_at", "notify_before", "alert_source", "no_notify",
    ])]
    file: Option<PathBuf>,
    #[command(flatten)]
    new: NewKeyArgs,
    /// File holding the token (one key; with --name and the other settings).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this user's keys.
    #[arg(long, visible_alias = "user")]
    owner: Option<String>,
    /// Include removed keys.
    #[arg(long)]
    all: bool,
    /// Only keys with this status: active, disabled, expired, inactive, removed,
    /// owner_unknown, no_scopes (repeatable, or a comma list).
    #[arg(long, value_delimiter = ',')]
    status: Vec<String>,
    /// Only keys whose effective expiry (hard limit or inactivity, whichever is
    /// sooner) falls within this ISO 8601 period from now (e.g. p30d).
    #[arg(long, value_name = "PERIOD")]
    expiring_within: Option<String>,
    /// Only keys with this text in their name, description, owner or id (any case).
    #[arg(long, value_name = "TEXT")]
    search: Option<String>,
    /// Order by this column, descending with a leading '-' (e.g. -last_used): id,
    /// name, description, owner, status, created, changed, last_used, expires,
    /// effective, notification [default: created].
    #[arg(long, value_name = "COLUMN", allow_hyphen_values = true)]
    sort: Option<String>,
    /// How many keys (one page; default 1000, at most 10000).
    #[arg(long)]
    limit: Option<usize>,
    /// Continue after the previous page: its "more: --after C" (exact), or the id of
    /// its last key.
    #[arg(long, value_name = "CURSOR|ID", conflicts_with = "cursor")]
    after: Option<String>,
    /// Continue after the previous page (its next_cursor; as --after).
    #[arg(long)]
    cursor: Option<String>,
    /// Every column (the default fits 120 columns).
    #[arg(long, conflicts_with = "json")]
    wide: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Key id.
    id: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct EditArgs {
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
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Key id.
    id: String,
    /// Grace period for the old secret (e.g. pt1h, p1d).
    #[arg(long, conflicts_with = "until_used")]
    grace: Option<String>,
    /// Keep the old secret working until the new one is first used, then for
    /// [ApiKey] RotationOverlapPeriod (default pt5m).
    #[arg(long)]
    until_used: bool,
    /// With --until-used: the old secret stops after this period even if the new
    /// one was never used (default p7d, never past the key's expiry); the key's
    /// alert source is warned before then.
    #[arg(long, requires = "until_used")]
    max_grace: Option<String>,
    /// Write the new secret to this *.APIKEY file (mode 0600).
    #[arg(long)]
    out: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; the secret is printed once.
    Create(CreateArgs),
    /// Import a user-defined ("generic") token.
    Import(ImportArgs),
    /// List keys.
    List(ListArgs),
    /// Show one key.
    Show(ShowArgs),
    /// Change description, name, IP filters, headers; narrow scopes; shorten expiry.
    Edit(EditArgs),
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
    /// New secret, same settings. With --grace the old secret keeps working for that
    /// period; with --until-used until the new one is first used.
    Rotate(RotateArgs),
    /// Set, change (--at/--before/--source) or cancel (--cancel) the key's notification.
    Notify(alerts::NotifyArgs),
}

/// `key ...`.
pub async fn key_command(client: &Client, cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Create(a) => create(client, a).await,
        KeyCommand::Import(a) => import(client, a).await,
        KeyCommand::List(a) => list_keys(client, a).await,
        KeyCommand::Show(a) => show(client, a).await,
        KeyCommand::Edit(a) => edit(client, a).await,
        KeyCommand::Disable { id } => {
            change_state(client, Method::POST, &key_path(&id, "/disable"), "Disabled").await
        }
        KeyCommand::Enable { id } => {
            change_state(client, Method::POST, &key_path(&id, "/enable"), "Enabled").await
        }
        KeyCommand::Remove { id } => {
            change_state(client, Method::DELETE, &key_path(&id, ""), "Removed").await
        }
        KeyCommand::Rotate(a) => rotate(client, a).await,
        KeyCommand::Notify(a) => alerts::notify(client, a).await,
    }
}

/// `/v1/admin/keys/ID` followed by `action` (empty, or `/disable` and the like).
pub fn key_path(id: &str, action: &str) -> String {
    format!("/v1/admin/keys/{}{action}", urlencode(id))
}

fn new_key_request(new: &NewKeyArgs) -> anyhow::Result<CreateKey> {
    let Some(name) = &new.name else {
        anyhow::bail!("--name is required: every key has a name, unique per owner");
    };
    let mut req = CreateKey {
        user: new.user.clone(),
        name: name.clone(),
        description: new.description.clone(),
        scopes: new.scopes.clone(),
        expires_at: new.expiry.expires_at.clone(),
        expires_in: new.expiry.expires_in.clone(),
        never_expires: new.never_expires,
        ip: new.ip.clone(),
        headers: new.header.clone(),
        ..CreateKey::default()
    };
    new.notify.add_to(&mut req);
    Ok(req)
}

/// `key create`.
async fn create(client: &Client, a: CreateArgs) -> anyhow::Result<ExitCode> {
    // The key file exists before the key does: a bad --out changes nothing, and
    // a failed call leaves no file behind (KeyFile's drop removes it).
    let out = a.out.map(|p| KeyFile::create(&p, "created")).transpose()?;
    let answer: Issued = client
        .send(Method::POST, "/v1/admin/keys", &new_key_request(&a.new)?)
        .await?;
    Ok(issued(&answer, out, a.json, "Created"))
}

/// `key import`.
async fn import(client: &Client, a: ImportArgs) -> anyhow::Result<ExitCode> {
    if let Some(file) = &a.file {
        return import::import_file(client, file, a.json).await;
    }
    let Some(secret_file) = &a.secret_file else {
        anyhow::bail!(
            "give --name and --secret-file for one key, or --file for a JSON-lines file of keys"
        );
    };
    let secret = std::fs::read_to_string(secret_file)
        .with_context(|| format!("reading {}", secret_file.display()))?;
    let req = CreateKey {
        secret: Some(Secret::new(
            secret.trim_end_matches(['\n', '\r']).to_owned(),
        )),
        ..new_key_request(&a.new)?
    };
    let v: KeyView = client
        .send(Method::POST, "/v1/admin/keys/import", &req)
        .await?;
    if a.json {
        print_json(&v);
    } else {
        println!("Imported key {} \"{}\" for {}", v.id, v.name, v.owner);
        println!("  {}", v.details);
        if let Some(n) = &v.notice {
            println!("  note: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `/v1/admin/keys` listing as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct KeyList {
    keys: Vec<KeyView>,
    next_cursor: Option<String>,
}

/// `key list`'s columns: what fits 120 columns, and `--wide`'s every one.
const NARROW: [&str; 6] = [
    "ID",
    "NAME",
    "OWNER",
    "STATUS",
    "EFFECTIVE EXPIRY",
    "LAST USED",
];
/// The details line comes last: it is the longest, and a last column is never cut.
const WIDE: [&str; 11] = [
    "ID",
    "NAME",
    "DESCRIPTION",
    "OWNER",
    "STATUS",
    "CREATED",
    "CHANGED",
    "LAST USED",
    "EXPIRES",
    "NOTIFICATION",
    "DETAILS",
];
/// The width `key list` keeps to without `--wide`.
const LIST_WIDTH: usize = 120;
/// The widest a cell of `--wide` but the details line gets.
const WIDE_CAP: usize = 60;

fn narrow_row(k: &KeyView) -> Vec<String> {
    let minutes = |t: Option<&str>| t.map(|t| time_text(t, Precision::Minutes));
    vec![
        k.id.to_string(),
        k.name.clone(),
        k.owner.clone(),
        k.status.clone(),
        or_never(minutes(k.effective_expires_at.as_deref())),
        or_dash(minutes(k.last_used_at.as_deref())),
    ]
}

fn wide_row(k: &KeyView) -> Vec<String> {
    vec![
        k.id.to_string(),
        k.name.clone(),
        k.description.clone(),
        k.owner.clone(),
        k.status.clone(),
        time_str(&k.created_at),
        time_str(&k.updated_at),
        or_dash(k.last_used_at.as_deref().map(time_str)),
        or_never(k.expires_at.as_deref().map(time_str)),
        notification(k),
        prose_times(&k.details),
    ]
}

/// A key's notification: "TIME via SOURCE", or "none".
pub fn notification(k: &KeyView) -> String {
    match (&k.notify_at, &k.alert_source) {
        (Some(at), Some(source)) => format!("{} via {source}", time_str(at)),
        _ => k.notification.clone(),
    }
}

/// `key list`: the query goes to the daemon, which filters, sorts and pages.
async fn list_keys(client: &Client, a: ListArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/admin/keys?all={}", a.all);
    let status = a.status.join(",");
    let params = [
        ("owner", a.owner.as_deref()),
        ("status", Some(status.as_str()).filter(|s| !s.is_empty())),
        ("expiring_within", a.expiring_within.as_deref()),
        ("search", a.search.as_deref()),
        ("sort", a.sort.as_deref()),
        ("after", a.after.as_deref()),
        ("cursor", a.cursor.as_deref()),
    ];
    for (name, value) in params {
        if let Some(v) = value {
            path += &format!("&{name}={}", urlencode(v));
        }
    }
    if let Some(n) = a.limit {
        path += &format!("&limit={n}");
    }
    let page: KeyList = client.fetch(Method::GET, &path).await?;
    if a.json {
        print_json(&page);
        return Ok(ExitCode::SUCCESS);
    }
    if a.wide {
        let rows: Vec<_> = page.keys.iter().map(wide_row).collect();
        let fit = Fit {
            cap: WIDE_CAP,
            ..Fit::default()
        };
        print_fitted(&WIDE, &rows, &fit);
    } else {
        let rows: Vec<_> = page.keys.iter().map(narrow_row).collect();
        let fit = Fit {
            width: Some(LIST_WIDTH),
            // Name and owner give way; the id must stay whole for the other commands.
            flexible: vec![1, 2],
            cap: 0,
        };
        print_fitted(&NARROW, &rows, &fit);
    }
    print_more("--after", page.next_cursor.as_deref());
    Ok(ExitCode::SUCCESS)
}

/// `key show`.
async fn show(client: &Client, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let v: KeyView = client.fetch(Method::GET, &key_path(&a.id, "")).await?;
    print_key(&v, a.json);
    Ok(ExitCode::SUCCESS)
}

/// `key edit`: only the fields given are sent.
async fn edit(client: &Client, a: EditArgs) -> anyhow::Result<ExitCode> {
    let req = EditKey {
        name: a.name,
        description: a.description,
        scopes: a.scopes,
        ip: (a.clear_ips || !a.ip.is_empty()).then_some(a.ip),
        headers: (a.clear_headers || !a.header.is_empty()).then_some(a.header),
        expires_at: a.expiry.expires_at,
        expires_in: a.expiry.expires_in,
    };
    let v: KeyView = client
        .send(Method::PATCH, &key_path(&a.id, ""), &req)
        .await?;
    print_key(&v, a.json);
    Ok(ExitCode::SUCCESS)
}

/// `key disable`, `key enable`, `key remove`.
async fn change_state(
    client: &Client,
    method: Method,
    path: &str,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let v: KeyView = client.fetch(method, path).await?;
    println!("{verb} key {} \"{}\" ({})", v.id, v.name, v.status);
    Ok(ExitCode::SUCCESS)
}

/// `key rotate`.
async fn rotate(client: &Client, a: RotateArgs) -> anyhow::Result<ExitCode> {
    let out = a.out.map(|p| KeyFile::create(&p, "rotated")).transpose()?;
    let answer: Issued = client
        .send(
            Method::POST,
            &key_path(&a.id, "/rotate"),
            &RotateKey {
                grace: a.grace,
                until_used: a.until_used,
                max_grace: a.max_grace,
            },
        )
        .await?;
    Ok(issued(&answer, out, a.json, "Rotated"))
}

/// `key show` and the answer of `key edit`.
fn print_key(v: &KeyView, json: bool) {
    if json {
        print_json(v);
        return;
    }
    for (label, value) in key_fields(v) {
        println!("{label:<13}{value}");
    }
    if !v.usage.routes.is_empty() {
        println!("per route:");
        for (prefix, n) in &v.usage.routes {
            println!("  {prefix:<30}{n}");
        }
    }
}

fn key_fields(v: &KeyView) -> [(&'static str, String); 20] {
    let headers = v
        .headers
        .iter()
        .map(|h| format!("{}={}", h.name, h.template))
        .collect::<Vec<_>>()
        .join("; ");
    [
        ("id", v.id.to_string()),
        ("name", v.name.clone()),
        ("description", v.description.clone()),
        ("owner", v.owner.clone()),
        ("status", v.status.clone()),
        ("kind", v.kind.clone()),
        ("scopes", v.scopes.join(", ")),
        // What verification allows: the scopes the owner's groups still grant.
        ("in force", v.effective_scopes.join(", ")),
        ("created", time_str(&v.created_at)),
        ("changed", time_str(&v.updated_at)),
        (
            "last used",
            or_dash(v.last_used_at.as_deref().map(time_str)),
        ),
        ("expires", or_never(v.expires_at.as_deref().map(time_str))),
        (
            "effective",
            or_dash(v.effective_expires_at.as_deref().map(time_str)),
        ),
        ("details", prose_times(&v.details)),
        ("ip filters", v.ip_filters.join(", ")),
        ("headers", headers),
        ("notification", notification(v)),
        (
            "rotation",
            v.rotation
                .as_ref()
                .map_or_else(|| "none".to_owned(), |r| r.summary.clone()),
        ),
        ("verified", v.usage.verifications.to_string()),
        ("denied", v.usage.denied.to_string()),
    ]
}
