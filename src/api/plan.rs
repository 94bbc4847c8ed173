//! Admin API for the plan (`apikeyctl plan`): what will happen to the keys the
//! caller may see, and how a posted configuration would change them. Thin: parse,
//! call [`crate::keys::Keys::plan`] or [`crate::keys::Keys::plan_policy`], render.
//!
//! A posted configuration goes through the loader's own validation
//! ([`crate::config::parse`]), which reads no file: paths it names (password
//! files, the secret file) are never opened, so no answer can carry a file's
//! content. The text itself is never logged.

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::Deserialize;

use super::error::{parse_body, ApiError, ApiResult, Query};
use super::routes::Routes;
use super::state::AppState;
use crate::alerts::maintenance::Runs;
use crate::config::{self, Environment};
use crate::keys::plan::{admin_only, Ask, Plan, PolicyPlan};
use crate::keys::{Actor, Settings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    #[serde(default)]
    within: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

// No Debug: the configuration text has no business in a log line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRequest {
    /// The configuration text.
    config: String,
    /// The file it came from, for the messages.
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    within: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// The maintenance runs as the scheduler runs them (a reload does not move them).
fn runs(st: &AppState) -> Arc<Runs> {
    Arc::new(Runs::of(&st.schedules))
}

async fn plan(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<PlanQuery>,
) -> ApiResult<Json<Plan>> {
    let ask = Ask::parse(q.within.as_deref(), q.limit)?;
    Ok(Json(st.keys.plan(&actor, &ask, runs(&st)).await?))
}

async fn plan_policy(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PolicyPlan>> {
    // Before the body is parsed: anyone else learns nothing about the configuration.
    admin_only(&actor)?;
    let req: PolicyRequest = parse_body(body)?;
    let ask = Ask::parse(req.within.as_deref(), req.limit)?;
    let file = req.file.as_deref().unwrap_or("posted configuration");
    let new =
        config::parse(Path::new(file), &req.config, &Environment::default()).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                format!("{e}nothing was applied, and a reload would reject this file"),
            )
        })?;
    let settings = Settings::from(&new);
    let mut plan = st
        .keys
        .plan_policy(&actor, settings, new.alerts.clone(), &ask, runs(&st))
        .await?;
    if let Some(start_only) = &st.start_only {
        plan.notes.extend(start_only.changed_in(&new).into_iter().map(|s| {
            format!("{s} differs from the settings apikeyd started with: a reload does not apply it, a restart does")
        }));
    }
    plan.notes
        .extend(new.warnings().iter().map(|p| format!("warning: {p}")));
    Ok(Json(plan))
}

/// The plan routes, added to the admin routes.
pub(crate) fn routes(r: Routes) -> Routes {
    r.add("/v1/admin/plan", &["GET"], get(plan)).add(
        "/v1/admin/plan/policy",
        &["POST"],
        post(plan_policy),
    )
}
