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
use crate::listing::{list, Listing};
use crate::output::{or_dash, or_never, print_json};
use crate::{cursor_param, urlencode};

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
    #[arg(long, conflicts_with_all = ["NewKeyArgs", "secret_file"])]
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

impl Listing for KeyList {
    const HEADERS: &'static [&'static str] = &[
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
    ];

    fn rows(&self) -> Vec<Vec<String>> {
        self.keys.iter().map(key_row).collect()
    }

    fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

fn key_row(k: &KeyView) -> Vec<String> {
    vec![
        k.id.to_string(),
        k.name.clone(),
        k.owner.clone(),
        k.status.clone(),
        k.created_at.clone(),
        k.updated_at.clone(),
        or_dash(k.last_used_at.as_deref()),
        or_never(k.expires_at.as_deref()),
        k.details.clone(),
        k.notification.clone(),
        k.description.clone(),
    ]
}

/// `key list`.
async fn list_keys(client: &Client, a: ListArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/admin/keys?all={}", a.all);
    if let Some(u) = a.user {
        path += &format!("&user={}", urlencode(&u));
    }
    if let Some(n) = a.limit {
        path += &format!("&limit={n}");
    }
    path += &cursor_param(a.cursor.as_deref());
    list::<KeyList>(client, &path, a.json).await
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
        ("created", v.created_at.clone()),
        ("changed", v.updated_at.clone()),
        ("last used", or_dash(v.last_used_at.as_deref())),
        ("expires", or_never(v.expires_at.as_deref())),
        ("effective", or_dash(v.effective_expires_at.as_deref())),
        ("details", v.details.clone()),
        ("ip filters", v.ip_filters.join(", ")),
        ("headers", headers),
        ("notification", v.notification.clone()),
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
