//! `POST /v1/verify`: is this key good for this scope and client? Served on TCP and
//! on the admin socket, with failed verifications limited per caller.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth;
use super::error::{parse_body, ApiError};
use super::limits;
use super::metrics;
use super::peer;
use super::routes::Routes;
use super::state::AppState;
use crate::keys::Keys;
use crate::model::key::{rfc3339, Code};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    key: crate::keys::secret::Secret,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    ip: Option<String>,
}

/// The `/v1/verify` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyResponse {
    /// True only for `VALID`.
    pub valid: bool,
    /// The code.
    pub code: Code,
    /// Key id (known keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Key name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Hard expiry (null = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Option<String>>,
    /// Effective expiry (hard or inactivity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_expires_at: Option<Option<String>>,
    /// Response headers with templates filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Map<String, Value>>,
}

/// Verify one key and build the answer.
pub fn verify_response(
    keys: &Keys,
    key: &str,
    scope: Option<&str>,
    ip: Option<IpAddr>,
) -> VerifyResponse {
    let mut v = keys.verify(key, scope, ip);
    let found = keys.resolve(&mut v);
    let mut out = VerifyResponse {
        valid: v.code == Code::Valid,
        code: v.code,
        id: None,
        name: None,
        owner: None,
        scopes: None,
        expires_at: None,
        effective_expires_at: None,
        headers: None,
    };
    if let Some(live) = found {
        let settings = keys.settings();
        let policy = &settings.policy;
        let id = live.id.to_string();
        out.headers = Some(
            live.rendered_headers(&id)
                .into_iter()
                .map(|(t, value)| (t.name.clone(), Value::String(value)))
                .collect(),
        );
        out.effective_expires_at = Some(
            live.life
                .effective_expiry(policy, v.last_used)
                .map(|(t, _)| rfc3339(t)),
        );
        out.id = Some(id);
        out.name = Some(live.name.to_string());
        out.owner = Some(live.owner.to_string());
        out.scopes = Some(live.scopes.to_vec());
        out.expires_at = Some(live.expires_at().map(rfc3339));
    }
    out
}

/// Who is calling, as the rate limiter of `/v1/verify` sees it: the TCP peer, or on
/// the admin socket the local account.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Tcp(IpAddr),
    Local(Option<u32>),
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        Ok(match ext.get::<ConnectInfo<SocketAddr>>() {
            Some(c) => Caller::Tcp(c.0.ip()),
            // Without a TCP peer this is the admin socket; a peer whose uid the
            // kernel did not give shares one bucket with every other such peer.
            None => Caller::Local(
                ext.get::<ConnectInfo<peer::UnixPeer>>()
                    .and_then(|c| c.0.uid),
            ),
        })
    }
}

/// The client a `/v1/verify` failure is charged to. A body `ip` names the end client
/// for the key's IP filter whoever sends it, but for the rate limit only a trusted
/// proxy is believed (as for `X-Forwarded-For`): anyone else naming an address
/// could lock that client out, or dodge its own limit with a new address per call.
fn verify_client(
    st: &AppState,
    caller: Caller,
    named: Option<IpAddr>,
    headers: &HeaderMap,
) -> limits::Client {
    match caller {
        Caller::Tcp(peer) => {
            let plan = st.edge.auth();
            let trusted = crate::config::ipfilter::allows_any(&plan.config.trusted_proxies, peer);
            let ip = match named {
                Some(ip) if trusted => ip,
                _ => auth::client_ip(&plan.config, peer, headers),
            };
            st.edge.limiter.client_of(ip)
        }
        Caller::Local(uid) => limits::Client::Local(uid),
    }
}

async fn verify(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: VerifyRequest = parse_body(body)?;
    let ip = match req.ip.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<IpAddr>()
                .map_err(|_| ApiError::bad_request(format!("ip: {s:?} is not an IP address")))?,
        ),
        None => None,
    };
    let client = verify_client(&st, caller, ip, &headers);
    let now = std::time::Instant::now();
    if let Err(retry) = st.edge.limiter.check(client, now) {
        st.edge.metrics.record_rate_limited();
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many failed verifications from {client}; retry in {} s",
                retry.as_secs()
            ),
        )
        .into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(retry.as_secs()),
        );
        return Ok(r);
    }
    let started = std::time::Instant::now();
    let answer = verify_response(&st.keys, req.key.expose(), req.scope.as_deref(), ip);
    st.edge.metrics.record(
        metrics::Endpoint::Verify,
        Some(answer.code),
        started.elapsed(),
    );
    if matches!(answer.code, Code::Malformed | Code::NotFound) {
        st.edge.limiter.record_failure(client, now);
    }
    Ok(Json(answer).into_response())
}

/// The verification route, added to the public routes.
pub(crate) fn routes(r: Routes) -> Routes {
    r.add("/v1/verify", &["POST"], post(verify))
}
