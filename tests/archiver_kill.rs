//! kill -9 of the real `tributary serve --roles archiver` process at arbitrary moments, against a
//! real broker and a real lake (a local directory, and S3 on a real S3-protocol server): after a final clean run, every valid offset is in the master
//! dataset exactly once and every malformed one in quarantine exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tributary_batch::archiver::audit::audit;
use tributary_batch::archiver::resume::partition_progress;
use tributary_schemas::lake::Lake;
use tributary_testkit::s3::S3Server;
use tributary_testkit::stream::{Expected, produce_mixed};
use tributary_testkit::{Broker, TestServer};

const PARTITIONS: i32 = 3;

/// `serve --roles archiver` over the test's topic, rolling small files every 20 ms.
fn archiver(broker: &Broker, topic: &str) -> TestServer {
    let mut server = TestServer::new(env!("CARGO_BIN_EXE_tributary"), broker, topic);
    server
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_ROWS", "1500")
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_AGE", "20ms");
    server
}

#[test]
fn kill_9_at_any_moment_loses_and_duplicates_nothing() {
    kill_9(None);
}

/// The same on `s3://<bucket>/a/prefix` of a real S3-protocol server (moto).
#[test]
fn kill_9_at_any_moment_loses_and_duplicates_nothing_on_s3() {
    kill_9(Some(S3Server::shared()));
}

fn kill_9(s3: Option<&S3Server>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut server = archiver(broker, &topic);
    let store = match s3 {
        Some(s3) => s3.lake_for(&mut server, "kill").lake,
        None => Lake::open(server.lake().to_str().unwrap()).unwrap(),
    };
    let mut expected = Expected::new();
    runtime.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        60_000,
        &mut expected,
    ));

    let progress = || -> BTreeMap<i32, i64> {
        (0..PARTITIONS)
            .map(|p| {
                (
                    p,
                    runtime
                        .block_on(partition_progress(&store, &topic, p))
                        .unwrap()
                        .next_offset,
                )
            })
            .collect()
    };
    let total = |progress: &BTreeMap<i32, i64>| progress.values().sum::<i64>();
    // Runs the archiver until `done` holds for the lake's progress, or fails the test.
    let run_until = |server: &mut TestServer, done: &dyn Fn(&BTreeMap<i32, i64>) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let now = progress();
            if done(&now) {
                return now;
            }
            assert!(
                server.running(),
                "archiver exited early:\n{}",
                server.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "lake stuck at {now:?}\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // Each run is killed once the lake has passed a share of the broker's offsets, a few
    // milliseconds later: mid-stream, while files are being written (they roll every 20 ms).
    let mut seen_at_kill = Vec::new();
    for (round, (share, jitter_ms)) in [(0.05, 0u64), (0.25, 7), (0.5, 3), (0.75, 11)]
        .into_iter()
        .enumerate()
    {
        let goal =
            (total(&broker.high_watermarks(&topic, PARTITIONS).unwrap()) as f64 * share) as i64;
        server.spawn(&["serve", "--roles", "archiver"]);
        run_until(&mut server, &|now| total(now) >= goal);
        std::thread::sleep(Duration::from_millis(jitter_ms));
        server.kill(); // SIGKILL
        seen_at_kill.push(total(&progress()));
        if round == 1 {
            runtime.block_on(produce_mixed(
                broker,
                &topic,
                PARTITIONS,
                60_000,
                45_000,
                &mut expected,
            ));
        }
    }

    // A last run until the lake has caught up with the broker, then a clean SIGTERM.
    let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    assert!(
        seen_at_kill.windows(2).all(|w| w[0] < w[1])
            && *seen_at_kill.last().unwrap() < total(&target),
        "every kill must land mid-stream: lake totals at kills {seen_at_kill:?}, broker {}",
        total(&target)
    );
    server.spawn(&["serve", "--roles", "archiver"]);
    run_until(&mut server, &|now| *now == target);
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM must stop the archiver cleanly: {status}\n{}",
        server.log_text()
    );

    assert!(expected.len() >= 100_000);
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let problems = runtime
        .block_on(audit(&store, &topic, &partitions))
        .unwrap()
        .discrepancies(&expected);
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
}

#[test]
fn serving_runs_with_a_speed_layer_here_or_on_speed_nodes() {
    let mut server = TestServer::without_broker(env!("CARGO_BIN_EXE_tributary"));
    let refused = |server: &TestServer, args: &[&str], says: &str| {
        let output = server.run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(
        &server,
        &["serve", "--roles", "archiver,serving"],
        "the serving role merges a speed layer: run `--roles speed,serving`",
    );
    server.env("TRIBUTARY_SERVING__SPEED_NODES", "http://127.0.0.1:9");
    refused(
        &server,
        &["serve", "--roles", "speed,serving"],
        "[serving] speed_nodes is set: this process reads the speed layer from those speed nodes",
    );
    refused(
        &server,
        &["serve", "--roles", "serving", "--partitions", "0"],
        "--partitions is for speed nodes",
    );
}
