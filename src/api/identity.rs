//! Who is calling the admin API: on TCP the owner of a bearer key with the
//! `apikeyd:admin` scope, on the admin socket the local account (SO_PEERCRED)
//! mapped to a user. Either becomes the request's [`Actor`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::peer;
use super::state::AppState;
use crate::config::ADMIN_SCOPE;
use crate::keys::Actor;
use crate::model::key::Code;

fn unauthorized(message: &str) -> Response {
    let mut r =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned()).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"apikeyd\""),
    );
    r
}

/// The admin routes' guard on TCP: the caller is the owner of the bearer key,
/// which must hold the `apikeyd:admin` scope; without a bearer, the user of the
/// console session the cookie names.
pub(crate) async fn bearer_actor(
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
        if super::console::has_cookie(&st, &headers) {
            return super::console::cookie_actor(st, req, next).await;
        }
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
        return ApiError::new(
            if v.code == Code::InsufficientScope {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            },
            "unauthorized",
            format!("admin key refused: {}", v.code.as_str()),
        )
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

/// The admin routes' guard on the admin socket: the caller is the local account,
/// mapped to a user.
pub(crate) async fn peer_actor(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<peer::UnixPeer>>()
        .map(|c| c.0.clone())
    else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "cannot identify the peer of this connection".into(),
        )
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
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
        }
    }
}
