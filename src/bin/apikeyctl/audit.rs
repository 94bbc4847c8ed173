//! `audit`: the audit trail, newest first, one page at a time.

use std::process::ExitCode;

use apikeyd::client::Client;
use apikeyd::keys::model::AuditEntry;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::listing::{list, Listing};
use crate::output::{or_empty, time};
use crate::{cursor_param, urlencode};

// No doc comment: clap would take it for the subcommand's description.
#[derive(Debug, Args)]
pub struct AuditArgs {
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
}

/// The `/v1/admin/audit` listing as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct AuditList {
    entries: Vec<AuditEntry>,
    next_cursor: Option<String>,
}

impl Listing for AuditList {
    const HEADERS: &'static [&'static str] = &["SEQ", "TIME", "ACTOR", "ACTION", "KEY", "DETAIL"];

    fn rows(&self) -> Vec<Vec<String>> {
        self.entries.iter().map(audit_row).collect()
    }

    fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

fn audit_row(e: &AuditEntry) -> Vec<String> {
    vec![
        e.seq.to_string(),
        time(&e.at),
        e.actor.clone(),
        e.action.clone(),
        or_empty(e.key_id),
        e.detail.clone(),
    ]
}

/// `audit`.
pub async fn audit(client: &Client, a: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/admin/audit?limit={}", a.limit);
    if let Some(k) = a.key {
        path += &format!("&key={}", urlencode(&k));
    }
    path += &cursor_param(a.cursor.as_deref());
    list::<AuditList>(client, &path, a.json).await
}
