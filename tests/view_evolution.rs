//! Views changing while they serve (issue 31, blue/green), through the real binary on a real
//! broker and lake: a changed view keeps answering exactly under the definition its live version
//! was computed with, for what both definitions share, until the first version under the new one
//! is published; then it answers the new definition's truth, never anything else. What only the
//! new definition has is 503 `view_building`. The switch never re-reads the log.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PARTITIONS, QUERIES, Query, Service, Truth, check_all, check_metrics, counted};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value as Json, json};
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_testkit::Broker;
use tributary_testkit::http::{Reply, request};
use tributary_testkit::stream::kafka_stamp;

/// `amount`, an int64 field, and traffic's `sum(amount)` over it.
const AMOUNT: [(&str, &str); 2] = [
    ("bytes = \"int64\"", "bytes = \"int64\"\namount = \"int64\""),
    (
        "bytes = \"sum(bytes)\"",
        "bytes = \"sum(bytes)\"\namount = \"sum(amount)\"",
    ),
];

/// pageviews: [page, country] where page IS NOT NULL → [country, device] without tablets.
const PAGEVIEWS_CHANGED: (&str, &str) = (
    "dimensions = [\"page\", \"country\"]\nfilter = \"page IS NOT NULL\"",
    "dimensions = [\"country\", \"device\"]\nfilter = \"device <> 'tablet'\"",
);

/// Sends `payloads` (event `n` to partition `n % PARTITIONS`), each with the Kafka timestamp
/// `stamp` gives its JSON, and returns where each landed.
fn send_stamped(
    broker: &Broker,
    topic: &str,
    first: u64,
    payloads: Vec<Vec<u8>>,
    stamp: impl Fn(&Json) -> i64,
) -> Vec<Sent> {
    let producer: FutureProducer = broker.producer_config().create().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sends = (first..).zip(payloads).map(|(n, payload): (u64, Vec<u8>)| {
            let producer = producer.clone();
            let topic = topic.to_owned();
            let event: Json = serde_json::from_slice(&payload).unwrap_or_default();
            let stamp = stamp(&event);
            async move {
                let record = FutureRecord::<(), _>::to(&topic)
                    .partition((n % PARTITIONS as u64) as i32)
                    .timestamp(stamp)
                    .payload(&payload);
                let delivery = (producer.send(record, Duration::from_secs(60)).await)
                    .unwrap_or_else(|(error, _)| panic!("delivery failed: {error}"));
                Sent {
                    partition: delivery.partition,
                    offset: delivery.offset,
                    payload,
                }
            }
        });
        futures::future::join_all(sends).await
    })
}

/// [`send_stamped`] as the truth stamps events: by event time ([`kafka_stamp`]).
fn send(broker: &Broker, topic: &str, first: u64, payloads: Vec<Vec<u8>>) -> Vec<Sent> {
    send_stamped(broker, topic, first, payloads, |event| {
        kafka_stamp(event["ts"].as_i64().unwrap_or(0))
    })
}

#[derive(Debug, Clone)]
struct Sent {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
}

/// A structured query of `view` for `metrics` per `group`, over all time.
fn per_group(view: &str, group: &str, metrics: &[&str]) -> Json {
    json!({"view": view, "granularity": "all", "group_by": [group], "metrics": metrics})
}

/// `query` of `metrics` only (the ones the old definition answers while the view builds).
fn body_of(query: &Query, metrics: &[&str]) -> Json {
    let mut body = query.body();
    body["metrics"] = json!(metrics);
    body
}

fn post(service: &Service, body: &Json) -> Reply {
    service
        .server
        .call("POST", "/v1/query", Some(&body.to_string()))
        .expect("the server answers")
}

/// `POST /v1/sql` of `text`.
fn sql(service: &Service, text: &str) -> Reply {
    let body = json!({ "sql": text }).to_string();
    service.server.call("POST", "/v1/sql", Some(&body)).unwrap()
}

fn view_entry(service: &Service, name: &str) -> Json {
    let views = service.json("GET", "/v1/views", None);
    (views["views"].as_array().unwrap().iter())
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no view {name}: {views}"))
        .clone()
}

fn assert_building(reply: &Reply, says: &str) {
    assert_eq!(reply.status, 503, "{}", reply.body);
    let error: Json = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(error["error"]["code"], "view_building", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} should say {says:?}");
    assert_eq!(reply.header("retry-after"), Some("30"), "{}", reply.head);
}

const TRAFFIC_METRICS: [&str; 6] = [
    "events",
    "sessions",
    "bytes",
    "latency_p50",
    "latency_p99",
    "late",
];

#[test]
fn a_field_and_a_metric_over_it_are_added_while_every_other_metric_stays_exact() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    service.start(256);
    let mut truth = Truth::new();
    truth.produce(broker, &topic, 3000);
    service.wait_for_log();
    common::run_batch(&service);
    check_all(&service, &truth, "before the change");

    // `amount` added to the events, and `traffic` gets a metric over it.
    service.restart_with("added.toml", &AMOUNT);
    // Half the new events carry the field; the truth's decoder (the old schema) skips it.
    let first = truth.produced;
    let mut amounts: BTreeMap<String, i64> = BTreeMap::new();
    let payloads: Vec<Vec<u8>> = (first..)
        .zip(truth.next_events(3000, kafka_stamp))
        .map(|(n, payload)| {
            let mut event: Json = serde_json::from_slice(&payload).unwrap();
            if n % 2 == 0 && event.get("ts").is_some() {
                let amount = (n % 97) as i64;
                event["amount"] = json!(amount);
                let device = event["device"].as_str().unwrap().to_owned();
                *amounts.entry(device).or_default() += amount;
            }
            event.to_string().into_bytes()
        })
        .collect();
    send(broker, &topic, first, payloads);
    service.wait_for_log();

    let traffic = view_entry(&service, "traffic");
    assert_eq!(traffic["state"], "building", "{traffic}");
    assert_eq!(traffic["building"]["answering"], "old_definition");
    assert_eq!(traffic["building"]["waiting"], json!(["amount"]));
    let metrics = service.server.call("GET", "/metrics", None).unwrap().body;
    assert!(
        metrics.contains("tributary_view_building{view=\"traffic\"} 1")
            && metrics.contains("tributary_view_building{view=\"pageviews\"} 0"),
        "{metrics}"
    );
    assert_eq!(view_entry(&service, "pageviews")["state"], "live");
    let asked = per_group("traffic", "device", &["events", "amount"]);
    assert_building(
        &post(&service, &asked),
        "amount is only in the new definition",
    );
    assert_building(
        &post(&service, &json!({"view": "traffic"})),
        "events, sessions, bytes, latency_p50, latency_p99, late are answered now",
    );
    let amounts_sql = sql(&service, "SELECT device, amount FROM traffic");
    assert_building(&amounts_sql, "amount is only in the new definition");
    // On the Postgres wire too: SQLSTATE 55000 (object not in prerequisite state), the shared
    // metrics answered.
    let pg = service.server.pg_address;
    let refused = runtime.block_on(async {
        let client = tributary_testkit::pg::connect(pg, "e2e", "tributary")
            .await
            .unwrap();
        client
            .query("SELECT device, amount FROM traffic", &[])
            .await
            .unwrap_err()
    });
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("55000"),
        "{refused:?}"
    );
    let psql = tributary_testkit::pg::psql(pg, "tributary", &["-c", "SELECT amount FROM traffic"]);
    assert!(
        psql.as_ref()
            .is_err_and(|e| e.contains("amount is only in the new definition")),
        "{psql:?}"
    );
    let events = tributary_testkit::pg::psql(
        pg,
        "tributary",
        &["-t", "-c", "SELECT sum(events) FROM traffic"],
    )
    .unwrap();
    let produced = truth.payloads.len() as i64;
    assert_eq!(events.trim().parse::<i64>().unwrap(), produced, "{events}");

    // The rebuild reads the raw files of both schemas; every shared metric is sampled meanwhile.
    let address = service.server.address;
    let run = std::thread::spawn(move || {
        request(address, "POST", "/v1/batch/run", Some("{}")).expect("the run answers")
    });
    let mut samples = 0;
    loop {
        let finished = run.is_finished();
        for query in &QUERIES {
            let only: &[&str] = match query.view {
                "traffic" => &TRAFFIC_METRICS,
                _ => &[],
            };
            let body = match only.is_empty() {
                true => query.body(),
                false => body_of(query, only),
            };
            let reply = service.json("POST", "/v1/query", Some(&body));
            let only = (!only.is_empty()).then_some(only);
            let rows = reply["rows"].as_array().unwrap();
            check_metrics(rows, &truth, query, only, "while traffic rebuilds");
        }
        samples += 1;
        if finished {
            break;
        }
    }
    let run = run.join().unwrap();
    assert_eq!(run.status, 200, "{}", run.body);
    let report: Json = serde_json::from_str(&run.body).unwrap();
    assert!(samples >= 2, "{samples} samples");
    let published = (report["views"].as_array().unwrap().iter())
        .find(|v| v["view"] == "traffic")
        .unwrap();
    assert_eq!(published["outcome"], "published", "{report}");

    // Switched: the new metric counts exactly the events that have the field.
    service.wait_for("traffic to switch", |s| {
        view_entry(s, "traffic")["state"] == "live"
    });
    let reply = service.json("POST", "/v1/query", Some(&asked));
    assert_eq!(reply["meta"]["previous_definition"], false, "{reply}");
    let got: BTreeMap<String, i64> = (reply["rows"].as_array().unwrap().iter())
        .map(|row| {
            let device = row["device"].as_str().unwrap().to_owned();
            (device, row["amount"].as_i64().unwrap_or(0))
        })
        .collect();
    assert_eq!(got, amounts, "sum(amount) per device: {reply}");
    check_all(&service, &truth, "after the switch");
    let status: Json = service.json("GET", "/v1/status", None);
    assert_eq!(
        status["speed"]["restarts"], 0,
        "the switch re-read nothing: {status}"
    );

    // A finer granularity (1h → 1m): what the old 1h buckets roll up to is answered, 1m waits.
    let finer = [
        AMOUNT[0],
        AMOUNT[1],
        ("granularity = \"1h\"", "granularity = \"1m\""),
    ];
    service.restart_with("finer.toml", &finer);
    service.wait_for_read();
    let traffic = view_entry(&service, "traffic");
    assert_eq!(traffic["state"], "building", "{traffic}");
    assert_eq!(traffic["building"]["old_granularity"], "1h", "{traffic}");
    assert_eq!(traffic["building"]["waiting"], json!([]), "{traffic}");
    let per_minute = json!({"view": "traffic", "group_by": ["device"], "metrics": ["events"]});
    assert_building(&post(&service, &per_minute), "stores 1h buckets");
    let daily = service.json("POST", "/v1/query", Some(&QUERIES[3].body()));
    assert_eq!(daily["meta"]["previous_definition"], true, "{daily}");
    check_metrics(
        daily["rows"].as_array().unwrap(),
        &truth,
        &QUERIES[3],
        None,
        "1d from 1h",
    );
    assert_building(
        &sql(&service, "SELECT time, events FROM traffic"),
        "time (in 1m buckets, the old definition's are 1h) is only in the new definition",
    );
    let total = sql(&service, "SELECT sum(events) AS events FROM traffic");
    assert_eq!(total.status, 200, "{}", total.body);
    let run = service.json("POST", "/v1/batch/run", Some(&json!({"view": "traffic"})));
    assert_eq!(run["views"][0]["outcome"], "published", "{run}");
    service.wait_for("traffic to switch to 1m", |s| {
        view_entry(s, "traffic")["state"] == "live"
    });
    let minutes = service.json("POST", "/v1/query", Some(&per_minute));
    assert_eq!(minutes["meta"]["previous_definition"], false, "{minutes}");
    check_all(&service, &truth, "after the switch to 1m");

    // Coarser again (1m → 1h): the old minutes roll up, SQL's finalized table included.
    service.restart_with("coarser.toml", &AMOUNT);
    service.wait_for_read();
    assert_eq!(view_entry(&service, "traffic")["state"], "building");
    let hourly = sql(
        &service,
        "SELECT time, sum(events) AS events FROM traffic GROUP BY time ORDER BY time",
    );
    assert_eq!(hourly.status, 200, "{}", hourly.body);
    let hourly: Json = serde_json::from_str(&hourly.body).unwrap();
    let rows = hourly["rows"].as_array().unwrap();
    let hours: Vec<i64> = (rows.iter())
        .map(|r| chrono::DateTime::parse_from_rfc3339(r["time"].as_str().unwrap()).unwrap())
        .map(|t| t.timestamp_millis())
        .collect();
    assert!(
        hours.iter().all(|t| t % 3_600_000 == 0),
        "hourly buckets: {hours:?}"
    );
    let events: i64 = rows.iter().map(|r| r["events"].as_i64().unwrap()).sum();
    assert_eq!(events, truth.payloads.len() as i64, "{hourly}");
    let answer = service.json("POST", "/v1/query", Some(&per_minute));
    assert_eq!(answer["meta"]["previous_definition"], true, "{answer}");
    let daily = service.json("POST", "/v1/query", Some(&QUERIES[3].body()));
    assert_eq!(daily["meta"]["previous_definition"], true, "{daily}");
    check_metrics(
        daily["rows"].as_array().unwrap(),
        &truth,
        &QUERIES[3],
        None,
        "1d from 1m",
    );
}

/// The ground truth of `pageviews` per country under a filter, over the events the answer counted
/// (by partition and offset).
fn views_per_country(
    sent: &[Sent],
    decoder: &Decoder,
    counted: impl Fn(i32, i64) -> bool,
    keep: impl Fn(&Json) -> bool,
) -> BTreeMap<String, (i64, f64)> {
    let mut truth: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for sent in sent {
        if !counted(sent.partition, sent.offset) || decoder.decode(&sent.payload).is_err() {
            continue;
        }
        let event: Json = serde_json::from_slice(&sent.payload).unwrap();
        if !keep(&event) {
            continue;
        }
        let entry = truth
            .entry(event["country"].as_str().unwrap().to_owned())
            .or_default();
        entry.0 += 1;
        entry.1 += event["latency_ms"].as_f64().unwrap();
    }
    truth
}

/// Whether `offset` of `partition` is below `ends`'s.
fn below(ends: &BTreeMap<i32, i64>) -> impl Fn(i32, i64) -> bool + '_ {
    |partition, offset| offset < ends.get(&partition).copied().unwrap_or(0)
}

#[test]
fn changed_dimensions_and_filter_switch_in_one_step_while_events_flow() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    service.start(256);
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut rng = tributary_testkit::rng::Rng(0x0b1e_9ee1);
    let batch: Vec<Vec<u8>> = (0..3000).map(|n| common::event(&mut rng, n)).collect();
    sent.lock().unwrap().extend(send(broker, &topic, 0, batch));
    service.wait_for_log();
    common::run_batch(&service);

    let changed = service.restart_with("changed.toml", &[PAGEVIEWS_CHANGED]);
    let pageviews = view_entry(&service, "pageviews");
    assert_eq!(pageviews["state"], "building", "{pageviews}");
    assert_eq!(pageviews["building"]["waiting"], json!(["device"]));
    assert_building(
        &post(&service, &per_group("pageviews", "device", &["views"])),
        "device is only in the new definition",
    );

    // Events flow from here to the end; a sampler checks every answer against the truth of the
    // definition it says it was answered under, over exactly the offsets it says it counted.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let mut n = 3000;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<Vec<u8>> =
                    (n..n + 150).map(|n| common::event(&mut rng, n)).collect();
                let landed = send(broker, &topic, n, batch);
                sent.lock().unwrap().extend(landed);
                n += 150;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let config = Config::from_sources(None, []).unwrap();
    let decoder = Decoder::new(config.events);
    let address = service.server.address;
    let sampler = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let body = per_group("pageviews", "country", &["views", "latency_sum"]).to_string();
            let (mut old, mut new) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                let reply = request(address, "POST", "/v1/query", Some(&body)).unwrap();
                assert_eq!(reply.status, 200, "{}", reply.body);
                let reply: Json = serde_json::from_str(&reply.body).unwrap();
                let counted = counted(&reply["meta"]);
                // The answer may count events whose delivery report has not come back yet.
                let deadline = Instant::now() + Duration::from_secs(30);
                let sent = loop {
                    let sent = sent.lock().unwrap().clone();
                    let have = |p: &i32, next: &i64| {
                        sent.iter()
                            .any(|s| s.partition == *p && s.offset + 1 >= *next)
                    };
                    if counted.iter().all(|(p, next)| have(p, next)) {
                        break sent;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "offsets {counted:?} never reported"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                };
                let previous = reply["meta"]["previous_definition"].as_bool().unwrap();
                assert!(
                    !(previous && new > 0),
                    "answered under the old definition after the switch: {reply}"
                );
                let truth = match previous {
                    true => views_per_country(&sent, &decoder, below(&counted), |e| {
                        !e["page"].is_null()
                    }),
                    false => views_per_country(&sent, &decoder, below(&counted), |e| {
                        e["device"] != "tablet"
                    }),
                };
                let got: BTreeMap<String, (i64, f64)> = (reply["rows"].as_array().unwrap())
                    .iter()
                    .map(|row| {
                        let country = row["country"].as_str().unwrap().to_owned();
                        let sum = row["latency_sum"].as_f64().unwrap();
                        (country, (row["views"].as_i64().unwrap(), sum))
                    })
                    .collect();
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    truth.keys().collect::<Vec<_>>(),
                    "{reply}"
                );
                for (country, (views, sum)) in &truth {
                    let (got_views, got_sum) = got[country];
                    assert_eq!(
                        got_views, *views,
                        "views in {country} (old: {previous}): {reply}"
                    );
                    assert!(
                        common::close(got_sum, *sum),
                        "latency_sum in {country}: {got_sum} vs {sum}"
                    );
                }
                match previous {
                    true => old += 1,
                    false => new += 1,
                }
            }
            (old, new)
        })
    };

    // A build killed after writing its parts: the old definition keeps answering, the build's
    // progress stays behind, and the next run builds it.
    std::thread::sleep(Duration::from_secs(2));
    let crashed = service
        .server
        .command(&["batch", "run", "--view", "pageviews"])
        .env("TRIBUTARY_CONFIG", &changed)
        .env("TRIBUTARY_BATCH_CRASH_AT", "after_parts")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the run was to crash");
    let pageviews = view_entry(&service, "pageviews");
    assert_eq!(pageviews["state"], "building", "{pageviews}");
    assert!(
        pageviews["building"]["progress"]["started_at"].is_string(),
        "the killed build's progress: {pageviews}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let run = service.json("POST", "/v1/batch/run", Some(&json!({"view": "pageviews"})));
    assert_eq!(run["views"][0]["outcome"], "published", "{run}");
    service.wait_for("pageviews to switch", |s| {
        view_entry(s, "pageviews")["state"] == "live"
    });
    let pageviews = view_entry(&service, "pageviews");
    assert!(pageviews["building"].is_null(), "{pageviews}");
    let by_device = service.json(
        "POST",
        "/v1/query",
        Some(&per_group("pageviews", "device", &["views"])),
    );
    let devices: Vec<&str> = (by_device["rows"].as_array().unwrap().iter())
        .map(|r| r["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["desktop", "mobile"], "no tablets: {by_device}");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    let (old, new) = sampler.join().unwrap();
    assert!(
        old > 0 && new > 0,
        "{old} samples before the switch, {new} after"
    );
    let status: Json = service.json("GET", "/v1/status", None);
    assert_eq!(
        status["speed"]["restarts"], 0,
        "the switch re-read nothing: {status}"
    );
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Asserts `pageviews` per country equals the truth of `keep` over every event sent, and the answer
/// says it is complete.
fn assert_complete_per_country(
    service: &Service,
    sent: &[Sent],
    keep: impl Fn(&Json) -> bool,
    previous: bool,
    when: &str,
) {
    let meta = assert_per_country(service, sent, |_, _| true, keep, when);
    assert_eq!(meta["complete"], true, "{when}: {meta}");
    assert_eq!(meta["previous_definition"], previous, "{when}: {meta}");
    assert_eq!(meta["speed"]["missing"], json!([]), "{when}: {meta}");
}

/// Asserts `pageviews` per country equals the truth of `keep` over the events `counted` says;
/// returns the answer's `meta`.
fn assert_per_country(
    service: &Service,
    sent: &[Sent],
    counted: impl Fn(i32, i64) -> bool,
    keep: impl Fn(&Json) -> bool,
    when: &str,
) -> Json {
    let config = Config::from_sources(None, []).unwrap();
    let decoder = Decoder::new(config.events);
    let body = per_group("pageviews", "country", &["views"]);
    let reply = service.json("POST", "/v1/query", Some(&body));
    let truth = views_per_country(sent, &decoder, counted, keep);
    let got: BTreeMap<String, (i64, f64)> = (reply["rows"].as_array().unwrap().iter())
        .map(|row| {
            let country = row["country"].as_str().unwrap().to_owned();
            (country, (row["views"].as_i64().unwrap(), 0.0))
        })
        .collect();
    let truth: BTreeMap<String, (i64, f64)> = (truth.into_iter())
        .map(|(c, (views, _))| (c, (views, 0.0)))
        .collect();
    assert_eq!(got, truth, "{when}: views per country: {reply}");
    reply["meta"].clone()
}

/// Kafka's retention deletes what the lake already has. A rollback below the speed layer's start
/// then re-reads a log with a hole: the answer says it is incomplete, naming the offsets it misses,
/// until a batch run covers them. A definition change needs no read below the live boundary: its
/// answers stay complete throughout.
#[test]
fn after_kafka_deleted_the_history_a_rollback_says_what_it_misses_and_a_definition_change_is_complete()
 {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A broker of its own that applies retention every second, as Kafka deletes old segments.
    let broker: &'static Broker = Box::leak(Box::new(
        Broker::start_with_retention(Duration::from_secs(1)).unwrap(),
    ));
    let topic = "retained";
    let retention = [("cleanup.policy", "delete"), ("retention.ms", "15000")];
    (runtime.block_on(broker.create_topic_with(topic, PARTITIONS, &retention))).unwrap();
    let mut service = Service::new(broker, topic);
    service.start(256);

    // History stamped now, in two versions: Kafka deletes it 15 s later, after the lake has it.
    let mut rng = tributary_testkit::rng::Rng(0x7e7e_0001);
    let mut sent = Vec::new();
    for half in [0..1500, 1500..3000] {
        let first = half.start;
        let history: Vec<Vec<u8>> = half.map(|n| common::event(&mut rng, n)).collect();
        sent.extend(send_stamped(broker, topic, first, history, |_| now_ms()));
        service.wait_for_log();
        common::run_batch(&service);
    }
    // Then events Kafka keeps (stamped an hour ahead), which mark where the log starts.
    let recent: Vec<Vec<u8>> = (3000..3300).map(|n| common::event(&mut rng, n)).collect();
    sent.extend(send_stamped(broker, topic, 3000, recent, |_| {
        now_ms() + 3_600_000
    }));
    service.wait_for("Kafka's retention to delete the history", |_| {
        let low = broker.low_watermarks(topic, PARTITIONS).unwrap();
        low.values().all(|&low| low >= 1000)
    });
    service.wait_for_log();
    let page_kept = |e: &Json| !e["page"].is_null();
    assert_complete_per_country(&service, &sent, page_kept, false, "before the rollback");

    // Back to the first version, below where the speed layer started: the re-read finds a hole.
    let rollback = (service
        .server
        .command(&["batch", "rollback", "pageviews", "1"]))
    .output()
    .unwrap();
    assert!(rollback.status.success(), "{rollback:?}");
    let low = broker.low_watermarks(topic, PARTITIONS).unwrap();
    service.wait_for("the re-read to reach the log's end", |s| {
        let reply = s.json(
            "POST",
            "/v1/query",
            Some(&per_group("pageviews", "country", &["views"])),
        );
        let meta = &reply["meta"];
        meta["batch"]["version"] == 1 && counted(meta).iter().all(|(p, &next)| next >= low[p] + 100)
    });
    let version_1 = service.json(
        "POST",
        "/v1/query",
        Some(&per_group("pageviews", "country", &["views"])),
    );
    let boundary: BTreeMap<i32, i64> = counted(&json!({"batch": version_1["meta"]["batch"]}));
    let outside_the_hole = |p: i32, offset: i64| offset < boundary[&p] || offset >= low[&p];
    let meta = assert_per_country(&service, &sent, outside_the_hole, page_kept, "in the hole");
    assert_eq!(meta["complete"], false, "{meta}");
    let missing: BTreeMap<i64, (i64, i64)> = (meta["speed"]["missing"].as_array().unwrap().iter())
        .map(|m| {
            let (from, to) = (m["from"].as_i64().unwrap(), m["to"].as_i64().unwrap());
            (m["partition"].as_i64().unwrap(), (from, to))
        })
        .collect();
    let hole: BTreeMap<i64, (i64, i64)> = (0..PARTITIONS)
        .map(|p| (p as i64, (boundary[&p], low[&p] - 1)))
        .collect();
    assert_eq!(missing, hole, "{meta}");
    let run = service.json("POST", "/v1/batch/run", Some(&json!({"view": "pageviews"})));
    assert_eq!(run["views"][0]["outcome"], "published", "{run}");
    service.wait_for("a version covering the hole", |s| {
        let reply = s.json(
            "POST",
            "/v1/query",
            Some(&per_group("pageviews", "country", &["views"])),
        );
        reply["meta"]["batch"]["version"] == 3
    });
    assert_complete_per_country(&service, &sent, page_kept, false, "covered again");

    // The change: answered complete under the old definition while the new one builds from the
    // lake, then complete under the new one, with no read below the live boundary.
    service.restart_with("changed.toml", &[PAGEVIEWS_CHANGED]);
    service.wait_for_read();
    assert_complete_per_country(&service, &sent, page_kept, true, "while building");
    let run = service.json("POST", "/v1/batch/run", Some(&json!({"view": "pageviews"})));
    assert_eq!(run["views"][0]["outcome"], "published", "{run}");
    service.wait_for("pageviews to switch", |s| {
        view_entry(s, "pageviews")["state"] == "live"
    });
    let no_tablets = |e: &Json| e["device"] != "tablet";
    assert_complete_per_country(&service, &sent, no_tablets, false, "after the switch");
    let status: Json = service.json("GET", "/v1/status", None);
    assert_eq!(status["speed"]["restarts"], 0, "{status}");
}
