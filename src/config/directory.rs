//! `[groups.NAME]` and `[users.NAME]`: who may do what. A user's rights are the
//! union of their groups'; a Unix account maps to at most one user.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::address::AddressForm;
use super::validator::Validator;

/// A group of users and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Group {
    /// Scopes a key of a member may carry.
    pub scopes: BTreeSet<String>,
    /// Members may create keys (for themselves).
    pub create_keys: bool,
    /// Members manage everyone's keys (administrators).
    pub manage_all_keys: bool,
}

/// A configured user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's name (the table key).
    pub name: String,
    /// Where notifications go.
    pub email: Option<String>,
    /// Group names, all of which exist in the configuration.
    pub groups: Vec<String>,
    /// The Unix account that acts as this user on the admin socket.
    pub unix_user: Option<String>,
}

/// Users and groups: who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Groups by name.
    pub groups: BTreeMap<String, Group>,
}

/// What a user may do, derived from their groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rights {
    /// Union of the groups' scopes.
    pub scopes: BTreeSet<String>,
    /// One of the groups allows creating keys.
    pub create_keys: bool,
    /// One of the groups manages everyone's keys.
    pub manage_all_keys: bool,
}

impl Directory {
    /// The rights of `user`, or `None` if there is no such user.
    pub fn rights(&self, user: &str) -> Option<Rights> {
        let u = self.users.get(user)?;
        let mut r = Rights::default();
        for g in u.groups.iter().filter_map(|g| self.groups.get(g)) {
            r.scopes.extend(g.scopes.iter().cloned());
            r.create_keys |= g.create_keys;
            r.manage_all_keys |= g.manage_all_keys;
        }
        Some(r)
    }

    /// The configured user mapped to a Unix account name.
    pub fn user_for_unix(&self, account: &str) -> Option<&User> {
        self.users
            .values()
            .find(|u| u.unix_user.as_deref() == Some(account))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    create_keys: bool,
    #[serde(default)]
    manage_all_keys: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    unix_user: Option<String>,
}

pub(crate) const GROUP_KEYS: &[&str] = &["scopes", "create_keys", "manage_all_keys"];
pub(crate) const USER_KEYS: &[&str] = &["email", "groups", "unix_user"];

/// Names of users and groups.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Scope strings such as `catalog:read`.
pub fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/*".contains(&b))
}

impl Validator {
    /// Reports `name`, the table key at `key`, unless it is a [`valid_name`]; `what`
    /// says what it names ("user", "group", "source").
    pub(crate) fn name(&mut self, key: &str, name: &str, what: &str) {
        if !valid_name(name) {
            self.push(
                key,
                format!("{what} names use letters, digits, '-', '_' and '.' (at most 64)"),
            );
        }
    }

    /// Groups first: users name them.
    pub(crate) fn directory(
        &mut self,
        groups: BTreeMap<String, RawGroup>,
        users: BTreeMap<String, RawUser>,
    ) -> Directory {
        let groups: BTreeMap<String, Group> = groups
            .into_iter()
            .map(|(name, g)| {
                let group = self.group(&name, g);
                (name, group)
            })
            .collect();
        let mut unix_seen: BTreeMap<String, String> = BTreeMap::new();
        let users = users
            .into_iter()
            .map(|(name, u)| {
                self.user(&name, &u, &groups, &mut unix_seen);
                let user = User {
                    name: name.clone(),
                    email: u.email,
                    groups: u.groups,
                    unix_user: u.unix_user,
                };
                (name, user)
            })
            .collect();
        Directory { users, groups }
    }

    fn group(&mut self, name: &str, g: RawGroup) -> Group {
        self.name(&format!("groups.{name}"), name, "group");
        for sc in &g.scopes {
            if !valid_scope(sc) {
                self.push(
                    &format!("groups.{name}.scopes"),
                    format!("{sc:?} is not a valid scope (letters, digits and -_.:/*, at most 64)"),
                );
            }
        }
        Group {
            scopes: g.scopes.into_iter().collect(),
            create_keys: g.create_keys,
            manage_all_keys: g.manage_all_keys,
        }
    }

    /// `unix_seen` maps the Unix accounts of the users before this one to them.
    fn user(
        &mut self,
        name: &str,
        u: &RawUser,
        groups: &BTreeMap<String, Group>,
        unix_seen: &mut BTreeMap<String, String>,
    ) {
        let key = format!("users.{name}");
        self.name(&key, name, "user");
        if u.groups.is_empty() {
            self.push(
                &format!("{key}.groups"),
                "a user needs at least one group".into(),
            );
        }
        for g in &u.groups {
            if !groups.contains_key(g) {
                self.push(
                    &format!("{key}.groups"),
                    format!("unknown group {g:?} (declare it as [groups.{g}])"),
                );
            }
        }
        if let Some(email) = &u.email {
            self.address(&format!("{key}.email"), email, AddressForm::Bare);
        }
        if let Some(unix) = &u.unix_user {
            if let Some(other) = unix_seen.insert(unix.clone(), name.to_owned()) {
                self.push(
                    &format!("{key}.unix_user"),
                    format!("Unix account {unix:?} is already mapped to user {other:?}"),
                );
            }
        }
    }
}
