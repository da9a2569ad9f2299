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
use tributary_schemas::layers::prometheus::Exposition;

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

    /// Hits, misses and the memory held, for `/metrics`.
    pub fn metrics(&self, out: &mut Exposition) {
        out.counter(
            "tributary_query_cache_hits_total",
            "queries (structured, and SQL roll-ups) answered with a cached immutable part",
            self.hits.load(Ordering::Relaxed),
        );
        out.counter(
            "tributary_query_cache_misses_total",
            "queries (structured, and SQL roll-ups) that merged an immutable part's rows",
            self.misses.load(Ordering::Relaxed),
        );
        out.gauge(
            "tributary_query_cache_bytes",
            "memory held by cached batch parts",
            self.bytes() as f64,
        );
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

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;

    fn answer(rows: i64) -> Arc<Vec<RecordBatch>> {
        let column = Int64Array::from_iter_values(0..rows);
        let batch = RecordBatch::try_from_iter([("v", Arc::new(column) as _)]).unwrap();
        Arc::new(vec![batch])
    }

    #[test]
    fn a_zero_budget_keeps_nothing_and_a_budget_evicts_the_least_recently_used() {
        let off = PartialCache::new(0);
        off.insert("a".to_owned(), answer(10));
        assert!(off.get("a").is_none());
        assert_eq!(off.bytes(), 0);

        let one = answer(1000);
        let size: usize = one.iter().map(RecordBatch::get_array_memory_size).sum();
        // Room for eight such answers: each is at most an eighth of the budget.
        let cache = PartialCache::new(size * 8);
        for key in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            cache.insert(key.to_owned(), answer(1000));
        }
        assert!(cache.get("a").is_some(), "a is now the most recently used");
        cache.insert("i".to_owned(), answer(1000));
        assert!(cache.get("b").is_none(), "b went first");
        assert!(cache.get("a").is_some());
        assert_eq!(cache.bytes(), size * 8);
    }
}
