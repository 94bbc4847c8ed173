//! `[ApiKey]`: the key lifecycle rules ([`Policy`]). The table's alert keys are
//! read here too and handed to the alerts section as they are.

use serde::Deserialize;

use super::period::Period;
use super::validator::Validator;

/// `[ApiKey] MaxKeysPerUser` when the file names none.
pub const DEFAULT_MAX_KEYS_PER_USER: u32 = 1000;

/// Key lifecycle rules from the `[ApiKey]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Longest lifetime a key may have; `None` allows keys that never expire.
    pub max_expiration: Option<Period>,
    /// A key not used for this long stops working; `None` turns inactivity expiry off.
    pub not_accessed_expiration: Option<Period>,
    /// Lifetime given when a create names none (clamped to the maximum).
    pub default_expiration: Option<Period>,
    /// Shortest user-defined ("generic") secret accepted by `key import`.
    pub min_imported_secret_length: usize,
    /// Most keys one user may hold (removed keys do not count); `None` = no limit.
    pub max_keys_per_user: Option<u32>,
    /// How long the old secret of a rotation that waits for the new one's first
    /// use (`key rotate --until-used`) keeps working after that use, so that
    /// requests already in flight with it finish.
    pub rotation_overlap: std::time::Duration,
}

/// `[ApiKey] RotationOverlapPeriod` when the file names none.
pub const DEFAULT_ROTATION_OVERLAP: &str = "pt5m";
/// The longest `[ApiKey] RotationOverlapPeriod`, in seconds (one day).
const MAX_ROTATION_OVERLAP_SECS: u64 = 86_400;

impl Default for Policy {
    fn default() -> Self {
        let p = |s: &str| Period::parse(s).ok();
        Self {
            max_expiration: p("p6m"),
            not_accessed_expiration: p("p3m"),
            default_expiration: p("p1y"),
            min_imported_secret_length: 32,
            max_keys_per_user: Some(DEFAULT_MAX_KEYS_PER_USER),
            rotation_overlap: std::time::Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub(crate) struct RawApiKey {
    MaxExpirationPeriod: Option<String>,
    NotAccessedExpirationPeriod: Option<String>,
    DefaultExpirationPeriod: Option<String>,
    MinImportedSecretLength: Option<i64>,
    pub(crate) DefaultNotificationLeadTime: Option<String>,
    pub(crate) DefaultAlertSource: Option<String>,
    pub(crate) InactivityWarningLeadTime: Option<String>,
    pub(crate) RetentionPeriod: Option<String>,
    MaxKeysPerUser: Option<i64>,
    RotationOverlapPeriod: Option<String>,
}

pub(crate) const API_KEY_KEYS: &[&str] = &[
    "MaxExpirationPeriod",
    "NotAccessedExpirationPeriod",
    "DefaultExpirationPeriod",
    "MinImportedSecretLength",
    "DefaultNotificationLeadTime",
    "DefaultAlertSource",
    "InactivityWarningLeadTime",
    "RetentionPeriod",
    "MaxKeysPerUser",
    "RotationOverlapPeriod",
];

impl Validator {
    /// The key lifecycle rules of `[ApiKey]`.
    pub(crate) fn policy(&mut self, a: &RawApiKey) -> Policy {
        let max = self.period(
            "ApiKey.MaxExpirationPeriod",
            a.MaxExpirationPeriod.as_deref(),
            "p6m",
        );
        let not_accessed = self.period(
            "ApiKey.NotAccessedExpirationPeriod",
            a.NotAccessedExpirationPeriod.as_deref(),
            "p3m",
        );
        let default = self.period(
            "ApiKey.DefaultExpirationPeriod",
            a.DefaultExpirationPeriod.as_deref(),
            "p1y",
        );
        let min_import = self.int(
            "ApiKey.MinImportedSecretLength",
            a.MinImportedSecretLength,
            32,
            16..=256,
            Some("16 to 256 characters"),
        );
        let max_keys = self.int(
            "ApiKey.MaxKeysPerUser",
            a.MaxKeysPerUser,
            i64::from(DEFAULT_MAX_KEYS_PER_USER),
            0..=10_000_000,
            Some("0 = no limit, up to 10000000"),
        );
        let overlap = self
            .fixed_period(
                "ApiKey.RotationOverlapPeriod",
                a.RotationOverlapPeriod
                    .as_deref()
                    .unwrap_or(DEFAULT_ROTATION_OVERLAP),
                MAX_ROTATION_OVERLAP_SECS,
                "pt1s to p1d, without months or years",
            )
            .unwrap_or(Policy::default().rotation_overlap);
        Policy {
            max_expiration: max,
            not_accessed_expiration: not_accessed,
            default_expiration: default,
            min_imported_secret_length: usize::try_from(min_import).unwrap_or(32),
            max_keys_per_user: u32::try_from(max_keys).ok().filter(|n| *n > 0),
            rotation_overlap: overlap,
        }
    }
}
