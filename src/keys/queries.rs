//! Reading keys: views, listings and the audit trail, as the actor may see them.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::error::{internal, invalid, KeyError};
use super::index::each_key;
use super::list::{First, KeyQuery, Pass, Place, Plan, Standing};
use super::live::Live;
use super::page::{self, KeyCursor, Page, PageRequest};
use super::rules::resolve_create_expiry;
use super::types::{policy_lines, view_of, Actor, CreateKey, KeyView, Whoami};
use super::Keys;
use crate::model::{rfc3339, AuditEntry, KeyRecord};
use crate::store::AuditFilter;

/// Where a key listing starts after a cursor made for the same order.
fn cursor_start(plan: &Plan, page: &PageRequest) -> Result<Option<Place>, KeyError> {
    let Some(c) = page.key_cursor()? else {
        return Ok(None);
    };
    plan.sort.check_tag(c.tag)?;
    Ok(Some(Place::new(plan.sort, c.key, c.id)))
}

/// Records read at a time for a listing whose sort column or search text only the
/// records have: what one blocking read holds in memory at once.
const LIST_CHUNK: usize = 512;

impl Keys {
    /// Who `actor` is, what they may do, and the policy in force.
    pub fn whoami(&self, actor: &Actor) -> Whoami {
        let settings = self.settings();
        let directory = &settings.directory;
        let rights = directory.rights(&actor.name).unwrap_or_default();
        let policy = &settings.policy;
        let alerts = self.alerting.config();
        let now = self.clock.now();
        Whoami {
            user: actor.name.clone(),
            admin: actor.admin,
            groups: directory
                .users
                .get(&actor.name)
                .map(|u| u.groups.clone())
                .unwrap_or_default(),
            scopes: rights.scopes.into_iter().collect(),
            create_keys: rights.create_keys,
            manage_all_keys: rights.manage_all_keys,
            policy: policy_lines(policy, &alerts),
            max_import_bytes: super::types::max_import_bytes(actor.admin),
            max_expiration: policy.max_expiration.as_ref().map(ToString::to_string),
            max_expires_at: policy
                .max_expiration
                .as_ref()
                .and_then(|p| p.add_to(now))
                .map(rfc3339),
            default_expires_at: resolve_create_expiry(policy, &CreateKey::default(), now)
                .ok()
                .flatten()
                .map(rfc3339),
            inactivity_expiration: policy
                .not_accessed_expiration
                .as_ref()
                .map(ToString::to_string),
            alert_sources: alerts.sources.keys().cloned().collect(),
            default_alert_source: alerts.default_source.clone(),
            default_notification_lead_time: alerts
                .default_lead_time
                .as_ref()
                .map(ToString::to_string),
        }
    }

    /// The admin view of a key at the current time.
    pub async fn view(&self, live: &Live) -> Result<KeyView, KeyError> {
        let rec = self.record(live).await?;
        let settings = self.settings.read().clone();
        Ok(view_of(&settings, &rec, self.clock.now()))
    }

    /// The key's full record from the store (read on a blocking thread), with the
    /// usage known in memory.
    pub async fn record(&self, live: &Live) -> Result<KeyRecord, KeyError> {
        let id = live.id;
        let mut rec = self
            .blocking(move |s| s.key(id))
            .await?
            .ok_or_else(|| KeyError::NotFound(live.id.to_string()))?;
        self.index.read().merge_usage(&mut rec, live);
        Ok(rec)
    }

    /// Key `id` if `actor` may see it: their own, or any for an admin; to anyone
    /// else, someone else's key does not exist.
    pub(crate) fn visible(&self, actor: &Actor, id: &str) -> Result<Arc<Live>, KeyError> {
        let uuid = Uuid::parse_str(id.trim())
            .map_err(|_| invalid("id", format!("{id:?} is not a key id (a UUID)")))?;
        let live = self
            .index
            .read()
            .get(&uuid)
            .cloned()
            .ok_or_else(|| KeyError::NotFound(uuid.to_string()))?;
        if !actor.admin && *live.owner != *actor.name {
            // Do not reveal that someone else's key exists.
            return Err(KeyError::NotFound(uuid.to_string()));
        }
        Ok(live)
    }

    /// One key.
    pub async fn show(&self, actor: &Actor, id: &str) -> Result<KeyView, KeyError> {
        let live = self.visible(actor, id)?;
        self.view(&live).await
    }

    /// One page of the keys visible to `actor` that pass `query`, in its order
    /// (oldest first by default). The filters and the sort keys the index holds are
    /// applied in memory, keeping only the page's keys; records are read for the
    /// page, and beforehand only for the keys whose sort column (description,
    /// changed, notification) or search text (in the description) only the record
    /// has, a chunk at a time.
    pub async fn list_page(
        &self,
        actor: &Actor,
        query: &KeyQuery,
        page: &PageRequest,
    ) -> Result<Page<KeyView>, KeyError> {
        let settings = self.settings.read().clone();
        let plan = query.plan(actor, self.clock.now())?;
        let limit = page.limit(page::DEFAULT_KEYS)?;
        let start = self.list_start(actor, &plan, page).await?;
        // The `limit + 1` first keys after the start: one more tells whether a next
        // page exists.
        // A scan of every key, on a blocking thread and a chunk of the index at a
        // time: at a million keys it takes a while, and verifications must not
        // queue behind it.
        let index = self.index.clone();
        let (scan_plan, scan_settings) = (plan.clone(), settings.clone());
        let (mut first, pending) = tokio::task::spawn_blocking(move || {
            let (plan, policy) = (scan_plan, &scan_settings.policy);
            let mut first = First::new(limit + 1, start);
            let mut pending: Vec<(Uuid, Option<Vec<u8>>, Pass)> = Vec::new();
            each_key(&index, |live, last_used| {
                let k = Standing { live, last_used };
                let pass = plan.admits(&k, policy);
                if pass == Pass::No {
                    return;
                }
                match (pass, plan.live_key(&k, policy)) {
                    (Pass::Yes, Some(key)) => first.offer(Place::new(plan.sort, key, live.id)),
                    (pass, key) => pending.push((live.id, key, pass)),
                }
            });
            (first, pending)
        })
        .await
        .map_err(internal)?;
        if !pending.is_empty() {
            let plan = plan.clone();
            first = self
                .blocking(move |s| {
                    for chunk in pending.chunks(LIST_CHUNK) {
                        let ids: Vec<Uuid> = chunk.iter().map(|(id, _, _)| *id).collect();
                        let records: HashMap<Uuid, KeyRecord> =
                            s.keys(&ids)?.into_iter().map(|r| (r.id, r)).collect();
                        for (id, key, pass) in chunk {
                            let Some(rec) = records.get(id) else { continue };
                            if *pass == Pass::IfDescriptionMatches && !plan.description_matches(rec)
                            {
                                continue;
                            }
                            let key = key.clone().unwrap_or_else(|| plan.record_key(rec));
                            first.offer(Place::new(plan.sort, key, *id));
                        }
                    }
                    Ok(first)
                })
                .await?;
        }
        let mut picked = first.into_sorted();
        let next_cursor = if picked.len() > limit {
            picked.truncate(limit);
            picked.last().map(|p| {
                page::key_cursor(&KeyCursor {
                    tag: plan.sort.tag(),
                    key: p.key.clone(),
                    id: p.id,
                })
            })
        } else {
            None
        };
        let ids: Vec<Uuid> = picked.into_iter().map(|p| p.id).collect();
        // Reading and decoding a page of records is blocking work: not on a runtime
        // worker, which may be the only one serving verifications.
        let wanted = ids.clone();
        let mut records: HashMap<Uuid, KeyRecord> = self
            .blocking(move |s| s.keys(&wanted))
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let now = self.clock.now();
        let index = self.index.read();
        let items = ids
            .iter()
            .filter_map(|id| {
                let mut rec = records.remove(id)?;
                if let Some(live) = index.get(id) {
                    index.merge_usage(&mut rec, live);
                }
                Some(view_of(&settings, &rec, now))
            })
            .collect();
        Ok(Page { items, next_cursor })
    }

    /// Where a key listing starts: after the key a cursor names (made for the same
    /// order), or after a key given by id (`after`), wherever its sort key puts it
    /// now; `None` for the first page.
    async fn list_start(
        &self,
        actor: &Actor,
        plan: &Plan,
        page: &PageRequest,
    ) -> Result<Option<Place>, KeyError> {
        let after = plan.after.as_deref();
        if after.is_some() && page.cursor.is_some() {
            return Err(invalid("after", "give after or cursor, not both"));
        }
        let Some(after) = after else {
            return cursor_start(plan, page);
        };
        if Uuid::parse_str(after).is_err() {
            let cursor = PageRequest {
                cursor: Some(after.to_owned()),
                limit: None,
            };
            // The cursor was given as `after`: the error names what the caller gave.
            return cursor_start(plan, &cursor).map_err(|e| match e {
                KeyError::Invalid { message, .. } => invalid("after", message),
                e => e,
            });
        }
        let live = self.visible(actor, after).map_err(|_| {
            invalid(
                "after",
                format!("no key {after} (pass the id of the last key of the previous page, or its next_cursor)"),
            )
        })?;
        let policy = self.settings.read().policy.clone();
        let key = {
            let index = self.index.read();
            let k = Standing {
                live: &live,
                last_used: index.last_used(&live),
            };
            plan.live_key(&k, &policy)
        };
        let key = match key {
            Some(key) => key,
            None => plan.record_key(&self.record(&live).await?),
        };
        Ok(Some(Place::new(plan.sort, key, live.id)))
    }

    /// One page of the audit entries visible to `actor`, newest first: an admin's
    /// from the whole trail, anyone else's from the entries about their own keys,
    /// which the store indexes by owner.
    pub async fn audit_page(
        &self,
        actor: &Actor,
        key: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<AuditEntry>, KeyError> {
        let limit = page.limit(page::DEFAULT_AUDIT)?;
        let before = page.audit_cursor()?;
        let key_id = match key {
            Some(k) => Some(self.visible(actor, k)?.id),
            None => None,
        };
        let filter = AuditFilter {
            key: key_id,
            owner: (!actor.admin && key_id.is_none()).then(|| actor.name.clone()),
        };
        let found = self
            .blocking(move |s| s.audit_page(&filter, before, limit))
            .await?;
        Ok(Page {
            items: found.items,
            next_cursor: found.next.map(page::audit_cursor),
        })
    }
}
