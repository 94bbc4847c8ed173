//! `key import --file FILE`: a JSON-lines file of tokens from another system,
//! imported all or nothing. `token_file` entries are read here, as the user who
//! runs apikeyctl (the daemon reads no file a request names), and sent as `token`;
//! every other line goes as it is, so line numbers stay the file's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use apikeyd::client::Client;
use apikeyd::keys::{import_too_large, ImportSummary, LineProblem, Whoami};
use hyper::body::Bytes;
use hyper::Method;
use serde_json::{Map, Value};

use crate::output::print_json;

/// `key import --file FILE`.
pub async fn import_file(client: &Client, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let (body, problems) = resolve_token_files(&text, &base);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{}:{}: {}", file.display(), p.line, p.message);
        }
        eprintln!(
            "apikeyctl: {} line(s) of {} cannot be read; nothing was imported",
            problems.len(),
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    // Said before sending: the daemon refuses a larger file without reading it,
    // and closes the connection under a client still writing.
    let me: Whoami = client.fetch(Method::GET, "/v1/admin/whoami").await?;
    if me.max_import_bytes > 0 && body.len() > me.max_import_bytes {
        eprintln!(
            "apikeyctl: error: {}: {}",
            file.display(),
            import_too_large(me.admin)
        );
        return Ok(ExitCode::FAILURE);
    }
    let started = std::time::Instant::now();
    let (status, answer) = client
        .post_bytes(
            "/v1/admin/keys/bulk-import",
            "application/x-ndjson",
            Bytes::from(body),
        )
        .await?;
    if status.is_success() {
        let summary: ImportSummary =
            serde_json::from_value(answer).context("unexpected answer from apikeyd")?;
        if json {
            print_json(&summary);
        } else {
            print!("{}", summary_text(&summary, file, started.elapsed()));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let error = answer.get("error");
    let listed: Vec<LineProblem> = error
        .and_then(|e| e.get("problems"))
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .unwrap_or_default();
    for p in &listed {
        eprintln!("{}:{}: {}", file.display(), p.line, p.message);
    }
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("HTTP {status}: {answer}"), str::to_owned);
    eprintln!("apikeyctl: {message}");
    Ok(ExitCode::FAILURE)
}

/// The file with each `token_file` replaced by the token it holds, and the lines
/// where that failed. Lines without one are passed on untouched (a line that is
/// not JSON is the daemon's to report, with every other problem).
fn resolve_token_files(text: &str, base: &Path) -> (String, Vec<LineProblem>) {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    // A byte-order mark some editors write is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        let resolved = if line.contains("\"token_file\"") {
            match with_token(line, base) {
                Ok(l) => Some(l),
                Err(message) => {
                    problems.push(LineProblem {
                        line: i + 1,
                        message,
                    });
                    None
                }
            }
        } else {
            None
        };
        out.push_str(resolved.as_deref().unwrap_or(line));
        out.push('\n');
    }
    (out, problems)
}

/// One line whose `token_file` is read and sent as `token`.
fn with_token(line: &str, base: &Path) -> Result<String, String> {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        // Not an object: the daemon says what is wrong with it.
        return Ok(line.to_owned());
    };
    let Some(path) = obj.remove("token_file") else {
        return Ok(line.to_owned());
    };
    let Value::String(path) = path else {
        return Err("token_file must be a string (a path)".into());
    };
    if obj.contains_key("token") {
        return Err("give token or token_file, not both".into());
    }
    let path = base.join(PathBuf::from(path));
    let token = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read token_file {}: {e}", path.display()))?;
    let token = token.trim_end_matches(['\n', '\r']).to_owned();
    let mut with: Map<String, Value> = obj;
    with.insert("token".into(), Value::String(token));
    serde_json::to_string(&with).map_err(|e| format!("cannot encode the line: {e}"))
}

/// What was imported, for people.
fn summary_text(s: &ImportSummary, file: &Path, took: std::time::Duration) -> String {
    let mut out = format!(
        "Imported {} key(s) from {} in {:.1} s\n",
        s.imported,
        file.display(),
        took.as_secs_f64()
    );
    for (owner, n) in &s.owners {
        let _ = writeln!(out, "  {owner}: {n}");
    }
    let _ = writeln!(
        out,
        "  {} with an expiry, {} with a notification",
        s.expiring, s.notifications
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn token_files_are_read_relative_to_the_file_and_lines_keep_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t1"), "tok-from-file-0123456789abcdef\n").unwrap();
        let text = "{\"owner\":\"a\",\"name\":\"x\",\"token\":\"t\"}\n\n\
                    {\"owner\":\"a\",\"name\":\"y\",\"token_file\":\"t1\"}\n\
                    {\"owner\":\"a\",\"name\":\"z\",\"token_file\":\"missing\"}\n\
                    {\"owner\":\"a\",\"name\":\"w\",\"token_file\":\"t1\",\"token\":\"t\"}\n";
        let (body, problems) = resolve_token_files(text, dir.path());
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "{\"owner\":\"a\",\"name\":\"x\",\"token\":\"t\"}");
        let y: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(y["token"], "tok-from-file-0123456789abcdef");
        assert!(y.get("token_file").is_none());
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].line, 4);
        assert!(problems[0].message.contains("cannot read token_file"));
        assert_eq!(problems[1].line, 5);
        assert!(problems[1].message.contains("not both"));
    }
}
