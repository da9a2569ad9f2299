//! The batch layer through the real binary, a real broker and a real local lake: the scheduler in
//! `tributary serve`, `tributary batch run | list | rollback`, the single-run lock, and publish
//! atomicity: a recompute killed after writing its files but before swapping `_current` leaves the
//! previous version live and intact, and the next run succeeds.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use tributary_batch::archiver::resume::partition_progress;
use tributary_schemas::lake::{Lake, Manifest};
use tributary_testkit::s3::S3Server;
use tributary_testkit::stream::{Expected, produce_mixed};
use tributary_testkit::{Broker, TestServer, output_text};

const PARTITIONS: i32 = 3;

/// The binary over the test's topic, with small files and epochs and a 1 s schedule.
fn server(broker: &Broker, topic: &str) -> TestServer {
    let mut server = TestServer::new(env!("CARGO_BIN_EXE_tributary"), broker, topic);
    server
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_ROWS", "700")
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_AGE", "100ms")
        .env("TRIBUTARY_BATCH__INTERVAL", "1s")
        .env("TRIBUTARY_BATCH__EPOCH_SIZE", "500")
        .env("TRIBUTARY_BATCH__KEEP_VERSIONS", "3")
        .env("TRIBUTARY_BATCH__THREADS", "1");
    server
}

/// Runs a one-shot command with extra variables.
fn run(server: &TestServer, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = server.command(args);
    command.envs(envs.iter().copied());
    command.output().expect("run tributary")
}

fn terminate(server: &mut TestServer) {
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM must stop serve cleanly: {status}\n{}",
        server.log_text()
    );
}

const WAIT: Duration = Duration::from_secs(120);

/// Every part of the version is there and holds the rows its manifest says.
async fn assert_intact(store: &Lake, manifest: &Manifest) {
    let mut rows = 0;
    for file in &manifest.files {
        for batch in store.read_parquet(&file.path, 8192).await.unwrap() {
            rows += batch.unwrap().num_rows() as u64;
        }
    }
    assert_eq!(
        rows, manifest.row_count,
        "version {} intact",
        manifest.version
    );
}

#[test]
fn scheduled_and_one_shot_recomputes_publish_atomically() {
    recomputes(None);
}

/// The same on `s3://<bucket>/a/prefix` of a real S3-protocol server (moto): the lock's
/// create-if-absent, the `_current` swap, crash points, collection and rollback.
#[test]
fn scheduled_and_one_shot_recomputes_publish_atomically_on_s3() {
    recomputes(Some(S3Server::shared()));
}

fn recomputes(s3: Option<&S3Server>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut server = server(broker, &topic);
    let store = match s3 {
        Some(s3) => s3.lake_for(&mut server, "batch").lake,
        None => Lake::open(server.lake().to_str().unwrap()).unwrap(),
    };
    let mut expected = Expected::new();
    runtime.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        6_000,
        &mut expected,
    ));

    // 1. `serve` archives and its scheduler publishes version 1 of both views.
    server.spawn(&["serve", "--roles", "archiver,batch"]);
    // Both views live, and the scheduler has reported its run (it logs once every view is done).
    server.wait_within("the scheduled recompute", WAIT, |server| {
        ["pageviews", "traffic"]
            .iter()
            .all(|view| runtime.block_on(store.current(view)).unwrap().is_some())
            && server.log_text().contains("traffic: published version 1")
    });
    terminate(&mut server);
    assert!(
        server.log_text().contains("pageviews: published version 1"),
        "{}",
        server.log_text()
    );
    let first = runtime
        .block_on(store.live_manifest("pageviews"))
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);

    // More events, archived only (no scheduler), so the next run has a new boundary.
    runtime.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        6_000,
        3_000,
        &mut expected,
    ));
    let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    server.spawn(&["serve", "--roles", "archiver"]);
    let progress = || -> BTreeMap<i32, i64> {
        (0..PARTITIONS)
            .map(|p| {
                let next = runtime
                    .block_on(partition_progress(&store, &topic, p))
                    .unwrap()
                    .next_offset;
                (p, next)
            })
            .collect()
    };
    server.wait_within("the archiver", WAIT, |_| progress() == target);
    terminate(&mut server);

    // 2. Killed after writing parts and manifest, before `_current`: version 1 stays live, intact.
    for (point, version) in [("before_current", 2u64), ("after_parts", 3)] {
        let crashed = run(
            &server,
            &["batch", "run", "--view", "pageviews"],
            &[("TRIBUTARY_BATCH_CRASH_AT", point)],
        );
        assert!(
            !crashed.status.success() && crashed.status.code().is_none(),
            "the crash hook must kill the process: {}",
            output_text(&crashed)
        );
        let live = runtime
            .block_on(store.live_manifest("pageviews"))
            .unwrap()
            .unwrap();
        assert_eq!(
            live, first,
            "after a crash at {point}, version 1 is still live"
        );
        runtime.block_on(assert_intact(&store, &live));
        let left = runtime
            .block_on(store.manifest("pageviews", version))
            .unwrap();
        assert_eq!(left.is_some(), point == "before_current", "{point}");
    }
    let listed = run(&server, &["batch", "list"], &[]);
    let listing = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listing.contains("incomplete (running, or left by a crashed run"),
        "{listing}"
    );

    // 3. Another run holds the lake: refused with exit code 3, nothing done.
    let lock = runtime
        .block_on(tributary_batch::recompute::lock::RunLock::acquire(
            store.store().clone(),
            Duration::from_secs(60),
        ))
        .unwrap();
    let refused = run(&server, &["batch", "run"], &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("a recompute is already running (lock held by "),
        "{}",
        output_text(&refused)
    );
    runtime.block_on(lock.release()).unwrap();

    // 4. The next run succeeds and collects the crashed run's incomplete version.
    let ok = run(&server, &["batch", "run"], &[]);
    assert!(ok.status.success(), "{}", output_text(&ok));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("pageviews: published version 4 ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("traffic: published version 2 ("),
        "{stdout}"
    );
    let live = runtime
        .block_on(store.live_manifest("pageviews"))
        .unwrap()
        .unwrap();
    assert_eq!(live.version, 4);
    assert!(live.boundary.0.values().sum::<i64>() > first.boundary.0.values().sum::<i64>());
    runtime.block_on(assert_intact(&store, &live));
    let left = runtime.block_on(async {
        let prefix = object_store::path::Path::from("views/pageviews/00000000000000000003");
        let listed = store.store().list(Some(&prefix));
        futures::TryStreamExt::try_collect::<Vec<_>>(listed).await
    });
    assert_eq!(left.unwrap(), [], "the incomplete version is collected");
    let again = run(&server, &["batch", "run"], &[]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("pageviews: unchanged, version 4"),
        "{}",
        output_text(&again)
    );

    // 5. Rollback, and a rollback to a version that does not exist.
    let rolled = run(&server, &["batch", "rollback", "pageviews", "1"], &[]);
    assert!(rolled.status.success(), "{}", output_text(&rolled));
    assert_eq!(
        runtime.block_on(store.current("pageviews")).unwrap(),
        Some(1)
    );
    let listing =
        String::from_utf8_lossy(&run(&server, &["batch", "list"], &[]).stdout).to_string();
    assert!(listing.contains("  *    1  "), "{listing}");
    let missing = run(&server, &["batch", "rollback", "pageviews", "3"], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        output_text(&missing)
            .contains("view \"pageviews\" has no version 3 with a manifest (versions: 1, 2, 4)"),
        "{}",
        output_text(&missing)
    );

    // 6. A full run checks the live version's incremental line: one that counts an event twice
    //    (here: a part listed twice) fails `batch run` with exit code 4, the full version published.
    let live = runtime
        .block_on(store.live_manifest("pageviews"))
        .unwrap()
        .unwrap();
    let mut wrong = live;
    wrong.version = 50;
    wrong.files.push(wrong.files[0].clone());
    runtime.block_on(store.write_manifest(&wrong)).unwrap();
    runtime
        .block_on(store.write_current("pageviews", 50))
        .unwrap();
    let checked = run(
        &server,
        &["batch", "run", "--view", "pageviews", "--full"],
        &[],
    );
    assert_eq!(checked.status.code(), Some(4), "{}", output_text(&checked));
    assert!(
        output_text(&checked).contains("counts other events"),
        "{}",
        output_text(&checked)
    );
    let now = runtime.block_on(store.current("pageviews")).unwrap();
    assert_eq!(now, Some(51), "the full version is live");
}

/// Scheduled runs show in `/v1/status` as requested ones do (each view's last run, the recent
/// runs, with their trigger), so the dashboard's status panel sees the scheduler's work.
#[test]
fn scheduled_runs_are_in_the_status() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut server = server(broker, &topic);
    let mut expected = Expected::new();
    runtime.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        2_000,
        &mut expected,
    ));
    // And logs as JSON lines, each with the span it was written in.
    server.env("TRIBUTARY_LOG__FORMAT", "json");
    server.start(&["serve"]);
    let status = || -> serde_json::Value {
        let reply = server.call("GET", "/v1/status", None).unwrap();
        serde_json::from_str(&reply.body).unwrap()
    };
    server.wait_within("a scheduled run that published", WAIT, |_| {
        let status = status();
        (status["batch"]["views"].as_array().unwrap().iter())
            .all(|view| view["last_run"]["outcome"] == "published")
    });
    let status = status();
    for view in status["batch"]["views"].as_array().unwrap() {
        assert_eq!(view["last_run"]["trigger"], "schedule", "{status}");
        assert!(
            view["last_run"]["elapsed_ms"].as_f64() > Some(0.0),
            "{status}"
        );
    }
    let metrics = server.call("GET", "/metrics", None).unwrap().body;
    assert!(
        metrics.contains(
            "tributary_batch_run_duration_seconds_count{view=\"pageviews\",outcome=\"published\"}"
        ),
        "{metrics}"
    );
    let runs = status["batch"]["runs"].as_array().unwrap();
    assert!(runs.len() >= 2 && runs.len() <= 20, "{status}");
    let at = |run: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(run["at"].as_str().unwrap()).unwrap()
    };
    assert!(
        runs.windows(2).all(|w| at(&w[0]) >= at(&w[1])),
        "newest first: {status}"
    );
    terminate(&mut server);
    let lines: Vec<serde_json::Value> = (server.log_text().lines())
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 5, "{}", server.log_text());
    let published = (lines.iter())
        .find(|l| l["fields"]["message"] == "published")
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert_eq!(published["span"]["name"], "batch_run", "{published}");
    assert!(published["span"]["view"].is_string(), "{published}");
    let answered = (lines.iter())
        .find(|l| l["span"]["route"] == "/v1/status")
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert_eq!(answered["fields"]["status"], 200, "{answered}");
    assert_eq!(answered["span"]["method"], "GET", "{answered}");
}
