//! Freshness benchmark (issue 4): the time from producing an event to seeing it in `/v1/query`,
//! through a real broker (tansu) and the real speed layer consumer, at a background load of
//! 5k events/s.
//!
//! A producer sends clickstream events at the target rate; every 100 ms it also sends a probe event
//! with a page of its own, and a prober asks `/v1/query` (through the router, in-process) for that
//! page until the probe is counted. The latency runs from the probe's send to the first answer
//! counting it, so it includes the producer's acknowledgement wait, broker, consumer poll, speed
//! aggregation, and one query.
//!
//! `cargo bench -p tributary-serving --bench freshness`; `FRESHNESS_PROBES` (default 200).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tower::ServiceExt;
use tributary_schemas::config::Config;
use tributary_schemas::shutdown::Shutdown;
use tributary_serving::api::{App, router};
use tributary_serving::auth::Auth;
use tributary_serving::live::{Live, Loaded};
use tributary_serving::metrics::Metrics;
use tributary_serving::query::Engine;
use tributary_speed::aggregator::Aggregator;
use tributary_speed::consumer::{SpeedLayer, SpeedSettings};
use tributary_testkit::Broker;
use tributary_testkit::stream::clickstream;

const RATE: u64 = 5_000;
const PARTITIONS: i32 = 3;

fn main() {
    let probes: usize = std::env::var("FRESHNESS_PROBES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::start().expect("tansu (see the README's set-up)");
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut config = Config::from_sources(None, []).unwrap();
    config.kafka.brokers = broker.bootstrap_servers();
    config.kafka.topic.clone_from(&topic);
    let lake = tempfile::tempdir().unwrap();
    let store = tributary_schemas::lake::Lake::open(lake.path().to_str().unwrap()).unwrap();
    let aggregator = Aggregator::new(&config.events, &config.views, 100_000).unwrap();
    let settings = SpeedSettings::from_config(&config);
    let speed = Arc::new(SpeedLayer::new(settings, aggregator, Default::default()));
    let loaded = Loaded::none(&config.views);
    let live = Live::new(
        store,
        topic.clone(),
        config.views,
        64 << 20,
        loaded,
        Arc::clone(&speed) as _,
    );
    let app = App {
        engine: Engine::new(Arc::new(live), 1000, Duration::from_secs(10), 256 << 20).unwrap(),
        recompute: None,
        archiver: None,
        ingest: None,
        metrics: Arc::new(Metrics::default()),
        auth: Auth::default(),
        audit: Default::default(),
    };
    let router = router(Arc::new(app));
    let stop = Shutdown::default();
    let consumer = {
        let (speed, stop) = (Arc::clone(&speed), stop.clone());
        std::thread::spawn(move || speed.run(&stop))
    };

    let producer: BaseProducer = broker
        .producer_config()
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let counted = |page: &str| {
        let body = serde_json::json!({
            "view": "pageviews", "granularity": "all", "metrics": ["views"],
            "filter": [{"field": "page", "op": "eq", "value": page}],
        });
        let router = router.clone();
        runtime.block_on(async move {
            let request = Request::post("/v1/query")
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            reply["rows"][0]["views"].as_i64().unwrap_or(0) > 0
        })
    };

    let mut latencies = Vec::with_capacity(probes);
    let mut acks = Vec::with_capacity(probes);
    let started = Instant::now();
    let mut sent = 0u64;
    let send = |payload: &[u8], n: u64| loop {
        let record = BaseRecord::<(), [u8]>::to(&topic)
            .partition((n % PARTITIONS as u64) as i32)
            .payload(payload);
        match producer.send(record) {
            Ok(()) => break,
            Err(_) => {
                producer.poll(Duration::from_millis(1));
            }
        }
    };
    // The background load: every clickstream event due at RATE since the start, sent now.
    let keep_up = |sent: &mut u64| {
        let due = (started.elapsed().as_secs_f64() * RATE as f64) as u64;
        while *sent < due {
            send(&clickstream(*sent as usize), *sent);
            *sent += 1;
        }
        producer.poll(Duration::ZERO);
    };
    // Warm up: the consumer is assigned and reading.
    while !speed.ready() {
        std::thread::sleep(Duration::from_millis(10));
    }
    for probe in 0..probes {
        keep_up(&mut sent);
        let page = format!("/probe/{probe}");
        let payload = format!(
            r#"{{"ts":"{}","user_id":"prober","page":"{page}","country":"NL","latency_ms":1.0}}"#,
            chrono::Utc::now().to_rfc3339()
        );
        let sent_at = Instant::now();
        send(payload.as_bytes(), probe as u64);
        producer.flush(Duration::from_secs(10)).unwrap();
        acks.push(sent_at.elapsed());
        while !counted(&page) {
            keep_up(&mut sent);
            std::thread::sleep(Duration::from_millis(2));
            assert!(
                sent_at.elapsed() < Duration::from_secs(30),
                "probe {probe} never became visible"
            );
        }
        latencies.push(sent_at.elapsed());
        let next = sent_at + Duration::from_millis(100);
        while Instant::now() < next {
            keep_up(&mut sent);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.stop();
    consumer.join().unwrap().unwrap();
    let at = |samples: &mut Vec<Duration>, q: f64| {
        samples.sort();
        samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
    };
    println!(
        "{probes} probes at {:.0} events/s background: visible p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        sent as f64 / elapsed,
        at(&mut latencies, 0.5),
        at(&mut latencies, 0.95),
        at(&mut latencies, 0.99),
        at(&mut latencies, 1.0)
    );
    println!(
        "of which the broker's acknowledgement (acks=all): p50 {:.0} ms, p99 {:.0} ms",
        at(&mut acks, 0.5),
        at(&mut acks, 0.99)
    );
}
