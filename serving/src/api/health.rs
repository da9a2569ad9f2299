//! `GET /v1/status`, `/metrics`, `/livez` and `/readyz`: each layer's own status section and
//! Prometheus samples (its `StatusSource`), the serving layer's counters, and readiness from the
//! speed layer's lag.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use tributary_schemas::layers::prometheus::Exposition;

use super::App;

/// Per view its live batch version and its last recompute run (by this process, since it started);
/// the latest runs; the speed layer's lag per partition; the archiver's progress and quarantine
/// counts by reason (when this process runs it).
pub(super) async fn status(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let live = app.engine.live();
    let runs = app.metrics.recent_runs();
    let batch: Vec<Value> = (live.views().iter())
        .zip(live.versions())
        .map(|(view, version)| {
            let last_run = (runs.iter())
                .find(|run| run["view"] == view.name.as_str() || run["view"].is_null());
            json!({
                "view": view.name,
                "version": version.as_ref().map(|v| v.manifest.version),
                "created_at": version.as_ref().map(|v| v.manifest.created_at),
                "boundary": version.as_ref().map(|v| v.manifest.boundary.0.clone()),
                "in_memory": version.as_ref().map(|v| v.in_memory()),
                "last_run": last_run,
            })
        })
        .collect();
    axum::Json(json!({
        "batch": {"views": batch, "runs": runs, "role": app.recompute.is_some()},
        "speed": live.speed().status(),
        "archiver": app.archiver.as_ref().map(|archiver| archiver.status()),
    }))
}

pub(super) async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut out = Exposition::new();
    let live = app.engine.live();
    live.speed().metrics(&mut out);
    out.family(
        "tributary_freshness_seconds",
        "gauge",
        "age of the newest event counted, per view",
    );
    out.family(
        "tributary_batch_version",
        "gauge",
        "live batch version per view (0: none)",
    );
    out.family(
        "tributary_view_building",
        "gauge",
        "1 while a view has no batch version under its configured definition (a new or changed view: see GET /v1/views)",
    );
    for (index, view) in live.views().iter().enumerate() {
        if let Ok(pinned) = live.pin(index) {
            let labels = [("view", view.name.clone())];
            let building = !pinned.live();
            out.sample(
                "tributary_view_building",
                &labels,
                f64::from(u8::from(building)),
            );
            if let Some(newest) = pinned.speed.newest_event_ms {
                let age = (Utc::now().timestamp_millis() - newest) as f64 / 1e3;
                out.sample("tributary_freshness_seconds", &labels, age);
            }
            let version = pinned.version.as_ref().map_or(0, |v| v.manifest.version);
            out.sample("tributary_batch_version", &labels, version as f64);
        }
    }
    if let Some(archiver) = &app.archiver {
        archiver.metrics(&mut out);
    }
    if let Some(ingest) = &app.ingest {
        ingest.metrics(&mut out);
    }
    app.engine.cache().metrics(&mut out);
    app.metrics.render(&mut out);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out.finish(),
    )
}

pub(super) async fn livez() -> axum::Json<Value> {
    axum::Json(json!({"status": "live"}))
}

/// Ready once the live versions are loaded (they are before the server starts) and the speed layer
/// has read every partition up to the end it saw when it (re)started, is within `ready_max_lag`
/// of the broker's end on every partition, and is not stalled. Otherwise 503 with the reason and
/// the lag per partition.
pub(super) async fn readyz(State(app): State<Arc<App>>) -> Response {
    let speed = app.engine.live().speed();
    if speed.ready() {
        return axum::Json(json!({"status": "ready"})).into_response();
    }
    let status = if speed.partitions().values().any(|p| p.stalled) {
        "stalled"
    } else {
        "catching_up"
    };
    let body = json!({
        "status": status,
        "ready_max_lag": speed.ready_max_lag(),
        "partitions": speed.status()["partitions"],
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}
