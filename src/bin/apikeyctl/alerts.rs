//! `apikeyctl` commands for notifications, alert jobs and operator messages.

use std::process::ExitCode;

use apikeyd::client::Client;
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use super::{cursor_param, or_dash, print_json, print_more, print_table, s, urlencode};

/// Notification flags of `key create` / `key import`.
#[derive(Debug, Args)]
pub struct CreateNotifyArgs {
    /// Notify at this RFC 3339 time.
    #[arg(long, group = "notify")]
    notify_at: Option<String>,
    /// Notify this long before the key expires (ISO 8601 period, e.g. p14d).
    #[arg(long, group = "notify")]
    notify_before: Option<String>,
    /// Alert source for the notification [default: DefaultAlertSource].
    #[arg(long)]
    alert_source: Option<String>,
    /// No notification, not even the configured default.
    #[arg(long, conflicts_with_all = ["notify_at", "notify_before", "alert_source"])]
    no_notify: bool,
}

impl CreateNotifyArgs {
    /// Add the fields to a create body.
    pub fn add_to(&self, body: &mut Value) {
        body["notify_at"] = json!(self.notify_at);
        body["notify_before"] = json!(self.notify_before);
        body["alert_source"] = json!(self.alert_source);
        body["no_notification"] = json!(self.no_notify);
    }
}

/// `key notify`.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Key id.
    id: String,
    /// Notification time (RFC 3339).
    #[arg(long, group = "when")]
    at: Option<String>,
    /// This long before the key's expiry (ISO 8601 period, e.g. p14d).
    #[arg(long, group = "when")]
    before: Option<String>,
    /// Alert source.
    #[arg(long)]
    source: Option<String>,
    /// Remove the notification (its job is Canceled).
    #[arg(long, conflicts_with_all = ["at", "before", "source"])]
    cancel: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `job ...`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List alert jobs, newest first (or the maintenance jobs with --maintenance).
    List {
        /// Only this key's jobs.
        #[arg(long)]
        key: Option<String>,
        /// Only jobs in this state (Scheduled, Running, Completed, Failed, Canceled).
        #[arg(long)]
        state: Option<String>,
        /// At most this many (one page; at most 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after the previous page (its "more: --cursor C" or next_cursor).
        #[arg(long, conflicts_with = "maintenance")]
        cursor: Option<String>,
        /// Show the cron maintenance jobs with their last and next runs.
        #[arg(long, conflicts_with_all = ["key", "state"])]
        maintenance: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Show {
        /// Job id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a scheduled job; the key that tracks it loses its notification.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Delete a job from the history; the key that tracks it loses its notification.
    Delete {
        /// Job id.
        id: String,
    },
}

/// `message ...`.
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// List operator messages, newest first.
    List {
        /// Only messages nobody acknowledged yet.
        #[arg(long)]
        unacknowledged: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a message.
    Ack {
        /// Message id.
        id: String,
    },
}

/// `key notify ID ...`.
pub async fn notify(client: &Client, a: NotifyArgs) -> anyhow::Result<ExitCode> {
    let body = json!({"at": a.at, "before": a.before, "source": a.source, "cancel": a.cancel});
    let v = client
        .call(
            Method::POST,
            &format!("/v1/admin/keys/{}/notify", urlencode(&a.id)),
            Some(&body),
        )
        .await?;
    if a.json {
        print_json(&v);
    } else if a.cancel {
        println!(
            "Notification of key {} \"{}\" cancelled",
            s(&v, "id"),
            s(&v, "name")
        );
    } else {
        println!(
            "Key {} \"{}\": notification {} (job {})",
            s(&v, "id"),
            s(&v, "name"),
            s(&v, "notification"),
            s(&v, "alert_job")
        );
        if let Some(n) = v["notice"].as_str() {
            println!("  note: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn job_row(j: &Value) -> Vec<String> {
    vec![
        s(j, "id"),
        s(j, "key_id"),
        s(j, "kind"),
        s(j, "source"),
        s(j, "due_at"),
        s(j, "state"),
        s(j, "attempts"),
        or_dash(s(j, "last_error")),
        s(j, "created_at"),
        s(j, "updated_at"),
    ]
}

const JOB_HEADERS: [&str; 10] = [
    "ID",
    "KEY",
    "KIND",
    "SOURCE",
    "DUE",
    "STATE",
    "ATTEMPTS",
    "LAST ERROR",
    "CREATED",
    "UPDATED",
];

/// `job ...`.
pub async fn job_command(client: &Client, cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::List {
            key,
            state,
            limit,
            cursor,
            maintenance,
            json,
        } => {
            let mut path = format!("/v1/admin/jobs?limit={limit}");
            path += &cursor_param(cursor.as_deref());
            if maintenance {
                path += "&maintenance=true";
            }
            if let Some(k) = key {
                path += &format!("&key={}", urlencode(&k));
            }
            if let Some(st) = state {
                path += &format!("&state={}", urlencode(&st));
            }
            let v = client.call(Method::GET, &path, None).await?;
            if json {
                print_json(&v);
            } else if maintenance {
                let rows: Vec<Vec<String>> = v["maintenance"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        vec![
                            s(m, "name"),
                            s(m, "schedule"),
                            or_dash(s(m, "last_run")),
                            or_dash(s(m, "next_run")),
                            or_dash(s(m, "last_result")),
                        ]
                    })
                    .collect();
                print_table(
                    &["JOB", "SCHEDULE", "LAST RUN", "NEXT RUN", "LAST RESULT"],
                    &rows,
                );
            } else {
                let rows: Vec<Vec<String>> = v["jobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(job_row)
                    .collect();
                print_table(&JOB_HEADERS, &rows);
                print_more(&v);
            }
        }
        JobCommand::Show { id, json } => {
            let v = client
                .call(
                    Method::GET,
                    &format!("/v1/admin/jobs/{}", urlencode(&id)),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                for (label, value) in JOB_HEADERS.iter().zip(job_row(&v)).chain([
                    (&"STARTED", or_dash(s(&v, "started_at"))),
                    (&"FINISHED", or_dash(s(&v, "finished_at"))),
                    (&"NEXT ATTEMPT", s(&v, "run_at")),
                    (&"REPLACES", or_dash(s(&v, "replaces"))),
                    (&"REPLACED BY", or_dash(s(&v, "replaced_by"))),
                ]) {
                    println!("{:<13}{value}", label.to_lowercase());
                }
            }
        }
        JobCommand::Cancel { id } => {
            let v = client
                .call(
                    Method::POST,
                    &format!("/v1/admin/jobs/{}/cancel", urlencode(&id)),
                    None,
                )
                .await?;
            println!(
                "Job {} of key {} is {}",
                s(&v, "id"),
                s(&v, "key_id"),
                s(&v, "state")
            );
        }
        JobCommand::Delete { id } => {
            let v = client
                .call(
                    Method::DELETE,
                    &format!("/v1/admin/jobs/{}", urlencode(&id)),
                    None,
                )
                .await?;
            println!("Deleted job {} of key {}", s(&v, "id"), s(&v, "key_id"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `message ...`.
pub async fn message_command(client: &Client, cmd: MessageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MessageCommand::List {
            unacknowledged,
            limit,
            json,
        } => {
            let v = client
                .call(
                    Method::GET,
                    &format!("/v1/admin/messages?unacknowledged={unacknowledged}&limit={limit}"),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        vec![
                            s(m, "id"),
                            s(m, "at"),
                            s(m, "severity"),
                            or_dash(s(m, "key_id")),
                            or_dash(s(m, "job_id")),
                            or_dash(s(m, "acknowledged_by")),
                            s(m, "title"),
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "TIME", "SEVERITY", "KEY", "JOB", "ACKED BY", "TITLE"],
                    &rows,
                );
            }
        }
        MessageCommand::Ack { id } => {
            let v = client
                .call(
                    Method::POST,
                    &format!("/v1/admin/messages/{}/ack", urlencode(&id)),
                    None,
                )
                .await?;
            println!("Acknowledged message {}: {}", s(&v, "id"), s(&v, "title"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
