//! API errors: `{"error":{"code":"snake_case","message":"…"}}` with one
//! status per cause. This is the one place store errors become HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the engine.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Malformed request (bad JSON, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// No or unknown token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The token may not do this (admin-only operations).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Request needs a length that was not given.
    #[error("{0}")]
    LengthRequired(String),
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// Status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::LengthRequired(_) => (StatusCode::LENGTH_REQUIRED, "length_required"),
            ApiError::Store(e) => match e {
                StoreError::InvalidName { .. } => (StatusCode::BAD_REQUEST, "invalid_name"),
                StoreError::InvalidSize(_) => (StatusCode::BAD_REQUEST, "invalid_size"),
                StoreError::TooSmall { .. } => (StatusCode::BAD_REQUEST, "size_too_small"),
                StoreError::OutOfRange { .. } => (StatusCode::BAD_REQUEST, "out_of_range"),
                StoreError::VolumeNotFound { .. } => (StatusCode::NOT_FOUND, "volume_not_found"),
                StoreError::SnapshotNotFound { .. } => (StatusCode::NOT_FOUND, "snapshot_not_found"),
                StoreError::VolumeExists { .. } => (StatusCode::CONFLICT, "volume_exists"),
                StoreError::SnapshotExists { .. } => (StatusCode::CONFLICT, "snapshot_exists"),
                StoreError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state"),
                StoreError::SnapshotInUse { .. } => (StatusCode::CONFLICT, "snapshot_in_use"),
                StoreError::VolumeDamaged { .. } => (StatusCode::CONFLICT, "volume_damaged"),
                StoreError::ReadOnly(_) => (StatusCode::CONFLICT, "read_only"),
                StoreError::GcRunning => (StatusCode::CONFLICT, "gc_running"),
                StoreError::LabelMismatch { .. } => (StatusCode::PRECONDITION_FAILED, "label_mismatch"),
                StoreError::ImportTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "import_too_large"),
                StoreError::ImportStream(_) => (StatusCode::BAD_REQUEST, "import_stream"),
                StoreError::ObjectStore(_) | StoreError::StoreDown => {
                    (StatusCode::SERVICE_UNAVAILABLE, "object_store_unavailable")
                }
                StoreError::BacklogFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "backlog_full"),
                StoreError::InvalidRef(_) => (StatusCode::BAD_REQUEST, "invalid_ref"),
                StoreError::RefRootMissing { .. } => (StatusCode::CONFLICT, "root_not_in_store"),
                StoreError::ObjectMissing { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "object_missing"),
                StoreError::ChunkCorrupt { .. } | StoreError::NodeCorrupt { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "data_corrupt")
                }
                StoreError::Io(io) if io.raw_os_error() == Some(28) => {
                    (StatusCode::INSUFFICIENT_STORAGE, "out_of_space")
                }
                StoreError::Io(_)
                | StoreError::Catalog(_)
                | StoreError::CatalogCorrupt { .. }
                | StoreError::JournalDamaged { .. }
                | StoreError::RootsDocCorrupt { .. }
                | StoreError::ObjectStoreUrl { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, code, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: self.to_string(),
            },
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitional_state_is_conflict_and_label_mismatch_is_412() {
        let e = ApiError::from(StoreError::WrongState {
            name: "v".into(),
            state: "rolling_back".into(),
            operation: "clone",
        });
        assert_eq!(e.status_and_code().0, StatusCode::CONFLICT);
        let e = ApiError::from(StoreError::LabelMismatch {
            key: "k".into(),
            expected: "a".into(),
            actual: None,
        });
        assert_eq!(e.status_and_code().0, StatusCode::PRECONDITION_FAILED);
    }

    #[test]
    fn a_full_backlog_and_an_unreachable_store_are_503() {
        let e = ApiError::from(StoreError::BacklogFull { held: 10, limit: 8 });
        assert_eq!(
            e.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "backlog_full")
        );
        assert_eq!(
            StoreError::BacklogFull { held: 10, limit: 8 }.errno(),
            28,
            "NBD clients see ENOSPC"
        );
        let e = ApiError::from(StoreError::RefRootMissing { root: "ab".into() });
        assert_eq!(e.status_and_code(), (StatusCode::CONFLICT, "root_not_in_store"));
    }
}
