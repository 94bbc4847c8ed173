//! Changing a key: edit, enable and disable, remove, rotate, each through
//! [`Keys::modify`] (`modify.rs`).

use chrono::{DateTime, Utc};

use super::error::{invalid, KeyError};
use super::index::{check_unique_name, Index};
use super::modify::{Ctx, WithJob};
use super::notification;
use super::rotation::{self, Grace};
use super::rules::{
    add_period, binds_owner, check_description, check_expiry_range, check_headers, check_ips,
    check_name, check_owner_headers, check_owner_ips, check_scopes, optional_period, parse_period,
    parse_time, OwnSecrets,
};
use super::secret;
use super::types::{Actor, EditKey, Issued, KeyView};
use super::Keys;
use crate::model::{rfc3339, KeyKind, KeyRecord, KeyState, Status, UserSecret};

impl Keys {
    /// Edit description, name, IP filters, headers, narrow scopes, shorten expiry.
    /// An owner may only narrow the IP filters and headers an admin set; an admin's
    /// change to someone else's key becomes the restriction its owner is held to.
    pub async fn edit(&self, actor: &Actor, id: &str, req: EditKey) -> Result<KeyView, KeyError> {
        let checked = check_not_own_secret(self, actor, id, &req).await?;
        let live = self
            .modify(actor, id, ("edit", WithJob::Yes), |rec, ctx| {
                if checked
                    .as_ref()
                    .is_some_and(|c| OwnSecrets::of(rec).ok().as_ref() != Some(c))
                {
                    return Err(KeyError::Conflict(format!(
                        "the secret of key {} changed while this edit was checked; try again",
                        rec.id
                    )));
                }
                let old_expiry = rec.expires_at;
                let changed = apply_edit(rec, &req, actor, ctx)?;
                if changed.is_empty() {
                    return Err(invalid(
                        "edit",
                        "nothing to change: give at least one field",
                    ));
                }
                // A notification later than the new expiry moves with it.
                let (more, jobs) =
                    notification::follow_expiry(rec, old_expiry, ctx.job.take(), ctx.now);
                ctx.jobs = jobs;
                Ok(changed.join(" ") + &more)
            })
            .await?;
        self.view(&live).await
    }

    /// Enable or disable a key. A key an admin disabled stays disabled for its owner.
    pub async fn set_enabled(
        &self,
        actor: &Actor,
        id: &str,
        enabled: bool,
    ) -> Result<KeyView, KeyError> {
        let action = if enabled { "enable" } else { "disable" };
        let live = self
            .modify(actor, id, (action, WithJob::No), |rec, ctx| {
                let settings = ctx.settings;
                let binds = binds_owner(actor, &rec.owner, &settings.directory);
                let restrictions = &mut rec.admin_restrictions;
                if enabled {
                    if let (false, Some(by)) = (actor.admin, &restrictions.disabled_by) {
                        return Err(KeyError::Forbidden(format!(
                            "key {} was disabled by admin {by:?}; only an admin can enable it again",
                            rec.id
                        )));
                    }
                    restrictions.disabled_by = None;
                    rec.state = KeyState::Enabled;
                    return Ok(String::new());
                }
                if binds {
                    restrictions.disabled_by = Some(actor.name.clone());
                }
                rec.state = KeyState::Disabled;
                Ok(String::new())
            })
            .await?;
        self.view(&live).await
    }

    /// Remove a key: it stops working at once and is kept for the record. Its
    /// notification job, if not started, is cancelled in the same transaction.
    pub async fn remove(&self, actor: &Actor, id: &str) -> Result<KeyView, KeyError> {
        let live = self
            .modify(actor, id, ("remove", WithJob::Yes), |rec, ctx| {
                let now = ctx.now;
                // An admin's removal retires the key's secret for its owner too.
                if binds_owner(actor, &rec.owner, &ctx.settings.directory) {
                    rec.admin_restrictions.restricted_by = Some(actor.name.clone());
                }
                rec.state = KeyState::Removed;
                rec.removed_at = Some(now);
                rec.previous_hash = None;
                rec.previous_valid_until = None;
                rec.rotation = None;
                let (detail, jobs) = notification::cancel_for_removal(rec, ctx.job.take(), now);
                ctx.jobs = jobs;
                Ok(detail)
            })
            .await?;
        self.view(&live).await
    }

    /// Give a key a new secret, keeping its settings. With a grace period the old
    /// secret keeps working until it ends (never past the key's expiry).
    pub async fn rotate(
        &self,
        actor: &Actor,
        id: &str,
        grace: Option<&str>,
    ) -> Result<Issued, KeyError> {
        let grace = optional_period("grace", grace)?.map_or(Grace::None, Grace::For);
        self.rotate_with(actor, id, grace).await
    }

    /// [`Self::rotate`] with `grace`: what becomes of the old secret.
    pub(super) async fn rotate_with(
        &self,
        actor: &Actor,
        id: &str,
        grace: Grace,
    ) -> Result<Issued, KeyError> {
        let secret = secret::generate();
        let new_hash = self.hasher.hash(secret.expose());
        let alerting = self.alerting.config();
        let live = self
            .modify(actor, id, ("rotate", WithJob::No), |rec, ctx| {
                let (settings, now) = (ctx.settings, ctx.now);
                // A new secret on a key an admin disabled is the owner's way around
                // the disable once the key is enabled, and frees the old secret.
                if let (false, Some(by)) = (actor.admin, &rec.admin_restrictions.disabled_by) {
                    return Err(KeyError::Forbidden(format!(
                        "key {} was disabled by admin {by:?}; only an admin can rotate it",
                        rec.id
                    )));
                }
                match rec.status(&settings.policy, rec.last_used_at, now) {
                    Status::Expired | Status::Inactive => {
                        return Err(KeyError::Conflict(format!(
                            "key {} has expired; create a new key instead of rotating it",
                            rec.id
                        )))
                    }
                    _ => {}
                }
                // An admin's rotation retires the old secret for its owner too.
                if binds_owner(actor, &rec.owner, &settings.directory) {
                    rec.admin_restrictions.restricted_by = Some(actor.name.clone());
                }
                // While a rotation waits for its new secret's first use, the client
                // still uses the secret before it: that one stays the old secret, and
                // the never-used one is dropped (rotating again must not stop the
                // secret in use at once).
                let waiting_old = rec
                    .pending_rotation()
                    .and(rec.previous_hash.clone())
                    .filter(|_| rec.previous_valid_until.is_some_and(|t| t > now));
                let kept_in_use = waiting_old.is_some();
                let old = waiting_old.unwrap_or_else(|| rec.hash.clone());
                rec.hash = hex::encode(new_hash);
                if rec.kind == KeyKind::Generated || matches!(grace, Grace::None) {
                    // No imported secret is left on the key (the previous secret,
                    // if any, is a generated one).
                    rec.user_secret = UserSecret::None;
                }
                rec.kind = KeyKind::Generated;
                // A rotation waiting for a first use ends with this one.
                rec.rotation = None;
                let detail = match &grace {
                    Grace::UntilUsed(max_grace, asked) => {
                        rotation::start(rec, ctx, old, (max_grace, *asked), &alerting)
                    }
                    Grace::For(p) => {
                        let mut until = add_period(p, now)?;
                        if let Some(exp) = rec.expires_at {
                            until = until.min(exp);
                        }
                        rec.previous_hash = Some(old);
                        rec.previous_valid_until = Some(until);
                        Ok(format!("grace until {}", rfc3339(until)))
                    }
                    Grace::None => {
                        rec.previous_hash = None;
                        rec.previous_valid_until = None;
                        Ok("no grace".to_owned())
                    }
                }?;
                Ok(if kept_in_use && !matches!(grace, Grace::None) {
                    format!("{detail}; the old secret is the one in use before the pending rotation (its new secret was never used)")
                } else {
                    detail
                })
            })
            .await?;
        Ok(Issued {
            key: secret,
            view: self.view(&live).await?,
        })
    }
}

/// Refuse a new name or description that contains the key's own secret: names
/// and descriptions are shown in listings, the audit trail and
/// `X-Api-Key-Name`. Generated secrets are caught by their format
/// ([`secret::looks_like_key`]); a user-defined token has none, so the stretches
/// of the text it could be are hashed and compared with the key's imported
/// secret ([`OwnSecrets`]). That is up to ~1000 hashes (~200k for a record
/// stored before its secret's length was kept), so it runs before the change,
/// on a blocking thread, holding neither the writer nor the index; the change
/// then makes sure the secret it was checked against is still the key's.
/// Returns what was checked against, if anything was.
async fn check_not_own_secret(
    keys: &Keys,
    actor: &Actor,
    id: &str,
    req: &EditKey,
) -> Result<Option<OwnSecrets>, KeyError> {
    let mut texts = Vec::new();
    if let Some(name) = &req.name {
        texts.push(("name", check_name(name, "")?));
    }
    if let Some(d) = &req.description {
        texts.push(("description", check_description(d, "")?));
    }
    if texts.is_empty() {
        return Ok(None);
    }
    let live = keys.visible(actor, id)?;
    let own = OwnSecrets::of(&keys.record(&live).await?)?;
    if own.hashes.is_empty() {
        return Ok(Some(own));
    }
    let hasher = keys.hasher.clone();
    tokio::task::spawn_blocking(move || {
        for (field, text) in &texts {
            if own.found_in(&hasher, text) {
                return Err(invalid(
                    field,
                    "must not contain this key's secret (a key's name and description are shown everywhere; the secret is not)",
                ));
            }
        }
        Ok(Some(own))
    })
    .await
    .map_err(|e| KeyError::Internal(e.to_string()))?
}

/// Apply the fields of an edit to `rec`; returns what changed, for the audit trail.
fn apply_edit(
    rec: &mut KeyRecord,
    req: &EditKey,
    actor: &Actor,
    ctx: &Ctx<'_>,
) -> Result<Vec<String>, KeyError> {
    let binds = binds_owner(actor, &rec.owner, &ctx.settings.directory);
    let mut changed = Vec::new();
    if let Some(name) = &req.name {
        rename(rec, name, actor, ctx.index)?;
        changed.push(format!("name={:?}", rec.name));
    }
    if let Some(d) = &req.description {
        rec.description = check_description(d, "")?;
        changed.push("description".to_owned());
    }
    if let Some(list) = &req.scopes {
        narrow_scopes(rec, list, actor, binds)?;
        changed.push(format!("scopes=[{}]", rec.scopes.join(",")));
    }
    if let Some(ips) = &req.ip {
        let ips = check_ips(ips)?;
        if !actor.admin {
            check_owner_ips(&ips, &rec.admin_restrictions.ip_filters)?;
        } else if binds {
            rec.admin_restrictions.ip_filters = ips.clone();
        } else {
            // An admin's own key: nothing anyone else imposed binds it.
            rec.admin_restrictions.ip_filters.clear();
        }
        rec.ip_filters = ips;
        let shown: Vec<String> = rec.ip_filters.iter().map(|n| n.to_string()).collect();
        changed.push(format!("ip=[{}]", shown.join(",")));
    }
    if let Some(h) = &req.headers {
        let headers = check_headers(h)?;
        if !actor.admin {
            check_owner_headers(&headers, &rec.admin_restrictions.headers)?;
        } else if binds {
            rec.admin_restrictions.headers = headers.clone();
        } else {
            rec.admin_restrictions.headers.clear();
        }
        rec.headers = headers;
        changed.push(format!("headers={}", rec.headers.len()));
    }
    if let Some(at) = earlier_expiry(rec, req, ctx)? {
        if binds && rec.expires_at != Some(at) {
            rec.admin_restrictions.restricted_by = Some(actor.name.clone());
        }
        rec.expires_at = Some(at);
        changed.push(format!("expires={}", rfc3339(at)));
    }
    Ok(changed)
}

/// A new name, unique for the owner. A header with `${key.name}` is one only an
/// admin may set: the owner renaming the key would choose what it tells the upstream.
fn rename(rec: &mut KeyRecord, name: &str, actor: &Actor, index: &Index) -> Result<(), KeyError> {
    let name = check_name(name, "")?;
    if !actor.admin
        && name != rec.name
        && rec
            .headers
            .iter()
            .any(|h| h.template.contains("${key.name}"))
    {
        return Err(KeyError::Forbidden(format!(
            "key {} has a header an admin set from its name (${{key.name}}); \
             only an admin can rename it",
            rec.id
        )));
    }
    check_unique_name(index, &rec.owner, &name, Some(rec.id))?;
    rec.name = name;
    Ok(())
}

/// Scopes can only be narrowed; an admin narrowing someone else's key binds them.
fn narrow_scopes(
    rec: &mut KeyRecord,
    list: &[String],
    actor: &Actor,
    binds: bool,
) -> Result<(), KeyError> {
    let scopes = check_scopes(list)?;
    if let Some(bad) = scopes.iter().find(|s| !rec.scopes.contains(s)) {
        return Err(invalid(
            "scopes",
            format!(
                "scopes can only be narrowed; the key does not hold {bad:?} (it holds: {})",
                rec.scopes.join(", ")
            ),
        ));
    }
    if binds && rec.scopes.iter().any(|s| !scopes.contains(s)) {
        rec.admin_restrictions.restricted_by = Some(actor.name.clone());
    }
    rec.scopes = scopes;
    Ok(())
}

/// The new expiry an edit asks for, if any: only ever earlier, and within the policy.
fn earlier_expiry(
    rec: &KeyRecord,
    req: &EditKey,
    ctx: &Ctx<'_>,
) -> Result<Option<DateTime<Utc>>, KeyError> {
    let at = match (&req.expires_at, &req.expires_in) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "expires_at",
                "give either --expires-at or --expires-in, not both",
            ))
        }
        (Some(at), None) => parse_time("expires_at", at)?,
        (None, Some(p)) => add_period(&parse_period("expires_in", p)?, ctx.now)?,
        (None, None) => return Ok(None),
    };
    if rec.expires_at.is_some_and(|cur| at > cur) {
        return Err(invalid(
            "expires_at",
            format!(
                "the expiry of a key can only be moved earlier (currently {}, asked {})",
                rec.expires_at.map(rfc3339).unwrap_or_default(),
                rfc3339(at)
            ),
        ));
    }
    check_expiry_range(&ctx.settings.policy, at, ctx.now)?;
    Ok(Some(at))
}
