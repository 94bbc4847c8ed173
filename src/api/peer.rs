//! Who is on the other end of the admin socket: SO_PEERCRED gives the uid, the
//! account database gives its name, and the configuration maps it to a user.

use crate::config::Directory;
use crate::keys::Actor;

/// Credentials of a Unix-socket peer.
#[derive(Debug, Clone)]
pub struct UnixPeer {
    /// The peer's uid, if the kernel told us.
    pub uid: Option<u32>,
    /// Its account name, looked up once per connection.
    pub account: Option<String>,
}

impl UnixPeer {
    /// The peer with uid `uid`, its account name looked up through NSS on a
    /// blocking thread (an LDAP or sssd lookup may wait on the network).
    pub async fn of(uid: Option<u32>) -> Self {
        let account = match uid {
            Some(uid) => tokio::task::spawn_blocking(move || account_name(uid))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        Self { uid, account }
    }
}

/// The account name of `uid`, through NSS (`getpwuid_r`): `/etc/passwd`, LDAP,
/// sssd, whatever the system is configured with. Blocks.
pub fn account_name(uid: u32) -> Option<String> {
    uzers::get_user_by_uid(uid).and_then(|u| u.name().to_str().map(str::to_owned))
}

/// Map a peer to an actor: root is always an administrator; other accounts must be
/// mapped to a configured user through `unix_user`.
pub fn actor_for(peer: &UnixPeer, directory: &Directory) -> Result<Actor, String> {
    let Some(uid) = peer.uid else {
        return Err("cannot read the peer credentials of this connection".into());
    };
    let account = peer.account.clone();
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
/// mapped to a user who manages all keys. Looks the account up (blocks).
pub fn is_admin(uid: u32, directory: &Directory) -> bool {
    let peer = UnixPeer {
        uid: Some(uid),
        account: account_name(uid),
    };
    actor_for(&peer, directory).is_ok_and(|a| a.admin)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn accounts_are_looked_up_through_nss() {
        assert_eq!(account_name(0).as_deref(), Some("root"));
        // The same answer as getent, which asks NSS too.
        let out = std::process::Command::new("getent")
            .args(["passwd", "65534"])
            .output()
            .unwrap();
        let name = String::from_utf8_lossy(&out.stdout);
        let name = name.split(':').next().filter(|n| !n.is_empty());
        assert_eq!(account_name(65534).as_deref(), name);
        assert_eq!(account_name(4_000_000), None);
    }

    #[tokio::test]
    async fn unknown_peer_is_refused_and_root_is_admin() {
        let dir = Directory::default();
        assert!(actor_for(&UnixPeer::of(None).await, &dir).is_err());
        let root = actor_for(&UnixPeer::of(Some(0)).await, &dir).unwrap();
        assert!(root.admin);
        assert_eq!(root.name, "root");
        let nobody = actor_for(&UnixPeer::of(Some(4_000_000)).await, &dir).unwrap_err();
        assert!(nobody.contains("uid 4000000"), "{nobody}");
    }
}
