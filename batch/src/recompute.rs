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
//! 5. after every view, the raw master dataset's upkeep ([`maintenance`]): compaction of small
//!    files and `[lake] raw_retention`, both only below what every kept version covers; and after
//!    a run of every view, the versions of views the configuration no longer has, deleted
//!    `keep_versions` runs after they left it.
//!
//! Steps 1-2 are [`job`] (with [`parts`], the part writer), steps 3-4 [`publish`], step 5
//! [`maintenance`]; this file holds the service that runs them (one run at a time, cancellation,
//! listing and rollback).
//!
//! **Resources**: DataFusion runs on the recompute's own Tokio runtime (`[batch] threads`), so the
//! HTTP server and the speed layer keep their cores, with a [`FairSpillPool`] ([`pool`]) of
//! `[batch] memory_limit_mb`: aggregations and sorts spill to local disk past it instead of growing.
//!
//! **One run at a time**: in a process, a second [`RecomputeService::run`] is refused while one is running;
//! across processes, the lake's [`lock::RunLock`] refuses it.

mod building;
pub mod compact;
mod job;
pub mod lock;
pub mod maintenance;
pub mod on_request;
mod parts;
pub mod plan;
mod pool;
pub mod progress;
mod publish;
pub mod slices;
#[cfg(test)]
mod test_support;
pub mod time_sort;

use std::sync::Arc;
use std::time::Duration;

use datafusion::common::DataFusionError;
use parquet::errors::ParquetError;
use tributary_schemas::config::{BatchEngine, Config, ViewDef};
use tributary_schemas::event::EventSchema;
use tributary_schemas::lake::{Lake, LakeError, Manifest};
use tributary_schemas::shutdown::Shutdown;

use job::{AbortOnDrop, ViewJob};
use lock::{LockError, RunLock};
use progress::ProgressSink;
use publish::versions_of;
use slices::SliceTarget;

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
    /// `[batch] full_every`: how old the last full recompute behind the live version may be for a
    /// run to extend it with the new offsets only.
    pub full_every: Duration,
    /// `[archiver] max_file_rows`: the size compaction makes raw files up to.
    pub raw_file_rows: usize,
    /// `[lake] raw_retention`.
    pub raw_retention: Option<Duration>,
    /// Delta part sets before an extension folds its version's parts into one row per key
    /// ([`job::MAX_DELTAS`]; tests set fewer).
    pub max_deltas: u32,
    /// `[batch] engine`: where the slices' plans run (see [`crate::ballista`]).
    pub engine: BatchEngine,
}

pub use tributary_schemas::layers::recompute::RunOptions;

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
            full_every: config.batch.full_every,
            raw_file_rows: config.archiver.max_file_rows,
            raw_retention: config.lake.raw_retention,
            max_deltas: job::MAX_DELTAS,
            engine: config.batch.engine.clone(),
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
    #[error(
        "view {view:?} needs a full recompute, and the master dataset is no longer whole: {history}. It would miss those events; run `tributary batch run --full --allow-partial-history` to accept that"
    )]
    PartialHistory { view: String, history: String },
    #[error("cannot access the lake")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Lake(#[from] LakeError),
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
    /// A full run whose counts differ from the live version extended by the same new offsets
    /// (see [`job`]): an incremental run would have been wrong. Must never happen.
    pub diverged: bool,
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
pub struct RecomputeService {
    settings: BatchSettings,
    events: EventSchema,
    views: Vec<ViewDef>,
    lake: Lake,
    runtime: Option<tokio::runtime::Runtime>,
    running: tokio::sync::Mutex<()>,
    shutdown: Shutdown,
}

impl Drop for RecomputeService {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this may run inside another runtime (the server's).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl RecomputeService {
    pub fn new(
        settings: BatchSettings,
        events: EventSchema,
        views: Vec<ViewDef>,
        lake: Lake,
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
            lake,
            runtime: Some(runtime),
            running: tokio::sync::Mutex::new(()),
            shutdown: Shutdown::default(),
        })
    }

    /// Stops on the process's shutdown signal (one for every role) instead of one of its own.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn settings(&self) -> &BatchSettings {
        &self.settings
    }

    /// Stops a run in progress (and refuses new ones): for shutdown. The run's version is never
    /// published and its files are collected by the next run; the lock is released.
    pub fn cancel(&self) {
        self.shutdown.stop();
    }

    /// Completes once [`RecomputeService::cancel`] has been called (at once if it was): what a run in
    /// progress and a scheduler waiting for its next run select on.
    pub async fn cancelled(&self) {
        self.shutdown.stopped().await;
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

    /// `Cancelled` once [`RecomputeService::cancel`] has been called: shutdown starts nothing new.
    fn refuse_if_cancelled(&self) -> Result<(), BatchError> {
        match self.shutdown.is_stopping() {
            true => Err(BatchError::Cancelled),
            false => Ok(()),
        }
    }

    /// Recomputes every view (or only `only`), one after the other: each extends its live version
    /// with the new offsets where it can (see [`job`]), else recomputes it whole.
    pub async fn run(
        &self,
        only: Option<&str>,
        progress: ProgressSink,
    ) -> Result<Vec<ViewRun>, BatchError> {
        self.run_as(only, progress, RunOptions::default()).await
    }

    /// [`Self::run`] with `options` (a full run, see [`RunOptions`]).
    pub async fn run_as(
        &self,
        only: Option<&str>,
        progress: ProgressSink,
        options: RunOptions,
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
        let lock =
            RunLock::acquire(Arc::clone(self.lake.store()), self.settings.lock_lease).await?;
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the service");
        let mut runs = Vec::with_capacity(views.len());
        let mut failure = None;
        for view in views {
            let name = view.name.clone();
            let floor = (view.retention)
                .and_then(|retention| chrono::Duration::from_std(retention).ok())
                .map(|retention| {
                    view.granularity
                        .bucket_start((chrono::Utc::now() - retention).timestamp_millis())
                });
            let job = ViewJob {
                options,
                floor,
                settings: self.settings.clone(),
                events: self.events.clone(),
                view,
                lake: self.lake.clone(),
                progress: Arc::clone(&progress),
            };
            // Dropping the job's task (aborting it) drops its plans and slice tasks with it.
            // One span per view's run: every line it logs (progress, published) carries the view.
            let span = tracing::info_span!("batch_run", view = %name);
            let task = AbortOnDrop(runtime.spawn(tracing::Instrument::instrument(job.run(), span)));
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
        if failure.is_none() {
            self.upkeep(only.is_none()).await;
        }
        lock.release_or_let_expire().await;
        failure.map_or(Ok(runs), Err)
    }

    /// Step 5 (see the module docs), under the run lock; after a run of every view, also the
    /// versions of views no longer configured ([`maintenance::collect_removed`]). It never fails
    /// the run: the views are published, and the next run tries again.
    async fn upkeep(&self, every_view: bool) {
        let (lake, settings) = (self.lake.clone(), self.settings.clone());
        let (views, time_field) = (self.views.clone(), self.events.time_field.clone());
        let upkeep = async move {
            let done = maintenance::upkeep(
                &lake,
                &settings.topic,
                &views,
                settings.raw_file_rows,
                settings.raw_retention,
                &time_field,
            )
            .await?;
            if every_view {
                maintenance::collect_removed(&lake, &views, settings.keep_versions).await?;
            }
            Ok::<_, BatchError>(done)
        };
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the service");
        let span = tracing::info_span!("raw_upkeep");
        let started = std::time::Instant::now();
        let task = AbortOnDrop(runtime.spawn(tracing::Instrument::instrument(upkeep, span)));
        let done = tokio::select! {
            done = task => done,
            () = self.cancelled() => return,
        };
        match done {
            Ok(Ok(done)) => {
                let (compacted, expired) = (done.compacted, done.expired);
                if compacted != Default::default() || expired != Default::default() {
                    tracing::info!(
                        compacted_files = compacted.files_in,
                        into_files = compacted.files_out,
                        compacted_rows = compacted.rows,
                        leftovers_deleted = compacted.leftovers,
                        expired_files = expired.files,
                        expired_rows = expired.rows,
                        "raw upkeep: compacted {} small files into {}, deleted {} past retention ({:.2}s)",
                        compacted.files_in,
                        compacted.files_out,
                        expired.files,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %tributary_schemas::blame::chain(&error), "raw upkeep failed; the next run tries again");
            }
            Err(error) => tracing::warn!(%error, "raw upkeep failed; the next run tries again"),
        }
    }

    /// Every view's versions.
    pub async fn list(&self) -> Result<Vec<ViewVersions>, BatchError> {
        let mut out = Vec::new();
        for view in &self.views {
            let (versions, incomplete) = versions_of(&self.lake, &view.name).await?;
            out.push(ViewVersions {
                view: view.name.clone(),
                current: self.lake.current(&view.name).await?,
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
        let lock =
            RunLock::acquire(Arc::clone(self.lake.store()), self.settings.lock_lease).await?;
        let result = self.rollback_locked(definition, version).await;
        lock.release_or_let_expire().await;
        result
    }

    async fn rollback_locked(&self, view: &ViewDef, version: u64) -> Result<Manifest, BatchError> {
        let lake = &self.lake;
        let Some(manifest) = lake.manifest(&view.name, version).await? else {
            let (complete, _) = versions_of(lake, &view.name).await?;
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
            if !lake.exists(&file.path).await? {
                return Err(BatchError::MissingFile {
                    view: view.name.clone(),
                    version,
                    path: file.path.clone(),
                });
            }
        }
        lake.write_current(&view.name, version).await?;
        tracing::info!(view = view.name, version, "rolled back");
        Ok(manifest)
    }
}
