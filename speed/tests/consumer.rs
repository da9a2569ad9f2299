//! The speed layer against a real broker (tansu): from a boundary mid-log it aggregates exactly
//! the events above it, keeps up with new ones, and drops what a newer version covers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tributary_schemas::aggregate::MetricState;
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_schemas::lake::Boundary;
use tributary_schemas::shutdown::Shutdown;
use tributary_speed::aggregator::Aggregator;
use tributary_speed::consumer::{SpeedLayer, SpeedSettings};
use tributary_speed::health::HealthSettings;
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
        for row in views[0].snapshot(boundary).unwrap() {
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

fn speed_layer(
    config: &Config,
    broker: &Broker,
    topic: &str,
    boundary: Boundary,
    health: HealthSettings,
) -> SpeedLayer {
    SpeedLayer::new(
        SpeedSettings {
            brokers: broker.bootstrap_servers(),
            topic: topic.to_owned(),
            poll_batch: 500,
            poll_wait: Duration::from_millis(20),
            health,
            partitions: None,
            drop_after: Duration::ZERO,
        },
        Aggregator::new(&config.events, &config.views, 500).unwrap(),
        boundary,
    )
}

/// Waits until the speed layer has aggregated everything the broker holds.
fn caught_up(layer: &SpeedLayer, broker: &Broker, topic: &str) {
    let target = broker.high_watermarks(topic, PARTITIONS).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while layer.next_offsets() != target {
        assert!(
            Instant::now() < deadline,
            "speed layer stuck at {:?} of {target:?}",
            layer.next_offsets()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let health = HealthSettings {
        ready_max_lag: config.serving.ready_max_lag,
        stall_after: config.serving.stall_after,
    };
    let layer = speed_layer(&config, broker, &topic, boundary.clone(), health);
    let stop = Shutdown::default();
    let caught_up = |layer: &SpeedLayer| caught_up(layer, broker, &topic);
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| layer.run(&stop));
        caught_up(&layer);
        assert_eq!(
            speed_views(&layer, &boundary),
            expected_views(&expected, &config, &boundary)
        );
        let partitions = layer.partitions();
        assert_eq!(partitions[&0].start, 1000);
        assert_eq!(partitions[&2].start, 0);

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
        for view in 0..config.views.len() {
            layer.drop_below(view, &newer);
        }
        assert_eq!(
            speed_views(&layer, &Boundary::default()),
            expected_views(&expected, &config, &newer)
        );

        stop.stop();
        worker.join().unwrap().unwrap();
    });
}

/// A broker that stops answering (frozen with SIGSTOP: connections open, requests unanswered)
/// leaves the speed layer stalled: not ready, counted by the watchdog, which recreates the
/// consumer; once the broker answers again the layer catches up and counts every event once.
#[test]
fn a_hung_broker_is_a_stall_that_the_watchdog_recovers_from() {
    let config = Config::from_sources(None, []).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A broker of its own: pausing the shared one would stall the other tests.
    let broker = Broker::start().unwrap_or_else(|error| panic!("{error}"));
    let topic = rt.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut expected = Expected::new();
    rt.block_on(produce_mixed(
        &broker,
        &topic,
        PARTITIONS,
        0,
        3000,
        &mut expected,
    ));
    let health = HealthSettings {
        ready_max_lag: 0,
        stall_after: Duration::from_secs(2),
    };
    let layer = speed_layer(&config, &broker, &topic, Boundary::default(), health);
    let stop = Shutdown::default();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| layer.run(&stop));
        caught_up(&layer, &broker, &topic);
        wait_for("ready", Duration::from_secs(10), || layer.ready());
        assert_eq!(layer.stalls(), 0);

        broker.pause();
        wait_for("a stall", Duration::from_secs(30), || {
            !layer.ready() && layer.stalls() >= 1
        });
        assert!(
            layer.partitions().values().all(|p| p.stalled),
            "with the broker's end unknown every partition is stalled: {:?}",
            layer.partitions()
        );
        broker.resume();

        rt.block_on(produce_mixed(
            &broker,
            &topic,
            PARTITIONS,
            3000,
            3000,
            &mut expected,
        ));
        caught_up(&layer, &broker, &topic);
        wait_for("ready again", Duration::from_secs(60), || layer.ready());
        assert!(
            layer
                .partitions()
                .values()
                .all(|p| !p.stalled && p.lag() == 0)
        );
        let all = Boundary::default();
        assert_eq!(
            speed_views(&layer, &all),
            expected_views(&expected, &config, &all)
        );
        stop.stop();
        worker.join().unwrap().unwrap();
    });
}
