//! What apikeyctl writes: lines that stop quietly at a closed pipe, tables, JSON, and
//! the few ways a value of the daemon's answer is shown in a table cell.

use std::io::Write;
use std::sync::OnceLock;

use chrono::{DateTime, Local, NaiveDateTime, SecondsFormat, Utc};
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
    print_fitted(headers, rows, &Fit::default());
}

/// How a table is kept within bounds: no cell wider than `cap` characters, and,
/// with a `width`, the columns in `flexible` narrowed (widest first) until a line
/// fits. A cut cell ends with an ellipsis.
#[derive(Debug, Clone, Default)]
pub struct Fit {
    /// The widest a line may be.
    pub width: Option<usize>,
    /// The columns that give way to fit `width`.
    pub flexible: Vec<usize>,
    /// The widest a cell may be (none if 0); the last column, which nothing follows,
    /// is never cut to it.
    pub cap: usize,
}

/// Narrowest a flexible column gets: its title, or this.
const MIN_FLEXIBLE: usize = 8;

/// The column widths for `rows` under `fit`.
fn widths(headers: &[&str], rows: &[Vec<String>], fit: &Fit) -> Vec<usize> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let last = widths.len().saturating_sub(1);
    if fit.cap > 0 {
        for (i, w) in widths.iter_mut().enumerate() {
            if i != last {
                *w = (*w).min(fit.cap.max(headers[i].chars().count()));
            }
        }
    }
    let Some(width) = fit.width else {
        return widths;
    };
    let floor = |i: usize| headers[i].chars().count().max(MIN_FLEXIBLE);
    loop {
        let total: usize = widths.iter().sum::<usize>() + 2 * last;
        if total <= width {
            return widths;
        }
        let widest = fit
            .flexible
            .iter()
            .copied()
            .filter(|&i| i < widths.len() && widths[i] > floor(i))
            .max_by_key(|&i| widths[i]);
        let Some(i) = widest else {
            return widths;
        };
        widths[i] -= 1;
    }
}

/// `cell` in at most `width` characters: cut, with an ellipsis, when longer.
fn cut(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        return cell.to_owned();
    }
    let mut out: String = cell.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The table's lines, headers first, each cell padded to its column.
pub fn table_lines(headers: &[&str], rows: &[Vec<String>], fit: &Fit) -> Vec<String> {
    let widths = widths(headers, rows, fit);
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let cell = cut(cell, *w);
            if i + 1 == cells.len() {
                out += &cell;
            } else {
                out += &format!("{cell:<w$}  ");
            }
        }
        out.trim_end().to_owned()
    };
    let mut lines = vec![line(
        &headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    )];
    lines.extend(rows.iter().map(|r| line(r)));
    lines
}

/// Print a table kept within `fit`.
pub fn print_fitted(headers: &[&str], rows: &[Vec<String>], fit: &Fit) {
    for l in table_lines(headers, rows, fit) {
        println!("{l}");
    }
}

/// In table mode, where the next page of a listing starts (on stderr, so that the
/// table on stdout stays only rows): the option that continues it, and its value.
pub fn print_more(option: &str, next_cursor: Option<&str>) {
    if let Some(c) = next_cursor {
        eprintln!("more: {option} {c}");
    }
}

/// Whether text output shows times in local time (`--local`, or `TZ` set), chosen
/// once at start.
static LOCAL_TIMES: OnceLock<bool> = OnceLock::new();

/// Show times in local time from now on (`--local`, or `TZ` set); JSON keeps UTC.
pub fn use_local_times(local: bool) {
    let _ = LOCAL_TIMES.set(local);
}

/// How much of a time is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// To the second (or below, if the time has it), RFC 3339.
    Full,
    /// To the minute, with a space for the `T`, where a table must stay narrow.
    Minutes,
}

/// The day and the time of day of `t`, for a listing grouped by day: in UTC, or
/// with `--local` or `TZ` in local time (the time then with its offset).
pub fn day_and_time(t: &DateTime<Utc>) -> (String, String) {
    if LOCAL_TIMES.get().copied().unwrap_or(false) {
        let l = t.with_timezone(&Local);
        (
            l.format("%Y-%m-%d").to_string(),
            l.format("%H:%M:%S%:z").to_string(),
        )
    } else {
        (
            t.format("%Y-%m-%d").to_string(),
            t.format("%H:%M:%S").to_string(),
        )
    }
}

/// A time as apikeyctl shows it in text; every time it prints goes through here. In
/// UTC as the daemon's JSON writes it, or, with `--local` or `TZ`, in local time
/// with its offset (chrono's `Local` reads `TZ`).
pub fn show_time(t: &DateTime<Utc>, precision: Precision) -> String {
    let local = LOCAL_TIMES.get().copied().unwrap_or(false);
    match (precision, local) {
        (Precision::Full, false) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        (Precision::Full, true) => t
            .with_timezone(&Local)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        (Precision::Minutes, false) => t.format("%Y-%m-%d %H:%MZ").to_string(),
        (Precision::Minutes, true) => t
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M%:z")
            .to_string(),
    }
}

/// A time, in full.
pub fn time(t: &DateTime<Utc>) -> String {
    show_time(t, Precision::Full)
}

/// A time the daemon sent as RFC 3339 text, shown as [`show_time`] shows it (or as
/// it came, if it is not one).
pub fn time_text(text: &str, precision: Precision) -> String {
    match DateTime::parse_from_rfc3339(text) {
        Ok(t) => show_time(&t.with_timezone(&Utc), precision),
        Err(_) => text.to_owned(),
    }
}

/// A time the daemon sent as RFC 3339 text, in full.
pub fn time_str(text: &str) -> String {
    time_text(text, Precision::Full)
}

/// The times in a sentence of the daemon's (the details line: "expires 2027-02-23
/// 14:05 UTC if not used again"), shown as [`show_time`] shows them to the minute.
pub fn prose_times(text: &str) -> String {
    const LEN: usize = "2027-02-23 14:05 UTC".len();
    if !LOCAL_TIMES.get().copied().unwrap_or(false) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while !rest.is_empty() {
        let found = rest.get(..LEN).and_then(|head| {
            let t = NaiveDateTime::parse_from_str(head.strip_suffix(" UTC")?, "%Y-%m-%d %H:%M");
            t.ok()
        });
        match found {
            Some(t) => {
                out += &show_time(&t.and_utc(), Precision::Minutes);
                rest = &rest[LEN..];
            }
            None => {
                let mut chars = rest.chars();
                out.extend(chars.next());
                rest = chars.as_str();
            }
        }
    }
    out
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
    fn tables_fit_their_width_and_cut_with_an_ellipsis() {
        let headers = ["ID", "NAME", "NOTE"];
        let rows = vec![vec![
            "0123456789".to_owned(),
            "a rather long name for a key".to_owned(),
            "the last column".to_owned(),
        ]];
        let fit = Fit {
            width: Some(40),
            flexible: vec![1, 2],
            cap: 0,
        };
        let lines = table_lines(&headers, &rows, &fit);
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:#?}");
        // The widest flexible column gives way first, down to the narrowest.
        assert_eq!(lines[1], "0123456789  a rather lon…  the last col…");
        // Capped cells, but not the last column.
        let fit = Fit {
            cap: 6,
            ..Fit::default()
        };
        let lines = table_lines(&headers, &rows, &fit);
        assert_eq!(lines[1], "01234…  a rat…  the last column");
    }

    #[test]
    fn prose_times_stay_as_they_are_in_utc() {
        let s = "expires 2027-02-23 14:05 UTC if not used again; ünïcode 2027-13-01 00:00 UTC";
        assert_eq!(prose_times(s), s);
        assert_eq!(time_text("not a time", Precision::Full), "not a time");
        assert_eq!(
            time_text("2027-02-23T14:05:09Z", Precision::Minutes),
            "2027-02-23 14:05Z"
        );
    }

    #[test]
    fn absent_and_empty_read_alike() {
        assert_eq!(or_dash(None::<&str>), "-");
        assert_eq!(or_dash(Some("")), "-");
        assert_eq!(or_never(Some("2026-01-01")), "2026-01-01");
        assert_eq!(or_empty(None::<u64>), "");
    }
}
