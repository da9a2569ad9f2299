//! Catch-up benchmark (issue 24): how fast the speed layer reads a backlog through a real broker
//! (tansu), side by side in one run with the archiver and with a bare librdkafka consumer on the
//! same backlog.
//!
//! One topic of 3 partitions gets `CATCHUP_EVENTS` clickstream events (default 1,000,000) before
//! anything reads it. Then, one after the other (on two cores, side by side they would measure each
//! other):
//!
//! - **bare consumer**: an rdkafka `BaseConsumer` assigned to all partitions from offset 0 that only
//!   counts messages: the broker's consume rate, the ceiling for both layers;
//! - **archiver**: the real archiver writing raw Parquet to a local lake, timed until every offset
//!   is archived;
//! - **speed layer**: the real speed layer (the consumer, its watermark watcher, decode and
//!   aggregation into every configured view), timed until it is ready and has aggregated every
//!   offset.
//!
//! `cargo bench --bench catch_up`; `CATCHUP_EVENTS` sets the backlog.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tributary_batch::archiver::{Archiver, ArchiverSettings};
use tributary_schemas::config::Config;
use tributary_schemas::shutdown::Shutdown;
use tributary_speed::aggregator::Aggregator;
use tributary_speed::consumer::{SpeedLayer, SpeedSettings};
use tributary_testkit::Broker;
use tributary_testkit::stream::clickstream;

const PARTITIONS: i32 = 3;
/// Each reader must finish within this, or the bench reports it as stalled and stops.
const DEADLINE: Duration = Duration::from_secs(600);

fn main() {
    let events: u64 = std::env::var("CATCHUP_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::start().expect("tansu (see the README's set-up)");
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();

    let produced_in = produce(&broker, &topic, events);
    println!(
        "backlog: {events} events in {PARTITIONS} partitions, produced in {produced_in:.1?} ({:.0} events/s)",
        rate(events, produced_in)
    );

    let bare = bare_consumer(&broker, &topic, events);
    println!(
        "bare consumer: {bare:.1?} ({:.0} events/s)",
        rate(events, bare)
    );

    let mut config = Config::from_sources(None, []).unwrap();
    config.kafka.brokers = broker.bootstrap_servers();
    config.kafka.topic.clone_from(&topic);
    config.kafka.dlq_topic = None;
    // A raw file rolls after 1 s instead of 2 min, so the archiver's last file does not wait out
    // the age limit: its time is the time to read and write, not a timer.
    config.archiver.max_file_age = Duration::from_secs(1);

    let archiver = archiver(&config, &runtime, events);
    println!(
        "archiver:      {archiver:.1?} ({:.0} events/s)",
        rate(events, archiver)
    );

    let speed = speed_layer(&config, events);
    println!(
        "speed layer:   {speed:.1?} ({:.0} events/s)",
        rate(events, speed)
    );
}

fn rate(events: u64, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64()
}

/// Produces the backlog round-robin over the partitions and waits for every acknowledgement.
fn produce(broker: &Broker, topic: &str, events: u64) -> Duration {
    let producer: BaseProducer = broker
        .producer_config()
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .unwrap();
    let started = Instant::now();
    for n in 0..events {
        let payload = clickstream(n as usize);
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .partition((n % PARTITIONS as u64) as i32)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, unsent)) => {
                    record = unsent;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        if n % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    started.elapsed()
}

/// Reads every message with librdkafka's defaults and counts them.
fn bare_consumer(broker: &Broker, topic: &str, events: u64) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "catch-up-bench")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    let mut read = 0u64;
    while read < events {
        assert!(
            started.elapsed() < DEADLINE,
            "bare consumer stalled at {read}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.unwrap();
            read += 1;
        }
    }
    started.elapsed()
}

fn archiver(config: &Config, runtime: &tokio::runtime::Runtime, events: u64) -> Duration {
    let lake = tempfile::tempdir().unwrap();
    let store = tributary_schemas::lake::Lake::open(lake.path().to_str().unwrap()).unwrap();
    let archiver = Archiver::new(ArchiverSettings::from_config(config), store);
    let stats = archiver.stats();
    let stop = Shutdown::default();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| archiver.run(runtime.handle(), &stop));
        let took = loop {
            let done =
                stats.archived.load(Ordering::Relaxed) + stats.quarantined.load(Ordering::Relaxed);
            if done >= events {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < DEADLINE && !worker.is_finished(),
                "archiver stalled at {done}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        stop.stop();
        worker.join().unwrap().unwrap();
        took
    })
}

fn speed_layer(config: &Config, events: u64) -> Duration {
    let aggregator =
        Aggregator::new(&config.events, &config.views, config.batch.epoch_size).unwrap();
    let settings = SpeedSettings::from_config(config);
    let speed = Arc::new(SpeedLayer::new(settings, aggregator, Default::default()));
    let stop = Shutdown::default();
    let started = Instant::now();
    let worker = {
        let (speed, stop) = (Arc::clone(&speed), stop.clone());
        std::thread::spawn(move || speed.run(&stop))
    };
    let took = loop {
        let read: i64 = speed.next_offsets().values().sum();
        if read as u64 >= events && speed.complete() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < DEADLINE && !worker.is_finished(),
            "speed layer stalled at {read} ({} stalls)",
            speed.stalls()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    stop.stop();
    worker.join().unwrap().unwrap();
    took
}
