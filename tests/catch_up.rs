//! The speed layer keeps up with bursts and backlogs through a real broker (issue 24), and while
//! it catches up nothing claims otherwise: `/readyz` is 503 and every answer's `meta.complete` is
//! false; once caught up, 200 and true, and the answers equal the ground truth.
//!
//! - A burst of 200,000 events into an empty topic after `serve` is ready, read within 60 s.
//! - A backlog of 1,000,000 events produced before `serve` starts, read within 2 minutes.
//!
//! Both with a batch run in the middle of the catch-up. The two phases run one after the other in
//! one test: on two cores, side by side they would measure each other. Each prints its rate
//! (`cargo test -- --nocapture` shows it).

// The rates are the point of running this by hand; the assertions hold without them.
#![allow(clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value as Json, json};
use tributary_testkit::Broker;

/// What a catch-up looked like from the outside.
#[derive(Debug, Default)]
struct Observed {
    /// `/readyz` answered 503 at some point.
    not_ready: bool,
    /// An answer said `complete: false` with a lag above `ready_max_lag`.
    incomplete: bool,
    /// A batch run started while the speed layer was behind.
    batch_mid_catch_up: bool,
}

fn catching_up_service(broker: &'static Broker, topic: &str) -> Service {
    let mut service = Service::new(broker, topic);
    let settings = [
        // Raw files of a realistic size (the default file age, shortened for the test).
        ("TRIBUTARY_ARCHIVER__MAX_FILE_ROWS", "100000"),
        ("TRIBUTARY_ARCHIVER__MAX_FILE_AGE", "1s"),
        ("TRIBUTARY_BATCH__EPOCH_SIZE", "10000"),
        ("TRIBUTARY_SERVING__READY_MAX_LAG", "1000"),
    ];
    for (key, value) in settings {
        service.server.env(key, value);
    }
    service
}

/// Polls the service until the speed layer has read `total` messages (the topic is new, so that
/// is every offset), recording what `/readyz` and the answers said on the way, and starts one
/// batch recompute once the archiver has archived a fifth of them while the speed layer is
/// still behind.
fn catch_up(service: &Service, total: i64, within: Duration) -> Observed {
    let started = Instant::now();
    let mut observed = Observed::default();
    loop {
        let elapsed = started.elapsed();
        assert!(
            elapsed < within,
            "the speed layer did not catch up within {within:?}: {}\n{}",
            service
                .call("GET", "/v1/status", None)
                .map(|r| r.body)
                .unwrap_or_default(),
            service.log_text()
        );
        let Some(status) = service.call("GET", "/v1/status", None) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let status: Json = serde_json::from_str(&status.body).unwrap();
        let next = |p: i32| {
            (status["speed"]["partitions"].as_array().unwrap().iter())
                .find(|l| l["partition"] == json!(p))
                .and_then(|l| l["next"].as_i64())
                .unwrap_or(0)
        };
        let read: i64 = (0..PARTITIONS).map(next).sum();
        if read >= total {
            return observed;
        }
        if let Some(ready) = service.call("GET", "/readyz", None)
            && ready.status == 503
        {
            observed.not_ready = true;
        }
        let reply = service.json("POST", "/v1/query", Some(&QUERIES[0].body()));
        let meta = &reply["meta"];
        let behind = (meta["speed"]["lag"].as_object().unwrap().values())
            .any(|lag| lag.as_u64().unwrap() > 1000);
        if meta["complete"] == json!(false) && behind {
            observed.incomplete = true;
        }
        assert!(
            meta["complete"] == json!(false) || !behind,
            "an answer {} behind said complete: {meta}",
            meta["speed"]["lag"]
        );
        let archived: i64 = (status["archiver"]["progress"].as_object().unwrap().values())
            .map(|v| v.as_i64().unwrap())
            .sum();
        // A recompute once a fifth of the log is archived, the speed layer still behind. It
        // publishes while the speed layer reads on: the swap happens mid catch-up.
        if !observed.batch_mid_catch_up && archived * 5 >= total {
            run_batch(service);
            observed.batch_mid_catch_up = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After the catch-up: ready, complete, and every answer equal to the truth.
fn settled(service: &Service, truth: &Truth, when: &str) {
    service.wait_within("/readyz 200", Duration::from_secs(30), |s| {
        s.call("GET", "/readyz", None)
            .is_some_and(|r| r.status == 200)
    });
    let meta = check(service, truth, &QUERIES[0], when);
    assert_eq!(meta["complete"], json!(true), "{when}: {meta}");
    assert!(!meta["batch"].is_null(), "{when}: a batch version is live");
    let meta = check(service, truth, &QUERIES[1], when);
    assert_eq!(meta["complete"], json!(true), "{when}: {meta}");
    let sql = service.json(
        "POST",
        "/v1/sql",
        Some(&json!({"sql": "SELECT sum(views) AS views FROM pageviews"})),
    );
    assert_eq!(sql["meta"]["complete"], json!(true), "{when}: {sql}");
}

#[test]
fn bursts_and_backlogs_are_read_at_the_brokers_rate_and_readiness_tells_the_truth() {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // A burst into an empty topic, after the service is ready.
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = catching_up_service(broker, &topic);
    service.start(256);
    let mut truth = Truth::new();
    let produce = Instant::now();
    let (observed, produced_in) = std::thread::scope(|scope| {
        let producing = scope.spawn(|| {
            truth.produce(broker, &topic, 200_000);
            produce.elapsed()
        });
        let observed = catch_up(&service, 200_000, Duration::from_secs(60));
        (observed, producing.join().unwrap())
    });
    let read_in = produce.elapsed();
    eprintln!(
        "burst: 200000 events produced in {produced_in:.1?}, all read {read_in:.1?} after the first was sent ({:.0} events/s); {observed:?}",
        200_000.0 / read_in.as_secs_f64()
    );
    assert!(observed.not_ready, "/readyz was never 503 during the burst");
    assert!(observed.incomplete, "no answer said complete: false");
    assert!(observed.batch_mid_catch_up, "no batch run mid catch-up");
    settled(&service, &truth, "after the burst");
    drop(service);

    // A backlog present before the service starts.
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut truth = Truth::new();
    let produce = Instant::now();
    truth.produce(broker, &topic, 1_000_000);
    eprintln!(
        "backlog: 1000000 events produced in {:.1?}",
        produce.elapsed()
    );
    let mut service = catching_up_service(broker, &topic);
    let started = Instant::now();
    service.spawn(256);
    let observed = catch_up(&service, 1_000_000, Duration::from_secs(120));
    let read_in = started.elapsed();
    eprintln!(
        "backlog: read {read_in:.1?} after start ({:.0} events/s); {observed:?}",
        1_000_000.0 / read_in.as_secs_f64()
    );
    assert!(
        observed.not_ready,
        "/readyz was never 503 during the backlog"
    );
    assert!(observed.incomplete, "no answer said complete: false");
    assert!(observed.batch_mid_catch_up, "no batch run mid catch-up");
    settled(&service, &truth, "after the backlog");
}
