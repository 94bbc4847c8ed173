//! Console links and sessions, in memory only: a restart logs everyone out. A link
//! or session token is 32 random bytes from the operating system's CSPRNG, kept
//! only as its SHA-256, so a memory dump of the map gives nothing to log in with.
//! Every expiry is read from the injected clock.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::SharedClock;
use crate::config::console::page;
use crate::config::{ConsoleConfig, Directory};
use crate::keys::Actor;

/// Most links waiting to be used, and most sessions, of one user: a new one
/// ends that user's oldest, so no user can fill the maps and lock others out.
const USER_LINKS: usize = 3;
const USER_SESSIONS: usize = 10;

/// Most links and sessions of everyone at once, a backstop: beyond them new ones
/// are refused rather than memory growing without bound.
const MAX_LINKS: usize = 1_000;
const MAX_SESSIONS: usize = 10_000;

/// How many used or expired links are remembered, so a late or second click
/// gets the clearer message; the oldest are forgotten first.
const REMEMBERED_LINKS: usize = 1_000;

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

/// Whether a secret sent equals ours, in time that does not depend on where
/// they differ.
fn same(sent: &[u8], ours: &[u8]) -> bool {
    bool::from(sent.ct_eq(ours))
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
    #[error("the console session's user is no longer configured, or no longer mapped to the account that asked for its link")]
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
    /// A proxy login where `[console] proxy_user_header` is not set.
    #[error("this console has no login through an authenticating proxy (console.proxy_user_header is not set): open a console link: run `apikeyctl console-link`")]
    ProxyOff,
    /// A proxy login from a peer outside `[auth] trusted_proxies`, or without
    /// the proxy's secret.
    #[error("a login through the authenticating proxy must come from that proxy (from an address in [auth] trusted_proxies, with the secret of console.proxy_secret_file), and this request did not: open the console through the proxy, or open a console link: run `apikeyctl console-link`")]
    ProxyUntrusted,
    /// A proxy login where the proxy named no user (the header's name).
    #[error("the authenticating proxy sent no single user name in the {0} header: log in at the proxy, or check that it sets {0} for the console; or open a console link: run `apikeyctl console-link`")]
    ProxyNoUser(String),
    /// A proxy login for a user apikeyd does not know (the header's name; never
    /// its value, which is the proxy's word, not the configuration's).
    #[error("the user the authenticating proxy names in the {0} header is not configured in apikeyd (add it to [users], under the same name)")]
    ProxyUnknownUser(String),
    /// A request on a proxy-made session that did not come from the proxy as
    /// the session's user: logged out, or another user, at the proxy.
    #[error("this console session was started through the authenticating proxy, and this request did not come from it as the same user (logged out or changed user there?); reload the page to log in again")]
    ProxyChanged,
}

/// Who the authenticating proxy says is making a request, for the sessions it
/// made: each of their requests must come from the proxy as their user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied<'a> {
    /// From a peer outside `[auth] trusted_proxies`, without the proxy's
    /// secret, or proxy login is off: no user header is believed.
    Untrusted,
    /// From a trusted proxy, which named this user (`None`: no single header).
    Trusted(Option<&'a str>),
}

/// Who started a session, which decides what keeps it valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A link root asked for: root stays an administrator on the admin socket.
    Root,
    /// A link this Unix account asked for: the session holds only while the
    /// configuration still maps the account to the user.
    Account(String),
    /// A proxy login: every request must come from the proxy naming the user.
    Proxy,
}

struct Link {
    actor: Actor,
    via: Via,
    expires: DateTime<Utc>,
}

/// How a link that is gone ended, for its message.
#[derive(Clone, Copy)]
enum Ended {
    Used,
    Expired(DateTime<Utc>),
}

struct Session {
    actor: Actor,
    via: Via,
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

/// Links or sessions by the hash of their token, with each user's in the order
/// they were made, so a user at the cap loses their own oldest.
struct PerUser<T> {
    entries: HashMap<Hash, (String, T)>,
    by_user: HashMap<String, VecDeque<Hash>>,
}

impl<T> Default for PerUser<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            by_user: HashMap::new(),
        }
    }
}

impl<T> PerUser<T> {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get_mut(&mut self, h: &Hash) -> Option<&mut T> {
        self.entries.get_mut(h).map(|(_, t)| t)
    }

    fn remove(&mut self, h: &Hash) -> Option<T> {
        let (user, t) = self.entries.remove(h)?;
        if let Some(mine) = self.by_user.get_mut(&user) {
            // At most the per-user cap long.
            mine.retain(|x| x != h);
            if mine.is_empty() {
                self.by_user.remove(&user);
            }
        }
        Some(t)
    }

    /// Remove (and hand back) every entry `gone` says has ended: only when the
    /// map is full, and the map is bounded.
    fn prune(&mut self, gone: impl Fn(&T) -> bool) -> Vec<(Hash, T)> {
        let ended: Vec<Hash> = self
            .entries
            .iter()
            .filter(|(_, (_, t))| gone(t))
            .map(|(h, _)| *h)
            .collect();
        ended
            .into_iter()
            .filter_map(|h| self.remove(&h).map(|t| (h, t)))
            .collect()
    }

    /// Add `t` for `user`: at `per_user` entries, the user's oldest goes first
    /// (answered `Some(true)`); at `max` entries in all, nothing is added
    /// (`None`).
    fn insert(&mut self, user: &str, h: Hash, t: T, per_user: usize, max: usize) -> Option<bool> {
        let oldest = self
            .by_user
            .get(user)
            .filter(|mine| mine.len() >= per_user)
            .and_then(|mine| mine.front().copied());
        if let Some(old) = oldest {
            self.remove(&old);
        }
        if self.entries.len() >= max {
            return None;
        }
        self.entries.insert(h, (user.to_owned(), t));
        self.by_user
            .entry(user.to_owned())
            .or_default()
            .push_back(h);
        Some(oldest.is_some())
    }
}

#[derive(Default)]
struct Maps {
    links: PerUser<Link>,
    sessions: PerUser<Session>,
    /// Links used or expired lately, oldest first, at most `REMEMBERED_LINKS`.
    ended: HashMap<Hash, Ended>,
    ended_order: VecDeque<Hash>,
}

impl Maps {
    fn remember(&mut self, h: Hash, how: Ended) {
        if self.ended_order.len() >= REMEMBERED_LINKS {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
        if self.ended.insert(h, how).is_none() {
            self.ended_order.push_back(h);
        }
    }
}

/// The console's links and sessions.
pub struct Sessions {
    config: ConsoleConfig,
    base: String,
    clock: SharedClock,
    maps: Mutex<Maps>,
    /// What the authenticating proxy sends in `proxy_secret_header`: read at
    /// start; without it no request is believed to come from the proxy.
    proxy_secret: Option<Token>,
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

/// `t + d`, or the end of time where that would overflow (a huge limit).
fn later(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
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
            proxy_secret: None,
        }
    }

    /// With `secret` as the one the authenticating proxy proves itself with.
    #[must_use]
    pub fn with_proxy_secret(mut self, secret: String) -> Self {
        self.proxy_secret = Some(Token(secret));
        self
    }

    /// Whether `sent` is the proxy's secret, compared in constant time (as
    /// the CSRF token is); `false` when there is no secret to compare with.
    pub fn is_proxy_secret(&self, sent: &[u8]) -> bool {
        self.proxy_secret
            .as_ref()
            .is_some_and(|s| same(sent, s.expose().as_bytes()))
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
    pub fn issue_link(&self, actor: Actor, via: Via) -> Result<NewLink, Refusal> {
        let now = self.clock.now();
        let expires = later(now, chrono(self.config.link_lifetime));
        let token = Token::random();
        let user = actor.name.clone();
        let mut maps = self.maps.lock();
        if maps.links.len() >= MAX_LINKS {
            for (h, l) in maps.links.prune(|l| l.expires <= now) {
                maps.remember(h, Ended::Expired(l.expires));
            }
        }
        let link = Link {
            actor,
            via,
            expires,
        };
        match maps
            .links
            .insert(&user, hash(token.expose()), link, USER_LINKS, MAX_LINKS)
        {
            Some(true) => tracing::warn!(
                user = %user,
                most = USER_LINKS,
                "console: a new link for this user ends their oldest unused one"
            ),
            Some(false) => {}
            None => {
                tracing::warn!(most = MAX_LINKS, "console: too many links at once; refused");
                return Err(Refusal::Full("links"));
            }
        }
        Ok(NewLink {
            url: Token(page(&self.base, &format!("login={}", token.expose()))),
            expires,
        })
    }

    /// Use a link's token (once: it is gone after, remembered only for the
    /// message): a new session for its actor.
    pub fn login(&self, token: &str, directory: &Directory) -> Result<NewSession, Refusal> {
        let now = self.clock.now();
        let h = hash(token);
        let mut maps = self.maps.lock();
        // Used up whatever follows: a refused attempt does not leave it open.
        let Some(link) = maps.links.remove(&h) else {
            return Err(match maps.ended.get(&h) {
                Some(Ended::Expired(at)) => Refusal::LinkExpired(*at),
                Some(Ended::Used) | None => Refusal::LinkUnknown,
            });
        };
        if now >= link.expires {
            maps.remember(h, Ended::Expired(link.expires));
            return Err(Refusal::LinkExpired(link.expires));
        }
        maps.remember(h, Ended::Used);
        let session = Session {
            actor: link.actor,
            via: link.via,
            csrf: Token::random(),
            started: now,
            last_seen: now,
        };
        self.open(&mut maps, session, now, directory, Refusal::UserGone)
    }

    /// A session for `user`, whom a trusted authenticating proxy named: with
    /// the rights the configuration gives that user, as a link's would have,
    /// and bound to the proxy's word on every later request.
    pub fn proxy_login(&self, user: &str, directory: &Directory) -> Result<NewSession, Refusal> {
        let now = self.clock.now();
        let session = Session {
            actor: Actor {
                name: user.to_owned(),
                admin: false,
            },
            via: Via::Proxy,
            csrf: Token::random(),
            started: now,
            last_seen: now,
        };
        let header = self.config.proxy_user_header.clone().unwrap_or_default();
        let mut maps = self.maps.lock();
        self.open(
            &mut maps,
            session,
            now,
            directory,
            Refusal::ProxyUnknownUser(header),
        )
    }

    /// Start `session` under the caps; `unknown` if its user is not configured.
    fn open(
        &self,
        maps: &mut Maps,
        session: Session,
        now: DateTime<Utc>,
        directory: &Directory,
        unknown: Refusal,
    ) -> Result<NewSession, Refusal> {
        let idle = chrono(self.config.session_idle);
        let max = chrono(self.config.session_max);
        let actor = current_actor(&session, directory).ok_or(unknown)?;
        let info = SessionInfo {
            actor,
            expires: later(now, max),
        };
        if maps.sessions.len() >= MAX_SESSIONS {
            maps.sessions
                .prune(|s| now >= later(s.last_seen, idle) || now >= later(s.started, max));
        }
        let id = Token::random();
        let csrf = session.csrf.clone();
        let user = session.actor.name.clone();
        match maps.sessions.insert(
            &user,
            hash(id.expose()),
            session,
            USER_SESSIONS,
            MAX_SESSIONS,
        ) {
            Some(true) => tracing::warn!(
                user = %user,
                most = USER_SESSIONS,
                "console: a new session for this user ends their oldest"
            ),
            Some(false) => {}
            None => {
                tracing::warn!(
                    most = MAX_SESSIONS,
                    "console: too many sessions at once; refused"
                );
                return Err(Refusal::Full("sessions"));
            }
        }
        Ok(NewSession { id, csrf, info })
    }

    /// The session `id` names, if it is still on and `csrf` is its token: its
    /// use counts as activity. Every request needs the token, reads too: the
    /// cookie can be captured by any server on the same host, the token cannot.
    /// A session a proxy login made also needs `proxied` to be its user, or it
    /// ends (checked after the token, so only its own page can end it so).
    pub fn authenticate(
        &self,
        id: &str,
        csrf: Option<&str>,
        proxied: Proxied<'_>,
        directory: &Directory,
    ) -> Result<SessionInfo, Refusal> {
        let now = self.clock.now();
        let key = hash(id);
        let mut maps = self.maps.lock();
        let Some(s) = maps.sessions.get_mut(&key) else {
            return Err(Refusal::NoSession);
        };
        let refusal = if now >= later(s.started, chrono(self.config.session_max)) {
            Some(Refusal::Over(words(self.config.session_max)))
        } else if now >= later(s.last_seen, chrono(self.config.session_idle)) {
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
        if !same(sent.as_bytes(), s.csrf.expose().as_bytes()) {
            return Err(Refusal::CsrfWrong);
        }
        if s.via == Via::Proxy && proxied != Proxied::Trusted(Some(s.actor.name.as_str())) {
            maps.sessions.remove(&key);
            return Err(Refusal::ProxyChanged);
        }
        let Some(actor) = current_actor(s, directory) else {
            maps.sessions.remove(&key);
            return Err(Refusal::UserGone);
        };
        s.last_seen = now;
        Ok(SessionInfo {
            actor,
            expires: later(s.started, chrono(self.config.session_max)),
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
    // The account the link was made for must still be this user's: removing
    // the mapping ends its sessions, as it ends its use of the admin socket.
    if let Via::Account(account) = &s.via {
        if directory
            .user_for_unix(account)
            .is_none_or(|u| u.name != s.actor.name)
        {
            return None;
        }
    }
    let root = s.via == Via::Root;
    match directory.rights(&s.actor.name) {
        Some(r) => Some(Actor {
            name: s.actor.name.clone(),
            admin: root || r.manage_all_keys,
        }),
        None if root => Some(s.actor.clone()),
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
        let link = s.issue_link(root(), Via::Root).unwrap();
        let token = token_of(&link);
        let session = s.login(&token, &dir).unwrap();
        assert!(session.info.actor.admin);
        assert_eq!(s.login(&token, &dir).unwrap_err(), Refusal::LinkUnknown);
        assert_eq!(s.login("nope", &dir).unwrap_err(), Refusal::LinkUnknown);
        let late = token_of(&s.issue_link(root(), Via::Root).unwrap());
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
            let t = token_of(&s.issue_link(root(), Via::Root).unwrap());
            s.login(&t, &dir).unwrap()
        };
        let a = login(&s);
        let id = a.id.expose();
        let csrf = Some(a.csrf.expose());
        // Reads need the token too: the cookie alone is not a session.
        assert_eq!(
            s.authenticate(id, None, Proxied::Untrusted, &dir)
                .unwrap_err(),
            Refusal::CsrfMissing
        );
        assert_eq!(
            s.authenticate(id, Some("x"), Proxied::Untrusted, &dir)
                .unwrap_err(),
            Refusal::CsrfWrong
        );
        s.authenticate(id, csrf, Proxied::Untrusted, &dir).unwrap();
        clock.advance(chrono::Duration::minutes(29));
        s.authenticate(id, csrf, Proxied::Untrusted, &dir).unwrap();
        clock.advance(chrono::Duration::minutes(30));
        assert!(matches!(
            s.authenticate(id, csrf, Proxied::Untrusted, &dir),
            Err(Refusal::Idle(_))
        ));
        assert_eq!(
            s.authenticate(id, csrf, Proxied::Untrusted, &dir)
                .unwrap_err(),
            Refusal::NoSession
        );

        // Busy all along, a session still ends 12 hours after its login.
        let b = login(&s);
        for _ in 0..(12 * 60 / 20 - 1) {
            clock.advance(chrono::Duration::minutes(20));
            again(&s, &b, &dir).unwrap();
        }
        clock.advance(chrono::Duration::minutes(20));
        assert_eq!(
            again(&s, &b, &dir).unwrap_err(),
            Refusal::Over("12 hour(s)".into())
        );
        let c = login(&s);
        s.logout(c.id.expose());
        assert_eq!(again(&s, &c, &dir).unwrap_err(), Refusal::NoSession);
    }

    /// A request on session `n` with its token, not through a proxy.
    fn again(s: &Sessions, n: &NewSession, dir: &Directory) -> Result<SessionInfo, Refusal> {
        s.authenticate(
            n.id.expose(),
            Some(n.csrf.expose()),
            Proxied::Untrusted,
            dir,
        )
    }

    fn user(name: &str) -> Actor {
        Actor {
            name: name.into(),
            admin: false,
        }
    }

    fn directory(users: &[&str]) -> Directory {
        let mut d = Directory::default();
        for u in users {
            let user = crate::config::User {
                name: (*u).into(),
                email: None,
                groups: Vec::new(),
                // Each user's account has the user's name.
                unix_user: Some((*u).into()),
            };
            d.users.insert((*u).into(), user);
        }
        d
    }

    /// Regression (issue 12 review, finding 5): a link session outlived the
    /// removal of its account's mapping, which ends that account's use of the
    /// admin socket at once.
    #[test]
    fn a_link_session_ends_when_its_account_is_no_longer_mapped_to_its_user() {
        let (_, s) = setup();
        let dir = directory(&["alice", "bob"]);
        let t = token_of(
            &s.issue_link(user("alice"), Via::Account("alice".into()))
                .unwrap(),
        );
        let new = s.login(&t, &dir).unwrap();
        let use_it = |dir: &Directory| {
            s.authenticate(
                new.id.expose(),
                Some(new.csrf.expose()),
                Proxied::Untrusted,
                dir,
            )
        };
        assert!(use_it(&dir).is_ok());
        // The account now maps to bob, say: alice's session from it ends.
        let mut moved = dir.clone();
        moved.users.get_mut("alice").unwrap().unix_user = None;
        moved.users.get_mut("bob").unwrap().unix_user = Some("alice".into());
        assert!(matches!(use_it(&moved), Err(Refusal::UserGone)));
        // Ended for good, even with the old mapping back.
        assert!(matches!(use_it(&dir), Err(Refusal::NoSession)));
    }

    /// Regression: the caps on links and sessions were global only, so one user
    /// making links or logging in again and again locked everyone else out.
    #[test]
    fn one_user_making_many_links_and_sessions_does_not_lock_others_out() {
        let (_, s) = setup();
        let dir = directory(&["alice", "bob"]);
        let mut alices = Vec::new();
        for _ in 0..MAX_LINKS + 5 {
            alices.push(token_of(
                &s.issue_link(user("alice"), Via::Account("alice".into()))
                    .unwrap(),
            ));
        }
        // Only alice's newest links work; bob still gets one.
        let bobs = token_of(
            &s.issue_link(user("bob"), Via::Account("bob".into()))
                .unwrap(),
        );
        assert_eq!(s.login(&alices[0], &dir).unwrap_err(), Refusal::LinkUnknown);
        s.login(alices.last().unwrap(), &dir).unwrap();
        assert_eq!(s.maps.lock().links.len(), USER_LINKS - 1 + 1);

        let mut sessions = Vec::new();
        for _ in 0..MAX_SESSIONS + 5 {
            let t = token_of(
                &s.issue_link(user("alice"), Via::Account("alice".into()))
                    .unwrap(),
            );
            sessions.push(s.login(&t, &dir).unwrap());
        }
        // Bob logs in, and alice's newest sessions go on; her oldest ended.
        let bob = s.login(&bobs, &dir).unwrap();
        again(&s, &bob, &dir).unwrap();
        let newest = sessions.last().unwrap();
        again(&s, newest, &dir).unwrap();
        let oldest = &sessions[0];
        assert_eq!(again(&s, oldest, &dir).unwrap_err(), Refusal::NoSession);
        assert_eq!(s.maps.lock().sessions.len(), USER_SESSIONS + 1);
    }

    /// Regression: a used link stayed in the map (marked used) for an hour past
    /// its expiry, and every new link scanned the whole map, so the map was
    /// bounded by nothing but time. Now a used link is removed at once, and only
    /// a bounded number of used hashes are remembered for the message.
    #[test]
    fn used_links_are_removed_and_only_a_few_remembered() {
        let (clock, s) = setup();
        let dir = Directory::default();
        let first = token_of(&s.issue_link(root(), Via::Root).unwrap());
        s.login(&first, &dir).unwrap();
        let mut last = first.clone();
        for _ in 0..REMEMBERED_LINKS * 2 {
            last = token_of(&s.issue_link(root(), Via::Root).unwrap());
            s.login(&last, &dir).unwrap();
        }
        {
            let maps = s.maps.lock();
            assert_eq!(maps.links.len(), 0);
            assert!(maps.links.by_user.is_empty());
            assert_eq!(maps.ended.len(), REMEMBERED_LINKS);
            assert_eq!(maps.ended_order.len(), REMEMBERED_LINKS);
        }
        // A recent one is "used already", an old one unknown: the same message.
        assert_eq!(s.login(&last, &dir).unwrap_err(), Refusal::LinkUnknown);
        assert_eq!(s.login(&first, &dir).unwrap_err(), Refusal::LinkUnknown);
        // An expired link, tried twice, says expired both times.
        let late = token_of(&s.issue_link(root(), Via::Root).unwrap());
        clock.advance(chrono::Duration::minutes(6));
        for _ in 0..2 {
            assert!(matches!(s.login(&late, &dir), Err(Refusal::LinkExpired(_))));
        }
        assert_eq!(s.maps.lock().links.len(), 0);
    }

    #[test]
    fn a_user_no_longer_configured_is_logged_out() {
        let (_, s) = setup();
        let dir = Directory::default();
        let bob = Actor {
            name: "bob".into(),
            admin: false,
        };
        let t = token_of(&s.issue_link(bob, Via::Account("bob".into())).unwrap());
        assert_eq!(s.login(&t, &dir).unwrap_err(), Refusal::UserGone);
    }

    #[test]
    fn a_proxy_session_holds_only_while_the_proxy_names_its_user() {
        let (_, s) = setup();
        let dir = directory(&["alice", "bob"]);
        assert_eq!(
            s.proxy_login("mallory", &dir).unwrap_err(),
            Refusal::ProxyUnknownUser(String::new())
        );
        let login = || s.proxy_login("alice", &dir).unwrap();
        let a = login();
        assert_eq!(a.info.actor.name, "alice");
        assert!(!a.info.actor.admin);
        let auth = |n: &NewSession, csrf: Option<&str>, p: Proxied<'_>| {
            s.authenticate(n.id.expose(), csrf, p, &dir)
        };
        let csrf = Some(a.csrf.expose());
        auth(&a, csrf, Proxied::Trusted(Some("alice"))).unwrap();
        // Without the token nothing is decided, and the session goes on.
        assert_eq!(
            auth(&a, None, Proxied::Untrusted).unwrap_err(),
            Refusal::CsrfMissing
        );
        auth(&a, csrf, Proxied::Trusted(Some("alice"))).unwrap();
        // Another user, no user, or not through the proxy: refused and ended.
        for other in [
            Proxied::Trusted(Some("bob")),
            Proxied::Trusted(None),
            Proxied::Untrusted,
        ] {
            let n = login();
            let csrf = Some(n.csrf.expose());
            assert_eq!(auth(&n, csrf, other).unwrap_err(), Refusal::ProxyChanged);
            assert_eq!(
                auth(&n, csrf, Proxied::Trusted(Some("alice"))).unwrap_err(),
                Refusal::NoSession
            );
        }
        // A link's session is not bound to the proxy.
        let t = token_of(
            &s.issue_link(user("bob"), Via::Account("bob".into()))
                .unwrap(),
        );
        let b = s.login(&t, &dir).unwrap();
        let csrf = Some(b.csrf.expose());
        auth(&b, csrf, Proxied::Trusted(Some("alice"))).unwrap();
        auth(&b, csrf, Proxied::Untrusted).unwrap();
        // The per-user cap holds for proxy logins too.
        let many: Vec<NewSession> = (0..USER_SESSIONS + 2).map(|_| login()).collect();
        let first = &many[0];
        assert_eq!(
            auth(
                first,
                Some(first.csrf.expose()),
                Proxied::Trusted(Some("alice"))
            )
            .unwrap_err(),
            Refusal::NoSession
        );
    }

    #[test]
    fn only_the_proxy_secret_itself_proves_the_proxy() {
        let (_, s) = setup();
        assert!(!s.is_proxy_secret(b""), "no secret: nothing is the proxy");
        let s = s.with_proxy_secret("0123456789abcdef0123456789abcdef".into());
        assert!(s.is_proxy_secret(b"0123456789abcdef0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcdef0123456789abcdeF",
            b"0123456789abcdef",
        ] {
            assert!(!s.is_proxy_secret(wrong));
        }
        assert!(!format!("{s:?}").contains("0123456789"));
    }
}
