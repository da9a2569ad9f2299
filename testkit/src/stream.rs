//! A reproducible event stream for tests: valid clickstream events (matching the default
//! configuration) with about 1% malformed ones of several kinds, produced to explicit partitions so
//! that the test knows where each one landed.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::Broker;

/// Per (partition, offset), what a correct consumer must conclude: `None` for a valid event, else
/// the decoder's error code.
pub type Expected = BTreeMap<(i32, i64), Option<String>>;

/// The event time of [`mixed_event`] `n` (when valid).
pub fn mixed_time(n: u64) -> i64 {
    1_795_000_000_000 + n as i64 * 37
}

/// Event number `n`: its payload and, if malformed, the decoder's error code for it.
pub fn mixed_event(n: u64) -> (Vec<u8>, Option<&'static str>) {
    let valid = format!(
        r#"{{"ts":{},"user_id":"u{}","page":"/p/{}","country":"NL","latency_ms":{}.5}}"#,
        mixed_time(n),
        n % 1000,
        n % 50,
        n % 300
    );
    match n % 100 {
        13 => (b"{\"ts\":1,".to_vec(), Some("not_json")),
        42 => (b"{\"user_id\":\"u\"}".to_vec(), Some("missing_time")),
        77 if n % 200 == 77 => (
            b"{\"ts\":1,\"latency_ms\":\"slow\"}".to_vec(),
            Some("wrong_type"),
        ),
        77 => (vec![b'{', 0xff, b'}'], Some("invalid_utf8")),
        _ => (valid.into_bytes(), None),
    }
}

/// The Kafka timestamp the tests' producers give an event of time `time_ms`: 0 to 90 s after it, by
/// `time_ms mod 7` (late past the default `late_after` of 60 s: 5 and 6), so every stream holds
/// on-time and late events in every bucket and any truth can tell which from the event alone.
pub fn kafka_stamp(time_ms: i64) -> i64 {
    time_ms + time_ms.rem_euclid(7) * 15_000
}

/// Whether an event of time `time_ms` stamped by Kafka at `kafka_ts_ms` is late under the default
/// `late_after` (60 s), written out here rather than asked of the code under test.
pub fn is_late(time_ms: i64, kafka_ts_ms: Option<i64>) -> bool {
    kafka_ts_ms.is_some_and(|kafka| kafka - time_ms > 60_000)
}

/// Produces events `from..from + count` round-robin over `partitions` (acks=all, idempotent) and
/// records where each landed in `expected`. Each is stamped [`kafka_stamp`] of its time.
pub async fn produce_mixed(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    from: u64,
    count: u64,
    expected: &mut Expected,
) {
    let producer: FutureProducer = broker.producer_config().create().expect("producer");
    let mut pending = Vec::new();
    for n in from..from + count {
        let (payload, code) = mixed_event(n);
        let partition = (n % partitions as u64) as i32;
        let producer = producer.clone();
        let topic = topic.to_owned();
        pending.push(async move {
            let record = FutureRecord::<(), _>::to(&topic)
                .partition(partition)
                .timestamp(kafka_stamp(mixed_time(n)))
                .payload(&payload);
            let delivery = producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap_or_else(|(error, _)| panic!("delivery failed: {error}"));
            (
                (delivery.partition, delivery.offset),
                code.map(str::to_owned),
            )
        });
        if pending.len() == 2000 {
            expected.extend(futures::future::join_all(pending.drain(..)).await);
        }
    }
    expected.extend(futures::future::join_all(pending).await);
}

/// One produced message: `(partition, offset)`, its payload, and its error code if malformed.
pub type Produced = ((i32, i64), Vec<u8>, Option<&'static str>);

/// What [`produce_mixed`] wrote at each `(partition, offset)` of `expected`: the payload and, if
/// malformed, its error code, in (partition, offset) order. `from` is the `from` it was called with.
/// The producer is idempotent and sends event `n` to partition `n % partitions` in order, so the
/// k-th offset of a partition holds event `from + k * partitions + partition`.
pub fn produced_payloads(expected: &Expected, partitions: i32, from: u64) -> Vec<Produced> {
    let mut seen: BTreeMap<i32, u64> = BTreeMap::new();
    expected
        .keys()
        .map(|&(partition, offset)| {
            let k = seen.entry(partition).or_default();
            let n = from + *k * partitions as u64 + partition as u64;
            *k += 1;
            let (payload, code) = mixed_event(n);
            ((partition, offset), payload, code)
        })
        .collect()
}

/// Clickstream message `n` for benchmarks: a default-configuration event (~200 bytes of JSON, all
/// eight fields, RFC 3339 time), 1% malformed (no time).
pub fn clickstream(n: usize) -> Vec<u8> {
    if n % 100 == 42 {
        return br#"{"user_id":"u1","page":"/missing-time"}"#.to_vec();
    }
    let pages = [
        "/",
        "/pricing",
        "/docs/start",
        "/blog/lambda",
        "/signup",
        "/docs/api",
    ];
    let countries = ["NL", "US", "DE", "IN", "BR", "JP"];
    let devices = ["mobile", "desktop", "tablet"];
    format!(
        r#"{{"ts":"2026-11-21T10:{:02}:{:02}.{:03}Z","user_id":"user-{}","session_id":"s-{}","page":"{}","referrer":"https://search.example/q?{}","country":"{}","device":"{}","latency_ms":{}.{},"bytes":{}}}"#,
        (n / 60_000) % 60,
        (n / 1000) % 60,
        n % 1000,
        n % 50_000,
        n / 7,
        pages[n % pages.len()],
        n % 97,
        countries[n % countries.len()],
        devices[n % devices.len()],
        20 + n % 400,
        n % 10,
        500 + n * 13 % 90_000
    )
    .into_bytes()
}
