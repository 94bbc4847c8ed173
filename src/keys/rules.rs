//! The key rules that need no store: what a name, description, scope list, IP
//! filter, header or expiry may be, what an owner may change of what an admin set,
//! and which secrets leave a key. Each returns the error the caller sees, naming the
//! field.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::error::{invalid, KeyError};
use super::secret::{self, KeyHasher};
use super::types::{Actor, CreateKey};
use crate::config::ipfilter;
use crate::config::{valid_scope, Directory, Period, Policy};
use crate::model::headers::{self, HeaderTemplate};
use crate::model::row::decode_hash;
use crate::model::{rfc3339, KeyHash, KeyKind, KeyRecord, KeyState, RetiredSecret, UserSecret};
use crate::store::{Retire, StoreError};

const MAX_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 1000;
const MAX_SCOPES: usize = 64;
const MAX_IP_FILTERS: usize = 64;
const MAX_HEADERS: usize = 32;
/// The shortest user-defined token any configuration accepts (MinImportedSecretLength
/// may have been lower when a token was imported than it is now).
const MIN_GENERIC_SECRET: usize = 16;

/// The user-defined secrets of a key that its name and description must not
/// contain: its imported current secret, and its previous one after a rotation
/// (imported, or of a record too old to tell), with their length when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnSecrets {
    pub(super) hashes: Vec<KeyHash>,
    pub(super) len: Option<usize>,
}

impl OwnSecrets {
    pub(super) fn of(rec: &KeyRecord) -> Result<Self, KeyError> {
        let mut hashes = Vec::with_capacity(2);
        if rec.kind == KeyKind::Imported {
            hashes.push(decode_hash(&rec.hash).map_err(StoreError::from)?);
        }
        if let Some(previous) = &rec.previous_hash {
            // A previous secret known to be generated gives itself away by its format.
            if rec.user_secret != UserSecret::None {
                hashes.push(decode_hash(previous).map_err(StoreError::from)?);
            }
        }
        Ok(Self {
            hashes,
            len: match rec.user_secret {
                UserSecret::Length(n) => Some(n),
                UserSecret::Unknown | UserSecret::None => None,
            },
        })
    }

    /// Whether `text` contains one of the secrets.
    pub(super) fn found_in(&self, hasher: &KeyHasher, text: &str) -> bool {
        !self.hashes.is_empty()
            && windows(text, self.len).any(|w| self.hashes.contains(&hasher.hash(w)))
    }
}

/// The stretches of `text` a user-defined secret of length `len` could be
/// (printable ASCII without spaces); of any length a configuration could ever have
/// allowed when `len` is not known.
pub(super) fn windows(text: &str, len: Option<usize>) -> impl Iterator<Item = &str> {
    let (shortest, longest) = match len {
        Some(n) => (n, n),
        None => (MIN_GENERIC_SECRET, secret::MAX_SECRET_LEN),
    };
    text.split(|c: char| !c.is_ascii_graphic())
        .flat_map(move |run| {
            // ASCII only: every byte offset is a char boundary.
            (0..run.len()).flat_map(move |start| {
                let last = run.len().min(start + longest);
                (start + shortest.max(1)..=last).map(move |end| &run[start..end])
            })
        })
}

pub(super) fn check_text(
    field: &'static str,
    s: &str,
    max: usize,
    allow_newlines: bool,
) -> Result<String, KeyError> {
    if s.chars().count() > max {
        return Err(invalid(
            field,
            format!(
                "is too long ({} characters; at most {max})",
                s.chars().count()
            ),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
    {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(s.to_owned())
}

pub(super) fn check_name(name: &str, secret: &str) -> Result<String, KeyError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "a key needs a name"));
    }
    let name = check_text("name", name, MAX_NAME, false)?;
    if (!secret.is_empty() && name.contains(secret)) || secret::looks_like_key(&name) {
        return Err(invalid(
            "name",
            "must not contain an API key (a key's name is shown everywhere; the key is not)",
        ));
    }
    Ok(name)
}

pub(super) fn check_description(d: &str, secret: &str) -> Result<String, KeyError> {
    let d = check_text("description", d.trim(), MAX_DESCRIPTION, true)?;
    if (!secret.is_empty() && d.contains(secret)) || secret::looks_like_key(&d) {
        return Err(invalid("description", "must not contain an API key"));
    }
    Ok(d)
}

pub(super) fn check_scopes(list: &[String]) -> Result<Vec<String>, KeyError> {
    if list.len() > MAX_SCOPES {
        return Err(invalid("scopes", format!("at most {MAX_SCOPES} scopes")));
    }
    let mut out: Vec<String> = Vec::new();
    for s in list {
        let s = s.trim();
        if !valid_scope(s) {
            return Err(invalid(
                "scopes",
                format!(
                    "{:?} is not a valid scope",
                    s.chars().take(80).collect::<String>()
                ),
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    if out.is_empty() {
        return Err(invalid(
            "scopes",
            "give at least one scope, or leave scopes out for all the owner may hold",
        ));
    }
    out.sort();
    Ok(out)
}

pub(super) fn check_ips(list: &[String]) -> Result<Vec<ipnet::IpNet>, KeyError> {
    if list.len() > MAX_IP_FILTERS {
        return Err(invalid(
            "ip",
            format!("at most {MAX_IP_FILTERS} IP filters"),
        ));
    }
    let mut out = Vec::new();
    for s in list {
        let net = ipfilter::parse(s).map_err(|e| invalid("ip", e.to_string()))?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

pub(super) fn check_headers(list: &[String]) -> Result<Vec<HeaderTemplate>, KeyError> {
    if list.len() > MAX_HEADERS {
        return Err(invalid("headers", format!("at most {MAX_HEADERS} headers")));
    }
    let mut out: Vec<HeaderTemplate> = Vec::new();
    for s in list {
        let h = headers::parse(s).map_err(|e| invalid("headers", e.to_string()))?;
        if out.iter().any(|o| headers::same_name(&o.name, &h.name)) {
            return Err(invalid(
                "headers",
                format!("header {:?} is given twice", h.name),
            ));
        }
        out.push(h);
    }
    Ok(out)
}

/// Whether what `actor` sets on a key of `owner` binds the owner (only an admin may
/// lift it): an admin acting on someone else's key. The same name is not enough to
/// be the owner: an unmapped root acts as admin "root", and a configured non-admin
/// user may be named "root" too; an admin's own key is one whose owner is a
/// configured admin.
pub(super) fn binds_owner(actor: &Actor, owner: &str, directory: &Directory) -> bool {
    actor.admin
        && (actor.name != owner || !directory.rights(owner).is_some_and(|r| r.manage_all_keys))
}

/// An owner's IP filters must stay within the networks an admin limited the key to:
/// every network inside one of the admin's, and at least one.
pub(super) fn check_owner_ips(
    list: &[ipnet::IpNet],
    admin: &[ipnet::IpNet],
) -> Result<(), KeyError> {
    if admin.is_empty() {
        return Ok(());
    }
    let allowed = || {
        admin
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if list.is_empty() {
        return Err(KeyError::Forbidden(format!(
            "an admin limited this key to {}; only an admin can remove that limit (you may narrow it)",
            allowed()
        )));
    }
    if let Some(bad) = list.iter().find(|n| !admin.iter().any(|a| a.contains(*n))) {
        return Err(KeyError::Forbidden(format!(
            "{bad} is not inside the networks an admin limited this key to ({}); you may only narrow them",
            allowed()
        )));
    }
    Ok(())
}

/// The headers an owner gives a key: every header an admin set, unchanged, and
/// otherwise only values apikeyd fills in ([`headers::OWNER_VALUES`]), so that the
/// upstream is told nothing the owner made up.
pub(super) fn check_owner_headers(
    list: &[HeaderTemplate],
    admin: &[HeaderTemplate],
) -> Result<(), KeyError> {
    if let Some(kept) = admin.iter().find(|a| !list.iter().any(|h| h.same(a))) {
        return Err(KeyError::Forbidden(format!(
            "header {:?} was set by an admin; only an admin can change or remove it (give it unchanged)",
            kept.name
        )));
    }
    if let Some(bad) = list
        .iter()
        .find(|h| !h.owner_may_set() && !admin.iter().any(|a| a.same(h)))
    {
        return Err(KeyError::Forbidden(format!(
            "header {:?}: only an admin may set literal text or ${{key.name}} in a header; \
             a key's owner may use exactly one of {} as the value",
            bad.name,
            headers::OWNER_VALUES.join(", ")
        )));
    }
    Ok(())
}

/// The secrets that leave key `before` when it becomes `after` (`None`: purged):
/// its imported current secret, and its previous secret (refreshed only: it was
/// retired when rotated away, if it was imported). Generated secrets are never
/// recorded: the `akd_` format cannot be imported.
pub(super) fn retirements(
    before: &KeyRecord,
    after: Option<&KeyRecord>,
    now: DateTime<Utc>,
) -> Vec<Retire> {
    if before.state == KeyState::Removed {
        // Removing it retired what it held.
        return Vec::new();
    }
    let live = after.filter(|a| a.state != KeyState::Removed);
    let mut out = Vec::new();
    let mut retire = |hex: &str, refresh_only: bool| {
        if let Ok(hash) = decode_hash(hex) {
            out.push(Retire {
                hash,
                entry: RetiredSecret::of(before, after, now),
                refresh_only,
            });
        }
    };
    if before.kind == KeyKind::Imported && live.is_none_or(|a| a.hash != before.hash) {
        retire(&before.hash, false);
    }
    if let Some(previous) = &before.previous_hash {
        if live.is_none_or(|a| a.previous_hash.as_ref() != Some(previous)) {
            retire(previous, true);
        }
    }
    out
}

/// The warning job of a rotation that `before` waited for and `after` no longer
/// does (the new secret was used, the key was rotated again or removed), and why
/// it is not wanted: the change that ends the rotation cancels it.
pub(super) fn rotation_warning_dropped(
    before: &KeyRecord,
    after: &KeyRecord,
) -> Option<(Uuid, &'static str)> {
    let job = before.pending_rotation()?.warning_job?;
    if after.pending_rotation().and_then(|r| r.warning_job) == Some(job) {
        return None;
    }
    let why = if after.state == KeyState::Removed {
        "the key was removed"
    } else if after.hash == before.hash {
        "the new secret was used"
    } else {
        "the key was rotated again"
    };
    Some((job, why))
}

pub(super) fn parse_period(field: &'static str, s: &str) -> Result<Period, KeyError> {
    Period::parse(s).map_err(|e| invalid(field, e.to_string()))
}

/// An optional period in request field `field`: absent or blank is `None`.
pub(super) fn optional_period(
    field: &'static str,
    s: Option<&str>,
) -> Result<Option<Period>, KeyError> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => parse_period(field, s).map(Some),
        None => Ok(None),
    }
}

pub(super) fn add_period(p: &Period, now: DateTime<Utc>) -> Result<DateTime<Utc>, KeyError> {
    p.add_to(now)
        .ok_or_else(|| invalid("expires_in", format!("{p} is too far in the future")))
}

/// A time given as RFC 3339 in request field `field`.
pub(super) fn parse_time(field: &'static str, s: &str) -> Result<DateTime<Utc>, KeyError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            // The example each field has always given.
            let example = match field {
                "notify_at" => "2027-01-17T09:00:00Z",
                _ => "2027-01-31T00:00:00Z",
            };
            invalid(
                field,
                format!("{s:?} is not an RFC 3339 time such as {example}"),
            )
        })
}

pub(super) fn check_expiry_range(
    policy: &Policy,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), KeyError> {
    let earliest = now + Duration::minutes(1);
    if at < earliest {
        return Err(invalid(
            "expires_at",
            format!(
                "{} is too soon: a key must live at least one minute (from {})",
                rfc3339(at),
                rfc3339(earliest)
            ),
        ));
    }
    if let Some(max) = &policy.max_expiration {
        if let Some(latest) = max.add_to(now) {
            if at > latest {
                return Err(invalid(
                    "expires_at",
                    format!(
                        "{} is later than MaxExpirationPeriod ({max}) allows: at most {}",
                        rfc3339(at),
                        rfc3339(latest)
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn resolve_create_expiry(
    policy: &Policy,
    req: &CreateKey,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, KeyError> {
    let given = usize::from(req.expires_at.is_some())
        + usize::from(req.expires_in.is_some())
        + usize::from(req.never_expires);
    if given > 1 {
        return Err(invalid(
            "expires_at",
            "give only one of --expires-at, --expires-in and --never-expires",
        ));
    }
    let at = if let Some(s) = &req.expires_at {
        parse_time("expires_at", s)?
    } else if let Some(p) = &req.expires_in {
        add_period(&parse_period("expires_in", p)?, now)?
    } else if req.never_expires {
        return match &policy.max_expiration {
            Some(max) => Err(invalid(
                "expires_at",
                format!("keys must expire: MaxExpirationPeriod is {max} (empty it to allow keys that never expire)"),
            )),
            None => Ok(None),
        };
    } else {
        // The default lifetime, clamped to the maximum; if neither is set, never.
        let default = policy
            .default_expiration
            .as_ref()
            .and_then(|p| p.add_to(now));
        let max = policy.max_expiration.as_ref().and_then(|p| p.add_to(now));
        match (default, max) {
            (Some(d), Some(m)) => d.min(m),
            (Some(d), None) => d,
            (None, Some(m)) => m,
            (None, None) => return Ok(None),
        }
    };
    check_expiry_range(policy, at, now)?;
    Ok(Some(at))
}
