//! What the end-to-end tests of the binary share: `tributary serve` as a child process on a free
//! port over a temp-dir lake ([`Service`], on testkit's `TestServer`), a random event stream with its ground truth
//! ([`Truth`]), and checks of `/v1/query`, `/v1/sql` and Postgres-wire answers against that truth.
//!
//! Each test binary that says `mod common;` uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value as Json, json};
use tributary_schemas::aggregate::{Finalized, MetricState};
use tributary_schemas::config::{Config, ViewDef};
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::{Event, EventSchema, Value};
use tributary_testkit::http::{Reply, request_with};
use tributary_testkit::pg;
use tributary_testkit::rng::Rng;
use tributary_testkit::s3::{LAKE_PREFIX, S3Server};
use tributary_testkit::stream::{is_late, kafka_stamp};
use tributary_testkit::{Broker, TestServer};

pub const PARTITIONS: i32 = 3;
pub const BASE_MS: i64 = 1_795_000_000_000;

/// `tributary serve` with every role over the test's topic, on [`TestServer`], with settings that
/// make files, epochs and refreshes small and quick.
pub struct Service {
    pub broker: &'static Broker,
    pub topic: String,
    pub server: TestServer,
    /// The S3 server and bucket of a lake on `s3://<bucket>/a/prefix` ([`Service::on_s3`]).
    pub s3: Option<(&'static S3Server, String)>,
    /// The token [`Service::call`] presents (auth on), if any.
    pub token: Option<String>,
}

impl Service {
    /// A service (not started) on a free port over a fresh temp-dir lake.
    pub fn new(broker: &'static Broker, topic: &str) -> Self {
        let mut server = TestServer::new(env!("CARGO_BIN_EXE_tributary"), broker, topic);
        server
            .env("TRIBUTARY_ARCHIVER__MAX_FILE_ROWS", "700")
            .env("TRIBUTARY_ARCHIVER__MAX_FILE_AGE", "100ms")
            .env("TRIBUTARY_BATCH__INTERVAL", "1h")
            .env("TRIBUTARY_BATCH__EPOCH_SIZE", "500")
            .env("TRIBUTARY_BATCH__THREADS", "1")
            .env("TRIBUTARY_SERVING__REFRESH", "100ms")
            // Long enough for a snapshot to outlive several phases of a test on a slow machine.
            .env("TRIBUTARY_SERVING__SNAPSHOT_TTL", "10m");
        Self {
            broker,
            topic: topic.to_owned(),
            server,
            s3: None,
            token: None,
        }
    }

    /// Puts the lake on `s3://<a new bucket>/a/prefix` of `s3` instead of a temp directory.
    pub fn on_s3(&mut self, s3: &'static S3Server) -> &mut Self {
        let lake = s3.lake_for(&mut self.server, "lake");
        self.s3 = Some((s3, lake.bucket));
        self
    }

    /// Deletes the Parquet parts of `view`'s `version` from the lake, wherever it is (an object
    /// store that lost them).
    pub fn lose_parts(&self, view: &str, version: u64) {
        let dir = format!("views/{view}/{version:020}");
        match &self.s3 {
            Some((s3, bucket)) => {
                let keys = s3.list(bucket, &format!("{LAKE_PREFIX}/{dir}/"));
                let parts: Vec<_> = keys.iter().filter(|k| k.ends_with(".parquet")).collect();
                assert!(!parts.is_empty(), "no parts under {dir}: {keys:?}");
                for key in parts {
                    s3.delete(bucket, key);
                }
            }
            None => {
                for part in std::fs::read_dir(self.server.lake().join(dir)).unwrap() {
                    let part = part.unwrap().path();
                    if part.extension().is_some_and(|e| e == "parquet") {
                        std::fs::remove_file(part).unwrap();
                    }
                }
            }
        }
    }

    /// Starts `tributary serve` and waits until `/readyz` says ready; `memory_budget_mb` 0 makes
    /// it scan batch versions from Parquet.
    pub fn start(&mut self, memory_budget_mb: u32) {
        self.budget(memory_budget_mb);
        self.server.start(&["serve"]);
    }

    /// Starts `tributary serve` without waiting for it.
    pub fn spawn(&mut self, memory_budget_mb: u32) {
        self.budget(memory_budget_mb);
        self.server.spawn(&["serve"]);
    }

    fn budget(&mut self, memory_budget_mb: u32) {
        let budget = memory_budget_mb.to_string();
        self.server
            .env("TRIBUTARY_SERVING__MEMORY_BUDGET_MB", budget);
    }

    /// A request with [`Self::token`], if there is one.
    pub fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Option<Reply> {
        self.call_as(self.token.as_deref(), method, path, body)
    }

    /// A request presenting `token` (none: no Authorization header).
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Json>,
    ) -> Option<Reply> {
        let body = body.map(Json::to_string);
        let header = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = (header.iter())
            .map(|h| ("Authorization", h.as_str()))
            .collect();
        request_with(self.server.address, method, path, &headers, body.as_deref()).ok()
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&Json>) -> Json {
        self.json_as(self.token.as_deref(), method, path, body)
    }

    /// [`Self::json`] presenting `token`.
    pub fn json_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Json>,
    ) -> Json {
        let reply = self
            .call_as(token, method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no reply\n{}", self.log_text()));
        assert_eq!(
            reply.status,
            200,
            "{method} {path} {body:?}: {}\n{}",
            reply.body,
            self.log_text()
        );
        serde_json::from_str(&reply.body).unwrap()
    }

    pub fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        self.server.wait_for(what, |_| done(self));
    }

    pub fn wait_within(&self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        self.server.wait_within(what, timeout, |_| done(self));
    }

    /// Waits until the speed layer has read, and the archiver archived, everything produced.
    pub fn wait_for_log(&self) {
        self.wait_for_heads("the log to be read and archived", true);
    }

    /// Waits until the speed layer has read everything produced (the archiver may lag: the lake
    /// may be down).
    pub fn wait_for_read(&self) {
        self.wait_for_heads("the log to be read", false);
    }

    fn wait_for_heads(&self, what: &str, archived: bool) {
        let heads = self
            .broker
            .high_watermarks(&self.topic, PARTITIONS)
            .unwrap();
        self.wait_for(what, |s| {
            let Some(reply) = s.call("GET", "/v1/status", None) else {
                return false;
            };
            let status: Json = serde_json::from_str(&reply.body).unwrap();
            let read = heads.iter().all(|(p, head)| {
                status["speed"]["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["partition"] == json!(p) && l["next"].as_i64() >= Some(*head))
            });
            let in_lake = heads.iter().all(|(p, head)| {
                status["archiver"]["progress"][p.to_string()].as_i64() >= Some(*head)
            });
            read && (in_lake || !archived)
        });
    }

    /// The built-in defaults with each `(from, to)` replaced (each `from` must be there), as a
    /// configuration file in the test's directory; its path.
    pub fn config_file(&self, name: &str, changes: &[(&str, &str)]) -> String {
        let mut text = tributary_schemas::config::DEFAULT_CONFIG.to_owned();
        for (from, to) in changes {
            assert!(text.contains(from), "the defaults have no {from:?}");
            text = text.replacen(from, to, 1);
        }
        let path = self.server.dir().join(name);
        std::fs::write(&path, &text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Stops the service cleanly (SIGTERM) and starts it again with [`Self::config_file`] of
    /// `changes`; returns the file's path.
    pub fn restart_with(&mut self, name: &str, changes: &[(&str, &str)]) -> String {
        let status = self.server.terminate();
        assert!(status.success(), "{status}");
        let config = self.config_file(name, changes);
        self.server.env("TRIBUTARY_CONFIG", &config);
        self.start(256);
        config
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub fn log_text(&self) -> String {
        self.server.log_text()
    }
}

/// One random event of the default configuration: power-law pages (some missing, which
/// `pageviews` filters out), late timestamps (up to two days), about 1% malformed.
pub fn event(rng: &mut Rng, n: u64) -> Vec<u8> {
    if rng.chance(1) {
        return br#"{"page":"/no-time"}"#.to_vec();
    }
    let mut ts = BASE_MS + n as i64 * 250;
    if rng.chance(10) {
        ts -= rng.below(2 * 86_400_000) as i64;
    }
    let page = match rng.below(100) {
        0..8 => Json::Null,
        r => json!(format!("/p/{}", r * r / 1000)),
    };
    let countries = ["NL", "US", "DE", "IN", "BR"];
    let devices = ["mobile", "desktop", "tablet"];
    let mut event = json!({
        "ts": ts,
        "user_id": format!("u{}", rng.below(400)),
        "session_id": format!("s{}", rng.below(900)),
        "country": countries[rng.below(5) as usize],
        "device": devices[rng.below(3) as usize],
        "latency_ms": (rng.unit() * 900.0 * 1000.0).round() / 1000.0 + 1.0,
        "bytes": rng.below(100_000),
    });
    if !page.is_null() {
        event["page"] = page;
    }
    if rng.chance(30) {
        event["referrer"] = json!("https://search.example/");
    }
    event.to_string().into_bytes()
}

/// Every valid event produced so far, with a decoder to read them.
pub struct Truth {
    pub config: Config,
    pub decoder: Decoder,
    pub payloads: Vec<Vec<u8>>,
    /// The Kafka timestamp of each of `payloads`.
    pub stamps: Vec<i64>,
    pub rng: Rng,
    pub produced: u64,
}

impl Truth {
    pub fn new() -> Self {
        let config = Config::from_sources(None, []).unwrap();
        Self {
            decoder: Decoder::new(config.events.clone()),
            config,
            payloads: Vec::new(),
            stamps: Vec::new(),
            rng: Rng(0x05ee_de2e),
            produced: 0,
        }
    }

    /// The next `count` events; the valid ones are remembered as truth, with the Kafka timestamp
    /// `stamp` says they get (of their event time).
    pub fn next_events(&mut self, count: u64, stamp: impl Fn(i64) -> i64) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        for n in self.produced..self.produced + count {
            let payload = event(&mut self.rng, n);
            if let Ok(event) = self.decoder.decode(&payload) {
                self.stamps.push(stamp(event.time_ms));
                self.payloads.push(payload.clone());
            }
            events.push(payload);
        }
        self.produced += count;
        events
    }

    /// Sends `count` events through push ingest (`POST /v1/events`, NDJSON) instead of Kafka.
    pub fn push(&mut self, service: &Service, count: u64) {
        // The ingest endpoint's producer stamps them on arrival: after this instant (any event time
        // of the stream is days before it, so none is near the late/on-time line).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let events = self.next_events(count, |_| now);
        let valid = events
            .iter()
            .filter(|e| self.decoder.decode(e).is_ok())
            .count();
        let body: Vec<u8> = events
            .iter()
            .flat_map(|e| [e.as_slice(), b"\n"].concat())
            .collect();
        let body = String::from_utf8(body).unwrap();
        let reply = (service.server.call("POST", "/v1/events", Some(&body))).unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let report: Json = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(report["accepted"], json!(valid), "{report}");
        assert_eq!(report["rejected"], json!(events.len() - valid), "{report}");
    }

    pub fn produce(&mut self, broker: &Broker, topic: &str, count: u64) {
        let producer: FutureProducer = broker.producer_config().create().unwrap();
        let first = self.produced;
        let messages: Vec<(i32, Vec<u8>)> = (first..)
            .zip(self.next_events(count, kafka_stamp))
            .map(|(n, payload)| ((n % PARTITIONS as u64) as i32, payload))
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // In chunks, so a million events do not wait in librdkafka's queue (or in memory) at once.
        for chunk in messages.chunks(50_000) {
            runtime.block_on(async {
                let sends = chunk.iter().map(|(partition, payload)| {
                    let time = self.decoder.decode(payload).map(|e| e.time_ms);
                    let record = FutureRecord::<(), _>::to(topic)
                        .partition(*partition)
                        .timestamp(kafka_stamp(time.unwrap_or(0)))
                        .payload(payload);
                    producer.send(record, Duration::from_secs(60))
                });
                for delivery in futures::future::join_all(sends).await {
                    delivery.unwrap_or_else(|(error, _)| panic!("delivery failed: {error}"));
                }
            });
        }
    }

    pub fn view(&self, name: &str) -> &ViewDef {
        self.config.view(name).unwrap()
    }

    /// The algebra's states per (bucket, group values) over every valid event the view keeps.
    pub fn states(&self, query: &Query) -> BTreeMap<Key, Vec<MetricState>> {
        let view = self.view(query.view);
        let mut rows: BTreeMap<Key, Vec<MetricState>> = BTreeMap::new();
        for (payload, &stamp) in self.payloads.iter().zip(&self.stamps) {
            let event = self.decoder.decode(payload).unwrap();
            if view.name == "pageviews" && value(&event, &self.config.events, "page") == "null" {
                continue; // the view's filter: page IS NOT NULL
            }
            if let Some((field, wanted)) = query.filter
                && value(&event, &self.config.events, field) != wanted
            {
                continue;
            }
            let bucket = query
                .bucket_ms
                .map(|g| event.time_ms - event.time_ms.rem_euclid(g));
            let groups = query
                .group_by
                .iter()
                .map(|d| value(&event, &self.config.events, d))
                .collect();
            let states = rows.entry((bucket, groups)).or_insert_with(|| {
                (view.metrics.iter())
                    .map(|m| MetricState::empty(m.state_kind()))
                    .collect()
            });
            let late = is_late(event.time_ms, Some(stamp));
            for (state, metric) in states.iter_mut().zip(&view.metrics) {
                if metric.name != "late" || late {
                    state.update(metric.value(&event.values));
                }
            }
        }
        rows
    }
}

pub type Key = (Option<i64>, Vec<String>);

/// A field's value as text (`null` when missing).
pub fn value(event: &Event<'_>, schema: &EventSchema, field: &str) -> String {
    let index = schema.field_index(field).unwrap();
    match &event.values[index] {
        Value::Null => "null".to_owned(),
        Value::Str(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

pub struct Query {
    pub view: &'static str,
    pub granularity: &'static str,
    pub bucket_ms: Option<i64>,
    pub group_by: &'static [&'static str],
    pub filter: Option<(&'static str, &'static str)>,
}

impl Query {
    pub fn body(&self) -> Json {
        let mut body = json!({
            "view": self.view,
            "granularity": self.granularity,
            "group_by": self.group_by,
        });
        if let Some((field, value)) = self.filter {
            body["filter"] = json!([{"field": field, "op": "eq", "value": value}]);
        }
        body
    }
}

pub const QUERIES: [Query; 4] = [
    Query {
        view: "pageviews",
        granularity: "all",
        bucket_ms: None,
        group_by: &[],
        filter: None,
    },
    Query {
        view: "pageviews",
        granularity: "all",
        bucket_ms: None,
        group_by: &["country"],
        filter: None,
    },
    Query {
        view: "pageviews",
        granularity: "1h",
        bucket_ms: Some(3_600_000),
        group_by: &["page"],
        filter: Some(("country", "NL")),
    },
    Query {
        view: "traffic",
        granularity: "1d",
        bucket_ms: Some(86_400_000),
        group_by: &["device", "referrer"],
        filter: None,
    },
];

/// More roll-ups for the wire: every grain with and without a dimension filter.
pub const MORE_ROLLUPS: [Query; 3] = [
    Query {
        view: "pageviews",
        granularity: "1d",
        bucket_ms: Some(86_400_000),
        group_by: &[],
        filter: Some(("country", "DE")),
    },
    Query {
        view: "pageviews",
        granularity: "1h",
        bucket_ms: Some(3_600_000),
        group_by: &["country"],
        filter: None,
    },
    Query {
        view: "pageviews",
        granularity: "all",
        bucket_ms: None,
        group_by: &["page"],
        filter: Some(("country", "US")),
    },
];

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Asserts one reply equals the truth; returns the reply's `meta`.
pub fn check(service: &Service, truth: &Truth, query: &Query, when: &str) -> Json {
    let reply = service.json("POST", "/v1/query", Some(&query.body()));
    check_rows(reply["rows"].as_array().unwrap(), truth, query, when);
    reply["meta"].clone()
}

/// Asserts rows (`time` in RFC 3339 unless the query is over all time, then a column per group-by
/// dimension and per metric) equal the truth.
pub fn check_rows(rows: &[Json], truth: &Truth, query: &Query, when: &str) {
    check_metrics(rows, truth, query, None, when);
}

/// [`check_rows`] of the `only` metrics of the truth's view (all of them with `None`).
pub fn check_metrics(
    rows: &[Json],
    truth: &Truth,
    query: &Query,
    only: Option<&[&str]>,
    when: &str,
) {
    let view = truth.view(query.view);
    let expected = truth.states(query);
    let mut seen = BTreeSet::new();
    for row in rows {
        let bucket = row.get("time").map(|t| {
            chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        });
        let groups: Vec<String> = (query.group_by.iter())
            .map(|d| row[d].as_str().unwrap_or("null").to_owned())
            .collect();
        let key = (bucket, groups);
        let states = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{when}: {} has a row {key:?} no event makes", query.view));
        for (metric, state) in view.metrics.iter().zip(states) {
            if only.is_some_and(|only| !only.contains(&metric.name.as_str())) {
                continue;
            }
            let got = &row[&metric.name];
            let ok = match metric.finalize(state) {
                Finalized::Null => got.is_null(),
                Finalized::Int(v) => got.as_i64() == Some(v),
                Finalized::Float(v) => got.as_f64().is_some_and(|g| close(g, v)),
                Finalized::Timestamp(_) => {
                    unreachable!("no timestamp metrics in the default views")
                }
            };
            assert!(
                ok,
                "{when}: {} {key:?} {}: got {got}, the algebra says {:?}",
                query.view,
                metric.name,
                metric.finalize(state)
            );
        }
        seen.insert(key);
    }
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{when}: {} lacks rows {missing:?}",
        query.view
    );
    assert!(!rows.is_empty(), "{when}: {} answered nothing", query.view);
}

/// A query as SQL over `<view>_states`, rolled up with `merge()`; with `parameter`, its filter
/// value is `$1`.
pub fn merge_sql(truth: &Truth, query: &Query, parameter: bool) -> String {
    let view = truth.view(query.view);
    let mut select = Vec::new();
    match query.granularity {
        "all" => {}
        "1h" => select.push("date_trunc('hour', time) AS time".to_owned()),
        "1d" => select.push("date_trunc('day', time) AS time".to_owned()),
        other => panic!("no SQL bucket for {other}"),
    }
    let keys = select.len() + query.group_by.len();
    select.extend(query.group_by.iter().map(|d| (*d).to_owned()));
    select.extend((view.metrics.iter()).map(|m| format!("merge({0}) AS {0}", m.name)));
    let mut sql = format!("SELECT {} FROM {}_states", select.join(", "), view.name);
    if let Some((field, value)) = query.filter {
        let value = match parameter {
            true => "$1".to_owned(),
            false => format!("'{value}'"),
        };
        sql.push_str(&format!(" WHERE {field} = {value}"));
    }
    if keys > 0 {
        let keys: Vec<String> = (1..=keys).map(|k| k.to_string()).collect();
        sql.push_str(&format!(" GROUP BY {}", keys.join(", ")));
    }
    sql
}

/// The Postgres wire against the same truth (the real driver, binary results): every query of
/// [`QUERIES`] and [`MORE_ROLLUPS`] as `merge()` over `<view>_states`, the filtered one with a parameter too, and the
/// finalized `pageviews` equal to `POST /v1/sql`'s rows.
pub fn check_wire(service: &Service, truth: &Truth, when: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = pg::connect(service.server.pg_address, "e2e", "tributary")
            .await
            .unwrap_or_else(|e| panic!("{when}: connecting to the wire: {e}"));
        for query in QUERIES.iter().chain(&MORE_ROLLUPS) {
            let sql = merge_sql(truth, query, false);
            let rows = client
                .query(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{when}: {sql}: {e:?}"));
            let rows: Vec<Json> = pg::json_rows(&rows).into_iter().map(Json::Object).collect();
            check_rows(&rows, truth, query, &format!("{when}, wire: {sql}"));
            if let Some((_, value)) = query.filter {
                let sql = merge_sql(truth, query, true);
                let bound = client.query(&sql, &[&value]).await.unwrap();
                let bound: Vec<Json> = pg::json_rows(&bound)
                    .into_iter()
                    .map(Json::Object)
                    .collect();
                check_rows(
                    &bound,
                    truth,
                    query,
                    &format!("{when}, wire: {sql} with ${value}"),
                );
            }
        }
        let sql = "SELECT * FROM pageviews WHERE country = 'NL' ORDER BY time, page";
        let by_wire = pg::json_rows(&client.query(sql, &[]).await.unwrap());
        let by_http = service.json("POST", "/v1/sql", Some(&json!({"sql": sql})));
        let by_http = by_http["rows"].as_array().unwrap();
        assert_eq!(by_wire.len(), by_http.len(), "{when}: {sql}");
        for (wire, http) in by_wire.iter().zip(by_http) {
            for (column, value) in wire {
                let same = match (value.as_f64(), http[column].as_f64()) {
                    (Some(a), Some(b)) => close(a, b),
                    _ => *value == http[column],
                };
                assert!(same, "{when}: {sql}: {column} {value} vs {}", http[column]);
            }
        }
    });
}

/// The sketches against the exact answers over all pageviews: distinct users and the p95 latency.
pub fn check_sketch_errors(service: &Service, truth: &Truth, when: &str) {
    let reply = service.json("POST", "/v1/query", Some(&QUERIES[0].body()));
    let row = &reply["rows"][0];
    let (mut users, mut latencies) = (BTreeSet::new(), Vec::new());
    for payload in &truth.payloads {
        let event = truth.decoder.decode(payload).unwrap();
        if value(&event, &truth.config.events, "page") == "null" {
            continue;
        }
        users.insert(value(&event, &truth.config.events, "user_id"));
        latencies.push(
            event.values[truth.config.events.field_index("latency_ms").unwrap()]
                .as_f64()
                .unwrap(),
        );
    }
    let distinct = row["users"].as_f64().unwrap();
    let exact = users.len() as f64;
    assert!(
        (distinct - exact).abs() <= 0.03 * exact,
        "{when}: users {distinct} vs exact {exact}"
    );
    latencies.sort_by(f64::total_cmp);
    let rank = 0.95 * (latencies.len() - 1) as f64;
    let (low, high) = (
        latencies[rank.floor() as usize],
        latencies[rank.ceil() as usize],
    );
    let p95 = row["latency_p95"].as_f64().unwrap();
    assert!(
        p95 >= low * 0.99 && p95 <= high * 1.01,
        "{when}: p95 {p95} outside 1% of the exact [{low}, {high}]"
    );
}

/// The SQL surface over the same truth: views per country.
pub fn check_sql(service: &Service, truth: &Truth, when: &str) {
    let sql =
        "SELECT country, sum(views) AS views FROM pageviews GROUP BY country ORDER BY country";
    let reply = service.json("POST", "/v1/sql", Some(&json!({"sql": sql})));
    let expected = truth.states(&QUERIES[1]);
    let got: BTreeMap<String, i64> = (reply["rows"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["country"].as_str().unwrap().to_owned(),
                r["views"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<String, i64> = (expected.iter())
        .map(|((_, groups), states)| {
            let MetricState::Count(count) = &states[0] else {
                panic!()
            };
            (groups[0].clone(), count.finalize())
        })
        .collect();
    assert_eq!(got, want, "{when}: SQL views per country");
}

pub fn check_all(service: &Service, truth: &Truth, when: &str) -> Json {
    let meta = check(service, truth, &QUERIES[0], when);
    for query in &QUERIES[1..] {
        check(service, truth, query, when);
    }
    check_sketch_errors(service, truth, when);
    check_sql(service, truth, when);
    check_wire(service, truth, when);
    meta
}

pub fn meta_in_memory(service: &Service) -> Option<bool> {
    let reply = service.json("POST", "/v1/query", Some(&QUERIES[0].body()));
    reply["meta"]["batch"]["in_memory"].as_bool()
}

/// Per partition, the offsets an answer counted: below its batch version's boundary and the
/// speed layer's next offsets (`meta` of a `/v1/query` answer).
pub fn counted(meta: &Json) -> BTreeMap<i32, i64> {
    let mut counted: BTreeMap<i32, i64> = BTreeMap::new();
    for source in [&meta["batch"]["boundary"], &meta["speed"]["next_offsets"]] {
        for (partition, offset) in source.as_object().into_iter().flatten() {
            let entry = counted.entry(partition.parse().unwrap()).or_default();
            *entry = (*entry).max(offset.as_i64().unwrap());
        }
    }
    counted
}

pub fn run_batch(service: &Service) -> Json {
    let reply = service.json("POST", "/v1/batch/run", None);
    for view in reply["views"].as_array().unwrap() {
        assert_eq!(view["outcome"], "published", "{reply}");
    }
    reply
}
