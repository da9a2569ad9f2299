//! The recompute: DataFusion turns the master dataset below the boundary into a new, immutable
//! version of each view, published atomically (ARCHITECTURE.md §4-§5).
//!
//! A run, per view:
//! 1. choose the boundary `W[p]` from the archiver's progress and list the raw files below it
//!    ([`plan::select_input`]); if the live version already has this boundary and definition, the
//!    view is **unchanged** and nothing is written;
//! 2. plan and run the aggregation on the batch runtime ([`plan::view_frame`]; the time sort is a
//!    [`time_sort::TimeSort`]), one range of event time at a time ([`slices`]: a slice holds only
//!    its own groups, and up to `[batch] threads` slices run at once), writing the sorted result in
//!    time order into Parquet parts of [`BatchSettings::part_rows`] rows under a **new** version
//!    directory (numbers are never reused, so leftovers of a crashed run are never overwritten);
//! 3. write `manifest.json`, then replace `_current`: the only step that changes what readers see.
//!    A crash before it leaves the previous version live and intact;
//! 4. garbage-collect: keep the live version and the newest `keep_versions` complete ones; delete
//!    the rest and any incomplete version left by a crashed run (manifest first, so a half-deleted
//!    version never looks complete).
//!
//! **Resources**: DataFusion runs on the recompute's own Tokio runtime (`[batch] threads`), so the
//! HTTP server and the speed layer keep their cores, with a [`FairSpillPool`] of
//! `[batch] memory_limit_mb`: aggregations and sorts spill to local disk past it instead of growing.
//!
//! **One run at a time**: in a process, a second [`Batch::run`] is refused while one is running;
//! across processes, the lake's [`lock::RunLock`] refuses it.

pub mod compact;
pub mod lock;
pub mod plan;
pub mod progress;
pub mod slices;
#[cfg(test)]
mod test_support;
pub mod time_sort;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use chrono::Utc;
use datafusion::common::DataFusionError;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::errors::ParquetError;
use tributary_schemas::config::{Config, ViewDef};
use tributary_schemas::event::EventSchema;
use tributary_schemas::lake::versions::{
    VersionError, list_versions, live_manifest, read_current, read_manifest, version_objects,
};
use tributary_schemas::lake::{
    CurrentPointer, MANIFEST_FORMAT, Manifest, ManifestFile, current_path, manifest_path,
    version_part,
};

use crate::parquet_io;
use lock::{LockError, RunLock};
use plan::{Input, InputFile, TimeRange};
use progress::{ProgressSink, RunProgress};
use slices::{FileSpans, SliceTarget, Span};

/// How the batch layer runs.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub topic: String,
    pub epoch_size: u64,
    pub keep_versions: usize,
    pub memory_limit_bytes: usize,
    pub threads: usize,
    /// Rows per view Parquet part (each part's row groups hold [`ROW_GROUP_ROWS`]).
    pub part_rows: usize,
    /// Input rows and view groups a time slice aims at (see [`slices`]; from the config,
    /// [`SliceTarget::for_pool`]): fewer slices when the live version shows few groups, or when
    /// the raw files' time statistics would make slices re-read much.
    pub slice: SliceTarget,
    /// Lease of the lake's run lock (renewed every quarter of it while a run lives).
    pub lock_lease: Duration,
}

/// Row group size of view parts: big enough for fast scans, small enough that a time-range query
/// prunes most of a part by the row groups' `time` statistics.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

impl BatchSettings {
    pub fn from_config(config: &Config) -> Self {
        let threads = match config.batch.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        let memory_limit_bytes = config.batch.memory_limit_mb.saturating_mul(1 << 20);
        Self {
            topic: config.kafka.topic.clone(),
            epoch_size: config.batch.epoch_size,
            keep_versions: config.batch.keep_versions,
            memory_limit_bytes,
            threads,
            part_rows: 1_000_000,
            slice: SliceTarget::for_pool(memory_limit_bytes, threads),
            lock_lease: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("a recompute is already running in this process")]
    AlreadyRunning,
    #[error(
        "the recompute was cancelled (shutting down); its unpublished files are collected by the next run"
    )]
    Cancelled,
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("there is no view named {name:?} (configured views: {available})")]
    UnknownView { name: String, available: String },
    #[error("view {view:?} has no version {version} with a manifest (versions: {available})")]
    UnknownVersion {
        view: String,
        version: u64,
        available: String,
    },
    #[error(
        "version {version} of view {view:?} was computed with another definition of the view (hash {found}, configured {expected}); run a recompute instead"
    )]
    DefinitionChanged {
        view: String,
        version: u64,
        found: String,
        expected: String,
    },
    #[error("version {version} of view {view:?} is missing its file {path}")]
    MissingFile {
        view: String,
        version: u64,
        path: String,
    },
    #[error("cannot access the lake")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("the recompute query failed")]
    Query(#[from] DataFusionError),
    #[error(
        "view {view:?} needs more memory than the recompute's pool holds even when spilling to disk: raise [batch] memory_limit_mb (now {limit_mb})"
    )]
    OutOfMemory {
        view: String,
        limit_mb: usize,
        source: DataFusionError,
    },
    #[error("cannot encode a view part")]
    Parquet(#[from] ParquetError),
    #[error("cannot start the batch runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the recompute task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl BatchError {
    /// A query that ran out of the memory pool names the setting to raise: DataFusion's own
    /// message speaks of reservations and operators, not of Tributary's configuration.
    fn naming_the_pool(self, view: &str, pool_bytes: usize) -> Self {
        match self {
            BatchError::Query(source)
                if matches!(source.find_root(), DataFusionError::ResourcesExhausted(_)) =>
            {
                BatchError::OutOfMemory {
                    view: view.to_owned(),
                    limit_mb: pool_bytes >> 20,
                    source,
                }
            }
            other => other,
        }
    }
}

/// What a run did to one view.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Published(Manifest),
    /// The live version already has this boundary and definition.
    Unchanged(Manifest),
    /// No partition has archived a whole epoch yet.
    NothingArchived,
}

impl Outcome {
    /// A stable name for logs, metrics and the API.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Published(_) => "published",
            Outcome::Unchanged(_) => "unchanged",
            Outcome::NothingArchived => "nothing_archived",
        }
    }

    /// The live version's manifest after the run, if there is one.
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Outcome::Published(manifest) | Outcome::Unchanged(manifest) => Some(manifest),
            Outcome::NothingArchived => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViewRun {
    pub view: String,
    pub outcome: Outcome,
    /// Raw rows the scan read (0 when nothing was computed).
    pub rows_read: u64,
    /// Raw rows the scans decoded: more than `rows_read` where time slices share a page.
    pub rows_scanned: u64,
    pub elapsed: Duration,
    /// Largest DataFusion memory reservation during the run.
    pub peak_memory_bytes: usize,
    /// Bytes spilled to local disk because the memory pool was full.
    pub spilled_bytes: u64,
    /// Time slices the input was aggregated in (see [`slices`]; 0 when nothing was computed).
    pub slices: usize,
    /// Versions removed by garbage collection after publishing.
    pub removed_versions: Vec<u64>,
}

/// One view's versions, for `tributary batch list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewVersions {
    pub view: String,
    pub current: Option<u64>,
    /// Complete versions (with a manifest), ascending.
    pub versions: Vec<Manifest>,
    /// Version directories without a manifest (a run in progress or a crashed one).
    pub incomplete: Vec<u64>,
}

/// The batch layer's recompute service: owns its runtime and runs one recompute at a time.
#[derive(Debug)]
pub struct Batch {
    settings: BatchSettings,
    events: EventSchema,
    views: Vec<ViewDef>,
    store: Arc<dyn ObjectStore>,
    runtime: Option<tokio::runtime::Runtime>,
    running: tokio::sync::Mutex<()>,
    cancel: tokio::sync::watch::Sender<bool>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this may run inside another runtime (the server's).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Batch {
    pub fn new(
        settings: BatchSettings,
        events: EventSchema,
        views: Vec<ViewDef>,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Self, BatchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads.max(1))
            .thread_name("tributary-batch")
            .enable_all()
            .build()
            .map_err(BatchError::Runtime)?;
        Ok(Self {
            settings,
            events,
            views,
            store,
            runtime: Some(runtime),
            running: tokio::sync::Mutex::new(()),
            cancel: tokio::sync::watch::Sender::new(false),
        })
    }

    pub fn settings(&self) -> &BatchSettings {
        &self.settings
    }

    /// Stops a run in progress (and refuses new ones): for shutdown. The run's version is never
    /// published and its files are collected by the next run; the lock is released.
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Completes once [`Batch::cancel`] has been called (at once if it was): what a run in
    /// progress and a scheduler waiting for its next run select on.
    pub async fn cancelled(&self) {
        let mut cancel = self.cancel.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = cancel.wait_for(|&cancel| cancel).await;
    }

    fn view(&self, name: &str) -> Result<&ViewDef, BatchError> {
        self.views
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| BatchError::UnknownView {
                name: name.to_owned(),
                available: self
                    .views
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// `Cancelled` once [`Batch::cancel`] has been called: shutdown starts nothing new.
    fn refuse_if_cancelled(&self) -> Result<(), BatchError> {
        match *self.cancel.borrow() {
            true => Err(BatchError::Cancelled),
            false => Ok(()),
        }
    }

    /// Recomputes every view (or only `only`), one after the other.
    pub async fn run(
        &self,
        only: Option<&str>,
        progress: ProgressSink,
    ) -> Result<Vec<ViewRun>, BatchError> {
        let views: Vec<ViewDef> = match only {
            Some(name) => vec![self.view(name)?.clone()],
            None => self.views.clone(),
        };
        let _in_process = self
            .running
            .try_lock()
            .map_err(|_| BatchError::AlreadyRunning)?;
        self.refuse_if_cancelled()?;
        let lock = RunLock::acquire(Arc::clone(&self.store), self.settings.lock_lease).await?;
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as Batch");
        let mut runs = Vec::with_capacity(views.len());
        let mut failure = None;
        for view in views {
            let name = view.name.clone();
            let job = ViewJob {
                settings: self.settings.clone(),
                events: self.events.clone(),
                view,
                store: Arc::clone(&self.store),
                progress: Arc::clone(&progress),
            };
            // Dropping the job's task (aborting it) drops its plans and slice tasks with it.
            let task = AbortOnDrop(runtime.spawn(job.run()));
            let finished = tokio::select! {
                finished = task => finished,
                () = self.cancelled() => {
                    tracing::info!("recompute cancelled");
                    failure = Some(BatchError::Cancelled);
                    break;
                }
            };
            match finished {
                Ok(Ok(run)) => runs.push(run),
                Ok(Err(error)) => {
                    failure = Some(error.naming_the_pool(&name, self.settings.memory_limit_bytes));
                    break;
                }
                Err(error) => {
                    failure = Some(error.into());
                    break;
                }
            }
        }
        release(lock).await;
        failure.map_or(Ok(runs), Err)
    }

    /// Every view's versions.
    pub async fn list(&self) -> Result<Vec<ViewVersions>, BatchError> {
        let mut out = Vec::new();
        for view in &self.views {
            let store = self.store.as_ref();
            let (versions, incomplete) = versions_of(store, &view.name).await?;
            out.push(ViewVersions {
                view: view.name.clone(),
                current: read_current(store, &view.name).await?,
                versions,
                incomplete,
            });
        }
        Ok(out)
    }

    /// Makes `version` of `view` live again. Refused for a version computed under another view
    /// definition, or with files missing.
    pub async fn rollback(&self, view: &str, version: u64) -> Result<Manifest, BatchError> {
        let definition = self.view(view)?;
        let _in_process = self
            .running
            .try_lock()
            .map_err(|_| BatchError::AlreadyRunning)?;
        self.refuse_if_cancelled()?;
        let lock = RunLock::acquire(Arc::clone(&self.store), self.settings.lock_lease).await?;
        let result = self.rollback_locked(definition, version).await;
        release(lock).await;
        result
    }

    async fn rollback_locked(&self, view: &ViewDef, version: u64) -> Result<Manifest, BatchError> {
        let store = self.store.as_ref();
        let Some(manifest) = read_manifest(store, &view.name, version).await? else {
            let (complete, _) = versions_of(store, &view.name).await?;
            let available: Vec<String> = complete.iter().map(|m| m.version.to_string()).collect();
            return Err(BatchError::UnknownVersion {
                view: view.name.clone(),
                version,
                available: if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                },
            });
        };
        let expected = view.definition_hash();
        if manifest.definition_hash != expected {
            return Err(BatchError::DefinitionChanged {
                view: view.name.clone(),
                version,
                found: manifest.definition_hash,
                expected,
            });
        }
        for file in &manifest.files {
            if let Err(object_store::Error::NotFound { .. }) =
                store.head(&Path::from(file.path.as_str())).await
            {
                return Err(BatchError::MissingFile {
                    view: view.name.clone(),
                    version,
                    path: file.path.clone(),
                });
            }
        }
        write_current(store, &view.name, version).await?;
        tracing::info!(view = view.name, version, "rolled back");
        Ok(manifest)
    }
}

async fn write_current(
    store: &dyn ObjectStore,
    view: &str,
    version: u64,
) -> Result<(), object_store::Error> {
    let pointer = serde_json::to_vec(&CurrentPointer { version }).expect("a pointer serializes");
    store
        .put(&Path::from(current_path(view)), PutPayload::from(pointer))
        .await?;
    Ok(())
}

/// A test hook, compiled only with the `fault-injection` feature (the workspace's tests enable it;
/// a release build has no such hook): `TRIBUTARY_BATCH_CRASH_AT=<point>` aborts the process at that
/// point of a publish, as a kill -9 would, so tests can prove each point leaves the lake
/// consistent. Points: `after_parts` (parts written, no manifest) and `before_current` (manifest
/// written, `_current` not replaced).
#[cfg(feature = "fault-injection")]
fn crash_point(point: &str) {
    if std::env::var("TRIBUTARY_BATCH_CRASH_AT").is_ok_and(|wanted| wanted == point) {
        tracing::error!(point, "TRIBUTARY_BATCH_CRASH_AT: aborting the process");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
fn crash_point(_point: &str) {}

/// One view's recompute, run on the batch runtime.
struct ViewJob {
    settings: BatchSettings,
    events: EventSchema,
    view: ViewDef,
    store: Arc<dyn ObjectStore>,
    progress: ProgressSink,
}

impl ViewJob {
    async fn run(self) -> Result<ViewRun, BatchError> {
        let started = Instant::now();
        let store = self.store.as_ref();
        let name = self.view.name.clone();
        let input =
            plan::select_input(store, &self.settings.topic, self.settings.epoch_size).await?;
        let live = live_manifest(store, &name).await?;
        let definition_hash = self.view.definition_hash();
        let known_groups = live
            .as_ref()
            .filter(|live| live.definition_hash == definition_hash)
            .map(|live| live.row_count);
        let finished = |outcome, computed: Computed, removed_versions| ViewRun {
            view: name.clone(),
            outcome,
            rows_read: computed.rows_read,
            rows_scanned: computed.rows_scanned,
            elapsed: started.elapsed(),
            peak_memory_bytes: computed.peak_memory_bytes,
            spilled_bytes: computed.spilled_bytes,
            slices: computed.slices,
            removed_versions,
        };
        if let Some(live) = live
            && live.definition_hash == definition_hash
            && live.boundary == input.boundary
            && live.generation == input.generation
            && live.closed_generations == input.closed_generations
        {
            tracing::info!(view = name, version = live.version, boundary = ?live.boundary.0, "unchanged since the live version");
            return Ok(finished(
                Outcome::Unchanged(live),
                Computed::default(),
                Vec::new(),
            ));
        }
        if input.is_empty() {
            tracing::info!(
                view = name,
                "nothing to recompute: no partition has archived a whole epoch yet"
            );
            return Ok(finished(
                Outcome::NothingArchived,
                Computed::default(),
                Vec::new(),
            ));
        }
        let version = list_versions(store, &name)
            .await?
            .last()
            .map_or(1, |v| v + 1);
        tracing::info!(
            view = name,
            version,
            input = plan::describe(&input),
            "recompute started"
        );

        let computed = self.compute(&input, version, started, known_groups).await?;
        crash_point("after_parts");
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            view: name.clone(),
            definition_hash,
            version,
            created_at: Utc::now(),
            row_count: computed.files.iter().map(|f| f.rows).sum(),
            files: computed.files.clone(),
            epoch_size: self.settings.epoch_size,
            generation: input.generation,
            closed_generations: input.closed_generations.clone(),
            boundary: input.boundary.clone(),
        };
        store
            .put(
                &Path::from(manifest_path(&name, version)),
                PutPayload::from(manifest.to_json()),
            )
            .await?;
        crash_point("before_current");
        write_current(store, &name, version).await?;
        tracing::info!(
            view = name,
            version,
            rows = manifest.row_count,
            rows_read = computed.rows_read,
            rows_scanned = computed.rows_scanned,
            spilled_bytes = computed.spilled_bytes,
            slices = computed.slices,
            seconds = started.elapsed().as_secs_f64(),
            "published"
        );
        let removed = collect_garbage(store, &name, self.settings.keep_versions).await?;
        Ok(finished(Outcome::Published(manifest), computed, removed))
    }

    fn session(&self) -> Result<(SessionContext, Arc<PeakPool>), DataFusionError> {
        let pool = Arc::new(PeakPool::new(self.settings.memory_limit_bytes));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&pool) as Arc<dyn MemoryPool>)
            .build_arc()?;
        runtime.register_object_store(plan::lake_url().as_ref(), Arc::clone(&self.store));
        // A sort holds this much back for merging its spills. DataFusion's 10 MB is more than
        // all of a small pool, where every sort would fail instead of spilling.
        let merge_reserve = (self.settings.memory_limit_bytes / 16).min(10 << 20);
        let config = SessionConfig::new()
            .with_target_partitions(self.settings.threads.max(1))
            .with_batch_size(8192)
            .with_sort_spill_reservation_bytes(merge_reserve);
        Ok((SessionContext::new_with_config_rt(config, runtime), pool))
    }

    /// Runs the plan over the input's time slices (see [`slices`]) and writes the parts in time
    /// order. `known_groups`: the live version's rows, when it has this definition.
    async fn compute(
        &self,
        input: &Input,
        version: u64,
        started: Instant,
        known_groups: Option<u64>,
    ) -> Result<Computed, BatchError> {
        let (ctx, pool) = self.session()?;
        let files: Vec<&InputFile> = input.files.iter().chain(&input.closed_files).collect();
        let cache = ctx.runtime_env().cache_manager.get_file_metadata_cache();
        let file_spans =
            slices::read_spans(&self.store, &cache, &files, &self.events.time_field).await?;
        let spans: Vec<Span> = file_spans
            .iter()
            .flatten()
            .flat_map(|f| f.spans.iter().copied())
            .collect();
        let input_rows = file_spans
            .as_ref()
            .map(|files| files.iter().map(FileSpans::rows).sum::<u64>());
        let granularity = self.view.granularity.millis();
        let target = self.settings.slice;
        let mut bounds = match input_rows {
            Some(rows) => slices::plan(
                &spans,
                granularity,
                slices::wanted_slices(rows, target, known_groups),
            ),
            None => Vec::new(),
        };
        let mut slice = SliceProgress {
            started,
            files: &files,
            file_spans: file_spans.as_deref(),
            rows_total: input_rows,
            scanned: 0,
            passed: None,
        };
        let mut parts = PartWriter::new(&self.view, version, self.settings.part_rows);
        let mut runs: Vec<SliceRun> = Vec::new();
        let mut rest = TimeRange::default();
        if known_groups.is_none()
            && let Some(&to) = bounds.first()
        {
            // A first run: the first slice's groups tell how many the rest will have.
            let first = TimeRange {
                from: None,
                to: Some(to),
            };
            let run = self
                .run_slice(&ctx, input, first, &mut parts, &mut slice)
                .await?;
            bounds = slices::replan(&spans, granularity, target, to, run.groups);
            runs.push(run);
            rest.from = Some(to);
        }
        let ranges: Vec<TimeRange> = rest.split(&bounds);
        tracing::debug!(
            view = self.view.name,
            slices = ranges.len() + runs.len(),
            reads = slices::read_rows(&spans, &bounds),
            rows = input_rows,
            "time slices"
        );
        if ranges.len() == 1 || self.settings.threads <= 1 {
            // One at a time: each slice streams into the parts as it sorts.
            for range in ranges {
                runs.push(
                    self.run_slice(&ctx, input, range, &mut parts, &mut slice)
                        .await?,
                );
            }
        } else {
            let concurrent = self
                .run_concurrently(&ctx, input, ranges, &mut parts, &mut slice)
                .await?;
            runs.extend(concurrent);
        }
        let spilled_bytes = runs.iter().map(|r| r.spilled_bytes).sum();
        let slices = runs.len();
        let files = parts.finish(self.store.as_ref()).await?;
        Ok(Computed {
            files,
            // The input's rows, however many slices read some of them twice.
            rows_read: input_rows.unwrap_or(slice.scanned),
            rows_scanned: slice.scanned,
            peak_memory_bytes: pool.peak(),
            spilled_bytes,
            slices,
        })
    }

    /// Runs `ranges` (in time order) up to `[batch] threads` at a time, each on one partition (a
    /// slice's groups are its own, so no partial and final aggregation merge sketches twice), and
    /// writes their outputs in order.
    async fn run_concurrently(
        &self,
        ctx: &SessionContext,
        input: &Input,
        ranges: Vec<TimeRange>,
        parts: &mut PartWriter,
        progress: &mut SliceProgress<'_>,
    ) -> Result<Vec<SliceRun>, BatchError> {
        let config = ctx.copied_config().with_target_partitions(1);
        let single = SessionContext::new_with_config_rt(config, ctx.runtime_env());
        let input = Arc::new(input.clone());
        let last = ranges.last().copied().unwrap_or_default();
        let tasks = ranges.into_iter().map(|range| {
            let task = tokio::spawn(collect_slice(
                single.clone(),
                self.events.clone(),
                self.view.clone(),
                Arc::clone(&input),
                range,
            ));
            AbortOnDrop(task)
        });
        let mut done = futures::stream::iter(tasks).buffered(self.settings.threads.max(1));
        let mut runs = Vec::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            let collected = tokio::select! {
                next = done.next() => match next {
                    Some(collected) => collected??,
                    None => break,
                },
                _ = ticker.tick() => {
                    (self.progress)(&progress.report(&self.view.name, 0, false));
                    continue;
                }
            };
            for batch in collected.batches {
                parts.push(batch, self.store.as_ref()).await?;
            }
            progress.scanned += collected.scanned;
            progress.passed = collected.range.to;
            let finished = collected.range == last;
            (self.progress)(&progress.report(&self.view.name, 0, finished));
            runs.push(collected.run);
        }
        Ok(runs)
    }

    /// Aggregates the rows of `range` into `parts`, reporting progress as it goes.
    async fn run_slice(
        &self,
        ctx: &SessionContext,
        input: &Input,
        range: TimeRange,
        parts: &mut PartWriter,
        progress: &mut SliceProgress<'_>,
    ) -> Result<SliceRun, BatchError> {
        let physical = slice_plan(ctx, &self.events, &self.view, input, range).await?;
        if progress.rows_total.is_none() {
            progress.rows_total = progress::scan_total_rows(physical.as_ref());
        }
        let report = |progress: &SliceProgress<'_>, finished: bool| {
            let scanned = progress::scan_counts(physical.as_ref()).1;
            let last = finished && range.to.is_none();
            (self.progress)(&progress.report(&self.view.name, scanned, last));
            scanned
        };
        let mut stream = execute_stream(Arc::clone(&physical), ctx.task_ctx())?;
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        let mut groups = 0u64;
        loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some(batch) => {
                        let batch = batch?;
                        groups += batch.num_rows() as u64;
                        parts.push(batch, self.store.as_ref()).await?;
                    }
                    None => break,
                },
                _ = ticker.tick() => { report(progress, false); }
            }
        }
        tracing::debug!(
            view = self.view.name,
            ?range,
            plan = %datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(physical.as_ref()).indent(true),
            "recompute plan with metrics"
        );
        progress.scanned += report(progress, true);
        progress.passed = range.to;
        Ok(SliceRun {
            groups,
            spilled_bytes: progress::spilled_bytes(physical.as_ref()),
        })
    }
}

/// What the progress of a sliced run counts.
struct SliceProgress<'a> {
    started: Instant,
    files: &'a [&'a InputFile],
    /// Per file, in `files` order; `None` without statistics.
    file_spans: Option<&'a [FileSpans]>,
    rows_total: Option<u64>,
    /// Rows the finished slices read (some twice, where slices share a page).
    scanned: u64,
    /// Every event before this time is aggregated.
    passed: Option<i64>,
}

impl SliceProgress<'_> {
    /// The progress while the running slice has read `scanning` rows.
    fn report(&self, view: &str, scanning: u64, finished: bool) -> RunProgress {
        let scanned = self.scanned + scanning;
        RunProgress {
            view: view.to_owned(),
            files_done: self.files_done(finished),
            files_total: self.files.len(),
            rows_done: self.rows_total.map_or(scanned, |total| scanned.min(total)),
            rows_total: self.rows_total,
            elapsed: self.started.elapsed(),
            finished,
        }
    }

    /// Files whose every event the finished slices have aggregated.
    fn files_done(&self, finished: bool) -> usize {
        match (self.file_spans, self.passed) {
            _ if finished => self.files.len(),
            (Some(spans), Some(passed)) => spans
                .iter()
                .filter(|f| f.max().is_none_or(|max| max < passed))
                .count(),
            _ => 0,
        }
    }
}

/// A spawned task that is aborted when dropped: a failed or dropped run stops its other slices.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// One slice's output, held until the slices before it are written.
struct CollectedSlice {
    range: TimeRange,
    batches: Vec<RecordBatch>,
    scanned: u64,
    run: SliceRun,
}

/// The physical plan computing `view`'s sorted states over the rows of `input` in `range`.
async fn slice_plan(
    ctx: &SessionContext,
    events: &EventSchema,
    view: &ViewDef,
    input: &Input,
    range: TimeRange,
) -> Result<Arc<dyn ExecutionPlan>, BatchError> {
    let frame = plan::view_frame(ctx, events, view, input, range).await?;
    Ok(time_sort::plan_sorts(frame.create_physical_plan().await?)?)
}

/// Aggregates the rows of `range` on its own task and keeps the sorted output.
async fn collect_slice(
    ctx: SessionContext,
    events: EventSchema,
    view: ViewDef,
    input: Arc<Input>,
    range: TimeRange,
) -> Result<CollectedSlice, BatchError> {
    let physical = slice_plan(&ctx, &events, &view, &input, range).await?;
    let batches: Vec<RecordBatch> = execute_stream(Arc::clone(&physical), ctx.task_ctx())?
        .try_collect()
        .await?;
    Ok(CollectedSlice {
        range,
        scanned: progress::scan_counts(physical.as_ref()).1,
        run: SliceRun {
            groups: batches.iter().map(|b| b.num_rows() as u64).sum(),
            spilled_bytes: progress::spilled_bytes(physical.as_ref()),
        },
        batches,
    })
}

/// What one slice produced.
struct SliceRun {
    groups: u64,
    spilled_bytes: u64,
}

/// What computing a version produced.
#[derive(Debug, Default)]
struct Computed {
    files: Vec<ManifestFile>,
    rows_read: u64,
    rows_scanned: u64,
    peak_memory_bytes: usize,
    spilled_bytes: u64,
    slices: usize,
}

/// Streams sorted view rows into parts of at most `part_rows` rows.
struct PartWriter {
    view: String,
    dimensions: Vec<String>,
    version: u64,
    part_rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    written: Vec<ManifestFile>,
}

impl PartWriter {
    fn new(view: &ViewDef, version: u64, part_rows: usize) -> Self {
        Self {
            view: view.name.clone(),
            dimensions: view.dimensions.iter().map(|d| d.name.clone()).collect(),
            version,
            part_rows: part_rows.max(1),
            pending: Vec::new(),
            pending_rows: 0,
            written: Vec::new(),
        }
    }

    async fn push(
        &mut self,
        batch: RecordBatch,
        store: &dyn ObjectStore,
    ) -> Result<(), BatchError> {
        let mut batch = batch;
        while self.pending_rows + batch.num_rows() >= self.part_rows {
            let take = self.part_rows - self.pending_rows;
            self.pending.push(batch.slice(0, take));
            self.pending_rows += take;
            batch = batch.slice(take, batch.num_rows() - take);
            self.flush(store).await?;
        }
        if batch.num_rows() > 0 {
            self.pending_rows += batch.num_rows();
            self.pending.push(batch);
        }
        Ok(())
    }

    async fn flush(&mut self, store: &dyn ObjectStore) -> Result<(), BatchError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let dimensions: Vec<&str> = self.dimensions.iter().map(String::as_str).collect();
        let bytes = parquet_io::encode_view(&self.pending, ROW_GROUP_ROWS, &dimensions)?;
        let path = version_part(&self.view, self.version, self.written.len());
        let size = bytes.len() as u64;
        store
            .put(&Path::from(path.as_str()), PutPayload::from(bytes))
            .await?;
        self.written.push(ManifestFile {
            path,
            rows: self.pending_rows as u64,
            bytes: size,
        });
        self.pending.clear();
        self.pending_rows = 0;
        Ok(())
    }

    async fn finish(mut self, store: &dyn ObjectStore) -> Result<Vec<ManifestFile>, BatchError> {
        self.flush(store).await?;
        Ok(self.written)
    }
}

/// A view's version directories, ascending: the complete ones (with their manifests) and the
/// numbers of those without a manifest (being written, or left by a crashed run).
async fn versions_of(
    store: &dyn ObjectStore,
    view: &str,
) -> Result<(Vec<Manifest>, Vec<u64>), BatchError> {
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for version in list_versions(store, view).await? {
        match read_manifest(store, view, version).await? {
            Some(manifest) => complete.push(manifest),
            None => incomplete.push(version),
        }
    }
    Ok((complete, incomplete))
}

/// Releases the run lock; a failure only delays the next run until the lease expires.
async fn release(lock: RunLock) {
    if let Err(error) = lock.release().await {
        tracing::warn!(error = %error, "cannot release the recompute lock; it expires on its own");
    }
}

/// Keeps the live version and the newest `keep` complete versions; deletes the rest, and the
/// incomplete versions crashed runs left behind. Call only while holding the run lock.
async fn collect_garbage(
    store: &dyn ObjectStore,
    view: &str,
    keep: usize,
) -> Result<Vec<u64>, BatchError> {
    let current = read_current(store, view).await?;
    let (complete, incomplete) = versions_of(store, view).await?;
    let old_complete = complete.len().saturating_sub(keep);
    let doomed: Vec<u64> = complete[..old_complete]
        .iter()
        .map(|m| &m.version)
        .chain(&incomplete)
        .copied()
        .filter(|v| Some(*v) != current)
        .collect();
    for &version in &doomed {
        // Manifest first: a version whose deletion is interrupted no longer looks complete.
        match store
            .delete(&Path::from(manifest_path(view, version)))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        for object in version_objects(store, view, version).await? {
            store.delete(&object).await?;
        }
        tracing::info!(view, version, "removed an old or incomplete version");
    }
    Ok(doomed)
}

/// [`FairSpillPool`] that remembers its largest reservation (reported per run and in benchmarks).
#[derive(Debug)]
struct PeakPool {
    inner: FairSpillPool,
    peak: AtomicUsize,
}

impl PeakPool {
    fn new(limit: usize) -> Self {
        Self {
            inner: FairSpillPool::new(limit),
            peak: AtomicUsize::new(0),
        }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn observe(&self) {
        self.peak
            .fetch_max(self.inner.reserved(), Ordering::Relaxed);
    }
}

impl std::fmt::Display for PeakPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (peak {} bytes)", self.inner, self.peak())
    }
}

impl MemoryPool for PeakPool {
    fn name(&self) -> &str {
        "tributary_peak_fair_spill"
    }

    fn register(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.observe();
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::common::Result<()> {
        self.inner.try_grow(reservation, additional)?;
        self.observe();
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}
