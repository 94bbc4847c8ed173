//! HTTP adapters over [`crate::keys`]: verification (`POST /v1/verify`) and the admin
//! API (`/v1/admin/...`). The admin API is served on the Unix socket, where the peer's
//! Unix account (SO_PEERCRED) says who is asking, and on TCP to bearers of a key that
//! holds the `apikeyd:admin` scope. Handlers are thin: parse, call, render.
//!
//! This file only puts the routers together. The files import one another, never
//! this one: what handlers share lives in `state`, `error` and `routes`;
//! handlers in `verify`, `status`, `admin` and `alerts` (the admin routes'
//! identity checks in `identity`); forward-auth in `auth` with its fast path in
//! `http1`; the listeners in `server`, with `connections` and `lifetime`.

mod admin;
mod alerts;
pub mod auth;
pub mod backup;
mod connections;
pub mod console;
mod edge;
mod error;
mod http1;
#[cfg(feature = "fuzzing")]
pub(crate) use http1::harness::fast_path_agrees_with_hyper;
mod identity;
mod lifetime;
pub mod limits;
pub mod metrics;
pub mod peer;
mod plan;
mod routes;
pub mod server;
mod state;
mod status;
mod verify;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::any;
use axum::Router;

pub use edge::Edge;
pub use error::ApiError;
pub use state::AppState;
pub use status::OPENAPI;
pub use verify::{verify_response, VerifyResponse};

use routes::{Routes, ANY};

fn admin_routes() -> Routes {
    Routes::new()
        .extend(admin::routes)
        .extend(alerts::routes)
        .extend(plan::routes)
        .extend(backup::routes)
        .add(
            "/v1/admin/console-link",
            &["POST"],
            axum::routing::post(console::link),
        )
}

fn public_routes() -> Routes {
    Routes::new().extend(verify::routes).extend(status::routes)
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
        .chain([console::SESSION_ROUTE])
        .map(|(p, m)| (p.replace("{*", "{"), m.to_vec()))
        .collect()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint".into())
}

/// The router served on TCP: verification, health, the admin API for bearers of
/// a key with the `apikeyd:admin` scope (or of a console session's cookie), and
/// the console when it is on.
pub fn tcp_router(state: AppState, max_body: usize) -> Router {
    let admin = admin_routes()
        .router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            identity::bearer_actor,
        ));
    let console = if state.console.config().enabled {
        console::router()
    } else {
        axum::Router::new()
    };
    public_routes()
        .router
        .merge(forward_auth_routes().router)
        .merge(admin)
        .merge(console)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The router served on the admin Unix socket: identity from SO_PEERCRED.
pub fn unix_router(state: AppState, max_body: usize) -> Router {
    let admin = admin_routes()
        .router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            identity::peer_actor,
        ));
    public_routes()
        .router
        .merge(admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
