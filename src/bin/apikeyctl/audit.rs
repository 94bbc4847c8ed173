//! `audit`: the audit trail, newest first, one page at a time.

use std::process::ExitCode;

use apikeyd::client::Client;
use apikeyd::keys::model::AuditEntry;
use clap::Args;
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::output::{or_empty, print_json, print_more, print_table, time};
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
    let page: AuditList = client.fetch(Method::GET, &path).await?;
    if a.json {
        print_json(&page);
    } else {
        let rows: Vec<Vec<String>> = page.entries.iter().map(audit_row).collect();
        print_table(&["SEQ", "TIME", "ACTOR", "ACTION", "KEY", "DETAIL"], &rows);
        print_more(page.next_cursor.as_deref());
    }
    Ok(ExitCode::SUCCESS)
}
