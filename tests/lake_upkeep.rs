//! The raw master dataset's upkeep through the real binary, a real broker and a local lake (issue
//! 30): compaction of small raw files (killed at each of its points, and with queries sampling
//! the totals while it runs), raw retention and the full run it then refuses, and backfill.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{PARTITIONS, QUERIES, Service, Truth, check, check_all};
use serde_json::json;
use tributary_batch::archiver::audit::audit;
use tributary_schemas::lake::{Area, Lake};
use tributary_testkit::Broker;

fn lake(service: &Service) -> Lake {
    Lake::open(service.server.lake().to_str().unwrap()).unwrap()
}

/// Per partition: (files readers read, files a wider one covers).
fn files(runtime: &tokio::runtime::Runtime, lake: &Lake, topic: &str) -> (usize, usize) {
    let mut counts = (0, 0);
    for partition in 0..PARTITIONS {
        let listing = runtime
            .block_on(lake.listing(Area::Raw, topic, partition))
            .unwrap();
        counts.0 += listing.files.len();
        counts.1 += listing.covered.len();
    }
    counts
}

/// Every produced event is in the raw files readers see exactly once (or quarantined once), and
/// those files tile every partition.
fn assert_each_offset_once(
    runtime: &tokio::runtime::Runtime,
    lake: &Lake,
    truth: &Truth,
    topic: &str,
) {
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let found = runtime.block_on(audit(lake, topic, &partitions)).unwrap();
    let unique: BTreeSet<_> = found.raw.iter().collect();
    assert_eq!(unique.len(), found.raw.len(), "an offset is read twice");
    assert!(found.gaps.is_empty(), "gaps: {:?}", found.gaps);
    assert_eq!(found.raw.len(), truth.payloads.len());
    assert_eq!(
        (found.raw.len() + found.quarantine.len()) as u64,
        truth.produced
    );
}

/// Produces `bursts` bursts apart, so the archiver (100 ms files) writes many small files.
fn produce_in_bursts(truth: &mut Truth, service: &Service, bursts: usize) {
    for _ in 0..bursts {
        truth.produce(service.broker, &service.topic, 300);
        std::thread::sleep(Duration::from_millis(250));
    }
    service.wait_for_log();
}

#[test]
fn compaction_never_moves_an_answer_and_survives_a_kill_at_each_point() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    service.start(256);
    let lake = lake(&service);
    let mut truth = Truth::new();

    // 1. Killed right after writing a compacted file, then after deleting one small file: the
    //    views were published before the upkeep, every answer stays exact, and listings read each
    //    offset once.
    for (round, point) in ["compaction_written", "compaction_deleting"]
        .into_iter()
        .enumerate()
    {
        produce_in_bursts(&mut truth, &service, 6);
        let crashed = service
            .server
            .command(&["batch", "run"])
            .env("TRIBUTARY_BATCH_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(
            crashed.status.code().is_none(),
            "the crash hook must kill the process at {point}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let (_, covered) = files(&runtime, &lake, &topic);
        assert!(covered > 0, "{point}: a compacted file covers small ones");
        assert_each_offset_once(&runtime, &lake, &truth, &topic);
        service.wait_for(&format!("round {round}: the new versions"), |s| {
            let reply = s.json("POST", "/v1/query", Some(&QUERIES[0].body()));
            reply["meta"]["batch"]["version"] == json!(round + 1)
        });
        check_all(&service, &truth, &format!("after a kill at {point}"));
    }

    // 2. More small files, then runs that compact them while a client samples the totals.
    produce_in_bursts(&mut truth, &service, 8);
    let (before, _) = files(&runtime, &lake, &topic);
    let stop = Arc::new(AtomicBool::new(false));
    let samples = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                check(&service, &truth, &QUERIES[1], "while compacting");
                samples += 1;
            }
            samples
        });
        for _ in 0..2 {
            let reply = service.json("POST", "/v1/batch/run", None);
            assert!(reply["views"].is_array(), "{reply}");
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap()
    });
    assert!(samples >= 5, "only {samples} samples");
    let (after, covered) = files(&runtime, &lake, &topic);
    assert_eq!(covered, 0, "the killed compactions' leftovers are deleted");
    assert!(
        after < before,
        "small files are compacted: {before} files before, {after} after"
    );
    assert!(
        service.log_text().contains("raw upkeep: compacted"),
        "{}",
        service.log_text()
    );
    assert_each_offset_once(&runtime, &lake, &truth, &topic);
    // A full recompute over the compacted files gives the same answers.
    let full = service.json("POST", "/v1/batch/run", Some(&json!({"full": true})));
    assert!(full["views"].is_array(), "{full}");
    check_all(&service, &truth, "after a full run over compacted files");
}

#[test]
fn retention_keeps_the_views_and_a_full_run_over_a_cut_history_must_be_accepted() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    // The stream's events are weeks old (common::BASE_MS): all past a 10-day retention.
    service.server.env("TRIBUTARY_LAKE__RAW_RETENTION", "10d");
    service.start(256);
    let lake = lake(&service);
    let mut truth = Truth::new();
    produce_in_bursts(&mut truth, &service, 6);
    let (before, _) = files(&runtime, &lake, &topic);

    // The run publishes, then deletes every covered raw file but each partition's newest.
    common::run_batch(&service);
    let history = runtime.block_on(lake.raw_history(&topic)).unwrap();
    assert!(history.is_partial(), "{history:?}");
    let (after, _) = files(&runtime, &lake, &topic);
    assert!(
        after < before && after >= PARTITIONS as usize,
        "{before} → {after} files"
    );
    assert!(
        service.log_text().contains("deleted"),
        "{}",
        service.log_text()
    );
    check_all(
        &service,
        &truth,
        "after retention: the views keep their states",
    );

    // New events extend the line incrementally: still exact.
    produce_in_bursts(&mut truth, &service, 6);
    common::run_batch(&service);
    check_all(&service, &truth, "an incremental run after retention");

    // A full run would miss the deleted events: refused, by the CLI and by the API.
    let refused = service.server.run(&["batch", "run", "--full"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("the master dataset is no longer whole: raw retention deleted events up to")
            && stderr.contains("--allow-partial-history"),
        "{stderr}"
    );
    let reply = service
        .call("POST", "/v1/batch/run", Some(&json!({"full": true})))
        .unwrap();
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("partial_history"), "{}", reply.body);
    assert!(
        reply.body.contains("allow_partial_history"),
        "{}",
        reply.body
    );
    check_all(&service, &truth, "after the refusals");

    // Accepted: the full version counts what the lake still holds, no more.
    let accepted = service
        .server
        .run(&["batch", "run", "--full", "--allow-partial-history"]);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    // The truth of what the lake still holds: the events found in its raw files (by content).
    let mut held = held_events(&runtime, &lake, &topic);
    let mut kept = Truth::new();
    for (payload, stamp) in truth.payloads.iter().zip(&truth.stamps) {
        let event = truth.decoder.decode(payload).unwrap();
        let key = event_key(&event, &truth);
        if let Some(n) = held.get_mut(&key).filter(|n| **n > 0) {
            *n -= 1;
            kept.payloads.push(payload.clone());
            kept.stamps.push(*stamp);
        }
    }
    assert!(held.values().all(|n| *n == 0), "raw rows the truth lacks");
    assert!(kept.payloads.len() < truth.payloads.len());
    // Both views' versions: a refresh may load one view's before the other's is published.
    service.wait_for("the partial full versions", |s| {
        [&QUERIES[0], &QUERIES[3]].iter().all(|query| {
            let reply = s.json("POST", "/v1/query", Some(&query.body()));
            reply["meta"]["batch"]["version"] == json!(3)
        })
    });
    check(
        &service,
        &kept,
        &QUERIES[0],
        "a full run over the kept history",
    );
    check(
        &service,
        &kept,
        &QUERIES[3],
        "a full run over the kept history",
    );
}

type EventKey = (i64, String, String);

fn event_key(event: &tributary_schemas::event::Event<'_>, truth: &Truth) -> EventKey {
    let schema = &truth.config.events;
    (
        event.time_ms,
        common::value(event, schema, "user_id"),
        common::value(event, schema, "session_id"),
    )
}

/// The events the raw files readers see hold, by (time, user, session), counted.
fn held_events(
    runtime: &tokio::runtime::Runtime,
    lake: &Lake,
    topic: &str,
) -> std::collections::BTreeMap<EventKey, usize> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMillisecondType;
    let mut held = std::collections::BTreeMap::new();
    for partition in 0..PARTITIONS {
        for (_, path) in runtime
            .block_on(lake.ranges(Area::Raw, topic, partition))
            .unwrap()
        {
            for batch in runtime
                .block_on(lake.read_parquet(path.as_ref(), 8192))
                .unwrap()
            {
                let batch = batch.unwrap();
                let ts = batch.column_by_name("ts").unwrap();
                let ts = ts.as_primitive::<TimestampMillisecondType>();
                let users = batch.column_by_name("user_id").unwrap().as_string::<i32>();
                let sessions = batch
                    .column_by_name("session_id")
                    .unwrap()
                    .as_string::<i32>();
                for row in 0..batch.num_rows() {
                    let key = (
                        ts.value(row),
                        users.value(row).to_owned(),
                        sessions.value(row).to_owned(),
                    );
                    *held.entry(key).or_default() += 1;
                }
            }
        }
    }
    held
}

#[test]
fn backfill_adds_a_file_once_quarantines_its_bad_lines_and_the_next_run_counts_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    service.start(256);
    let mut truth = Truth::new();
    let views = service.json("GET", "/v1/views", None);
    assert!(
        (views["views"].as_array().unwrap().iter()).all(|v| v["state"] == "building"),
        "no version yet: {views}"
    );
    produce_in_bursts(&mut truth, &service, 6);
    common::run_batch(&service);
    check_all(&service, &truth, "before the backfill");
    let views = service.json("GET", "/v1/views", None);
    assert!(
        (views["views"].as_array().unwrap().iter()).all(|v| v["state"] == "live"),
        "{views}"
    );

    // An NDJSON file: history that never went through Kafka (no Kafka timestamp: never late),
    // with malformed lines among it.
    let history = truth.next_events(900, |time| time);
    let mut ndjson = Vec::new();
    for (i, event) in history.iter().enumerate() {
        ndjson.extend_from_slice(event);
        ndjson.push(b'\n');
        if i % 300 == 0 {
            ndjson.extend_from_slice(b"{\"ts\": \"not a time\"}\nnot json at all\n");
        }
    }
    // A JSON array file too.
    let array_events = truth.next_events(200, |time| time);
    let array = format!(
        "[{}]",
        (array_events
            .iter()
            .map(|e| String::from_utf8_lossy(e).to_string()))
        .collect::<Vec<_>>()
        .join(",\n")
    );
    let dir = service.server.dir().to_owned();
    std::fs::File::create(dir.join("old.ndjson"))
        .unwrap()
        .write_all(&ndjson)
        .unwrap();
    std::fs::write(dir.join("old.json"), array).unwrap();
    // The truth stamps backfilled events with their own time: not late, as no Kafka timestamp.
    let malformed = |events: &[Vec<u8>]| {
        events
            .iter()
            .filter(|e| truth.decoder.decode(e).is_err())
            .count()
    };
    let bad_ndjson = malformed(&history) + 3 * 2;
    let bad_array = malformed(&array_events);

    let added = service.server.run(&["backfill", "old.ndjson", "old.json"]);
    let stdout = String::from_utf8_lossy(&added.stdout);
    assert!(
        added.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "old.ndjson: {} events added as generation 1, {bad_ndjson} quarantined",
            history.len() - malformed(&history)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "old.json: {} events added as generation 2, {bad_array} quarantined",
            array_events.len() - bad_array
        )),
        "{stdout}"
    );
    // The same content again (under another name) is refused; nothing is added twice.
    std::fs::copy(dir.join("old.ndjson"), dir.join("again.ndjson")).unwrap();
    let again = service.server.run(&["backfill", "again.ndjson"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("again.ndjson was already backfilled (generation 1, from old.ndjson"),
        "{stderr}"
    );

    // The next run takes the backfilled generations in, incrementally; the speed layer never
    // sees them, so nothing is counted twice.
    let reply = common::run_batch(&service);
    let backfilled = (history.len() - malformed(&history)) + (array_events.len() - bad_array);
    for view in reply["views"].as_array().unwrap() {
        assert_eq!(
            view["rows_read"],
            json!(backfilled),
            "only the backfill is read: {reply}"
        );
    }
    check_all(&service, &truth, "after the backfill");
    produce_in_bursts(&mut truth, &service, 1);
    check_all(&service, &truth, "after the backfill and new events");
}
