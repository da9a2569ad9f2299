//! The states of one view in one `(partition, epoch)` (ARCHITECTURE.md §5): row keys, an index
//! from key to row, one state per metric per row, and the epoch's Arrow form once it is sealed.
//! Epochs are added by the aggregator, taken by a query's snapshot and dropped whole when a batch
//! version covers them.

use std::hash::BuildHasher;

use arrow::array::RecordBatch;
use hashbrown::HashTable;
use tributary_schemas::aggregate::MetricState;

/// The states of one view in one `(partition, epoch)`.
#[derive(Debug, Default)]
pub struct EpochStates {
    /// Row keys (`[bucket, dimension ids…]`, [`ViewStates::key_width`] words each), row after
    /// row: one allocation for all of them.
    pub(super) keys: Vec<u64>,
    /// The rows by their key's hash. A row's key is in `keys`, so the table holds only the row
    /// (compared word by word: slice equality would call `memcmp` for a few words).
    pub(super) index: HashTable<usize>,
    /// One state per [`ViewStates::defining`] metric per row, row-major.
    pub(super) states: Vec<MetricState>,
    /// Events counted (after the filter).
    pub events: u64,
    /// Largest event time counted, epoch ms.
    pub newest_event_ms: Option<i64>,
    /// The Arrow form, kept once the epoch is sealed (every offset read).
    pub(super) sealed: std::sync::OnceLock<RecordBatch>,
}

impl EpochStates {
    /// The row of `key`; a new one, its states appended by `empty`, when the key is new.
    pub(super) fn row(
        &mut self,
        key: &[u64],
        hasher: &impl BuildHasher,
        empty: impl FnOnce(&mut Vec<MetricState>),
    ) -> usize {
        let width = key.len();
        let keys = &self.keys;
        let key_of = |row: usize| &keys[row * width..(row + 1) * width];
        let hash = hasher.hash_one(key);
        let same = |&row: &usize| key_of(row).iter().zip(key).all(|(a, b)| a == b);
        if let Some(&row) = self.index.find(hash, same) {
            return row;
        }
        let row = self.index.len();
        self.keys.extend_from_slice(key);
        let keys = &self.keys;
        self.index.insert_unique(hash, row, |&row| {
            hasher.hash_one(&keys[row * width..(row + 1) * width])
        });
        empty(&mut self.states);
        row
    }

    pub fn rows(&self) -> usize {
        self.index.len()
    }
}
