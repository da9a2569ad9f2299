//! The speed layer against a real broker (tansu): from a boundary mid-log it aggregates exactly
//! the events above it, keeps up with new ones, and drops what a newer version covers.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tributary_schemas::aggregate::MetricState;
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_schemas::lake::Boundary;
use tributary_speed::aggregator::Aggregator;
use tributary_speed::consumer::{SpeedLayer, SpeedSettings};
use tributary_testkit::Broker;
use tributary_testkit::stream::{Expected, produce_mixed, produced_payloads};

const PARTITIONS: i32 = 3;

/// Count of events per (bucket, page) of `pageviews` among offsets at or above `boundary`.
fn expected_views(
    expected: &Expected,
    config: &Config,
    boundary: &Boundary,
) -> BTreeMap<(i64, String), i64> {
    let decoder = Decoder::new(config.events.clone());
    let view = config.view("pageviews").unwrap();
    let page = config.events.field_index("page").unwrap();
    let mut counts = BTreeMap::new();
    for ((partition, offset), payload, _) in produced_payloads(expected, PARTITIONS, 0) {
        if boundary.covers(partition, offset) {
            continue;
        }
        if let Ok(event) = decoder.decode(&payload) {
            let key = (
                view.granularity.bucket_start(event.time_ms),
                format!("{:?}", event.values[page]),
            );
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}

fn speed_views(layer: &SpeedLayer, boundary: &Boundary) -> BTreeMap<(i64, String), i64> {
    layer.with_views(|views| {
        let mut counts = BTreeMap::new();
        for row in views[0].snapshot(boundary) {
            let MetricState::Count(count) = &row.states[0] else {
                panic!("views is a count")
            };
            *counts
                .entry((row.bucket_ms, format!("{:?}", row.dimensions[0])))
                .or_default() += count.0;
        }
        counts
    })
}

#[test]
fn the_speed_layer_counts_exactly_the_events_above_the_boundary() {
    let config = Config::from_sources(None, []).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = rt.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut expected = Expected::new();
    rt.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        6000,
        &mut expected,
    ));

    let boundary = Boundary([(0, 1000), (1, 1500)].into());
    let layer = SpeedLayer::new(
        SpeedSettings {
            brokers: broker.bootstrap_servers(),
            topic: topic.clone(),
            poll_batch: 500,
            poll_wait: Duration::from_millis(20),
        },
        Aggregator::new(&config.events, &config.views, 500).unwrap(),
        boundary.clone(),
    );
    let stop = AtomicBool::new(false);
    let caught_up = |layer: &SpeedLayer| {
        let target = broker.high_watermarks(&topic, PARTITIONS).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while layer.next_offsets() != target {
            assert!(
                Instant::now() < deadline,
                "speed layer stuck at {:?} of {target:?}",
                layer.next_offsets()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| layer.run(&stop));
        caught_up(&layer);
        assert_eq!(
            speed_views(&layer, &boundary),
            expected_views(&expected, &config, &boundary)
        );
        let lag = layer.lag();
        assert_eq!(lag[&0].start, 1000);
        assert_eq!(lag[&2].start, 0);

        // New events arrive while it runs.
        rt.block_on(produce_mixed(
            broker,
            &topic,
            PARTITIONS,
            6000,
            3000,
            &mut expected,
        ));
        caught_up(&layer);
        assert_eq!(
            speed_views(&layer, &boundary),
            expected_views(&expected, &config, &boundary)
        );

        // A newer version covers more: its epochs are dropped and the rest still adds up.
        let newer = Boundary([(0, 2000), (1, 2000), (2, 1500)].into());
        layer.advance(newer.clone());
        assert_eq!(
            speed_views(&layer, &Boundary::default()),
            expected_views(&expected, &config, &newer)
        );

        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        worker.join().unwrap().unwrap();
    });
}
