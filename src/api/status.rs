//! What the daemon says about itself: health, Prometheus metrics and the OpenAPI
//! document.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};

use super::routes::Routes;
use super::state::AppState;

async fn healthz(State(st): State<AppState>) -> Json<Value> {
    // Serving at all means the store was open and the keys are loaded: live and
    // ready to verify. A store gone since (PostgreSQL down) leaves verification
    // answering from memory, so the node stays ready (a load balancer must not drop
    // every node at once); only changes wait for the store.
    let store_up = st.keys.store_available();
    Json(json!({
        "status": if store_up { "ok" } else { "degraded" },
        "live": true,
        "ready": true,
        "keys": st.keys.len(),
        "store": if store_up { "up" } else { "down" },
    }))
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

/// The status routes, added to the public routes.
pub(crate) fn routes(r: Routes) -> Routes {
    r.add("/healthz", &["GET"], get(healthz))
        .add("/metrics", &["GET"], get(metrics_text))
        .add("/openapi.json", &["GET"], get(openapi))
}
