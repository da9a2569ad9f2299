//! Speed-layer throughput without the broker: decode + filter + aggregate, a poll of 500 messages
//! at a time, from an in-memory message source. Two cases: the default view (`pageviews`, the
//! first view of the default configuration, as the recompute bench measures) and both default
//! views (`pageviews` and `traffic`, what `tributary serve` runs out of the box).
//!
//! Data: 200 000 clickstream events of the default configuration (~200 bytes of JSON each, 1%
//! malformed). Target (issue 4): >= 1M events/s on one core for the default view. Criterion runs
//! on one thread.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tributary_schemas::config::Config;
use tributary_schemas::event::raw_rows::KafkaPosition;
use tributary_speed::aggregator::Aggregator;
use tributary_testkit::stream::clickstream;

const EVENTS: usize = 200_000;
const POLL: usize = 500;

fn aggregate(c: &mut Criterion) {
    let config = Config::from_sources(None, []).expect("default config");
    let messages: Vec<(KafkaPosition, Vec<u8>)> = (0..EVENTS)
        .map(|n| {
            let position = KafkaPosition {
                partition: (n % 3) as i32,
                offset: (n / 3) as i64,
                timestamp_ms: Some(1),
            };
            (position, clickstream(n))
        })
        .collect();
    let mut group = c.benchmark_group("speed");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    for (case, views) in [
        ("default view (pageviews)", &config.views[..1]),
        ("both default views", &config.views[..]),
    ] {
        group.bench_function(format!("decode+aggregate {EVENTS} events, {case}"), |b| {
            b.iter(|| {
                let mut aggregator =
                    Aggregator::new(&config.events, views, 100_000).expect("aggregator");
                for poll in messages.chunks(POLL) {
                    let borrowed: Vec<(KafkaPosition, &[u8])> =
                        poll.iter().map(|(p, m)| (*p, m.as_slice())).collect();
                    black_box(aggregator.apply(&borrowed).expect("apply"));
                }
                black_box(aggregator.views()[0].epochs().len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
