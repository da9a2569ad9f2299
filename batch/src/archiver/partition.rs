//! One partition's open file: the events consumed since the last file, and the offset range they
//! cover. Ranges tile the partition's offsets with no gap: a file covers `[start, last]` where
//! `start` is one past the previous file's end, even when the broker skipped offsets (transaction
//! markers, compaction), so the archiver's progress is always the last file's end plus one.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::EventSchema;
use tributary_schemas::event::raw_rows::{KafkaPosition, RawBatchBuilder};
use tributary_schemas::lake::OffsetRange;

use super::quarantine::QuarantineBuilder;

/// A file ready to be written: raw rows (possibly none) and quarantined rows (possibly none).
#[derive(Debug)]
pub struct PendingFile {
    pub partition: i32,
    pub range: OffsetRange,
    pub raw: RecordBatch,
    pub quarantine: Option<RecordBatch>,
    /// The rejected messages, for the DLQ: (position, payload, error code, error).
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone)]
pub struct Rejected {
    pub position: KafkaPosition,
    pub payload: Option<Vec<u8>>,
    pub code: &'static str,
    pub error: String,
}

#[derive(Debug)]
pub struct PartitionBuffer {
    partition: i32,
    start: i64,
    last: Option<i64>,
    raw: RawBatchBuilder,
    quarantine: QuarantineBuilder,
    rejected: Vec<Rejected>,
    opened: Option<Instant>,
}

impl PartitionBuffer {
    /// An empty buffer whose first file will start at `start`.
    pub fn new(partition: i32, start: i64, schema: &EventSchema) -> Self {
        Self {
            partition,
            start,
            last: None,
            raw: RawBatchBuilder::new(schema),
            quarantine: QuarantineBuilder::default(),
            rejected: Vec::new(),
            opened: None,
        }
    }

    pub fn rows(&self) -> usize {
        self.raw.len() + self.quarantine.len()
    }

    /// Decodes one message into the open file, or quarantines it. Returns whether it was valid.
    pub fn push(
        &mut self,
        decoder: &Decoder,
        position: KafkaPosition,
        payload: Option<&[u8]>,
    ) -> Result<(), &'static str> {
        self.opened.get_or_insert_with(Instant::now);
        self.last = Some(position.offset);
        let error = match payload.map(|bytes| decoder.decode(bytes)) {
            Some(Ok(event)) => {
                self.raw.append(&event, position);
                return Ok(());
            }
            Some(Err(error)) => (error.code(), error.to_string()),
            None => ("no_payload", "message has no payload".to_owned()),
        };
        self.quarantine.append(position, payload, error.0, &error.1);
        self.rejected.push(Rejected {
            position,
            payload: payload.map(<[u8]>::to_vec),
            code: error.0,
            error: error.1,
        });
        Err(error.0)
    }

    /// Whether the open file should be written now.
    pub fn due(&self, now: Instant, max_rows: usize, max_age: Duration) -> bool {
        match self.opened {
            None => false,
            Some(opened) => self.rows() >= max_rows || now.duration_since(opened) >= max_age,
        }
    }

    /// Closes the open file (if any event arrived since the last one) and starts the next.
    pub fn take(&mut self) -> Result<Option<PendingFile>, ArrowError> {
        let Some(last) = self.last else {
            return Ok(None);
        };
        let range = OffsetRange {
            start: self.start,
            end: last,
        };
        let quarantine = if self.quarantine.is_empty() {
            None
        } else {
            Some(self.quarantine.finish()?)
        };
        let file = PendingFile {
            partition: self.partition,
            range,
            raw: self.raw.finish()?,
            quarantine,
            rejected: std::mem::take(&mut self.rejected),
        };
        self.start = range.next();
        self.last = None;
        self.opened = None;
        Ok(Some(file))
    }
}
