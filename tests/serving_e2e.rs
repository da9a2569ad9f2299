//! Exactness end to end (issue 4): the real binary (`tributary serve`, every role) over a real
//! broker and a real local lake, asked through its HTTP API, against a ground truth the test
//! computes from the events it produced, with the shared algebra:
//! (a) before any batch run (speed layer only), (b) right after a batch run, (c) after more events,
//! some pushed over HTTP (`POST /v1/events`) (both layers), (d) while a batch run publishes (every answer during the swap is exact), and
//! (e) after kill -9 of the service and a restart with events produced while it was down.
//! A snapshot taken at (b) answers with (b)'s data through (c) and (d), over `/v1/query`, over
//! SQL's `merge()` and in a transaction on the Postgres wire, and is gone (410) after the restart.
//! At every phase the Postgres wire's `merge()` roll-ups equal the truth too (`check_wire`), and
//! every view's built-in `late` count (issue 28) equals the truth's over late and on-time events.
//!
//! Counts, integer sums, min and max must be equal; float sums and averages equal up to summation
//! order (1e-9 relative); distinct counts and quantiles equal the algebra's sketch of the same
//! events (sketch merges are exact), and within the sketches' error of the exact answer.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value as Json, json};
use tributary_testkit::s3::S3Server;
use tributary_testkit::{Broker, pg};

/// One row of metrics, from the wire and from HTTP: integers equal, floats to summation order.
fn assert_same_row(got: &Json, want: &Json, when: &str) {
    let (got, want) = (got.as_object().unwrap(), want.as_object().unwrap());
    assert_eq!(got.len(), want.len(), "{when}: {got:?} vs {want:?}");
    for (name, value) in want {
        let same = match (got[name].as_f64(), value.as_f64()) {
            (Some(a), Some(b)) => close(a, b),
            _ => got[name] == *value,
        };
        assert!(same, "{when}: {name}: {} vs {value}", got[name]);
    }
}

#[test]
fn every_answer_equals_the_truth_across_batch_runs_and_a_kill() {
    exactness(None);
}

/// The same, with the lake on `s3://<bucket>/a/prefix` of a real S3-protocol server (moto).
#[test]
fn every_answer_equals_the_truth_on_an_s3_lake() {
    exactness(Some(S3Server::shared()));
}

fn exactness(s3: Option<&'static S3Server>) {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    if let Some(s3) = s3 {
        service.on_s3(s3);
    }
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
    // The built-in `late` (Kafka's timestamp more than `late_after` past the event time): check_all
    // compared it with the truth like every metric; here the stream holds both kinds in both layers.
    let late = json!({"view": "pageviews", "granularity": "all", "metrics": ["views", "late"]});
    let late = &service.json("POST", "/v1/query", Some(&late))["rows"][0];
    let (views, late) = (
        late["views"].as_i64().unwrap(),
        late["late"].as_i64().unwrap(),
    );
    assert!(0 < late && late < views, "late {late} of {views}");
    // What the dashboard's status panel reads: each view's last run, the runs, quarantine reasons.
    let status = service.json("GET", "/v1/status", None);
    for view in status["batch"]["views"].as_array().unwrap() {
        assert_eq!(view["last_run"]["outcome"], "published", "{status}");
        assert_eq!(view["last_run"]["version"], view["version"], "{status}");
        assert!(
            view["last_run"]["elapsed_ms"].as_f64().is_some(),
            "{status}"
        );
    }
    assert_eq!(
        status["batch"]["runs"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    let quarantined = &status["archiver"]["quarantined_by_reason"];
    assert!(quarantined["missing_time"].as_u64() > Some(0), "{status}");
    assert_eq!(
        quarantined
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        status["archiver"]["quarantined"].as_u64().unwrap(),
        "{status}"
    );

    // A snapshot taken now (issue 26): the same data later, across more events and a batch swap.
    let totals = json!({"view": "pageviews", "granularity": "all", "metrics": ["views", "users", "latency_p95"]});
    let taken = service.json("POST", "/v1/query", Some(&totals));
    let snapshot = taken["meta"]["snapshot"].as_str().unwrap().to_owned();
    let mut in_snapshot = totals.clone();
    in_snapshot["snapshot"] = json!(snapshot);
    let sql_in_snapshot = json!({"snapshot": snapshot,
        "sql": "SELECT merge(views) AS views, merge(users) AS users, merge(latency_p95) AS latency_p95 FROM pageviews_states"});
    // And a transaction on the Postgres wire: every statement in it reads the snapshot it opened.
    let wire = runtime
        .block_on(pg::connect(
            service.server.pg_address,
            "dashboard",
            "tributary",
        ))
        .unwrap();
    let wire_totals = |when: &str| -> Json {
        let sql = "SELECT merge(views) AS views, merge(users) AS users, merge(latency_p95) AS latency_p95 FROM pageviews_states";
        let rows = runtime.block_on(wire.query(sql, &[])).unwrap();
        let rows: Vec<Json> = pg::json_rows(&rows).into_iter().map(Json::Object).collect();
        assert_eq!(rows.len(), 1, "{when}");
        rows.into_iter().next().unwrap()
    };
    runtime.block_on(wire.batch_execute("BEGIN")).unwrap();
    let in_transaction = wire_totals("(b) in a transaction");
    assert_same_row(
        &in_transaction,
        &taken["rows"][0],
        "(b) the wire and HTTP agree",
    );
    let same_data = |when: &str| {
        let again = wire_totals(when);
        assert_same_row(
            &again,
            &in_transaction,
            &format!("{when}: in the transaction"),
        );
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
    // The transaction's snapshot, named on the wire, answers over HTTP; after COMMIT the wire
    // reads the new data.
    let named = runtime
        .block_on(wire.simple_query("SHOW tributary.snapshot"))
        .unwrap();
    let named = named
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    let mut by_name = totals.clone();
    by_name["snapshot"] = json!(named);
    let by_name = service.json("POST", "/v1/query", Some(&by_name));
    assert_same_row(
        &in_transaction,
        &by_name["rows"][0],
        "(d) the transaction's snapshot over HTTP",
    );
    runtime.block_on(wire.batch_execute("COMMIT")).unwrap();
    let committed = wire_totals("(d) after COMMIT");
    let now = service.json("POST", "/v1/query", Some(&totals));
    assert_same_row(
        &committed,
        &now["rows"][0],
        "(d) after COMMIT: the new data",
    );
    assert_ne!(committed["views"], in_transaction["views"]);

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
    service.lose_parts("pageviews", *versions.last().unwrap() as u64);
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
    // The same statement on the Postgres wire: SQLSTATE 58030 (an I/O failure), no internals.
    let error = runtime
        .block_on(async {
            let client = pg::connect(service.server.pg_address, "e2e", "tributary").await?;
            client
                .query("SELECT count(*) AS n FROM pageviews", &[])
                .await
        })
        .unwrap_err();
    let db = error.as_db_error().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(db.code().code(), "58030", "{db:?}");
    assert!(
        db.message().contains("object store") && !db.message().contains("parquet"),
        "{db:?}"
    );

    // A full run on request (`{"full": true}`) over the same boundary recomputes from the master
    // dataset: a new version, which also replaces the one whose parts were lost; answers are exact.
    let full = service.json("POST", "/v1/batch/run", Some(&json!({"full": true})));
    assert_eq!(full["views"][0]["outcome"], "published", "{full}");
    check_all(&service, &truth, "(f) after a full run on request");

    // A clean stop: SIGTERM ends the process with success.
    let status = service.server.terminate();
    assert!(status.success(), "{status}\n{}", service.log_text());
}
