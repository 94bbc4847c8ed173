//! Forward-auth for reverse proxies: nginx `auth_request`, Traefik ForwardAuth and
//! Envoy `ext_authz` (HTTP mode) ask `/v1/auth` about every request. The answer is
//! 200 with the key's identity in `X-Api-Key-*` headers, or 401/403 with
//! `X-Api-Key-Reason`. Nothing is cached: a disabled key is refused on the next call.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::metrics::Endpoint;
use super::AppState;
use crate::config::AuthConfig;
use crate::keys::headers;
use crate::keys::model::{rfc3339, Code};

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

/// The client address: the peer, or what a trusted proxy says the client was.
pub fn client_ip(cfg: &AuthConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: &IpAddr| crate::keys::ipfilter::allows_any(&cfg.trusted_proxies, *ip);
    if !trusted(&peer) {
        return peer;
    }
    // X-Forwarded-For: walk from the right (closest hop) past our own proxies.
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !trusted(ip)) {
        return *ip;
    }
    if let Some(first) = forwarded.first() {
        return *first;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(peer)
}

fn presented_key<'a>(cfg: &AuthConfig, headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    for name in &cfg.key_headers {
        let Some(v) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let v = v.trim();
        if name == "authorization" {
            if let Some((scheme, token)) = v.split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                    return Some(token.trim());
                }
            }
        } else if !v.is_empty() {
            return Some(v);
        }
    }
    let param = cfg.query_param.as_deref()?;
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == param && !v.is_empty()).then_some(v)
    })
}

/// A header value from free text: visible ASCII is kept, anything else (and `%`)
/// is percent-encoded as UTF-8 so names like "Große Liste" survive.
pub fn header_value(s: &str) -> HeaderValue {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b == b' ' || b.is_ascii_graphic()) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Answers carry no body: proxies read only status and headers, and nginx closes an
/// upstream connection whose `auth_request` answer had a body it did not read.
fn deny(status: StatusCode, reason: &'static str) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert("x-api-key-reason", HeaderValue::from_static(reason));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"apikeyd\", error=\"invalid_token\""),
        );
    }
    r
}

/// `/v1/auth` (any method).
pub async fn auth(
    State(st): State<AppState>,
    PeerIp(peer): PeerIp,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    check(&st, peer, &uri, &headers, None)
}

/// `/v1/auth/{*path}`: Envoy's ext_authz appends the original path to the prefix.
pub async fn auth_path(
    State(st): State<AppState>,
    PeerIp(peer): PeerIp,
    Path(rest): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let original = format!("/{rest}");
    check(&st, peer, &uri, &headers, Some(&original))
}

fn check(
    st: &AppState,
    peer: Option<IpAddr>,
    uri: &Uri,
    headers: &HeaderMap,
    path: Option<&str>,
) -> Response {
    let cfg = st.edge.auth();
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
            .insert("x-api-key-reason", HeaderValue::from_static("MALFORMED"));
        return r;
    }
    let peer = peer.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let client = client_ip(&cfg, peer, headers);
    let now = Instant::now();
    if let Err(retry) = st.edge.limiter.check(client, now) {
        st.edge.metrics.record_rate_limited();
        let mut r = deny(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry.as_secs()));
        return r;
    }
    let Some(key) = presented_key(&cfg, headers, uri) else {
        st.edge.metrics.record(Endpoint::Auth, None, now.elapsed());
        return deny(StatusCode::UNAUTHORIZED, "MISSING");
    };
    let original_uri = cfg
        .uri_headers
        .iter()
        .find_map(|h| headers.get(h.as_str()).and_then(|v| v.to_str().ok()))
        .or(path);
    let route = original_uri.and_then(|u| cfg.route_for(u));
    // A scope named by the proxy adds to the route's scope; it can never replace it,
    // so a client-supplied header cannot weaken what a route requires.
    let header_scope = headers
        .get(cfg.scope_header.as_str())
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
    let v = st.keys.verify_route(
        key,
        &scopes[..n],
        Some(client),
        route.map(|r| r.prefix.as_str()),
    );
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
    let Some(live) = (v.code == Code::Valid)
        .then(|| st.keys.key_of(&v))
        .flatten()
    else {
        return deny(status, v.code.as_str());
    };
    let id = live.id.to_string();
    let expires = live.expires_at().map(rfc3339);
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-api-key-id", header_value(&id));
    h.insert("x-api-key-name", header_value(&live.name));
    h.insert("x-api-key-owner", header_value(&live.owner));
    h.insert("x-api-key-scopes", header_value(&live.scopes.join(",")));
    let settings = st.keys.settings();
    if let Some((at, _)) = live.life.effective_expiry(&settings.policy, v.last_used) {
        let secs = (at - st.keys.clock().now()).num_seconds().max(0);
        h.insert("x-api-key-expires-in", HeaderValue::from(secs));
    }
    let values = headers::Values {
        id: &id,
        name: &live.name,
        owner: &live.owner,
        expires_at: expires.as_deref().unwrap_or(""),
    };
    for t in live.headers() {
        if let Ok(name) = HeaderName::from_bytes(t.name.as_bytes()) {
            h.insert(name, header_value(&t.render(&values)));
        }
    }
    r
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
        let c = AuthConfig::default();
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
        let c = AuthConfig {
            query_param: Some("api_key".into()),
            ..AuthConfig::default()
        };
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
