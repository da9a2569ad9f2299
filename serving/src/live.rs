//! Which batch version each view serves, and the pin a query takes (ARCHITECTURE.md §5).
//!
//! [`Live`] follows every view's `_current` pointer. A newly published version is loaded (into
//! memory when it fits the budget, else scanned from its Parquet parts) *before* it replaces the
//! old one, so a query never waits on a load. The swap and the speed layer's adjustment happen
//! under one write lock that [`Live::pin`] takes for reading, and a pin copies the speed rows it
//! needs while holding it; so no query can pair the new version with speed epochs the old version
//! needed, or the old version with epochs the new one let go:
//! - a version whose boundary is at or above the previous one drops the speed epochs it covers;
//! - one whose boundary is *lower* on some partition (a rollback; a definition change, which
//!   leaves no usable version; a version of an older offset generation, whose boundary says
//!   nothing about the current log) makes the speed layer forget its states and re-read the log
//!   from the lowest boundary of all views, since dropped epochs cannot come back otherwise. Until
//!   it has caught up again, answers miss the re-read events (`meta.speed.next_offsets` shows it,
//!   and `meta.complete` is false).
//!
//! A pin also copies the speed layer's progress against the broker's end, so an answer says
//! whether it is complete: within `[serving] ready_max_lag` messages of the log on every
//! partition, and the speed layer not stalled.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use tributary_schemas::config::ViewDef;
use tributary_schemas::lake::{Boundary, Lake, LakeError, Manifest};
use tributary_schemas::layers::speed::{PartitionHealth, SpeedSnapshot, SpeedView};

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot read the live versions")]
    Lake(#[from] LakeError),
    #[error("cannot build the speed snapshot")]
    Snapshot(#[from] arrow::error::ArrowError),
}

/// Where a version's rows are read from.
#[derive(Debug)]
pub enum BatchData {
    /// Decoded once when the version went live.
    Memory(Vec<RecordBatch>),
    /// Too big for the memory budget: each query scans these parts (lake paths).
    Parquet(Vec<String>),
}

/// One live batch version of one view.
#[derive(Debug)]
pub struct BatchVersion {
    pub manifest: Manifest,
    /// Where this view's speed rows start: the manifest's boundary, or nothing when the manifest is
    /// of an older offset generation (its offsets are not the current log's).
    pub speed_boundary: Boundary,
    /// Whether the manifest is of the topic's current offset generation.
    pub current_generation: bool,
    pub data: BatchData,
}

impl BatchVersion {
    pub fn in_memory(&self) -> bool {
        matches!(self.data, BatchData::Memory(_))
    }
}

/// What one query merges for one view: a batch version (if any) and the speed rows above it.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub version: Option<Arc<BatchVersion>>,
    pub speed: SpeedSnapshot,
    /// The boundary the speed rows start at.
    pub speed_from: Boundary,
    /// Per partition, the next offset the speed layer will read: everything below it is counted.
    pub speed_next: BTreeMap<i32, i64>,
    /// [`SpeedView::restarts`] when pinned.
    pub speed_restarts: u64,
    /// The speed layer's progress against the broker's end when pinned.
    pub speed_health: BTreeMap<i32, PartitionHealth>,
    /// `[serving] ready_max_lag`: the most messages per partition an answer may miss and still
    /// be complete.
    pub ready_max_lag: u64,
}

impl Pinned {
    /// Per partition, the messages between the broker's end and what this answer counts.
    pub fn speed_lag(&self) -> BTreeMap<i32, u64> {
        (self.speed_health.iter())
            .map(|(&partition, health)| {
                let counted = (self.speed_next.get(&partition).copied())
                    .unwrap_or(health.next)
                    .max(health.next);
                (partition, (health.high_watermark - counted).max(0) as u64)
            })
            .collect()
    }

    /// The partitions the speed layer is stalled on.
    pub fn speed_stalled(&self) -> Vec<i32> {
        (self.speed_health.iter())
            .filter(|(_, health)| health.stalled)
            .map(|(&partition, _)| partition)
            .collect()
    }

    /// Per partition, offsets `[from, to]` the answer misses: Kafka deleted them before the speed
    /// layer read them, and the pinned batch version does not cover them (yet: the archiver may
    /// hold them, and the next batch run then does).
    pub fn missing(&self) -> BTreeMap<i32, (i64, i64)> {
        (self.speed_health.iter())
            .filter_map(|(&partition, health)| {
                let (from, to) = health.missing?;
                let covered = self
                    .version
                    .as_ref()
                    .map_or(0, |v| v.speed_boundary.get(partition));
                (to >= covered).then_some((partition, (from.max(covered), to)))
            })
            .collect()
    }

    /// Whether the answer misses at most `ready_max_lag` messages per partition of the log, and
    /// none that Kafka deleted unread (it is exact for the offsets it covers either way).
    pub fn complete(&self) -> bool {
        !self.speed_health.is_empty()
            && self.missing().is_empty()
            && self.speed_stalled().is_empty()
            && self
                .speed_lag()
                .values()
                .all(|&lag| lag <= self.ready_max_lag)
    }
}

/// The live versions of every view, kept in step with the speed layer.
#[derive(Debug)]
pub struct Live {
    lake: Lake,
    topic: String,
    views: Vec<ViewDef>,
    budget_bytes: usize,
    versions: RwLock<Vec<Option<Arc<BatchVersion>>>>,
    speed: Arc<dyn SpeedView>,
}

impl Live {
    /// Loads every view's live version. Call before the speed layer starts:
    /// [`Self::speed_start`] says where it must begin.
    pub async fn load_versions(
        lake: &Lake,
        topic: &str,
        views: &[ViewDef],
        budget_bytes: usize,
    ) -> Result<Vec<Option<Arc<BatchVersion>>>, LiveError> {
        let generation = lake.generations(topic).await?.current;
        let mut versions = Vec::with_capacity(views.len());
        for view in views {
            let version = match lake.current(&view.name).await? {
                Some(number) => load(lake, view, number, generation, budget_bytes).await?,
                None => None,
            };
            versions.push(version.map(Arc::new));
        }
        Ok(versions)
    }

    /// The lowest boundary of all views: where the speed layer reads from.
    pub fn speed_start(versions: &[Option<Arc<BatchVersion>>]) -> Boundary {
        let mut start: Option<Boundary> = None;
        for version in versions {
            let boundary = version
                .as_ref()
                .map(|v| v.speed_boundary.clone())
                .unwrap_or_default();
            start = Some(match start {
                None => boundary,
                Some(low) => lowest(&low, &boundary),
            });
        }
        start.unwrap_or_default()
    }

    pub fn new(
        lake: Lake,
        topic: String,
        views: Vec<ViewDef>,
        budget_bytes: usize,
        versions: Vec<Option<Arc<BatchVersion>>>,
        speed: Arc<dyn SpeedView>,
    ) -> Self {
        Self {
            lake,
            topic,
            views,
            budget_bytes,
            versions: RwLock::new(versions),
            speed,
        }
    }

    pub fn views(&self) -> &[ViewDef] {
        &self.views
    }

    pub fn speed(&self) -> &Arc<dyn SpeedView> {
        &self.speed
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The live version of every view (for status pages; queries use [`Self::pin`]).
    pub fn versions(&self) -> Vec<Option<Arc<BatchVersion>>> {
        self.versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pins view `view`'s live version with the speed rows above its boundary.
    pub fn pin(&self, view: usize) -> Result<Pinned, LiveError> {
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        let version = versions[view].clone();
        let speed_from = version
            .as_ref()
            .map(|v| v.speed_boundary.clone())
            .unwrap_or_default();
        let speed = self.speed.pin(view, &speed_from);
        drop(versions);
        let speed = speed?;
        Ok(Pinned {
            version,
            speed: speed.snapshot,
            speed_from,
            speed_next: speed.next_offsets,
            speed_restarts: speed.restarts,
            speed_health: self.speed.partitions(),
            ready_max_lag: self.speed.ready_max_lag(),
        })
    }

    /// Checks every view's `_current` and makes newly published versions live. Returns the views
    /// whose version changed.
    pub async fn refresh(&self) -> Result<Vec<String>, LiveError> {
        let lake = &self.lake;
        let generation = lake.generations(&self.topic).await?.current;
        let current = self.versions();
        let mut loaded = Vec::new();
        for (index, view) in self.views.iter().enumerate() {
            let live = current[index].as_ref();
            let number = lake.current(&view.name).await?;
            let unchanged = match (live, number) {
                (Some(live), Some(number)) => {
                    live.manifest.version == number
                        && live.current_generation == (live.manifest.generation == generation)
                }
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let version = match number {
                Some(number) => load(lake, view, number, generation, self.budget_bytes).await?,
                None => None,
            };
            loaded.push((index, version.map(Arc::new)));
        }
        if loaded.is_empty() {
            return Ok(Vec::new());
        }
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        let mut restart = false;
        let mut changed = Vec::new();
        for (index, version) in loaded {
            let old = boundary_of(versions[index].as_ref());
            let new = boundary_of(version.as_ref());
            restart |= (old.0.keys()).any(|&p| new.get(p) < old.get(p));
            tracing::info!(
                view = self.views[index].name,
                version = version.as_ref().map(|v| v.manifest.version),
                boundary = ?new.0,
                in_memory = version.as_ref().map(|v| v.in_memory()),
                "batch version live"
            );
            if !restart {
                self.speed.drop_below(index, &new);
            }
            versions[index] = version;
            changed.push(self.views[index].name.clone());
        }
        if restart {
            let start = Self::speed_start(&versions);
            tracing::warn!(
                boundary = ?start.0,
                "a live version's boundary went down (rollback, definition change or new offset generation): the speed layer re-reads the log from there"
            );
            self.speed.restart_at(start);
        }
        Ok(changed)
    }
}

fn boundary_of(version: Option<&Arc<BatchVersion>>) -> Boundary {
    version
        .map(|v| v.speed_boundary.clone())
        .unwrap_or_default()
}

/// Per partition, the lower of two boundaries (a partition missing from one is at 0 there).
fn lowest(a: &Boundary, b: &Boundary) -> Boundary {
    let partitions = a.0.keys().chain(b.0.keys());
    Boundary(
        partitions
            .map(|&p| (p, a.get(p).min(b.get(p))))
            .filter(|&(_, w)| w > 0)
            .collect(),
    )
}

/// Loads version `number` of `view`, or `None` when it cannot be served: no manifest (being
/// written or collected) or built under another definition (the next recompute replaces it).
async fn load(
    lake: &Lake,
    view: &ViewDef,
    number: u64,
    generation: u32,
    budget_bytes: usize,
) -> Result<Option<BatchVersion>, LiveError> {
    let Some(manifest) = lake.manifest(&view.name, number).await? else {
        tracing::warn!(
            view = view.name,
            version = number,
            "_current names a version without a manifest"
        );
        return Ok(None);
    };
    if manifest.definition_hash != view.definition_hash() {
        tracing::warn!(
            view = view.name,
            version = number,
            "the live version was computed under another definition of the view; serving the speed layer only until the next recompute"
        );
        return Ok(None);
    }
    let current_generation = manifest.generation == generation;
    let speed_boundary = if current_generation {
        manifest.boundary.clone()
    } else {
        tracing::warn!(
            view = view.name,
            version = number,
            "the live version covers an older offset generation; the speed layer reads the current log from its start"
        );
        Boundary::default()
    };
    let files: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    let stored: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    let data = match (stored as usize) <= budget_bytes {
        true => read_parts(lake, view, &files, budget_bytes).await?,
        false => None,
    };
    Ok(Some(BatchVersion {
        manifest,
        speed_boundary,
        current_generation,
        data: data.map_or(BatchData::Parquet(files), BatchData::Memory),
    }))
}

/// Decodes the parts, or `None` once they pass `budget_bytes` in memory.
async fn read_parts(
    lake: &Lake,
    view: &ViewDef,
    files: &[String],
    budget_bytes: usize,
) -> Result<Option<Vec<RecordBatch>>, LiveError> {
    let schema = view.state_schema();
    let (mut batches, mut bytes) = (Vec::new(), 0usize);
    for file in files {
        for batch in lake.read_parquet(file, 64 * 1024).await? {
            let batch = RecordBatch::try_new(schema.clone(), batch?.columns().to_vec())?;
            bytes += batch.get_array_memory_size();
            if bytes > budget_bytes {
                return Ok(None);
            }
            batches.push(batch);
        }
    }
    Ok(Some(batches))
}

#[cfg(test)]
mod tests {
    use tributary_schemas::lake::Manifest;

    use super::*;

    fn pinned(missing: Option<(i64, i64)>, covered: Option<i64>) -> Pinned {
        let health = PartitionHealth {
            start: 100,
            next: 500,
            high_watermark: 500,
            stalled: false,
            missing,
        };
        let version = covered.map(|w| {
            let json = format!(
                r#"{{"format":1,"view":"v","definition_hash":"h","version":1,"created_at":"2026-12-06T00:00:00Z","row_count":0,"files":[],"epoch_size":1,"boundary":{{"0":{w}}}}}"#
            );
            let manifest = Manifest::from_json(json.as_bytes()).unwrap();
            Arc::new(BatchVersion {
                speed_boundary: manifest.boundary.clone(),
                manifest,
                current_generation: true,
                data: BatchData::Memory(Vec::new()),
            })
        });
        Pinned {
            version,
            speed: SpeedSnapshot::default(),
            speed_from: Boundary::default(),
            speed_next: BTreeMap::new(),
            speed_restarts: 0,
            speed_health: BTreeMap::from([(0, health)]),
            ready_max_lag: 10,
        }
    }

    #[test]
    fn offsets_kafka_deleted_unread_make_an_answer_incomplete_until_a_version_covers_them() {
        assert!(pinned(None, None).complete());
        let lost = pinned(Some((40, 99)), None);
        assert_eq!(lost.missing(), BTreeMap::from([(0, (40, 99))]));
        assert!(!lost.complete(), "no batch version covers 40..=99");
        let partly = pinned(Some((40, 99)), Some(70));
        assert_eq!(partly.missing(), BTreeMap::from([(0, (70, 99))]));
        assert!(!partly.complete());
        let covered = pinned(Some((40, 99)), Some(100));
        assert!(covered.missing().is_empty());
        assert!(covered.complete(), "the batch version holds them");
    }
}
