//! The Kafka plumbing the archiver and the speed layer share. Both read where the lake says, not
//! where a consumer group was: every partition assigned (no group rebalancing), positions chosen
//! by the caller, no commits, and never an automatic offset reset (librdkafka must not silently
//! jump to another offset). The group id names the reader for monitoring only.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// How long a metadata or watermark request may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("Kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error("topic {topic} does not exist or has no partitions")]
    Missing { topic: String },
}

/// The configuration of a consumer positioned by the lake: `role` names it in the group id
/// (`tributary-<role>-<topic>`), which nothing commits to. Callers add their own settings.
pub fn positioned_consumer(brokers: &str, role: &str, topic: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("tributary-{role}-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    config
}

/// The topic's partitions, or [`TopicError::Missing`] when it has none.
pub fn topic_partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, TopicError> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let partitions: Vec<i32> = (metadata.topics().iter())
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TopicError::Missing {
            topic: topic.to_owned(),
        });
    }
    Ok(partitions)
}

/// The partition's `(low, high)` watermarks: its first offset still held, and its end.
pub fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)
}

/// Assigns each partition at its start offset.
pub fn assign_at(
    consumer: &BaseConsumer,
    topic: &str,
    starts: &BTreeMap<i32, i64>,
) -> Result<(), KafkaError> {
    let mut assignment = TopicPartitionList::new();
    for (&partition, &start) in starts {
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    }
    consumer.assign(&assignment)
}
