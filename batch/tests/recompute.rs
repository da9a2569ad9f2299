//! The recompute against real Parquet in a real local lake (and, end to end, a real broker and the
//! archiver): its states must equal the `schemas` algebra applied event by event to exactly the
//! events below the boundary, bit for bit (float sums within 1e-9 of their magnitude, since
//! floating-point addition depends on order).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::Array;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tokio::runtime::Runtime;
use tributary_batch::archiver::{Archiver, ArchiverSettings};
use tributary_batch::parquet_io;
use tributary_batch::recompute::progress::quiet;
use tributary_batch::recompute::slices::{MAX_READ_FACTOR, SliceTarget};
use tributary_batch::recompute::{
    BatchError, BatchSettings, Outcome, RecomputeService, RunOptions, ViewRun,
};
use tributary_schemas::aggregate::MetricState;
use tributary_schemas::aggregate::arrow::read_state;
use tributary_schemas::config::{Config, ViewDef};
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::raw_rows::{KafkaPosition, RawBatchBuilder};
use tributary_schemas::event::{Event, Value};
use tributary_schemas::lake::{self, Area, Lake, Manifest, OffsetRange};
use tributary_schemas::seam::aligned_boundary;
use tributary_schemas::shutdown::Shutdown;
use tributary_testkit::Broker;
use tributary_testkit::rng::Rng;
use tributary_testkit::stream::{Expected, is_late, kafka_stamp, produce_mixed, produced_payloads};

/// A row's identity in a view: bucket start (ms) and the dimension values.
type Key = (i64, Vec<Value<'static>>);

/// What a view version must hold: per key, one state per metric, plus the sum of |x| per metric
/// (the tolerance scale for float sums).
type Truth = BTreeMap<String, (Vec<MetricState>, Vec<f64>)>;

fn key_string(key: &Key) -> String {
    format!("{:?}", key)
}

fn defaults() -> Config {
    Config::from_sources(None, []).unwrap()
}

/// A random event of the default schema: nulls in every field, late and out-of-order times,
/// negative and zero values, ±0.0.
fn random_event(rng: &mut Rng, config: &Config) -> Event<'static> {
    let base = 1_795_000_000_000i64;
    let late = if rng.chance(10) {
        rng.below(3 * 86_400_000) as i64
    } else {
        0
    };
    let time_ms = base + rng.below(6 * 3_600_000) as i64 - late;
    let mut pick = |choices: &[&str], null_percent: u64| -> Value<'static> {
        if rng.chance(null_percent) {
            Value::Null
        } else {
            let i = rng.below(choices.len() as u64) as usize;
            Value::Str(choices[i].to_owned().into())
        }
    };
    let page = pick(&["/", "/a", "/b", "/c/d", "/e", "/f", "/g", "/h"], 5);
    let referrer = pick(&["google", "direct", "news"], 20);
    let country = pick(&["NL", "US", "DE", "FR", "JP"], 3);
    let device = pick(&["mobile", "desktop", "tablet"], 2);
    let user = Value::Str(format!("u{}", rng.below(3000)).into());
    let session = Value::Str(format!("s{}", rng.below(9000)).into());
    let latency = match rng.below(20) {
        0 => Value::Null,
        1 => Value::Float(0.0),
        2 => Value::Float(-0.0),
        _ => Value::Float((rng.below(1_000_000) as f64) / 997.0),
    };
    let bytes = match rng.below(20) {
        0 => Value::Null,
        1 => Value::Int(-(rng.below(1000) as i64)),
        _ => Value::Int(rng.below(5_000_000) as i64),
    };
    let values = config
        .events
        .fields
        .iter()
        .map(|field| match field.name.as_str() {
            "user_id" => user.clone(),
            "session_id" => session.clone(),
            "page" => page.clone(),
            "referrer" => referrer.clone(),
            "country" => country.clone(),
            "device" => device.clone(),
            "latency_ms" => latency.clone(),
            "bytes" => bytes.clone(),
            other => panic!("unexpected field {other}"),
        })
        .collect();
    Event { time_ms, values }
}

/// Events by partition, each with its offset (a few offsets skipped, as quarantined ones are).
type Stream = BTreeMap<i32, Vec<(i64, Event<'static>)>>;

fn random_stream(seed: u64, partitions: i32, per_partition: usize, config: &Config) -> Stream {
    let mut rng = Rng(seed);
    (0..partitions)
        .map(|p| {
            let mut offset = 0;
            let events = (0..per_partition)
                .map(|_| {
                    if rng.chance(1) {
                        offset += 1; // a malformed event's offset, not in the raw dataset
                    }
                    offset += 1;
                    (offset - 1, random_event(&mut rng, config))
                })
                .collect();
            (p, events)
        })
        .collect()
}

/// A lake in a fresh temporary directory, removed when the directory is dropped.
fn empty_lake() -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let store = Lake::open(dir.path().to_str().unwrap()).unwrap();
    (dir, store)
}

/// Writes the stream as raw files that tile each partition's offsets, `file_rows` events per file
/// (the last file of a partition ends at `last_offset`).
async fn write_raw(store: &Lake, topic: &str, config: &Config, stream: &Stream, file_rows: usize) {
    write_raw_from(store, topic, config, stream, file_rows, &BTreeMap::new()).await;
}

/// [`write_raw`] of a later part of a stream: each partition's first file starts at `starts[p]`
/// (0 when absent), right after what was written before.
async fn write_raw_from(
    store: &Lake,
    topic: &str,
    config: &Config,
    stream: &Stream,
    file_rows: usize,
    starts: &BTreeMap<i32, i64>,
) {
    for (&partition, events) in stream {
        let mut start = starts.get(&partition).copied().unwrap_or(0);
        for chunk in events.chunks(file_rows) {
            let mut builder = RawBatchBuilder::new(&config.events);
            for (offset, event) in chunk {
                builder.append(
                    event,
                    KafkaPosition {
                        partition,
                        offset: *offset,
                        timestamp_ms: Some(kafka_stamp(event.time_ms)),
                    },
                );
            }
            let end = chunk.last().unwrap().0;
            let bytes = parquet_io::encode(&[builder.finish().unwrap()]).unwrap();
            let range = OffsetRange { start, end };
            (store.put_partition_file(Area::Raw, topic, partition, range, bytes))
                .await
                .unwrap();
            start = end + 1;
        }
    }
}

/// The view's states computed event by event with the algebra, over events below `boundary`.
fn truth(view: &ViewDef, stream: &Stream, boundary: &lake::Boundary) -> Truth {
    truth_of(view, &[(stream, boundary)])
}

/// The truth over several streams (generations), each below its own boundary.
fn truth_of(view: &ViewDef, parts: &[(&Stream, &lake::Boundary)]) -> Truth {
    let mut rows: BTreeMap<String, (Vec<MetricState>, Vec<f64>)> = BTreeMap::new();
    for (stream, boundary) in parts {
        for (&partition, events) in *stream {
            for (offset, event) in events {
                if !boundary.covers(partition, *offset) {
                    continue;
                }
                if let Some(filter) = &view.filter {
                    // The default views' only filter is understood here: `page IS NOT NULL`.
                    assert_eq!(filter.sql, "page IS NOT NULL");
                    let page = view.dimensions.iter().find(|d| d.name == "page").unwrap();
                    if event.values[page.index].is_null() {
                        continue;
                    }
                }
                let key: Key = (
                    view.granularity.bucket_start(event.time_ms),
                    view.dimensions
                        .iter()
                        .map(|d| event.values[d.index].clone())
                        .collect(),
                );
                let (states, magnitudes) = rows.entry(key_string(&key)).or_insert_with(|| {
                    (
                        view.metrics
                            .iter()
                            .map(|m| MetricState::empty(m.state_kind()))
                            .collect(),
                        vec![0.0; view.metrics.len()],
                    )
                });
                // Raw files written here and events produced by the testkit carry one stamp.
                let late = is_late(event.time_ms, Some(kafka_stamp(event.time_ms)));
                for (i, metric) in view.metrics.iter().enumerate() {
                    if metric.name == "late" && !late {
                        continue;
                    }
                    let value = metric.value(&event.values);
                    states[i].update(value);
                    magnitudes[i] += value.as_f64().map_or(0.0, f64::abs);
                }
            }
        }
    }
    rows
}

/// A boundary covering every offset (a closed generation is batched whole).
fn everything(stream: &Stream) -> lake::Boundary {
    lake::Boundary(stream.keys().map(|&p| (p, i64::MAX)).collect())
}

/// Reads a version back: per key, the states in its rows; asserts parts are sorted by time.
async fn read_version(
    store: &Lake,
    view: &ViewDef,
    manifest: &Manifest,
) -> BTreeMap<String, Vec<MetricState>> {
    let mut rows: BTreeMap<String, Vec<MetricState>> = BTreeMap::new();
    let mut total = 0;
    for file in &manifest.files {
        // Each part is sorted by time; an extended version's parts overlap in time and keys.
        let mut last_time = i64::MIN;
        for batch in store.read_parquet(&file.path, 8192).await.unwrap() {
            let batch = batch.unwrap();
            assert_eq!(
                batch.schema(),
                view.state_schema(),
                "parts have the view's state schema"
            );
            total += batch.num_rows();
            let times = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::TimestampMillisecondArray>()
                .unwrap();
            for row in 0..batch.num_rows() {
                let time = times.value(row);
                assert!(time >= last_time, "view rows are sorted by time");
                last_time = time;
                let dims: Vec<Value> = view
                    .dimensions
                    .iter()
                    .enumerate()
                    .map(|(i, _)| {
                        let column = batch.column(1 + i);
                        let strings = column
                            .as_any()
                            .downcast_ref::<arrow::array::StringArray>()
                            .unwrap();
                        if strings.is_null(row) {
                            Value::Null
                        } else {
                            Value::Str(strings.value(row).to_owned().into())
                        }
                    })
                    .collect();
                let states = view
                    .metrics
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        read_state(
                            m.state_kind(),
                            batch.column(1 + view.dimensions.len() + i),
                            row,
                        )
                        .unwrap()
                    })
                    .collect();
                match rows.get_mut(&key_string(&(time, dims.clone()))) {
                    // A key repeats only across the delta parts of an extended version.
                    Some(mine) => {
                        assert!(manifest.deltas > 0, "one row per key in a full version");
                        for (mine, theirs) in mine.iter_mut().zip(&states) {
                            mine.merge(theirs).unwrap();
                        }
                    }
                    None => {
                        rows.insert(key_string(&(time, dims)), states);
                    }
                }
            }
        }
    }
    assert_eq!(total as u64, manifest.row_count);
    rows
}

fn assert_same_states(view: &ViewDef, got: &BTreeMap<String, Vec<MetricState>>, want: &Truth) {
    let got_keys: Vec<_> = got.keys().collect();
    let want_keys: Vec<_> = want.keys().collect();
    assert_eq!(
        got_keys.len(),
        want_keys.len(),
        "{}: number of rows",
        view.name
    );
    assert_eq!(got_keys, want_keys, "{}: row keys", view.name);
    for (key, (want_states, magnitudes)) in want {
        for (i, metric) in view.metrics.iter().enumerate() {
            let (got, want) = (&got[key][i], &want_states[i]);
            let close =
                |a: f64, b: f64| (a - b).abs() <= 1e-9 * magnitudes[i].max(f64::MIN_POSITIVE);
            match (got, want) {
                (MetricState::FloatSum(a), MetricState::FloatSum(b)) => {
                    assert!(
                        close(a.finalize(), b.finalize()),
                        "{key} {}: {a:?} vs {b:?}",
                        metric.name
                    );
                }
                (MetricState::Avg(a), MetricState::Avg(b)) => {
                    assert_eq!(a.count(), b.count(), "{key} {}", metric.name);
                    assert!(
                        close(a.sum(), b.sum()),
                        "{key} {}: {a:?} vs {b:?}",
                        metric.name
                    );
                }
                _ => assert_eq!(got, want, "{key} {}", metric.name),
            }
        }
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(topic: &str, epoch_size: u64, keep_versions: usize) -> BatchSettings {
    BatchSettings {
        topic: topic.to_owned(),
        epoch_size,
        keep_versions,
        memory_limit_bytes: 256 << 20,
        threads: 2,
        part_rows: 700,
        slice: SliceTarget::DEFAULT,
        lock_lease: Duration::from_secs(30),
        full_every: Duration::from_secs(86_400),
        raw_file_rows: 500_000,
        raw_retention: None,
        max_deltas: 24,
        engine: tributary_schemas::config::BatchEngine::Local,
    }
}

fn published(run: &ViewRun) -> &Manifest {
    match &run.outcome {
        Outcome::Published(manifest) => manifest,
        other => panic!("{} was not published: {other:?}", run.view),
    }
}

/// The boundary the recompute must choose: each partition's last offset + 1, aligned down.
fn expected_boundary(stream: &Stream, epoch_size: u64) -> lake::Boundary {
    lake::Boundary(
        stream
            .iter()
            .map(|(&p, events)| {
                (
                    p,
                    aligned_boundary(events.last().unwrap().0 + 1, epoch_size),
                )
            })
            .filter(|(_, w)| *w > 0)
            .collect(),
    )
}

#[test]
fn recomputed_states_equal_the_algebra_over_the_events_below_the_boundary() {
    let config = defaults();
    let rt = runtime();
    for (seed, epoch_size, file_rows) in
        [(1, 1000, 900), (2, 7, 333), (3, 100_000, 5000), (4, 250, 1)]
    {
        let per_partition = if file_rows == 1 { 300 } else { 4000 };
        let (_lake_dir, store) = empty_lake();
        let stream = random_stream(seed, 3, per_partition, &config);
        rt.block_on(write_raw(&store, "events", &config, &stream, file_rows));
        let batch = RecomputeService::new(
            settings("events", epoch_size, 5),
            config.events.clone(),
            config.views.clone(),
            store.clone(),
        )
        .unwrap();
        let runs = rt.block_on(batch.run(None, quiet())).unwrap();
        let boundary = expected_boundary(&stream, epoch_size);
        if boundary.0.is_empty() {
            assert!(
                runs.iter().all(|r| r.outcome == Outcome::NothingArchived),
                "seed {seed}: {runs:?}"
            );
            continue;
        }
        for (run, view) in runs.iter().zip(&config.views) {
            let manifest = published(run);
            assert_eq!(manifest.boundary, boundary, "seed {seed}");
            assert_eq!(manifest.definition_hash, view.definition_hash());
            let got = rt.block_on(read_version(&store, view, manifest));
            assert_same_states(view, &got, &truth(view, &stream, &boundary));
            assert!(run.rows_read > 0 && run.peak_memory_bytes > 0, "{run:?}");
        }
        // Nothing new archived: the next run publishes nothing.
        let again = rt.block_on(batch.run(None, quiet())).unwrap();
        assert!(
            again
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Unchanged(_))),
            "{again:?}"
        );
    }
}

/// Incremental runs (issue 30): each run extends the live version with the states of the offsets
/// above its boundary only; after every run the version's states (merged across its parts) equal
/// the algebra over every event below the new boundary, late events included, and a full run at
/// the end equals them too. Versions share parts: collecting old versions keeps every part a kept
/// version lists.
#[test]
fn incremental_runs_equal_a_full_recompute_and_share_their_parts() {
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let stream = random_stream(30, 3, 6000, &config);
    let batch = RecomputeService::new(
        settings("events", 500, 2),
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    // The stream arrives in four chunks per partition; a run after each.
    let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
    let mut so_far = Stream::new();
    let mut versions = Vec::new();
    for chunk in 0..4 {
        let part: Stream = (stream.iter())
            .map(|(&p, events)| {
                let size = events.len() / 4;
                (p, events[chunk * size..(chunk + 1) * size].to_vec())
            })
            .collect();
        rt.block_on(write_raw_from(
            &store, "events", &config, &part, 700, &starts,
        ));
        for (&p, events) in &part {
            starts.insert(p, events.last().unwrap().0 + 1);
            so_far.entry(p).or_default().extend(events.iter().cloned());
        }
        let runs = rt.block_on(batch.run(None, quiet())).unwrap();
        for (run, view) in runs.iter().zip(&config.views) {
            let manifest = published(run);
            assert_eq!(manifest.deltas, chunk as u32, "{}: run {chunk}", view.name);
            if chunk > 0 {
                // Only the files holding new offsets were read: the new ones, and per partition
                // the one straddling the old boundary (700 rows a file).
                let new_rows: usize = part.values().map(Vec::len).sum();
                let all_rows: usize = so_far.values().map(Vec::len).sum();
                assert!(
                    run.rows_read <= (new_rows + 3 * 700) as u64 && run.rows_read < all_rows as u64,
                    "read {} rows, {new_rows} new of {all_rows}",
                    run.rows_read
                );
            }
            let got = rt.block_on(read_version(&store, view, manifest));
            let boundary = &manifest.boundary;
            assert_same_states(view, &got, &truth(view, &so_far, boundary));
            if view.name == "pageviews" {
                versions.push(manifest.clone());
            }
        }
    }
    // keep_versions = 2: versions 1 and 2 are gone, but the parts version 4 lists are all there.
    let extended = versions.last().unwrap();
    assert_eq!(
        rt.block_on(store.manifest("pageviews", 1)).unwrap(),
        None,
        "collected"
    );
    rt.block_on(assert_all_parts_readable(&store, extended));

    // A full run over the same boundary: the same states, in one part set without repeated keys;
    // and its check finds the extended line counting the same events.
    let full_run = rt
        .block_on(batch.run_as(Some("pageviews"), quiet(), RunOptions::FULL))
        .unwrap();
    assert!(!full_run[0].diverged, "{full_run:?}");
    let full = published(&full_run[0]);
    assert_eq!(
        (full.deltas, full.boundary.clone()),
        (0, extended.boundary.clone())
    );
    let view = config.view("pageviews").unwrap();
    let from_full = rt.block_on(read_version(&store, view, full));
    let from_extended = rt.block_on(read_version(&store, view, extended));
    assert_same_states(view, &from_full, &truth(view, &so_far, &full.boundary));
    assert_eq!(from_full.len(), from_extended.len());
    let full_keys: Vec<_> = from_full.keys().collect();
    let extended_keys: Vec<_> = from_extended.keys().collect();
    assert_eq!(full_keys, extended_keys);

    // The check can fail: a live version that lists one of its parts twice (as a wrong extension
    // would count events twice) is caught by the next full run, which is published all the same.
    let mut wrong = full.clone();
    wrong.version = full.version + 10;
    wrong.files.push(wrong.files[0].clone());
    rt.block_on(store.write_manifest(&wrong)).unwrap();
    rt.block_on(store.write_current("pageviews", wrong.version))
        .unwrap();
    let checked = rt
        .block_on(batch.run_as(Some("pageviews"), quiet(), RunOptions::FULL))
        .unwrap();
    assert!(checked[0].diverged, "{checked:?}");
    let repaired = published(&checked[0]);
    let got = rt.block_on(read_version(&store, view, repaired));
    assert_same_states(view, &got, &truth(view, &so_far, &repaired.boundary));
}

/// Raw files written before the event schema changed (no `referrer` yet, `bytes` still int64) and
/// after it are read in one plan with the current schema: the missing field is NULL, the int64
/// values read as floats.
#[test]
fn raw_files_of_an_older_event_schema_are_read_with_the_current_one() {
    let text = tributary_schemas::config::DEFAULT_CONFIG
        .replace("bytes = \"int64\"", "bytes = \"float64\"");
    assert_ne!(text, tributary_schemas::config::DEFAULT_CONFIG);
    let config = Config::from_sources(Some((&text, "test")), []).unwrap();
    let mut old_events = defaults().events;
    old_events.fields.retain(|f| f.name != "referrer");
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let stream = random_stream(33, 3, 3000, &defaults());
    let field = |schema: &tributary_schemas::event::EventSchema, name: &str| {
        schema.field_index(name).unwrap()
    };
    let (bytes, referrer) = (
        field(&config.events, "bytes"),
        field(&config.events, "referrer"),
    );
    // The truth, in the current schema: the first half has no referrer; bytes are floats.
    let mut truth_stream = Stream::new();
    let (mut old_half, mut new_half) = (Stream::new(), Stream::new());
    for (&p, events) in &stream {
        for (i, (offset, event)) in events.iter().enumerate() {
            let mut current = event.clone();
            if let Value::Int(v) = current.values[bytes] {
                current.values[bytes] = Value::Float(v as f64);
            }
            if i < events.len() / 2 {
                current.values[referrer] = Value::Null;
                let mut old = event.clone();
                old.values.remove(referrer);
                old_half.entry(p).or_default().push((*offset, old));
            } else {
                new_half
                    .entry(p)
                    .or_default()
                    .push((*offset, current.clone()));
            }
            truth_stream.entry(p).or_default().push((*offset, current));
        }
    }
    let mut old_config = defaults();
    old_config.events = old_events;
    rt.block_on(write_raw(&store, "events", &old_config, &old_half, 400));
    let starts = (old_half.iter())
        .map(|(&p, e)| (p, e.last().unwrap().0 + 1))
        .collect();
    rt.block_on(write_raw_from(
        &store, "events", &config, &new_half, 400, &starts,
    ));
    let batch = RecomputeService::new(
        settings("events", 500, 2),
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    let runs = rt.block_on(batch.run(None, quiet())).unwrap();
    for (run, view) in runs.iter().zip(&config.views) {
        let manifest = published(run);
        let got = rt.block_on(read_version(&store, view, manifest));
        assert_same_states(view, &got, &truth(view, &truth_stream, &manifest.boundary));
    }
    let traffic = config.view("traffic").unwrap();
    let got = rt.block_on(read_version(&store, traffic, published(&runs[1])));
    assert!(
        got.keys().any(|k| k.contains("Null")),
        "old events group under a NULL referrer"
    );
}

/// Past `max_deltas` delta part sets, an extension folds every part of its version into one row
/// per key (from the parts alone), and the line goes on from there: exact after every run.
#[test]
fn an_extension_past_the_delta_limit_folds_the_parts_and_stays_exact() {
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let stream = random_stream(32, 3, 5000, &config);
    let mut settings = settings("events", 500, 3);
    settings.max_deltas = 2;
    let batch = RecomputeService::new(
        settings,
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    let mut starts: BTreeMap<i32, i64> = BTreeMap::new();
    let mut so_far = Stream::new();
    for chunk in 0..5 {
        let part: Stream = (stream.iter())
            .map(|(&p, events)| (p, events[chunk * 1000..(chunk + 1) * 1000].to_vec()))
            .collect();
        rt.block_on(write_raw_from(
            &store, "events", &config, &part, 700, &starts,
        ));
        for (&p, events) in &part {
            starts.insert(p, events.last().unwrap().0 + 1);
            so_far.entry(p).or_default().extend(events.iter().cloned());
        }
        let runs = rt.block_on(batch.run(None, quiet())).unwrap();
        for (run, view) in runs.iter().zip(&config.views) {
            let manifest = published(run);
            // Full, extended, folded, extended, folded.
            assert_eq!(
                manifest.deltas,
                [0, 1, 0, 1, 0][chunk],
                "{}: run {chunk}",
                view.name
            );
            // Every version says what its states mean.
            assert_eq!(manifest.definition.as_ref(), Some(&view.spec()));
            if chunk == 2 || chunk == 4 {
                assert!(
                    run.rows_read < 3 * 1000 + 3 * 700,
                    "a fold reads new offsets only"
                );
                assert!(manifest.full_at.is_some());
            }
            // A folded version has one row per key (read_version asserts it for deltas = 0).
            let got = rt.block_on(read_version(&store, view, manifest));
            assert_same_states(view, &got, &truth(view, &so_far, &manifest.boundary));
            rt.block_on(assert_all_parts_readable(&store, manifest));
        }
    }
}

/// `[[views]] retention`: versions hold no bucket before their cut, full or extended, and every
/// bucket from it on is exact; the version records the cut for readers.
#[test]
fn a_view_retention_cuts_old_buckets_from_full_and_extended_versions() {
    let mut config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let stream = random_stream(31, 3, 4000, &config);
    // A cut a day before the stream's base time: late events (up to three days) fall before it.
    let cut_ms = 1_795_000_000_000i64 - 86_400_000;
    let age = chrono::Utc::now().timestamp_millis() - cut_ms;
    for view in &mut config.views {
        view.retention = Some(Duration::from_millis(age as u64));
    }
    let batch = RecomputeService::new(
        settings("events", 500, 2),
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    let (first, second): (Stream, Stream) = (
        stream
            .iter()
            .map(|(&p, e)| (p, e[..2000].to_vec()))
            .collect(),
        stream
            .iter()
            .map(|(&p, e)| (p, e[2000..].to_vec()))
            .collect(),
    );
    let mut starts = BTreeMap::new();
    for (round, part) in [first, second].iter().enumerate() {
        rt.block_on(write_raw_from(
            &store, "events", &config, part, 700, &starts,
        ));
        for (&p, events) in part {
            starts.insert(p, events.last().unwrap().0 + 1);
        }
        let runs = rt.block_on(batch.run(None, quiet())).unwrap();
        for (run, view) in runs.iter().zip(&config.views) {
            let manifest = published(run);
            assert_eq!(manifest.deltas, round as u32);
            let from = manifest.retained_from.unwrap().timestamp_millis();
            // The cut floors to the view's bucket (an hour at most here).
            assert!(
                from > cut_ms - 3_600_000 && from <= cut_ms + 60_000,
                "{from}"
            );
            let recent: Stream = (stream.iter())
                .map(|(&p, events)| {
                    let kept = events
                        .iter()
                        .filter(|(_, e)| view.granularity.bucket_start(e.time_ms) >= from);
                    (p, kept.cloned().collect())
                })
                .collect();
            let dropped = (stream.values().flatten())
                .filter(|(_, e)| e.time_ms < from)
                .count();
            assert!(dropped > 0, "the stream has events before the cut");
            let got = rt.block_on(read_version(&store, view, manifest));
            assert_same_states(view, &got, &truth(view, &recent, &manifest.boundary));
        }
    }
}

async fn assert_all_parts_readable(store: &Lake, manifest: &Manifest) {
    let mut rows = 0;
    for file in &manifest.files {
        for batch in store.read_parquet(&file.path, 8192).await.unwrap() {
            rows += batch.unwrap().num_rows() as u64;
        }
    }
    assert_eq!(rows, manifest.row_count, "version {}", manifest.version);
}

/// Events in offset order follow time, as the archiver sees a live stream: a second apart with a
/// few seconds of jitter, and 1 in 10 000 up to two hours late.
fn time_ordered_stream(
    seed: u64,
    partitions: i32,
    per_partition: usize,
    config: &Config,
) -> Stream {
    let mut rng = Rng(seed ^ 0x5eed);
    let mut stream = random_stream(seed, partitions, per_partition, config);
    for events in stream.values_mut() {
        for (i, (_, event)) in events.iter_mut().enumerate() {
            let late = match rng.chance(1) && rng.chance(1) {
                true => rng.below(2 * 3_600_000) as i64,
                false => 0,
            };
            event.time_ms = 1_795_000_000_000 + i as i64 * 1000 + rng.below(5000) as i64 - late;
        }
    }
    stream
}

/// Slices of the time line aggregate exactly what one pass over the input does: on a first run
/// (which re-plans after its first slice) and on the next (which plans from the live version's
/// groups), on one thread and on two, for minute and hour buckets.
#[test]
fn time_slices_aggregate_exactly_and_bound_memory() {
    let config = defaults();
    let rt = runtime();
    let stream = time_ordered_stream(5, 3, 20_000, &config);
    for threads in [1, 2] {
        let (_lake_dir, store) = empty_lake();
        // The first half of each partition, then all of it.
        let half: Stream = stream
            .iter()
            .map(|(&p, events)| (p, events[..events.len() / 2].to_vec()))
            .collect();
        let mut sliced = settings("events", 1000, 2);
        // The 250-row files stay as written: compacted, a partition's 10k rows would be one page
        // of statistics, and this test is about slices planned from many narrow ones.
        sliced.raw_file_rows = 250;
        sliced.threads = threads;
        sliced.slice = SliceTarget {
            rows: 3000,
            groups: 800,
        };
        let batch = RecomputeService::new(
            sliced,
            config.events.clone(),
            config.views.clone(),
            store.clone(),
        )
        .unwrap();
        for (round, input) in [&half, &stream].into_iter().enumerate() {
            rt.block_on(write_raw(&store, "events", &config, input, 250));
            // Full runs both: the second plans from the live version's groups (an incremental run
            // would read only the second half).
            let runs = rt
                .block_on(batch.run_as(None, quiet(), RunOptions::FULL))
                .unwrap();
            for (run, view) in runs.iter().zip(&config.views) {
                let manifest = published(run);
                let got = rt.block_on(read_version(&store, view, manifest));
                assert_same_states(view, &got, &truth(view, &stream, &manifest.boundary));
                // `pageviews` (minute buckets, a group for ~4 rows) in ~10 slices of 3000 rows
                // or 800 groups. `traffic` (hours, ~100 groups): on the first run, the first
                // slice shows that the rest fits one; the next run knows it from the start.
                let wanted = match (view.name.as_str(), round) {
                    ("pageviews", _) => 5..=12,
                    (_, 0) => 2..=2,
                    _ => 1..=1,
                };
                assert!(
                    wanted.contains(&run.slices),
                    "{} round {round} on {threads} threads: {run:?}",
                    view.name
                );
                // The scans prune by the pages' time statistics: slices together read about
                // the input once, not once each.
                assert!(
                    run.rows_scanned as f64 <= run.rows_read as f64 * MAX_READ_FACTOR,
                    "{} round {round}: {run:?}",
                    view.name
                );
            }
        }
    }
}

#[test]
fn versions_are_kept_rolled_back_and_collected() {
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let view = config.view("traffic").unwrap().clone();
    let batch = RecomputeService::new(
        settings("events", 100, 2),
        config.events.clone(),
        vec![view.clone()],
        store.clone(),
    )
    .unwrap();
    // Each round archives more of the same partitions: a longer prefix of one stream.
    let full = random_stream(10, 2, 1200, &config);
    let mut streams = Vec::new();
    for round in 1..=4u64 {
        let prefix: Stream = full
            .iter()
            .map(|(&p, events)| (p, events[..300 * round as usize].to_vec()))
            .collect();
        rt.block_on(write_raw(&store, "events", &config, &prefix, 300));
        let runs = rt.block_on(batch.run(Some("traffic"), quiet())).unwrap();
        assert_eq!(published(&runs[0]).version, round);
        streams.push(prefix);
    }
    let listed = rt.block_on(batch.list()).unwrap();
    assert_eq!(listed[0].current, Some(4));
    let kept: Vec<u64> = listed[0].versions.iter().map(|m| m.version).collect();
    assert_eq!(kept, [3, 4], "keep_versions = 2");

    let manifest = rt.block_on(batch.rollback("traffic", 3)).unwrap();
    assert_eq!(rt.block_on(store.current("traffic")).unwrap(), Some(3));
    let got = rt.block_on(read_version(&store, &view, &manifest));
    assert_same_states(&view, &got, &truth(&view, &streams[2], &manifest.boundary));

    let error = rt.block_on(batch.rollback("traffic", 1)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "view \"traffic\" has no version 1 with a manifest (versions: 3, 4)"
    );
    let error = rt.block_on(batch.run(Some("nope"), quiet())).unwrap_err();
    assert_eq!(
        error.to_string(),
        "there is no view named \"nope\" (configured views: traffic)"
    );

    // A version computed under another definition cannot be made live.
    let mut changed = view;
    changed.metrics.pop();
    let other = RecomputeService::new(
        settings("events", 100, 2),
        config.events.clone(),
        vec![changed],
        store,
    )
    .unwrap();
    let error = rt.block_on(other.rollback("traffic", 4)).unwrap_err();
    assert!(
        matches!(error, BatchError::DefinitionChanged { .. }),
        "{error}"
    );
    // ...and a run under the new definition recomputes even though the boundary did not move.
    let runs = rt.block_on(other.run(None, quiet())).unwrap();
    assert_eq!(published(&runs[0]).version, 5);
}

/// A view removed from the configuration keeps its versions for `keep_versions` runs of every
/// view (configured again meanwhile, it keeps them for good); then they are deleted.
#[test]
fn a_removed_view_keeps_its_versions_for_keep_versions_runs() {
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let service = |views: Vec<ViewDef>| {
        RecomputeService::new(
            settings("events", 100, 2),
            config.events.clone(),
            views,
            store.clone(),
        )
        .unwrap()
    };
    let both = service(config.views.clone());
    let pageviews_only = service(vec![config.view("pageviews").unwrap().clone()]);
    let full = random_stream(11, 2, 1200, &config);
    let mut round = 0;
    let more = |round: &mut usize| {
        *round += 1;
        let prefix: Stream = (full.iter())
            .map(|(&p, events)| (p, events[..200 * *round].to_vec()))
            .collect();
        rt.block_on(write_raw(&store, "events", &config, &prefix, 200));
    };
    more(&mut round);
    rt.block_on(both.run(None, quiet())).unwrap();
    let traffic = rt.block_on(store.current("traffic")).unwrap();
    assert_eq!(traffic, Some(1));

    // Removed for one run, then configured again: nothing is lost, the count starts over.
    more(&mut round);
    rt.block_on(pageviews_only.run(None, quiet())).unwrap();
    let removed = rt.block_on(store.removed("traffic")).unwrap().unwrap();
    assert_eq!(removed.runs, 1);
    more(&mut round);
    rt.block_on(both.run(None, quiet())).unwrap();
    assert_eq!(rt.block_on(store.removed("traffic")).unwrap(), None);
    assert_eq!(rt.block_on(store.current("traffic")).unwrap(), Some(2));

    // Removed for good: kept through two runs (a run of one view does not count), gone at the third.
    for runs in 1..=2 {
        more(&mut round);
        rt.block_on(pageviews_only.run(None, quiet())).unwrap();
        rt.block_on(pageviews_only.run(Some("pageviews"), quiet()))
            .unwrap();
        assert_eq!(
            rt.block_on(store.removed("traffic")).unwrap().unwrap().runs,
            runs
        );
        assert_eq!(rt.block_on(store.versions("traffic")).unwrap(), [1, 2]);
    }
    more(&mut round);
    rt.block_on(pageviews_only.run(None, quiet())).unwrap();
    assert_eq!(rt.block_on(store.current("traffic")).unwrap(), None);
    assert!(rt.block_on(store.versions("traffic")).unwrap().is_empty());
    assert!(
        !rt.block_on(store.view_names())
            .unwrap()
            .contains(&"traffic".to_owned())
    );
    assert_eq!(rt.block_on(store.current("pageviews")).unwrap(), Some(6));
}

/// Shutdown cancels a running recompute: it stops, publishes nothing, releases the lake's lock at
/// once (not after its lease), refuses further runs, and the next process's run collects its files.
#[test]
fn a_cancelled_run_stops_releases_the_lake_and_publishes_nothing() {
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let stream = random_stream(11, 3, 40_000, &config);
    rt.block_on(write_raw(&store, "events", &config, &stream, 5000));
    let mut slow = settings("events", 100, 2);
    // A lease far longer than the test: only a release frees the lake in time.
    slow.lock_lease = Duration::from_secs(3600);
    let batch = Arc::new(
        RecomputeService::new(
            slow.clone(),
            config.events.clone(),
            config.views.clone(),
            store.clone(),
        )
        .unwrap(),
    );
    let lock = Path::from(lake::LOCK_PATH);
    let running = {
        let batch = Arc::clone(&batch);
        let handle = rt.handle().clone();
        std::thread::spawn(move || handle.block_on(batch.run(None, quiet())))
    };
    // Cancel once the run holds the lake.
    let started = std::time::Instant::now();
    while rt.block_on(store.store().head(&lock)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    batch.cancel();
    let error = running.join().unwrap().unwrap_err();
    assert!(matches!(error, BatchError::Cancelled), "{error}");
    assert!(
        rt.block_on(store.store().head(&lock)).is_err(),
        "the lock is still held"
    );
    for view in &config.views {
        let current = Path::from(lake::current_path(&view.name));
        assert!(
            rt.block_on(store.store().head(&current)).is_err(),
            "{} was published",
            view.name
        );
    }
    let again = rt.block_on(batch.run(None, quiet())).unwrap_err();
    assert!(matches!(again, BatchError::Cancelled), "{again}");

    let next =
        RecomputeService::new(slow, config.events, config.views.clone(), store.clone()).unwrap();
    let runs = rt.block_on(next.run(None, quiet())).unwrap();
    for (run, view) in runs.iter().zip(&config.views) {
        let manifest = published(run);
        let got = rt.block_on(read_version(&store, view, manifest));
        assert_same_states(view, &got, &truth(view, &stream, &manifest.boundary));
    }
    let listed = rt.block_on(next.list()).unwrap();
    assert!(listed.iter().all(|v| v.incomplete.is_empty()), "{listed:?}");
}

#[test]
fn a_second_run_is_refused_while_one_holds_the_lake() {
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let batch = RecomputeService::new(
        settings("events", 100, 2),
        config.events,
        config.views,
        store.clone(),
    )
    .unwrap();
    let held = rt
        .block_on(tributary_batch::recompute::lock::RunLock::acquire(
            store.store().clone(),
            Duration::from_secs(30),
        ))
        .unwrap();
    let error = rt.block_on(batch.run(None, quiet())).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("a recompute is already running (lock held by "),
        "{error}"
    );
    rt.block_on(held.release()).unwrap();
    rt.block_on(batch.run(None, quiet())).unwrap();
}

/// Through the real pipeline: events produced to a broker, archived (with malformed ones
/// quarantined), then recomputed; the truth is the shared decoder applied to the produced bytes.
#[test]
fn archived_events_from_a_real_broker_recompute_exactly() {
    const PARTITIONS: i32 = 3;
    const EVENTS: u64 = 30_000;
    let config = defaults();
    let rt = runtime();
    let broker = Broker::shared();
    let topic = rt.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let (_lake_dir, store) = empty_lake();
    let mut expected = Expected::new();
    rt.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        EVENTS,
        &mut expected,
    ));

    let archiver = Archiver::new(
        ArchiverSettings {
            brokers: broker.bootstrap_servers(),
            topic: topic.clone(),
            dlq_topic: None,
            max_file_rows: 4000,
            max_file_age: Duration::from_millis(300),
            events: config.events.clone(),
        },
        store.clone(),
    );
    let target: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            (
                p,
                expected
                    .keys()
                    .filter(|(q, _)| *q == p)
                    .map(|(_, o)| o + 1)
                    .max()
                    .unwrap(),
            )
        })
        .collect();
    let stop = Shutdown::default();
    let handle = rt.handle().clone();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| archiver.run(&handle, &stop));
        let started = std::time::Instant::now();
        while archiver.stats().progress() != target {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "archiver stuck"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.stop();
        worker.join().unwrap().unwrap();
    });

    // The truth: decode what was produced, exactly as the archiver does.
    let decoder = Decoder::new(config.events.clone());
    let mut stream = Stream::new();
    for ((partition, offset), payload, code) in produced_payloads(&expected, PARTITIONS, 0) {
        assert_eq!(code.map(str::to_owned), expected[&(partition, offset)]);
        if let Ok(event) = decoder.decode(&payload) {
            let values = event.values.into_iter().map(Value::into_owned).collect();
            let event = Event {
                time_ms: event.time_ms,
                values,
            };
            stream.entry(partition).or_default().push((offset, event));
        }
    }

    let epoch_size = 1000;
    let batch = RecomputeService::new(
        settings(&topic, epoch_size, 3),
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    let runs = rt.block_on(batch.run(None, quiet())).unwrap();
    let boundary = lake::Boundary(
        target
            .iter()
            .map(|(&p, &next)| (p, aligned_boundary(next, epoch_size)))
            .collect(),
    );
    for (run, view) in runs.iter().zip(&config.views) {
        let manifest = published(run);
        assert_eq!(manifest.boundary, boundary);
        let got = rt.block_on(read_version(&store, view, manifest));
        let want = truth(view, &stream, &boundary);
        assert!(!want.is_empty());
        assert_same_states(view, &got, &want);
    }
}

/// With a memory pool far smaller than the aggregation state, DataFusion spills instead of
/// growing, and the states are still exact: on one thread (one aggregation, then the sort) and on
/// two (partial and final aggregations and two sorts share the pool). 240k events: since the
/// time sort stopped copying the aggregation's output, 120k fit a 20 MiB pool without spilling.
#[test]
fn a_small_memory_pool_spills_and_stays_exact() {
    let config = defaults();
    let rt = runtime();
    let stream = random_stream(99, 3, 80_000, &config);
    let view = config.view("pageviews").unwrap().clone();
    for threads in [1, 2] {
        let (_lake_dir, store) = empty_lake();
        rt.block_on(write_raw(&store, "events", &config, &stream, 5000));
        let mut small = settings("events", 1000, 2);
        small.threads = threads;
        small.memory_limit_bytes = 20 << 20;
        small.part_rows = 100_000;
        let batch = RecomputeService::new(
            small,
            config.events.clone(),
            vec![view.clone()],
            store.clone(),
        )
        .unwrap();
        let runs = rt.block_on(batch.run(None, quiet())).unwrap();
        let manifest = published(&runs[0]);
        assert!(runs[0].peak_memory_bytes <= 20 << 20, "{:?}", runs[0]);
        assert!(
            runs[0].spilled_bytes > 0,
            "the pool must be small enough to spill on {threads} threads: {:?}",
            runs[0]
        );
        let got = rt.block_on(read_version(&store, &view, manifest));
        assert_same_states(&view, &got, &truth(&view, &stream, &manifest.boundary));
    }
}

/// A broker replaced by an empty one (same topic name, offsets from 0 again): the archiver closes
/// the archived generation and archives the new log as the next; the recompute counts the closed
/// generation whole and the new one below its boundary, nothing lost, nothing twice.
#[test]
fn a_restarted_broker_starts_a_new_generation_and_views_count_both() {
    const PARTITIONS: i32 = 2;
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let topic = "clicks";
    let archive = |broker: &Broker, expected: &Expected| {
        let archiver = Archiver::new(
            ArchiverSettings {
                brokers: broker.bootstrap_servers(),
                topic: topic.to_owned(),
                dlq_topic: None,
                max_file_rows: 700,
                max_file_age: Duration::from_millis(200),
                events: config.events.clone(),
            },
            store.clone(),
        );
        let target: BTreeMap<i32, i64> = (0..PARTITIONS)
            .map(|p| {
                (
                    p,
                    expected
                        .keys()
                        .filter(|(q, _)| *q == p)
                        .map(|(_, o)| o + 1)
                        .max()
                        .unwrap(),
                )
            })
            .collect();
        let stop = Shutdown::default();
        let handle = rt.handle().clone();
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| archiver.run(&handle, &stop));
            let started = std::time::Instant::now();
            while archiver.stats().progress() != target {
                assert!(!worker.is_finished(), "archiver stopped early");
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "archiver stuck at {:?}",
                    archiver.stats().progress()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.stop();
            worker.join().unwrap().unwrap();
        });
    };
    let decode_stream = |expected: &Expected, first_event: u64| -> Stream {
        let decoder = Decoder::new(config.events.clone());
        let mut stream = Stream::new();
        for ((partition, offset), payload, _) in
            produced_payloads(expected, PARTITIONS, first_event)
        {
            if let Ok(event) = decoder.decode(&payload) {
                let values = event.values.into_iter().map(Value::into_owned).collect();
                let event = Event {
                    time_ms: event.time_ms,
                    values,
                };
                stream.entry(partition).or_default().push((offset, event));
            }
        }
        stream
    };

    // Generation 0 on the first broker.
    let first = Broker::start().unwrap();
    rt.block_on(first.create_named_topic(topic, PARTITIONS))
        .unwrap();
    let mut expected_first = Expected::new();
    rt.block_on(produce_mixed(
        &first,
        topic,
        PARTITIONS,
        0,
        3000,
        &mut expected_first,
    ));
    archive(&first, &expected_first);
    drop(first);

    // The broker is replaced: same name, empty log, fewer events than the lake already holds.
    let second = Broker::start().unwrap();
    rt.block_on(second.create_named_topic(topic, PARTITIONS))
        .unwrap();
    let mut expected_second = Expected::new();
    rt.block_on(produce_mixed(
        &second,
        topic,
        PARTITIONS,
        100_000,
        1000,
        &mut expected_second,
    ));
    archive(&second, &expected_second);

    let generations = rt.block_on(store.generations(topic)).unwrap();
    assert_eq!(generations.current, 1);
    assert_eq!(
        generations.closed[0].next_offsets,
        [(0, 1500), (1, 1500)].into()
    );
    assert!(
        generations.closed[0].reason.contains("ends at offset 500"),
        "{:?}",
        generations.closed[0]
    );

    let epoch_size = 100;
    let batch = RecomputeService::new(
        settings(topic, epoch_size, 3),
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    let runs = rt.block_on(batch.run(None, quiet())).unwrap();
    let (old, new) = (
        decode_stream(&expected_first, 0),
        decode_stream(&expected_second, 100_000),
    );
    for (run, view) in runs.iter().zip(&config.views) {
        let manifest = published(run);
        assert_eq!(
            (manifest.generation, manifest.closed_generations.clone()),
            (1, vec![0])
        );
        assert_eq!(
            manifest.boundary,
            lake::Boundary([(0, 500), (1, 500)].into())
        );
        let got = rt.block_on(read_version(&store, view, manifest));
        let want = truth_of(
            view,
            &[(&old, &everything(&old)), (&new, &manifest.boundary)],
        );
        assert_same_states(view, &got, &want);
    }
}

/// The recompute bench's breakdown views take the shipped `pageviews` apart: its `pageviews` and
/// `traffic` must stay the shipped views, over the shipped events, or the figures compare
/// something else.
#[test]
fn the_bench_breakdown_measures_the_shipped_views() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/recompute_breakdown.toml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let breakdown = Config::from_sources(Some((&text, path)), []).unwrap();
    let shipped = defaults();
    assert_eq!(breakdown.events, shipped.events);
    for name in ["pageviews", "traffic"] {
        assert_eq!(breakdown.view(name), shipped.view(name), "{name}");
    }
    let daily = breakdown.view("pageviews_daily").unwrap();
    let pageviews = shipped.view("pageviews").unwrap();
    assert_eq!(daily.metrics, pageviews.metrics);
    assert_eq!(daily.dimensions, pageviews.dimensions);
    assert_ne!(daily.granularity, pageviews.granularity);
}

/// A pool too small for a view's groups even when spilling fails the run with an error that names
/// the view and the setting to raise, and publishes nothing; the same lake then recomputes with a
/// pool that fits.
#[test]
fn a_pool_too_small_for_a_view_fails_naming_the_setting_to_raise() {
    let config = defaults();
    let rt = runtime();
    let (_lake_dir, store) = empty_lake();
    let stream = random_stream(11, 3, 4000, &config);
    rt.block_on(write_raw(&store, "events", &config, &stream, 5000));
    let mut tiny = settings("events", 1, 2);
    tiny.memory_limit_bytes = 1 << 20;
    let batch = RecomputeService::new(
        tiny,
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    let error = rt.block_on(batch.run(None, quiet())).unwrap_err();
    let BatchError::OutOfMemory { view, limit_mb, .. } = &error else {
        panic!("expected OutOfMemory, got {error:?}");
    };
    assert_eq!((view.as_str(), *limit_mb), ("pageviews", 1));
    assert!(
        error.to_string().contains("raise [batch] memory_limit_mb"),
        "{error}"
    );
    for view in &config.views {
        assert_eq!(rt.block_on(store.current(&view.name)).unwrap(), None);
    }
    drop(batch);

    let batch = RecomputeService::new(
        settings("events", 1, 2),
        config.events.clone(),
        config.views.clone(),
        store,
    )
    .unwrap();
    let runs = rt.block_on(batch.run(None, quiet())).unwrap();
    assert!(
        runs.iter()
            .all(|run| matches!(run.outcome, Outcome::Published(_)))
    );
}
