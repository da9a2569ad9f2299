//! The speed layer's Kafka consumer: assigns every partition (no consumer group rebalancing),
//! seeks each to the live batch version's boundary `W[p]`, and feeds the [`Aggregator`] a poll's
//! worth of messages at a time (ARCHITECTURE.md §5).
//!
//! Its state derives only from (boundary, Kafka log), so it needs no checkpoint: after a restart it
//! seeks to the boundary again. When a new batch version of a view goes live,
//! [`SpeedLayer::drop_below`] drops the epochs it covers (the one way epochs are dropped; a lower
//! boundary instead makes [`SpeedLayer::restart_at`] forget them all). A boundary of an older generation of the topic's offsets (see
//! `tributary_schemas::lake::generations`) says nothing about the current log, which is then read
//! from its start.
//!
//! # Two Kafka clients
//!
//! The consumer's own client only fetches. The broker's end of every partition (the lag that
//! `/readyz` and `meta.complete` report, see [`crate::health`]) is asked for every second by a
//! watcher thread on a client of its own. On the consumer's client those `ListOffsets` requests
//! would queue behind an in-flight `Fetch` (a Kafka connection answers in order); tansu takes
//! longer than the request's timeout to answer a fetch over a large backlog, librdkafka then
//! closes the connection (`socket.max.fails = 1`), the fetch dies with it, and the consumer never
//! reads past the backlog: the stall of issue 24, fixed by this separation.
//!
//! # Watchdog
//!
//! A partition that is behind and makes no progress for `stall_after` (or whose end the watcher
//! cannot learn) is logged with its position and the broker's end, and the consumer is recreated
//! at the offsets already aggregated: the states are untouched, since they derive from the
//! boundary and the log alone, and the new client reads on from where the old one stopped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tributary_schemas::blame::chain;
use tributary_schemas::config::Config;
use tributary_schemas::event::raw_rows::KafkaPosition;
use tributary_schemas::kafka::{
    TopicError, assign_at, positioned_consumer, topic_partitions, watermarks,
};
use tributary_schemas::lake::Boundary;
use tributary_schemas::shutdown::Shutdown;

use crate::aggregator::{Aggregator, ViewStates};
use crate::health::{Health, HealthSettings, PartitionHealth};

/// How often the watcher asks the broker for every partition's end.
const WATERMARK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one of those requests may take: on its own connection it waits behind nothing, so
/// this only bounds how long a broker outage takes to notice.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to (re)connect the consumer.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("Kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("cannot evaluate a view filter")]
    Filter(#[from] datafusion::error::DataFusionError),
    #[error(
        "--partitions names partition {partition}, but topic {topic:?} has {partitions} (0 to {})",
        .partitions.saturating_sub(1)
    )]
    NoSuchPartition {
        partition: i32,
        topic: String,
        partitions: usize,
    },
}

#[derive(Debug, Clone)]
pub struct SpeedSettings {
    pub brokers: String,
    pub topic: String,
    /// Most messages per aggregation step.
    pub poll_batch: usize,
    /// Longest wait to fill a step before aggregating what arrived.
    pub poll_wait: Duration,
    /// When the speed layer counts as behind or stalled.
    pub health: HealthSettings,
    /// The partitions this node reads (`serve --partitions`, a speed node of a split speed
    /// layer); `None`: every partition of the topic.
    pub partitions: Option<Vec<i32>>,
    /// How long after a new batch version went live the epochs it covers are kept
    /// (`[serving] speed_drop_after`): serving nodes reading this node's states load the version
    /// at their own pace and still find the epochs meanwhile.
    pub drop_after: Duration,
}

impl SpeedSettings {
    /// The settings `tributary serve` runs the speed layer with. Steps of up to 2000 messages or
    /// 20 ms keep an answer's freshness near the broker's own latency (BENCHMARKS.md, Freshness).
    pub fn from_config(config: &Config) -> Self {
        Self {
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.topic.clone(),
            poll_batch: 2000,
            poll_wait: Duration::from_millis(20),
            health: HealthSettings {
                ready_max_lag: config.serving.ready_max_lag,
                stall_after: config.serving.stall_after,
            },
            partitions: None,
            drop_after: config.serving.speed_drop_after,
        }
    }
}

/// The running speed layer: the aggregator behind a lock that queries read and the consumer
/// writes once per poll step.
#[derive(Debug)]
pub struct SpeedLayer {
    settings: SpeedSettings,
    states: Arc<RwLock<Aggregator>>,
    boundary: RwLock<Boundary>,
    health: RwLock<Health>,
    /// Bumped by [`SpeedLayer::restart_at`]; a poll read before a restart is discarded.
    restarts: AtomicU64,
    /// Offsets deleted by retention before the speed layer read them (and not in the batch view).
    pub lost_offsets: AtomicU64,
    /// The topic's partitions this node does not read (`partitions`), once it has started.
    unread: RwLock<Vec<i32>>,
    /// Drops waiting for [`SpeedSettings::drop_after`]: when due, view, boundary.
    pending_drops: Mutex<Vec<(Instant, usize, Boundary)>>,
}

impl SpeedLayer {
    /// `boundary` is the live version's, or empty when there is none (or it belongs to an older
    /// generation of the topic's offsets).
    pub fn new(settings: SpeedSettings, aggregator: Aggregator, boundary: Boundary) -> Self {
        Self {
            health: RwLock::new(Health::new(settings.health)),
            settings,
            states: Arc::new(RwLock::new(aggregator)),
            boundary: RwLock::new(boundary),
            restarts: AtomicU64::new(0),
            lost_offsets: AtomicU64::new(0),
            unread: RwLock::default(),
            pending_drops: Mutex::default(),
        }
    }

    /// The topic's partitions this node does not read (see [`SpeedSettings::partitions`]).
    pub fn unread(&self) -> Vec<i32> {
        self.unread.read().map(|u| u.clone()).unwrap_or_default()
    }

    /// The boundary the consumer seeks to: what the speed layer's states start at.
    pub fn boundary(&self) -> Boundary {
        self.boundary.read().map(|b| b.clone()).unwrap_or_default()
    }

    fn health(&self) -> std::sync::RwLockReadGuard<'_, Health> {
        self.health.read().unwrap_or_else(|e| e.into_inner())
    }

    fn health_mut(&self) -> std::sync::RwLockWriteGuard<'_, Health> {
        self.health.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn health_settings(&self) -> HealthSettings {
        self.settings.health
    }

    /// Ready to answer (`/readyz`): caught up with the backlog present when consumption
    /// (re)started, within `ready_max_lag` of the broker's end and not stalled.
    pub fn ready(&self) -> bool {
        self.health().ready(Instant::now())
    }

    /// Within `ready_max_lag` of the broker's end on every partition and not stalled.
    pub fn complete(&self) -> bool {
        self.health().complete(Instant::now())
    }

    /// Per partition: start, next offset, the broker's end, and whether it is stalled.
    pub fn partitions(&self) -> BTreeMap<i32, PartitionHealth> {
        self.health().partitions(Instant::now())
    }

    /// How many times the watchdog recreated a stalled consumer.
    pub fn stalls(&self) -> u64 {
        self.health().stalls()
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
        self.pending_drops().clear();
        *self.boundary.write().unwrap_or_else(|e| e.into_inner()) = boundary;
        // Not ready until the consumer has started again from the new boundary.
        self.health_mut().restart(&BTreeMap::new(), Instant::now());
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops one view's epochs below `boundary` (its new live version covers them), at once or
    /// [`SpeedSettings::drop_after`] later; the consumer's position is unchanged.
    pub fn drop_below(&self, view: usize, boundary: &Boundary) {
        if self.settings.drop_after.is_zero() {
            self.drop_now(view, boundary);
        } else {
            let due = Instant::now() + self.settings.drop_after;
            self.pending_drops().push((due, view, boundary.clone()));
        }
    }

    fn drop_now(&self, view: usize, boundary: &Boundary) {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        if let Some(view) = states.views_mut().get_mut(view) {
            view.drop_below(boundary);
        }
    }

    fn pending_drops(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, usize, Boundary)>> {
        self.pending_drops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the delayed drops that are due (the consume loop calls it every step).
    pub fn drop_due(&self) {
        let now = Instant::now();
        let due: Vec<(Instant, usize, Boundary)> = {
            let mut pending = self.pending_drops();
            let (due, waiting) = pending.drain(..).partition(|(at, _, _)| *at <= now);
            *pending = waiting;
            due
        };
        for (_, view, boundary) in due {
            self.drop_now(view, &boundary);
        }
    }

    /// Stops aggregating view `view` and forgets its states ([`ViewStates::retire`]).
    pub fn retire(&self, view: usize) {
        self.pending_drops().retain(|(_, v, _)| *v != view);
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        if let Some(view) = states.views_mut().get_mut(view) {
            view.retire();
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

    /// Consumes until `stop` is set. Blocking: run it on a thread of its own (it starts the
    /// watermark watcher on another, for as long as it runs).
    pub fn run(&self, stop: &Shutdown) -> Result<(), SpeedError> {
        let watcher = self.client()?;
        let all = topic_partitions(&watcher, &self.settings.topic)?;
        let partitions = match &self.settings.partitions {
            None => all.clone(),
            Some(wanted) => {
                if let Some(&absent) = wanted.iter().find(|p| !all.contains(p)) {
                    return Err(SpeedError::NoSuchPartition {
                        partition: absent,
                        topic: self.settings.topic.clone(),
                        partitions: all.len(),
                    });
                }
                wanted.clone()
            }
        };
        *self.unread.write().unwrap_or_else(|e| e.into_inner()) = all
            .into_iter()
            .filter(|p| !partitions.contains(p))
            .collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| self.watch(&watcher, &partitions, stop, &done));
            let consumed = self.consume(&partitions, stop);
            done.store(true, Ordering::SeqCst);
            consumed
        })
    }

    fn client(&self) -> Result<BaseConsumer, KafkaError> {
        positioned_consumer(&self.settings.brokers, "speed", &self.settings.topic)
            // Freshness: a broker that answers a fetch only when this wait ends (tansu does) would
            // otherwise hold new events back for librdkafka's default 500 ms.
            .set("fetch.wait.max.ms", "20")
            .create()
    }

    /// Asks for every partition's end each [`WATERMARK_INTERVAL`] until `stop` or `done`.
    fn watch(
        &self,
        watcher: &BaseConsumer,
        partitions: &[i32],
        stop: &Shutdown,
        done: &AtomicBool,
    ) {
        let topic = &self.settings.topic;
        let running = || !stop.is_stopping() && !done.load(Ordering::SeqCst);
        while running() {
            let asked = Instant::now();
            for &partition in partitions {
                match watcher.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT) {
                    Ok((_, high)) => {
                        self.health_mut()
                            .high_watermark(partition, high, Instant::now());
                    }
                    Err(error) => {
                        tracing::warn!(partition, %error, "cannot learn the broker's end of a partition");
                    }
                }
            }
            while running() && asked.elapsed() < WATERMARK_INTERVAL {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The poll loop, with the watchdog: (re)connects when the boundary changed, when a partition
    /// stalled, or after a failed connection.
    fn consume(&self, partitions: &[i32], stop: &Shutdown) -> Result<(), SpeedError> {
        let stall_after = self.settings.health.stall_after;
        let mut consumer: Option<BaseConsumer> = None;
        let mut restarts = self.restarts.load(Ordering::SeqCst);
        // Whether a new consumer resumes at the offsets aggregated (after a stall) or starts at
        // the boundary (at start and after a restart).
        let mut resume = false;
        let mut connected_at = Instant::now();
        while !stop.is_stopping() {
            self.drop_due();
            let current = self.restarts.load(Ordering::SeqCst);
            if current != restarts {
                (restarts, resume, consumer) = (current, false, None);
            }
            if consumer.is_some() && connected_at.elapsed() >= stall_after {
                let now = Instant::now();
                let stalled = self.health().stalled(now);
                if !stalled.is_empty() {
                    self.report_stall(&stalled, now);
                    (resume, consumer) = (true, None);
                }
            }
            let Some(client) = consumer.as_ref() else {
                match self.connect(partitions, resume) {
                    Ok(client) => (consumer, connected_at) = (Some(client), Instant::now()),
                    Err(error) => {
                        tracing::warn!(
                            error = %chain(&error),
                            "cannot connect the speed layer's consumer; retrying"
                        );
                        std::thread::sleep(RECONNECT_PAUSE);
                    }
                }
                continue;
            };
            self.poll_step(client, restarts)?;
        }
        Ok(())
    }

    /// Polls up to `poll_batch` messages for at most `poll_wait` and aggregates them.
    fn poll_step(&self, consumer: &BaseConsumer, restarts: u64) -> Result<(), SpeedError> {
        let deadline = Instant::now() + self.settings.poll_wait;
        let mut messages = Vec::with_capacity(self.settings.poll_batch);
        while messages.len() < self.settings.poll_batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            match consumer.poll(wait) {
                Some(Ok(message)) => messages.push(message),
                Some(Err(error)) => {
                    tracing::warn!(%error, "Kafka consumer error (librdkafka retries; the watchdog recreates a consumer that stalls)");
                }
                None => break,
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
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
            return Ok(()); // read from before a restart: the next step re-seeks
        }
        states.apply(&batch)?;
        let next = states.next_offsets.clone();
        drop(states);
        let now = Instant::now();
        let mut health = self.health_mut();
        for (partition, next) in next {
            health.progress(partition, next, now);
        }
        Ok(())
    }

    fn report_stall(&self, stalled: &[i32], now: Instant) {
        let mut health = self.health_mut();
        let partitions = health.partitions(now);
        for partition in stalled {
            if let Some(p) = partitions.get(partition) {
                tracing::warn!(
                    partition,
                    position = p.next,
                    high_watermark = p.high_watermark,
                    stall_after = ?self.settings.health.stall_after,
                    "the speed layer made no progress on a partition it is behind on (or cannot learn its end): recreating its consumer"
                );
            }
        }
        health.recreated(now);
    }

    /// A new consumer with every partition assigned: at the boundary (`resume` false), or at the
    /// offsets already aggregated; where retention deleted offsets above that, at the low
    /// watermark, counting them as lost.
    fn connect(&self, partitions: &[i32], resume: bool) -> Result<BaseConsumer, SpeedError> {
        let topic = &self.settings.topic;
        let consumer = self.client()?;
        let boundary = self.boundary();
        let aggregated = self.health().next_offsets();
        let mut starts = BTreeMap::new();
        let mut gaps = Vec::new();
        for &partition in partitions {
            let (low, high) = watermarks(&consumer, topic, partition)?;
            let wanted = match aggregated.get(&partition) {
                Some(&next) if resume => next,
                _ => boundary.get(partition),
            };
            let start = if wanted < low {
                let lost = low - wanted;
                self.lost_offsets.fetch_add(lost as u64, Ordering::Relaxed);
                tracing::error!(
                    partition,
                    from = wanted,
                    to = low - 1,
                    "offsets above the batch boundary were deleted by retention before the speed layer read them"
                );
                gaps.push((partition, wanted, low - 1));
                low
            } else {
                wanted
            };
            starts.insert(partition, (start, high));
        }
        let positions = starts.iter().map(|(&p, &(start, _))| (p, start)).collect();
        assign_at(&consumer, topic, &positions)?;
        let now = Instant::now();
        let mut health = self.health_mut();
        if resume {
            for (&partition, &(start, high)) in &starts {
                health.progress(partition, start, now);
                health.high_watermark(partition, high, now);
            }
            tracing::info!(topic, positions = ?starts, "speed layer consumer recreated");
        } else {
            health.restart(&starts, now);
            tracing::info!(topic, boundary = ?boundary.0, "speed layer reading from the batch boundary");
        }
        for (partition, from, to) in gaps {
            health.missing(partition, from, to);
        }
        Ok(consumer)
    }
}

#[cfg(test)]
mod tests {
    use tributary_schemas::event::raw_rows::KafkaPosition;
    use tributary_testkit::stream::mixed_event;

    use super::*;

    #[test]
    fn epochs_a_new_version_covers_go_drop_after_later_and_never_after_a_restart() {
        let config = Config::from_sources(None, []).unwrap();
        let mut aggregator = Aggregator::new(&config.events, &config.views, 100).unwrap();
        let messages: Vec<(KafkaPosition, Vec<u8>)> = (0..300)
            .map(|n| {
                let position = KafkaPosition {
                    partition: 0,
                    offset: n as i64,
                    timestamp_ms: None,
                };
                (position, mixed_event(n).0)
            })
            .collect();
        let batch: Vec<(KafkaPosition, &[u8])> =
            messages.iter().map(|(p, m)| (*p, m.as_slice())).collect();
        aggregator.apply(&batch).unwrap();
        let settings = SpeedSettings {
            drop_after: Duration::from_millis(200),
            ..SpeedSettings::from_config(&config)
        };
        let speed = SpeedLayer::new(settings, aggregator, Boundary::default());
        let held = |speed: &SpeedLayer| {
            speed.read(|a| {
                let parts = a.views()[1].snapshot_parts(&Boundary::default(), &a.next_offsets);
                parts
                    .unwrap()
                    .parts
                    .iter()
                    .map(|p| p.epoch)
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(held(&speed), [0, 1, 2]);
        speed.drop_below(1, &Boundary([(0, 200)].into()));
        speed.drop_due();
        assert_eq!(held(&speed), [0, 1, 2], "kept for drop_after");
        std::thread::sleep(Duration::from_millis(250));
        speed.drop_due();
        assert_eq!(held(&speed), [2]);

        // A drop still waiting when the states are forgotten does not apply to the new ones.
        speed.drop_below(1, &Boundary([(0, 300)].into()));
        speed.restart_at(Boundary::default());
        std::thread::sleep(Duration::from_millis(250));
        speed.drop_due();
        assert!(speed.pending_drops().is_empty());
    }
}
