//! Dashboard query benchmark (issue 4): a per-minute time series of views, distinct users and p95
//! latency over one day, filtered by one country, against a batch version of 1 day x 100 pages x
//! 20 countries at 1m (2.88M state rows, published to a real local lake and loaded the way
//! `tributary serve` loads it) plus live speed-layer data above its boundary.
//!
//! Requests go through the HTTP router in-process (routing, JSON parsing, planning, merge,
//! finalize, JSON answer); the network stack is left out. Reports single-client latency
//! percentiles and the throughput of 16 concurrent clients.
//!
//! Then the same series over real loopback sockets, side by side and interleaved: `POST /v1/query`
//! (axum served on TCP, a keep-alive HTTP client) and the Postgres wire (`tokio-postgres`, a
//! prepared statement with binary results, as Grafana's driver sends it) asking
//! `SELECT time, merge(views), merge(users), merge(latency_p95) FROM pageviews_states WHERE
//! country = $1 AND time >= $2 AND time < $3 GROUP BY time ORDER BY time`; single client, then 16
//! clients each on its own connection (p50/p99 per query and throughput).
//!
//! `cargo bench -p tributary-serving --bench dashboard`; `DASHBOARD_QUERIES` (default 300) sets
//! the single-client sample size.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, TimestampMillisecondBuilder};
use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tributary_batch::parquet_io::encode_view;
use tributary_schemas::aggregate::MetricState;
use tributary_schemas::aggregate::arrow::StateColumnBuilder;
use tributary_schemas::config::Config;
use tributary_schemas::event::Value;
use tributary_schemas::event::raw_rows::{KafkaPosition, ValueColumnBuilder};
use tributary_schemas::lake::{Boundary, Lake, MANIFEST_FORMAT, Manifest, ManifestFile};
use tributary_serving::api::{App, router};
use tributary_serving::auth::Auth;
use tributary_serving::live::{Live, Loaded};
use tributary_serving::metrics::Metrics;
use tributary_serving::query::Engine;
use tributary_speed::aggregator::Aggregator;
use tributary_speed::consumer::{SpeedLayer, SpeedSettings};
use tributary_speed::health::HealthSettings;
use tributary_testkit::rng::Rng;

const DAY_MS: i64 = 86_400_000;
const START_MS: i64 = 1_795_000_000_000 - 1_795_000_000_000 % DAY_MS;
const PAGES: usize = 100;
const COUNTRIES: usize = 20;
const BOUNDARY: i64 = 3_000_000;
const SPEED_EVENTS: usize = 200_000;

fn country(i: usize) -> String {
    format!("C{i:02}")
}

/// One minute of state rows: every page x country, each from a few synthetic events.
fn minute_batch(config: &Config, minute: i64, rng: &mut Rng) -> RecordBatch {
    let view = config.view("pageviews").unwrap();
    let mut time = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut page = ValueColumnBuilder::new(view.dimensions[0].ty);
    let mut place = ValueColumnBuilder::new(view.dimensions[1].ty);
    let mut columns: Vec<StateColumnBuilder> = (view.metrics.iter())
        .map(|m| StateColumnBuilder::new(m.state_kind()))
        .collect();
    for p in 0..PAGES {
        for c in 0..COUNTRIES {
            time.append_value(START_MS + minute * 60_000);
            page.append(&Value::Str(format!("/page/{p}").into()));
            place.append(&Value::Str(country(c).into()));
            let mut states: Vec<MetricState> = (view.metrics.iter())
                .map(|m| MetricState::empty(m.state_kind()))
                .collect();
            for _ in 0..1 + rng.below(4) {
                let user = Value::Str(format!("u{}", rng.below(200_000)).into());
                let latency = Value::Float(5.0 + rng.unit() * 800.0);
                for (state, metric) in states.iter_mut().zip(&view.metrics) {
                    match metric.field.as_ref().map(|f| f.name.as_str()) {
                        Some("user_id") => state.update(&user),
                        Some(_) => state.update(&latency),
                        None => state.update(&Value::Null),
                    }
                }
            }
            for (column, state) in columns.iter_mut().zip(&states) {
                column.append(state).unwrap();
            }
        }
    }
    let mut arrays = vec![Arc::new(time.finish()) as _, page.finish(), place.finish()];
    arrays.extend(columns.iter_mut().map(StateColumnBuilder::finish));
    RecordBatch::try_new(view.state_schema(), arrays).unwrap()
}

/// Publishes version 1 of `pageviews` (one day) to the lake, as a recompute would.
async fn publish(config: &Config, store: &Lake) -> u64 {
    let view = config.view("pageviews").unwrap();
    let mut rng = Rng(7);
    let mut files = Vec::new();
    let mut rows = 0;
    let mut part = Vec::new();
    for minute in 0..1440 {
        part.push(minute_batch(config, minute, &mut rng));
        if part.len() == 120 || minute == 1439 {
            let bytes = encode_view(&part, 128 * 1024, &["page", "country"]).unwrap();
            let size = bytes.len() as u64;
            let path = store
                .put_part("pageviews", 1, files.len(), bytes)
                .await
                .unwrap();
            let part_rows: usize = part.iter().map(RecordBatch::num_rows).sum();
            files.push(ManifestFile {
                path,
                rows: part_rows as u64,
                bytes: size,
            });
            rows += part_rows as u64;
            part.clear();
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        view: "pageviews".to_owned(),
        definition_hash: view.definition_hash(),
        version: 1,
        created_at: Utc::now(),
        row_count: rows,
        files,
        epoch_size: 100_000,
        generation: 0,
        closed_generations: Vec::new(),
        boundary: Boundary([(0, BOUNDARY)].into()),
        newest_bucket: None,
        full_at: None,
        deltas: 0,
        retained_from: None,
        definition: None,
    };
    store.write_manifest(&manifest).await.unwrap();
    store.write_current("pageviews", 1).await.unwrap();
    rows
}

/// Live events of the day's last hour, above the boundary.
fn speed_layer(config: &Config) -> SpeedLayer {
    let mut aggregator = Aggregator::new(&config.events, &config.views, 100_000).unwrap();
    let mut rng = Rng(11);
    let payloads: Vec<Vec<u8>> = (0..SPEED_EVENTS)
        .map(|n| {
            let ts = START_MS + DAY_MS - 3_600_000 + (n as i64 * 3_600_000 / SPEED_EVENTS as i64);
            format!(
                r#"{{"ts":{ts},"user_id":"u{}","page":"/page/{}","country":"{}","latency_ms":{:.3}}}"#,
                rng.below(200_000),
                rng.below(PAGES as u64),
                country(rng.below(COUNTRIES as u64) as usize),
                5.0 + rng.unit() * 800.0
            )
            .into_bytes()
        })
        .collect();
    let messages: Vec<(KafkaPosition, &[u8])> = (payloads.iter().enumerate())
        .map(|(n, payload)| {
            let position = KafkaPosition {
                partition: 0,
                offset: BOUNDARY + n as i64,
                timestamp_ms: None,
            };
            (position, payload.as_slice())
        })
        .collect();
    for poll in messages.chunks(2000) {
        aggregator.apply(poll).unwrap();
    }
    let settings = SpeedSettings {
        brokers: "127.0.0.1:9".to_owned(),
        topic: "events".to_owned(),
        poll_batch: 2000,
        poll_wait: Duration::from_millis(20),
        health: HealthSettings {
            ready_max_lag: config.serving.ready_max_lag,
            stall_after: config.serving.stall_after,
        },
        partitions: None,
        drop_after: Duration::ZERO,
    };
    SpeedLayer::new(settings, aggregator, Boundary([(0, BOUNDARY)].into()))
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config::from_sources(None, []).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let store = Lake::open(lake.path().to_str().unwrap()).unwrap();
    let started = Instant::now();
    let rows = runtime.block_on(publish(&config, &store));
    println!(
        "published {rows} state rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let budget = 4096 << 20;
    let started = Instant::now();
    let loaded = runtime
        .block_on(Loaded::load(
            &store,
            "events",
            &config.events,
            &config.views,
            budget,
        ))
        .unwrap();
    let in_memory = loaded.served[0].version.as_ref().unwrap().in_memory();
    println!(
        "loaded (in memory: {in_memory}) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let live = Arc::new(Live::new(
        store,
        "events".to_owned(),
        config.views.clone(),
        budget,
        loaded,
        Arc::new(speed_layer(&config)),
    ));
    let app_with = |auth: Auth| App {
        engine: Engine::new(
            Arc::clone(&live),
            100_000,
            Duration::from_secs(30),
            256 << 20,
        )
        .unwrap(),
        recompute: None,
        archiver: None,
        ingest: None,
        metrics: Arc::new(Metrics::default()),
        auth,
        audit: Default::default(),
    };
    let app = Arc::new(app_with(Auth::default()));
    // The same data behind a token with a row filter on `pageviews` (auth on).
    let hash = tributary_serving::auth::token_hash_hex(BENCH_TOKEN);
    let auth_file = format!(
        "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"dashboard\"\nsha256 = \"{hash}\"\n\
         scopes = [\"read\"]\n[auth.tokens.row_filter]\npageviews = \"country <> 'C19'\"\n"
    );
    let auth_config = Config::from_sources(Some((&auth_file, "auth.toml")), []).unwrap();
    let authed = Arc::new(app_with(Auth::new(&auth_config.auth)));
    let router = router(Arc::clone(&app));
    let body = dashboard_query();
    let query = move |router: axum::Router| {
        let body = body.clone();
        async move {
            let request = Request::post("/v1/query")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            assert!(response.status().is_success());
            let bytes: Bytes = response.into_body().collect().await.unwrap().to_bytes();
            bytes.len()
        }
    };

    let started = Instant::now();
    let size = runtime.block_on(query(router.clone()));
    println!(
        "first query (cold: merges the batch version's 144k rows for this shape): {:.1} ms, {size} bytes of JSON (1440 minutes)",
        started.elapsed().as_secs_f64() * 1e3
    );
    for _ in 0..10 {
        runtime.block_on(query(router.clone()));
    }
    let samples: usize = std::env::var("DASHBOARD_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        runtime.block_on(query(router.clone()));
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "single client, {samples} queries: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );

    let clients = 16;
    let per_client = (samples / 4).max(10);
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let router = router.clone();
                let query = query.clone();
                tokio::spawn(async move {
                    for _ in 0..per_client {
                        query(router.clone()).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = runtime.block_on(async {
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    });
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("tributary_query_cache"))
    {
        println!("{line}");
    }
    println!(
        "{clients} concurrent clients, {} queries: {:.1} queries/s",
        clients * per_client,
        (clients * per_client) as f64 / elapsed
    );

    runtime.block_on(over_sockets(Arc::clone(&app), samples));
    runtime.block_on(auth_overhead(app, authed, samples));
}

/// The dashboard query's `/v1/query` body: a day per minute for one country.
fn dashboard_query() -> String {
    serde_json::json!({
        "view": "pageviews",
        "from": chrono::DateTime::from_timestamp_millis(START_MS).unwrap().to_rfc3339(),
        "to": chrono::DateTime::from_timestamp_millis(START_MS + DAY_MS).unwrap().to_rfc3339(),
        "granularity": "1m",
        "metrics": ["views", "users", "latency_p95"],
        "filter": [{"field": "country", "op": "eq", "value": "C07"}],
    })
    .to_string()
}

const BENCH_TOKEN: &str = "trb_dashboard_bench";

/// The same `/v1/query` over loopback without auth and with a token whose row filter applies to
/// every read of `pageviews`, interleaved query by query.
async fn auth_overhead(plain: Arc<App>, authed: Arc<App>, samples: usize) {
    let serve = async |app: Arc<App>| {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router(app)).into_future());
        format!("http://{address}/v1/query")
    };
    let (plain_url, authed_url) = (serve(plain).await, serve(authed).await);
    let body = dashboard_query();
    let client = reqwest::Client::new();
    let ask = async |url: &str, token: Option<&str>| {
        let started = Instant::now();
        let mut request = (client.post(url))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let bytes = response.bytes().await.unwrap();
        assert!(bytes.len() > 100_000);
        started.elapsed()
    };
    for _ in 0..10 {
        ask(&plain_url, None).await;
        ask(&authed_url, Some(BENCH_TOKEN)).await;
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        without.push(ask(&plain_url, None).await);
        with.push(ask(&authed_url, Some(BENCH_TOKEN)).await);
    }
    let p = |v: &mut Vec<Duration>, q| {
        v.sort();
        percentile(v, q)
    };
    let (p50, p99) = (p(&mut without, 0.5), p(&mut without, 0.99));
    let (a50, a99) = (p(&mut with, 0.5), p(&mut with, 0.99));
    println!("auth overhead, /v1/query over loopback, {samples} each, interleaved:");
    println!("  without auth                 p50 {p50:.2} ms, p99 {p99:.2} ms");
    println!(
        "  token + row filter           p50 {a50:.2} ms ({:+.1}%), p99 {a99:.2} ms ({:+.1}%)",
        (a50 / p50 - 1.0) * 100.0,
        (a99 / p99 - 1.0) * 100.0
    );
}

/// One dashboard query over a socket: HTTP `/v1/query` or the Postgres wire.
#[derive(Clone)]
enum Client {
    Http(reqwest::Client, String, String),
    Wire(Arc<tokio_postgres::Client>, Arc<tokio_postgres::Statement>),
}

impl Client {
    async fn query(&self) -> usize {
        match self {
            Client::Http(client, url, body) => {
                let response = (client.post(url.as_str()))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                let bytes = response.bytes().await.unwrap();
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                body["rows"].as_array().unwrap().len()
            }
            Client::Wire(client, statement) => {
                let from = chrono::DateTime::from_timestamp_millis(START_MS).unwrap();
                let to = chrono::DateTime::from_timestamp_millis(START_MS + DAY_MS).unwrap();
                let rows = client
                    .query(statement.as_ref(), &[&"C07", &from, &to])
                    .await
                    .unwrap();
                rows.len()
            }
        }
    }
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    format!(
        "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(latencies, 0.5),
        percentile(latencies, 0.95),
        percentile(latencies, 0.99),
        percentile(latencies, 1.0)
    )
}

async fn over_sockets(app: Arc<App>, samples: usize) {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_address = http.local_addr().unwrap();
    tokio::spawn(axum::serve(http, router(Arc::clone(&app))).into_future());
    let pg = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pg_address = pg.local_addr().unwrap();
    tokio::spawn(tributary_serving::wire::serve(
        app,
        pg,
        None,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let body = dashboard_query();
    let sql = "SELECT time, merge(views) AS views, merge(users) AS users, merge(latency_p95) AS latency_p95 \
               FROM pageviews_states WHERE country = $1 AND time >= $2 AND time < $3 GROUP BY time ORDER BY time";
    let http_client = || {
        Client::Http(
            reqwest::Client::new(),
            format!("http://{http_address}/v1/query"),
            body.clone(),
        )
    };
    let wire_client = async || {
        let client = tributary_testkit::pg::connect(pg_address, "bench", "tributary")
            .await
            .unwrap();
        let statement = client.prepare(sql).await.unwrap();
        Client::Wire(Arc::new(client), Arc::new(statement))
    };
    let (http, wire) = (http_client(), wire_client().await);
    let started = Instant::now();
    let rows = wire.query().await;
    println!(
        "over sockets: first wire query {:.1} ms, {rows} rows; /v1/query {} rows",
        started.elapsed().as_secs_f64() * 1e3,
        http.query().await
    );
    for _ in 0..10 {
        http.query().await;
        wire.query().await;
    }
    let (mut by_http, mut by_wire) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let started = Instant::now();
        http.query().await;
        by_http.push(started.elapsed());
        let started = Instant::now();
        wire.query().await;
        by_wire.push(started.elapsed());
    }
    println!("single client, {samples} each, interleaved:");
    println!("  /v1/query      {}", summary(&mut by_http));
    println!("  postgres wire  {}", summary(&mut by_wire));

    let clients = 16;
    let per_client = (samples / 4).max(10);
    for (name, make) in [("/v1/query", false), ("postgres wire", true)] {
        let mut connections = Vec::new();
        for _ in 0..clients {
            connections.push(match make {
                false => http_client(),
                true => wire_client().await,
            });
        }
        let started = Instant::now();
        let tasks: Vec<_> = (connections.into_iter())
            .map(|client| {
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let started = Instant::now();
                        client.query().await;
                        latencies.push(started.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{clients} clients, {name}: {:.1} queries/s, {}",
            latencies.len() as f64 / elapsed,
            summary(&mut latencies)
        );
    }
}
