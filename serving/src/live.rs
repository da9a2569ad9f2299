//! Which batch version each view serves, and the pin a query takes (ARCHITECTURE.md §5, §11).
//!
//! [`Live`] follows every view's `_current` pointer. A newly published version is loaded (into
//! memory when it fits the budget, else scanned from its Parquet parts) *before* it replaces the
//! old one, so a query never waits on a load. The swap and the speed layer's adjustment happen
//! under one write lock that [`Live::pin`] takes for reading, and a pin copies the speed rows it
//! needs while holding it; so no query can pair the new version with speed epochs the old version
//! needed, or the old version with epochs the new one let go:
//! - a version whose boundary is at or above the previous one drops the speed epochs it covers;
//! - one whose boundary is *lower* on some partition (a rollback; a version of an older offset
//!   generation, whose boundary says nothing about the current log) makes the speed layer forget
//!   its states and re-read the log from the lowest boundary of all views, since dropped epochs
//!   cannot come back otherwise. Until it has caught up again, answers miss the re-read events
//!   (`meta.speed.next_offsets` shows it, and `meta.complete` is false).
//!
//! **Blue/green.** A view whose live version was computed under another definition than the
//! configured one keeps answering under that old definition ([`Served`]), from its version and the
//! speed layer's states of the old definition, while the speed layer also aggregates the
//! configured one from the same start. When the recompute publishes the first version under the
//! configured definition (its boundary is at or above the old one's), the view switches in the
//! same step as any swap: the new definition's speed epochs below the new boundary are dropped,
//! the old definition's states retired, and nothing re-reads the log. A view with no version at
//! all while the speed layer starts above the log's beginning (one added to a lake with history)
//! is [`Pinned::short`]: the query layer answers it `view_building` rather than short.
//!
//! A pin also copies the speed layer's progress against the broker's end, so an answer says
//! whether it is complete: within `[serving] ready_max_lag` messages of the log on every
//! partition, and the speed layer not stalled.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use tributary_schemas::config::ViewDef;
use tributary_schemas::event::EventSchema;
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

/// What answers one view: its live batch version under the definition the version was computed
/// with, and the speed layer's states of that definition.
#[derive(Debug, Clone)]
pub struct Served {
    pub version: Option<Arc<BatchVersion>>,
    /// The configured definition, or, while the configured one is being built (a changed view's
    /// first version under it is not published yet), the one its live version was computed under.
    pub definition: Arc<ViewDef>,
    /// The speed layer's index of `definition`'s states.
    pub speed_index: usize,
}

/// What one query merges for one view: a batch version (if any) and the speed rows above it.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub version: Option<Arc<BatchVersion>>,
    /// The definition the version and the speed rows are of (see [`Served::definition`]).
    pub definition: Arc<ViewDef>,
    /// `definition` is the configured one.
    pub configured: bool,
    /// No batch version of any definition and the speed layer started above the log's beginning:
    /// the rows miss the history below where it started (a view added to a lake with history,
    /// until its first version).
    pub short: bool,
    pub speed: SpeedSnapshot,
    /// The boundary the speed rows start at.
    pub speed_from: Boundary,
    /// Per partition, the next offset the speed layer will read: everything below it is counted.
    pub speed_next: BTreeMap<i32, i64>,
    /// [`SpeedView::restarts`] when pinned.
    pub speed_restarts: u64,
    /// The speed layer's progress against the broker's end when pinned.
    pub speed_health: BTreeMap<i32, PartitionHealth>,
    /// The topic's partitions whose events above the batch boundary the answer misses: a speed
    /// node does not read them, or no speed node up holds them for a serving node (`SpeedPin::unread`).
    pub speed_unread: Vec<i32>,
    /// The speed node each partition was taken from (a serving node of a split speed layer).
    pub speed_nodes: BTreeMap<i32, String>,
    /// `[serving] ready_max_lag`: the most messages per partition an answer may miss and still
    /// be complete.
    pub ready_max_lag: u64,
}

impl Pinned {
    /// Whether the view is being built under its configured definition: it answers under an old
    /// definition, or not at all.
    pub fn building(&self) -> bool {
        !self.configured || self.short
    }

    /// Whether a batch version under the configured definition answers (`/v1/views` state
    /// `live`); otherwise the view is being built.
    pub fn live(&self) -> bool {
        self.configured && self.version.is_some()
    }

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
            && !self.short
            && self.speed_unread.is_empty()
            && self.missing().is_empty()
            && self.speed_stalled().is_empty()
            && self
                .speed_lag()
                .values()
                .all(|&lag| lag <= self.ready_max_lag)
    }
}

/// Every view's live version at start, and the definitions the speed layer must aggregate.
#[derive(Debug)]
pub struct Loaded {
    /// Per configured view.
    pub served: Vec<Served>,
    /// Old definitions answering while their views' configured definitions build: the speed layer
    /// aggregates them after the configured views ([`Self::speed_views`]).
    pub legacy: Vec<ViewDef>,
}

impl Loaded {
    /// No batch version at all (a new lake; tests of the speed layer alone).
    pub fn none(views: &[ViewDef]) -> Self {
        let served = (views.iter().enumerate())
            .map(|(index, view)| Served {
                version: None,
                definition: Arc::new(view.clone()),
                speed_index: index,
            })
            .collect();
        Self {
            served,
            legacy: Vec::new(),
        }
    }

    /// Loads every view's live version. A version computed under another definition than the
    /// configured one is served under its own (from its manifest's `definition`) while the
    /// configured one builds, when `events` still reads every field it uses with the same types;
    /// otherwise the view has no version until its first one under the configured definition.
    pub async fn load(
        lake: &Lake,
        topic: &str,
        events: &EventSchema,
        views: &[ViewDef],
        budget_bytes: usize,
    ) -> Result<Self, LiveError> {
        let generation = lake.generations(topic).await?.current;
        let mut loaded = Self::none(views);
        for (index, view) in views.iter().enumerate() {
            let Some(number) = lake.current(&view.name).await? else {
                continue;
            };
            let Some(manifest) = live_manifest(lake, &view.name, number).await? else {
                continue;
            };
            let definition = if manifest.definition_hash == view.definition_hash() {
                view.clone()
            } else {
                match old_definition(&manifest, events, view) {
                    Some(old) => {
                        tracing::info!(
                            view = view.name,
                            version = number,
                            "the view's definition changed: its live version answers under the definition it was computed with until the next recompute publishes one under the new definition"
                        );
                        loaded.served[index].speed_index = views.len() + loaded.legacy.len();
                        loaded.legacy.push(old.clone());
                        old
                    }
                    None => {
                        tracing::warn!(
                            view = view.name,
                            version = number,
                            "the live version was computed under another definition the event schema no longer reads: the view is building until the next recompute"
                        );
                        continue;
                    }
                }
            };
            let version =
                make_version(lake, &definition, manifest, generation, budget_bytes).await?;
            loaded.served[index].version = Some(Arc::new(version));
            loaded.served[index].definition = Arc::new(definition);
        }
        Ok(loaded)
    }

    /// The definitions the speed layer aggregates, by the indices [`Served::speed_index`] names.
    pub fn speed_views(&self, views: &[ViewDef]) -> Vec<ViewDef> {
        views.iter().chain(&self.legacy).cloned().collect()
    }

    /// Where the speed layer reads from: the lowest boundary of the live versions (the log's
    /// beginning when there is none).
    pub fn speed_start(&self) -> Boundary {
        speed_start(&self.served)
    }
}

/// The lowest boundary of the served versions; views without one do not pull it down (they are
/// building: see [`Pinned::short`]), unless no view has a version.
fn speed_start(served: &[Served]) -> Boundary {
    (served.iter())
        .filter_map(|s| s.version.as_ref())
        .map(|v| v.speed_boundary.clone())
        .reduce(|low, boundary| lowest(&low, &boundary))
        .unwrap_or_default()
}

/// The definition `manifest` was computed under, rebuilt over today's `events`, when it still
/// means what it meant (the same hash: every field it reads has the same type).
fn old_definition(manifest: &Manifest, events: &EventSchema, view: &ViewDef) -> Option<ViewDef> {
    let spec = manifest.definition.as_ref()?;
    let old = ViewDef::from_spec(spec, events, view.late_after()).ok()?;
    (old.definition_hash() == manifest.definition_hash).then_some(old)
}

#[derive(Debug)]
struct State {
    served: Vec<Served>,
    /// Where the speed layer last (re)started reading.
    start: Boundary,
}

/// The live versions of every view, kept in step with the speed layer.
#[derive(Debug)]
pub struct Live {
    lake: Lake,
    topic: String,
    views: Vec<ViewDef>,
    budget_bytes: usize,
    state: RwLock<State>,
    speed: Arc<dyn SpeedView>,
}

impl Live {
    /// `speed` aggregates `loaded.speed_views(&views)`, from `loaded.speed_start()`.
    pub fn new(
        lake: Lake,
        topic: String,
        views: Vec<ViewDef>,
        budget_bytes: usize,
        loaded: Loaded,
        speed: Arc<dyn SpeedView>,
    ) -> Self {
        let start = loaded.speed_start();
        Self {
            lake,
            topic,
            views,
            budget_bytes,
            state: RwLock::new(State {
                served: loaded.served,
                start,
            }),
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

    /// What answers each view (for status pages; queries use [`Self::pin`]).
    pub fn served(&self) -> Vec<Served> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .served
            .clone()
    }

    /// The live version of every view.
    pub fn versions(&self) -> Vec<Option<Arc<BatchVersion>>> {
        self.served().into_iter().map(|s| s.version).collect()
    }

    /// Pins view `view`'s live version with the speed rows above its boundary.
    pub fn pin(&self, view: usize) -> Result<Pinned, LiveError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let served = state.served[view].clone();
        let short = served.version.is_none() && state.start.0.values().any(|&w| w > 0);
        let speed_from = boundary_of(served.version.as_ref());
        let speed = self.speed.pin(served.speed_index, &speed_from);
        drop(state);
        let speed = speed?;
        Ok(Pinned {
            version: served.version,
            configured: served.speed_index == view,
            definition: served.definition,
            short,
            speed: speed.snapshot,
            speed_from,
            speed_next: speed.next_offsets,
            speed_restarts: speed.restarts,
            speed_health: speed.partitions,
            speed_unread: speed.unread,
            speed_nodes: speed.nodes,
            ready_max_lag: self.speed.ready_max_lag(),
        })
    }

    /// Checks every view's `_current` and makes newly published versions live. Returns the views
    /// whose version changed.
    ///
    /// A view answering under an old definition switches to the configured one when its first
    /// version under it is published: in the same step as any swap, and the old definition's
    /// speed states go.
    pub async fn refresh(&self) -> Result<Vec<String>, LiveError> {
        let lake = &self.lake;
        let generation = lake.generations(&self.topic).await?.current;
        let current = self.served();
        let mut loaded = Vec::new();
        for (index, view) in self.views.iter().enumerate() {
            let served = &current[index];
            let number = lake.current(&view.name).await?;
            let unchanged = match (served.version.as_ref(), number) {
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
            let manifest = match number {
                Some(number) => live_manifest(lake, &view.name, number).await?,
                None => None,
            };
            // The configured definition's version, or one more of the old definition still served.
            let definition = manifest.as_ref().and_then(|manifest| {
                [(view, index), (&served.definition, served.speed_index)]
                    .into_iter()
                    .find(|(def, _)| def.definition_hash() == manifest.definition_hash)
                    .map(|(def, speed_index)| (def.clone(), speed_index))
            });
            let next = match (manifest, definition) {
                (Some(manifest), Some((definition, speed_index))) => {
                    let version =
                        make_version(lake, &definition, manifest, generation, self.budget_bytes)
                            .await?;
                    Served {
                        version: Some(Arc::new(version)),
                        definition: Arc::new(definition),
                        speed_index,
                    }
                }
                (manifest, _) => {
                    if let Some(manifest) = manifest {
                        tracing::warn!(
                            view = view.name,
                            version = manifest.version,
                            "the live version was computed under another definition: the view is building until the next recompute"
                        );
                    }
                    Served {
                        version: None,
                        definition: Arc::new(view.clone()),
                        speed_index: index,
                    }
                }
            };
            loaded.push((index, next));
        }
        if loaded.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut restart = false;
        let mut changed = Vec::new();
        for (index, served) in loaded {
            let old = &state.served[index];
            let old_boundary = boundary_of(old.version.as_ref());
            let new = boundary_of(served.version.as_ref());
            restart |= (old_boundary.0.keys()).any(|&p| new.get(p) < old_boundary.get(p));
            tracing::info!(
                view = self.views[index].name,
                version = served.version.as_ref().map(|v| v.manifest.version),
                boundary = ?new.0,
                in_memory = served.version.as_ref().map(|v| v.in_memory()),
                switched = old.speed_index != served.speed_index,
                "batch version live"
            );
            if old.speed_index != served.speed_index {
                // The old definition answered until now; nothing pins it any more.
                self.speed.retire(old.speed_index);
            }
            if !restart {
                self.speed.drop_below(served.speed_index, &new);
            }
            state.served[index] = served;
            changed.push(self.views[index].name.clone());
        }
        if restart {
            let start = speed_start(&state.served);
            tracing::warn!(
                boundary = ?start.0,
                "a live version's boundary went down (a rollback or a new offset generation): the speed layer re-reads the log from there"
            );
            self.speed.restart_at(start.clone());
            state.start = start;
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

/// Version `number`'s manifest, or `None` (said in the log) when `_current` names a version
/// without one (being written or collected).
async fn live_manifest(
    lake: &Lake,
    view: &str,
    number: u64,
) -> Result<Option<Manifest>, LiveError> {
    let manifest = lake.manifest(view, number).await?;
    if manifest.is_none() {
        tracing::warn!(
            view,
            version = number,
            "_current names a version without a manifest"
        );
    }
    Ok(manifest)
}

/// The version `manifest` describes, read under `view` (the definition it was computed with).
async fn make_version(
    lake: &Lake,
    view: &ViewDef,
    manifest: Manifest,
    generation: u32,
    budget_bytes: usize,
) -> Result<BatchVersion, LiveError> {
    let current_generation = manifest.generation == generation;
    let speed_boundary = if current_generation {
        manifest.boundary.clone()
    } else {
        tracing::warn!(
            view = view.name,
            version = manifest.version,
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
    Ok(BatchVersion {
        manifest,
        speed_boundary,
        current_generation,
        data: data.map_or(BatchData::Parquet(files), BatchData::Memory),
    })
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

/// The default configuration's first view, for unit tests' pins.
#[cfg(test)]
pub(crate) fn default_view() -> Arc<ViewDef> {
    let config = tributary_schemas::config::Config::from_sources(None, []).unwrap();
    Arc::new(config.views[0].clone())
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
            definition: default_view(),
            configured: true,
            short: false,
            speed: SpeedSnapshot::default(),
            speed_from: Boundary::default(),
            speed_next: BTreeMap::new(),
            speed_restarts: 0,
            speed_health: BTreeMap::from([(0, health)]),
            speed_unread: Vec::new(),
            speed_nodes: BTreeMap::new(),
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
