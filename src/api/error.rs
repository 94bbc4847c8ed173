//! The error every handler answers with, `{"error": {"code", "message"}}`, and the
//! readers of the request (JSON body, query, path) that turn a bad one into it.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::alerts::AlertError;
use crate::keys::KeyError;
use crate::store::{DiskProblem, StoreError};

/// An error answered as `{"error": {"code", "message"}}`, with `"field"` naming
/// the request field at fault when one is (the console shows the message next
/// to that field).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    /// An error with a status, a machine-readable code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
            field: None,
        }
    }

    /// A 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message.into())
    }
}

/// A store failure the disk caused, as the operator should read it: the status,
/// the code and what to do. Verification goes on from memory meanwhile.
fn disk_error(e: &StoreError) -> Option<ApiError> {
    let (status, code, what) = match e.disk_problem()? {
        DiskProblem::Full => (
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "the disk holding the database is full: free space on it, then try again",
        ),
        DiskProblem::ReadOnly => (
            StatusCode::SERVICE_UNAVAILABLE,
            "read_only",
            "the database is on a read-only file system: remount it read-write, then try again",
        ),
        DiskProblem::Denied => (
            StatusCode::SERVICE_UNAVAILABLE,
            "read_only",
            "apikeyd may not write the database file: give its account write access again, then try again",
        ),
        DiskProblem::Earlier => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "an earlier write to the database failed (disk full, read-only or failing): fix the disk, then try again",
        ),
    };
    tracing::error!(error = %e, "change refused: {what}");
    Some(ApiError::new(
        status,
        code,
        format!("{what}; keys still verify meanwhile. ({e})"),
    ))
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        if let KeyError::Store(store) = &e {
            if let Some(disk) = disk_error(store) {
                return disk;
            }
        }
        let (status, code) = match &e {
            KeyError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            KeyError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            KeyError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            KeyError::Conflict(_)
            | KeyError::Taken { .. }
            | KeyError::Store(StoreError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            // Cluster mode with PostgreSQL down: verification goes on from memory,
            // and changes are refused whole until it is back.
            KeyError::Store(StoreError::Unavailable(_) | StoreError::Interrupted(_)) => {
                tracing::warn!(error = %e, "change refused: the database is unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            // The disk refused the flush (full, read-only, failing): say so rather
            // than acknowledge a change a stop would lose.
            KeyError::Store(StoreError::NotDurable(_)) => {
                tracing::error!(error = %e, "change not acknowledged: it could not be made durable");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            KeyError::Store(StoreError::Unsupported(_)) => {
                (StatusCode::NOT_IMPLEMENTED, "unsupported")
            }
            KeyError::Store(_) | KeyError::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let field = match &e {
            KeyError::Invalid { field, .. } | KeyError::Taken { field, .. } => Some(*field),
            _ => None,
        };
        Self {
            field,
            ..Self::new(status, code, e.to_string())
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
        let field = match &e {
            AlertError::Invalid { field, .. } => Some(*field),
            _ => None,
        };
        Self {
            field,
            ..Self::new(status, code, e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = field.into();
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(e.status(), "bad_request", e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::new(e.status(), "bad_request", e.body_text())
    }
}

/// axum's `Query`, refused with the JSON error every handler answers (axum's own
/// rejection is plain text).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);

/// axum's `Path`, refused with the JSON error (a segment that is not UTF-8 once
/// percent-decoded).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

/// What a handler returns.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// The request body, or the error that says why it cannot be read (too large, cut off).
pub(crate) fn read_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        ApiError::new(
            e.status(),
            "bad_body",
            format!("cannot read the request body: {}", e.body_text()),
        )
    })
}

/// A body whose declared length (Content-Length) is over `most` is refused (413)
/// before anything is read, or waited for.
pub(crate) fn refuse_declared_over(
    body: &axum::body::Body,
    most: usize,
    too_large: impl Fn() -> String,
) -> ApiResult<()> {
    use axum::body::HttpBody as _;
    if body.size_hint().lower() > u64::try_from(most).unwrap_or(u64::MAX) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_body",
            too_large(),
        ));
    }
    Ok(())
}

/// A request body of at most `most` bytes, for a route whose limit depends on the
/// caller; `too_large` says what to do about a larger one (413).
pub(crate) async fn read_at_most(
    body: axum::body::Body,
    most: usize,
    too_large: impl Fn() -> String,
) -> ApiResult<Bytes> {
    refuse_declared_over(&body, most, &too_large)?;
    axum::body::to_bytes(body, most).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bad_body", too_large())
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("cannot read the request body: {e}"),
            )
        }
    })
}

/// A JSON request body, or the error that says why it cannot be read.
///
/// Every body is a JSON object. serde reads a struct from an array too, field by
/// field in order (`["x"]` was an edit that renamed the key to "x"), so anything
/// else is refused before serde sees it.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = read_body(body)?;
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(ApiError::bad_request(
            "malformed JSON request: the body must be a JSON object",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON request: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Edit {
        name: Option<String>,
    }

    /// Regression (found by the schemathesis contract run): `PATCH
    /// /v1/admin/keys/{id}` with the body `["False"]` answered 200 and renamed the
    /// key to "False", because serde reads a struct from a JSON array by position.
    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        let parse = |text: &'static str| parse_body::<Edit>(Ok(Bytes::from(text)));
        for text in [r#"["False"]"#, r#" ["a", "b"]"#, "null", "1", r#""x""#, ""] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{text}");
        }
        assert_eq!(
            parse(r#"{"name": "x"}"#).unwrap().name.as_deref(),
            Some("x")
        );
        assert!(parse("\r\n\t {}").is_ok());
    }

    async fn body(e: ApiError) -> serde_json::Value {
        let r = e.into_response();
        let bytes = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A refusal about one field names it, so that the console can show the
    /// message next to that field; other refusals name none.
    #[tokio::test]
    async fn refusals_about_a_field_name_it() {
        let invalid = body(
            crate::keys::KeyError::Invalid {
                field: "ip",
                message: "\"10.0.0.300\" is not an IP address".into(),
            }
            .into(),
        )
        .await;
        assert_eq!(invalid["error"]["field"], "ip");
        assert_eq!(invalid["error"]["code"], "invalid");
        let taken = body(
            crate::keys::KeyError::Taken {
                field: "name",
                message: "alice already has a key named \"x\"".into(),
            }
            .into(),
        )
        .await;
        assert_eq!(taken["error"]["field"], "name");
        assert_eq!(taken["error"]["code"], "conflict");
        let other = body(crate::keys::KeyError::Conflict("key x was removed".into()).into()).await;
        assert!(other["error"].get("field").is_none(), "{other}");
    }
}
