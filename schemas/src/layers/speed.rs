//! What the speed layer hands the serving layer: a view's states above a batch version's boundary
//! (one Arrow part per `(partition, epoch)`, ARCHITECTURE.md §5), the consumer's progress against
//! the broker's end, and the two calls a newly live batch version makes.

use std::collections::BTreeMap;

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

/// What one query takes from the speed layer, all read at one instant: the states agree with the
/// offsets (a poll step applies under one lock).
#[derive(Debug, Clone)]
pub struct SpeedPin {
    pub snapshot: SpeedSnapshot,
    /// Per partition, the next offset the speed layer will read: everything below it is counted.
    pub next_offsets: BTreeMap<i32, i64>,
    /// [`SpeedView::restarts`] when pinned.
    pub restarts: u64,
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
        have: &std::collections::BTreeSet<(i32, i64)>,
    ) -> Result<Option<Vec<u8>>, ArrowError> {
        let _ = (definition_hash, have);
        Ok(None)
    }
}
