//! Admin API for backups (`apikeyctl backup FILE`): `POST /v1/admin/backup`
//! answers with a consistent snapshot of the database, streamed. The daemon writes
//! no file a request names: apikeyctl writes FILE, as the user who runs it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Extension;

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::state::AppState;
use crate::keys::Actor;

/// What the snapshot says about itself (JSON `SnapshotInfo`).
pub const SNAPSHOT_HEADER: &str = "x-apikeyd-snapshot";
/// Where the daemon read its server secret from: a restore needs that secret.
pub const SECRET_HEADER: &str = "x-apikeyd-server-secret";
/// The media type of a snapshot (a redb database).
pub const SNAPSHOT_TYPE: &str = "application/vnd.apikeyd.snapshot";

async fn backup(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    let snap = st.keys.snapshot(&actor).await?;
    tracing::info!(
        actor = %actor.name,
        bytes = snap.bytes,
        keys = snap.info.counts.keys,
        audit = snap.info.counts.audit,
        jobs = snap.info.counts.jobs,
        ms = started.elapsed().as_millis() as u64,
        "backup taken"
    );
    let internal = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot send the backup: {e}"),
        )
    };
    let info = serde_json::to_string(&snap.info).map_err(|e| internal(&e))?;
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, SNAPSHOT_TYPE)
        .header(header::CONTENT_LENGTH, snap.bytes)
        .header(SNAPSHOT_HEADER, info);
    // A path with bytes a header cannot carry is left out; apikeyctl says where
    // the secret usually is instead.
    if let Ok(v) = HeaderValue::from_str(&st.secret_source) {
        builder = builder.header(SECRET_HEADER, v);
    }
    let file = tokio::fs::File::from_std(snap.file);
    builder
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(file)))
        .map_err(|e| internal(&e))
}

pub(crate) fn routes(r: Routes) -> Routes {
    r.add("/v1/admin/backup", &["POST"], post(backup))
}
