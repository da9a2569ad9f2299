//! The HTTP API (ARCHITECTURE.md §6), with axum: this file wires the routes; each resource's
//! handlers live in a file of their own under `api/` ([`events`] push ingest, [`query`] views,
//! queries and SQL, [`batch`] recomputes on request, [`health`] status, metrics and probes,
//! [`dashboard`] the built-in page at `/`), and
//! [`errors`] turns every error into a status by who is to blame.
//!
//! Every error is `{"error": {"code", "message"}}`: 4xx for the caller's mistakes, with a message that
//! says what to fix; 5xx only for ours, with a generic message (the cause is logged, never sent).

mod batch;
mod dashboard;
mod errors;
mod events;
mod health;
mod query;
mod speed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tributary_schemas::config::{Scope, TokenDef};
use tributary_schemas::layers::StatusSource;
use tributary_schemas::layers::recompute::Recompute;

pub use batch::run_batch;
pub use errors::ApiError;

use crate::audit::{Answered, Audit, Entry};
use crate::auth::{Auth, Denied};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::query::Engine;

/// Everything the handlers share.
#[derive(Debug)]
pub struct App {
    pub engine: Engine,
    /// The recompute service, when this process runs the batch role.
    pub recompute: Option<Arc<dyn Recompute>>,
    /// The archiver's status, when this process runs the archiver role.
    pub archiver: Option<Arc<dyn StatusSource>>,
    /// Push ingest, when this process has a producer for the events topic.
    pub ingest: Option<Arc<Ingest>>,
    pub metrics: Arc<Metrics>,
    /// The tokens requests must present (`[auth]`; off by default).
    pub auth: Auth,
    /// Where requests to scoped routes are recorded (`[auth] audit_log`; off by default).
    pub audit: Audit,
}

/// The token a request was let through with (auth on), for handlers that answer by who asks.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<TokenDef>);

/// The router of every route.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/views", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/v1/events", post(events::events))
        .route("/v1/views", get(query::views))
        .route("/v1/query", post(query::query))
        .route("/v1/sql", post(query::sql))
        .route("/v1/batch/run", post(batch::batch_run))
        .route("/v1/status", get(health::status))
        .route("/v1/speed/{definition}", get(speed::states))
        .route("/metrics", get(health::metrics))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), authorize))
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
        Some("/v1/speed/{definition}") => "/v1/speed",
        Some("/metrics") => "/metrics",
        Some("/livez") => "/livez",
        Some("/readyz") => "/readyz",
        Some("/openapi.json") => "/openapi.json",
        Some("/" | "/views" | "/dashboard.js" | "/dashboard.css") => "/",
        _ => "other",
    };
    // One span per request (what it logs carries method and route) and one line when answered;
    // probes and scrapes at debug, so that they do not drown the rest.
    let method = request.method().clone();
    let span = tracing::info_span!("request", %method, route);
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status().as_u16();
    app.metrics.request(route, status);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    span.in_scope(|| match route {
        "/livez" | "/readyz" | "/metrics" | "/" => {
            tracing::debug!(status, elapsed_ms, "answered");
        }
        _ => tracing::info!(status, elapsed_ms, "answered"),
    });
    response
}

/// The scope a route needs, if any.
fn scope_of(app: &App, route: &str) -> Option<Scope> {
    match route {
        "/livez" | "/readyz" | "/openapi.json" => None,
        // The dashboard's files: no data (its API calls carry the user's token).
        "/" | "/views" | "/dashboard.js" | "/dashboard.css" => None,
        "/metrics" => app.auth.metrics_need_token().then_some(Scope::Read),
        "/v1/events" => Some(Scope::Ingest),
        "/v1/batch/run" | "/v1/speed/{definition}" => Some(Scope::Admin),
        _ => Some(Scope::Read),
    }
}

/// `Authorization: Bearer <token>`, if that is what the request sent.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a request through when its token holds the route's scope (auth on); 401 or 403 otherwise.
/// Every request to a scoped route, refused or not, leaves a line in the audit log.
async fn authorize(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let route = (request.extensions().get::<MatchedPath>())
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let Some(needs) = scope_of(&app, &route) else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let what = format!("{} {route}", request.method());
    let client = (request.extensions().get::<ConnectInfo<SocketAddr>>()).map(|c| c.0.to_string());
    let (token, response) = match app.auth.check(bearer(&request), needs) {
        Ok(caller) => {
            let token = caller.as_ref().map(|c| c.name.clone());
            let limited = caller.as_ref().and_then(|c| app.auth.take(c).err());
            match (caller, limited) {
                (Some(caller), Some(after)) => {
                    let message = format!(
                        "token {:?} made more than its max_requests_per_s; try again in {after} s",
                        caller.name
                    );
                    let error = ApiError::too_many("rate_limited", message, after);
                    (token, error.into_response())
                }
                (caller, _) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(Caller(caller));
                    }
                    (token, next.run(request).await)
                }
            }
        }
        Err(denied @ Denied::Unauthenticated { .. }) => {
            let error = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                denied.message(&what),
            );
            let mut response = error.into_response();
            (response.headers_mut()).insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"tributary\""),
            );
            (None, response)
        }
        Err(denied @ Denied::Forbidden { .. }) => {
            let error = ApiError::new(StatusCode::FORBIDDEN, "forbidden", denied.message(&what));
            (denied.token().map(str::to_owned), error.into_response())
        }
    };
    if app.audit.enabled() {
        let answered = response
            .extensions()
            .get::<Answered>()
            .cloned()
            .unwrap_or_default();
        app.audit.record(&Entry {
            token,
            client,
            route: what,
            views: answered.views,
            query: answered.query,
            rows: answered.rows,
            duration: started.elapsed(),
            status: response.status().as_u16().into(),
        });
    }
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

/// Parses a JSON object body, or says what is wrong with it. (serde would also take a struct from a
/// JSON array of its fields in order, which no caller means.)
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("{what}: {e}"))
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad("the body is not valid JSON", &e))?;
    if !value.is_object() {
        return Err(bad("the body must be a JSON object", &"{...}"));
    }
    serde_json::from_value(value).map_err(|e| bad("the request's fields are wrong", &e))
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// How long the server waits for in-flight requests at shutdown.
pub const DRAIN: Duration = Duration::from_secs(10);
