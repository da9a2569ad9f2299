//! Exactness end to end (issue 4): the real binary (`tributary serve`, every role) over a real
//! broker and a real local lake, asked through its HTTP API, against a ground truth the test
//! computes from the events it produced, with the shared algebra:
//! (a) before any batch run (speed layer only), (b) right after a batch run, (c) after more events,
//! some pushed over HTTP (`POST /v1/events`) (both layers), (d) while a batch run publishes (every answer during the swap is exact), and
//! (e) after kill -9 of the service and a restart with events produced while it was down.
//!
//! Counts, integer sums, min and max must be equal; float sums and averages equal up to summation
//! order (1e-9 relative); distinct counts and quantiles equal the algebra's sketch of the same
//! events (sketch merges are exact), and within the sketches' error of the exact answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value as Json, json};
use tributary_schemas::aggregate::{Finalized, MetricState};
use tributary_schemas::config::{Config, ViewDef};
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::{Event, EventSchema, Value};
use tributary_testkit::http::{Reply, request};
use tributary_testkit::rng::Rng;
use tributary_testkit::{Broker, free_port};

const PARTITIONS: i32 = 3;
const BASE_MS: i64 = 1_795_000_000_000;

struct Service {
    broker: &'static Broker,
    topic: String,
    lake: tempfile::TempDir,
    address: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Starts `tributary serve`; `memory_budget_mb` 0 makes it scan batch versions from Parquet.
    fn start(&mut self, memory_budget_mb: u32) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["serve"])
            .env("TRIBUTARY_KAFKA__BROKERS", self.broker.bootstrap_servers())
            .env("TRIBUTARY_KAFKA__TOPIC", &self.topic)
            .env("TRIBUTARY_KAFKA__DLQ_TOPIC", "")
            .env("TRIBUTARY_LAKE__URL", self.lake.path())
            .env("TRIBUTARY_ARCHIVER__MAX_FILE_ROWS", "700")
            .env("TRIBUTARY_ARCHIVER__MAX_FILE_AGE", "100ms")
            .env("TRIBUTARY_BATCH__INTERVAL", "1h")
            .env("TRIBUTARY_BATCH__EPOCH_SIZE", "500")
            .env("TRIBUTARY_BATCH__THREADS", "1")
            .env("TRIBUTARY_SERVING__LISTEN", self.address.to_string())
            .env("TRIBUTARY_SERVING__REFRESH", "100ms")
            .env(
                "TRIBUTARY_SERVING__MEMORY_BUDGET_MB",
                memory_budget_mb.to_string(),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tributary serve");
        self.child = Some(child);
        self.wait_for("ready", |s| {
            s.call("GET", "/readyz", None)
                .is_some_and(|r| r.status == 200)
        });
    }

    fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Option<Reply> {
        let body = body.map(Json::to_string);
        request(self.address, method, path, body.as_deref()).ok()
    }

    fn json(&self, method: &str, path: &str, body: Option<&Json>) -> Json {
        let reply = self
            .call(method, path, body)
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

    fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done(self) {
            if let Some(child) = &mut self.child.as_ref()
                && std::fs::metadata(format!("/proc/{}", child.id())).is_err()
            {
                panic!(
                    "the service exited while waiting for {what}\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the speed layer has read, and the archiver archived, everything produced.
    fn wait_for_log(&self) {
        let heads = self
            .broker
            .high_watermarks(&self.topic, PARTITIONS)
            .unwrap();
        self.wait_for("the log to be read and archived", |s| {
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
            let archived = heads.iter().all(|(p, head)| {
                status["archiver"]["progress"][p.to_string()].as_i64() >= Some(*head)
            });
            read && archived
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One random event of the default configuration: power-law pages (some missing, which
/// `pageviews` filters out), late timestamps (up to two days), about 1% malformed.
fn event(rng: &mut Rng, n: u64) -> Vec<u8> {
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
struct Truth {
    config: Config,
    decoder: Decoder,
    payloads: Vec<Vec<u8>>,
    rng: Rng,
    produced: u64,
}

impl Truth {
    fn new() -> Self {
        let config = Config::from_sources(None, []).unwrap();
        Self {
            decoder: Decoder::new(config.events.clone()),
            config,
            payloads: Vec::new(),
            rng: Rng(0x05ee_de2e),
            produced: 0,
        }
    }

    /// The next `count` events; the valid ones are remembered as truth.
    fn next_events(&mut self, count: u64) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        for n in self.produced..self.produced + count {
            let payload = event(&mut self.rng, n);
            if self.decoder.decode(&payload).is_ok() {
                self.payloads.push(payload.clone());
            }
            events.push(payload);
        }
        self.produced += count;
        events
    }

    /// Sends `count` events through push ingest (`POST /v1/events`, NDJSON) instead of Kafka.
    fn push(&mut self, service: &Service, count: u64) {
        let events = self.next_events(count);
        let valid = events
            .iter()
            .filter(|e| self.decoder.decode(e).is_ok())
            .count();
        let body: Vec<u8> = events
            .iter()
            .flat_map(|e| [e.as_slice(), b"\n"].concat())
            .collect();
        let body = String::from_utf8(body).unwrap();
        let reply = request(service.address, "POST", "/v1/events", Some(&body)).unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let report: Json = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(report["accepted"], json!(valid), "{report}");
        assert_eq!(report["rejected"], json!(events.len() - valid), "{report}");
    }

    fn produce(&mut self, broker: &Broker, topic: &str, count: u64) {
        let producer: FutureProducer = broker.producer_config().create().unwrap();
        let first = self.produced;
        let messages: Vec<(i32, Vec<u8>)> = (first..)
            .zip(self.next_events(count))
            .map(|(n, payload)| ((n % PARTITIONS as u64) as i32, payload))
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let sends = messages.iter().map(|(partition, payload)| {
                let record = FutureRecord::<(), _>::to(topic)
                    .partition(*partition)
                    .payload(payload);
                producer.send(record, Duration::from_secs(30))
            });
            for delivery in futures::future::join_all(sends).await {
                delivery.unwrap_or_else(|(error, _)| panic!("delivery failed: {error}"));
            }
        });
    }

    fn view(&self, name: &str) -> &ViewDef {
        self.config.view(name).unwrap()
    }

    /// The algebra's states per (bucket, group values) over every valid event the view keeps.
    fn states(&self, query: &Query) -> BTreeMap<Key, Vec<MetricState>> {
        let view = self.view(query.view);
        let mut rows: BTreeMap<Key, Vec<MetricState>> = BTreeMap::new();
        for payload in &self.payloads {
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
            for (state, metric) in states.iter_mut().zip(&view.metrics) {
                state.update(metric.value(&event.values));
            }
        }
        rows
    }
}

type Key = (Option<i64>, Vec<String>);

/// A field's value as text (`null` when missing).
fn value(event: &Event<'_>, schema: &EventSchema, field: &str) -> String {
    let index = schema.field_index(field).unwrap();
    match &event.values[index] {
        Value::Null => "null".to_owned(),
        Value::Str(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

struct Query {
    view: &'static str,
    granularity: &'static str,
    bucket_ms: Option<i64>,
    group_by: &'static [&'static str],
    filter: Option<(&'static str, &'static str)>,
}

impl Query {
    fn body(&self) -> Json {
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

const QUERIES: [Query; 4] = [
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

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Asserts one reply equals the truth; returns the reply's `meta`.
fn check(service: &Service, truth: &Truth, query: &Query, when: &str) -> Json {
    let reply = service.json("POST", "/v1/query", Some(&query.body()));
    let view = truth.view(query.view);
    let expected = truth.states(query);
    let rows = reply["rows"].as_array().unwrap();
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
    reply["meta"].clone()
}

/// The sketches against the exact answers over all pageviews: distinct users and the p95 latency.
fn check_sketch_errors(service: &Service, truth: &Truth, when: &str) {
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
fn check_sql(service: &Service, truth: &Truth, when: &str) {
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

fn check_all(service: &Service, truth: &Truth, when: &str) -> Json {
    let meta = check(service, truth, &QUERIES[0], when);
    for query in &QUERIES[1..] {
        check(service, truth, query, when);
    }
    check_sketch_errors(service, truth, when);
    check_sql(service, truth, when);
    meta
}

fn meta_in_memory(service: &Service) -> Option<bool> {
    let reply = service.json("POST", "/v1/query", Some(&QUERIES[0].body()));
    reply["meta"]["batch"]["in_memory"].as_bool()
}

fn run_batch(service: &Service) -> Json {
    let reply = service.json("POST", "/v1/batch/run", None);
    for view in reply["views"].as_array().unwrap() {
        assert_eq!(view["outcome"], "published", "{reply}");
    }
    reply
}

#[test]
fn every_answer_equals_the_truth_across_batch_runs_and_a_kill() {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let mut service = Service {
        broker,
        topic: topic.clone(),
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap())),
        log: lake.path().join("serve.log"),
        lake,
        child: None,
    };
    let mut truth = Truth::new();

    // (a) Speed layer only.
    service.start(64);
    truth.produce(broker, &topic, 4000);
    service.wait_for_log();
    let meta = check_all(&service, &truth, "(a) speed only");
    assert!(meta["batch"].is_null(), "{meta}");

    // (b) Right after a batch run: the batch view holds the events below W, speed the rest.
    let run = run_batch(&service);
    let meta = check_all(&service, &truth, "(b) after a batch run");
    assert_eq!(
        meta["batch"]["version"], run["views"][0]["version"],
        "{meta}"
    );
    assert_eq!(meta["speed"]["from"], run["views"][0]["boundary"], "{meta}");
    let below: i64 = (meta["batch"]["boundary"].as_object().unwrap().values())
        .map(|w| w.as_i64().unwrap())
        .sum();
    assert!(below > 0 && below < 4000, "both layers hold events: {meta}");

    // (c) More events, through Kafka and through push ingest: both layers.
    truth.produce(broker, &topic, 2000);
    truth.push(&service, 1000);
    service.wait_for_log();
    check_all(&service, &truth, "(c) both layers, pushed events too");

    // (d) Queries while a recompute publishes: each answer is exact, before and after the swap.
    let versions: BTreeSet<i64> = std::thread::scope(|scope| {
        let publishing = scope.spawn(|| run_batch(&service));
        let mut versions = BTreeSet::new();
        let mut after = 0;
        while after < 3 {
            if publishing.is_finished() {
                after += 1;
            }
            let meta = check(&service, &truth, &QUERIES[1], "(d) during the swap");
            versions.insert(meta["batch"]["version"].as_i64().unwrap());
        }
        publishing.join().unwrap();
        versions
    });
    assert!(
        versions.len() >= 2,
        "the queries saw both versions: {versions:?}"
    );
    check_all(&service, &truth, "(d) after the swap");

    assert_eq!(meta_in_memory(&service), Some(true));

    // (e) kill -9, events produced while down, restart; this time the version is scanned from its
    // Parquet parts (a memory budget of 0).
    service.kill();
    truth.produce(broker, &topic, 2000);
    service.start(0);
    service.wait_for_log();
    let meta = check_all(
        &service,
        &truth,
        "(e) after kill -9 and restart, from Parquet",
    );
    assert_eq!(
        meta["batch"]["version"].as_i64(),
        versions.last().copied(),
        "{meta}"
    );
    assert_eq!(meta["batch"]["in_memory"], false, "{meta}");

    // The later phases asked shapes the batch version had answered before: those answers merged
    // a cached batch part with the current speed rows, and were exact.
    let metrics = service.call("GET", "/metrics", None).unwrap().body;
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tributary_query_cache_hits_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(hits.is_some_and(|h| h > 0.0), "{metrics}");

    // A clean stop: SIGTERM ends the process with success.
    let child = service.child.take().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        service.log_text()
    );
}
