//! Admin API for notifications, alert jobs and operator messages. Thin: parse, call
//! [`crate::keys::Keys`] (a key's notification) or [`crate::alerts::Alerts`] (jobs
//! and messages), render. Merged into the admin routes, so it sits behind the
//! same identity checks (SO_PEERCRED on the socket, admin-scope key on TCP).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{parse_body, ApiError, ApiResult, Path, Query};
use super::routes::Routes;
use super::state::AppState;
use crate::keys::{Actor, KeyError, NotifyRequest, PageRequest};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    maintenance: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    #[serde(default)]
    unacknowledged: Option<bool>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn notify_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: NotifyRequest = parse_body(body)?;
    Ok(Json(st.keys.notify(&actor, &id, req).await?).into_response())
}

async fn list_jobs(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<Value>> {
    let page = PageRequest {
        cursor: q.cursor,
        limit: q.limit,
    };
    if q.maintenance.unwrap_or(false) {
        // The filters of the job list do not apply to the cron jobs (apikeyctl
        // refuses them with --maintenance too): naming one is a mistake, not a
        // filter to drop. The limit apikeyctl always sends is checked and unused.
        if q.key.is_some() || q.state.is_some() || page.cursor.is_some() {
            return Err(ApiError::bad_request(
                "maintenance: the cron maintenance jobs take no key, state or cursor",
            ));
        }
        page.limit(1)?;
        return Ok(Json(json!({ "maintenance": st.maintenance.runs() })));
    }
    let jobs = st
        .alerts
        .jobs(&actor, q.key.as_deref(), q.state.as_deref(), &page)
        .await?;
    Ok(Json(
        json!({ "jobs": jobs.items, "next_cursor": jobs.next_cursor }),
    ))
}

async fn show_job(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.alerts.job(&actor, &id).await?).into_response())
}

async fn cancel_job(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.alerts.cancel_or_delete_job(&actor, &id, false).await?).into_response())
}

async fn delete_job(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.alerts.cancel_or_delete_job(&actor, &id, true).await?).into_response())
}

async fn list_messages(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<Json<Value>> {
    // As every other listing: no limit is 1000, a larger one is read as the most
    // there is, and 0 is a mistake rather than a request for nothing.
    let limit = match q.limit {
        Some(0) => {
            return Err(KeyError::Invalid {
                field: "limit",
                message: "must be at least 1".into(),
            }
            .into())
        }
        limit => limit.unwrap_or(1000).min(100_000),
    };
    let messages = st
        .alerts
        .messages(&actor, q.unacknowledged.unwrap_or(false), limit)
        .await?;
    Ok(Json(json!({ "messages": messages })))
}

async fn ack_message(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.alerts.ack_message(&actor, &id).await?).into_response())
}

/// The alert routes, added to the admin routes (and so to the route table the
/// OpenAPI test compares with the document).
pub(crate) fn routes(r: Routes) -> Routes {
    r.add("/v1/admin/keys/{id}/notify", &["POST"], post(notify_key))
        .add("/v1/admin/jobs", &["GET"], get(list_jobs))
        .add(
            "/v1/admin/jobs/{id}",
            &["GET", "DELETE"],
            get(show_job).delete(delete_job),
        )
        .add("/v1/admin/jobs/{id}/cancel", &["POST"], post(cancel_job))
        .add("/v1/admin/messages", &["GET"], get(list_messages))
        .add("/v1/admin/messages/{id}/ack", &["POST"], post(ack_message))
}
