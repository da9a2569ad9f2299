//! Error replies: `{"error": {"code", "message"}}`, with the status by who is to blame: 4xx for
//! the caller's mistakes (the message says what to fix), 503 when a system outside Tributary failed
//! (the message says which), 500 for ours (the message says nothing internal; the cause is logged
//! with its whole chain). Every error a handler meets becomes an [`ApiError`] here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tributary_schemas::blame::chain;

use crate::ingest::IngestError;
use crate::query::{QueryError, ViewBuilding};

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// Seconds for `Retry-After` (a 429).
    pub(super) retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 429 that says when to try again.
    pub fn too_many(code: &'static str, message: impl Into<String>, after_secs: u64) -> Self {
        Self {
            retry_after: Some(after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// Ours: the cause is logged with its whole chain, the caller is told nothing internal.
    pub(super) fn internal(what: &str, cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!("{what}: {}", chain(cause));
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed on the server; the cause is in its log"),
        )
    }

    /// An outside system failed: logged with its cause, and the caller told which system.
    pub(super) fn unavailable(what: &str, cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!("{what}: {}", chain(cause));
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!(
                "the lake's object store failed during {what}; try again (the cause is in the server's log)"
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            (response.headers_mut()).insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Invalid {
                code: code @ "unknown_view",
                message,
            } => ApiError::new(StatusCode::NOT_FOUND, code, message),
            QueryError::Invalid { code, message } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            building @ QueryError::Building(_) => {
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "view_building",
                    building.to_string(),
                );
                error.retry_after = Some(ViewBuilding::RETRY_AFTER_SECS);
                error
            }
            timeout @ QueryError::Timeout(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "query_timeout",
                timeout.to_string(),
            ),
            QueryError::Unavailable(cause) => ApiError::unavailable("the query", &cause),
            QueryError::Internal(cause) => ApiError::internal("the query", cause.as_ref()),
            QueryError::SnapshotExpired(expired) => {
                ApiError::new(StatusCode::GONE, "snapshot_expired", expired.to_string())
            }
            busy @ QueryError::Busy { .. } => {
                ApiError::too_many("too_many_queries", busy.to_string(), 1)
            }
            big @ QueryError::TooBig { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "query_too_big", big.to_string())
            }
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        let (status, code) = match &error {
            IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            IngestError::UnsupportedEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding")
            }
            IngestError::BadGzip(_) => (StatusCode::BAD_REQUEST, "bad_gzip"),
            IngestError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            IngestError::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable")
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}
