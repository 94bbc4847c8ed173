//! Console links and sessions, in memory only: a restart logs everyone out. A link
//! or session token is 32 random bytes from the operating system's CSPRNG, kept
//! only as its SHA-256, so a memory dump of the map gives nothing to log in with.
//! Every expiry is read from the injected clock.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::SharedClock;
use crate::config::{ConsoleConfig, Directory};
use crate::keys::Actor;

/// Most links waiting to be used, and most sessions, at once: beyond them new
/// ones are refused rather than memory growing without bound.
const MAX_LINKS: usize = 1_000;
const MAX_SESSIONS: usize = 10_000;

/// How long a used-up link is remembered as expired (rather than unknown), so a
/// late click gets the clearer message.
const REMEMBER_EXPIRED: chrono::Duration = chrono::Duration::hours(1);

/// A secret token: its `Debug` never shows it, and it has no `==` (which would
/// not compare in constant time); compare with `subtle`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    fn random() -> Self {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        Self(hex::encode(raw))
    }

    /// The token itself, for the one place it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

type Hash = [u8; 32];

fn hash(token: &str) -> Hash {
    Sha256::digest(token.as_bytes()).into()
}

/// Why a link, a session or a request was refused. The messages say what to do;
/// none holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The link was used already, never made, or made before a restart.
    #[error("this console link is not valid: it was used already (each link logs in once) or the daemon restarted since; run `apikeyctl console-link` for a new one")]
    LinkUnknown,
    /// The link is too old.
    #[error("this console link expired at {0}; run `apikeyctl console-link` for a new one")]
    LinkExpired(DateTime<Utc>),
    /// No session, or one the daemon does not know (ended, or before a restart).
    #[error("not logged in to the console (the session ended, or the daemon restarted); run `apikeyctl console-link` to log in")]
    NoSession,
    /// The session saw no request for too long.
    #[error("the console session ended after {0} without use; run `apikeyctl console-link` to log in again")]
    Idle(String),
    /// The session reached its absolute limit.
    #[error("the console session reached its limit of {0}; run `apikeyctl console-link` to log in again")]
    Over(String),
    /// The session's user is no longer configured.
    #[error("the console session's user is no longer configured")]
    UserGone,
    /// A request without the session's CSRF token: the cookie alone is not a
    /// session (browsers send it to every port of the host).
    #[error(
        "a request through the console needs the session's CSRF token in the X-CSRF-Token header; open a new console link (apikeyctl console-link) if this tab has lost it"
    )]
    CsrfMissing,
    /// A change with a wrong CSRF token.
    #[error("the X-CSRF-Token header does not match this console session")]
    CsrfWrong,
    /// Too many links or sessions at once.
    #[error("too many console {0} at once; try again later")]
    Full(&'static str),
}

struct Link {
    actor: Actor,
    from_root: bool,
    expires: DateTime<Utc>,
    used: bool,
}

struct Session {
    actor: Actor,
    from_root: bool,
    csrf: Token,
    started: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

/// A new link: the URL carries the token in its fragment, which browsers never
/// send to a server.
#[derive(Debug)]
pub struct NewLink {
    /// `BASE/console/#login=TOKEN`.
    pub url: Token,
    /// When it stops working.
    pub expires: DateTime<Utc>,
}

/// A session just started.
#[derive(Debug)]
pub struct NewSession {
    /// The cookie's value.
    pub id: Token,
    /// The session's second secret, answered only here: the page keeps it and
    /// sends it with every request, so the cookie alone is no session.
    pub csrf: Token,
    /// What the session is.
    pub info: SessionInfo,
}

/// What the page learns about its session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Who is logged in, with the rights in force now.
    pub actor: Actor,
    /// When the session ends at the latest.
    pub expires: DateTime<Utc>,
}

#[derive(Default)]
struct Maps {
    links: HashMap<Hash, Link>,
    sessions: HashMap<Hash, Session>,
}

/// The console's links and sessions.
pub struct Sessions {
    config: ConsoleConfig,
    base: String,
    clock: SharedClock,
    maps: Mutex<Maps>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let maps = self.maps.lock();
        f.debug_struct("Sessions")
            .field("enabled", &self.config.enabled)
            .field("links", &maps.links.len())
            .field("sessions", &maps.sessions.len())
            .finish_non_exhaustive()
    }
}

fn chrono(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// `d` in words, as the refusals say it.
fn words(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 3600 == 0 => format!("{} hour(s)", s / 3600),
        s if s % 60 == 0 => format!("{} minute(s)", s / 60),
        s => format!("{s} second(s)"),
    }
}

impl Sessions {
    /// Links are made as `base` + `/console/#login=...` (`base` without a
    /// trailing slash).
    pub fn new(config: ConsoleConfig, base: String, clock: SharedClock) -> Self {
        Self {
            config,
            base: base.trim_end_matches('/').to_owned(),
            clock,
            maps: Mutex::new(Maps::default()),
        }
    }

    /// A console that is off (state without a daemon).
    pub fn disabled(clock: SharedClock) -> Self {
        Self::new(ConsoleConfig::default(), String::new(), clock)
    }

    /// The console's own origin (`scheme://host[:port]`), from the address its
    /// links are made with.
    pub fn origin(&self) -> Option<String> {
        url::Url::parse(&self.base)
            .ok()
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| o != "null")
    }

    /// The settings.
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// A one-time link that logs `actor` in.
    pub fn issue_link(&self, actor: Actor, from_root: bool) -> Result<NewLink, Refusal> {
        let now = self.clock.now();
        let expires = now + chrono(self.config.link_lifetime);
        let token = Token::random();
        let mut maps = self.maps.lock();
        maps.links.retain(|_, l| l.expires + REMEMBER_EXPIRED > now);
        if maps
            .links
            .values()
            .filter(|l| !l.used && l.expires > now)
            .count()
            >= MAX_LINKS
        {
            return Err(Refusal::Full("links"));
        }
        maps.links.insert(
            hash(token.expose()),
            Link {
                actor,
                from_root,
                expires,
                used: false,
            },
        );
        Ok(NewLink {
            url: Token(format!("{}/console/#login={}", self.base, token.expose())),
            expires,
        })
    }

    /// Use a link's token (once): a new session for its actor.
    pub fn login(&self, token: &str, directory: &Directory) -> Result<NewSession, Refusal> {
        let now = self.clock.now();
        let mut maps = self.maps.lock();
        let link = match maps.links.get_mut(&hash(token)) {
            None => return Err(Refusal::LinkUnknown),
            Some(l) if l.used => return Err(Refusal::LinkUnknown),
            Some(l) => {
                // Used up whatever follows: a refused attempt does not leave it open.
                l.used = true;
                if now >= l.expires {
                    return Err(Refusal::LinkExpired(l.expires));
                }
                (l.actor.clone(), l.from_root)
            }
        };
        let idle = chrono(self.config.session_idle);
        let max = chrono(self.config.session_max);
        maps.sessions
            .retain(|_, s| now < s.last_seen + idle && now < s.started + max);
        if maps.sessions.len() >= MAX_SESSIONS {
            return Err(Refusal::Full("sessions"));
        }
        let session = Session {
            actor: link.0,
            from_root: link.1,
            csrf: Token::random(),
            started: now,
            last_seen: now,
        };
        let actor = current_actor(&session, directory).ok_or(Refusal::UserGone)?;
        let info = SessionInfo {
            actor,
            expires: now + max,
        };
        let id = Token::random();
        let csrf = session.csrf.clone();
        maps.sessions.insert(hash(id.expose()), session);
        Ok(NewSession { id, csrf, info })
    }

    /// The session `id` names, if it is still on and `csrf` is its token: its
    /// use counts as activity. Every request needs the token, reads too: the
    /// cookie can be captured by any server on the same host, the token cannot.
    pub fn authenticate(
        &self,
        id: &str,
        csrf: Option<&str>,
        directory: &Directory,
    ) -> Result<SessionInfo, Refusal> {
        let now = self.clock.now();
        let key = hash(id);
        let mut maps = self.maps.lock();
        let Some(s) = maps.sessions.get_mut(&key) else {
            return Err(Refusal::NoSession);
        };
        let refusal = if now >= s.started + chrono(self.config.session_max) {
            Some(Refusal::Over(words(self.config.session_max)))
        } else if now >= s.last_seen + chrono(self.config.session_idle) {
            Some(Refusal::Idle(words(self.config.session_idle)))
        } else {
            None
        };
        if let Some(r) = refusal {
            maps.sessions.remove(&key);
            return Err(r);
        }
        let Some(sent) = csrf else {
            return Err(Refusal::CsrfMissing);
        };
        if !bool::from(sent.as_bytes().ct_eq(s.csrf.expose().as_bytes())) {
            return Err(Refusal::CsrfWrong);
        }
        let Some(actor) = current_actor(s, directory) else {
            maps.sessions.remove(&key);
            return Err(Refusal::UserGone);
        };
        s.last_seen = now;
        Ok(SessionInfo {
            actor,
            expires: s.started + chrono(self.config.session_max),
        })
    }

    /// End the session `id` names.
    pub fn logout(&self, id: &str) {
        self.maps.lock().sessions.remove(&hash(id));
    }
}

/// The session's actor with the rights the configuration gives now (a reload may
/// have taken them away), as the admin socket would see the same account: root
/// stays an administrator, a user no longer configured is refused.
fn current_actor(s: &Session, directory: &Directory) -> Option<Actor> {
    match directory.rights(&s.actor.name) {
        Some(r) => Some(Actor {
            name: s.actor.name.clone(),
            admin: s.from_root || r.manage_all_keys,
        }),
        None if s.from_root => Some(s.actor.clone()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    fn setup() -> (Arc<ManualClock>, Sessions) {
        let clock = ManualClock::new(Utc::now());
        let config = ConsoleConfig {
            enabled: true,
            ..ConsoleConfig::default()
        };
        let s = Sessions::new(config, "http://127.0.0.1:8700/".into(), clock.clone());
        (clock, s)
    }

    fn root() -> Actor {
        Actor {
            name: "root".into(),
            admin: true,
        }
    }

    fn token_of(link: &NewLink) -> String {
        let url = link.url.expose();
        assert!(
            url.starts_with("http://127.0.0.1:8700/console/#login="),
            "{url:?}"
        );
        url.rsplit('=').next().unwrap().to_owned()
    }

    #[test]
    fn a_link_logs_in_once_and_expires() {
        let (clock, s) = setup();
        let dir = Directory::default();
        let link = s.issue_link(root(), true).unwrap();
        let token = token_of(&link);
        let session = s.login(&token, &dir).unwrap();
        assert!(session.info.actor.admin);
        assert_eq!(s.login(&token, &dir).unwrap_err(), Refusal::LinkUnknown);
        assert_eq!(s.login("nope", &dir).unwrap_err(), Refusal::LinkUnknown);
        let late = token_of(&s.issue_link(root(), true).unwrap());
        clock.advance(chrono::Duration::minutes(5));
        assert!(matches!(s.login(&late, &dir), Err(Refusal::LinkExpired(_))));
        // Nothing secret in Debug output.
        let shown = format!("{session:?} {s:?}");
        assert!(!shown.contains(session.id.expose()) && !shown.contains(&token));
    }

    #[test]
    fn sessions_end_when_idle_or_too_old_and_changes_need_csrf() {
        let (clock, s) = setup();
        let dir = Directory::default();
        let login = |s: &Sessions| {
            let t = token_of(&s.issue_link(root(), true).unwrap());
            s.login(&t, &dir).unwrap()
        };
        let a = login(&s);
        let id = a.id.expose();
        let csrf = Some(a.csrf.expose());
        // Reads need the token too: the cookie alone is not a session.
        assert_eq!(
            s.authenticate(id, None, &dir).unwrap_err(),
            Refusal::CsrfMissing
        );
        assert_eq!(
            s.authenticate(id, Some("x"), &dir).unwrap_err(),
            Refusal::CsrfWrong
        );
        s.authenticate(id, csrf, &dir).unwrap();
        clock.advance(chrono::Duration::minutes(29));
        s.authenticate(id, csrf, &dir).unwrap();
        clock.advance(chrono::Duration::minutes(30));
        assert!(matches!(
            s.authenticate(id, csrf, &dir),
            Err(Refusal::Idle(_))
        ));
        assert_eq!(
            s.authenticate(id, csrf, &dir).unwrap_err(),
            Refusal::NoSession
        );

        // Busy all along, a session still ends 12 hours after its login.
        let b = login(&s);
        for _ in 0..(12 * 60 / 20 - 1) {
            clock.advance(chrono::Duration::minutes(20));
            s.authenticate(b.id.expose(), Some(b.csrf.expose()), &dir)
                .unwrap();
        }
        clock.advance(chrono::Duration::minutes(20));
        assert_eq!(
            s.authenticate(b.id.expose(), Some(b.csrf.expose()), &dir)
                .unwrap_err(),
            Refusal::Over("12 hour(s)".into())
        );
        let c = login(&s);
        s.logout(c.id.expose());
        assert_eq!(
            s.authenticate(c.id.expose(), Some(c.csrf.expose()), &dir)
                .unwrap_err(),
            Refusal::NoSession
        );
    }

    #[test]
    fn a_user_no_longer_configured_is_logged_out() {
        let (_, s) = setup();
        let dir = Directory::default();
        let bob = Actor {
            name: "bob".into(),
            admin: false,
        };
        let t = token_of(&s.issue_link(bob, false).unwrap());
        assert_eq!(s.login(&t, &dir).unwrap_err(), Refusal::UserGone);
    }
}
