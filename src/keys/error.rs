//! Why a key operation was refused.

use crate::store::StoreError;

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The request is wrong; `field` says which part.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field (`name`, `expires_at`, `ip`, ...).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Not allowed for this actor.
    #[error("{0}")]
    Forbidden(String),
    /// No key with this id (or none visible to this actor): always a key; alert
    /// jobs and operator messages have their own error ([`crate::alerts::AlertError`]).
    #[error("no key with id {0}")]
    NotFound(String),
    /// Conflicts with existing state (expired key, removed key, ...).
    #[error("{0}")]
    Conflict(String),
    /// Another key already holds this value of a field that must be unique (a
    /// name, per owner); `field` says which.
    #[error("{message}")]
    Taken {
        /// The field (`name`).
        field: &'static str,
        /// Which key holds it.
        message: String,
    },
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A [`KeyError::Invalid`] for `field`.
pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        field,
        message: message.into(),
    }
}

/// A [`KeyError::Internal`] from whatever failed (a blocking task that died).
pub(crate) fn internal(e: impl std::fmt::Display) -> KeyError {
    KeyError::Internal(e.to_string())
}
