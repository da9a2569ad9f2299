//! Exactness end to end (issue 4): the real binary (`tributary serve`, every role) over a real
//! broker and a real local lake, asked through its HTTP API, against a ground truth the test
//! computes from the events it produced, with the shared algebra:
//! (a) before any batch run (speed layer only), (b) right after a batch run, (c) after more events,
//! some pushed over HTTP (`POST /v1/events`) (both layers), (d) while a batch run publishes (every answer during the swap is exact), and
//! (e) after kill -9 of the service and a restart with events produced while it was down.
//! A snapshot taken at (b) answers with (b)'s data through (c) and (d), over `/v1/query` and over
//! SQL's `merge()`, and is gone (410) after the restart.
//!
//! Counts, integer sums, min and max must be equal; float sums and averages equal up to summation
//! order (1e-9 relative); distinct counts and quantiles equal the algebra's sketch of the same
//! events (sketch merges are exact), and within the sketches' error of the exact answer.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value as Json, json};
use tributary_testkit::Broker;

#[test]
fn every_answer_equals_the_truth_across_batch_runs_and_a_kill() {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
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

    // A snapshot taken now (issue 26): the same data later, across more events and a batch swap.
    let totals = json!({"view": "pageviews", "granularity": "all", "metrics": ["views", "users", "latency_p95"]});
    let taken = service.json("POST", "/v1/query", Some(&totals));
    let snapshot = taken["meta"]["snapshot"].as_str().unwrap().to_owned();
    let mut in_snapshot = totals.clone();
    in_snapshot["snapshot"] = json!(snapshot);
    let sql_in_snapshot = json!({"snapshot": snapshot,
        "sql": "SELECT merge(views) AS views, merge(users) AS users, merge(latency_p95) AS latency_p95 FROM pageviews_states"});
    let same_data = |when: &str| {
        let again = service.json("POST", "/v1/query", Some(&in_snapshot));
        assert_eq!(again["rows"], taken["rows"], "{when}: {again}");
        assert_eq!(again["meta"]["snapshot"], json!(snapshot), "{when}");
        assert_eq!(again["meta"]["batch"], taken["meta"]["batch"], "{when}");
        let by_sql = service.json("POST", "/v1/sql", Some(&sql_in_snapshot));
        assert_eq!(by_sql["rows"], taken["rows"], "{when}: {by_sql}");
    };
    same_data("(b) at once");

    // (c) More events, through Kafka and through push ingest: both layers.
    truth.produce(broker, &topic, 2000);
    truth.push(&service, 1000);
    service.wait_for_log();
    check_all(&service, &truth, "(c) both layers, pushed events too");
    same_data("(c) after more events");
    let now = service.json("POST", "/v1/query", Some(&totals));
    assert_ne!(
        now["rows"], taken["rows"],
        "without the snapshot: the new events"
    );
    assert_ne!(now["meta"]["snapshot"], json!(snapshot));

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
    same_data("(d) after a batch swap");

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
    // Snapshots live in the process that took them: after the restart the id is gone, and says so.
    let reply = service
        .call("POST", "/v1/query", Some(&in_snapshot))
        .unwrap();
    assert_eq!(reply.status, 410, "{}", reply.body);
    assert!(reply.body.contains("snapshot_expired"), "{}", reply.body);

    // The later phases asked shapes the batch version had answered before: those answers merged
    // a cached batch part with the current speed rows, and were exact.
    let metrics = service.call("GET", "/metrics", None).unwrap().body;
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tributary_query_cache_hits_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(hits.is_some_and(|h| h > 0.0), "{metrics}");

    // The live version's parts go missing from the lake (an object store that lost them): a scan
    // of them is the lake's failure, neither the caller's nor ours, so SQL and a query shape that
    // no cache holds answer 503 `storage_unavailable`, with no path or internal text.
    let version = format!("{:020}", versions.last().unwrap());
    let parts = service.server.lake().join("views/pageviews").join(version);
    for part in std::fs::read_dir(&parts).unwrap() {
        let part = part.unwrap().path();
        if part.extension().is_some_and(|e| e == "parquet") {
            std::fs::remove_file(part).unwrap();
        }
    }
    let uncached = json!({"view": "pageviews", "granularity": "all", "group_by": ["page"],
        "metrics": ["views"], "filter": [{"field": "country", "op": "=", "value": "nowhere"}]});
    let sql = json!({"sql": "SELECT count(*) AS n FROM pageviews"});
    for (path, body) in [("/v1/sql", &sql), ("/v1/query", &uncached)] {
        let reply = service.call("POST", path, Some(body)).unwrap();
        assert_eq!(reply.status, 503, "{path}: {}", reply.body);
        let error: Json = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            error["error"]["code"], "storage_unavailable",
            "{path}: {error}"
        );
        assert!(!reply.body.contains("parquet"), "{path}: {error}");
    }

    // A clean stop: SIGTERM ends the process with success.
    let status = service.server.terminate();
    assert!(status.success(), "{status}\n{}", service.log_text());
}
