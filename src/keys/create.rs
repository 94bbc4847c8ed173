//! Issuing keys: a generated secret ([`Keys::create`]) or a user-defined token
//! ([`Keys::import`]), each checked against the owner's rights and the policy, then
//! committed with its audit entry and notification job.

use chrono::{DateTime, Utc};

use super::error::{invalid, KeyError};
use super::index::{check_unique_name, Index};
use super::notification::{self, Plan};
use super::rules::{
    binds_owner, check_description, check_headers, check_ips, check_name, check_owner_headers,
    check_scopes, resolve_create_expiry,
};
use super::secret::{self, Secret};
use super::types::{view_of, Actor, CreateKey, Issued, KeyView, Settings};
use super::Keys;
use crate::config::Rights;
use crate::model::headers::HeaderTemplate;
use crate::model::{
    rfc3339, AdminRestrictions, AuditEntry, KeyHash, KeyKind, KeyRecord, UserSecret,
};

impl Keys {
    /// Create a key with a generated secret.
    pub async fn create(&self, actor: &Actor, req: CreateKey) -> Result<Issued, KeyError> {
        if req.secret.is_some() {
            return Err(invalid("secret", "use key import to bring your own secret"));
        }
        insert_new(self, actor, req, secret::generate(), KeyKind::Generated).await
    }

    /// Import a user-defined ("generic") token.
    pub async fn import(&self, actor: &Actor, mut req: CreateKey) -> Result<KeyView, KeyError> {
        let Some(imported) = req.secret.take() else {
            return Err(invalid("secret", "a secret is required for import"));
        };
        let s = imported.expose().trim_end_matches(['\n', '\r']).to_owned();
        check_token(&s, self.settings().policy.min_imported_secret_length)?;
        let issued = insert_new(self, actor, req, Secret::new(s), KeyKind::Imported).await?;
        Ok(issued.view)
    }
}

/// What a user-defined token must be: not one of ours, long enough, printable.
pub(super) fn check_token(s: &str, min: usize) -> Result<(), KeyError> {
    if s.starts_with(secret::PREFIX) {
        return Err(invalid(
            "secret",
            "looks like a key issued by apikeyd; issued keys cannot be imported",
        ));
    }
    if s.len() < min {
        return Err(invalid(
            "secret",
            format!(
                "is {} characters long; at least {min} are required (MinImportedSecretLength)",
                s.len()
            ),
        ));
    }
    if !secret::is_generic_token(s, min) {
        return Err(invalid(
            "secret",
            format!(
                "must be printable ASCII without spaces, {min} to {} characters",
                secret::MAX_SECRET_LEN
            ),
        ));
    }
    Ok(())
}

/// A new key's record, checked: everything but the checks against other keys.
pub(super) struct Checked {
    pub(super) rec: KeyRecord,
    pub(super) plan: Plan,
    pub(super) notice: Option<String>,
}

async fn insert_new(
    keys: &Keys,
    actor: &Actor,
    req: CreateKey,
    secret: Secret,
    kind: KeyKind,
) -> Result<Issued, KeyError> {
    let settings = keys.settings();
    let now = keys.clock.now();
    let hash = keys.hasher.hash(secret.expose());
    let Checked { rec, plan, notice } = check_new(keys, actor, &req, &settings, &secret, now)?;
    let mut rec = KeyRecord {
        kind,
        user_secret: match kind {
            KeyKind::Imported => UserSecret::Length(secret.expose().len()),
            KeyKind::Generated => UserSecret::None,
        },
        ..rec
    };
    rec.hash = hex::encode(hash);

    // A generated secret is known only from the answer, so a new key may show in
    // the index before it is written (group commit, `batch.rs`); an imported token
    // is its holder's already, so that key shows only once written.
    let writer = match kind {
        KeyKind::Generated => keys.lock_writer_for_new().await,
        KeyKind::Imported => keys.lock_writer().await,
    };
    check_free(&keys.index.read(), &settings, &hash, &rec)?;
    if kind == KeyKind::Imported && !actor.admin {
        // Under the writer lock: a removal or rotation that retires the secret
        // cannot slip in between this check and the commit.
        let retired = keys.blocking(move |s| s.retired(&hash)).await?;
        if retired.is_some_and(|r| r.owner != rec.owner || r.restricted) {
            // Whose it was stays unsaid: the answer must not tell who held a token.
            return Err(KeyError::Conflict(
                "this secret was used by a key that was removed or rotated and cannot be \
                 imported again; ask an admin"
                    .into(),
            ));
        }
    }
    let (rec, mut change) = notification::attach(rec, plan, now);
    let action = match kind {
        KeyKind::Generated => "create",
        KeyKind::Imported => "import",
    };
    let detail = issue_detail(&rec, notice.as_deref());
    let mut view = view_of(&settings, &rec, now);
    view.notice = notice;
    // The entry's time is the commit's, under the writer, as for every change.
    change.audit.push(AuditEntry::new(
        keys.clock.now(),
        &actor.name,
        action,
        Some(rec.id),
        detail,
    ));
    change.put_keys.push(rec);
    match kind {
        KeyKind::Generated => keys.commit_new(writer, change).await?,
        KeyKind::Imported => {
            keys.commit(writer, change).await?;
        }
    }
    tracing::info!(key_id = %view.id, owner = %view.owner, actor = %actor.name, action, "key issued");
    Ok(Issued { key: secret, view })
}

/// The audit detail of a key issued or imported.
pub(super) fn issue_detail(rec: &KeyRecord, notice: Option<&str>) -> String {
    let detail = format!(
        "name={:?} owner={} scopes=[{}] expires={}{}",
        rec.name,
        rec.owner,
        rec.scopes.join(","),
        rec.expires_at.map_or_else(|| "never".to_owned(), rfc3339),
        notification::describe(rec)
    );
    match notice {
        Some(n) => format!("{detail}; {n}"),
        None => detail,
    }
}

/// Check a creation request against the owner's rights and the policy, and build
/// the record it asks for (without its secret).
pub(super) fn check_new(
    keys: &Keys,
    actor: &Actor,
    req: &CreateKey,
    settings: &Settings,
    secret: &Secret,
    now: DateTime<Utc>,
) -> Result<Checked, KeyError> {
    let (owner, rights) = owner_and_rights(actor, req, settings)?;
    let name = check_name(&req.name, secret.expose())?;
    let description = check_description(req.description.as_deref().unwrap_or(""), secret.expose())?;
    let scopes = requested_scopes(req, &owner, &rights)?;
    let expires_at = resolve_create_expiry(&settings.policy, req, now)?;
    let (plan, notice) = notification::plan_create(
        &keys.alerting.config(),
        req,
        &owner,
        &settings.directory,
        expires_at,
        now,
    )?;
    let ip_filters = check_ips(&req.ip)?;
    let headers = check_headers(&req.headers)?;
    if !actor.admin {
        check_owner_headers(&headers, &[])?;
    }
    let admin_restrictions = if binds_owner(actor, &owner, &settings.directory) {
        restrictions(actor, req, &rights, &scopes, &ip_filters, &headers)
    } else {
        AdminRestrictions::default()
    };
    let mut rec = KeyRecord::new(&owner, &name, &[0; 32], KeyKind::Generated, now);
    rec.description = description;
    rec.scopes = scopes;
    rec.expires_at = expires_at;
    rec.ip_filters = ip_filters;
    rec.headers = headers;
    rec.admin_restrictions = admin_restrictions;
    Ok(Checked { rec, plan, notice })
}

/// Whose key it is, and what they may hold: the actor's own, or anyone's for an admin.
fn owner_and_rights(
    actor: &Actor,
    req: &CreateKey,
    settings: &Settings,
) -> Result<(String, Rights), KeyError> {
    let owner = match req.user.as_deref().map(str::trim) {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ if settings.directory.users.contains_key(&actor.name) => actor.name.clone(),
        _ => return Err(invalid("user", "name the key's owner with --user")),
    };
    if owner != actor.name && !actor.admin {
        return Err(KeyError::Forbidden(format!(
            "{} may only create keys for themselves, not for {owner:?}",
            actor.name
        )));
    }
    let Some(rights) = settings.directory.rights(&owner) else {
        return Err(invalid("user", format!("unknown user {owner:?}")));
    };
    if !rights.create_keys {
        let groups = settings
            .directory
            .users
            .get(&owner)
            .map(|u| u.groups.join(", "))
            .unwrap_or_default();
        return Err(KeyError::Forbidden(format!(
            "user {owner:?} may not have API keys: none of their groups ({groups}) allows creating keys"
        )));
    }
    Ok((owner, rights))
}

/// The scopes asked for, each one the owner may hold; all of those by default.
fn requested_scopes(
    req: &CreateKey,
    owner: &str,
    rights: &Rights,
) -> Result<Vec<String>, KeyError> {
    let Some(list) = &req.scopes else {
        return Ok(rights.scopes.iter().cloned().collect());
    };
    let scopes = check_scopes(list)?;
    if let Some(bad) = scopes.iter().find(|s| !rights.scopes.contains(*s)) {
        let allowed: Vec<_> = rights.scopes.iter().map(String::as_str).collect();
        return Err(invalid(
            "scopes",
            format!(
                "user {owner:?} may not hold scope {bad:?} (allowed: {})",
                allowed.join(", ")
            ),
        ));
    }
    Ok(scopes)
}

/// What an admin sets on someone else's key binds its owner. Scopes fewer than the
/// owner's rights, or an expiry the admin chose, the owner cannot widen on this key,
/// nor (once its secret is retired) by importing it again.
fn restrictions(
    actor: &Actor,
    req: &CreateKey,
    rights: &Rights,
    scopes: &[String],
    ip_filters: &[ipnet::IpNet],
    headers: &[HeaderTemplate],
) -> AdminRestrictions {
    let narrowed = rights.scopes.iter().any(|s| !scopes.contains(s))
        || req.expires_at.is_some()
        || req.expires_in.is_some();
    AdminRestrictions {
        disabled_by: None,
        ip_filters: ip_filters.to_vec(),
        headers: headers.to_vec(),
        restricted_by: narrowed.then(|| actor.name.clone()),
    }
}

/// Under the writer lock: the secret is no other key's, the name is free, and the
/// owner's quota has room (so concurrent creates cannot pass it).
fn check_free(
    index: &Index,
    settings: &Settings,
    hash: &KeyHash,
    rec: &KeyRecord,
) -> Result<(), KeyError> {
    if index.table.contains(hash) {
        return Err(KeyError::Conflict(
            "this secret is already in use by another key".into(),
        ));
    }
    check_unique_name(index, &rec.owner, &rec.name, None)?;
    if let Some(max) = settings.policy.max_keys_per_user {
        if index.owned_by(&rec.owner) >= max {
            return Err(KeyError::Conflict(format!(
                "user {:?} already has {max} keys, the most MaxKeysPerUser allows; remove one first (removed keys do not count)",
                rec.owner
            )));
        }
    }
    Ok(())
}
