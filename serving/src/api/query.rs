//! `GET /v1/views`, `POST /v1/query` and `POST /v1/sql`: answers and the `meta` that says what
//! each one merged (batch version, speed offsets, completeness, freshness).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_schemas::config::ViewDef;
use tributary_schemas::lake::BuildProgress;

use super::{ApiError, App, Caller, parse};
use crate::audit::Answered;
use crate::json::{self, timestamp};
use crate::live::Pinned;
use crate::query::{Answer, QueryRequest};

fn view_json(view: &ViewDef) -> Value {
    json!({
        "name": view.name,
        "granularity": view.granularity.to_string(),
        "dimensions": view.dimensions.iter()
            .map(|d| json!({"name": d.name, "type": d.ty.name()}))
            .collect::<Vec<_>>(),
        "metrics": view.metrics.iter()
            .map(|m| json!({
                "name": m.name,
                "expression": m.expression,
                "type": json::type_name(&m.output_type()),
            }))
            .collect::<Vec<_>>(),
        "filter": view.filter.as_ref().map(|f| f.sql.clone()),
    })
}

pub(super) async fn views(State(app): State<Arc<App>>) -> Result<axum::Json<Value>, ApiError> {
    let live = app.engine.live();
    let mut out = Vec::new();
    for (index, view) in live.views().iter().enumerate() {
        let pinned = live
            .pin(index)
            .map_err(|e| ApiError::internal("reading the views", &e))?;
        let mut entry = view_json(view);
        // `building` until the view has a batch version under its configured definition (a new
        // view, or a changed one), with what answers meanwhile and the build's progress.
        let building = !pinned.live();
        entry["state"] = json!(if building { "building" } else { "live" });
        if building {
            let progress = (live.lake().build_progress(&view.name).await)
                .map_err(|e| ApiError::unavailable("reading the build's progress", &e))?
                .filter(|p| p.definition_hash == view.definition_hash());
            entry["building"] = building_json(view, &pinned, progress.as_ref());
        }
        entry["complete"] = json!(pinned.complete());
        entry["batch"] = batch_meta(&pinned);
        entry["freshness"] = freshness(&pinned);
        out.push(entry);
    }
    Ok(axum::Json(json!({"views": out})))
}

/// How long a build's progress may go unwritten (it is written every second) before the build is
/// shown as not running: killed, or waiting for the next scheduled run.
const BUILD_HEARTBEAT: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

/// What answers a building view meanwhile, what waits for its first version, and the progress of
/// the run building it (`null` when none is running).
fn building_json(view: &ViewDef, pinned: &Pinned, progress: Option<&BuildProgress>) -> Value {
    let (answering, waiting): (&str, Vec<&str>) = match (pinned.short, pinned.configured) {
        (true, _) => (
            "nothing",
            view.metrics.iter().map(|m| m.name.as_str()).collect(),
        ),
        (false, true) => ("speed_layer", Vec::new()),
        (false, false) => ("old_definition", view.not_answered_by(&pinned.definition)),
    };
    let progress = progress.map(|p| {
        json!({
            "running": Utc::now() - p.updated_at < BUILD_HEARTBEAT,
            "started_at": p.started_at,
            "updated_at": p.updated_at,
            "files_done": p.files_done,
            "files_total": p.files_total,
            "rows_done": p.rows_done,
            "rows_total": p.rows_total,
            "fraction": p.fraction(),
        })
    });
    // Buckets finer than the old definition's wait too.
    let old_granularity = (answering == "old_definition"
        && pinned.definition.granularity != view.granularity)
        .then(|| pinned.definition.granularity.to_string());
    json!({
        "answering": answering,
        "waiting": waiting,
        "old_granularity": old_granularity,
        "progress": progress,
    })
}

fn batch_meta(pinned: &Pinned) -> Value {
    match &pinned.version {
        None => Value::Null,
        Some(version) => json!({
            "version": version.manifest.version,
            "created_at": version.manifest.created_at,
            "rows": version.manifest.row_count,
            "generation": version.manifest.generation,
            "boundary": version.manifest.boundary.0,
            "newest_bucket": version.manifest.newest_bucket,
            "in_memory": version.in_memory(),
        }),
    }
}

fn freshness(pinned: &Pinned) -> Value {
    let newest = pinned.speed.newest_event_ms;
    json!({
        "newest_event": newest.map_or(Value::Null, timestamp),
        "age_ms": newest.map(|t| Utc::now().timestamp_millis() - t),
    })
}

/// What one view's answer merged. `complete` is false when the speed layer trails the log by more
/// than `ready_max_lag` on some partition (`speed.lag`), is stalled (`speed.stalled`), or Kafka
/// deleted offsets the batch version does not cover before the speed layer read them
/// (`speed.missing`): the answer is exact for the offsets it covers, and misses the rest.
fn merged_meta(view: &str, pinned: &Pinned) -> Value {
    let missing: Vec<Value> = (pinned.missing().iter())
        .map(|(p, (from, to))| json!({"partition": p, "from": from, "to": to}))
        .collect();
    json!({
        "view": view,
        "complete": pinned.complete(),
        // Answered under the definition the live version was computed with, while the
        // configured one builds (the metrics both share).
        "previous_definition": !pinned.configured,
        "batch": batch_meta(pinned),
        "speed": {
            "from": pinned.speed_from.0,
            "next_offsets": pinned.speed_next,
            "lag": pinned.speed_lag(),
            "stalled": pinned.speed_stalled(),
            "missing": missing,
            // A speed node of a split speed layer: partitions it does not read.
            "unread": pinned.speed_unread,
            // A serving node of a split speed layer: the speed node each partition came from.
            "nodes": pinned.speed_nodes,
            "events": pinned.speed.events,
            "rows": pinned.speed.rows(),
            "sealed_epochs": pinned.speed.parts.iter().filter(|p| p.sealed).count(),
        },
        "freshness": freshness(pinned),
    })
}

/// A query's answer, `{"columns", "meta", "rows"}` (the order a JSON map sorts them in, as in every
/// other reply), written into one buffer: the rows straight from Arrow, without a `Value` per cell
/// or a second parse to validate them.
fn reply(answer: &Answer, mut meta: Value, query: Value) -> Result<Response, ApiError> {
    let failed =
        |e: &(dyn std::error::Error + 'static)| ApiError::internal("writing the answer", e);
    let mut rows = Vec::new();
    let mut written = 0;
    for batch in &answer.batches {
        json::write_rows(batch, &mut rows, &mut written).map_err(|e| failed(&e))?;
    }
    meta["snapshot"] = json!(answer.snapshot);
    meta["rows"] = json!(written);
    meta["truncated"] = json!(answer.truncated);
    meta["elapsed_ms"] = json!(answer.elapsed.as_secs_f64() * 1e3);
    let mut body = br#"{"columns":"#.to_vec();
    serde_json::to_writer(&mut body, &json::columns(&answer.schema)).map_err(|e| failed(&e))?;
    body.extend_from_slice(br#","meta":"#);
    serde_json::to_writer(&mut body, &meta).map_err(|e| failed(&e))?;
    body.extend_from_slice(br#","rows":["#);
    body.extend_from_slice(&rows);
    body.extend_from_slice(b"]}");
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    response.extensions_mut().insert(Answered {
        views: answer.merged.iter().map(|m| m.view.clone()).collect(),
        query,
        rows: Some(written),
    });
    Ok(response)
}

pub(super) async fn query(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: QueryRequest = parse(&body)?;
    let caller = caller.as_ref().map(|c| c.0.0.as_ref());
    let answer = app.engine.query(&request, caller).await?;
    app.metrics.query("/v1/query", answer.elapsed);
    let merged = &answer.merged[0];
    let query = serde_json::from_slice(&body).unwrap_or(Value::Null);
    reply(&answer, merged_meta(&merged.view, &merged.pinned), query)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    /// `meta.snapshot` of an earlier answer: answer from exactly its data.
    snapshot: Option<String>,
}

pub(super) async fn sql(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: SqlRequest = parse(&body)?;
    let caller = caller.as_ref().map(|c| c.0.0.as_ref());
    let answer = app
        .engine
        .sql(&request.sql, request.snapshot.as_deref(), caller)
        .await?;
    app.metrics.query("/v1/sql", answer.elapsed);
    let views: Vec<Value> = (answer.merged.iter())
        .map(|m| merged_meta(&m.view, &m.pinned))
        .collect();
    let complete = answer.merged.iter().all(|m| m.pinned.complete());
    let meta = json!({"complete": complete, "views": views});
    reply(&answer, meta, Value::String(request.sql))
}
