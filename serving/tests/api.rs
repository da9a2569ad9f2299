//! Every route of the HTTP API and every documented error, through axum's router in-process
//! (`oneshot`). The speed layer holds real aggregated events (fed to its aggregator directly, as
//! its consumer would); the lake is a real local directory. Exactness across the layers is
//! `tests/serving_e2e.rs`'s job, through the real binary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_serving::api::router;
use tributary_serving::ingest::{Ingest, IngestSettings};
use tributary_testkit::Broker;
use tributary_testkit::stream::clickstream;

mod common;

use common::{EVENTS, Setup};

struct Api {
    router: Router,
    _lake: tempfile::TempDir,
}

fn start(with_batch: bool, timeout: Duration, ingest: Option<Arc<Ingest>>) -> Api {
    let (app, lake) = common::app(Setup {
        with_batch,
        timeout,
        ingest,
        ..Setup::default()
    });
    Api {
        router: router(app),
        _lake: lake,
    }
}

fn default_api() -> Api {
    start(false, Duration::from_secs(30), None)
}

async fn call(api: &Api, method: Method, path: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn post(api: &Api, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, text) = call(api, Method::POST, path, &body.to_string()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts a 4xx/5xx with the documented error shape and code; returns the message.
fn error(reply: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["error"]["code"], code, "{}", reply.1);
    reply.1["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn views_lists_dimensions_metrics_and_freshness() {
    let api = default_api();
    let (status, text) = call(&api, Method::GET, "/v1/views", "").await;
    assert_eq!(status, StatusCode::OK);
    let views: Value = serde_json::from_str(&text).unwrap();
    let pageviews = &views["views"][0];
    assert_eq!(pageviews["name"], "pageviews");
    assert_eq!(pageviews["granularity"], "1m");
    assert_eq!(
        pageviews["dimensions"][0],
        json!({"name": "page", "type": "string"})
    );
    assert_eq!(
        pageviews["metrics"][1]["expression"],
        "count_distinct(user_id)"
    );
    assert_eq!(pageviews["metrics"][1]["type"], "int64");
    assert!(pageviews["batch"].is_null());
    assert_eq!(pageviews["state"], "building", "no batch version yet");
    assert!(pageviews["complete"].is_boolean());
    assert!(
        pageviews["freshness"]["newest_event"].is_string(),
        "{pageviews}"
    );
    assert_eq!(views["views"][1]["name"], "traffic");
}

#[tokio::test]
async fn query_answers_with_what_it_merged() {
    let api = default_api();
    let (status, reply) = post(
        &api,
        "/v1/query",
        json!({"view": "pageviews", "granularity": "all", "group_by": ["country"],
               "metrics": ["views", "latency_avg"], "order_by": [{"field": "views", "desc": true}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["columns"],
        json!([{"name": "country", "type": "string"}, {"name": "views", "type": "int64"},
               {"name": "latency_avg", "type": "float64"}])
    );
    let rows = reply["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{reply}");
    let total: i64 = rows.iter().map(|r| r["views"].as_i64().unwrap()).sum();
    assert_eq!(
        total,
        (EVENTS - EVENTS / 100) as i64,
        "1% of clickstream lacks a time"
    );
    let views: Vec<i64> = rows.iter().map(|r| r["views"].as_i64().unwrap()).collect();
    assert!(views.windows(2).all(|w| w[0] >= w[1]), "ordered: {views:?}");
    let meta = &reply["meta"];
    assert_eq!(meta["view"], "pageviews");
    assert!(meta["batch"].is_null());
    assert_eq!(meta["speed"]["events"], json!(EVENTS - EVENTS / 100));
    assert_eq!(meta["speed"]["next_offsets"], json!({"0": 1500, "1": 1500}));
    assert_eq!(meta["truncated"], false);
    assert!(meta["freshness"]["age_ms"].is_i64());

    // Roll-up: the 1m view per hour, filtered; times are RFC 3339.
    let (status, reply) = post(
        &api,
        "/v1/query",
        json!({"view": "pageviews", "granularity": "1h", "from": "2026-11-21T10:00:00Z",
               "to": "2026-11-21T11:00:00Z", "filter": [{"field": "country", "op": "in", "value": ["NL", "US"]}],
               "metrics": ["views"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["rows"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["rows"][0]["time"], "2026-11-21T10:00:00.000Z");

    // A limit below the answer's size cuts it and says so.
    let (_, reply) = post(
        &api,
        "/v1/query",
        json!({"view": "pageviews", "group_by": ["page"], "limit": 1}),
    )
    .await;
    assert_eq!(reply["rows"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["meta"]["truncated"], true);

    // A metric filter applies to the answer.
    let (_, reply) = post(
        &api,
        "/v1/query",
        json!({"view": "pageviews", "granularity": "all", "group_by": ["page"],
               "filter": [{"field": "views", "op": "gt", "value": 1000}]}),
    )
    .await;
    assert!(
        reply["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["views"].as_i64().unwrap() > 1000),
        "{reply}"
    );
}

#[tokio::test]
async fn query_errors_say_what_to_fix() {
    let api = default_api();
    // A view the configuration does not have (never had, or removed): not found.
    let reply = post(&api, "/v1/query", json!({"view": "nope"})).await;
    let message = error(&reply, StatusCode::NOT_FOUND, "unknown_view");
    assert!(
        message.contains("the views are: pageviews, traffic"),
        "{message}"
    );
    let cases = [
        (
            json!({"view": "pageviews", "metrics": ["clicks"]}),
            "unknown_metric",
            "its metrics are: views, users",
        ),
        (
            json!({"view": "pageviews", "group_by": ["device"]}),
            "unknown_field",
            "dimensions of pageviews are: page, country",
        ),
        (
            json!({"view": "pageviews", "group_by": ["page", "page"]}),
            "bad_group_by",
            "listed twice",
        ),
        (
            json!({"view": "pageviews", "filter": [{"field": "page", "op": "like", "value": "/"}]}),
            "bad_filter",
            "unknown filter op",
        ),
        (
            json!({"view": "pageviews", "filter": [{"field": "page", "op": "eq", "value": 3}]}),
            "bad_filter",
            "needs a string value",
        ),
        (
            json!({"view": "pageviews", "filter": [{"field": "page", "op": "in", "value": []}]}),
            "bad_filter",
            "non-empty array",
        ),
        (
            json!({"view": "pageviews", "filter": [{"field": "device", "op": "eq", "value": "x"}]}),
            "unknown_field",
            "cannot filter on \"device\"",
        ),
        (
            json!({"view": "pageviews", "granularity": "90s"}),
            "bad_granularity",
            "multiple of 1m",
        ),
        (
            json!({"view": "pageviews", "granularity": "banana"}),
            "bad_granularity",
            "granularity \"banana\"",
        ),
        (
            json!({"view": "pageviews", "from": "yesterday"}),
            "bad_time_range",
            "RFC 3339",
        ),
        (
            json!({"view": "pageviews", "from": "2026-11-21T11:00:00Z", "to": "2026-11-21T10:00:00Z"}),
            "bad_time_range",
            "from must be before to",
        ),
        (
            json!({"view": "pageviews", "limit": 0}),
            "bad_limit",
            "between 1 and 1000",
        ),
        (
            json!({"view": "pageviews", "limit": 5000}),
            "bad_limit",
            "between 1 and 1000",
        ),
        (
            json!({"view": "pageviews", "order_by": [{"field": "device"}]}),
            "unknown_field",
            "cannot order by",
        ),
        (
            json!({"view": "pageviews", "colour": "red"}),
            "bad_json",
            "unknown field `colour`",
        ),
        (json!({"group_by": []}), "bad_json", "missing field `view`"),
    ];
    for (body, code, says) in cases {
        let reply = post(&api, "/v1/query", body.clone()).await;
        let message = error(&reply, StatusCode::BAD_REQUEST, code);
        assert!(
            message.contains(says),
            "{body}: {message:?} should say {says:?}"
        );
    }
    let (status, text) = call(&api, Method::POST, "/v1/query", "{\"view\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("bad_json") && text.contains("not valid JSON"),
        "{text}"
    );
}

#[tokio::test]
async fn sql_is_read_only_over_the_finalized_views() {
    let api = default_api();
    let (status, reply) = post(
        &api,
        "/v1/sql",
        json!({"sql": "SELECT country, sum(views) AS views FROM pageviews GROUP BY country ORDER BY views DESC"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let total: i64 = (reply["rows"].as_array().unwrap().iter())
        .map(|r| r["views"].as_i64().unwrap())
        .sum();
    assert_eq!(total, (EVENTS - EVENTS / 100) as i64);
    assert_eq!(reply["meta"]["views"][0]["view"], "pageviews");

    let refused = [
        "DROP TABLE pageviews",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO pageviews VALUES (1)",
        "SET datafusion.execution.batch_size = 1",
    ];
    for sql in refused {
        let reply = post(&api, "/v1/sql", json!({"sql": sql})).await;
        assert_eq!(reply.0, StatusCode::BAD_REQUEST, "{sql}: {}", reply.1);
        let code = reply.1["error"]["code"].as_str().unwrap();
        assert!(
            code == "read_only" || code == "bad_sql",
            "{sql}: {}",
            reply.1
        );
    }
    let message = error(
        &post(&api, "/v1/sql", json!({"sql": "SELEC 1"})).await,
        StatusCode::BAD_REQUEST,
        "bad_sql",
    );
    assert!(message.contains("SELEC"), "{message}");
    let message = error(
        &post(&api, "/v1/sql", json!({"sql": "SELECT * FROM clicks"})).await,
        StatusCode::BAD_REQUEST,
        "bad_sql",
    );
    assert!(message.contains("clicks"), "{message}");
    let message = error(
        &post(&api, "/v1/sql", json!({"query": "SELECT 1"})).await,
        StatusCode::BAD_REQUEST,
        "bad_json",
    );
    assert!(message.contains("unknown field `query`"), "{message}");
}

#[tokio::test]
async fn a_query_past_the_timeout_is_cancelled_with_408() {
    let api = start(false, Duration::from_millis(1), None);
    let sql = "SELECT sum(value) FROM generate_series(1, 10000000000)";
    let reply = post(&api, "/v1/sql", json!({"sql": sql})).await;
    let message = error(&reply, StatusCode::REQUEST_TIMEOUT, "query_timeout");
    assert!(message.contains("narrow the time range"), "{message}");
}

#[tokio::test]
async fn batch_run_needs_the_batch_role_and_a_known_view() {
    let api = default_api();
    let reply = post(&api, "/v1/batch/run", json!({})).await;
    error(&reply, StatusCode::CONFLICT, "batch_not_here");

    let api = start(true, Duration::from_secs(30), None);
    let (status, reply) = post(&api, "/v1/batch/run", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["views"][0]["outcome"], "nothing_archived",
        "an empty lake: {reply}"
    );
    let reply = post(&api, "/v1/batch/run", json!({"view": "nope"})).await;
    error(&reply, StatusCode::NOT_FOUND, "unknown_view");
    let (status, text) = call(&api, Method::POST, "/v1/batch/run", "[").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
}

#[tokio::test]
async fn status_metrics_health_and_the_api_description() {
    let api = default_api();
    post(&api, "/v1/query", json!({"view": "traffic"})).await;

    let (status, text) = call(&api, Method::GET, "/v1/status", "").await;
    assert_eq!(status, StatusCode::OK);
    let status_json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status_json["speed"]["events"], json!(EVENTS - EVENTS / 100));
    assert_eq!(
        status_json["speed"]["ready"], false,
        "the consumer never ran"
    );
    assert!(status_json["batch"]["views"][0]["version"].is_null());

    let (status, text) = call(&api, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    for series in [
        "tributary_speed_events_total 2970",
        "tributary_freshness_seconds{view=\"pageviews\"}",
        "tributary_batch_version{view=\"traffic\"} 0",
        "tributary_query_duration_seconds_count{route=\"/v1/query\"} 1",
        "tributary_http_requests_total{route=\"/v1/query\",status=\"200\"} 1",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }

    let (status, _) = call(&api, Method::GET, "/livez", "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) = call(&api, Method::GET, "/readyz", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("catching_up"), "{text}");

    let (status, text) = call(&api, Method::GET, "/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    let description: Value = serde_json::from_str(&text).unwrap();
    for (path, methods) in description["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, text) = call(&api, method.clone(), path, "{}").await;
            // A routed path may answer 404 for what it names (`unknown_definition`), never the
            // router's own `not_found`.
            let unrouted = text.contains("\"code\":\"not_found\"");
            assert!(
                !unrouted && status != StatusCode::METHOD_NOT_ALLOWED,
                "documented {method} {path} is not routed: {status} {text}"
            );
        }
    }

    let reply = post(&api, "/v2/query", json!({})).await;
    error(&reply, StatusCode::NOT_FOUND, "not_found");
    let (status, text) = call(&api, Method::GET, "/v1/query", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(text.contains("method_not_allowed"), "{text}");
}

fn ingest(broker: &Broker, topic: &str, max_body: usize) -> Arc<Ingest> {
    let config = Config::from_sources(None, []).unwrap();
    let settings = IngestSettings {
        brokers: broker.bootstrap_servers(),
        topic: topic.to_owned(),
        max_body,
        timeout: Duration::from_secs(5),
    };
    Arc::new(Ingest::new(settings, Decoder::new(config.events)).unwrap())
}

async fn push(api: &Api, body: Vec<u8>, encoding: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(Method::POST).uri("/v1/events");
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = (api.router.clone())
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn ndjson(events: &[Vec<u8>]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|e| [e.as_slice(), b"\n"].concat())
        .collect()
}

/// `(position, code)` of each listed rejection.
fn rejections(reply: &Value) -> Vec<(String, i64, String)> {
    (reply["errors"].as_array().unwrap().iter())
        .map(|e| {
            assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
            let (key, at) = match e.get("line") {
                Some(line) => ("line", line),
                None => ("index", &e["index"]),
            };
            (
                key.to_owned(),
                at.as_i64().unwrap(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_ingest_produces_valid_events_and_says_why_others_were_refused() {
    let broker = Broker::shared();
    let topic = broker.create_topic(2).await.unwrap();
    let api = start(
        false,
        Duration::from_secs(30),
        Some(ingest(broker, &topic, 64 << 10)),
    );
    let valid: Vec<Vec<u8>> = (0..30).map(clickstream).collect();

    // NDJSON with bad lines among good ones, a blank line and CRLF endings.
    let mut body = [valid[0].as_slice(), b"\n", &valid[1], b"\r\n{\"ts\":1,\n\n"].concat();
    body.extend_from_slice(&valid[2]);
    body.extend_from_slice(
        b"\n{\"user_id\":\"u\"}\n{\"ts\":\"2026-11-21T10:00:00Z\",\"bytes\":\"many\"}\n",
    );
    body.extend(ndjson(&valid[3..20]));
    let (status, first) = push(&api, body, None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (first["accepted"].as_u64(), first["rejected"].as_u64()),
        (Some(20), Some(3))
    );
    let line = |n: i64, code: &str| ("line".to_owned(), n, code.to_owned());
    assert_eq!(
        rejections(&first),
        vec![
            line(3, "not_json"),
            line(6, "missing_time"),
            line(7, "wrong_type")
        ]
    );
    let offsets = first["offsets"].as_array().unwrap();
    assert_eq!(
        offsets[1].as_i64().unwrap() - offsets[0].as_i64().unwrap(),
        19
    );

    // A gzip-compressed JSON array with two bad elements; the next request takes the next partition.
    let mut elements: Vec<&[u8]> = valid[20..30].iter().map(Vec::as_slice).collect();
    elements.insert(4, b"\"just a string\"");
    elements.insert(7, br#"{"ts":"yesterday"}"#);
    let array = [b"[".to_vec(), elements.join(&b",\n "[..]), b"]".to_vec()].concat();
    let (status, second) = push(&api, gzip(&array), Some("gzip")).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        (second["accepted"].as_u64(), second["rejected"].as_u64()),
        (Some(10), Some(2))
    );
    let index = |n: i64, code: &str| ("index".to_owned(), n, code.to_owned());
    assert_eq!(
        rejections(&second),
        vec![index(4, "not_an_object"), index(7, "bad_timestamp")]
    );
    assert_ne!(first["partition"], second["partition"]);

    // Every valid event is in Kafka, byte for byte and in order, where the replies said.
    let read = broker.read_topic(&topic, 2).unwrap();
    for (reply, expected) in [(&first, &valid[..20]), (&second, &valid[20..])] {
        let partition = reply["partition"].as_i64().unwrap() as i32;
        let payloads: Vec<&Vec<u8>> = read[&partition].iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, expected.iter().collect::<Vec<_>>());
        assert_eq!(read[&partition][0].0, reply["offsets"][0].as_i64().unwrap());
    }

    // Bodies refused whole: nothing of them is produced.
    let big = ndjson(&vec![valid[0].clone(); 400]);
    let refused = [
        (
            big.clone(),
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            gzip(&[b' '; 1 << 20]),
            Some("gzip"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            valid[0].clone(),
            Some("br"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
        ),
        (
            valid[0].clone(),
            Some("gzip"),
            StatusCode::BAD_REQUEST,
            "bad_gzip",
        ),
        (
            [b"[", valid[0].as_slice(), b","].concat(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            b" \n \n".to_vec(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
    ];
    for (body, encoding, status, code) in refused {
        let reply = push(&api, body, encoding).await;
        let message = error(&reply, status, code);
        assert!(message.len() > 20, "{message}");
    }
    let (status, reply) = push(&api, b"nope\n{}\n".to_vec(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (reply["accepted"].as_u64(), reply["rejected"].as_u64()),
        (Some(0), Some(2))
    );
    let ends = broker.high_watermarks(&topic, 2).unwrap();
    assert_eq!(
        ends.values().sum::<i64>(),
        30,
        "only the 30 valid events were produced"
    );

    let (_, metrics) = call(&api, Method::GET, "/metrics", "").await;
    for series in [
        "tributary_ingest_accepted_total 30",
        "tributary_ingest_rejected_total 7",
        "tributary_ingest_unwritten_total 0",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_ingest_is_503_while_kafka_is_down_and_nothing_is_half_accepted() {
    let broker = Broker::start().unwrap();
    let topic = broker.create_topic(1).await.unwrap();
    let api = start(
        false,
        Duration::from_secs(30),
        Some(ingest(&broker, &topic, 1 << 20)),
    );
    let events: Vec<Vec<u8>> = (0..10).map(clickstream).collect();
    let (status, reply) = push(&api, ndjson(&events[..5]), None).await;
    assert_eq!(
        (status, reply["accepted"].as_u64()),
        (StatusCode::OK, Some(5)),
        "{reply}"
    );

    broker.stop();
    let (status, reply) = push(&api, ndjson(&events[5..]), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["error"]["code"], "kafka_unavailable");
    assert_eq!(reply["accepted"], 0);
    assert_eq!(
        reply["unwritten"],
        json!([{"line": 1}, {"line": 2}, {"line": 3}, {"line": 4}, {"line": 5}])
    );

    // A client that resends exactly what a 503 lists as unwritten ends with every event once.
    broker.restart().unwrap();
    let mut pending: Vec<Vec<u8>> = events[5..].to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "Kafka never came back: {}",
            broker.log()
        );
        let (status, reply) = push(&api, ndjson(&pending), None).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
        let unwritten: Vec<usize> = (reply["unwritten"].as_array().unwrap().iter())
            .map(|p| p["line"].as_u64().unwrap() as usize - 1)
            .collect();
        pending = unwritten.into_iter().map(|i| pending[i].clone()).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let read = broker.read_topic(&topic, 1).unwrap();
    let payloads: Vec<&Vec<u8>> = read[&0].iter().map(|(_, p)| p).collect();
    assert_eq!(payloads, events.iter().collect::<Vec<_>>());
}

/// Rows of an answer keyed by their non-metric columns, metrics as JSON values.
fn keyed(reply: &Value, keys: &[&str]) -> BTreeMap<String, BTreeMap<String, Value>> {
    let rows = reply["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    (rows.iter())
        .map(|row| {
            let row = row.as_object().unwrap();
            let key: Vec<String> = keys.iter().map(|k| row[*k].to_string()).collect();
            let metrics = (row.iter())
                .filter(|(name, _)| !keys.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            (key.join("|"), metrics)
        })
        .collect()
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

#[tokio::test]
async fn merge_over_the_states_tables_equals_the_query_api_at_every_grain() {
    let api = default_api();
    let config = Config::from_sources(None, []).unwrap();
    for view in &config.views {
        let metrics: Vec<&str> = view.metrics.iter().map(|m| m.name.as_str()).collect();
        let merged: Vec<String> = metrics
            .iter()
            .map(|m| format!("merge({m}) AS {m}"))
            .collect();
        let dimension = &view.dimensions[0].name;
        // (granularity, SQL time expression, grouping by the first dimension, a filter)
        let filter_value = if view.name == "pageviews" {
            "NL"
        } else {
            "mobile"
        };
        let filter_field = &view.dimensions[usize::from(view.name == "pageviews")].name;
        for (granularity, time) in [
            ("1h", Some("date_trunc('hour', time)")),
            ("1d", Some("date_trunc('day', time)")),
            ("all", None),
        ] {
            for (by_dimension, filtered) in [(false, false), (true, false), (true, true)] {
                let mut select = Vec::new();
                let mut keys = Vec::new();
                let mut group_by = Vec::new();
                if let Some(time) = time {
                    select.push(format!("{time} AS time"));
                    keys.push("time");
                }
                if by_dimension {
                    select.push(dimension.clone());
                    keys.push(dimension.as_str());
                }
                group_by.extend((1..=keys.len()).map(|i| i.to_string()));
                select.extend(merged.iter().cloned());
                let mut sql = format!("SELECT {} FROM {}_states", select.join(", "), view.name);
                let mut request = json!({"view": view.name, "granularity": granularity,
                                         "metrics": metrics});
                if by_dimension {
                    request["group_by"] = json!([dimension]);
                }
                if filtered {
                    sql.push_str(&format!(" WHERE {filter_field} = '{filter_value}'"));
                    request["filter"] =
                        json!([{"field": filter_field, "op": "eq", "value": filter_value}]);
                }
                if !group_by.is_empty() {
                    sql.push_str(&format!(" GROUP BY {}", group_by.join(", ")));
                }
                let case = format!("{sql} vs {request}");
                let (status, by_sql) = post(&api, "/v1/sql", json!({"sql": sql})).await;
                assert_eq!(status, StatusCode::OK, "{case}: {by_sql}");
                let (status, by_query) = post(&api, "/v1/query", request.clone()).await;
                assert_eq!(status, StatusCode::OK, "{case}: {by_query}");
                let (by_sql, by_query) = (keyed(&by_sql, &keys), keyed(&by_query, &keys));
                assert!(!by_query.is_empty(), "{case}");
                assert_eq!(
                    by_sql.keys().collect::<Vec<_>>(),
                    by_query.keys().collect::<Vec<_>>(),
                    "{case}"
                );
                for (key, expected) in &by_query {
                    for metric in &metrics {
                        let (got, want) = (&by_sql[key][*metric], &expected[*metric]);
                        assert!(
                            same_value(got, want),
                            "{case}: {key} {metric}: {got} != {want}"
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn merge_takes_another_quantile_and_refuses_what_is_not_a_state() {
    let api = default_api();
    let (status, reply) = post(
        &api,
        "/v1/sql",
        json!({"sql": "SELECT merge(latency_p95) AS p95, merge(latency_p95, 0.95) AS again, \
                        merge(latency_p95, 0.5) AS p50, merge(latency_min) AS low, merge(latency_max) AS high \
                        FROM pageviews_states"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let row = &reply["rows"][0];
    assert_eq!(row["p95"], row["again"], "{reply}");
    let (p50, p95) = (row["p50"].as_f64().unwrap(), row["p95"].as_f64().unwrap());
    let (low, high) = (row["low"].as_f64().unwrap(), row["high"].as_f64().unwrap());
    assert!(low <= p50 && p50 <= p95 && p95 <= high * 1.01, "{reply}");

    for (sql, says) in [
        ("SELECT merge(views) FROM pageviews", "is not one"),
        ("SELECT merge(page) FROM pageviews_states", "is not one"),
        (
            "SELECT merge(views, 0.5) FROM pageviews_states",
            "only for a quantile metric",
        ),
    ] {
        let message = error(
            &post(&api, "/v1/sql", json!({"sql": sql})).await,
            StatusCode::BAD_REQUEST,
            "bad_sql",
        );
        assert!(message.contains(says), "{sql}: {message}");
    }
    // The quantile is a literal read when the plan runs: refused then, still the caller's 400.
    let sql = "SELECT merge(latency_p95, 2) FROM pageviews_states";
    let message = error(
        &post(&api, "/v1/sql", json!({"sql": sql})).await,
        StatusCode::BAD_REQUEST,
        "sql_failed",
    );
    assert!(message.contains("between 0 and 1"), "{sql}: {message}");
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused() {
    let api = default_api();
    for (path, body) in [
        ("/v1/query", json!(["pageviews", "1h"])),
        ("/v1/sql", json!(["SELECT 1"])),
        ("/v1/batch/run", json!([null])),
        ("/v1/query", json!("pageviews")),
    ] {
        let message = error(
            &post(&api, path, body.clone()).await,
            StatusCode::BAD_REQUEST,
            "bad_json",
        );
        assert!(
            message.contains("must be a JSON object"),
            "{path} {body}: {message}"
        );
    }
}
