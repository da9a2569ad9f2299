//! `GET /v1/speed/{definition}`: this process's speed states of one view definition, for the
//! serving nodes of a split speed layer (issue 32, ARCHITECTURE.md §8), in the form of
//! `tributary_speed::export`. `?have=0:0-41,2:3-9` (`layers::speed::format_have`) lists the sealed `(partition, epoch)` parts the
//! caller already holds, which are not sent again. It needs the `admin` scope: the states are
//! every row of the view, before any caller's row filter.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, App};

#[derive(Debug, Deserialize)]
pub(super) struct Have {
    have: Option<String>,
}

pub(super) async fn states(
    State(app): State<Arc<App>>,
    Path(definition): Path<String>,
    Query(have): Query<Have>,
) -> Result<Response, ApiError> {
    let have = tributary_schemas::layers::speed::parse_have(have.have.as_deref().unwrap_or(""))
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "bad_have", message))?;
    let speed = app.engine.live().speed();
    match speed.export(&definition, &have) {
        Ok(Some(bytes)) => Ok((
            [(
                header::CONTENT_TYPE,
                "application/vnd.tributary.speed-states",
            )],
            bytes,
        )
            .into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_definition",
            format!("this speed layer aggregates no view of definition {definition:?}"),
        )),
        Err(error) => Err(ApiError::internal("encoding the speed states", &error)),
    }
}
