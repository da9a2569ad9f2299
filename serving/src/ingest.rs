//! Push ingest (`POST /v1/events`): events over HTTP, validated with the shared decoder and produced
//! to the events topic before the reply, so that an accepted event is in Kafka like any other.
//!
//! The body is a JSON array of events or NDJSON (one event per line), optionally gzip-compressed
//! (`Content-Encoding: gzip`). A body that cannot be read as either is refused whole (400); inside a
//! readable body each event stands alone: a valid one is produced, an invalid one is listed in the
//! reply with its position and the decoder's reason.
//!
//! **Atomicity.** Before producing anything, the brokers must answer a metadata request for the topic;
//! if they do not, the reply is 503 and nothing was written. Kafka itself has no atomic write of many
//! messages outside transactions, so a broker lost in the middle of a request can leave part of it
//! written: every event of a request goes to one partition, in order, through an idempotent
//! producer (`acks=all`), and a 503 then says exactly which events were written and which were not,
//! so that the sender resends only the rest. Nothing is acknowledged that Kafka has not acknowledged.
//! One case stays uncertain: a message whose acknowledgement timed out in flight may have been
//! written (librdkafka's "possibly persisted" status is not exposed by rdkafka); it is listed as
//! unwritten, so a resend may duplicate it. Kafka transactions would close this, but tansu does not
//! filter aborted transactions (its fetch returns no aborted-transaction list), so they could not be
//! tested against the broker the tests use.

use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_schemas::layers::prometheus::Exposition;

/// How long the brokers have to answer the metadata request made before a request is produced.
const PREFLIGHT: Duration = Duration::from_secs(2);
/// Most rejected events listed one by one in a reply (all are counted).
const MAX_LISTED: usize = 10_000;

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub brokers: String,
    pub topic: String,
    /// Largest body, before and after decompression.
    pub max_body: usize,
    /// Longest Kafka may take to acknowledge a request's events.
    pub timeout: Duration,
}

impl IngestSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.topic.clone(),
            max_body: config.serving.ingest_max_body_mb << 20,
            timeout: config.serving.ingest_timeout,
        }
    }
}

/// Where an event sat in the body: its line (NDJSON, from 1) or its index (JSON array, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Line(usize),
    Index(usize),
}

/// An event the decoder refused.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    #[serde(flatten)]
    pub position: Position,
    pub code: &'static str,
    pub message: String,
}

/// What became of a request's events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Events written to Kafka (acknowledged by every in-sync replica).
    pub accepted: usize,
    /// Events the decoder refused (none of them was written).
    pub rejected: usize,
    /// Each refused event with its reason, up to 10 000.
    pub errors: Vec<Rejected>,
    /// The partition the accepted events went to, and their first and last offsets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets: Option<[i64; 2]>,
    /// Valid events Kafka did not acknowledge (only in a 503): resend these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unwritten: Vec<Position>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "the body is larger than the {limit} byte limit{} ([serving] ingest_max_body_mb); send the events in several requests",
        if *.decompressed { " once decompressed" } else { "" }
    )]
    TooLarge { limit: usize, decompressed: bool },
    #[error(
        "Content-Encoding {0:?} is not supported; send the body uncompressed or with Content-Encoding: gzip"
    )]
    UnsupportedEncoding(String),
    #[error("the body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("{0}")]
    BadBody(String),
    /// Kafka did not take the events; `report` says which, if any, were written.
    #[error("{reason}")]
    Unavailable { reason: String, report: Report },
}

/// The body's events: the buffer and the byte range of each event in it.
#[derive(Debug)]
struct Parsed {
    data: Vec<u8>,
    valid: Vec<(Position, Range<usize>)>,
    rejected: usize,
    errors: Vec<Rejected>,
}

/// Validates pushed events and produces the valid ones.
pub struct Ingest {
    settings: IngestSettings,
    decoder: Arc<Decoder>,
    producer: RwLock<FutureProducer>,
    next_partition: AtomicU32,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unwritten: AtomicU64,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Ingest {
    pub fn new(settings: IngestSettings, decoder: Decoder) -> Result<Self, KafkaError> {
        let producer = RwLock::new(producer(&settings)?);
        Ok(Self {
            settings,
            decoder: Arc::new(decoder),
            producer,
            next_partition: AtomicU32::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
        })
    }

    /// The push-ingest counters for `/metrics`.
    pub fn metrics(&self, out: &mut Exposition) {
        let counters = [
            (
                "tributary_ingest_accepted_total",
                "pushed events Kafka acknowledged",
                &self.accepted,
            ),
            (
                "tributary_ingest_rejected_total",
                "pushed events the decoder refused",
                &self.rejected,
            ),
            (
                "tributary_ingest_unwritten_total",
                "valid pushed events Kafka did not take (answered with 503)",
                &self.unwritten,
            ),
        ];
        for (name, help, counter) in counters {
            out.counter(name, help, counter.load(Ordering::Relaxed));
        }
    }

    pub fn max_body(&self) -> usize {
        self.settings.max_body
    }

    /// Validates a body (`encoding` is its Content-Encoding) and produces its valid events.
    pub async fn accept(
        &self,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Report, IngestError> {
        let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
        let gzip = match encoding.as_deref() {
            None | Some("" | "identity") => false,
            Some("gzip" | "x-gzip") => true,
            Some(other) => return Err(IngestError::UnsupportedEncoding(other.to_owned())),
        };
        let (decoder, limit) = (Arc::clone(&self.decoder), self.settings.max_body);
        // Decompressing and decoding megabytes is CPU work: keep it off the async threads.
        let parsed = tokio::task::spawn_blocking(move || {
            let data = if gzip { gunzip(&body, limit)? } else { body };
            parse(&decoder, data)
        })
        .await
        .map_err(|e| IngestError::BadBody(format!("the body could not be read: {e}")))??;
        self.rejected
            .fetch_add(parsed.rejected as u64, Ordering::Relaxed);
        let mut report = Report {
            rejected: parsed.rejected,
            errors: parsed.errors,
            ..Report::default()
        };
        if parsed.valid.is_empty() {
            return Ok(report);
        }
        let producer = self
            .producer
            .read()
            .map_or_else(|p| p.into_inner().clone(), |p| p.clone());
        let partitions = match self.preflight(&producer).await {
            Ok(partitions) => partitions,
            Err(reason) => {
                self.unwritten
                    .fetch_add(parsed.valid.len() as u64, Ordering::Relaxed);
                report.unwritten = parsed.valid.iter().map(|(p, _)| *p).collect();
                return Err(IngestError::Unavailable { reason, report });
            }
        };
        let partition =
            (self.next_partition.fetch_add(1, Ordering::Relaxed) % partitions as u32) as i32;
        let deadline = Instant::now() + self.settings.timeout;
        let topic = self.settings.topic.as_str();
        let sends = parsed.valid.iter().map(|(_, range)| {
            let record = FutureRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(&parsed.data[range.clone()]);
            producer.send(
                record,
                Timeout::After(deadline.saturating_duration_since(Instant::now())),
            )
        });
        let deliveries = futures::future::join_all(sends).await;
        let mut failure = None;
        let mut offsets: Option<[i64; 2]> = None;
        for ((position, _), delivery) in parsed.valid.iter().zip(deliveries) {
            match delivery {
                Ok(delivery) => {
                    report.accepted += 1;
                    let [first, last] = offsets.get_or_insert([delivery.offset; 2]);
                    *first = (*first).min(delivery.offset);
                    *last = (*last).max(delivery.offset);
                }
                Err((error, _)) => {
                    report.unwritten.push(*position);
                    failure.get_or_insert(error);
                }
            }
        }
        self.accepted
            .fetch_add(report.accepted as u64, Ordering::Relaxed);
        report.partition = offsets.map(|_| partition);
        report.offsets = offsets;
        let Some(error) = failure else {
            return Ok(report);
        };
        self.unwritten
            .fetch_add(report.unwritten.len() as u64, Ordering::Relaxed);
        self.replace_if_fatal(&producer);
        Err(IngestError::Unavailable {
            reason: format!(
                "Kafka did not acknowledge {} of {} valid events ({error}); {} were written: resend only the events listed in `unwritten`",
                report.unwritten.len(),
                parsed.valid.len(),
                report.accepted
            ),
            report,
        })
    }

    /// The topic's partition count, if the brokers answer now; else why not.
    async fn preflight(&self, producer: &FutureProducer) -> Result<usize, String> {
        let (producer, topic) = (producer.clone(), self.settings.topic.clone());
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), PREFLIGHT)
        })
        .await
        .map_err(|e| format!("the metadata request failed: {e}"))?;
        let unreachable = |e: KafkaError| {
            format!(
                "Kafka ({}) did not answer within {PREFLIGHT:?} ({e}); nothing was written, retry later",
                self.settings.brokers
            )
        };
        let metadata = metadata.map_err(unreachable)?;
        let topic = metadata.topics().first();
        match topic.map(|t| (t.error(), t.partitions().len())) {
            Some((None, partitions)) if partitions > 0 => Ok(partitions),
            _ => Err(format!(
                "the topic {} does not exist on the brokers {}; nothing was written",
                self.settings.topic, self.settings.brokers
            )),
        }
    }

    /// An idempotent producer that hit a fatal error (e.g. lost sequence state) cannot send again:
    /// start a new one for the next request.
    fn replace_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        tracing::warn!(?code, %reason, "the ingest producer hit a fatal error; starting a new one");
        match producer(&self.settings) {
            Ok(fresh) => {
                if let Ok(mut current) = self.producer.write() {
                    *current = fresh;
                }
            }
            Err(error) => tracing::error!(%error, "cannot start a new ingest producer"),
        }
    }
}

fn producer(settings: &IngestSettings) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            settings.timeout.as_millis().to_string(),
        )
        .set("queue.buffering.max.messages", "1000000")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
}

fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::BadGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge {
            limit,
            decompressed: true,
        });
    }
    Ok(out)
}

/// Splits the body into events (a JSON array when its first non-blank byte is `[`, else NDJSON) and
/// validates each one.
fn parse(decoder: &Decoder, data: Vec<u8>) -> Result<Parsed, IngestError> {
    let items = match data.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(IngestError::BadBody(
                "the body holds no events; send a JSON array of events or one JSON event per line"
                    .to_owned(),
            ));
        }
        Some(b'[') => array_items(&data)?,
        Some(_) => lines(&data),
    };
    let mut parsed = Parsed {
        valid: Vec::with_capacity(items.len()),
        rejected: 0,
        errors: Vec::new(),
        data: Vec::new(),
    };
    for (position, range) in items {
        match decoder.decode(&data[range.clone()]) {
            Ok(_) => parsed.valid.push((position, range)),
            Err(error) => {
                parsed.rejected += 1;
                if parsed.errors.len() < MAX_LISTED {
                    parsed.errors.push(Rejected {
                        position,
                        code: error.code(),
                        message: error.to_string(),
                    });
                }
            }
        }
    }
    parsed.data = data;
    Ok(parsed)
}

/// NDJSON: every line that is not blank is one event (a trailing `\r` is dropped).
fn lines(data: &[u8]) -> Vec<(Position, Range<usize>)> {
    let mut items = Vec::new();
    let mut start = 0;
    for (number, line) in data.split(|b| *b == b'\n').enumerate() {
        let range = trim(data, start..start + line.len());
        start += line.len() + 1;
        if !range.is_empty() {
            items.push((Position::Line(number + 1), range));
        }
    }
    items
}

/// The elements of a top-level JSON array, found by tracking strings and nesting only: each element
/// is validated by the decoder afterwards, so a broken element is that element's error, while a
/// broken array (unclosed, an empty element, text after it) makes the whole body unreadable.
fn array_items(data: &[u8]) -> Result<Vec<(Position, Range<usize>)>, IngestError> {
    let bad = |what: &str| {
        IngestError::BadBody(format!(
            "the body starts with '[' but is not a JSON array of events: {what}"
        ))
    };
    let open = data.iter().position(|b| *b == b'[').unwrap_or(0);
    let mut items = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start = open + 1;
    let mut end = None;
    for (i, &b) in data.iter().enumerate().skip(open + 1) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b',' | b']' if depth == 0 => {
                let range = trim(data, start..i);
                let last = b == b']';
                if range.is_empty() && !(last && items.is_empty()) {
                    return Err(bad(&format!("element {} is empty", items.len())));
                }
                if !range.is_empty() {
                    items.push((Position::Index(items.len()), range));
                }
                start = i + 1;
                if last {
                    end = Some(i);
                    break;
                }
            }
            b'}' => return Err(bad(&format!("an unmatched '}}' at byte {i}"))),
            _ => {}
        }
    }
    let end = end.ok_or_else(|| bad("the array is not closed with ']'"))?;
    if data[end + 1..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(bad("there is text after the closing ']'"));
    }
    Ok(items)
}

fn trim(data: &[u8], mut range: Range<usize>) -> Range<usize> {
    while range.start < range.end && data[range.start].is_ascii_whitespace() {
        range.start += 1;
    }
    while range.end > range.start && data[range.end - 1].is_ascii_whitespace() {
        range.end -= 1;
    }
    range
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(data: &[u8], items: &[(Position, Range<usize>)]) -> Vec<(Position, String)> {
        (items.iter())
            .map(|(p, r)| (*p, String::from_utf8_lossy(&data[r.clone()]).into_owned()))
            .collect()
    }

    #[test]
    fn ndjson_lines_are_numbered_from_one_and_blank_lines_skipped() {
        let data = b"{\"a\":1}\r\n\n  \n{\"b\":\"x\\ny\"}\n";
        let items = lines(data);
        assert_eq!(
            texts(data, &items),
            vec![
                (Position::Line(1), r#"{"a":1}"#.to_owned()),
                (Position::Line(4), r#"{"b":"x\ny"}"#.to_owned()),
            ]
        );
    }

    #[test]
    fn array_elements_split_at_top_level_commas_only() {
        let data = br#" [ {"a":"],[,\"}","b":[1,2]} , 7, {"c":{"d":[]}} ] "#;
        let items = array_items(data).unwrap();
        assert_eq!(
            texts(data, &items),
            vec![
                (
                    Position::Index(0),
                    r#"{"a":"],[,\"}","b":[1,2]}"#.to_owned()
                ),
                (Position::Index(1), "7".to_owned()),
                (Position::Index(2), r#"{"c":{"d":[]}}"#.to_owned()),
            ]
        );
        assert!(array_items(b"[]").unwrap().is_empty());
        assert!(array_items(b"[ \n ]").unwrap().is_empty());
    }

    #[test]
    fn a_broken_array_is_refused_whole() {
        for (body, what) in [
            (&b"[{\"a\":1}"[..], "not closed"),
            (b"[{\"a\":1},]", "element 1 is empty"),
            (b"[,{\"a\":1}]", "element 0 is empty"),
            (b"[{\"a\":1}] x", "text after"),
            (b"[{\"a\":1}}]", "unmatched"),
            (b"[\"abc]", "not closed"),
        ] {
            let error = array_items(body).unwrap_err().to_string();
            assert!(error.contains(what), "{error}");
        }
    }

    #[test]
    fn gzip_is_limited_after_decompression() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&vec![b' '; 100_000]).unwrap();
        let compressed = encoder.finish().unwrap();
        assert!(compressed.len() < 1000);
        assert_eq!(gunzip(&compressed, 100_000).unwrap().len(), 100_000);
        assert!(matches!(
            gunzip(&compressed, 99_999),
            Err(IngestError::TooLarge {
                decompressed: true,
                ..
            })
        ));
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(IngestError::BadGzip(_))
        ));
    }
}
