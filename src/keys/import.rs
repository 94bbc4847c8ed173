//! Bulk import ([`Keys::import_lines`]): the tokens of another system, one JSON
//! object per line, checked whole before anything is written and then committed
//! all or nothing.
//!
//! Every line passes the checks a single `key import` passes (the same functions:
//! `check_token`, `check_new`, the index's name, secret and quota checks), plus
//! the file against itself (a token or an owner's name twice). Checking runs on
//! every CPU without the writer; the checks against other keys and the commit run
//! under it, so nothing can slip in between. The store writes the file as one
//! transaction in batches ([`Storage::commit_all`]), and the index shows the keys
//! in chunks, so verification goes on meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::create::{check_new, check_token, issue_detail, Checked};
use super::error::{internal, KeyError};
use super::index::check_unique_name;
use super::notification;
use super::secret::Secret;
use super::types::{
    Actor, CreateKey, ImportRefused, ImportSummary, LineProblem, Settings, MAX_PROBLEMS,
};
use super::Keys;
use crate::model::{AlertJob, AuditEntry, KeyHash, KeyKind, KeyRecord, KeyRow, UserSecret};
use crate::store::{Change, StoreError};

/// Keys per batch the store writes, and per chunk the index takes at a time.
const BATCH: usize = 10_000;

/// Lines at least per thread: a small file is not worth a thread per line.
const MIN_PART: usize = 1024;

/// One line of an import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    owner: String,
    name: String,
    #[serde(default)]
    token: Option<Secret>,
    /// Read by `apikeyctl` (as the user who runs it) and sent as `token`: the
    /// daemon reads no file a request names.
    #[serde(default)]
    token_file: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    ip: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
}

/// A line checked on its own.
struct Ready {
    line: usize,
    rec: KeyRecord,
    hash: KeyHash,
    plan: notification::Plan,
    notice: Option<String>,
}

/// The turn of one bulk import: one at a time, as each holds its file's keys in
/// memory. The API takes it before it reads a file, so that files waiting their
/// turn stay with their clients rather than in the daemon's memory.
pub struct ImportTurn {
    _held: OwnedMutexGuard<()>,
}

impl Keys {
    /// Wait for the turn to import a file ([`Keys::import_file`]).
    pub async fn import_turn(&self) -> ImportTurn {
        ImportTurn {
            _held: self.importing.clone().lock_owned().await,
        }
    }

    /// [`Keys::import_file`] once it is this file's turn.
    pub async fn import_lines(
        self: &Arc<Self>,
        actor: &Actor,
        text: String,
    ) -> Result<Result<ImportSummary, ImportRefused>, KeyError> {
        let turn = self.import_turn().await;
        self.import_file(turn, actor, text).await
    }

    /// Import every line of `text` (JSON lines; blank lines are skipped), all or
    /// nothing. `Ok(Err(_))` lists the bad lines; nothing was written then.
    pub async fn import_file(
        self: &Arc<Self>,
        turn: ImportTurn,
        actor: &Actor,
        text: String,
    ) -> Result<Result<ImportSummary, ImportRefused>, KeyError> {
        let _turn = turn;
        let started = std::time::Instant::now();
        let settings = self.settings();
        let now = self.clock.now();
        let keys = self.clone();
        let who = actor.clone();
        // Checking a big file is seconds of CPU: never on a runtime worker, which
        // may be the one serving verifications.
        let checked =
            tokio::task::spawn_blocking(move || check_lines(&keys, &who, &settings, &text, now))
                .await
                .map_err(internal)?;
        let (ready, mut problems) = checked;
        let writer = self.lock_writer().await;
        let (ready, more) = self.check_against_keys(actor, ready).await?;
        problems.extend(more);
        if !problems.is_empty() {
            return Ok(Err(refused(problems)));
        }
        let now = self.clock.now();
        let who = actor.clone();
        let store = self.store.clone();
        let index = self.index.clone();
        let wake = self.alerting.wake();
        // One task to the end, as every commit is (see `Keys::commit`).
        let summary = tokio::task::spawn_blocking(move || {
            let (changes, rows, summary) = build(&who, ready, now)?;
            store.commit_all(changes)?;
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let mut index = index.write();
                for row in rows.by_ref().take(BATCH) {
                    index.publish(row);
                }
            }
            drop(writer);
            if summary.notifications > 0 {
                wake.notify_one();
            }
            Ok::<_, KeyError>(summary)
        })
        .await
        .map_err(internal)??;
        tracing::info!(
            actor = %actor.name,
            keys = summary.imported,
            owners = summary.owners.len(),
            took_ms = started.elapsed().as_millis(),
            "keys imported"
        );
        Ok(Ok(summary))
    }

    /// Under the writer: the checks against the keys already held (names, secrets,
    /// quotas) and, for an owner importing, secrets retired from other hands.
    async fn check_against_keys(
        &self,
        actor: &Actor,
        ready: Vec<Ready>,
    ) -> Result<(Vec<Ready>, Vec<LineProblem>), KeyError> {
        let settings = self.settings();
        let index = self.index.clone();
        let (ready, mut problems) = tokio::task::spawn_blocking(move || {
            let mut problems = Vec::new();
            let index = index.read();
            let mut added: HashMap<&str, u32> = HashMap::new();
            for r in &ready {
                let owner = r.rec.owner.as_str();
                let held = added.entry(owner).or_insert(0);
                *held += 1;
                let problem = if index.table.contains(&r.hash) {
                    Some("this token is already in use by another key".to_owned())
                } else if let Err(e) = check_unique_name(&index, owner, &r.rec.name, None) {
                    Some(e.to_string())
                } else {
                    settings
                        .policy
                        .max_keys_per_user
                        .filter(|max| index.owned_by(owner) + *held > *max)
                        .map(|max| {
                            format!(
                                "user {owner:?} would have more than {max} keys, the most MaxKeysPerUser allows"
                            )
                        })
                };
                if let Some(message) = problem {
                    problems.push(LineProblem {
                        line: r.line,
                        message,
                    });
                }
            }
            drop(added);
            drop(index);
            (ready, problems)
        })
        .await
        .map_err(internal)?;
        if !actor.admin {
            let asked: Vec<(usize, KeyHash, String)> = ready
                .iter()
                .map(|r| (r.line, r.hash, r.rec.owner.clone()))
                .collect();
            let retired = self
                .blocking(move |s| {
                    let mut bad = Vec::new();
                    for (line, hash, owner) in asked {
                        if s.retired(&hash)?
                            .is_some_and(|r| r.owner != owner || r.restricted)
                        {
                            bad.push(line);
                        }
                    }
                    Ok(bad)
                })
                .await?;
            problems.extend(retired.into_iter().map(|line| LineProblem {
                line,
                message: "this token was used by a key that was removed or rotated and cannot be imported again; ask an admin".into(),
            }));
        }
        Ok((ready, problems))
    }
}

/// Check every line on its own and the file against itself, on every CPU.
fn check_lines(
    keys: &Keys,
    actor: &Actor,
    settings: &Settings,
    text: &str,
    now: DateTime<Utc>,
) -> (Vec<Ready>, Vec<LineProblem>) {
    // A byte-order mark some editors write is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let per = lines.len().div_ceil(cpus()).max(MIN_PART);
    let results = on_threads(lines.chunks(per).collect(), |chunk| {
        chunk
            .iter()
            .map(|(n, l)| check_line(keys, actor, settings, *n, l, now))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .map(|part| {
        part.unwrap_or_else(|| {
            vec![Err(LineProblem {
                line: 0,
                message: "internal error while checking the file".into(),
            })]
        })
    });
    let mut ready = Vec::with_capacity(lines.len());
    let mut problems = Vec::new();
    let mut tokens: HashMap<KeyHash, usize> = HashMap::with_capacity(lines.len());
    let mut names: HashMap<(String, String), usize> = HashMap::with_capacity(lines.len());
    for result in results.flatten() {
        let r = match result {
            Ok(r) => r,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let name = (r.rec.owner.clone(), r.rec.name.to_lowercase());
        let clash = if let Some(first) = tokens.get(&r.hash) {
            Some(format!("the same token as line {first}"))
        } else if let Some(first) = names.get(&name) {
            Some(format!(
                "{} already has a key named {:?} on line {first} (names are unique per owner, ignoring case)",
                r.rec.owner, r.rec.name
            ))
        } else {
            None
        };
        if let Some(message) = clash {
            problems.push(LineProblem {
                line: r.line,
                message,
            });
            continue;
        }
        tokens.insert(r.hash, r.line);
        names.insert(name, r.line);
        ready.push(r);
    }
    if ready.is_empty() && problems.is_empty() {
        problems.push(LineProblem {
            line: 0,
            message: "the file holds no keys".into(),
        });
    }
    (ready, problems)
}

/// One line, checked as `key import` checks its request.
fn check_line(
    keys: &Keys,
    actor: &Actor,
    settings: &Settings,
    line: usize,
    text: &str,
    now: DateTime<Utc>,
) -> Result<Ready, LineProblem> {
    let problem = |message: String| LineProblem { line, message };
    let parsed: Line = serde_json::from_str(text).map_err(|e| problem(json_problem(&e)))?;
    if parsed.token_file.is_some() {
        return Err(problem(
            "token_file is read by apikeyctl; send the token itself as \"token\"".into(),
        ));
    }
    let Some(token) = parsed.token else {
        return Err(problem("\"token\" (or \"token_file\") is required".into()));
    };
    let token = Secret::new(token.expose().trim_end_matches(['\n', '\r']).to_owned());
    check_token(token.expose(), settings.policy.min_imported_secret_length)
        .map_err(|e| problem(e.to_string()))?;
    let req = CreateKey {
        user: Some(parsed.owner),
        name: parsed.name,
        description: parsed.description,
        scopes: parsed.scopes,
        expires_at: parsed.expires_at,
        ip: parsed.ip,
        headers: parsed.headers,
        ..CreateKey::default()
    };
    let Checked {
        mut rec,
        plan,
        notice,
    } = check_new(keys, actor, &req, settings, &token, now).map_err(|e| problem(e.to_string()))?;
    let hash = keys.hasher.hash(token.expose());
    rec.kind = KeyKind::Imported;
    rec.user_secret = UserSecret::Length(token.expose().len());
    rec.hash = hex::encode(hash);
    Ok(Ready {
        line,
        rec,
        hash,
        plan,
        notice,
    })
}

/// A JSON error without the text it was reading: a line holds a token, and serde's
/// messages quote values.
fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof => "is not valid JSON",
        Category::Io => "could not be read",
        Category::Data => {
            let text = e.to_string();
            // serde names the field it missed or did not know, never a value, in
            // these two messages; every other data error may quote one.
            // The name of a field the line does not have is ours; the name of an
            // unknown one is the line's, which could be anything: not quoted.
            if text.starts_with("missing field") {
                let field = text.split('`').nth(1).unwrap_or("?");
                return format!("field {field:?} is required (column {})", e.column());
            }
            if text.starts_with("unknown field") {
                return format!(
                    "has an unknown field (column {}; known: owner, name, token, token_file, description, expires_at, scopes, ip, headers)",
                    e.column()
                );
            }
            if text.starts_with("duplicate field") {
                return format!("has a field twice (column {})", e.column());
            }
            "has a field of the wrong type (owner, name, token, description and expires_at are strings; scopes, ip and headers are lists of strings)"
        }
    };
    format!("{what} (column {})", e.column())
}

/// Every bad line, in order, the first [`MAX_PROBLEMS`] of them.
fn refused(mut problems: Vec<LineProblem>) -> ImportRefused {
    problems.sort_by_key(|p| p.line);
    let mut lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    lines.dedup();
    let bad_lines = lines.len();
    problems.truncate(MAX_PROBLEMS);
    ImportRefused {
        problems,
        bad_lines,
    }
}

/// The number of CPUs.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` over each of `parts`, one thread each; the results in order, `None` for a
/// part whose thread panicked.
fn on_threads<T: Send, R: Send>(parts: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<Option<R>> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(move || f(part)))
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    })
}

/// The batches the store writes, the rows the index takes, and the summary, built
/// on every CPU.
fn build(
    actor: &Actor,
    ready: Vec<Ready>,
    now: DateTime<Utc>,
) -> Result<(Vec<Change>, Vec<KeyRow>, ImportSummary), KeyError> {
    // Key and job ids (time-ordered) given again in line order, here: each table
    // then grows at its end, rather than splitting pages all over as ids made on
    // several threads would.
    let total = ready.len();
    let per = total.div_ceil(cpus()).max(MIN_PART);
    let mut parts = Vec::new();
    let mut ready = ready.into_iter().map(|mut r| {
        r.rec.id = Uuid::now_v7();
        let (rec, change) = notification::attach(r.rec, r.plan, now);
        (rec, change.put_jobs, r.notice)
    });
    loop {
        // Sized up front: growing a vector of records moves them all again.
        let mut part = Vec::with_capacity(per);
        part.extend(ready.by_ref().take(per));
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let mut summary = ImportSummary::default();
    let mut rows = Vec::with_capacity(total);
    let mut changes = Vec::new();
    for part in on_threads(parts, |part| build_part(actor, part, now)) {
        let (part_changes, part_rows, part_summary) =
            part.ok_or_else(|| internal("building the import's records failed"))??;
        changes.extend(part_changes);
        rows.extend(part_rows);
        summary.imported += part_summary.imported;
        summary.notifications += part_summary.notifications;
        summary.expiring += part_summary.expiring;
        for (owner, n) in part_summary.owners {
            *summary.owners.entry(owner).or_default() += n;
        }
    }
    Ok((changes, rows, summary))
}

/// [`build`] for one part of the keys (each with its jobs and the note for its
/// audit entry), in order.
fn build_part(
    actor: &Actor,
    ready: Vec<(KeyRecord, Vec<AlertJob>, Option<String>)>,
    now: DateTime<Utc>,
) -> Result<(Vec<Change>, Vec<KeyRow>, ImportSummary), KeyError> {
    let mut summary = ImportSummary::default();
    let mut rows = Vec::with_capacity(ready.len());
    let mut changes = Vec::with_capacity(ready.len().div_ceil(BATCH));
    let sized = || Change {
        put_keys: Vec::with_capacity(BATCH),
        audit: Vec::with_capacity(BATCH),
        put_jobs: Vec::with_capacity(BATCH),
        ..Change::default()
    };
    let mut batch = sized();
    for (rec, jobs, notice) in ready {
        rows.push(KeyRow::from_record(&rec).map_err(StoreError::from)?);
        summary.imported += 1;
        *summary.owners.entry(rec.owner.clone()).or_default() += 1;
        summary.notifications += usize::from(!jobs.is_empty());
        summary.expiring += usize::from(rec.expires_at.is_some());
        batch.put_jobs.extend(jobs);
        batch.audit.push(AuditEntry::new(
            now,
            &actor.name,
            "import",
            Some(rec.id),
            issue_detail(&rec, notice.as_deref()),
        ));
        batch.put_keys.push(rec);
        if batch.put_keys.len() == BATCH {
            changes.push(std::mem::replace(&mut batch, sized()));
        }
    }
    if !batch.is_empty() {
        changes.push(batch);
    }
    Ok((changes, rows, summary))
}
