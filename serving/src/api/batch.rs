//! `POST /v1/batch/run`: a recompute now, through the recompute service of this process (the batch
//! role), made live before the reply.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_schemas::layers::recompute::{Recompute, RecomputeError, RunOptions};

use super::{ApiError, App, parse};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    view: Option<String>,
    /// Recompute from the whole master dataset, even where the live version could be extended.
    #[serde(default)]
    full: bool,
    /// Accept a full recompute over a master dataset raw retention has cut.
    #[serde(default)]
    allow_partial_history: bool,
}

pub(super) async fn batch_run(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let request: RunRequest = match body.is_empty() {
        true => RunRequest::default(),
        false => parse(&body)?,
    };
    let Some(recompute) = &app.recompute else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "batch_not_here",
            "this process does not run the batch role; run `tributary batch run` or call a process started with --roles including batch",
        ));
    };
    if let Some(view) = &request.view {
        app.engine.view(view)?;
    }
    let runs = run_batch(
        &app,
        recompute.as_ref(),
        request.view.as_deref(),
        RunOptions {
            full: request.full,
            allow_partial_history: request.allow_partial_history,
        },
    )
    .await?;
    Ok(axum::Json(json!({"views": runs})))
}

/// Runs a recompute, records it, and makes what it published live before returning.
pub async fn run_batch(
    app: &App,
    recompute: &dyn Recompute,
    only: Option<&str>,
    options: RunOptions,
) -> Result<Vec<Value>, ApiError> {
    let started = Instant::now();
    let runs = match recompute.run(only, options).await {
        Ok(runs) => runs,
        Err(RecomputeError::Busy(error)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "batch_running",
                error.to_string(),
            ));
        }
        Err(RecomputeError::UnknownView(error)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_view",
                error.to_string(),
            ));
        }
        Err(RecomputeError::Refused(error)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "partial_history",
                error.to_string().replace(
                    "run `tributary batch run --full --allow-partial-history`",
                    "send {\"full\": true, \"allow_partial_history\": true}",
                ),
            ));
        }
        Err(RecomputeError::Unavailable(error)) => {
            let failed = "the lake's object store failed";
            (app.metrics).record_failed_run(only, started.elapsed(), "request", failed);
            return Err(ApiError::unavailable("the recompute", error.as_ref()));
        }
        Err(error) => {
            let failed = "the recompute failed (see the server's log)";
            (app.metrics).record_failed_run(only, started.elapsed(), "request", failed);
            return Err(ApiError::internal("the recompute", &error));
        }
    };
    app.engine
        .live()
        .refresh()
        .await
        .map_err(|e| ApiError::internal("loading the new versions", &e))?;
    let mut out = Vec::new();
    for run in &runs {
        let mut report = app.metrics.record_run(run, "request");
        if let Some(fields) = report.as_object_mut() {
            fields.remove("at");
            fields.remove("trigger");
        }
        out.push(report);
    }
    Ok(out)
}
