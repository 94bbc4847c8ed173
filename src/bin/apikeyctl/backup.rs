//! `backup FILE`: a consistent snapshot of the daemon's database, taken while it
//! serves, streamed over the admin API and written here, as the user who runs
//! apikeyctl: first to a private temporary file beside FILE, which becomes FILE
//! only once it is whole and checked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use apikeyd::api::backup::{SECRET_HEADER, SNAPSHOT_HEADER};
use apikeyd::client::Client;
use apikeyd::store::{RedbStore, SnapshotInfo};
use serde::Serialize;

use crate::output::print_json;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Restore with `apikeyd restore FILE` (daemon stopped), under the same server secret."
)]
pub struct BackupArgs {
    /// Where to write the snapshot (a redb database file, mode 0600).
    file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Written<'a> {
    file: &'a Path,
    bytes: u64,
    seconds: f64,
    snapshot: &'a SnapshotInfo,
    server_secret: Option<&'a str>,
}

/// `backup FILE`.
pub async fn backup(client: &Client, args: BackupArgs) -> anyhow::Result<ExitCode> {
    let file = &args.file;
    if !args.force && file.exists() {
        bail!(
            "{} exists; pass --force to replace it, or name a new file",
            file.display()
        );
    }
    let dir = match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let started = std::time::Instant::now();
    // Mode 0600, removed on any failure below.
    let partial = tempfile::Builder::new()
        .prefix(".apikeyd-backup-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut out = tokio::fs::File::from_std(
        partial
            .as_file()
            .try_clone()
            .context("cannot write the backup")?,
    );
    let (headers, bytes) = client.download("/v1/admin/backup", &mut out).await?;
    out.sync_all().await.context("cannot write the backup")?;
    drop(out);
    let length = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|l| l != bytes) {
        bail!(
            "the backup was cut off ({bytes} of {length:?} bytes); nothing was written to {}",
            file.display()
        );
    }
    let sent: Option<SnapshotInfo> = headers
        .get(SNAPSHOT_HEADER)
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok());
    // What the file holds, read back: the snapshot's own record and its counts.
    let path = partial.path().to_path_buf();
    let info = tokio::task::spawn_blocking(move || RedbStore::inspect_snapshot(&path))
        .await?
        .with_context(|| {
            format!(
                "the backup received does not check out; nothing was written to {}",
                file.display()
            )
        })?;
    if sent.as_ref().is_some_and(|s| *s != info) {
        bail!(
            "the backup received is not the one apikeyd took; nothing was written to {}",
            file.display()
        );
    }
    if args.force {
        partial.persist(file)
    } else {
        partial.persist_noclobber(file)
    }
    .with_context(|| format!("cannot write {}", file.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let secret = headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok());
    if args.json {
        print_json(&Written {
            file,
            bytes,
            seconds,
            snapshot: &info,
            server_secret: secret,
        });
    } else {
        println!(
            "backup written to {} ({:.1} MB in {seconds:.1} s), taken at {}: {}",
            file.display(),
            bytes as f64 / 1e6,
            info.taken_at.to_rfc3339(),
            info.counts
        );
    }
    // On stderr, so a script reading the JSON still gets the reminder.
    eprintln!(
        "Restoring it needs this daemon's server secret, {}: keep a copy of it apart from the backup (the backup holds only keyed hashes; `apikeyd restore` refuses another secret).",
        secret.unwrap_or("the file named by [server] secret_file (default: secret in the state directory), or the systemd credential server-secret")
    );
    Ok(ExitCode::SUCCESS)
}
