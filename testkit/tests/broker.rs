//! Proves the harness gives tests a real Kafka-protocol broker: produce through rdkafka to explicit
//! partitions, then consume with assign + seek to an explicit offset, and read watermarks.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tributary_testkit::Broker;

const PARTITIONS: i32 = 3;
const PER_PARTITION: i64 = 40;

fn payload(partition: i32, n: i64) -> String {
    format!(r#"{{"ts":{n},"partition":{partition}}}"#)
}

async fn produce_all(broker: &Broker, topic: &str) {
    let producer: FutureProducer = broker.producer_config().create().expect("producer");
    for n in 0..PER_PARTITION {
        for partition in 0..PARTITIONS {
            let body = payload(partition, n);
            let record = FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(&body);
            let delivery = producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}\n{}", broker.log()));
            assert_eq!(delivery.partition, partition);
            assert_eq!(
                delivery.offset, n,
                "offsets are dense from zero in a new topic"
            );
        }
    }
}

/// Reads `count` messages of `partition` starting at `offset`, via assign then seek.
fn read_from(
    broker: &Broker,
    topic: &str,
    partition: i32,
    offset: i64,
    count: usize,
) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).expect("assign");
    // Seek needs the partition to be fetching: poll once, then move to the explicit offset.
    let _ = consumer.poll(Duration::from_millis(200));
    let mut seek = TopicPartitionList::new();
    seek.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    let mut sought = false;
    for _ in 0..50 {
        if consumer
            .seek_partitions(seek.clone(), Duration::from_secs(2))
            .is_ok()
        {
            sought = true;
            break;
        }
        let _ = consumer.poll(Duration::from_millis(100));
    }
    assert!(sought, "seek never succeeded");
    let mut messages: Vec<(i64, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while messages.len() < count && std::time::Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(200)) {
            let message = result.expect("consume");
            let body = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            messages.push((message.offset(), body));
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_then_consume_with_assign_and_seek() {
    let broker = Broker::shared();
    let topic = broker.create_topic(PARTITIONS).await.expect("topic");
    produce_all(broker, &topic).await;

    let consumer: BaseConsumer = broker.client_config().create().unwrap();
    for partition in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .expect("watermarks");
        assert_eq!((low, high), (0, PER_PARTITION), "partition {partition}");
    }

    let start = 25;
    let messages = read_from(broker, &topic, 1, start, (PER_PARTITION - start) as usize);
    let expected: Vec<(i64, String)> = (start..PER_PARTITION).map(|n| (n, payload(1, n))).collect();
    assert_eq!(
        messages, expected,
        "seek must land on the explicit offset, in order, nothing skipped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_test_gets_its_own_topic() {
    let broker = Broker::shared();
    let first = broker.create_topic(1).await.unwrap();
    let second = broker.create_topic(1).await.unwrap();
    assert_ne!(first, second);
    let consumer: BaseConsumer = broker.client_config().create().unwrap();
    let (_, high) = consumer
        .fetch_watermarks(&second, 0, Duration::from_secs(5))
        .unwrap();
    assert_eq!(high, 0, "a fresh topic is empty");
}

#[test]
fn a_private_broker_stops_when_dropped() {
    let broker = Broker::start().expect("broker");
    let address = broker.bootstrap_servers();
    drop(broker);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "broker still listening on {address}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
