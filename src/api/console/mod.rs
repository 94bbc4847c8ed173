//! The web console: static pages under `/console/` on the TCP listener, the
//! login that turns a one-time link into a cookie session, and that session as
//! one more way to authenticate to the admin API (see `cookie_actor`), as its
//! user, through the admin API's own handlers. Links are made on the admin
//! socket only (`POST /v1/admin/console-link`), where SO_PEERCRED says who asks.

pub mod sessions;

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_body, ApiError, ApiResult};
use super::peer::UnixPeer;
use super::state::AppState;
use crate::config::ipfilter::allows_any;
use crate::config::{valid_name, Directory};
use crate::keys::Actor;
pub use sessions::Sessions;
use sessions::{NewSession, Proxied, Refusal, SessionInfo, Via};

/// The session cookie's name.
const COOKIE: &str = "apikeyd_session";
/// The header every cookie-authenticated request carries its CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";

/// Every console response: no script or style but the console's own files, no
/// framing, no caching, no sniffing, no Referer.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// One embedded console file: its name under `/console/`, its type, its bytes.
macro_rules! embedded {
    ($name:literal, $kind:expr) => {
        ($name, $kind, include_bytes!(concat!("assets/", $name)))
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The console's files, embedded: no build step, nothing read at run time.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    embedded!("console.js", JS),
    embedded!("api.js", JS),
    embedded!("dom.js", JS),
    embedded!("keys.js", JS),
    embedded!("admin.js", JS),
    embedded!("console.css", "text/css; charset=utf-8"),
    embedded!("icon.svg", "image/svg+xml"),
];

async fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(*name, HeaderValue::from_static(value));
    }
    r
}

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => {
            ([(header::CONTENT_TYPE, *kind)], Bytes::from_static(body)).into_response()
        }
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            "no such console file".into(),
        )
        .into_response(),
    }
}

async fn index() -> Response {
    asset("")
}

async fn file(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    asset(&name)
}

/// The values of the request's session cookies. There can be several (another
/// server on the host, or a page under another path, set one too): each is
/// tried, not the first only.
fn session_cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// The session one of the request's cookies names with the request's CSRF
/// token, and that cookie; else why the first was refused. `peer` is the TCP
/// peer, for the sessions a proxy login made.
fn session_of<'h>(
    st: &AppState,
    headers: &'h HeaderMap,
    peer: Option<IpAddr>,
) -> Result<(&'h str, SessionInfo), Refusal> {
    let directory = &st.keys.settings().directory;
    let proxied = proxied(st, headers, peer);
    let mut first = None;
    for id in session_cookies(headers) {
        match st
            .console
            .authenticate(id, csrf_of(headers), proxied, directory)
        {
            Ok(info) => return Ok((id, info)),
            Err(r) => {
                first.get_or_insert(r);
            }
        }
    }
    Err(first.unwrap_or(Refusal::NoSession))
}

/// The request's TCP peer (none on the admin socket).
fn peer_of(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Who the authenticating proxy says makes the request: its user header is
/// believed only with proxy login on, from a peer in `[auth] trusted_proxies`
/// (read now: a reload may change them), and with the proxy's secret in
/// `proxy_secret_header` (the peer address alone proves nothing on a shared
/// host: any local account can connect from any loopback address). Exactly one
/// of each header counts; two could be one from the client the proxy failed
/// to remove.
fn proxied<'h>(st: &AppState, headers: &'h HeaderMap, peer: Option<IpAddr>) -> Proxied<'h> {
    let config = st.console.config();
    let Some(name) = config.proxy_user_header.as_deref() else {
        return Proxied::Untrusted;
    };
    let trusted = peer.is_some_and(|ip| allows_any(&st.edge.auth().config.trusted_proxies, ip))
        && only(headers, &config.proxy_secret_header)
            .is_some_and(|v| st.console.is_proxy_secret(v.as_bytes()));
    if !trusted {
        return Proxied::Untrusted;
    }
    let user = only(headers, name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|u| !u.is_empty());
    Proxied::Trusted(user)
}

/// The value of header `name` when the request has exactly one.
fn only<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// A login as the user the authenticating proxy names. Its value is logged only
/// when it is a valid user name (letters, digits, `-_.`): never raw.
fn proxy_login(
    st: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    directory: &Directory,
) -> Result<NewSession, Refusal> {
    let Some(header) = st.console.config().proxy_user_header.as_deref() else {
        return Err(Refusal::ProxyOff);
    };
    let refusal = match proxied(st, headers, peer) {
        Proxied::Untrusted => Refusal::ProxyUntrusted,
        Proxied::Trusted(None) => Refusal::ProxyNoUser(header.to_owned()),
        Proxied::Trusted(Some(user)) if valid_name(user) => {
            let new = st.console.proxy_login(user, directory);
            if let Err(Refusal::ProxyUnknownUser(_)) = &new {
                tracing::debug!(peer = ?peer, user = %user, header, "console proxy login refused: the user is not configured");
            }
            return new;
        }
        Proxied::Trusted(Some(_)) => Refusal::ProxyUnknownUser(header.to_owned()),
    };
    // Debug only: anyone who can connect could otherwise fill the log.
    tracing::debug!(peer = ?peer, header, reason = %refusal, "console proxy login refused");
    Err(refusal)
}

/// The CSRF token a request sends.
fn csrf_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())
}

/// Defence in depth beside the token: a request the browser says comes from
/// another site (`Sec-Fetch-Site`), or from another origin (`Origin`, which also
/// tells another port of the same host apart), is refused. Requests without
/// these headers (not from a browser) pass: the token protects those.
fn foreign(st: &AppState, headers: &HeaderMap) -> Option<ApiError> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    let (site, origin, host) = (
        text("sec-fetch-site"),
        text(header::ORIGIN.as_str()),
        text(header::HOST.as_str()),
    );
    let site_ok = site.is_none_or(|s| matches!(s, "same-origin" | "none"));
    let origin_ok = origin.is_none_or(|o| {
        // Ours: the origin links are made with, or (a listener on every
        // address, reached by any of its names) the host the browser asked.
        let own = st.console.origin();
        let scheme = own
            .as_deref()
            .and_then(|o| o.split_once("://"))
            .map_or("http", |(s, _)| s);
        Some(o) == own.as_deref() || host.is_some_and(|h| o == format!("{scheme}://{h}"))
    });
    if !site_ok || !origin_ok {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "the console answers its own page only (this request came from another site or origin)"
                .into(),
        ));
    }
    // A browser's request (it says where it comes from) must also have asked
    // for one of our names: a page whose host name an attacker points at this
    // address (DNS rebinding) is "same-origin" with itself, Origin = Host.
    let from_browser = site.is_some() || origin.is_some();
    match host {
        Some(h) if from_browser && !own_host(st, h) => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "the console answers only at its own address: open it at [console] public_url, or at the listener's IP address or localhost"
                .into(),
        )),
        _ => None,
    }
}

/// Whether `host` (a Host header: name or address, and a port) is one the
/// console is served at: an IP address, `localhost`, or `public_url`'s host.
/// None of these can be a name an attacker's DNS answers for.
fn own_host(st: &AppState, host: &str) -> bool {
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || st
            .console
            .config()
            .public_url
            .as_ref()
            .and_then(|u| u.host_str())
            .is_some_and(|h| h.eq_ignore_ascii_case(name))
}

fn refused(r: &Refusal) -> ApiError {
    let (status, code) = match r {
        Refusal::CsrfMissing | Refusal::CsrfWrong => (StatusCode::FORBIDDEN, "csrf"),
        Refusal::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Refusal::LinkUnknown
        | Refusal::LinkExpired(_)
        | Refusal::ProxyOff
        | Refusal::ProxyUntrusted
        | Refusal::ProxyNoUser(_) => (StatusCode::UNAUTHORIZED, "console_link"),
        Refusal::ProxyUnknownUser(_) => (StatusCode::FORBIDDEN, "forbidden"),
        Refusal::NoSession
        | Refusal::Idle(_)
        | Refusal::Over(_)
        | Refusal::UserGone
        | Refusal::ProxyChanged => (StatusCode::UNAUTHORIZED, "console_session"),
    };
    ApiError::new(status, code, r.to_string())
}

/// The cookie that holds `value` (empty and expired: the cookie removed), sent
/// only under the console's public path.
fn cookie(st: &AppState, value: &str) -> HeaderValue {
    let path = st.console.config().cookie_path();
    let mut c = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path={path}");
    if value.is_empty() {
        c.push_str("; Max-Age=0");
    }
    if st.console.config().secure_cookie() {
        c.push_str("; Secure");
    }
    // Hex and fixed words only: always a valid header value.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What the page learns about its session; never its token, which only the
/// login answers (`GET` would give it to anyone holding the cookie).
fn session_json(info: &SessionInfo) -> serde_json::Value {
    json!({
        "user": info.actor.name,
        "admin": info.actor.admin,
        "expires_at": info.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// A login: a link's token, or `proxy: true` (the user the authenticating
/// proxy names).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: Option<String>,
    #[serde(default)]
    proxy: bool,
}

/// `POST /console/session`: use a link's token, or the authenticating proxy's
/// word; answers the session and sets its cookie. Only JSON, which a
/// cross-site form cannot send.
async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "send the login as application/json".into(),
        ));
    }
    if let Some(e) = foreign(&st, &headers) {
        return Err(e);
    }
    let req: Login = parse_body(body)?;
    let peer = peer_of(&extensions);
    let settings = st.keys.settings();
    let directory = &settings.directory;
    let (new, how) = match (req.token, req.proxy) {
        (Some(token), false) => (st.console.login(&token, directory), "link"),
        (None, true) => (proxy_login(&st, &headers, peer, directory), "proxy"),
        _ => {
            return Err(ApiError::bad_request(
                "send {\"token\": \"...\"} from a console link, or {\"proxy\": true} behind an authenticating proxy",
            ))
        }
    };
    let new = new.map_err(|r| refused(&r))?;
    tracing::info!(user = %new.info.actor.name, how, peer = peer.map(tracing::field::display), "console login");
    // A new login replaces the page's session: the page sent that session's
    // token (the cookie alone must not end someone's session).
    if let Ok((old, _)) = session_of(&st, &headers, peer) {
        st.console.logout(old);
    }
    let mut answer = session_json(&new.info);
    answer["csrf_token"] = new.csrf.expose().into();
    let mut r = Json(answer).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie(&st, new.id.expose()));
    Ok(r)
}

/// `GET /console/session`: the session the cookie and the token name (the
/// page reloaded, its token in `sessionStorage`).
async fn current(
    State(st): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
) -> ApiResult<Response> {
    if let Some(e) = foreign(&st, &headers) {
        return Err(e);
    }
    let (_, info) = session_of(&st, &headers, peer_of(&extensions)).map_err(|r| refused(&r))?;
    Ok(Json(session_json(&info)).into_response())
}

/// `DELETE /console/session`: log out (with the CSRF token, as every change).
async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
) -> ApiResult<Response> {
    if let Some(e) = foreign(&st, &headers) {
        return Err(e);
    }
    match session_of(&st, &headers, peer_of(&extensions)) {
        Ok((id, info)) => {
            st.console.logout(id);
            tracing::info!(user = %info.actor.name, "console logout");
        }
        Err(r @ (Refusal::CsrfMissing | Refusal::CsrfWrong)) => return Err(refused(&r)),
        // Ended already, or never: the cookie goes all the same.
        Err(_) => {}
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, cookie(&st, ""));
    Ok(r)
}

/// The console's API route and its methods, for the route table (the pages are
/// not in the OpenAPI document).
pub(crate) const SESSION_ROUTE: (&str, &[&str]) = ("/console/session", &["GET", "POST", "DELETE"]);

/// The console's pages and session endpoints (TCP only, when `[console]` is on).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("console/") }),
        )
        .route("/console/", get(index))
        .route(SESSION_ROUTE.0, get(current).post(login).delete(logout))
        .route("/console/{*name}", get(file))
        .layer(middleware::map_response(secure))
}

/// `POST /v1/admin/console-link`: a one-time login link for the caller, on the
/// admin socket only (a TCP bearer cannot turn a key into a browser session).
pub(crate) async fn link(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    req: Request,
) -> ApiResult<Response> {
    let Some(peer) = req.extensions().get::<ConnectInfo<UnixPeer>>() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "console links are made on the admin socket only (apikeyctl console-link)".into(),
        ));
    };
    if !st.console.config().enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "console_off",
            "the web console is off: set [console] enabled = true (it is on by default only when [server] listen is a loopback address)".into(),
        ));
    }
    // A non-root peer has an account name here: the admin socket mapped it to
    // `actor` through that name.
    let via = match &peer.0.account {
        _ if peer.0.uid == Some(0) => Via::Root,
        account => Via::Account(account.clone().unwrap_or_default()),
    };
    let name = actor.name.clone();
    let new = st.console.issue_link(actor, via).map_err(|r| refused(&r))?;
    tracing::info!(user = %name, "console link issued");
    Ok(Json(json!({
        "url": new.url.expose(),
        "user": name,
        "expires_at": new.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .into_response())
}

/// The admin API's guard for a request without `Authorization` that carries the
/// console's cookie (see [`has_cookie`]): the session's user is the actor, if the request also
/// carries the session's CSRF token (any method: the cookie alone is no
/// session). Answers are not cached or sniffed.
pub(crate) async fn cookie_actor(st: AppState, mut req: Request, next: Next) -> Response {
    let checked = if let Some(e) = foreign(&st, req.headers()) {
        Err(e)
    } else {
        session_of(&st, req.headers(), peer_of(req.extensions()))
            .map(|(_, info)| info)
            .map_err(|r| refused(&r))
    };
    let mut r = match checked {
        Ok(info) => {
            req.extensions_mut().insert(info.actor);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Whether the admin API's guard should take a request to [`cookie_actor`]: the
/// console is on and the request carries a session cookie.
pub(crate) fn has_cookie(st: &AppState, headers: &HeaderMap) -> bool {
    st.console.config().enabled && session_cookies(headers).next().is_some()
}
