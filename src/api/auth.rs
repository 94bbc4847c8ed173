//! Forward-auth for reverse proxies: nginx `auth_request`, Traefik ForwardAuth and
//! Envoy `ext_authz` (HTTP mode) ask `/v1/auth` about every request. The answer is
//! 200 with the key's identity in `X-Api-Key-*` headers, or 401/403 (and 400
//! `BAD_PATH` for an original URI `[[auth.routes]]` cannot be matched against for
//! sure) with `X-Api-Key-Reason`. Nothing is cached: a disabled key is refused on
//! the next call.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

pub use super::edge::AuthPlan;
use super::error::ApiError;
use super::metrics::Endpoint;
use super::state::AppState;
use crate::config::edge::route_path::{self, BadPath};
use crate::config::AuthConfig;
use crate::keys::Live;
use crate::model::key::Code;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
const X_API_KEY_NAME: HeaderName = HeaderName::from_static("x-api-key-name");
const X_API_KEY_OWNER: HeaderName = HeaderName::from_static("x-api-key-owner");
const X_API_KEY_SCOPES: HeaderName = HeaderName::from_static("x-api-key-scopes");
const X_API_KEY_EXPIRES_IN: HeaderName = HeaderName::from_static("x-api-key-expires-in");
const X_API_KEY_REASON: HeaderName = HeaderName::from_static("x-api-key-reason");
#[allow(clippy::declare_interior_mutable_const)]
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: HeaderValue = HeaderValue::from_static("0");

/// The forward-auth path, answered on the connection ([`super::http1`]) and by
/// hyper without the router.
pub const AUTH_PATH: &str = "/v1/auth";

/// Request headers as the forward-auth decision reads them: hyper's [`HeaderMap`] on
/// the router's path, the parsed head itself on the connection's fast path
/// ([`super::http1`]). Both must read a head the same way, or the two paths could
/// decide differently on the same request. A value is text when it is visible ASCII,
/// spaces and tabs, as [`HeaderValue::to_str`] has it.
pub trait ReadHeaders {
    /// Every value of `name`, in order, to `f`: `Some(text)`, or `None` for a
    /// value that is not text.
    fn each_value<'a>(&'a self, name: &HeaderName, f: impl FnMut(Option<&'a str>));

    /// The first value of `name`, if it is text (a first value that is not text
    /// reads as absent; the next one is not taken instead).
    fn first(&self, name: &HeaderName) -> Option<&str>;

    /// Every value of `name` that is text, in order, to `f`.
    fn each<'a>(&'a self, name: &HeaderName, mut f: impl FnMut(&'a str)) {
        self.each_value(name, |v| v.into_iter().for_each(&mut f));
    }
}

impl ReadHeaders for HeaderMap {
    fn each_value<'a>(&'a self, name: &HeaderName, mut f: impl FnMut(Option<&'a str>)) {
        self.get_all(name).iter().for_each(|v| f(v.to_str().ok()));
    }

    fn first(&self, name: &HeaderName) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The client address: the peer, or what a trusted proxy says the client was.
pub fn client_ip(cfg: &AuthConfig, peer: IpAddr, headers: &impl ReadHeaders) -> IpAddr {
    let trusted = |ip: &IpAddr| crate::config::ipfilter::allows_any(&cfg.trusted_proxies, *ip);
    if !trusted(&peer) {
        return peer;
    }
    // X-Forwarded-For: walk from the right (closest hop) past our own proxies, i.e.
    // take the last untrusted address; if every hop is trusted, the first one.
    let mut first = None;
    let mut last_untrusted = None;
    headers.each(&X_FORWARDED_FOR, |v| {
        for ip in v.split(',').filter_map(|s| s.trim().parse::<IpAddr>().ok()) {
            first.get_or_insert(ip);
            if !trusted(&ip) {
                last_untrusted = Some(ip);
            }
        }
    });
    if let Some(ip) = last_untrusted.or(first) {
        return ip;
    }
    headers
        .first(&X_REAL_IP)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(peer)
}

/// The key a request presents: from the key headers, else (with `query_param` set)
/// from the query of `/v1/auth`'s own URL, else from the query of the original URI
/// a proxy forwards (`uri_headers`), percent-decoded.
fn presented_key<'a>(
    plan: &AuthPlan,
    headers: &'a impl ReadHeaders,
    query: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    for (name, bearer) in &plan.key_headers {
        let Some(v) = headers.first(name) else {
            continue;
        };
        let v = v.trim();
        if *bearer {
            if let Some((scheme, token)) = v.split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                    return Some(Cow::Borrowed(token.trim()));
                }
            }
        } else if !v.is_empty() {
            return Some(Cow::Borrowed(v));
        }
    }
    let param = plan.config.query_param.as_deref()?;
    // nginx auth_request and Caddy call /v1/auth without the client's query; the
    // original one travels in the URI headers.
    let forwarded = plan
        .uri_headers
        .iter()
        .find_map(|h| headers.first(h))
        .and_then(route_path::query);
    [query, forwarded]
        .into_iter()
        .flatten()
        .find_map(|q| query_value(q, param))
}

/// The percent-decoded value of `param` in `query`, if it is there and not empty.
fn query_value<'a>(query: &'a str, param: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != param {
            return None;
        }
        // Not valid UTF-8 once decoded: no key, which the verifier would refuse.
        let v = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
        (!v.is_empty()).then_some(v)
    })
}

/// The original URI `[[auth.routes]]` are matched against: the value of the URI
/// headers (`appended`: the path Envoy appends to `/v1/auth/`). `Ok(None)` when the
/// request names none. A URI header that is present but unreadable, or values that
/// disagree (a client's own `X-Original-URI` beside the proxy's `X-Forwarded-Uri`),
/// refuse the request: reading another value instead would let the client choose
/// the path that is checked.
fn original_uri<'a>(
    plan: &AuthPlan,
    headers: &'a impl ReadHeaders,
    appended: Option<&'a str>,
) -> Result<Option<&'a str>, BadPath> {
    let mut uri = appended;
    let mut bad = None;
    for name in &plan.uri_headers {
        headers.each_value(name, |v| match (v, uri) {
            (None, _) => bad = Some(BadPath::Unreadable),
            (Some(v), None) => uri = Some(v),
            (Some(v), Some(u)) if v != u => {
                bad.get_or_insert(BadPath::Conflicting);
            }
            _ => {}
        });
    }
    match bad {
        Some(bad) => Err(bad),
        None => Ok(uri),
    }
}

/// Whether a header value can carry `b` as is.
fn plain(b: u8) -> bool {
    (b == b' ' || b.is_ascii_graphic()) && b != b'%'
}

/// Free text as a header value into `out`: visible ASCII is kept, anything else (and
/// `%`) is percent-encoded as UTF-8 so names like "Große Liste" survive.
pub fn encode_value(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if s.bytes().all(plain) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.reserve(s.len() + 16);
    for b in s.bytes() {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// [`encode_value`] as a [`HeaderValue`].
pub fn header_value(s: &str) -> HeaderValue {
    if s.bytes().all(plain) {
        return HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    }
    let mut out = Vec::new();
    encode_value(s, &mut out);
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn peer_of(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Forward-auth is for proxies on TCP; without a TCP peer there is no client
/// address to charge failures to or to check IP filters against, and borrowing
/// one (127.0.0.1, a trusted proxy) would let any local account speak for it.
fn no_peer() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "forward-auth is served on the TCP listener only".into(),
    )
    .into_response()
}

/// `/v1/auth` (any method).
pub async fn auth(State(st): State<AppState>, req: Request) -> Response {
    match peer_of(&req) {
        Some(peer) => check(&st, peer, req.uri(), req.headers(), None),
        None => no_peer(),
    }
}

/// `/v1/auth/{*path}` and `/v1/auth/`: Envoy's ext_authz appends the original path
/// to the prefix, so a request for the site root arrives as `/v1/auth/`.
pub async fn auth_path(State(st): State<AppState>, req: Request) -> Response {
    match peer_of(&req) {
        Some(peer) => check(
            &st,
            peer,
            req.uri(),
            req.headers(),
            req.uri().path_and_query().and_then(appended),
        ),
        None => no_peer(),
    }
}

/// Which forward-auth request `path` (a URL's path) is: `Some(false)` for
/// `/v1/auth`, `Some(true)` for `/v1/auth/...`, the original path appended by
/// Envoy (`/v1/auth/` included: the site root), None for any other path.
pub fn forward_auth_kind(path: &str) -> Option<bool> {
    let rest = path.strip_prefix(AUTH_PATH)?;
    if rest.is_empty() {
        Some(false)
    } else {
        rest.starts_with('/').then_some(true)
    }
}

/// The original URI Envoy appended to `/v1/auth` in a request target (`/` for
/// `/v1/auth/`), with the target's query. It is taken from the URL as it came, not decoded: decoding it
/// here would turn `%2F` into a separator before the route check could refuse it.
pub fn appended(target: &axum::http::uri::PathAndQuery) -> Option<&str> {
    target
        .as_str()
        .strip_prefix(AUTH_PATH)
        .filter(|rest| rest.starts_with('/'))
}

/// The size of a request's headers as `auth.max_header_bytes` counts it: each name
/// and value plus ": " and the line end.
pub fn header_bytes(name: usize, value: usize) -> usize {
    name + value + 4
}

/// [`decide`] and [`Outcome::response`], after refusing headers larger than
/// `auth.max_header_bytes` with a JSON error: the forward-auth answer of the router
/// and of connections the fast path hands to hyper.
pub fn check(
    st: &AppState,
    peer: IpAddr,
    uri: &Uri,
    headers: &HeaderMap,
    path: Option<&str>,
) -> Response {
    let plan = st.edge.auth();
    let size: usize = headers
        .iter()
        .map(|(k, v)| header_bytes(k.as_str().len(), v.len()))
        .sum();
    let limit = plan.config.max_header_bytes;
    if size > limit {
        let mut r = ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "request headers total {size} bytes; the limit is {limit} (auth.max_header_bytes)"
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(X_API_KEY_REASON, HeaderValue::from_static("MALFORMED"));
        return r;
    }
    decide(st, &plan, peer, uri.query(), headers, path).response()
}

/// The forward-auth decision for one request.
#[derive(Debug)]
pub enum Outcome {
    /// Too many failed verifications from this client: 429 with `Retry-After`.
    Limited(Duration),
    /// Refused with this status and `X-Api-Key-Reason`.
    Denied(StatusCode, &'static str),
    /// The original URI cannot be matched against `[[auth.routes]]` for sure:
    /// 400 `BAD_PATH`.
    BadPath(BadPath),
    /// The key's identity, and the seconds to its effective expiry if it has one.
    Allowed(Arc<Live>, Option<i64>),
}

/// Decide on one forward-auth request: `peer` is the TCP peer, `query` the URL's
/// query string, `path` the original URI (path and query) when it came in the URL
/// (Envoy appends it to `/v1/auth/`).
pub fn decide(
    st: &AppState,
    plan: &AuthPlan,
    peer: IpAddr,
    query: Option<&str>,
    headers: &impl ReadHeaders,
    path: Option<&str>,
) -> Outcome {
    let cfg = &plan.config;
    let client = client_ip(cfg, peer, headers);
    let now = Instant::now();
    if let Err(retry) = st.edge.limiter.check(client, now) {
        st.edge.metrics.record_rate_limited();
        return Outcome::Limited(retry);
    }
    let Some(key) = presented_key(plan, headers, query) else {
        st.edge.metrics.record(Endpoint::Auth, None, now.elapsed());
        return Outcome::Denied(StatusCode::UNAUTHORIZED, "MISSING");
    };
    // Only deployments with routes look at the URI at all.
    let route = if cfg.routes.is_empty() {
        None
    } else {
        let route = original_uri(plan, headers, path)
            .and_then(|uri| cfg.route_of(uri.ok_or(BadPath::NoUri)?));
        match route {
            Ok(route) => route,
            Err(why) => {
                tracing::debug!(%client, reason = %why, "forward-auth: original URI refused");
                return Outcome::BadPath(why);
            }
        }
    };
    // A scope named by the proxy adds to the route's scope; it can never replace it,
    // so a client-supplied header cannot weaken what a route requires.
    let header_scope = plan
        .scope_header
        .as_ref()
        .and_then(|h| headers.first(h))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let route_scope = route.and_then(|r| r.scope.as_deref());
    let mut scopes: [&str; 2] = [""; 2];
    let mut n = 0;
    for s in [header_scope, route_scope].into_iter().flatten() {
        scopes[n] = s;
        n += 1;
    }
    let started = Instant::now();
    let mut v = st.keys.verify_route(
        &key,
        &scopes[..n],
        Some(client),
        route.map(|r| r.prefix.as_str()),
    );
    let live = if v.code == Code::Valid {
        st.keys.resolve(&mut v)
    } else {
        None
    };
    st.edge
        .metrics
        .record(Endpoint::Auth, Some(v.code), started.elapsed());
    let status = match v.code {
        Code::Valid => StatusCode::OK,
        Code::Malformed | Code::NotFound => {
            st.edge.limiter.record_failure(client, now);
            StatusCode::UNAUTHORIZED
        }
        Code::Expired | Code::Inactive => StatusCode::UNAUTHORIZED,
        Code::Disabled | Code::IpNotAllowed | Code::InsufficientScope | Code::OwnerUnknown => {
            StatusCode::FORBIDDEN
        }
    };
    let Some(live) = live else {
        return Outcome::Denied(status, v.code.as_str());
    };
    let settings = st.keys.settings();
    let expires_in = live
        .life
        .effective_expiry(&settings.policy, v.last_used)
        .map(|(at, _)| (at - st.keys.clock().now_coarse()).num_seconds().max(0));
    Outcome::Allowed(live, expires_in)
}

const UNAUTHORIZED_CHALLENGE: &str = "Bearer realm=\"apikeyd\", error=\"invalid_token\"";

impl Outcome {
    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Outcome::Denied(status, _) => *status,
            Outcome::BadPath(_) => StatusCode::BAD_REQUEST,
            Outcome::Allowed(..) => StatusCode::OK,
        }
    }

    /// The answer's headers besides `Content-Length: 0` and `Cache-Control:
    /// no-store`, which every answer has, to `put` as name and unencoded value (pass
    /// values through [`encode_value`]). Answers carry no body: proxies read only
    /// status and headers, and nginx closes an upstream connection whose
    /// `auth_request` answer had a body it did not read.
    pub fn headers(&self, mut put: impl FnMut(&HeaderName, &str)) {
        match self {
            Outcome::Limited(retry) => {
                put(&X_API_KEY_REASON, "RATE_LIMITED");
                put(
                    &header::RETRY_AFTER,
                    itoa::Buffer::new().format(retry.as_secs()),
                );
            }
            Outcome::Denied(status, reason) => {
                put(&X_API_KEY_REASON, reason);
                if *status == StatusCode::UNAUTHORIZED {
                    put(&header::WWW_AUTHENTICATE, UNAUTHORIZED_CHALLENGE);
                }
            }
            Outcome::BadPath(_) => put(&X_API_KEY_REASON, "BAD_PATH"),
            Outcome::Allowed(live, expires_in) => {
                let mut id_buf = uuid::Uuid::encode_buffer();
                let id: &str = live.id.hyphenated().encode_lower(&mut id_buf);
                put(&X_API_KEY_ID, id);
                put(&X_API_KEY_NAME, &live.name);
                put(&X_API_KEY_OWNER, &live.owner);
                match &live.scopes[..] {
                    [] => put(&X_API_KEY_SCOPES, ""),
                    [one] => put(&X_API_KEY_SCOPES, one),
                    many => put(&X_API_KEY_SCOPES, &many.join(",")),
                }
                if let Some(secs) = expires_in {
                    put(&X_API_KEY_EXPIRES_IN, itoa::Buffer::new().format(*secs));
                }
                for (t, value) in live.rendered_headers(id) {
                    if let Ok(name) = HeaderName::from_bytes(t.name.as_bytes()) {
                        put(&name, &value);
                    }
                }
            }
        }
    }

    /// The answer as a response for hyper.
    pub fn response(&self) -> Response {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, ZERO);
        h.insert(header::CACHE_CONTROL, NO_STORE);
        self.headers(|name, value| {
            h.insert(name.clone(), header_value(value));
        });
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cfg(trusted: &[&str]) -> AuthConfig {
        AuthConfig {
            trusted_proxies: trusted
                .iter()
                .map(|t| crate::config::ipfilter::parse(t).unwrap())
                .collect(),
            ..AuthConfig::default()
        }
    }

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_headers_only_from_trusted_peers() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = hm(&[("x-forwarded-for", "203.0.113.9, 10.0.0.5")]);
        assert_eq!(
            client_ip(&cfg(&[]), ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
        let c = cfg(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(client_ip(&c, ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // A client-supplied leftmost entry is ignored when an untrusted hop is closer.
        let h = hm(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(client_ip(&c, ip("127.0.0.1"), &h), ip("203.0.113.9"));
        let h = hm(&[("x-real-ip", "203.0.113.7")]);
        assert_eq!(client_ip(&c, ip("127.0.0.1"), &h), ip("203.0.113.7"));
        assert_eq!(
            client_ip(&c, ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn key_sources() {
        let c = AuthPlan::new(AuthConfig::default());
        let uri: Uri = "/x?api_key=q".parse().unwrap();
        let key = |c: &AuthPlan, h: &HeaderMap, q: Option<&str>| {
            presented_key(c, h, q).map(Cow::into_owned)
        };
        assert_eq!(
            key(&c, &hm(&[("authorization", "Bearer abc")]), uri.query()),
            Some("abc".into())
        );
        assert_eq!(
            key(&c, &hm(&[("authorization", "Basic abc")]), uri.query()),
            None
        );
        assert_eq!(
            key(&c, &hm(&[("x-api-key", "k")]), uri.query()),
            Some("k".into())
        );
        assert_eq!(
            key(&c, &HeaderMap::new(), uri.query()),
            None,
            "query not read by default"
        );
        assert_eq!(
            key(&c, &hm(&[("x-forwarded-uri", "/a?api_key=q")]), None),
            None,
            "query not read by default"
        );
        let c = AuthPlan::new(AuthConfig {
            query_param: Some("api_key".into()),
            ..AuthConfig::default()
        });
        assert_eq!(key(&c, &HeaderMap::new(), uri.query()), Some("q".into()));
    }

    /// Regression (issue 9, item 9): with `query_param` set, a key in the query of
    /// the client's URL was not found behind nginx or Caddy, which call /v1/auth
    /// with the original URI in X-Forwarded-Uri / X-Original-URI and no query of
    /// their own. The value is percent-decoded.
    #[test]
    fn query_key_is_read_from_the_forwarded_uri() {
        let c = AuthPlan::new(AuthConfig {
            query_param: Some("api_key".into()),
            ..AuthConfig::default()
        });
        let key = |h: &HeaderMap, q: Option<&str>| presented_key(&c, h, q).map(Cow::into_owned);
        let fwd = hm(&[(
            "x-forwarded-uri",
            "/catalog/items?page=2&api_key=akd_a%2Bb%3D#f",
        )]);
        assert_eq!(key(&fwd, None), Some("akd_a+b=".into()));
        let orig = hm(&[("x-original-uri", "/x?api_key=k2")]);
        assert_eq!(key(&orig, None), Some("k2".into()));
        // /v1/auth's own query first, key headers before any query.
        assert_eq!(key(&fwd, Some("api_key=own")), Some("own".into()));
        let both = hm(&[("x-api-key", "hdr"), ("x-forwarded-uri", "/x?api_key=q")]);
        assert_eq!(key(&both, None), Some("hdr".into()));
        // Empty, absent or undecodable values present no key.
        for uri in ["/x?api_key=", "/x?other=1", "/x", "/x?api_key=%FF"] {
            assert_eq!(key(&hm(&[("x-forwarded-uri", uri)]), None), None, "{uri}");
        }
    }

    #[test]
    fn header_values_are_safe() {
        assert_eq!(
            header_value("Große Liste").to_str().unwrap(),
            "Gro%C3%9Fe Liste"
        );
        assert_eq!(header_value("a\r\nb").to_str().unwrap(), "a%0D%0Ab");
        assert_eq!(header_value("100%").to_str().unwrap(), "100%25");
    }
}
