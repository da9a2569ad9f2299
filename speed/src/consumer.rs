//! The speed layer's Kafka consumer: assigns every partition (no consumer group rebalancing),
//! seeks each to the live batch version's boundary `W[p]`, and feeds the [`Aggregator`] a poll's
//! worth of messages at a time (ARCHITECTURE.md §5).
//!
//! Its state derives only from (boundary, Kafka log), so it needs no checkpoint: after a restart it
//! seeks to the boundary again. When a new batch version goes live, [`SpeedLayer::advance`] drops
//! the epochs it covers. A boundary of an older generation of the topic's offsets (see
//! `tributary_schemas::lake::generations`) says nothing about the current log, which is then read
//! from its start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tributary_schemas::event::batch::KafkaPosition;
use tributary_schemas::lake::Boundary;

use crate::aggregator::{Aggregator, ViewStates};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("Kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error("topic {topic} does not exist or has no partitions")]
    TopicMissing { topic: String },
    #[error("cannot evaluate a view filter")]
    Filter(#[from] datafusion::error::DataFusionError),
}

#[derive(Debug, Clone)]
pub struct SpeedSettings {
    pub brokers: String,
    pub topic: String,
    /// Most messages per aggregation step.
    pub poll_batch: usize,
    /// Longest wait to fill a step before aggregating what arrived.
    pub poll_wait: Duration,
}

/// Per partition: where consumption started, how far it got, and the broker's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLag {
    pub start: i64,
    pub next: i64,
    pub high_watermark: i64,
}

/// The running speed layer: the aggregator behind a lock that queries read and the consumer
/// writes once per poll step.
#[derive(Debug)]
pub struct SpeedLayer {
    settings: SpeedSettings,
    states: Arc<RwLock<Aggregator>>,
    boundary: RwLock<Boundary>,
    lag: RwLock<BTreeMap<i32, PartitionLag>>,
    /// Per partition, the broker's end offset when consumption (re)started: caught up past it, the
    /// speed layer is ready.
    start_heads: RwLock<BTreeMap<i32, i64>>,
    /// Bumped by [`SpeedLayer::restart_at`]; a poll read before a restart is discarded.
    restarts: AtomicU64,
    /// Offsets deleted by retention before the speed layer read them (and not in the batch view).
    pub lost_offsets: AtomicU64,
}

impl SpeedLayer {
    /// `boundary` is the live version's, or empty when there is none (or it belongs to an older
    /// generation of the topic's offsets).
    pub fn new(settings: SpeedSettings, aggregator: Aggregator, boundary: Boundary) -> Self {
        Self {
            settings,
            states: Arc::new(RwLock::new(aggregator)),
            boundary: RwLock::new(boundary),
            lag: RwLock::default(),
            start_heads: RwLock::default(),
            restarts: AtomicU64::new(0),
            lost_offsets: AtomicU64::new(0),
        }
    }

    /// The boundary the consumer seeks to: what the speed layer's states start at.
    pub fn boundary(&self) -> Boundary {
        self.boundary.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Whether every partition has been read up to the end it had when consumption (re)started.
    pub fn caught_up(&self) -> bool {
        let heads = self.start_heads.read().unwrap_or_else(|e| e.into_inner());
        let lag = self.lag.read().unwrap_or_else(|e| e.into_inner());
        !heads.is_empty()
            && heads
                .iter()
                .all(|(p, &head)| lag.get(p).is_some_and(|l| l.next >= head))
    }

    /// How many times the states were forgotten ([`Self::restart_at`]): sealed epochs read after
    /// a restart may belong to another log (a new offset generation), so caches key on this.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Forgets every state and re-reads the log from `boundary`: for a live version whose boundary
    /// is *lower* than what the states start at (a rollback, a definition change, a new offset
    /// generation), since dropped epochs cannot come back otherwise.
    pub fn restart_at(&self, boundary: Boundary) {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        for view in states.views_mut() {
            view.clear();
        }
        states.next_offsets.clear();
        *self.boundary.write().unwrap_or_else(|e| e.into_inner()) = boundary;
        self.start_heads
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops one view's epochs below `boundary` (its new live version covers them); the consumer's
    /// position is unchanged.
    pub fn drop_below(&self, view: usize, boundary: &Boundary) {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        if let Some(view) = states.views_mut().get_mut(view) {
            view.drop_below(boundary);
        }
    }

    /// Reads the states (a query's snapshot is taken under this read lock).
    pub fn with_views<T>(&self, f: impl FnOnce(&[ViewStates]) -> T) -> T {
        let states = self.states.read().unwrap_or_else(|e| e.into_inner());
        f(states.views())
    }

    /// Reads the aggregator (its states and offsets agree: a poll step applies under one write lock).
    pub fn read<T>(&self, f: impl FnOnce(&Aggregator) -> T) -> T {
        let states = self.states.read().unwrap_or_else(|e| e.into_inner());
        f(&states)
    }

    /// Per partition, the next offset to aggregate.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        let states = self.states.read().unwrap_or_else(|e| e.into_inner());
        states.next_offsets.clone()
    }

    pub fn lag(&self) -> BTreeMap<i32, PartitionLag> {
        self.lag.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// A new batch version with `boundary` is live and no query uses an older one: drop the epochs
    /// it covers.
    pub fn advance(&self, boundary: Boundary) {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        for view in states.views_mut() {
            view.drop_below(&boundary);
        }
        *self.boundary.write().unwrap_or_else(|e| e.into_inner()) = boundary;
    }

    /// Consumes until `stop` is set. Blocking: run it on a thread of its own.
    pub fn run(&self, stop: &AtomicBool) -> Result<(), SpeedError> {
        let topic = &self.settings.topic;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.brokers)
            .set("group.id", format!("tributary-speed-{topic}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            // Freshness: a broker that answers a fetch only when this wait ends (tansu does) would
            // otherwise hold new events back for librdkafka's default 500 ms.
            .set("fetch.wait.max.ms", "20")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(SpeedError::TopicMissing {
                topic: topic.clone(),
            });
        }
        let mut restarts = self.restarts.load(Ordering::SeqCst);
        self.assign(&consumer, &partitions)?;
        let mut last_watermarks = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if self.restarts.load(Ordering::SeqCst) != restarts {
                restarts = self.restarts.load(Ordering::SeqCst);
                self.assign(&consumer, &partitions)?;
            }
            let deadline = Instant::now() + self.settings.poll_wait;
            let mut messages = Vec::with_capacity(self.settings.poll_batch);
            while messages.len() < self.settings.poll_batch {
                let wait = deadline.saturating_duration_since(Instant::now());
                match consumer.poll(wait) {
                    Some(Ok(message)) => messages.push(message),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "Kafka consumer error (librdkafka retries)");
                    }
                    None => break,
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            if !messages.is_empty() {
                let batch: Vec<(KafkaPosition, &[u8])> = messages
                    .iter()
                    .map(|m| {
                        let position = KafkaPosition {
                            partition: m.partition(),
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis(),
                        };
                        (position, m.payload().unwrap_or_default())
                    })
                    .collect();
                let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
                if self.restarts.load(Ordering::SeqCst) != restarts {
                    continue; // read from before a restart: the next step re-seeks
                }
                states.apply(&batch)?;
                let next = states.next_offsets.clone();
                drop(states);
                let mut lag = self.lag.write().unwrap_or_else(|e| e.into_inner());
                for (partition, next) in next {
                    lag.entry(partition).or_default().next = next;
                }
            }
            if last_watermarks.elapsed() >= Duration::from_secs(1) {
                last_watermarks = Instant::now();
                for &partition in &partitions {
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(topic, partition, Duration::from_secs(1))
                    {
                        let mut lag = self.lag.write().unwrap_or_else(|e| e.into_inner());
                        lag.entry(partition).or_default().high_watermark = high;
                    }
                }
            }
        }
        Ok(())
    }

    /// Assigns every partition at the boundary (or the low watermark where retention deleted
    /// offsets above it, counting them as lost).
    fn assign(&self, consumer: &BaseConsumer, partitions: &[i32]) -> Result<(), SpeedError> {
        let topic = &self.settings.topic;
        let boundary = self.boundary();
        let mut assignment = TopicPartitionList::new();
        let mut lag = BTreeMap::new();
        for &partition in partitions {
            let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
            let w = boundary.get(partition);
            let start = if w < low {
                let lost = low - w;
                self.lost_offsets.fetch_add(lost as u64, Ordering::Relaxed);
                tracing::error!(
                    partition,
                    from = w,
                    to = low - 1,
                    "offsets above the batch boundary were deleted by retention before the speed layer read them"
                );
                low
            } else {
                w
            };
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
            lag.insert(
                partition,
                PartitionLag {
                    start,
                    next: start,
                    high_watermark: high,
                },
            );
        }
        consumer.assign(&assignment)?;
        *self.start_heads.write().unwrap_or_else(|e| e.into_inner()) =
            lag.iter().map(|(&p, l)| (p, l.high_watermark)).collect();
        *self.lag.write().unwrap_or_else(|e| e.into_inner()) = lag;
        tracing::info!(topic, boundary = ?boundary.0, "speed layer reading from the batch boundary");
        Ok(())
    }
}
