//! HTTP adapters over [`crate::keys`]: verification (`POST /v1/verify`) and the admin
//! API (`/v1/admin/...`). The admin API is served on the Unix socket, where the peer's
//! Unix account (SO_PEERCRED) says who is asking, and on TCP to bearers of a key that
//! holds the `apikeyd:admin` scope. Handlers are thin: parse, call, render.

mod alerts;
pub mod auth;
mod http1;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::alerts::maintenance::MaintenanceStatus;
use crate::alerts::{AlertError, Alerts};
use crate::config::{AuthConfig, RateLimitConfig, ADMIN_SCOPE};
use crate::keys::{Actor, CreateKey, EditKey, KeyError, Keys, PageRequest};
use crate::model::key::{rfc3339, Code};

/// Shared state of every router.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The key service.
    pub keys: Arc<Keys>,
    /// Alert jobs and operator messages.
    pub alerts: Arc<Alerts>,
    /// What the maintenance jobs last did (empty until the scheduler starts).
    pub maintenance: MaintenanceStatus,
    /// Forward-auth settings, the rate limiter and the metrics.
    pub edge: Arc<Edge>,
}

impl AppState {
    /// State for `alerts` (and their keys) with these edge settings.
    pub fn new(alerts: Arc<Alerts>, auth: AuthConfig, rate_limit: RateLimitConfig) -> Self {
        Self {
            keys: alerts.keys().clone(),
            alerts,
            maintenance: MaintenanceStatus::default(),
            edge: Arc::new(Edge {
                auth: RwLock::new(Arc::new(auth::AuthPlan::new(auth))),
                limiter: limits::RateLimiter::new(rate_limit),
                metrics: metrics::Metrics::default(),
            }),
        }
    }
}

/// What the verification endpoints share besides the keys.
#[derive(Debug)]
pub struct Edge {
    auth: RwLock<Arc<auth::AuthPlan>>,
    /// Failed-verification limits.
    pub limiter: limits::RateLimiter,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
}

impl Edge {
    /// Current forward-auth settings.
    pub fn auth(&self) -> Arc<auth::AuthPlan> {
        self.auth.read().clone()
    }

    /// Replace settings on reload.
    pub fn reconfigure(&self, auth: AuthConfig, rate_limit: RateLimitConfig) {
        *self.auth.write() = Arc::new(auth::AuthPlan::new(auth));
        self.limiter.reconfigure(rate_limit);
    }
}

/// An error answered as `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with a status, a machine-readable code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    /// A 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        let (status, code) = match &e {
            KeyError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            KeyError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            KeyError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            KeyError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            KeyError::Store(_) | KeyError::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<AlertError> for ApiError {
    fn from(e: AlertError) -> Self {
        let (status, code) = match &e {
            AlertError::Key(_) => {
                if let AlertError::Key(k) = e {
                    return k.into();
                }
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            AlertError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            AlertError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AlertError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            AlertError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        };
        Self {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|e| ApiError {
        status: e.status(),
        code: "bad_body",
        message: format!("cannot read the request body: {}", e.body_text()),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON request: {e}")))
}

// ---------------------------------------------------------------- verify

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

async fn healthz(State(st): State<AppState>) -> Json<Value> {
    // Serving at all means the store is open and the keys are loaded: live and ready.
    Json(json!({"status": "ok", "live": true, "ready": true, "keys": st.keys.len()}))
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    let body = st.edge.metrics.render(&st.keys, &st.alerts);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The OpenAPI 3.1 description of the HTTP API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ---------------------------------------------------------------- admin

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    grace: Option<String>,
}

async fn whoami(Extension(actor): Extension<Actor>) -> Json<Value> {
    Json(json!({"user": actor.name, "admin": actor.admin}))
}

async fn list_keys(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: q.limit,
    };
    let list = st
        .keys
        .list_page(&actor, q.user.as_deref(), q.all.unwrap_or(false), &page)
        .await?;
    Ok(Json(
        json!({ "keys": list.items, "next_cursor": list.next_cursor }),
    ))
}

async fn create_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: CreateKey = parse_body(body)?;
    let issued = st.keys.create(&actor, req).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn import_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: CreateKey = parse_body(body)?;
    let view = st.keys.import(&actor, req).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn show_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.keys.show(&actor, &id)?).into_response())
}

async fn edit_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: EditKey = parse_body(body)?;
    Ok(Json(st.keys.edit(&actor, &id, req).await?).into_response())
}

async fn remove_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.keys.remove(&actor, &id).await?).into_response())
}

async fn disable_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.keys.set_enabled(&actor, &id, false).await?).into_response())
}

async fn enable_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.keys.set_enabled(&actor, &id, true).await?).into_response())
}

async fn rotate_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let bytes_empty = matches!(&body, Ok(b) if b.is_empty());
    let req: RotateRequest = if bytes_empty {
        RotateRequest::default()
    } else {
        parse_body(body)?
    };
    Ok(Json(st.keys.rotate(&actor, &id, req.grace.as_deref()).await?).into_response())
}

async fn audit(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: q.limit,
    };
    let entries = st.keys.audit_page(&actor, q.key.as_deref(), &page).await?;
    Ok(Json(
        json!({ "entries": entries.items, "next_cursor": entries.next_cursor }),
    ))
}

/// Routes registered together with the methods they answer, so the route table
/// can be compared with the OpenAPI document (see `route_table`).
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, &'static [&'static str])>,
}

const ANY: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl Routes {
    fn extend(self, more: impl FnOnce(Self) -> Self) -> Self {
        more(self)
    }

    fn new() -> Self {
        Self {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    fn add(
        mut self,
        path: &'static str,
        methods: &'static [&'static str],
        handler: axum::routing::MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, handler);
        self.table.push((path, methods));
        self
    }
}

fn admin_routes() -> Routes {
    Routes::new()
        .add("/v1/admin/whoami", &["GET"], get(whoami))
        .add(
            "/v1/admin/keys",
            &["GET", "POST"],
            get(list_keys).post(create_key),
        )
        .add("/v1/admin/keys/import", &["POST"], post(import_key))
        .add(
            "/v1/admin/keys/{id}",
            &["GET", "PATCH", "DELETE"],
            get(show_key).patch(edit_key).delete(remove_key),
        )
        .add("/v1/admin/keys/{id}/disable", &["POST"], post(disable_key))
        .add("/v1/admin/keys/{id}/enable", &["POST"], post(enable_key))
        .add("/v1/admin/keys/{id}/rotate", &["POST"], post(rotate_key))
        .add("/v1/admin/audit", &["GET"], get(audit))
        .extend(alerts::routes)
}

fn public_routes() -> Routes {
    Routes::new()
        .add("/v1/verify", &["POST"], post(verify))
        .add("/healthz", &["GET"], get(healthz))
        .add("/metrics", &["GET"], get(metrics_text))
        .add("/openapi.json", &["GET"], get(openapi))
}

/// Forward-auth, served on TCP only: it judges the client by the TCP peer (and
/// the addresses a trusted proxy names), which a socket caller does not have.
fn forward_auth_routes() -> Routes {
    // axum's `{*path}` does not match an empty tail: `/v1/auth/` (Envoy's request
    // for the site root) needs its own route.
    Routes::new()
        .add("/v1/auth", ANY, any(auth::auth))
        .add("/v1/auth/", ANY, any(auth::auth_path))
        .add("/v1/auth/{*path}", ANY, any(auth::auth_path))
}

/// Every path served on TCP (OpenAPI syntax: `{*path}` becomes `{path}`) with its
/// methods; the socket serves the same less forward-auth.
pub fn route_table() -> Vec<(String, Vec<&'static str>)> {
    public_routes()
        .table
        .into_iter()
        .chain(forward_auth_routes().table)
        .chain(admin_routes().table)
        .map(|(p, m)| (p.replace("{*", "{"), m.to_vec()))
        .collect()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "no_route",
        message: "no such endpoint".into(),
    }
}

/// The router served on TCP: verification, health, and the admin API for bearers of
/// a key with the `apikeyd:admin` scope.
pub fn tcp_router(state: AppState, max_body: usize) -> Router {
    let admin = admin_routes()
        .router
        .route_layer(middleware::from_fn_with_state(state.clone(), bearer_actor));
    public_routes()
        .router
        .merge(forward_auth_routes().router)
        .merge(admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The router served on the admin Unix socket: identity from SO_PEERCRED.
pub fn unix_router(state: AppState, max_body: usize) -> Router {
    let admin = admin_routes()
        .router
        .route_layer(middleware::from_fn_with_state(state.clone(), peer_actor));
    public_routes()
        .router
        .merge(admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: message.to_owned(),
    }
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"apikeyd\""),
    );
    r
}

async fn bearer_actor(
    State(st): State<AppState>,
    headers: HeaderMap,
    mut req: Request,
    next: Next,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return unauthorized(
            "the admin API on TCP needs Authorization: Bearer <key with the apikeyd:admin scope>",
        );
    };
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let mut v = st.keys.verify(token, Some(ADMIN_SCOPE), client_ip);
    let Some(live) = st.keys.resolve(&mut v).filter(|_| v.code == Code::Valid) else {
        return ApiError {
            status: if v.code == Code::InsufficientScope {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            },
            code: "unauthorized",
            message: format!("admin key refused: {}", v.code.as_str()),
        }
        .into_response();
    };
    let settings = st.keys.settings();
    let admin = settings
        .directory
        .rights(&live.owner)
        .is_some_and(|r| r.manage_all_keys);
    req.extensions_mut().insert(Actor {
        name: live.owner.to_string(),
        admin,
    });
    next.run(req).await
}

async fn peer_actor(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<peer::UnixPeer>>()
        .map(|c| c.0.clone())
    else {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "cannot identify the peer of this connection".into(),
        }
        .into_response();
    };
    let settings = st.keys.settings();
    match peer::actor_for(&peer, &settings.directory) {
        Ok(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(message) => {
            tracing::warn!(uid = ?peer.uid, "admin socket peer refused");
            ApiError {
                status: StatusCode::FORBIDDEN,
                code: "forbidden",
                message,
            }
            .into_response()
        }
    }
}
