//! Reading keys: views, listings and the audit trail, as the actor may see them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::{invalid, KeyError};
use super::live::Live;
use super::page::{self, Page, PageRequest};
use super::types::{policy_lines, view_of, Actor, KeyView, Whoami};
use super::Keys;
use crate::model::{AuditEntry, KeyRecord, KeyState};
use crate::store::AuditFilter;

impl Keys {
    /// Who `actor` is, what they may do, and the policy in force.
    pub fn whoami(&self, actor: &Actor) -> Whoami {
        let settings = self.settings();
        let directory = &settings.directory;
        let rights = directory.rights(&actor.name).unwrap_or_default();
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
            policy: policy_lines(&settings.policy, &self.alerting.config()),
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

    /// One page of the keys visible to `actor`, optionally of one user, oldest first.
    /// The index is walked in memory, keeping only the page's keys, so only their
    /// records are read from redb.
    pub async fn list_page(
        &self,
        actor: &Actor,
        user: Option<&str>,
        include_removed: bool,
        page: &PageRequest,
    ) -> Result<Page<KeyView>, KeyError> {
        if let Some(u) = user {
            if !actor.admin && u != actor.name {
                return Err(KeyError::Forbidden(format!(
                    "{} may only list their own keys (not those of {u:?})",
                    actor.name
                )));
            }
        }
        let limit = page.limit(page::DEFAULT_KEYS)?;
        let after = page.key_cursor()?;
        let settings = self.settings.read().clone();
        let now = self.clock.now();
        let wanted = user
            .map(str::to_owned)
            .or_else(|| (!actor.admin).then(|| actor.name.clone()));
        // The `limit + 1` first keys after the cursor (one more tells whether a next
        // page exists), in a heap whose top is the latest of them.
        let mut first: std::collections::BinaryHeap<(DateTime<Utc>, Uuid)> =
            std::collections::BinaryHeap::with_capacity(limit + 1);
        for l in self.index.read().all() {
            if wanted.as_deref().is_some_and(|w| *l.owner != *w)
                || (!include_removed && l.life.state == KeyState::Removed)
            {
                continue;
            }
            let at = (l.life.created_at, l.id);
            if after.is_some_and(|a| at <= a) {
                continue;
            }
            if first.len() <= limit {
                first.push(at);
            } else if first.peek().is_some_and(|top| at < *top) {
                first.pop();
                first.push(at);
            }
        }
        let mut picked = first.into_sorted_vec();
        let next_cursor = if picked.len() > limit {
            picked.truncate(limit);
            picked.last().map(|(at, id)| page::key_cursor(*at, *id))
        } else {
            None
        };
        let ids: Vec<Uuid> = picked.into_iter().map(|(_, id)| id).collect();
        // Reading and decoding a page of records is blocking work: not on a runtime
        // worker, which may be the only one serving verifications.
        let mut records = self.blocking(move |s| s.keys(&ids)).await?;
        {
            let index = self.index.read();
            for rec in &mut records {
                if let Some(live) = index.get(&rec.id) {
                    index.merge_usage(rec, live);
                }
            }
        }
        Ok(Page {
            items: records.iter().map(|r| view_of(&settings, r, now)).collect(),
            next_cursor,
        })
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
