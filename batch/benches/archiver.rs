//! Archiver throughput without the broker: decode + append to the raw batch + Parquet encode (zstd),
//! i.e. everything the archiver does per event except the Kafka fetch and the object-store put.
//!
//! Data: 200 000 clickstream events matching the default configuration (8 fields, ~190 bytes of
//! JSON each, 1% malformed), one partition, files rolled every 100 000 events. Target (issue 3):
//! >= 300k events/s on one core. Criterion runs on one thread, so events/s is per core.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tributary_batch::archiver::partition::PartitionBuffer;
use tributary_batch::parquet_io;
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::raw_rows::KafkaPosition;
use tributary_testkit::stream::clickstream;

const EVENTS: usize = 200_000;
const FILE_ROWS: usize = 100_000;

fn archive(c: &mut Criterion) {
    let config = Config::from_sources(None, []).expect("default config");
    let decoder = Decoder::new(config.events.clone());
    let messages: Vec<Vec<u8>> = (0..EVENTS).map(clickstream).collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("archiver");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function(
        format!(
            "decode+parquet {EVENTS} events ({} MB JSON)",
            bytes / 1_000_000
        ),
        |b| {
            b.iter(|| {
                let mut buffer = PartitionBuffer::new(0, 0, &config.events);
                let mut written = 0;
                for (offset, message) in messages.iter().enumerate() {
                    let position = KafkaPosition {
                        partition: 0,
                        offset: offset as i64,
                        timestamp_ms: Some(1),
                    };
                    // Malformed ones go to the quarantine buffer, as in the archiver.
                    let _ = buffer.push(&decoder, position, Some(message));
                    if buffer.rows() >= FILE_ROWS {
                        let file = buffer.take().unwrap().unwrap();
                        written += parquet_io::encode(std::slice::from_ref(&file.raw))
                            .unwrap()
                            .len();
                    }
                }
                black_box(written)
            });
        },
    );
    group.finish();
}

criterion_group!(benches, archive);
criterion_main!(benches);
