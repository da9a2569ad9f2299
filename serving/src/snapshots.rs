//! Snapshots: the pins of one dashboard refresh, so that its panels read the same data.
//!
//! Every answer of `/v1/query` and `/v1/sql` names the snapshot it was computed from
//! (`meta.snapshot`, an opaque id). A request that passes that id back is answered from exactly the
//! same data: the same batch version of each view and the same speed states, so a total asked for
//! after its breakdown equals the breakdown's sum even if a batch version went live or events
//! arrived in between. A view enters a snapshot when the first request of that snapshot reads it;
//! from then on the snapshot answers it from that pin.
//!
//! Snapshots live `[serving] snapshot_ttl` after they were taken; an unknown or expired id is the
//! caller's 410 (`snapshot_expired`), never a silently fresher answer. The speed rows they hold are
//! bounded by `[serving] snapshot_max_mb`: past it the oldest go first. (Batch versions are shared
//! with the live ones, not copied: a snapshot keeps a replaced version alive for at most its TTL.)

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::live::Pinned;

/// The snapshots taken in the last `ttl`.
#[derive(Debug)]
pub struct Snapshots {
    ttl: Duration,
    max_bytes: usize,
    next: AtomicU64,
    /// Makes ids of different processes differ (an id is only ever valid in the process that
    /// made it).
    salt: u64,
    entries: Mutex<VecDeque<Arc<Snapshot>>>,
}

/// One snapshot: a pin per view read under it.
#[derive(Debug)]
pub struct Snapshot {
    id: String,
    taken: Instant,
    views: Mutex<Vec<Option<Pinned>>>,
    bytes: AtomicUsize,
}

/// A snapshot id that names no live snapshot.
#[derive(Debug, thiserror::Error)]
#[error(
    "snapshot {id:?} is unknown or expired (snapshots live {ttl:?}, [serving] snapshot_ttl); ask \
     without it for a new one"
)]
pub struct SnapshotExpired {
    pub id: String,
    pub ttl: Duration,
}

impl Snapshots {
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_bytes,
            next: AtomicU64::new(1),
            // Randomly keyed per process: ids do not repeat across restarts.
            salt: RandomState::new().hash_one(Instant::now()),
            entries: Mutex::default(),
        }
    }

    /// The snapshot `id` names, or a new one for `views` views when `id` is `None`.
    pub fn open(&self, id: Option<&str>, views: usize) -> Result<Arc<Snapshot>, SnapshotExpired> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.collect(&mut entries);
        if let Some(id) = id {
            return (entries.iter())
                .find(|s| s.id == id)
                .cloned()
                .ok_or_else(|| SnapshotExpired {
                    id: id.to_owned(),
                    ttl: self.ttl,
                });
        }
        drop(entries);
        Ok(self.take(views))
    }

    /// A new snapshot for `views` views.
    pub fn take(&self, views: usize) -> Arc<Snapshot> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let snapshot = Arc::new(Snapshot {
            id: format!("{:016x}{n:x}", self.salt),
            taken: Instant::now(),
            views: Mutex::new(vec![None; views]),
            bytes: AtomicUsize::new(0),
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.collect(&mut entries);
        entries.push_back(Arc::clone(&snapshot));
        snapshot
    }

    /// Drops the expired snapshots, then the oldest while the speed rows held pass the bound.
    fn collect(&self, entries: &mut VecDeque<Arc<Snapshot>>) {
        while entries
            .front()
            .is_some_and(|s| s.taken.elapsed() > self.ttl)
        {
            entries.pop_front();
        }
        let mut held: usize = entries
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum();
        while held > self.max_bytes {
            let Some(oldest) = entries.pop_front() else {
                break;
            };
            held -= oldest.bytes.load(Ordering::Relaxed);
        }
    }
}

impl Snapshot {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `view`'s pin in this snapshot; the first request to read it pins it with `pin`.
    pub fn pin<E>(
        &self,
        view: usize,
        pin: impl FnOnce() -> Result<Pinned, E>,
    ) -> Result<Pinned, E> {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pinned) = &views[view] {
            return Ok(pinned.clone());
        }
        let pinned = pin()?;
        let bytes: usize = (pinned.speed.parts.iter())
            .map(|part| part.batch.get_array_memory_size())
            .sum();
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        views[view] = Some(pinned.clone());
        Ok(pinned)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use tributary_schemas::layers::speed::{SpeedPart, SpeedSnapshot};

    use super::*;

    fn pinned(rows: usize) -> Pinned {
        let column: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
        Pinned {
            version: None,
            definition: crate::live::default_view(),
            configured: true,
            short: false,
            speed: SpeedSnapshot {
                parts: vec![SpeedPart {
                    partition: 0,
                    epoch: 0,
                    sealed: false,
                    batch: RecordBatch::try_from_iter([("n", column)]).unwrap(),
                    events: rows as u64,
                    newest_event_ms: None,
                }],
                ..SpeedSnapshot::default()
            },
            speed_from: Default::default(),
            speed_next: Default::default(),
            speed_restarts: 0,
            speed_health: Default::default(),
            speed_unread: Vec::new(),
            speed_nodes: BTreeMap::new(),
            ready_max_lag: 0,
        }
    }

    #[test]
    fn a_snapshot_answers_with_its_first_pin_until_it_expires() {
        let snapshots = Snapshots::new(Duration::from_millis(200), 1 << 20);
        let taken = snapshots.open(None, 2).unwrap();
        let first = taken.pin(1, || Ok::<_, ()>(pinned(10))).unwrap();
        let again = snapshots.open(Some(taken.id()), 2).unwrap();
        let second = again.pin(1, || Ok::<_, ()>(pinned(99))).unwrap();
        assert_eq!(second.speed.parts[0].batch, first.speed.parts[0].batch);
        let other = snapshots.open(None, 2).unwrap();
        assert_ne!(other.id(), taken.id());
        std::thread::sleep(Duration::from_millis(300));
        let expired = snapshots.open(Some(taken.id()), 2).unwrap_err();
        assert_eq!(expired.id, taken.id());
        assert!(
            expired.to_string().contains("unknown or expired"),
            "{expired}"
        );
        assert!(snapshots.open(Some("nonsense"), 2).is_err());
    }

    #[test]
    fn past_the_memory_bound_the_oldest_snapshots_go_first() {
        let one = pinned(10_000).speed.parts[0].batch.get_array_memory_size();
        let snapshots = Snapshots::new(Duration::from_secs(60), one * 2);
        let ids: Vec<String> = (0..3)
            .map(|_| {
                let snapshot = snapshots.open(None, 1).unwrap();
                snapshot.pin(0, || Ok::<_, ()>(pinned(10_000))).unwrap();
                snapshot.id().to_owned()
            })
            .collect();
        // Opening collects: three snapshots of one unit each exceed two units.
        assert!(snapshots.open(Some(&ids[0]), 1).is_err(), "the oldest went");
        assert!(snapshots.open(Some(&ids[1]), 1).is_ok());
        assert!(snapshots.open(Some(&ids[2]), 1).is_ok());
    }
}
