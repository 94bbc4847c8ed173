//! The [`Validator`] that collects every problem of one file, and the checks every
//! section uses (periods, durations, integers in a range, known keys). Each section
//! adds its own `impl Validator` beside its types; this file imports none of them.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, Problem};
use super::period::{fixed_duration, Period};

/// Collects every problem of one file. Each section of the file has its own
/// `impl Validator` beside its types, in the module for that section.
pub(crate) struct Validator {
    file: PathBuf,
    problems: Vec<Problem>,
}

impl Validator {
    pub(crate) fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            problems: Vec::new(),
        }
    }

    /// The file being validated.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// Whether a problem has been reported.
    pub(crate) fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    pub(crate) fn push(&mut self, key: &str, message: String) {
        self.problems.push(Problem {
            file: self.file.clone(),
            key: key.to_owned(),
            message,
        });
    }

    pub(crate) fn finish_err(&mut self) -> ConfigError {
        ConfigError {
            problems: std::mem::take(&mut self.problems),
        }
    }

    pub(crate) fn check_keys(&mut self, prefix: &str, table: &toml::Table, allowed: &[&str]) {
        for k in table.keys() {
            if !allowed.contains(&k.as_str()) {
                self.push(
                    &format!("{prefix}{k}"),
                    format!("unknown key (known keys here: {})", allowed.join(", ")),
                );
            }
        }
    }

    pub(crate) fn period(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Option<Period> {
        let value = value.unwrap_or(default);
        match Period::parse_optional(value) {
            Ok(p) => p,
            Err(e) => {
                self.push(key, e.to_string());
                None
            }
        }
    }

    /// A period of fixed length (no months or years) from 1 s to `max_secs`, as a
    /// duration; `range` names the bounds in the message.
    pub(crate) fn fixed_period(
        &mut self,
        key: &str,
        value: &str,
        max_secs: u64,
        range: &str,
    ) -> Option<Duration> {
        Period::parse(value)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                p.fixed()
                    .filter(|d| (1..=max_secs).contains(&d.as_secs()))
                    .ok_or_else(|| format!("{p} is out of range ({range})"))
            })
            .map_err(|message| self.push(key, message))
            .ok()
    }

    /// A period longer than zero as a duration ([`fixed_duration`]), or `default`'s
    /// when it is not one (reported).
    pub(crate) fn duration(&mut self, key: &str, value: Option<&str>, default: &str) -> Duration {
        let text = value.unwrap_or(default);
        let fallback = Period::parse(default)
            .ok()
            .and_then(|p| fixed_duration(&p))
            .unwrap_or(Duration::from_secs(30));
        match Period::parse(text) {
            Ok(p) => match fixed_duration(&p) {
                Some(d) => d,
                None => {
                    self.push(key, format!("{text:?} must be longer than zero"));
                    fallback
                }
            },
            Err(e) => {
                self.push(key, e.to_string());
                fallback
            }
        }
    }

    /// `value`, or `default` when unset, reported unless it lies in `range`; the
    /// message names the range as `bounds` says, or as "FIRST to LAST".
    pub(crate) fn int(
        &mut self,
        key: &str,
        value: Option<i64>,
        default: i64,
        range: RangeInclusive<i64>,
        bounds: Option<&str>,
    ) -> i64 {
        let x = value.unwrap_or(default);
        if !range.contains(&x) {
            let bounds = bounds.map_or_else(
                || format!("{} to {}", range.start(), range.end()),
                str::to_owned,
            );
            self.push(key, format!("{x} is out of range ({bounds})"));
        }
        x
    }
}
