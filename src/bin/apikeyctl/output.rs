//! What apikeyctl writes: lines that stop quietly at a closed pipe, tables, JSON, and
//! the few ways a value of the daemon's answer is shown in a table cell.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Exit status when stdout is a closed pipe: what a shell reports for a process that
/// SIGPIPE ended (128 + 13), as `cat big | head -1` gives.
const EXIT_CLOSED_PIPE: u8 = 141;

/// One line on stdout (the crate's println!).
pub fn out_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        output_failed(&e);
    }
}

/// Text on stdout as it is.
pub fn out_text(text: &str) {
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
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// The output of a key whose file could not be written: on stdout, or on stderr if
/// stdout is gone too, so the secret is not lost.
pub fn rescue_secret(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// `value` as pretty JSON text. It goes through `serde_json::Value`, whose objects
/// keep their keys sorted: the order `--json` has always printed.
pub fn json_text(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_default()
}

pub fn print_json(value: &impl Serialize) {
    println!("{}", json_text(value));
}

pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
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
    line(&headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
}

/// In table mode, where the next page of a listing starts (on stderr, so that the
/// table on stdout stays only rows).
pub fn print_more(next_cursor: Option<&str>) {
    if let Some(c) = next_cursor {
        eprintln!("more: --cursor {c}");
    }
}

/// A time as the daemon's JSON carries it (chrono's serde form).
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A unit-like enum (job kind, message severity) by its name on the wire.
pub fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// An optional value, empty when absent.
pub fn or_empty(value: Option<impl ToString>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// An optional value, `-` when absent or empty.
pub fn or_dash(value: Option<impl ToString>) -> String {
    or_else(value, "-")
}

/// An expiry, `never` when there is none.
pub fn or_never(value: Option<impl ToString>) -> String {
    or_else(value, "never")
}

fn or_else(value: Option<impl ToString>, absent: &str) -> String {
    match value.map(|v| v.to_string()) {
        Some(s) if !s.is_empty() => s,
        _ => absent.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Table cells show times and enum names exactly as `--json` and the daemon's
    /// JSON write them.
    #[test]
    fn cells_read_as_the_json_does() {
        let base = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for nanos in [0, 120_000_000, 123_456_000, 123_456_789] {
            let t = base + chrono::Duration::nanoseconds(nanos);
            assert_eq!(
                serde_json::json!(time(&t)),
                serde_json::to_value(t).unwrap()
            );
        }
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            InactivityWarning,
        }
        assert_eq!(wire_name(&Kind::InactivityWarning), "inactivity_warning");
    }

    #[test]
    fn absent_and_empty_read_alike() {
        assert_eq!(or_dash(None::<&str>), "-");
        assert_eq!(or_dash(Some("")), "-");
        assert_eq!(or_never(Some("2026-01-01")), "2026-01-01");
        assert_eq!(or_empty(None::<u64>), "");
    }
}
