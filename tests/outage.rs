//! An S3 outage (issue 29): the real binary on `s3://<bucket>/a/prefix` of a real S3-protocol server
//! (moto), cut off for 30 s by testkit's proxy while events flow.
//!
//! During the cut: answers from the live version held in memory stay exact (the speed layer keeps
//! counting), a recompute fails cleanly with a 503 that names the lake, and `/v1/status` and
//! `/metrics` show the store errors and the failed run. After it: the archiver has retried and
//! resumed, the next recompute succeeds, and every answer equals the truth (nothing lost or doubled).
//! SIGTERM during a second cut: the process exits within `[archiver] shutdown_timeout`, and a restart
//! archives what was left in Kafka.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;
use tributary_testkit::Broker;
use tributary_testkit::s3::S3Server;

#[test]
fn an_s3_outage_loses_nothing_and_says_so() {
    // A private server: this test cuts it.
    let s3: &'static S3Server = Box::leak(Box::new(S3Server::start().unwrap()));
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    service.on_s3(s3);
    service
        .server
        .env("TRIBUTARY_ARCHIVER__SHUTDOWN_TIMEOUT", "3s");
    let mut truth = Truth::new();
    service.start(64);
    truth.produce(broker, &topic, 3000);
    service.wait_for_log();
    run_batch(&service);
    check_all(&service, &truth, "before the outage");

    // The cut: events keep flowing through Kafka.
    s3.cut(true);
    let cut_at = Instant::now();
    truth.produce(broker, &topic, 2000);
    service.wait_for_read();
    check_all(
        &service,
        &truth,
        "during the outage, from memory and the speed layer",
    );

    let run = service.call("POST", "/v1/batch/run", None).unwrap();
    assert_eq!(run.status, 503, "{}", run.body);
    let error: Json = serde_json::from_str(&run.body).unwrap();
    assert_eq!(error["error"]["code"], "storage_unavailable", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("object store"),
        "{error}"
    );

    // The archiver's failed writes and the failed run, where an operator looks.
    service.wait_for("store errors in the status", |s| {
        let status: Json = s.json("GET", "/v1/status", None);
        status["archiver"]["store_errors"].as_u64() > Some(0)
    });
    let status = service.json("GET", "/v1/status", None);
    let last = &status["batch"]["runs"][0];
    assert_eq!(last["outcome"], "failed", "{status}");
    assert_eq!(last["error"], "the lake's object store failed", "{status}");
    let metrics = service.call("GET", "/metrics", None).unwrap().body;
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tributary_archiver_store_errors_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(errors.is_some_and(|e| e > 0.0), "{metrics}");
    assert!(
        metrics.contains(
            "tributary_batch_run_duration_seconds_count{view=\"all\",outcome=\"failed\"} 1"
        ),
        "{metrics}"
    );

    // Thirty seconds in all, then the lake is back: the archiver resumes and the next run works.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut_at.elapsed()));
    s3.cut(false);
    service.wait_for_log();
    run_batch(&service);
    check_all(&service, &truth, "after the outage and a batch run");

    // SIGTERM while the lake is cut off, with events the archiver could not write: out within
    // shutdown_timeout (3 s) plus the drain.
    let store_errors = |s: &Service| {
        let status: Json = s.json("GET", "/v1/status", None);
        status["archiver"]["store_errors"].as_u64().unwrap()
    };
    let before = store_errors(&service);
    s3.cut(true);
    truth.produce(broker, &topic, 500);
    service.wait_for("the archiver to hold a file the lake refuses", |s| {
        store_errors(s) > before
    });
    let stopping = Instant::now();
    let status = service.server.terminate();
    let took = stopping.elapsed();
    assert!(status.success(), "{status}\n{}", service.log_text());
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}\n{}",
        service.log_text()
    );
    assert!(
        service.log_text().contains("shutdown_timeout"),
        "{}",
        service.log_text()
    );

    // Back, restarted: what the archiver left in Kafka is archived, and answers are exact.
    s3.cut(false);
    service.start(64);
    service.wait_for_log();
    // (Published or unchanged: the boundary moves by whole epochs.)
    service.json("POST", "/v1/batch/run", None);
    check_all(
        &service,
        &truth,
        "after a stop during an outage and a restart",
    );
}

/// The broker stopped for 30 s and restarted (same data): answers stay exact from what the layers
/// hold, push ingest says 503 (nothing half-accepted), `/readyz` says the speed layer cannot be sure
/// it is current; after the restart the speed layer and the archiver resume where they were and
/// every answer, across a batch run, equals the truth.
#[test]
fn a_kafka_outage_loses_nothing_and_says_so() {
    // A private broker: this test stops it.
    let broker: &'static Broker = Box::leak(Box::new(Broker::start().unwrap()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    let mut truth = Truth::new();
    service.start(64);
    truth.produce(broker, &topic, 2000);
    service.wait_for_log();
    run_batch(&service);
    check_all(&service, &truth, "before the outage");

    broker.stop();
    let stopped_at = Instant::now();
    check_all(&service, &truth, "during the broker outage");
    let pushed = service
        .server
        .call(
            "POST",
            "/v1/events",
            Some(r#"{"ts": 1795000000000, "page": "/x"}"#),
        )
        .unwrap();
    assert_eq!(pushed.status, 503, "{}", pushed.body);
    service.wait_for("readyz to say the speed layer is not current", |s| {
        s.call("GET", "/readyz", None).unwrap().status == 503
    });
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped_at.elapsed()));

    broker.restart().unwrap();
    truth.produce(broker, &topic, 1000);
    service.wait_for_log();
    service.wait_for("readyz again", |s| {
        s.call("GET", "/readyz", None).unwrap().status == 200
    });
    check_all(&service, &truth, "after the broker came back");
    run_batch(&service);
    check_all(
        &service,
        &truth,
        "after the broker came back and a batch run",
    );
}
