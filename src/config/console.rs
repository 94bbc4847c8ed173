//! `[console]`: the web console served under `/console/` on the TCP listener. It
//! is on by default only where that listener is loopback-only; anywhere else it
//! must be switched on, since a console session is as good as an admin key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::credential::{password_path, read_password_at};
use super::edge::valid_header_name;
use super::validator::Validator;

/// Validated console settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Whether `/console/` is served and console links can be made.
    pub enabled: bool,
    /// The address users open the console at (links are made with it), when it is
    /// not the listener's own (a proxy in front, TLS).
    pub public_url: Option<url::Url>,
    /// A session ends after this long without a request.
    pub session_idle: Duration,
    /// A session ends this long after its login, however busy.
    pub session_max: Duration,
    /// How long a console link can be used.
    pub link_lifetime: Duration,
    /// The header (lower case) in which an authenticating proxy in `[auth]
    /// trusted_proxies` names the logged-in user; `None`: no proxy login.
    pub proxy_user_header: Option<String>,
    /// The file holding the secret the proxy sends in `proxy_secret_header`
    /// (the systemd credential [`PROXY_SECRET_CREDENTIAL`] replaces it): set
    /// whenever `proxy_user_header` is, since any local account can connect
    /// from a loopback address, so a peer address alone proves nothing.
    pub proxy_secret_file: Option<PathBuf>,
    /// The header (lower case) the proxy sends that secret in.
    pub proxy_secret_header: String,
}

/// The systemd credential that holds the proxy secret, ahead of
/// `proxy_secret_file`.
pub const PROXY_SECRET_CREDENTIAL: &str = "console-proxy-secret";

/// The shortest proxy secret accepted, in bytes: one guessed by trying is none.
pub const PROXY_SECRET_MIN: usize = 32;

/// A proxy secret that cannot be used. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum ProxySecretError {
    /// The file or credential could not be read.
    #[error("{}: cannot read it: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither the file nor the credential exists (no file configured).
    #[error("no proxy secret: set console.proxy_secret_file, or give the systemd credential {PROXY_SECRET_CREDENTIAL:?}")]
    Missing,
    /// Too short to resist guessing.
    #[error("the proxy secret holds {0} bytes, fewer than {PROXY_SECRET_MIN}: make a longer one, such as with `openssl rand -hex 32`")]
    Short(usize),
    /// Every account could read it, and so log in as anyone through the proxy
    /// header: refused, not only warned about.
    #[error("{}: every local account may read it, and could then log in to the console as anyone; chmod 600 it (or 640 for a group the proxy shares)", .0.display())]
    WorldReadable(PathBuf),
}

impl ConsoleConfig {
    /// Whether the session cookie must be `Secure`: the console is reached over
    /// HTTPS (apikeyd itself serves plain HTTP, so only a proxy can add TLS).
    pub fn secure_cookie(&self) -> bool {
        self.public_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https")
    }

    /// The session cookie's `Path`: the path of `public_url` (the page reaches
    /// the API relative to it, so the rest of a shared host never gets the
    /// cookie), else `/`.
    pub fn cookie_path(&self) -> &str {
        self.public_url.as_ref().map_or("/", url::Url::path)
    }

    /// The console page's address for key `id` (`#key=ID`, which the page opens),
    /// for the emails about it: only when the console is on and `public_url` says
    /// where users reach it (the listener's own address may be loopback only).
    pub fn key_page(&self, id: &impl std::fmt::Display) -> Option<String> {
        let base = self.public_url.as_ref().filter(|_| self.enabled)?;
        Some(page(base.as_str(), &format!("key={id}")))
    }

    /// The proxy secret, read as the other secrets are (the systemd credential
    /// first, then the file; a trailing line end is not part of it); `None`
    /// without proxy login. Read once, at start.
    pub fn proxy_secret(
        &self,
        credentials_dir: Option<&Path>,
    ) -> Result<Option<ProxySecret>, ProxySecretError> {
        if self.proxy_user_header.is_none() {
            return Ok(None);
        }
        let file = self.proxy_secret_file.as_deref();
        let path = password_path(credentials_dir, PROXY_SECRET_CREDENTIAL, file)
            .ok_or(ProxySecretError::Missing)?;
        let value = read_password_at(&path).map_err(|e| ProxySecretError::Read {
            path: e.path,
            source: e.source,
        })?;
        if value.len() < PROXY_SECRET_MIN {
            return Err(ProxySecretError::Short(value.len()));
        }
        // systemd keeps credentials to the service; a file's mode is the operator's.
        let managed = credentials_dir.is_some_and(|d| path.starts_with(d));
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap_or(0);
        if !managed && mode & 0o004 != 0 {
            return Err(ProxySecretError::WorldReadable(path));
        }
        Ok(Some(ProxySecret {
            value,
            group_readable: !managed && mode & 0o070 != 0,
            path,
        }))
    }
}

/// The proxy secret and where it came from. No `Debug`: it holds the secret.
pub struct ProxySecret {
    /// The secret.
    pub value: String,
    /// The file or credential.
    pub path: PathBuf,
    /// Its group has any access to it (warned about: the group may be the proxy's).
    pub group_readable: bool,
}

/// Whether `u`'s host is this machine only (`localhost` or a loopback address).
pub fn loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The console page under `base` (an address without a trailing slash needs
/// none) with `fragment`: `BASE/console/#FRAGMENT`. A fragment never reaches a
/// server or a `Referer`.
pub fn page(base: &str, fragment: &str) -> String {
    format!("{}/console/#{fragment}", base.trim_end_matches('/'))
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            public_url: None,
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            link_lifetime: Duration::from_secs(5 * 60),
            proxy_user_header: None,
            proxy_secret_file: None,
            proxy_secret_header: DEFAULT_SECRET_HEADER.to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsole {
    enabled: Option<bool>,
    public_url: Option<String>,
    session_idle: Option<String>,
    session_max: Option<String>,
    link_lifetime: Option<String>,
    proxy_user_header: Option<String>,
    proxy_secret_file: Option<String>,
    proxy_secret_header: Option<String>,
}

/// The header the proxy sends its secret in unless `proxy_secret_header` says.
const DEFAULT_SECRET_HEADER: &str = "x-apikeyd-proxy-secret";

pub(crate) const CONSOLE_KEYS: &[&str] = &[
    "enabled",
    "public_url",
    "session_idle",
    "session_max",
    "link_lifetime",
    "proxy_user_header",
    "proxy_secret_file",
    "proxy_secret_header",
];

/// Headers apikeyd or browsers give another meaning: naming one as the proxy's
/// user header is a mistake (a browser sets `Cookie` or `Origin` itself).
const NOT_USER_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "host",
    "origin",
    "referer",
    "content-type",
    "content-length",
    "x-csrf-token",
    "sec-fetch-site",
    "x-forwarded-for",
    "x-real-ip",
];

impl Validator {
    /// `listen` is the TCP listener the console would be served on (`None` when
    /// it did not parse: then the console stays off); `trusted_proxies` are the
    /// only peers whose `proxy_user_header` is believed.
    pub(crate) fn console(
        &mut self,
        c: &RawConsole,
        listen: Option<SocketAddr>,
        trusted_proxies: &[IpNet],
    ) -> ConsoleConfig {
        let loopback = listen.is_some_and(|a| a.ip().is_loopback());
        let enabled = c.enabled.unwrap_or(loopback);
        let public_url = c.public_url.as_deref().filter(|u| !u.is_empty()).and_then(|text| {
            match url::Url::parse(text) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                    self.push("console.public_url", format!("{text:?} must be an http:// or https:// address"));
                    None
                }
                Ok(u) if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() || u.password().is_some() => {
                    self.push("console.public_url", format!("{text:?} must be a plain address without user, query or fragment, such as \"https://keys.example.com\""));
                    None
                }
                // It becomes the cookie's Path, where `;` would start an attribute.
                Ok(u) if u.path().contains([';', ',']) => {
                    self.push("console.public_url", format!("{text:?} must not hold ';' or ',' in its path"));
                    None
                }
                Ok(u) => Some(u),
                Err(e) => {
                    self.push("console.public_url", format!("{text:?} is not an address: {e}"));
                    None
                }
            }
        });
        let d = ConsoleConfig::default();
        let idle = (
            c.session_idle.as_deref(),
            d.session_idle,
            7 * 86_400,
            "pt1s to p7d",
        );
        let session_idle = self.console_period("session_idle", idle);
        let max = (
            c.session_max.as_deref(),
            d.session_max,
            30 * 86_400,
            "pt1s to p30d",
        );
        let session_max = self.console_period("session_max", max);
        let link = (
            c.link_lifetime.as_deref(),
            d.link_lifetime,
            3600,
            "pt1s to pt1h",
        );
        let link_lifetime = self.console_period("link_lifetime", link);
        if session_idle > session_max {
            self.push(
                "console.session_idle",
                "is longer than console.session_max, which would never let it count".into(),
            );
        }
        let proxy_user_header =
            self.proxy_user_header(c.proxy_user_header.as_deref(), trusted_proxies);
        let (proxy_secret_file, proxy_secret_header) =
            self.proxy_secret(c, proxy_user_header.as_deref());
        ConsoleConfig {
            enabled,
            public_url,
            session_idle,
            session_max,
            link_lifetime,
            proxy_user_header,
            proxy_secret_file,
            proxy_secret_header,
        }
    }

    /// `proxy_secret_file` and `proxy_secret_header`. Proxy login without a
    /// secret is refused: on one host any local account can connect from any
    /// loopback address, so `trusted_proxies` alone would let it name any user.
    fn proxy_secret(
        &mut self,
        c: &RawConsole,
        user_header: Option<&str>,
    ) -> (Option<PathBuf>, String) {
        let file = c
            .proxy_secret_file
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        if c.proxy_user_header
            .as_deref()
            .is_some_and(|h| !h.is_empty())
            && file.is_none()
        {
            self.push("console.proxy_user_header", format!("is set without console.proxy_secret_file: a peer address in auth.trusted_proxies proves nothing on a shared host (any local account can connect from 127.0.0.1 or any loopback address and name any user), so the proxy must also send a secret only it knows: put {PROXY_SECRET_MIN} or more random bytes in a file readable by apikeyd only (such as `openssl rand -hex 32`), name it in console.proxy_secret_file (or give the systemd credential {PROXY_SECRET_CREDENTIAL:?}), and have the proxy send it in the {} header", c.proxy_secret_header.as_deref().unwrap_or(DEFAULT_SECRET_HEADER)));
        }
        const KEY: &str = "console.proxy_secret_header";
        let header = match c.proxy_secret_header.as_deref().filter(|h| !h.is_empty()) {
            None => DEFAULT_SECRET_HEADER.to_owned(),
            Some(name) => {
                let lower = name.to_ascii_lowercase();
                if !valid_header_name(name) {
                    self.push(KEY, format!("{name:?} is not a valid HTTP header name"));
                } else if NOT_USER_HEADERS.contains(&lower.as_str())
                    || user_header == Some(lower.as_str())
                {
                    self.push(KEY, format!("{name:?} means something else to apikeyd or to browsers (or is the user header); name a header of its own, such as \"{DEFAULT_SECRET_HEADER}\""));
                }
                lower
            }
        };
        (file, header)
    }

    /// `proxy_user_header`: a header name apikeyd reads for nothing else. Set
    /// without `[auth] trusted_proxies` it is refused rather than ignored: the
    /// operator meant proxy login to work, and no peer could ever use it.
    fn proxy_user_header(
        &mut self,
        name: Option<&str>,
        trusted_proxies: &[IpNet],
    ) -> Option<String> {
        let name = name.filter(|n| !n.is_empty())?;
        const KEY: &str = "console.proxy_user_header";
        let valid = valid_header_name(name);
        if !valid {
            self.push(KEY, format!("{name:?} is not a valid HTTP header name"));
        }
        let lower = name.to_ascii_lowercase();
        let reserved = NOT_USER_HEADERS.contains(&lower.as_str());
        if reserved {
            self.push(KEY, format!("{name:?} means something else to apikeyd or to browsers; name the header your authenticating proxy sets, such as \"Remote-User\""));
        }
        if trusted_proxies.is_empty() {
            self.push(KEY, format!("is set, but auth.trusted_proxies is empty: the {name} header is believed only from the authenticating proxy's address (and with its secret, console.proxy_secret_file), so list that address there, or remove proxy_user_header"));
        }
        (valid && !reserved && !trusted_proxies.is_empty()).then_some(lower)
    }
}

impl Validator {
    /// The proxy secret, read as the daemon will read it at start (never shown).
    pub(crate) fn console_files(&mut self, c: &ConsoleConfig, credentials_dir: Option<&Path>) {
        if let Err(e) = c.proxy_secret(credentials_dir) {
            self.push("console.proxy_secret_file", e.to_string());
        }
    }

    /// A fixed period (from 1 s to a most, named in words) as a duration: the
    /// default when unset or bad (reported).
    fn console_period(
        &mut self,
        key: &str,
        (value, default, max_secs, range): (Option<&str>, Duration, u64, &str),
    ) -> Duration {
        value
            .and_then(|v| self.fixed_period(&format!("console.{key}"), v, max_secs, range))
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests;
