//! Partial answers of batch versions, kept between queries.
//!
//! A batch version never changes, so the merged states of its rows for one query *shape* (time
//! range, filters, grouping and granularity) are the same for every query of that shape until the
//! version is replaced. A dashboard asks the same shapes again and again; the engine merges the
//! cached batch part with the speed layer's current rows, which is all that changes between two
//! refreshes. (Druid's per-segment result cache, for the same reason.) Entries are keyed by view,
//! version and generation, so a new version never sees an old entry; the least recently used
//! entries go first once the cache holds more than its budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;

#[derive(Debug)]
struct Entry {
    batches: Arc<Vec<RecordBatch>>,
    bytes: usize,
    used: u64,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

/// Merged batch states per (view, version, query shape).
#[derive(Debug)]
pub struct PartialCache {
    entries: Mutex<Entries>,
    budget_bytes: usize,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl PartialCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            entries: Mutex::default(),
            budget_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Vec<RecordBatch>>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.clock += 1;
        let clock = entries.clock;
        let found = entries.map.get_mut(key).map(|entry| {
            entry.used = clock;
            Arc::clone(&entry.batches)
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `batches` under `key` unless they alone take more than an eighth of the budget.
    pub fn insert(&self, key: String, batches: Arc<Vec<RecordBatch>>) {
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        if bytes > self.budget_bytes / 8 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.clock += 1;
        let used = entries.clock;
        if let Some(old) = entries.map.insert(
            key,
            Entry {
                batches,
                bytes,
                used,
            },
        ) {
            entries.bytes -= old.bytes;
        }
        entries.bytes += bytes;
        while entries.bytes > self.budget_bytes {
            let Some(oldest) = (entries.map.iter())
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = entries.map.remove(&oldest) {
                entries.bytes -= gone.bytes;
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.entries.lock().map(|e| e.bytes).unwrap_or_default()
    }
}
