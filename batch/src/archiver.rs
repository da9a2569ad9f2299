//! The archiver: Kafka → the master dataset (ARCHITECTURE.md §4).
//!
//! It assigns every partition of the topic (no consumer-group rebalancing) at the offset the lake
//! says comes next, decodes each message with the shared decoder, and buffers per partition until a
//! file rolls (`[archiver] max_file_rows` or `max_file_age`). A roll writes, in this order:
//! 1. the rejected messages to the DLQ topic, if configured, waiting for delivery (at least once);
//! 2. the quarantine file, if any message was malformed;
//! 3. the raw file, named by the offset range it covers — this put is the commit.
//!
//! A kill at any moment therefore loses nothing and duplicates nothing: buffered messages are
//! consumed again, a quarantine file without its raw file is deleted on restart (see [`resume`]),
//! and object puts are atomic. Malformed events never stop a partition.
//!
//! Before consuming, it compares the lake with the broker. A partition whose archived offsets run
//! past the broker's end means the topic's offsets restarted (recreated topic, new cluster, restarted
//! ephemeral broker): the archiver closes the archived generation and archives the new log as the
//! next one (see [`tributary_schemas::lake::generations`]), so nothing archived is lost or mixed
//! with the new offsets. (A committed offset is never truncated on a correctly configured cluster,
//! where unclean leader election is off, so a log shorter than the lake is a new log.) Offsets
//! deleted by retention before they were archived are counted as lost and logged, never papered
//! over.

pub mod audit;
pub mod partition;
pub mod quarantine;
pub mod resume;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio::runtime::Handle;
use tributary_schemas::blame::chain;
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::EventSchema;
use tributary_schemas::event::raw_rows::KafkaPosition;
use tributary_schemas::kafka::{
    TopicError, assign_at, positioned_consumer, topic_partitions, watermarks,
};
use tributary_schemas::lake::{self, Area, Lake, LakeError};
use tributary_schemas::shutdown::{Shutdown, Stop};

use partition::{PartitionBuffer, PendingFile};
pub use stats::ArchiverStats;

#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    #[error("Kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(
        "partition {partition} of {topic} ends at offset {broker_end} but generation {generation} of \
         the lake holds offsets up to {archived_end}, which a new generation cannot explain"
    )]
    OffsetsRestarted {
        topic: String,
        partition: i32,
        generation: u32,
        broker_end: i64,
        archived_end: i64,
    },
    #[error("lake request failed")]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Schema(#[from] lake::schemas::SchemaError),
    #[error("cannot build a raw or quarantine batch")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("cannot encode a raw or quarantine file as Parquet")]
    Encode(#[from] parquet::errors::ParquetError),
}

/// A file's Parquet bytes, encoded once however often the puts are retried (`Bytes` clones share).
#[derive(Debug)]
struct EncodedFile {
    raw: bytes::Bytes,
    quarantine: Option<bytes::Bytes>,
}

impl EncodedFile {
    fn new(file: &PendingFile) -> Result<Self, parquet::errors::ParquetError> {
        let encode = |batch| crate::parquet_io::encode(std::slice::from_ref(batch));
        Ok(Self {
            raw: encode(&file.raw)?,
            quarantine: file.quarantine.as_ref().map(encode).transpose()?,
        })
    }
}

/// What the archiver needs from the configuration.
#[derive(Debug, Clone)]
pub struct ArchiverSettings {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: Option<String>,
    pub max_file_rows: usize,
    pub max_file_age: Duration,
    pub events: EventSchema,
}

impl ArchiverSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.topic.clone(),
            dlq_topic: config.kafka.dlq_topic.clone(),
            max_file_rows: config.archiver.max_file_rows,
            max_file_age: config.archiver.max_file_age,
            events: config.events.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Archiver {
    settings: ArchiverSettings,
    decoder: Decoder,
    lake: Lake,
    stats: Arc<ArchiverStats>,
    /// The generation being archived (set when `run` starts).
    generation: AtomicU32,
}

impl Archiver {
    pub fn new(settings: ArchiverSettings, lake: Lake) -> Self {
        Self {
            decoder: Decoder::new(settings.events.clone()),
            settings,
            lake,
            stats: Arc::default(),
            generation: AtomicU32::new(0),
        }
    }

    pub fn stats(&self) -> Arc<ArchiverStats> {
        self.stats.clone()
    }

    /// Archives until `stop` says otherwise. Blocking: run it on a thread of its own; `runtime` serves
    /// the object-store requests.
    pub fn run(&self, runtime: &Handle, stop: &Shutdown) -> Result<(), ArchiverError> {
        let topic = &self.settings.topic;
        let consumer: BaseConsumer =
            positioned_consumer(&self.settings.brokers, "archiver", topic).create()?;
        let partitions = topic_partitions(&consumer, topic)?;
        let lake = &self.lake;
        let mut generations = runtime.block_on(lake.generations(topic))?;
        let mut lake_topic = generations.current_topic(topic);
        let mut resume = runtime.block_on(resume::resume_points(lake, &lake_topic, &partitions))?;
        if let Some(reason) = self.offsets_restarted(&consumer, generations.current, &resume)? {
            let next_offsets = resume.iter().map(|(p, r)| (*p, r.next_offset)).collect();
            let closed = generations.current;
            generations.close_current(next_offsets, reason.clone());
            runtime.block_on(lake.write_generations(topic, &generations))?;
            tracing::warn!(
                topic,
                closed,
                current = generations.current,
                reason,
                "the topic's offsets restarted: the archived generation is closed (kept and batched \
                 whole); archiving the new log as the next generation"
            );
            lake_topic = generations.current_topic(topic);
            resume = runtime.block_on(resume::resume_points(lake, &lake_topic, &partitions))?;
        }
        self.generation.store(generations.current, Ordering::SeqCst);
        // The files from here on are written in the configured schema: the lake records from
        // which offsets (a change the lake's readers cannot follow is refused).
        let since = resume.iter().map(|(&p, r)| (p, r.next_offset)).collect();
        let evolution = runtime.block_on(lake.record_event_schema(
            topic,
            &self.settings.events,
            generations.current,
            since,
        ))?;
        for change in &evolution.changes {
            tracing::info!(topic, %change, "the event schema changed");
        }

        let mut starts = BTreeMap::new();
        let mut buffers = BTreeMap::new();
        for (&partition, progress) in &resume {
            for hole in &progress.holes {
                tracing::error!(partition, %hole, "raw files are missing from the lake; those offsets are not archived");
            }
            let removed = runtime.block_on(resume::remove_orphan_quarantine(
                lake,
                &lake_topic,
                partition,
                progress.next_offset,
            ))?;
            if removed > 0 {
                tracing::info!(
                    partition,
                    removed,
                    "removed quarantine files of an interrupted run"
                );
            }
            let start = self.check_against_broker(&consumer, partition, progress.next_offset)?;
            starts.insert(partition, start);
            buffers.insert(
                partition,
                PartitionBuffer::new(partition, progress.next_offset, &self.settings.events),
            );
            self.stats.set_progress(partition, progress.next_offset);
        }
        assign_at(&consumer, topic, &starts)?;
        tracing::info!(
            topic,
            generation = generations.current,
            ?resume,
            "archiver started"
        );

        let dlq = self.dlq_producer()?;
        loop {
            match stop.state() {
                Stop::Abandon => return Ok(()),
                Stop::Graceful => {
                    for buffer in buffers.values_mut() {
                        self.flush(runtime, buffer, dlq.as_ref(), stop)?;
                    }
                    return Ok(());
                }
                Stop::Running => {}
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let position = KafkaPosition {
                        partition: message.partition(),
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                    };
                    if let Some(buffer) = buffers.get_mut(&position.partition) {
                        match buffer.push(&self.decoder, position, message.payload()) {
                            Ok(()) => self.stats.archived.fetch_add(1, Ordering::Relaxed),
                            Err(reason) => self.stats.quarantine(reason),
                        };
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    return Err(ArchiverError::Kafka(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::OffsetOutOfRange,
                    )));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "Kafka consumer error (librdkafka retries)");
                }
                None => {}
            }
            let now = Instant::now();
            for buffer in buffers.values_mut() {
                if buffer.due(now, self.settings.max_file_rows, self.settings.max_file_age) {
                    self.flush(runtime, buffer, dlq.as_ref(), stop)?;
                }
            }
        }
    }

    /// Why the broker's log cannot be the one `generation` archived, if it cannot: a partition whose
    /// log ends before the offsets the lake already holds.
    fn offsets_restarted(
        &self,
        consumer: &BaseConsumer,
        generation: u32,
        resume: &BTreeMap<i32, resume::PartitionProgress>,
    ) -> Result<Option<String>, ArchiverError> {
        for (&partition, progress) in resume {
            let (_, high) = watermarks(consumer, &self.settings.topic, partition)?;
            if progress.next_offset > high {
                return Ok(Some(format!(
                    "partition {partition} ends at offset {high} but generation {generation} holds offsets up to {}",
                    progress.next_offset - 1
                )));
            }
        }
        Ok(None)
    }

    /// Checks the lake's next offset against the broker's log; returns where to start consuming.
    fn check_against_broker(
        &self,
        consumer: &BaseConsumer,
        partition: i32,
        next: i64,
    ) -> Result<i64, ArchiverError> {
        let topic = &self.settings.topic;
        let (low, high) = watermarks(consumer, topic, partition)?;
        if next > high {
            // The log shrank between the generation check and now.
            return Err(ArchiverError::OffsetsRestarted {
                topic: topic.clone(),
                partition,
                generation: self.generation.load(Ordering::SeqCst),
                broker_end: high,
                archived_end: next - 1,
            });
        }
        if next < low {
            let lost = low - next;
            self.stats
                .lost_offsets
                .fetch_add(lost as u64, Ordering::Relaxed);
            tracing::error!(
                partition,
                from = next,
                to = low - 1,
                lost,
                "offsets were deleted by retention before they were archived"
            );
            return Ok(low);
        }
        Ok(next)
    }

    fn dlq_producer(&self) -> Result<Option<ThreadedProducer<DefaultProducerContext>>, KafkaError> {
        let Some(_) = &self.settings.dlq_topic else {
            return Ok(None);
        };
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()?;
        Ok(Some(producer))
    }

    /// Writes the buffer's open file (DLQ, quarantine, then raw), retrying the lake until it answers
    /// or the archiver is told to stop.
    fn flush(
        &self,
        runtime: &Handle,
        buffer: &mut PartitionBuffer,
        dlq: Option<&ThreadedProducer<DefaultProducerContext>>,
        stop: &Shutdown,
    ) -> Result<(), ArchiverError> {
        let Some(file) = buffer.take()? else {
            return Ok(());
        };
        if let (Some(producer), Some(topic)) = (dlq, &self.settings.dlq_topic) {
            self.send_to_dlq(producer, topic, &file);
        }
        let _roll = tracing::info_span!(
            "archiver_roll",
            partition = file.partition,
            range = %file.range
        )
        .entered();
        // Encoding is deterministic: do it once, and retry only what can fail transiently (the puts).
        let encoded = EncodedFile::new(&file)?;
        let mut backoff = Duration::from_millis(100);
        loop {
            // An abandon cuts a write short (object_store retries a request for minutes): the file
            // is not in the lake, so its events are consumed and archived again at the next start.
            let written = runtime.block_on(async {
                tokio::select! {
                    written = self.write(&file, &encoded) => Some(written),
                    () = stop.abandoned() => None,
                }
            });
            match written {
                None => return Ok(()),
                Some(Ok(())) => break,
                Some(Err(error)) => {
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %chain(&error), partition = file.partition, range = %file.range, "writing to the lake failed; retrying");
                    runtime.block_on(async {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = stop.abandoned() => {}
                        }
                    });
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        self.stats.set_progress(file.partition, file.range.next());
        Ok(())
    }

    /// Puts the quarantine file (if any), then the raw file: the raw put is the commit.
    async fn write(&self, file: &PendingFile, encoded: &EncodedFile) -> Result<(), LakeError> {
        let topic = &lake::generations::generation_topic(
            &self.settings.topic,
            self.generation.load(Ordering::SeqCst),
        );
        let (partition, range) = (file.partition, file.range);
        if let Some(quarantine) = &encoded.quarantine {
            (self.lake)
                .put_partition_file(
                    Area::Quarantine,
                    topic,
                    partition,
                    range,
                    quarantine.clone(),
                )
                .await?;
        }
        (self.lake)
            .put_partition_file(Area::Raw, topic, partition, range, encoded.raw.clone())
            .await
    }

    /// Sends the file's rejected messages to the DLQ with their reason in headers, and waits for
    /// delivery. A DLQ failure is counted and logged: the quarantine file is the durable record, and a
    /// DLQ outage must not stop archiving.
    fn send_to_dlq(
        &self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        topic: &str,
        file: &PendingFile,
    ) {
        for rejected in &file.rejected {
            let partition = rejected.position.partition.to_string();
            let offset = rejected.position.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "tributary.error.code",
                    value: Some(rejected.code),
                })
                .insert(Header {
                    key: "tributary.error",
                    value: Some(rejected.error.as_str()),
                })
                .insert(Header {
                    key: "tributary.source.topic",
                    value: Some(self.settings.topic.as_str()),
                })
                .insert(Header {
                    key: "tributary.source.partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "tributary.source.offset",
                    value: Some(offset.as_str()),
                });
            let mut record = BaseRecord::<(), [u8]>::to(topic).headers(headers);
            if let Some(payload) = &rejected.payload {
                record = record.payload(payload.as_slice());
            }
            if let Err((error, _)) = producer.send(record) {
                self.stats.dlq_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "could not queue a rejected event for the DLQ");
            }
        }
        if !file.rejected.is_empty() && producer.flush(Duration::from_secs(10)).is_err() {
            self.stats.dlq_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, "DLQ delivery did not complete within 10s");
        }
    }
}
