//! ISO 8601 periods as the RunMyJobs registry writes them (`p6m`, `P1Y2M`, `p2w`,
//! `pt10m`). The `iso8601` crate parses only upper case and ignores trailing input,
//! and counts a month as 30 days; so we upper-case first, reject any unparsed rest,
//! and do the calendar arithmetic ourselves with chrono (2026-08-31 + p6m = 2027-02-28).

use std::fmt;

use chrono::{DateTime, Days, Months, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// A calendar period: months and years move the calendar, the rest is exact time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    text: String,
    months: u32,
    days: u64,
    millis: u64,
}

/// Why a period string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// Empty where a period is required.
    #[error("a period is required here (ISO 8601, e.g. \"p6m\", \"p14d\", \"pt10m\")")]
    Empty,
    /// Not an ISO 8601 period at all.
    #[error(
        "{0:?} is not an ISO 8601 period (expected e.g. \"p6m\", \"P1Y2M\", \"p2w\", \"pt10m\")"
    )]
    Syntax(String),
    /// Parsed, but with unparsed text after it.
    #[error("{value:?} has unexpected text {rest:?} after the period")]
    Trailing {
        /// The whole input.
        value: String,
        /// What was left over.
        rest: String,
    },
    /// A zero-length period.
    #[error("{0:?} is a zero-length period; use a positive period, or an empty string to turn the limit off")]
    Zero(String),
    /// Too large to add to a date.
    #[error("{0:?} is too long a period")]
    TooLarge(String),
}

/// Longest input we look at; anything longer is certainly not a sensible period.
const MAX_LEN: usize = 64;
/// Upper bound for any single period: 1000 years keeps date arithmetic in range.
const MAX_MONTHS: u64 = 12_000;

impl Period {
    /// Parse a period, accepting either case. Rejects empty input.
    pub fn parse(input: &str) -> Result<Self, PeriodError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PeriodError::Empty);
        }
        if trimmed.len() > MAX_LEN || !trimmed.is_ascii() {
            return Err(PeriodError::Syntax(truncate(trimmed)));
        }
        let upper = trimmed.to_ascii_uppercase();
        if !upper.starts_with('P') {
            return Err(PeriodError::Syntax(trimmed.to_owned()));
        }
        // The crate accepts fractional seconds; registry periods never have them and
        // "p1.5d" style input would be silently misread, so allow only digits and units.
        if !upper
            .bytes()
            .all(|b| b.is_ascii_digit() || b"PYMWDTHS".contains(&b))
        {
            return Err(PeriodError::Syntax(trimmed.to_owned()));
        }
        let (rest, parsed) = match iso8601::parsers::parse_duration(upper.as_bytes()) {
            Ok(ok) => ok,
            Err(_) => return Err(PeriodError::Syntax(trimmed.to_owned())),
        };
        if !rest.is_empty() {
            return Err(PeriodError::Trailing {
                value: trimmed.to_owned(),
                rest: String::from_utf8_lossy(rest).into_owned(),
            });
        }
        let too_large = || PeriodError::TooLarge(trimmed.to_owned());
        let (months, days, millis) = match parsed {
            iso8601::Duration::Weeks(w) => (0u64, u64::from(w) * 7, 0u64),
            iso8601::Duration::YMDHMS {
                year,
                month,
                day,
                hour,
                minute,
                second,
                millisecond,
            } => (
                u64::from(year) * 12 + u64::from(month),
                u64::from(day),
                ((u64::from(hour) * 60 + u64::from(minute)) * 60 + u64::from(second)) * 1000
                    + u64::from(millisecond),
            ),
        };
        if months == 0 && days == 0 && millis == 0 {
            return Err(PeriodError::Zero(trimmed.to_owned()));
        }
        if months > MAX_MONTHS || days > MAX_MONTHS * 31 || millis > MAX_MONTHS * 31 * 86_400_000 {
            return Err(too_large());
        }
        Ok(Self {
            text: trimmed.to_ascii_lowercase(),
            months: u32::try_from(months).map_err(|_| too_large())?,
            days,
            millis,
        })
    }

    /// Parse an optional period: empty (or whitespace) means "off".
    pub fn parse_optional(input: &str) -> Result<Option<Self>, PeriodError> {
        if input.trim().is_empty() {
            Ok(None)
        } else {
            Self::parse(input).map(Some)
        }
    }

    /// `at` + this period, calendar-correct (month ends clamp). `None` on overflow.
    pub fn add_to(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after_months = at.checked_add_months(Months::new(self.months))?;
        let after_days = after_months.checked_add_days(Days::new(self.days))?;
        after_days.checked_add_signed(TimeDelta::try_milliseconds(
            i64::try_from(self.millis).ok()?,
        )?)
    }

    /// `at` - this period, calendar-correct. `None` on overflow.
    pub fn subtract_from(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let before_months = at.checked_sub_months(Months::new(self.months))?;
        let before_days = before_months.checked_sub_days(Days::new(self.days))?;
        before_days.checked_sub_signed(TimeDelta::try_milliseconds(
            i64::try_from(self.millis).ok()?,
        )?)
    }

    /// The shortest this period can be, in seconds (a month counted as 28 days).
    pub fn min_seconds(&self) -> i64 {
        let secs = u64::from(self.months) * 28 * 86_400 + self.days * 86_400 + self.millis / 1000;
        i64::try_from(secs).unwrap_or(i64::MAX)
    }

    /// The longest this period can be, in seconds (a month counted as 31 days),
    /// rounded up.
    pub fn max_seconds(&self) -> i64 {
        let secs =
            u64::from(self.months) * 31 * 86_400 + self.days * 86_400 + self.millis.div_ceil(1000);
        i64::try_from(secs).unwrap_or(i64::MAX)
    }

    /// The period as a fixed length, when it has no months (whose length depends on
    /// the date they are counted from).
    pub fn fixed(&self) -> Option<std::time::Duration> {
        (self.months == 0).then(|| {
            std::time::Duration::from_millis(self.millis)
                + std::time::Duration::from_secs(self.days.saturating_mul(86_400))
        })
    }

    /// The period as written (lower case).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// In words, for people: "6 months", "1 year, 2 months", "2 weeks", "90 minutes"
    /// is "1 hour, 30 minutes".
    pub fn describe(&self) -> String {
        let plural = |n: u64, unit: &str| {
            if n == 1 {
                format!("1 {unit}")
            } else {
                format!("{n} {unit}s")
            }
        };
        let mut parts = Vec::new();
        let (years, months) = (u64::from(self.months / 12), u64::from(self.months % 12));
        let (weeks, days) = if self.days % 7 == 0 {
            (self.days / 7, 0)
        } else {
            (0, self.days)
        };
        let secs = self.millis / 1000;
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        for (n, unit) in [
            (years, "year"),
            (months, "month"),
            (weeks, "week"),
            (days, "day"),
            (hours, "hour"),
            (minutes, "minute"),
            (seconds, "second"),
        ] {
            if n > 0 {
                parts.push(plural(n, unit));
            }
        }
        if parts.is_empty() {
            "no time".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A period of fixed length (no months or years would be exact, so they are measured
/// from a fixed instant) as a std `Duration`.
pub fn fixed_duration(p: &Period) -> Option<std::time::Duration> {
    let base = DateTime::UNIX_EPOCH;
    p.add_to(base)
        .and_then(|t| (t - base).to_std().ok())
        .filter(|d| !d.is_zero())
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_LEN).collect::<String>() + "…"
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Period::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    #[test]
    fn periods_are_described_in_words() {
        for (text, words) in [
            ("p6m", "6 months"),
            ("p1m", "1 month"),
            ("p1y2m", "1 year, 2 months"),
            ("p2w", "2 weeks"),
            ("p10d", "10 days"),
            ("pt90m", "1 hour, 30 minutes"),
            ("p1dt2h", "1 day, 2 hours"),
        ] {
            assert_eq!(Period::parse(text).unwrap().describe(), words, "{text}");
        }
    }

    #[test]
    fn accepts_registry_and_iso_forms() {
        for ok in [
            "p6m", "P6M", "p3m", "p1y", "P1Y2M", "p2w", "pt10m", "PT1H30M", "p1dt2h", "P14D",
        ] {
            Period::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "p6mjunk", "6m", "p", "p0d", "P0Y0M", "pt", "p1w2d", "p-1m", "p1.5d", "p 6m", "x",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(Period::parse(""), Err(PeriodError::Empty));
        assert!(matches!(
            Period::parse("p6mjunk"),
            Err(PeriodError::Syntax(_)) | Err(PeriodError::Trailing { .. })
        ));
    }

    #[test]
    fn calendar_months_clamp_to_month_end() {
        let p = Period::parse("p6m").unwrap();
        assert_eq!(p.add_to(at(2026, 8, 31)).unwrap(), at(2027, 2, 28));
        assert_eq!(
            Period::parse("p1y")
                .unwrap()
                .add_to(at(2028, 2, 29))
                .unwrap(),
            at(2029, 2, 28)
        );
        assert_eq!(
            Period::parse("p2w")
                .unwrap()
                .add_to(at(2026, 12, 25))
                .unwrap(),
            at(2027, 1, 8)
        );
        assert_eq!(
            Period::parse("pt10m")
                .unwrap()
                .add_to(at(2026, 1, 1))
                .unwrap(),
            at(2026, 1, 1) + TimeDelta::minutes(10)
        );
        assert_eq!(
            Period::parse("p14d")
                .unwrap()
                .subtract_from(at(2027, 1, 8))
                .unwrap(),
            at(2026, 12, 25)
        );
    }

    #[test]
    fn optional_empty_is_off() {
        assert_eq!(Period::parse_optional("").unwrap(), None);
        assert!(Period::parse_optional("p3m").unwrap().is_some());
    }

    proptest! {
        #[test]
        fn roundtrip_components(y in 0u32..50, m in 0u32..30, d in 0u32..400, h in 0u32..48, mi in 0u32..120) {
            prop_assume!(y + m + d + h + mi > 0);
            let mut s = String::from("P");
            if y > 0 { s += &format!("{y}Y"); }
            if m > 0 { s += &format!("{m}M"); }
            if d > 0 { s += &format!("{d}D"); }
            if h > 0 || mi > 0 {
                s += "T";
                if h > 0 { s += &format!("{h}H"); }
                if mi > 0 { s += &format!("{mi}M"); }
            }
            let upper = Period::parse(&s).unwrap();
            let lower = Period::parse(&s.to_lowercase()).unwrap();
            prop_assert_eq!(&upper, &lower);
            prop_assert_eq!(upper.months, y * 12 + m);
            prop_assert_eq!(upper.days, u64::from(d));
            prop_assert_eq!(upper.millis, (u64::from(h) * 60 + u64::from(mi)) * 60_000);
            // Adding a positive period always moves time forward.
            let base = at(2026, 8, 31);
            prop_assert!(upper.add_to(base).unwrap() > base);
        }

        #[test]
        fn shortest_and_longest_bound_every_calendar_step(
            m in 0u32..40, d in 0u32..400, secs in 0u64..200_000, day in 0i64..20_000,
        ) {
            prop_assume!(m + d > 0 || secs > 0);
            let mut s = String::from("P");
            if m > 0 { s += &format!("{m}M"); }
            if d > 0 { s += &format!("{d}D"); }
            if secs > 0 { s += &format!("T{secs}S"); }
            let p = Period::parse(&s).unwrap();
            // Any day from 1990 on, month ends and leap days included.
            let base = at(1990, 1, 1) + chrono::Duration::days(day);
            let forward = (p.add_to(base).unwrap() - base).num_seconds();
            let back = (base - p.subtract_from(base).unwrap()).num_seconds();
            for span in [forward, back] {
                prop_assert!(p.min_seconds() <= span && span <= p.max_seconds(), "{s} from {base}: {span}");
            }
        }

        #[test]
        fn never_panics_and_trailing_text_is_rejected(s in "[pPtT0-9YMWDHSymwdhs.x -]{0,20}", junk in "[a-z]{1,4}") {
            let _ = Period::parse(&s);
            if let Ok(p) = Period::parse(&s) {
                let with_junk = format!("{s}{junk}");
                // Either it is rejected, or the junk happened to be valid period syntax
                // and the result differs from the original only by more units.
                if let Ok(q) = Period::parse(&with_junk) {
                    prop_assert!(q != p || with_junk.eq_ignore_ascii_case(&s));
                }
            }
        }
    }
}
