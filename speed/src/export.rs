//! A speed node's states as another process reads them (issue 32, the split speed layer,
//! ARCHITECTURE.md §8): one view's parts (one Arrow batch per `(partition, epoch)`) in Arrow IPC,
//! behind a JSON head with what the serving side needs to merge them at the seam: per partition
//! the next offset, its health and where the states start, and the node's restart count.
//!
//! ```text
//! u32 (little-endian) length of the head, the head (JSON), then per part of the head's `parts`,
//! in order, `bytes` of one Arrow IPC stream holding that part's batch
//! ```
//!
//! Sealed parts never change (every offset of their epoch has been read), so a caller that holds
//! some says so (`have`) and gets only the others: after the first exchange, each one carries the
//! open epochs and what was sealed since.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};
use tributary_schemas::lake::Boundary;
use tributary_schemas::layers::speed::{PartitionHealth, SpeedPart};

use crate::consumer::SpeedLayer;

/// What precedes the parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportHead {
    /// The definition the parts are of (`ViewDef::definition_hash`).
    pub definition_hash: String,
    /// Drawn when the node's process started: sealed parts held from another process's exports
    /// are not sent again by this one, so a caller forgets them.
    pub instance: u64,
    /// How many times the node's states were forgotten and re-read: sealed parts held from before
    /// another count may be of another log.
    pub restarts: u64,
    /// The node's speed layer is ready (caught up with the backlog present when it (re)started,
    /// within `ready_max_lag` and not stalled on every partition it reads).
    pub ready: bool,
    /// Events and malformed messages the node aggregated over every view since it started.
    pub events_total: u64,
    pub malformed_total: u64,
    /// Per partition, the next offset the node will read: everything below it is counted.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Per partition the node reads, its progress against the broker's end.
    pub partitions: BTreeMap<i32, PartitionHealth>,
    /// Where the view's states start per partition (the boundary the node dropped below): a
    /// serving node whose version's boundary is lower lacks epochs and must not merge these.
    pub held_from: Boundary,
    /// Events counted and the newest event time over every part (not only those sent).
    pub events: u64,
    pub newest_event_ms: Option<i64>,
    pub parts: Vec<PartHead>,
}

/// One part's place in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartHead {
    pub partition: i32,
    pub epoch: i64,
    pub sealed: bool,
    pub events: u64,
    pub newest_event_ms: Option<i64>,
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("a speed export is cut short")]
    Truncated,
    #[error("a speed export's head is not valid")]
    Head(#[from] serde_json::Error),
    #[error("a speed export's part is not valid Arrow IPC")]
    Arrow(#[from] ArrowError),
    #[error("a speed export's part holds {0} batches, not one")]
    Batches(usize),
}

/// `parts` (every part of the view) without the sealed ones the caller `have`s, after `head`
/// (whose `parts` is filled in here).
pub fn encode(
    mut head: ExportHead,
    parts: &[SpeedPart],
    have: &BTreeSet<(i32, i64)>,
) -> Result<Vec<u8>, ArrowError> {
    let mut bodies = Vec::new();
    head.parts.clear();
    for part in parts {
        if part.sealed && have.contains(&(part.partition, part.epoch)) {
            continue;
        }
        let mut bytes = Vec::new();
        let mut writer = StreamWriter::try_new(&mut bytes, &part.batch.schema())?;
        writer.write(&part.batch)?;
        writer.finish()?;
        drop(writer);
        head.parts.push(PartHead {
            partition: part.partition,
            epoch: part.epoch,
            sealed: part.sealed,
            events: part.events,
            newest_event_ms: part.newest_event_ms,
            bytes: bytes.len(),
        });
        bodies.push(bytes);
    }
    let json = serde_json::to_vec(&head).expect("a speed export head serializes");
    let length = u32::try_from(json.len()).expect("a head under 4 GiB");
    let mut out = Vec::with_capacity(4 + json.len() + bodies.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&json);
    for body in bodies {
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// The head and the parts of an [`encode`]d export, each batch read as `schema` (the view's state
/// schema, which both sides derive from the same definition).
pub fn decode(
    bytes: &[u8],
    schema: &SchemaRef,
) -> Result<(ExportHead, Vec<SpeedPart>), ExportError> {
    let length = bytes.get(..4).ok_or(ExportError::Truncated)?;
    let length = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
    let head = bytes.get(4..4 + length).ok_or(ExportError::Truncated)?;
    let head: ExportHead = serde_json::from_slice(head)?;
    let mut at = 4 + length;
    let mut parts = Vec::with_capacity(head.parts.len());
    for part in &head.parts {
        let body = bytes
            .get(at..at + part.bytes)
            .ok_or(ExportError::Truncated)?;
        at += part.bytes;
        let batches = StreamReader::try_new(body, None)?.collect::<Result<Vec<_>, _>>()?;
        let [batch] =
            <[RecordBatch; 1]>::try_from(batches).map_err(|b| ExportError::Batches(b.len()))?;
        parts.push(SpeedPart {
            partition: part.partition,
            epoch: part.epoch,
            sealed: part.sealed,
            batch: RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?,
            events: part.events,
            newest_event_ms: part.newest_event_ms,
        });
    }
    if at != bytes.len() {
        return Err(ExportError::Truncated);
    }
    Ok((head, parts))
}

/// This process's [`ExportHead::instance`].
static INSTANCE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    use std::hash::{BuildHasher, RandomState};
    let started = std::time::SystemTime::now();
    RandomState::new().hash_one((started, std::process::id()))
});

impl SpeedLayer {
    /// The states of the view defined by `definition_hash` for another process, without the
    /// sealed parts it `have`s; `None` when no view of this node has that definition (or it was
    /// retired). The head and the parts are read at one instant (one poll step's lock).
    pub fn export(
        &self,
        definition_hash: &str,
        have: &BTreeSet<(i32, i64)>,
    ) -> Result<Option<Vec<u8>>, ArrowError> {
        let start = self.boundary();
        let restarts = self.restarts();
        let partitions = self.partitions();
        let ready = self.ready();
        self.read(|aggregator| {
            let Some(view) = (aggregator.views().iter())
                .find(|v| !v.retired() && v.view().definition_hash() == definition_hash)
            else {
                return Ok(None);
            };
            let next_offsets = aggregator.next_offsets.clone();
            let snapshot = view.snapshot_parts(&Boundary::default(), &next_offsets)?;
            let held_from = Boundary(
                (start.0.keys().chain(view.dropped().0.keys()))
                    .map(|&p| (p, start.get(p).max(view.dropped().get(p))))
                    .collect(),
            );
            let head = ExportHead {
                definition_hash: definition_hash.to_owned(),
                instance: *INSTANCE,
                restarts,
                ready,
                events_total: aggregator.totals.events,
                malformed_total: aggregator.totals.malformed,
                next_offsets,
                partitions,
                held_from,
                events: snapshot.events,
                newest_event_ms: snapshot.newest_event_ms,
                parts: Vec::new(),
            };
            encode(head, &snapshot.parts, have).map(Some)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn part(partition: i32, epoch: i64, sealed: bool, values: &[i64]) -> SpeedPart {
        let column: ArrayRef = Arc::new(Int64Array::from(values.to_vec()));
        SpeedPart {
            partition,
            epoch,
            sealed,
            batch: RecordBatch::try_from_iter([("n", column)]).unwrap(),
            events: values.len() as u64,
            newest_event_ms: values.last().copied(),
        }
    }

    fn head() -> ExportHead {
        ExportHead {
            definition_hash: "h".to_owned(),
            instance: 9,
            restarts: 2,
            ready: true,
            events_total: 600,
            malformed_total: 1,
            next_offsets: BTreeMap::from([(0, 1500), (3, 40)]),
            partitions: BTreeMap::from([(
                0,
                PartitionHealth {
                    start: 1000,
                    next: 1500,
                    high_watermark: 1600,
                    stalled: false,
                    missing: Some((900, 999)),
                },
            )]),
            held_from: Boundary(BTreeMap::from([(0, 1000)])),
            events: 540,
            newest_event_ms: Some(7),
            parts: Vec::new(),
        }
    }

    #[test]
    fn an_export_reads_back_without_the_sealed_parts_the_caller_has() {
        let parts = [
            part(0, 2, true, &[1, 2, 3]),
            part(0, 3, false, &[4]),
            part(3, 0, true, &[]),
            part(3, 1, false, &[5, 6]),
        ];
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let have = BTreeSet::from([(0, 2), (3, 1)]);
        let bytes = encode(head(), &parts, &have).unwrap();
        let (got, read) = decode(&bytes, &schema).unwrap();
        let sent: Vec<(i32, i64, bool)> = got
            .parts
            .iter()
            .map(|p| (p.partition, p.epoch, p.sealed))
            .collect();
        assert_eq!(
            sent,
            [(0, 3, false), (3, 0, true), (3, 1, false)],
            "an open part is always sent"
        );
        assert_eq!(
            ExportHead {
                parts: Vec::new(),
                ..got
            },
            head()
        );
        let rows: Vec<usize> = read.iter().map(|p| p.batch.num_rows()).collect();
        assert_eq!(rows, [1, 0, 2]);
        let events: Vec<(u64, Option<i64>)> =
            read.iter().map(|p| (p.events, p.newest_event_ms)).collect();
        assert_eq!(events, [(1, Some(4)), (0, None), (2, Some(6))]);
        assert_eq!(
            read[2].batch.column(0).as_ref(),
            parts[3].batch.column(0).as_ref()
        );
        for cut in [0, 3, 10, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], &schema).is_err(), "cut at {cut}");
        }
    }
}
