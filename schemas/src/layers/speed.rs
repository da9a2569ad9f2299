//! What the speed layer hands the serving layer: a view's states above a batch version's boundary
//! (one Arrow part per `(partition, epoch)`, ARCHITECTURE.md §5), the consumer's progress against
//! the broker's end, and the two calls a newly live batch version makes.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;

use super::StatusSource;
use crate::lake::Boundary;

/// The rows of one `(partition, epoch)` in the stored-state Arrow form
/// ([`crate::config::ViewDef::state_schema`]).
#[derive(Debug, Clone)]
pub struct SpeedPart {
    pub partition: i32,
    pub epoch: i64,
    /// Every offset of the epoch has been read: its rows never change again.
    pub sealed: bool,
    pub batch: RecordBatch,
    /// Events counted in the epoch (after the view's filter).
    pub events: u64,
    /// Largest event time counted in the epoch, epoch ms.
    pub newest_event_ms: Option<i64>,
}

/// A view's speed rows above a boundary, one part per epoch, ready to be merged with batch rows.
#[derive(Debug, Clone, Default)]
pub struct SpeedSnapshot {
    pub parts: Vec<SpeedPart>,
    /// Events counted in the epochs taken.
    pub events: u64,
    /// Largest event time counted in the epochs taken, epoch ms.
    pub newest_event_ms: Option<i64>,
}

impl SpeedSnapshot {
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.batch.num_rows()).sum()
    }

    pub fn batches(&self) -> Vec<RecordBatch> {
        self.parts.iter().map(|p| p.batch.clone()).collect()
    }

    /// Adds one part, with its events and newest event time.
    pub fn push(&mut self, part: SpeedPart) {
        self.events += part.events;
        self.newest_event_ms = self.newest_event_ms.max(part.newest_event_ms);
        self.parts.push(part);
    }
}

/// One partition of the speed layer as status pages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionHealth {
    /// Where consumption (re)started from the boundary.
    pub start: i64,
    /// The next offset to aggregate: everything below it is counted.
    pub next: i64,
    /// The broker's end when last asked.
    pub high_watermark: i64,
    pub stalled: bool,
    /// Offsets `[from, to]` above where the speed layer had to start that Kafka's retention
    /// deleted before it read them: an answer whose batch version does not cover them misses them.
    pub missing: Option<(i64, i64)>,
}

impl PartitionHealth {
    pub fn lag(&self) -> u64 {
        (self.high_watermark - self.next).max(0) as u64
    }
}

/// The speed layer's lag per partition and readiness as Prometheus samples, the same whether the
/// layer reads Kafka here or merges speed nodes.
pub fn expose_progress(
    out: &mut super::prometheus::Exposition,
    partitions: &BTreeMap<i32, PartitionHealth>,
    ready: bool,
) {
    out.family(
        "tributary_speed_lag_messages",
        "gauge",
        "messages between the broker's end and the speed layer, per partition",
    );
    for (partition, health) in partitions {
        out.sample(
            "tributary_speed_lag_messages",
            &[("partition", partition.to_string())],
            health.lag() as f64,
        );
    }
    out.gauge(
        "tributary_speed_ready",
        "1 when the speed layer is ready: within ready_max_lag of the log and not stalled",
        f64::from(u8::from(ready)),
    );
}

/// What one query takes from the speed layer, all read at one instant: the states agree with the
/// offsets (a poll step applies under one lock).
#[derive(Debug, Clone)]
pub struct SpeedPin {
    pub snapshot: SpeedSnapshot,
    /// Per partition, the next offset the speed layer will read: everything below it is counted.
    pub next_offsets: BTreeMap<i32, i64>,
    /// [`SpeedView::restarts`] when pinned.
    pub restarts: u64,
    /// Per partition counted, its progress against the broker's end.
    pub partitions: BTreeMap<i32, PartitionHealth>,
    /// The topic's partitions the rows lack above the boundary: not read by this speed layer (a
    /// speed node), or, on a serving node of a split speed layer, with no speed node up that
    /// holds their epochs from the boundary on.
    pub unread: Vec<i32>,
    /// On a serving node of a split speed layer, the speed node each partition was taken from.
    pub nodes: BTreeMap<i32, String>,
}

/// The speed layer as the serving layer uses it. Views are addressed by their index in the list
/// both layers were built from: the configuration's views, then the old definitions still answering
/// while their replacements build (`Loaded::speed_views` in the serving layer).
pub trait SpeedView: StatusSource {
    /// View `view`'s states in the epochs at or above `from` (a batch version's boundary).
    fn pin(&self, view: usize, from: &Boundary) -> Result<SpeedPin, ArrowError>;

    /// Drops view `view`'s epochs below `boundary`: a new batch version covering them is live and
    /// no query can pair them with an older one. The consumer's position is unchanged.
    fn drop_below(&self, view: usize, boundary: &Boundary);

    /// Forgets every state and re-reads the log from `boundary`: for a live version whose boundary
    /// is lower than what the states start at (a rollback, a definition change, a new offset
    /// generation), since dropped epochs cannot come back otherwise.
    fn restart_at(&self, boundary: Boundary);

    /// Stops aggregating view `view` and forgets its states: an old definition kept while its
    /// replacement was built (blue/green), once the replacement's first version is live.
    fn retire(&self, view: usize);

    /// How many times the states were forgotten ([`Self::restart_at`]): sealed epochs read after a
    /// restart may belong to another log, so caches key on this.
    fn restarts(&self) -> u64;

    /// Caught up with the backlog present when consumption (re)started, within
    /// [`Self::ready_max_lag`] of the broker's end on every partition and not stalled.
    fn ready(&self) -> bool;

    /// Per partition: start, next offset, the broker's end, and whether it is stalled.
    fn partitions(&self) -> BTreeMap<i32, PartitionHealth>;

    /// `[serving] ready_max_lag`: the most messages per partition an answer may miss and still be
    /// complete.
    fn ready_max_lag(&self) -> u64;

    /// The topic's partitions this speed layer does not read (a speed node of a split speed
    /// layer): its answers miss them.
    fn unread(&self) -> Vec<i32> {
        Vec::new()
    }

    /// The states of the view of `definition_hash` for another process (a serving node), without
    /// the sealed `(partition, epoch)` parts it holds; `None` when no view has that definition.
    fn export(
        &self,
        definition_hash: &str,
        have: &BTreeSet<(i32, i64)>,
    ) -> Result<Option<Vec<u8>>, ArrowError> {
        let _ = (definition_hash, have);
        Ok(None)
    }
}

/// `have` as the export's query parameter: per partition, epochs or inclusive ranges of them
/// (`0:0-41,2:3-9,2:12`).
pub fn format_have(have: &BTreeSet<(i32, i64)>) -> String {
    let mut ranges: Vec<(i32, i64, i64)> = Vec::new();
    for &(partition, epoch) in have {
        match ranges.last_mut() {
            Some((p, _, last)) if *p == partition && *last + 1 == epoch => *last = epoch,
            _ => ranges.push((partition, epoch, epoch)),
        }
    }
    let items: Vec<String> = (ranges.into_iter())
        .map(|(partition, first, last)| match first == last {
            true => format!("{partition}:{first}"),
            false => format!("{partition}:{first}-{last}"),
        })
        .collect();
    items.join(",")
}

/// Reads [`format_have`]'s form back; the message says what is wrong.
pub fn parse_have(text: &str) -> Result<BTreeSet<(i32, i64)>, String> {
    let mut have = BTreeSet::new();
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let bad = || format!("have: {item:?} is not partition:epoch or partition:first-last");
        let (partition, epochs) = item.split_once(':').ok_or_else(bad)?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        let (first, last) = epochs.split_once('-').unwrap_or((epochs, epochs));
        let (first, last): (i64, i64) = (
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        );
        if first > last || last - first > 1_000_000 {
            return Err(bad());
        }
        have.extend((first..=last).map(|epoch| (partition, epoch)));
    }
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_parts_read_back_as_partitions_with_epochs_and_ranges() {
        let have = parse_have("0:0-2,2:7").unwrap();
        assert_eq!(
            have.iter().copied().collect::<Vec<_>>(),
            [(0, 0), (0, 1), (0, 2), (2, 7)]
        );
        assert_eq!(format_have(&have), "0:0-2,2:7");
        let gaps = BTreeSet::from([(1, 4), (1, 5), (1, 7), (3, 0)]);
        assert_eq!(format_have(&gaps), "1:4-5,1:7,3:0");
        assert_eq!(parse_have(&format_have(&gaps)).unwrap(), gaps);
        assert!(parse_have("").unwrap().is_empty());
        assert_eq!(format_have(&BTreeSet::new()), "");
        for bad in ["0", "x:1", "0:3-1", "0:a-b"] {
            assert!(parse_have(bad).is_err(), "{bad}");
        }
    }
}
