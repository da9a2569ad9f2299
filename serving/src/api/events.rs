//! `POST /v1/events`: push ingest (JSON array or NDJSON, optionally gzip), produced to Kafka before
//! the reply.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;

use super::{ApiError, App};
use crate::ingest::IngestError;

/// `POST /v1/events`: 200 with what was accepted and what was refused (and why) once Kafka has
/// acknowledged every valid event; 503 with exactly which events were not written when it did not.
pub(super) async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(ingest) = &app.ingest else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ingest_not_here",
            "this process has no producer for the events topic; send events to a process running the serving role",
        ));
    };
    let limit = ingest.max_body();
    let too_large = || {
        ApiError::from(IngestError::TooLarge {
            limit,
            decompressed: false,
        })
    };
    let declared =
        (headers.get(header::CONTENT_LENGTH)).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body could not be read: {error}"),
            ));
        }
    };
    let encoding = (headers.get(header::CONTENT_ENCODING)).map(|v| v.to_str().unwrap_or("?"));
    match ingest.accept(encoding, body).await {
        Ok(report) => Ok(axum::Json(report).into_response()),
        // The 503 keeps the report: it says which events were written and which to resend.
        Err(IngestError::Unavailable { reason, report }) => {
            tracing::warn!("push ingest refused: {reason}");
            let mut body = serde_json::to_value(&report)
                .map_err(|e| ApiError::internal("writing the ingest report", &e))?;
            let error = ApiError::from(IngestError::Unavailable { reason, report });
            body["error"] = json!({"code": error.code, "message": error.message});
            Ok((error.status, axum::Json(body)).into_response())
        }
        Err(error) => Err(error.into()),
    }
}
