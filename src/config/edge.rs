//! `[auth]` and `[rate_limit]`: how forward-auth reads keys, client addresses and
//! required scopes from proxy requests, and how failed verifications are limited.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Deserialize;

use super::directory::valid_scope;
use super::ipfilter;
use super::validator::Validator;

pub mod route_path;
#[cfg(test)]
mod route_tests;

/// A route prefix and the scope it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path prefix, e.g. `/catalog/sync`; matches whole path segments.
    pub prefix: String,
    /// Scope a key needs for it; `None` = any valid key.
    pub scope: Option<String>,
}

impl Route {
    /// Whether the normalised `path` ([`route_path::normalise`]) is under this
    /// prefix, in whole segments: `/a` matches `/a/b`, not `/ab`.
    pub fn matches(&self, path: &str) -> bool {
        self.matches_with(path, false)
    }

    fn matches_with(&self, path: &str, ignore_case: bool) -> bool {
        let (prefix, path) = (self.prefix.as_bytes(), path.as_bytes());
        let Some((head, rest)) = path.split_at_checked(prefix.len()) else {
            return false;
        };
        (if ignore_case {
            head.eq_ignore_ascii_case(prefix)
        } else {
            head == prefix
        }) && (prefix == b"/" || rest.is_empty() || rest.starts_with(b"/"))
    }
}

/// Forward-auth settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Header names (lower case) that may carry the key, in order. `authorization`
    /// is read as `Bearer KEY`; any other as the bare key.
    pub key_headers: Vec<String>,
    /// Query parameter that may carry the key; `None` = never read the query string.
    pub query_param: Option<String>,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Header (lower case) in which the proxy names the required scope.
    pub scope_header: String,
    /// Headers (lower case) holding the original request URI, in order.
    pub uri_headers: Vec<String>,
    /// Route prefixes, longest first.
    pub routes: Vec<Route>,
    /// Largest total size of request headers accepted.
    pub max_header_bytes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            key_headers: vec!["authorization".into(), "x-api-key".into()],
            query_param: None,
            trusted_proxies: Vec::new(),
            scope_header: "x-required-scope".into(),
            uri_headers: vec!["x-forwarded-uri".into(), "x-original-uri".into()],
            routes: Vec::new(),
            max_header_bytes: 16 * 1024,
        }
    }
}

impl AuthConfig {
    /// The route of the original URI `uri` ([`route_path`] says how it is read),
    /// or why there is none for sure. Applications disagree on letter case
    /// (Express, ASP.NET and IIS route `/CATALOG/sync` to `/catalog/sync`, most
    /// others do not) and on `;parameters` (servlet containers drop them before
    /// routing, so `/catalog;p/sync` reaches `/catalog/sync`; elsewhere they are
    /// part of the segment). Scopes are not nested, so no one reading is the safe
    /// one: the path is matched under each combination, and refused unless all
    /// give the same route. A normal path without `;` costs one scan of the
    /// routes and no allocation.
    ///
    /// A refused path that no reading can bring under any route (its first
    /// segment is plain and no route's, and it has no dot segment in any
    /// spelling) is not refused: it has no route, as it would if it were normal.
    /// So `/api//v2` or `/files/caf%C3%A9` still reach an application beside the
    /// protected ones; the check runs only for paths that would be refused.
    pub fn route_of(&self, uri: &str) -> Result<Option<&Route>, route_path::BadPath> {
        match self.route_of_every_reading(uri) {
            Err(_) if self.outside_every_route(uri) => Ok(None),
            route => route,
        }
    }

    /// Whether no reading of the origin-form `uri` can reach a route: its first
    /// segment is plain ASCII (letters, digits, `-`, `_`, `.` inside) that is no
    /// route's first segment, ignoring case, and nothing after it can climb back
    /// (no `.` or escaped `.` right after a `/`, `\` or escaped separator). An
    /// absolute URL or a path starting with `//` could name any path: never.
    fn outside_every_route(&self, uri: &str) -> bool {
        let Some(rest) = uri.strip_prefix('/') else {
            return false;
        };
        let first = rest.split('/').next().unwrap_or("");
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
        if first.is_empty()
            || !first.bytes().all(plain)
            || first.starts_with('.')
            || first.ends_with('.')
        {
            return false;
        }
        let lower = rest.to_ascii_lowercase();
        let climbs = ["/", "\\", "%2f", "%5c"]
            .iter()
            .any(|sep| lower.contains(&format!("{sep}.")) || lower.contains(&format!("{sep}%2e")));
        !climbs
            && self.routes.iter().all(|r| {
                let route_first = r.prefix.trim_start_matches('/').split('/').next();
                route_first.is_some_and(|f| !f.is_empty() && !f.eq_ignore_ascii_case(first))
            })
    }

    /// [`AuthConfig::route_of`] before the look at paths outside every route.
    fn route_of_every_reading(&self, uri: &str) -> Result<Option<&Route>, route_path::BadPath> {
        use route_path::{normalise_with, BadPath, Params};
        let dropped = normalise_with(uri, Params::Drop)?;
        let route = self.route_either_case(&dropped).ok_or(BadPath::Ambiguous)?;
        if uri.contains(';') {
            let kept = normalise_with(uri, Params::Keep)?;
            let other = self.route_either_case(&kept).ok_or(BadPath::Ambiguous)?;
            if other.map(|r| &r.prefix) != route.map(|r| &r.prefix) {
                return Err(BadPath::Ambiguous);
            }
        }
        Ok(route)
    }

    /// The route of `path` if letter case does not change it, in one scan: the
    /// first route matching with case ignored is the route under that reading;
    /// the case-sensitive reading agrees exactly when that route matches with
    /// case kept too, for any route before it would have matched ignoring case.
    fn route_either_case(&self, path: &str) -> Option<Option<&Route>> {
        match self.routes.iter().find(|r| r.matches_with(path, true)) {
            Some(r) if !r.matches(path) => None,
            first => Some(first),
        }
    }
}

/// Limits on failed verifications per client address (token bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Tokens refilled per minute; 0 turns limiting off.
    pub failures_per_minute: u32,
    /// Bucket size: failures allowed in a burst.
    pub burst: u32,
    /// Most clients tracked at once (memory bound); past it the client touched
    /// longest ago is forgotten.
    pub max_tracked_clients: usize,
    /// IPv6 clients are grouped by this many leading bits (one subscriber usually
    /// holds a /64); also groups connections for `server.max_connections_per_client`.
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            failures_per_minute: 60,
            burst: 30,
            max_tracked_clients: 100_000,
            ipv6_prefix: 64,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    key_headers: Option<Vec<String>>,
    query_param: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    scope_header: Option<String>,
    uri_headers: Option<Vec<String>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    max_header_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    prefix: String,
    scope: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    failures_per_minute: Option<i64>,
    burst: Option<i64>,
    max_tracked_clients: Option<i64>,
    ipv6_prefix: Option<i64>,
}

pub(crate) const AUTH_KEYS: &[&str] = &[
    "key_headers",
    "query_param",
    "trusted_proxies",
    "scope_header",
    "uri_headers",
    "routes",
    "max_header_bytes",
];
pub(crate) const ROUTE_KEYS: &[&str] = &["prefix", "scope"];
pub(crate) const RATE_LIMIT_KEYS: &[&str] = &[
    "failures_per_minute",
    "burst",
    "max_tracked_clients",
    "ipv6_prefix",
];

/// Whether `name` is an HTTP header name (a token, RFC 9110) of at most 64 bytes.
pub(crate) fn valid_header_name(name: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.len() <= 64 && name.bytes().all(token)
}

fn header_name(v: &mut Validator, key: &str, name: &str) -> String {
    if !valid_header_name(name) {
        v.push(key, format!("{name:?} is not a valid HTTP header name"));
    }
    name.to_ascii_lowercase()
}

pub(crate) fn validate_auth(v: &mut Validator, raw: RawAuth) -> AuthConfig {
    let d = AuthConfig::default();
    let key_headers = match raw.key_headers {
        Some(list) if list.is_empty() => {
            v.push("auth.key_headers", "needs at least one header name".into());
            d.key_headers
        }
        Some(list) => header_names(v, "auth.key_headers", &list),
        None => d.key_headers,
    };
    let query_param = query_param(v, raw.query_param.as_deref().map(str::trim));
    let mut trusted_proxies = Vec::new();
    for p in raw.trusted_proxies.unwrap_or_default() {
        match ipfilter::parse(&p) {
            Ok(net) => trusted_proxies.push(net),
            Err(e) => v.push("auth.trusted_proxies", e.to_string()),
        }
    }
    let scope_header = match raw.scope_header {
        Some(h) => header_name(v, "auth.scope_header", &h),
        None => d.scope_header,
    };
    let uri_headers = match raw.uri_headers {
        Some(list) => header_names(v, "auth.uri_headers", &list),
        None => d.uri_headers,
    };
    let routes = routes(v, raw.routes);
    let max_header_bytes = v.int(
        "auth.max_header_bytes",
        raw.max_header_bytes,
        16 * 1024,
        1024..=1024 * 1024,
        None,
    );
    AuthConfig {
        key_headers,
        query_param,
        trusted_proxies,
        scope_header,
        uri_headers,
        routes,
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(16 * 1024),
    }
}

fn header_names(v: &mut Validator, key: &str, names: &[String]) -> Vec<String> {
    names.iter().map(|h| header_name(v, key, h)).collect()
}

fn query_param(v: &mut Validator, name: Option<&str>) -> Option<String> {
    match name {
        None | Some("") => None,
        Some(p)
            if p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && p.len() <= 64 =>
        {
            Some(p.to_owned())
        }
        Some(p) => {
            v.push(
                "auth.query_param",
                format!("{p:?} is not a plain query parameter name"),
            );
            None
        }
    }
}

/// The routes, longest prefix first so that the most specific one wins.
fn routes(v: &mut Validator, raw: Vec<RawRoute>) -> Vec<Route> {
    let mut seen = BTreeMap::new();
    let mut routes = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("auth.routes[{i}]");
        if let Some(message) = prefix_problem(&r.prefix) {
            v.push(&format!("{key}.prefix"), message);
            continue;
        }
        if let Some(s) = &r.scope {
            if !valid_scope(s) {
                v.push(
                    &format!("{key}.scope"),
                    format!("{s:?} is not a valid scope"),
                );
            }
        }
        // "/A" and "/a" are one path to applications that ignore letter case, so
        // which of their routes applies could never be decided for sure.
        if seen.insert(r.prefix.to_ascii_lowercase(), i).is_some() {
            v.push(
                &format!("{key}.prefix"),
                format!(
                    "prefix {:?} is listed twice (letter case does not count)",
                    r.prefix
                ),
            );
        }
        routes.push(Route {
            prefix: r.prefix,
            scope: r.scope.filter(|s| !s.is_empty()),
        });
    }
    routes.sort_by(|a, b| {
        b.prefix
            .len()
            .cmp(&a.prefix.len())
            .then(a.prefix.cmp(&b.prefix))
    });
    routes
}

/// Why route prefix `prefix` could never match a request, if it could not.
fn prefix_problem(prefix: &str) -> Option<String> {
    // A prefix is compared with normalised request paths, so one that is not
    // normal itself could never match: say so rather than protect nothing.
    let normal = match route_path::normalise(prefix) {
        Ok(n) if prefix.starts_with('/') && prefix.len() <= 512 => n,
        _ => {
            return Some(format!(
                "{prefix:?} must be a path starting with '/' (visible ASCII, no query)"
            ))
        }
    };
    if normal != prefix {
        return Some(format!(
            "{prefix:?} is not a normalised path (requests are matched as {normal:?}); \
             write it without escapes, ';', '.' or '..' segments and repeated '/'"
        ));
    }
    // A handler for `/catalog/sync/` also serves `/catalog/sync` in most
    // frameworks (Express, Flask's redirect, ...), which such a prefix would
    // not cover.
    (prefix.len() > 1 && prefix.ends_with('/')).then(|| {
        let bare = prefix.trim_end_matches('/');
        format!(
            "{prefix:?} ends in '/', so it would not cover {bare:?}, which applications \
             serve alike; write {bare:?} (it covers everything below it too)"
        )
    })
}

pub(crate) fn validate_rate_limit(v: &mut Validator, raw: RawRateLimit) -> RateLimitConfig {
    let d = RateLimitConfig::default();
    let per_minute = v.int(
        "rate_limit.failures_per_minute",
        raw.failures_per_minute,
        60,
        0..=1_000_000,
        None,
    );
    let burst = v.int("rate_limit.burst", raw.burst, 30, 1..=1_000_000, None);
    let max = v.int(
        "rate_limit.max_tracked_clients",
        raw.max_tracked_clients,
        100_000,
        100..=10_000_000,
        None,
    );
    // Shorter than /32 would put whole providers in one bucket.
    let ipv6_prefix = v.int(
        "rate_limit.ipv6_prefix",
        raw.ipv6_prefix,
        64,
        32..=128,
        None,
    );
    RateLimitConfig {
        failures_per_minute: u32::try_from(per_minute).unwrap_or(d.failures_per_minute),
        burst: u32::try_from(burst).unwrap_or(d.burst),
        max_tracked_clients: usize::try_from(max).unwrap_or(d.max_tracked_clients),
        ipv6_prefix: u8::try_from(ipv6_prefix).unwrap_or(d.ipv6_prefix),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn routes_match_whole_segments() {
        let r = Route {
            prefix: "/catalog".into(),
            scope: None,
        };
        assert!(r.matches("/catalog"));
        assert!(r.matches("/catalog/items"));
        assert!(r.matches("/catalog/"));
        assert!(!r.matches("/catalogue"));
        assert!(!r.matches("/other"));
        assert!(!r.matches("/"));
        let root = Route {
            prefix: "/".into(),
            scope: None,
        };
        assert!(root.matches("/"));
        assert!(root.matches("/catalog"));
    }
}
