//! `apikeyctl` commands for notifications, alert jobs and operator messages.

use std::process::ExitCode;

use apikeyd::alerts::job::{AlertJob, OperatorMessage};
use apikeyd::alerts::maintenance::MaintenanceRun;
use apikeyd::client::Client;
use apikeyd::keys::{CreateKey, KeyView, NotifyRequest};
use clap::{Args, Subcommand};
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::keys::key_path;
use crate::listing::{list, Listing};
use crate::output::{or_dash, or_empty, print_json, time, time_str, wire_name};
use crate::{cursor_param, urlencode};

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
    /// Add the fields to a create request.
    pub fn add_to(&self, req: &mut CreateKey) {
        req.notify_at.clone_from(&self.notify_at);
        req.notify_before.clone_from(&self.notify_before);
        req.alert_source.clone_from(&self.alert_source);
        req.no_notification = self.no_notify;
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

// `job list` and `message list`; no doc comment, which clap would take for the
// subcommand's description.
#[derive(Debug, Args)]
pub struct JobListArgs {
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
}

#[derive(Debug, Args)]
pub struct MessageListArgs {
    /// Only messages nobody acknowledged yet.
    #[arg(long)]
    unacknowledged: bool,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `job ...`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List alert jobs, newest first (or the maintenance jobs with --maintenance).
    List(JobListArgs),
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
    List(MessageListArgs),
    /// Acknowledge a message.
    Ack {
        /// Message id.
        id: String,
    },
}

/// `key notify ID ...`.
pub async fn notify(client: &Client, a: NotifyArgs) -> anyhow::Result<ExitCode> {
    let req = NotifyRequest {
        at: a.at,
        before: a.before,
        source: a.source,
        cancel: a.cancel,
    };
    let v: KeyView = client
        .send(Method::POST, &key_path(&a.id, "/notify"), &req)
        .await?;
    if a.json {
        print_json(&v);
    } else if a.cancel {
        println!("Notification of key {} \"{}\" cancelled", v.id, v.name);
    } else {
        println!(
            "Key {} \"{}\": notification {} (job {})",
            v.id,
            v.name,
            crate::keys::notification(&v),
            or_empty(v.alert_job)
        );
        if let Some(n) = &v.notice {
            println!("  note: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `job ...`.
pub async fn job_command(client: &Client, cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::List(a) if a.maintenance => {
            list::<MaintenanceList>(client, &jobs_query(&a), a.json).await
        }
        JobCommand::List(a) => list::<JobList>(client, &jobs_query(&a), a.json).await,
        JobCommand::Show { id, json } => show_job(client, &id, json).await,
        JobCommand::Cancel { id } => cancel_job(client, &id).await,
        JobCommand::Delete { id } => delete_job(client, &id).await,
    }
}

/// `job cancel`.
async fn cancel_job(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let j: AlertJob = client.fetch(Method::POST, &job_path(id, "/cancel")).await?;
    println!("Job {} of key {} is {}", j.id, j.key_id, j.state.as_str());
    Ok(ExitCode::SUCCESS)
}

/// `job delete`.
async fn delete_job(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let j: AlertJob = client.fetch(Method::DELETE, &job_path(id, "")).await?;
    println!("Deleted job {} of key {}", j.id, j.key_id);
    Ok(ExitCode::SUCCESS)
}

/// `/v1/admin/jobs/ID` followed by `action` (empty, or `/cancel`).
fn job_path(id: &str, action: &str) -> String {
    format!("/v1/admin/jobs/{}{action}", urlencode(id))
}

/// The query of `job list`, with or without `--maintenance`.
fn jobs_query(a: &JobListArgs) -> String {
    let mut path = format!("/v1/admin/jobs?limit={}", a.limit);
    path += &cursor_param(a.cursor.as_deref());
    if a.maintenance {
        path += "&maintenance=true";
    }
    if let Some(k) = &a.key {
        path += &format!("&key={}", urlencode(k));
    }
    if let Some(st) = &a.state {
        path += &format!("&state={}", urlencode(st));
    }
    path
}

/// The `/v1/admin/jobs` listing as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct JobList {
    jobs: Vec<AlertJob>,
    next_cursor: Option<String>,
}

/// `job list --maintenance` as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct MaintenanceList {
    maintenance: Vec<MaintenanceRun>,
}

impl Listing for JobList {
    const HEADERS: &'static [&'static str] = &JOB_HEADERS;

    fn rows(&self) -> Vec<Vec<String>> {
        self.jobs.iter().map(job_row).collect()
    }

    fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

impl Listing for MaintenanceList {
    const HEADERS: &'static [&'static str] =
        &["JOB", "SCHEDULE", "LAST RUN", "NEXT RUN", "LAST RESULT"];

    fn rows(&self) -> Vec<Vec<String>> {
        self.maintenance
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.schedule.clone(),
                    or_dash(m.last_run.as_deref().map(time_str)),
                    or_dash(m.next_run.as_deref().map(time_str)),
                    or_dash(m.last_result.as_deref()),
                ]
            })
            .collect()
    }
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

fn job_row(j: &AlertJob) -> Vec<String> {
    vec![
        j.id.to_string(),
        j.key_id.to_string(),
        wire_name(&j.kind),
        j.source.clone(),
        time(&j.due_at),
        j.state.as_str().to_owned(),
        j.attempts.to_string(),
        or_dash(j.last_error.as_deref()),
        time(&j.created_at),
        time(&j.updated_at),
    ]
}

/// `job show`.
async fn show_job(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let j: AlertJob = client.fetch(Method::GET, &job_path(id, "")).await?;
    if json {
        print_json(&j);
        return Ok(ExitCode::SUCCESS);
    }
    let more = [
        ("STARTED", or_dash(j.started_at.as_ref().map(time))),
        ("FINISHED", or_dash(j.finished_at.as_ref().map(time))),
        ("NEXT ATTEMPT", time(&j.run_at)),
        ("REPLACES", or_dash(j.replaces)),
        ("REPLACED BY", or_dash(j.replaced_by)),
    ];
    for (label, value) in JOB_HEADERS.into_iter().zip(job_row(&j)).chain(more) {
        println!("{:<13}{value}", label.to_lowercase());
    }
    Ok(ExitCode::SUCCESS)
}

/// `message list` as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct MessageList {
    messages: Vec<OperatorMessage>,
}

impl Listing for MessageList {
    const HEADERS: &'static [&'static str] =
        &["ID", "TIME", "SEVERITY", "KEY", "JOB", "ACKED BY", "TITLE"];

    fn rows(&self) -> Vec<Vec<String>> {
        self.messages.iter().map(message_row).collect()
    }
}

fn message_row(m: &OperatorMessage) -> Vec<String> {
    vec![
        m.id.to_string(),
        time(&m.at),
        wire_name(&m.severity),
        or_dash(m.key_id),
        or_dash(m.job_id),
        or_dash(m.acknowledged_by.as_deref()),
        m.title.clone(),
    ]
}

/// `message ...`.
pub async fn message_command(client: &Client, cmd: MessageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MessageCommand::List(a) => {
            let path = format!(
                "/v1/admin/messages?unacknowledged={}&limit={}",
                a.unacknowledged, a.limit
            );
            list::<MessageList>(client, &path, a.json).await
        }
        MessageCommand::Ack { id } => {
            let path = format!("/v1/admin/messages/{}/ack", urlencode(&id));
            let m: OperatorMessage = client.fetch(Method::POST, &path).await?;
            println!("Acknowledged message {}: {}", m.id, m.title);
            Ok(ExitCode::SUCCESS)
        }
    }
}
