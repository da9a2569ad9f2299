//! The seam between the layers (ARCHITECTURE.md §5), end to end below the HTTP layer: events
//! produced to a real broker, archived, recomputed into a batch version with boundary `W`; the
//! speed layer fed the same log; the batch rows merged with the speed snapshot above `W` equal the
//! algebra over every valid event: no event counted twice, none missed, whatever its event time.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use tributary_batch::archiver::{Archiver, ArchiverSettings};
use tributary_batch::recompute::progress::quiet;
use tributary_batch::recompute::slices::SliceTarget;
use tributary_batch::recompute::{BatchSettings, Outcome, RecomputeService};
use tributary_schemas::aggregate::MetricState;
use tributary_schemas::aggregate::arrow::read_state;
use tributary_schemas::config::{Config, ViewDef};
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::raw_rows::KafkaPosition;
use tributary_schemas::lake::{Lake, Manifest};
use tributary_schemas::shutdown::Shutdown;
use tributary_speed::aggregator::Aggregator;
use tributary_testkit::Broker;
use tributary_testkit::stream::{Expected, is_late, kafka_stamp, produce_mixed, produced_payloads};

const PARTITIONS: i32 = 3;
const EVENTS: u64 = 12_000;

type Rows = BTreeMap<(i64, Vec<String>), Vec<MetricState>>;

fn merge_into(rows: &mut Rows, key: (i64, Vec<String>), states: Vec<MetricState>) {
    match rows.get_mut(&key) {
        Some(mine) => mine
            .iter_mut()
            .zip(&states)
            .for_each(|(a, b)| a.merge(b).unwrap()),
        None => {
            rows.insert(key, states);
        }
    }
}

async fn batch_rows(store: &Lake, view: &ViewDef, manifest: &Manifest) -> Rows {
    let mut rows = Rows::new();
    for file in &manifest.files {
        for batch in store.read_parquet(&file.path, 8192).await.unwrap() {
            let batch = batch.unwrap();
            let times = batch
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            for row in 0..batch.num_rows() {
                let dims = (0..view.dimensions.len())
                    .map(|i| {
                        let column = batch.column(1 + i).as_string::<i32>();
                        if column.is_null(row) {
                            "Null".to_owned()
                        } else {
                            format!(
                                "{:?}",
                                tributary_schemas::event::Value::Str(column.value(row).into())
                            )
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
                merge_into(&mut rows, (times.value(row), dims), states);
            }
        }
    }
    rows
}

#[test]
fn batch_below_the_boundary_plus_speed_above_it_counts_every_event_once() {
    let config = Config::from_sources(None, []).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = rt.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let store = Lake::open(lake.path().to_str().unwrap()).unwrap();
    let mut expected = Expected::new();
    rt.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        EVENTS,
        &mut expected,
    ));

    // Archive everything, then recompute with an epoch size that leaves a tail to the speed layer.
    let archiver = Archiver::new(
        ArchiverSettings {
            brokers: broker.bootstrap_servers(),
            topic: topic.clone(),
            dlq_topic: None,
            max_file_rows: 1000,
            max_file_age: Duration::from_millis(200),
            events: config.events.clone(),
        },
        store.clone(),
    );
    let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    let stop = Shutdown::default();
    let handle = rt.handle().clone();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| archiver.run(&handle, &stop));
        while archiver.stats().progress() != target {
            assert!(!worker.is_finished(), "archiver stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.stop();
        worker.join().unwrap().unwrap();
    });
    let batch = RecomputeService::new(
        BatchSettings {
            topic: topic.clone(),
            epoch_size: 700,
            keep_versions: 2,
            memory_limit_bytes: 256 << 20,
            threads: 1,
            part_rows: 100_000,
            slice: SliceTarget::DEFAULT,
            lock_lease: Duration::from_secs(30),
            full_every: Duration::from_secs(86_400),
            raw_file_rows: 500_000,
            raw_retention: None,
            max_deltas: 24,
            engine: tributary_schemas::config::BatchEngine::Local,
        },
        config.events.clone(),
        config.views.clone(),
        store.clone(),
    )
    .unwrap();
    let runs = rt.block_on(batch.run(None, quiet())).unwrap();

    // The speed layer reads the whole log (as after a restart at offset 0); its snapshot above W
    // is what a query pinned to this version merges.
    let mut aggregator = Aggregator::new(&config.events, &config.views, 700).unwrap();
    let log: Vec<(KafkaPosition, Vec<u8>)> = produced_payloads(&expected, PARTITIONS, 0)
        .into_iter()
        .map(|((partition, offset), payload, _)| {
            // The timestamp the producer gave it (a malformed one is skipped whatever it carries).
            let time = Decoder::new(config.events.clone()).decode(&payload).ok();
            let position = KafkaPosition {
                partition,
                offset,
                timestamp_ms: time.map(|event| kafka_stamp(event.time_ms)),
            };
            (position, payload)
        })
        .collect();
    for poll in log.chunks(250) {
        let borrowed: Vec<(KafkaPosition, &[u8])> =
            poll.iter().map(|(p, m)| (*p, m.as_slice())).collect();
        aggregator.apply(&borrowed).unwrap();
    }

    let decoder = Decoder::new(config.events.clone());
    for ((run, view), speed) in runs.iter().zip(&config.views).zip(aggregator.views()) {
        let Outcome::Published(manifest) = &run.outcome else {
            panic!("{run:?}")
        };
        let below: u64 = manifest.boundary.0.values().map(|w| *w as u64).sum();
        assert!(
            below > 0 && below < EVENTS,
            "both layers must hold part of the log: W = {:?}",
            manifest.boundary
        );
        let mut merged = rt.block_on(batch_rows(&store, view, manifest));
        for row in speed.snapshot(&manifest.boundary).unwrap() {
            let key = (
                row.bucket_ms,
                row.dimensions.iter().map(|v| format!("{v:?}")).collect(),
            );
            merge_into(&mut merged, key, row.states);
        }
        let mut truth = Rows::new();
        for (_, payload) in &log {
            let Ok(event) = decoder.decode(payload) else {
                continue;
            };
            let key = (
                view.granularity.bucket_start(event.time_ms),
                view.dimensions
                    .iter()
                    .map(|d| format!("{:?}", event.values[d.index]))
                    .collect(),
            );
            let mut states: Vec<MetricState> = view
                .metrics
                .iter()
                .map(|m| MetricState::empty(m.state_kind()))
                .collect();
            let late = is_late(event.time_ms, Some(kafka_stamp(event.time_ms)));
            states
                .iter_mut()
                .zip(&view.metrics)
                .filter(|(_, m)| m.name != "late" || late)
                .for_each(|(s, m)| s.update(m.value(&event.values)));
            merge_into(&mut truth, key, states);
        }
        assert_eq!(merged.len(), truth.len(), "{}: rows", view.name);
        for (key, want) in &truth {
            for ((got, want), metric) in merged[key].iter().zip(want).zip(&view.metrics) {
                match (got, want) {
                    (MetricState::FloatSum(a), MetricState::FloatSum(b)) => {
                        assert!(
                            (a.finalize() - b.finalize()).abs()
                                <= 1e-9 * b.finalize().abs().max(1.0),
                            "{key:?} {}",
                            metric.name
                        );
                    }
                    (MetricState::Avg(a), MetricState::Avg(b)) => {
                        assert_eq!(a.count(), b.count(), "{key:?} {}", metric.name);
                        assert!((a.sum() - b.sum()).abs() <= 1e-9 * b.sum().abs().max(1.0));
                    }
                    _ => assert_eq!(got, want, "{key:?} {}", metric.name),
                }
            }
        }
    }
}
