//! Admin API for keys: list, create, import, show, edit, remove, enable, disable,
//! rotate, and the audit log. Thin: parse, call [`crate::keys::Keys`], render.
//! Served behind the identity checks of [`super::identity`] (SO_PEERCRED on the
//! socket, admin-scope key on TCP).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{
    parse_body, read_at_most, refuse_declared_over, ApiError, ApiResult, Path, Query,
};
use super::routes::Routes;
use super::state::AppState;
use crate::keys::{
    import_too_large, max_import_bytes, Actor, CreateKey, EditKey, KeyQuery, PageRequest,
    RotateKey, Whoami,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    owner: Option<String>,
    /// The older name of `owner`.
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    expiring_within: Option<String>,
    #[serde(default)]
    search: Option<String>,
    #[serde(default)]
    sort: Option<String>,
    #[serde(default)]
    after: Option<String>,
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

async fn whoami(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Json<Whoami> {
    Json(st.keys.whoami(&actor))
}

async fn list_keys(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    if let (Some(o), Some(u)) = (&q.owner, &q.user) {
        if o != u {
            return Err(ApiError::bad_request(
                "owner: user is another name for owner; give one of them",
            ));
        }
    }
    let query = KeyQuery {
        owner: q.owner.or(q.user),
        include_removed: q.all.unwrap_or(false),
        status: q.status,
        expiring_within: q.expiring_within,
        search: q.search,
        sort: q.sort,
        after: q.after,
    };
    let page = PageRequest {
        cursor: q.cursor,
        limit: q.limit,
    };
    let list = st.keys.list_page(&actor, &query, &page).await?;
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

/// `POST /v1/admin/keys/bulk-import`: a JSON-lines file, all or nothing. A bad
/// file answers 400 with every bad line (`error.problems`).
async fn import_file(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let most = max_import_bytes(actor.admin);
    let too_large = || import_too_large(actor.admin);
    refuse_declared_over(&body, most, too_large)?;
    // The file is read once it is its turn: until then it stays with the client.
    let turn = st.keys.import_turn().await;
    let bytes = read_at_most(body, most, too_large).await?;
    // Without a copy: the body is the request's alone.
    let text = String::from_utf8(Vec::from(bytes)).map_err(|e| {
        ApiError::bad_request(format!(
            "the file is not UTF-8 text (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    match st.keys.import_file(turn, &actor, text).await? {
        Ok(summary) => Ok((StatusCode::CREATED, Json(summary)).into_response()),
        Err(refused) => {
            let shown = refused.problems.len();
            let message = format!(
                "{} line(s) of the file cannot be imported{}; nothing was imported",
                refused.bad_lines,
                if shown < refused.bad_lines {
                    format!(" (the first {shown} are listed)")
                } else {
                    String::new()
                }
            );
            let body = json!({"error": {
                "code": "invalid_lines",
                "message": message,
                "bad_lines": refused.bad_lines,
                "problems": refused.problems,
            }});
            Ok((StatusCode::BAD_REQUEST, Json(body)).into_response())
        }
    }
}

async fn show_key(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(st.keys.show(&actor, &id).await?).into_response())
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
    let req: RotateKey = if bytes_empty {
        RotateKey::default()
    } else {
        parse_body(body)?
    };
    Ok(Json(st.keys.rotate_as(&actor, &id, &req).await?).into_response())
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

/// The key routes, the first of the admin routes.
pub(crate) fn routes(r: Routes) -> Routes {
    r.add("/v1/admin/whoami", &["GET"], get(whoami))
        .add(
            "/v1/admin/keys",
            &["GET", "POST"],
            get(list_keys).post(create_key),
        )
        .add("/v1/admin/keys/import", &["POST"], post(import_key))
        .add("/v1/admin/keys/bulk-import", &["POST"], post(import_file))
        .add(
            "/v1/admin/keys/{id}",
            &["GET", "PATCH", "DELETE"],
            get(show_key).patch(edit_key).delete(remove_key),
        )
        .add("/v1/admin/keys/{id}/disable", &["POST"], post(disable_key))
        .add("/v1/admin/keys/{id}/enable", &["POST"], post(enable_key))
        .add("/v1/admin/keys/{id}/rotate", &["POST"], post(rotate_key))
        .add("/v1/admin/audit", &["GET"], get(audit))
}
