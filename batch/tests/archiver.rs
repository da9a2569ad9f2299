//! The archiver against a real broker (tansu) and a real local lake: every valid offset lands in
//! the master dataset exactly once and every malformed one in quarantine, across crashes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::runtime::Runtime;
use tributary_batch::archiver::audit::audit;
use tributary_batch::archiver::{Archiver, ArchiverError, ArchiverSettings};
use tributary_schemas::config::Config;
use tributary_schemas::lake::{self, Area, Lake, OffsetRange};
use tributary_schemas::shutdown::Shutdown;
use tributary_testkit::Broker;
use tributary_testkit::stream::{Expected, produce_mixed};

const PARTITIONS: i32 = 3;

/// A runtime, a fresh topic on the shared broker, and an empty local lake.
struct Fixture {
    runtime: Runtime,
    broker: &'static Broker,
    topic: String,
    store: Lake,
    _lake_dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let lake_dir = tempfile::tempdir().unwrap();
    let store = Lake::open(lake_dir.path().to_str().unwrap()).unwrap();
    Fixture {
        runtime,
        broker,
        topic,
        store,
        _lake_dir: lake_dir,
    }
}

fn settings(
    broker: &Broker,
    topic: &str,
    max_file_rows: usize,
    max_file_age: Duration,
) -> ArchiverSettings {
    let defaults = Config::from_sources(None, []).unwrap();
    ArchiverSettings {
        brokers: broker.bootstrap_servers(),
        topic: topic.to_owned(),
        dlq_topic: None,
        max_file_rows,
        max_file_age,
        events: defaults.events,
    }
}

/// Runs an archiver until `done` holds for its progress (then stops it gracefully) or `stop_after`
/// passes (then abandons it, as a crash would).
fn run_archiver(
    runtime: &Runtime,
    archiver: &Archiver,
    stop_after: Option<Duration>,
    target: &BTreeMap<i32, i64>,
) -> Result<(), ArchiverError> {
    let stop = Shutdown::default();
    let handle = runtime.handle().clone();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| archiver.run(&handle, &stop));
        let started = Instant::now();
        let stats = archiver.stats();
        loop {
            if worker.is_finished() {
                break;
            }
            if let Some(limit) = stop_after {
                if started.elapsed() >= limit {
                    stop.abandon();
                    break;
                }
            } else if stats.progress() == *target {
                stop.stop();
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "archiver made no progress: {:?}",
                stats.progress()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        worker.join().unwrap()
    })
}

async fn assert_exactly_once(store: &Lake, topic: &str, expected: &Expected) {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let problems = audit(store, topic, &partitions)
        .await
        .unwrap()
        .discrepancies(expected);
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
}

#[test]
fn archives_every_event_exactly_once_across_crashes() {
    let Fixture {
        runtime,
        broker,
        topic,
        store,
        _lake_dir,
    } = fixture();

    let mut truth = Expected::new();
    runtime.block_on(produce_mixed(
        broker, &topic, PARTITIONS, 0, 60_000, &mut truth,
    ));
    // Small files and a short age so that crashes land between, during and after file writes.
    let settings = settings(broker, &topic, 2_000, Duration::from_millis(30));
    let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    // A simple deterministic sequence of crash times (ms): short, long, and in between.
    for (round, crash_ms) in [40u64, 350, 5, 900, 120].into_iter().enumerate() {
        let archiver = Archiver::new(settings.clone(), store.clone());
        run_archiver(
            &runtime,
            &archiver,
            Some(Duration::from_millis(crash_ms)),
            &target,
        )
        .unwrap();
        if round == 2 {
            // More events arrive while the archiver is down.
            runtime.block_on(produce_mixed(
                broker, &topic, PARTITIONS, 60_000, 45_000, &mut truth,
            ));
        }
    }
    let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    let archiver = Archiver::new(settings, store.clone());
    run_archiver(&runtime, &archiver, None, &target).unwrap();

    assert!(truth.len() >= 100_000);
    let malformed = truth.values().filter(|e| e.is_some()).count();
    assert!(malformed > 500, "about 1% malformed: {malformed}");
    runtime.block_on(assert_exactly_once(&store, &topic, &truth));
}

#[test]
fn a_quarantine_file_left_by_an_interrupted_write_is_not_duplicated() {
    let Fixture {
        runtime,
        broker,
        topic,
        store,
        _lake_dir,
    } = fixture();
    let mut truth = Expected::new();
    runtime.block_on(produce_mixed(
        broker, &topic, PARTITIONS, 0, 3_000, &mut truth,
    ));
    let settings = settings(broker, &topic, 100_000, Duration::from_millis(50));
    let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();

    // A previous run wrote partition 0's quarantine file and died before its raw file (the commit).
    let orphan = runtime.block_on(async {
        let range = OffsetRange { start: 0, end: 499 };
        let path = Path::from(lake::partition_file(Area::Quarantine, &topic, 0, range));
        store
            .store()
            .put(&path, PutPayload::from_static(b"partial run"))
            .await
            .unwrap();
        path
    });
    let archiver = Archiver::new(settings, store.clone());
    run_archiver(&runtime, &archiver, None, &target).unwrap();
    assert!(
        runtime.block_on(store.store().head(&orphan)).is_err(),
        "the orphan quarantine file must be removed"
    );
    runtime.block_on(assert_exactly_once(&store, &topic, &truth));
    assert_eq!(
        archiver
            .stats()
            .quarantined
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        truth.values().filter(|e| e.is_some()).count()
    );
}

#[test]
fn a_topic_whose_offsets_restarted_is_archived_as_a_new_generation() {
    let Fixture {
        runtime,
        broker,
        topic,
        store,
        _lake_dir,
    } = fixture();
    // The lake already holds offsets 0..=999 of partition 1, but the (new) topic is shorter.
    let range = OffsetRange { start: 0, end: 999 };
    let old = Path::from(lake::partition_file(Area::Raw, &topic, 1, range));
    runtime
        .block_on(
            store
                .store()
                .put(&old, PutPayload::from_static(b"earlier generation")),
        )
        .unwrap();
    let mut expected = Expected::new();
    runtime.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        300,
        &mut expected,
    ));

    let archiver = Archiver::new(
        settings(broker, &topic, 100, Duration::from_millis(50)),
        store.clone(),
    );
    let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    run_archiver(&runtime, &archiver, None, &target).unwrap();

    let generations = runtime.block_on(store.generations(&topic)).unwrap();
    assert_eq!(generations.current, 1);
    let closed = &generations.closed[0];
    assert_eq!(closed.generation, 0);
    assert_eq!(closed.next_offsets, [(0, 0), (1, 1000), (2, 0)].into());
    assert_eq!(
        closed.reason,
        "partition 1 ends at offset 100 but generation 0 holds offsets up to 999"
    );
    // The old file is untouched, the new log is archived exactly once under `<topic>@1`.
    let kept = runtime.block_on(store.store().get(&old)).unwrap();
    assert_eq!(
        &runtime.block_on(kept.bytes()).unwrap()[..],
        b"earlier generation"
    );
    runtime.block_on(assert_exactly_once(
        &store,
        &format!("{topic}@1"),
        &expected,
    ));

    // A restart stays in generation 1.
    let again = Archiver::new(
        settings(broker, &topic, 100, Duration::from_millis(50)),
        store.clone(),
    );
    run_archiver(&runtime, &again, None, &target).unwrap();
    let generations = runtime.block_on(store.generations(&topic)).unwrap();
    assert_eq!(generations.current, 1);
}

#[test]
fn rejected_events_go_to_the_dlq_with_their_reason() {
    let Fixture {
        runtime,
        broker,
        topic,
        store,
        _lake_dir,
    } = fixture();
    let dlq = runtime.block_on(broker.create_topic(1)).unwrap();
    let mut truth = Expected::new();
    runtime.block_on(produce_mixed(
        broker, &topic, PARTITIONS, 0, 600, &mut truth,
    ));
    let mut settings = settings(broker, &topic, 100_000, Duration::from_millis(50));
    settings.dlq_topic = Some(dlq.clone());
    let archiver = Archiver::new(settings, store);
    run_archiver(
        &runtime,
        &archiver,
        None,
        &broker.high_watermarks(&topic, PARTITIONS).unwrap(),
    )
    .unwrap();

    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("{dlq}-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[dlq.as_str()]).unwrap();
    let expected: BTreeMap<(i32, i64), &str> = truth
        .iter()
        .filter_map(|(k, e)| e.as_deref().map(|code| (*k, code)))
        .collect();
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < expected.len() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        use rdkafka::message::{Headers, Message};
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap()
        };
        let key = (
            header("tributary.source.partition").parse().unwrap(),
            header("tributary.source.offset").parse().unwrap(),
        );
        seen.insert(key, header("tributary.error.code"));
    }
    let seen: BTreeMap<(i32, i64), &str> = seen.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(seen, expected);
}
