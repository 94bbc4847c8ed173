//! Who is on the other end of the admin socket: SO_PEERCRED gives the uid, the
//! account database gives its name, and the configuration maps it to a user.

use crate::config::Directory;
use crate::keys::Actor;

/// Credentials of a Unix-socket peer.
#[derive(Debug, Clone)]
pub struct UnixPeer {
    /// The peer's uid, if the kernel told us.
    pub uid: Option<u32>,
}

/// The account name of `uid` from `/etc/passwd`.
pub fn account_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    account_in(&text, uid)
}

fn account_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// Map a peer to an actor: root is always an administrator; other accounts must be
/// mapped to a configured user through `unix_user`.
pub fn actor_for(peer: &UnixPeer, directory: &Directory) -> Result<Actor, String> {
    let Some(uid) = peer.uid else {
        return Err("cannot read the peer credentials of this connection".into());
    };
    let account = account_name(uid);
    let user = account.as_deref().and_then(|a| directory.user_for_unix(a));
    if uid == 0 {
        return Ok(Actor {
            name: user.map_or_else(|| "root".to_owned(), |u| u.name.clone()),
            admin: true,
        });
    }
    match user {
        Some(u) => Ok(Actor {
            name: u.name.clone(),
            admin: directory.rights(&u.name).is_some_and(|r| r.manage_all_keys),
        }),
        None => {
            let who = account.unwrap_or_else(|| format!("uid {uid}"));
            Err(format!(
                "Unix account {who:?} is not mapped to an apikeyd user; add unix_user = \"{who}\" to a [users.NAME] table"
            ))
        }
    }
}

/// Whether `uid` is an administrator on the admin socket: root, or an account
/// mapped to a user who manages all keys.
pub fn is_admin(uid: u32, directory: &Directory) -> bool {
    actor_for(&UnixPeer { uid: Some(uid) }, directory).is_ok_and(|a| a.admin)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(account_in(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(account_in(passwd, 0).as_deref(), Some("root"));
        assert_eq!(account_in(passwd, 7), None);
    }

    #[test]
    fn unknown_peer_is_refused_and_root_is_admin() {
        let dir = Directory::default();
        assert!(actor_for(&UnixPeer { uid: None }, &dir).is_err());
        let root = actor_for(&UnixPeer { uid: Some(0) }, &dir).unwrap();
        assert!(root.admin);
        assert_eq!(root.name, "root");
        assert!(actor_for(
            &UnixPeer {
                uid: Some(4_000_000)
            },
            &dir
        )
        .is_err());
    }
}
