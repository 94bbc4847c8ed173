//! Forward-auth for reverse proxies: nginx `auth_request`, Traefik ForwardAuth and
//! Envoy `ext_authz` (HTTP mode) ask `/v1/auth` about every request. The answer is
//! 200 with the key's identity in `X-Api-Key-*` headers, or 401/403 with
//! `X-Api-Key-Reason`. Nothing is cached: a disabled key is refused on the next call.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::metrics::Endpoint;
use super::AppState;
use crate::config::AuthConfig;
use crate::keys::model::Code;

/// The TCP peer's address, when there is one (not on the Unix socket).
#[derive(Debug, Clone, Copy)]
pub struct PeerIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

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

/// [`AuthConfig`] with its header names parsed once, at start and on reload, rather
/// than on every request.
#[derive(Debug)]
pub struct AuthPlan {
    /// The settings.
    pub config: AuthConfig,
    /// `key_headers`, each with whether it is read as `Bearer KEY`.
    key_headers: Vec<(HeaderName, bool)>,
    uri_headers: Vec<HeaderName>,
    scope_header: Option<HeaderName>,
}

impl AuthPlan {
    /// Parse the header names of `config`. A name that is not a valid header name
    /// (the configuration refuses those) can never be present in a request, so it is
    /// left out.
    pub fn new(config: AuthConfig) -> Self {
        let parse = |n: &String| HeaderName::from_bytes(n.as_bytes()).ok();
        Self {
            key_headers: config
                .key_headers
                .iter()
                .filter_map(|n| parse(n).map(|h| (h, n == "authorization")))
                .collect(),
            uri_headers: config.uri_headers.iter().filter_map(parse).collect(),
            scope_header: parse(&config.scope_header),
            config,
        }
    }
}

/// The client address: the peer, or what a trusted proxy says the client was.
pub fn client_ip(cfg: &AuthConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: &IpAddr| crate::keys::ipfilter::allows_any(&cfg.trusted_proxies, *ip);
    if !trusted(&peer) {
        return peer;
    }
    // X-Forwarded-For: walk from the right (closest hop) past our own proxies, i.e.
    // take the last untrusted address; if every hop is trusted, the first one.
    let mut first = None;
    let mut last_untrusted = None;
    for ip in headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
    {
        first.get_or_insert(ip);
        if !trusted(&ip) {
            last_untrusted = Some(ip);
        }
    }
    if let Some(ip) = last_untrusted.or(first) {
        return ip;
    }
    headers
        .get(X_REAL_IP)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(peer)
}

fn presented_key<'a>(plan: &AuthPlan, headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    for (name, bearer) in &plan.key_headers {
        let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let v = v.trim();
        if *bearer {
            if let Some((scheme, token)) = v.split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                    return Some(token.trim());
                }
            }
        } else if !v.is_empty() {
            return Some(v);
        }
    }
    let param = plan.config.query_param.as_deref()?;
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == param && !v.is_empty()).then_some(v)
    })
}

/// Whether a header value can carry `b` as is.
fn plain(b: u8) -> bool {
    (b == b' ' || b.is_ascii_graphic()) && b != b'%'
}

/// A header value from free text: visible ASCII is kept, anything else (and `%`)
/// is percent-encoded as UTF-8 so names like "Große Liste" survive.
pub fn header_value(s: &str) -> HeaderValue {
    if s.bytes().all(plain) {
        return HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(s.len() + 16);
    for b in s.bytes() {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A bodiless answer. `Content-Length: 0` is set here, as the router would, so that
/// the answer is the same whether or not it went through the router.
fn empty(status: StatusCode, headers: usize) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.reserve(headers + 2);
    h.insert(header::CONTENT_LENGTH, ZERO);
    h.insert(header::CACHE_CONTROL, NO_STORE);
    r
}

/// Answers carry no body: proxies read only status and headers, and nginx closes an
/// upstream connection whose `auth_request` answer had a body it did not read.
fn deny(status: StatusCode, reason: &'static str) -> Response {
    let mut r = empty(status, 3);
    let h = r.headers_mut();
    h.insert(X_API_KEY_REASON, HeaderValue::from_static(reason));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"apikeyd\", error=\"invalid_token\""),
        );
    }
    r
}

fn peer_of(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// `/v1/auth` (any method).
pub async fn auth(State(st): State<AppState>, req: Request) -> Response {
    check(&st, peer_of(&req), req.uri(), req.headers(), None)
}

/// `/v1/auth/{*path}`: Envoy's ext_authz appends the original path to the prefix.
pub async fn auth_path(
    State(st): State<AppState>,
    Path(rest): Path<String>,
    req: Request,
) -> Response {
    let original = format!("/{rest}");
    check(
        &st,
        peer_of(&req),
        req.uri(),
        req.headers(),
        Some(&original),
    )
}

/// The forward-auth decision for one request: `peer` is the TCP peer (none on the
/// Unix socket), `path` the original path when it came in the URL.
pub fn check(
    st: &AppState,
    peer: Option<IpAddr>,
    uri: &Uri,
    headers: &HeaderMap,
    path: Option<&str>,
) -> Response {
    let plan = st.edge.auth();
    let cfg = &plan.config;
    let size: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > cfg.max_header_bytes {
        let mut r = super::ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "request headers total {size} bytes; the limit is {} (auth.max_header_bytes)",
                cfg.max_header_bytes
            ),
        )
        .into_response();
        r.headers_mut()
            .insert(X_API_KEY_REASON, HeaderValue::from_static("MALFORMED"));
        return r;
    }
    let peer = peer.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let client = client_ip(cfg, peer, headers);
    let now = Instant::now();
    if let Err(retry) = st.edge.limiter.check(client, now) {
        st.edge.metrics.record_rate_limited();
        let mut r = deny(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry.as_secs()));
        return r;
    }
    let Some(key) = presented_key(&plan, headers, uri) else {
        st.edge.metrics.record(Endpoint::Auth, None, now.elapsed());
        return deny(StatusCode::UNAUTHORIZED, "MISSING");
    };
    let original_uri = plan
        .uri_headers
        .iter()
        .find_map(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .or(path);
    let route = original_uri.and_then(|u| cfg.route_for(u));
    // A scope named by the proxy adds to the route's scope; it can never replace it,
    // so a client-supplied header cannot weaken what a route requires.
    let header_scope = plan
        .scope_header
        .as_ref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
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
        key,
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
        Code::Disabled | Code::IpNotAllowed | Code::InsufficientScope => StatusCode::FORBIDDEN,
    };
    let Some(live) = live else {
        return deny(status, v.code.as_str());
    };
    let mut r = empty(StatusCode::OK, 5 + live.headers().len());
    let h = r.headers_mut();
    let mut id_buf = uuid::Uuid::encode_buffer();
    let id: &str = live.id.hyphenated().encode_lower(&mut id_buf);
    h.insert(X_API_KEY_ID, header_value(id));
    h.insert(X_API_KEY_NAME, header_value(&live.name));
    h.insert(X_API_KEY_OWNER, header_value(&live.owner));
    h.insert(X_API_KEY_SCOPES, scopes_value(&live.scopes));
    let settings = st.keys.settings();
    if let Some((at, _)) = live.life.effective_expiry(&settings.policy, v.last_used) {
        let secs = (at - st.keys.clock().now()).num_seconds().max(0);
        h.insert(X_API_KEY_EXPIRES_IN, HeaderValue::from(secs));
    }
    for (t, value) in live.rendered_headers(id) {
        if let Ok(name) = HeaderName::from_bytes(t.name.as_bytes()) {
            h.insert(name, header_value(&value));
        }
    }
    r
}

/// `X-Api-Key-Scopes`: the scopes joined with commas, encoded as [`header_value`].
fn scopes_value(scopes: &[String]) -> HeaderValue {
    match scopes {
        [] => HeaderValue::from_static(""),
        [one] => header_value(one),
        many => header_value(&many.join(",")),
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
                .map(|t| crate::keys::ipfilter::parse(t).unwrap())
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
        assert_eq!(
            presented_key(&c, &hm(&[("authorization", "Bearer abc")]), &uri),
            Some("abc")
        );
        assert_eq!(
            presented_key(&c, &hm(&[("authorization", "Basic abc")]), &uri),
            None
        );
        assert_eq!(
            presented_key(&c, &hm(&[("x-api-key", "k")]), &uri),
            Some("k")
        );
        assert_eq!(
            presented_key(&c, &HeaderMap::new(), &uri),
            None,
            "query not read by default"
        );
        let c = AuthPlan::new(AuthConfig {
            query_param: Some("api_key".into()),
            ..AuthConfig::default()
        });
        assert_eq!(presented_key(&c, &HeaderMap::new(), &uri), Some("q"));
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
