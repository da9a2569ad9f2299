//! The HTTP API (ARCHITECTURE.md §6), with axum.
//!
//! Every error is `{"error": {"code", "message"}}`: 4xx for the caller's mistakes, with a message that
//! says what to fix; 5xx only for ours, with a generic message (the cause is logged, never sent).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_batch::archiver::ArchiverStats;
use tributary_batch::recompute::progress::quiet;
use tributary_batch::recompute::{Batch, BatchError};
use tributary_schemas::config::ViewDef;
use tributary_speed::consumer::SpeedLayer;

use crate::ingest::{Ingest, IngestError};
use crate::json::{self, timestamp};
use crate::live::Pinned;
use crate::metrics::{Metrics, counter, header as family, sample};
use crate::query::{Answer, Engine, QueryError, QueryRequest};

/// Everything the handlers share.
#[derive(Debug)]
pub struct App {
    pub engine: Engine,
    /// The recompute service, when this process runs the batch role.
    pub batch: Option<Arc<Batch>>,
    /// The archiver's counters, when this process runs the archiver role.
    pub archiver: Option<Arc<ArchiverStats>>,
    /// Push ingest, when this process has a producer for the events topic.
    pub ingest: Option<Arc<Ingest>>,
    pub metrics: Arc<Metrics>,
}

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!("{what}: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed on the server; the cause is in its log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Invalid { code, message } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            timeout @ QueryError::Timeout(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "query_timeout",
                timeout.to_string(),
            ),
            QueryError::Internal(cause) => ApiError::internal("the query", cause),
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

/// The router of every route.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/events", post(events))
        .route("/v1/views", get(views))
        .route("/v1/query", post(query))
        .route("/v1/sql", post(sql))
        .route("/v1/batch/run", post(batch_run))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            count_requests,
        ))
        .with_state(app)
}

async fn count_requests(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = match request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/v1/events") => "/v1/events",
        Some("/v1/views") => "/v1/views",
        Some("/v1/query") => "/v1/query",
        Some("/v1/sql") => "/v1/sql",
        Some("/v1/batch/run") => "/v1/batch/run",
        Some("/v1/status") => "/v1/status",
        Some("/metrics") => "/metrics",
        Some("/livez") => "/livez",
        Some("/readyz") => "/readyz",
        Some("/openapi.json") => "/openapi.json",
        _ => "other",
    };
    let response = next.run(request).await;
    app.metrics.request(route, response.status().as_u16());
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "there is no route {} {}; /openapi.json lists them",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {}; /openapi.json lists each route's method",
            request.uri().path(),
            request.method()
        ),
    )
}

/// Parses a JSON body, or says what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_data() {
            "the request's fields are wrong"
        } else {
            "the body is not valid JSON"
        };
        ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("{what}: {e}"))
    })
}

/// `POST /v1/events`: 200 with what was accepted and what was refused (and why) once Kafka has
/// acknowledged every valid event; 503 with exactly which events were not written when it did not.
async fn events(
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
                .map_err(|e| ApiError::internal("writing the ingest report", e))?;
            let error = ApiError::from(IngestError::Unavailable { reason, report });
            body["error"] = json!({"code": error.code, "message": error.message});
            Ok((error.status, axum::Json(body)).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

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

async fn views(State(app): State<Arc<App>>) -> Result<axum::Json<Value>, ApiError> {
    let live = app.engine.live();
    let mut out = Vec::new();
    for (index, view) in live.views().iter().enumerate() {
        let pinned = live
            .pin(index)
            .map_err(|e| ApiError::internal("reading the views", e))?;
        let mut entry = view_json(view);
        entry["batch"] = batch_meta(&pinned);
        entry["freshness"] = freshness(&pinned);
        out.push(entry);
    }
    Ok(axum::Json(json!({"views": out})))
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
/// than `ready_max_lag` on some partition (`speed.lag`) or is stalled (`speed.stalled`): the answer
/// is exact for the offsets it covers, and misses the rest.
fn merged_meta(view: &str, pinned: &Pinned) -> Value {
    json!({
        "view": view,
        "complete": pinned.complete(),
        "batch": batch_meta(pinned),
        "speed": {
            "from": pinned.speed_from.0,
            "next_offsets": pinned.speed_next,
            "lag": pinned.speed_lag(),
            "stalled": pinned.speed_stalled(),
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
fn reply(answer: &Answer, mut meta: Value) -> Result<Response, ApiError> {
    let failed = |e: &dyn std::fmt::Display| ApiError::internal("writing the answer", e);
    let mut rows = Vec::new();
    let mut written = 0;
    for batch in &answer.batches {
        json::write_rows(batch, &mut rows, &mut written).map_err(|e| failed(&e))?;
    }
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
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn query(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let request: QueryRequest = parse(&body)?;
    let answer = app.engine.query(&request).await?;
    app.metrics.query("/v1/query", answer.elapsed);
    let merged = &answer.merged[0];
    reply(&answer, merged_meta(&merged.view, &merged.pinned))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

async fn sql(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let request: SqlRequest = parse(&body)?;
    let answer = app.engine.sql(&request.sql).await?;
    app.metrics.query("/v1/sql", answer.elapsed);
    let views: Vec<Value> = (answer.merged.iter())
        .map(|m| merged_meta(&m.view, &m.pinned))
        .collect();
    let complete = answer.merged.iter().all(|m| m.pinned.complete());
    reply(&answer, json!({"complete": complete, "views": views}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    view: Option<String>,
}

async fn batch_run(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let request: RunRequest = match body.is_empty() {
        true => RunRequest::default(),
        false => parse(&body)?,
    };
    let Some(batch) = &app.batch else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "batch_not_here",
            "this process does not run the batch role; run `tributary batch run` or call a process started with --roles including batch",
        ));
    };
    if let Some(view) = &request.view {
        app.engine.view(view)?;
    }
    let runs = run_batch(&app, batch, request.view.as_deref()).await?;
    Ok(axum::Json(json!({"views": runs})))
}

/// Runs a recompute, records it, and makes what it published live before returning.
pub async fn run_batch(
    app: &App,
    batch: &Batch,
    only: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let started = Instant::now();
    let runs = match batch.run(only, quiet()).await {
        Ok(runs) => runs,
        Err(error @ (BatchError::AlreadyRunning | BatchError::Lock(_))) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "batch_running",
                error.to_string(),
            ));
        }
        Err(error) => {
            app.metrics.batch_run("failed", started.elapsed());
            return Err(ApiError::internal("the recompute", error));
        }
    };
    app.engine
        .live()
        .refresh()
        .await
        .map_err(|e| ApiError::internal("loading the new versions", format!("{e:#}")))?;
    let mut out = Vec::new();
    for run in &runs {
        let (outcome, manifest) = (run.outcome.name(), run.outcome.manifest());
        app.metrics.batch_run(outcome, run.elapsed);
        out.push(json!({
            "view": run.view,
            "outcome": outcome,
            "version": manifest.map(|m| m.version),
            "boundary": manifest.map(|m| m.boundary.0.clone()),
            "rows_read": run.rows_read,
            "elapsed_ms": run.elapsed.as_secs_f64() * 1e3,
        }));
    }
    Ok(out)
}

async fn status(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let live = app.engine.live();
    let speed = live.speed();
    let batch: Vec<Value> = (live.views().iter())
        .zip(live.versions())
        .map(|(view, version)| {
            json!({
                "view": view.name,
                "version": version.as_ref().map(|v| v.manifest.version),
                "created_at": version.as_ref().map(|v| v.manifest.created_at),
                "boundary": version.as_ref().map(|v| v.manifest.boundary.0.clone()),
                "in_memory": version.as_ref().map(|v| v.in_memory()),
            })
        })
        .collect();
    let lag = partitions_json(speed);
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let archiver = app.archiver.as_ref().map(|stats| {
        json!({
            "archived": stats.archived.load(ordering),
            "quarantined": stats.quarantined.load(ordering),
            "files": stats.files.load(ordering),
            "lost_offsets": stats.lost_offsets.load(ordering),
            "dlq_failures": stats.dlq_failures.load(ordering),
            "progress": stats.progress(),
        })
    });
    let totals = speed.read(|aggregator| aggregator.totals);
    axum::Json(json!({
        "batch": {"views": batch, "role": app.batch.is_some()},
        "speed": {
            "ready": speed.ready(),
            "complete": speed.complete(),
            "stalls": speed.stalls(),
            "ready_max_lag": speed.health_settings().ready_max_lag,
            "from": speed.boundary().0,
            "events": totals.events,
            "malformed": totals.malformed,
            "lost_offsets": speed.lost_offsets.load(ordering),
            "partitions": lag,
        },
        "archiver": archiver,
    }))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut out = String::new();
    let speed = app.engine.live().speed();
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let totals = speed.read(|aggregator| aggregator.totals);
    let counters = [
        (
            "tributary_speed_events_total",
            "events aggregated by the speed layer",
            totals.events,
        ),
        (
            "tributary_speed_malformed_total",
            "messages the speed layer skipped as malformed",
            totals.malformed,
        ),
        (
            "tributary_speed_lost_offsets_total",
            "offsets deleted by retention before the speed layer read them",
            speed.lost_offsets.load(ordering),
        ),
    ];
    counters.into_iter().for_each(|c| counter(&mut out, c));
    family(
        &mut out,
        "tributary_speed_lag_messages",
        "gauge",
        "messages between the broker's end and the speed layer, per partition",
    );
    for (partition, health) in speed.partitions() {
        sample(
            &mut out,
            "tributary_speed_lag_messages",
            &[("partition", partition.to_string())],
            health.lag() as f64,
        );
    }
    counter(
        &mut out,
        (
            "tributary_speed_stalls_total",
            "times the watchdog recreated a speed-layer consumer that made no progress while behind",
            speed.stalls(),
        ),
    );
    family(
        &mut out,
        "tributary_speed_ready",
        "gauge",
        "1 when the speed layer is ready: within ready_max_lag of the log and not stalled",
    );
    sample(
        &mut out,
        "tributary_speed_ready",
        &[],
        f64::from(u8::from(speed.ready())),
    );
    family(
        &mut out,
        "tributary_freshness_seconds",
        "gauge",
        "age of the newest event counted, per view",
    );
    family(
        &mut out,
        "tributary_batch_version",
        "gauge",
        "live batch version per view (0: none)",
    );
    let live = app.engine.live();
    for (index, view) in live.views().iter().enumerate() {
        if let Ok(pinned) = live.pin(index) {
            let labels = [("view", view.name.clone())];
            if let Some(newest) = pinned.speed.newest_event_ms {
                let age = (Utc::now().timestamp_millis() - newest) as f64 / 1e3;
                sample(&mut out, "tributary_freshness_seconds", &labels, age);
            }
            let version = pinned.version.as_ref().map_or(0, |v| v.manifest.version);
            sample(&mut out, "tributary_batch_version", &labels, version as f64);
        }
    }
    if let Some(stats) = &app.archiver {
        let counters = [
            (
                "tributary_archiver_events_total",
                "events written to the master dataset",
                stats.archived.load(ordering),
            ),
            (
                "tributary_archiver_quarantined_total",
                "malformed events written to quarantine",
                stats.quarantined.load(ordering),
            ),
            (
                "tributary_archiver_dlq_failures_total",
                "malformed events the DLQ topic did not take",
                stats.dlq_failures.load(ordering),
            ),
        ];
        counters.into_iter().for_each(|c| counter(&mut out, c));
    }
    if let Some(ingest) = &app.ingest {
        let counters = [
            (
                "tributary_ingest_accepted_total",
                "pushed events Kafka acknowledged",
                ingest.accepted.load(ordering),
            ),
            (
                "tributary_ingest_rejected_total",
                "pushed events the decoder refused",
                ingest.rejected.load(ordering),
            ),
            (
                "tributary_ingest_unwritten_total",
                "valid pushed events Kafka did not take (answered with 503)",
                ingest.unwritten.load(ordering),
            ),
        ];
        counters.into_iter().for_each(|c| counter(&mut out, c));
    }
    let cache = app.engine.cache();
    let counters = [
        (
            "tributary_query_cache_hits_total",
            "structured queries answered with a cached batch part",
            cache.hits.load(ordering),
        ),
        (
            "tributary_query_cache_misses_total",
            "structured queries that merged the batch version's rows",
            cache.misses.load(ordering),
        ),
    ];
    counters.into_iter().for_each(|c| counter(&mut out, c));
    family(
        &mut out,
        "tributary_query_cache_bytes",
        "gauge",
        "memory held by cached batch parts",
    );
    sample(
        &mut out,
        "tributary_query_cache_bytes",
        &[],
        cache.bytes() as f64,
    );
    app.metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn livez() -> axum::Json<Value> {
    axum::Json(json!({"status": "live"}))
}

/// Ready once the live versions are loaded (they are before the server starts) and the speed layer
/// has read every partition up to the end it saw when it (re)started, is within `ready_max_lag`
/// of the broker's end on every partition, and is not stalled. Otherwise 503 with the reason and
/// the lag per partition.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let speed = app.engine.live().speed();
    if speed.ready() {
        return axum::Json(json!({"status": "ready"})).into_response();
    }
    let partitions = speed.partitions();
    let status = if partitions.values().any(|p| p.stalled) {
        "stalled"
    } else {
        "catching_up"
    };
    let body = json!({
        "status": status,
        "ready_max_lag": speed.health_settings().ready_max_lag,
        "partitions": partitions_json(speed),
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Per partition: start, next offset, the broker's end, lag and whether it is stalled.
fn partitions_json(speed: &SpeedLayer) -> Vec<Value> {
    (speed.partitions().into_iter())
        .map(|(partition, p)| {
            json!({
                "partition": partition,
                "start": p.start,
                "next": p.next,
                "high_watermark": p.high_watermark,
                "lag": p.lag(),
                "stalled": p.stalled,
            })
        })
        .collect()
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// How long the server waits for in-flight requests at shutdown.
pub const DRAIN: Duration = Duration::from_secs(10);
