//! kill -9 of the real `tributary serve --roles archiver` process at arbitrary moments, against a
//! real broker and a real local lake: after a final clean run, every valid offset is in the master
//! dataset exactly once and every malformed one in quarantine exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_batch::archiver::audit::audit;
use tributary_batch::archiver::progress::partition_progress;
use tributary_schemas::lake::open_store;
use tributary_testkit::Broker;
use tributary_testkit::stream::{Expected, produce_mixed};

const PARTITIONS: i32 = 3;

fn start_archiver(broker: &Broker, topic: &str, lake: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["serve", "--roles", "archiver"])
        .env("TRIBUTARY_KAFKA__BROKERS", broker.bootstrap_servers())
        .env("TRIBUTARY_KAFKA__TOPIC", topic)
        .env("TRIBUTARY_KAFKA__DLQ_TOPIC", "")
        .env("TRIBUTARY_LAKE__URL", lake)
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_ROWS", "1500")
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_AGE", "20ms")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tributary")
}

#[test]
fn kill_9_at_any_moment_loses_and_duplicates_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let log = dir.path().join("archiver.log");
    let mut expected = Expected::new();
    runtime.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        60_000,
        &mut expected,
    ));

    let store = open_store(lake.to_str().unwrap()).unwrap();
    let progress = || -> BTreeMap<i32, i64> {
        (0..PARTITIONS)
            .map(|p| {
                (
                    p,
                    runtime
                        .block_on(partition_progress(store.as_ref(), &topic, p))
                        .unwrap()
                        .next_offset,
                )
            })
            .collect()
    };
    let total = |progress: &BTreeMap<i32, i64>| progress.values().sum::<i64>();
    // Runs the archiver until `done` holds for the lake's progress, or fails the test.
    let run_until = |child: &mut Child, done: &dyn Fn(&BTreeMap<i32, i64>) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let now = progress();
            if done(&now) {
                return now;
            }
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                child.try_wait().unwrap().is_none(),
                "archiver exited early:\n{log_text}"
            );
            assert!(
                Instant::now() < deadline,
                "lake stuck at {now:?}\n{log_text}"
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
        let mut child = start_archiver(broker, &topic, &lake, &log);
        run_until(&mut child, &|now| total(now) >= goal);
        std::thread::sleep(Duration::from_millis(jitter_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
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
    let mut child = start_archiver(broker, &topic, &lake, &log);
    run_until(&mut child, &|now| *now == target);
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM must stop the archiver cleanly: {status}"
    );

    assert!(expected.len() >= 100_000);
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let problems = runtime
        .block_on(audit(store.as_ref(), &topic, &partitions))
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
fn serve_runs_speed_and_serving_only_together() {
    let output = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["serve", "--roles", "archiver,speed"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the speed and serving roles run together"),
        "{stderr}"
    );
}
