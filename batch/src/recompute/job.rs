//! One view's recompute (steps 1 and 2 of a run, see the parent module): choose the input, plan
//! the aggregation slice by slice on the batch runtime (concurrently up to `[batch] threads`),
//! write the sorted parts, then hand the manifest to [`super::publish`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::common::DataFusionError;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::{Expr, cast, ident, lit};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tributary_schemas::aggregate::StateKind;
use tributary_schemas::blame::chain;
use tributary_schemas::config::{BatchEngine, TIME_COLUMN, ViewDef};
use tributary_schemas::event::{EventSchema, timestamp_type};
use tributary_schemas::functions;
use tributary_schemas::lake::{LAKE_URL, Lake, MANIFEST_FORMAT, Manifest, ManifestFile};

use super::building::Building;
use super::parts::PartWriter;
use super::plan::{self, Input, InputFile, TimeRange};
use super::pool::PeakPool;
use super::progress::{self, ProgressSink, RunProgress};
use super::publish::{collect_garbage, crash_point, publish};
use super::slices::{self, FileSpans, Span};
use super::time_sort;
use super::{BatchError, BatchSettings, Outcome, RunOptions, ViewRun};

/// Delta part sets a version may list: the extension that would reach it folds every part into a
/// fresh set with one row per key instead ([`ViewJob::fold`]), so the parts a query reads stay
/// bounded without a full recompute (or the raw files: it reads the version's own parts).
pub const MAX_DELTAS: u32 = 24;

/// One view's recompute, run on the batch runtime.
pub(super) struct ViewJob {
    /// A full run on request, and whether it may run over a cut history.
    pub(super) options: RunOptions,
    /// The view's `retention` cut for this run (a bucket start, epoch ms): buckets before it are
    /// not computed, and the version says it answers from there on.
    pub(super) floor: Option<i64>,
    pub(super) settings: BatchSettings,
    pub(super) events: EventSchema,
    pub(super) view: ViewDef,
    pub(super) lake: Lake,
    pub(super) progress: ProgressSink,
}

impl ViewJob {
    pub(super) async fn run(mut self) -> Result<ViewRun, BatchError> {
        let live = self.lake.live_manifest(&self.view.name).await?;
        let definition_hash = self.view.definition_hash();
        // A first version under the configured definition: its progress goes to the lake too.
        let building = match live.as_ref().map(|l| &l.definition_hash) == Some(&definition_hash) {
            true => None,
            false => Some(Building::start(&self.lake, &self.view.name, &definition_hash).await),
        };
        if let Some(building) = &building {
            self.progress = building.sink(Arc::clone(&self.progress));
        }
        let run = self.run_once(live, definition_hash).await;
        if let Some(building) = building {
            building.finish().await;
        }
        run
    }

    /// The run over `live`, the view's live version when it started (read once, under the run
    /// lock nothing else publishes), for the configured `definition_hash`.
    async fn run_once(
        self,
        live: Option<Manifest>,
        definition_hash: String,
    ) -> Result<ViewRun, BatchError> {
        let started = Instant::now();
        let lake = &self.lake;
        let name = self.view.name.clone();
        let input =
            plan::select_input(lake, &self.settings.topic, self.settings.epoch_size).await?;
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
            diverged: false,
        };
        if let Some(live) = &live
            && live.definition_hash == definition_hash
            && live.boundary == input.boundary
            && live.generation == input.generation
            && live.closed_generations == input.closed_generations
            && !self.options.full
        {
            tracing::info!(view = name, version = live.version, boundary = ?live.boundary.0, "unchanged since the live version");
            return Ok(finished(
                Outcome::Unchanged(live.clone()),
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
        let version = (lake.versions(&name).await?).last().map_or(1, |v| v + 1);
        // A master dataset cut by raw retention cannot give a full recompute: the live line is
        // then extended even when a routine full run (`full_every`, MAX_DELTAS) is due, and a
        // run that must be full is refused unless the operator accepts the loss.
        let history = lake.raw_history(&self.settings.topic).await?;
        // Incremental: the live version extended by the states of the offsets above its boundary.
        let base = (live.as_ref()).filter(|live| {
            !self.options.full
                && match history.is_partial() {
                    true => self.same_line(live, &input, &definition_hash),
                    false => self.extends(live, &input, &definition_hash),
                }
        });
        if base.is_none() && history.is_partial() && !self.options.allow_partial_history {
            return Err(BatchError::PartialHistory {
                view: name.clone(),
                history: history.describe(),
            });
        }
        if base.is_none() && history.is_partial() {
            tracing::warn!(
                view = name,
                history = history.describe(),
                "a full recompute over a partial master dataset (--allow-partial-history): the version misses the deleted events"
            );
        }
        let read = match base {
            Some(base) => input.above(&base.boundary, &base.closed_generations),
            None => input.clone(),
        };
        tracing::info!(
            view = name,
            version,
            incremental = base.is_some(),
            input = plan::describe(&read),
            "recompute started"
        );

        let computed = match (base, read.is_empty()) {
            // New offsets, all of them quarantined: the new version is the old one's parts.
            (Some(_), true) => Computed::default(),
            (Some(_), false) => self.compute(&read, version, started, None).await?,
            (None, _) => self.compute(&read, version, started, known_groups).await?,
        };
        // A full run over a boundary the live version could have been extended to: check that
        // the extension would have counted the same events (every count metric's total).
        let line = (live.as_ref()).filter(|live| {
            base.is_none()
                && !history.is_partial()
                && self.same_line(live, &input, &definition_hash)
        });
        // The check never stands in the way of the full run, which may be the repair of a live
        // version whose parts are gone: a line that cannot be read is skipped, and said so.
        let diverged = match line {
            Some(line) => (self.diverges(line, &input, &computed.files, version).await)
                .unwrap_or_else(|error| {
                    tracing::warn!(view = name, error = %chain(&error), "the full run's check of the live version was skipped: it cannot be read");
                    false
                }),
            None => false,
        };
        crash_point("after_parts");
        let newest_bucket = computed
            .newest_bucket_ms
            .and_then(DateTime::from_timestamp_millis);
        let mut files = base.map(|b| b.files.clone()).unwrap_or_default();
        files.extend(computed.files.iter().cloned());
        let mut deltas = base.map_or(0, |b| b.deltas + 1);
        if base.is_some() && deltas >= self.settings.max_deltas {
            let folded = self.fold(&files, version, computed.files.len()).await?;
            tracing::info!(
                view = name,
                version,
                parts = files.len(),
                deltas,
                into = folded.len(),
                "folded the version's delta parts into one row per key"
            );
            // The delta parts just written are in the folded ones: no version lists them.
            for part in &computed.files {
                (self.lake.store())
                    .delete(&object_store::path::Path::from(part.path.as_str()))
                    .await?;
            }
            (files, deltas) = (folded, 0);
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            view: name.clone(),
            definition_hash,
            version,
            created_at: Utc::now(),
            row_count: files.iter().map(|f| f.rows).sum(),
            files,
            epoch_size: self.settings.epoch_size,
            generation: input.generation,
            closed_generations: input.closed_generations.clone(),
            boundary: input.boundary.clone(),
            newest_bucket: base.and_then(|b| b.newest_bucket).max(newest_bucket),
            full_at: base.map_or(Some(Utc::now()), |b| b.full_at),
            deltas,
            retained_from: self.floor.and_then(DateTime::from_timestamp_millis),
            definition: Some(self.view.spec()),
        };
        publish(lake, &manifest).await?;
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
        let removed = collect_garbage(lake, &name, self.settings.keep_versions).await?;
        let mut run = finished(Outcome::Published(manifest), computed, removed);
        run.diverged = diverged;
        Ok(run)
    }

    /// Whether a run may publish `live` extended by the new offsets' states instead of recomputing
    /// everything: the same line (see [`Self::same_line`]) and a full run within
    /// `[batch] full_every`.
    fn extends(&self, live: &Manifest, input: &Input, definition_hash: &str) -> bool {
        let full_recently = live.full_at.is_some_and(|at| {
            (Utc::now() - at)
                .to_std()
                .is_ok_and(|age| age < self.settings.full_every)
        });
        self.same_line(live, input, definition_hash) && full_recently
    }

    /// Folds `parts` (a version's base and delta parts, where a key repeats) into fresh parts of
    /// `version` numbered after `first_part`, one row per key, from the run's floor on: the states
    /// merged by the same functions every reader merges with. It reads the view's parts, never
    /// the raw files, so it works over a history raw retention has cut. One aggregation over the
    /// whole view (the memory pool spills past its limit).
    async fn fold(
        &self,
        parts: &[ManifestFile],
        version: u64,
        first_part: usize,
    ) -> Result<Vec<ManifestFile>, BatchError> {
        let (ctx, _) = self.session()?;
        let paths: Vec<String> = parts.iter().map(|p| p.path.clone()).collect();
        let range = TimeRange {
            from: self.floor,
            to: None,
        };
        let frame = plan::merge_frame(&ctx, &self.view, &paths, range).await?;
        let physical = time_sort::plan_sorts(frame.create_physical_plan().await?)?;
        let mut writer =
            PartWriter::new(&self.view, version, self.settings.part_rows).after(first_part);
        let mut stream = execute_stream(physical, ctx.task_ctx())?;
        while let Some(batch) = stream.next().await {
            writer.push(batch?, &self.lake).await?;
        }
        Ok(writer.finish(&self.lake).await?.0)
    }

    /// Whether `input` continues `live`: same definition and current generation, closed
    /// generations that were only added to (backfills), and a boundary that only moved up.
    fn same_line(&self, live: &Manifest, input: &Input, definition_hash: &str) -> bool {
        live.definition_hash == definition_hash
            && live.generation == input.generation
            && (live.closed_generations.iter()).all(|g| input.closed_generations.contains(g))
            && (live.boundary.0.iter()).all(|(&p, &w)| input.boundary.get(p) >= w)
    }

    /// The check of a full run (`[batch] full_every`, `--full`): computes the extension of `line`
    /// to this input's boundary into a scratch version (never published, deleted here) and
    /// compares, key by key (time bucket and dimensions), every count metric with the full run's
    /// parts: an event counted twice, missed, or counted under another key shows. (Sketches and
    /// float sums are not compared: their merged bytes depend on merge order, not only on which
    /// events went in.) A difference is logged as an error and reported; the full run is published
    /// either way.
    async fn diverges(
        &self,
        line: &Manifest,
        input: &Input,
        full: &[ManifestFile],
        version: u64,
    ) -> Result<bool, BatchError> {
        let above = input.above(&line.boundary, &line.closed_generations);
        let scratch = version + 1;
        let delta = match above.is_empty() {
            true => Vec::new(),
            false => (self.compute(&above, scratch, Instant::now(), None).await?).files,
        };
        let mut extended = line.files.clone();
        extended.extend(delta);
        let differing = self.differing_keys(full, &extended).await;
        self.lake.delete_version(&self.view.name, scratch).await?;
        let differing = differing?;
        if differing == 0 {
            return Ok(false);
        }
        tracing::error!(
            view = self.view.name,
            version,
            keys = differing,
            "a full recompute counts other events than the live version extended by the same offsets, in {differing} keys: an incremental run would be wrong"
        );
        Ok(true)
    }

    /// How many keys (time bucket and dimensions, from the run's floor on) have another count in
    /// some count metric over `full` than over `extended` (each side's rows merged per key).
    async fn differing_keys(
        &self,
        full: &[ManifestFile],
        extended: &[ManifestFile],
    ) -> Result<usize, BatchError> {
        let (ctx, _) = self.session()?;
        let schema = self.view.state_schema();
        let counts: Vec<&str> = (self.view.metrics.iter())
            .filter(|m| m.state_kind() == StateKind::Count)
            .map(|m| m.name.as_str())
            .collect();
        let mut keys = vec![ident(TIME_COLUMN)];
        keys.extend(self.view.dimensions.iter().map(|d| ident(&d.name)));
        // Each side's rows with their counts signed, +1 full and -1 extended: per key they cancel.
        // One scan per listed part: a part a manifest lists twice counts twice, as readers count it.
        let mut sides = Vec::new();
        for (parts, sign) in [(full, 1i64), (extended, -1)] {
            for part in parts {
                let url = format!("{LAKE_URL}{}", part.path);
                let mut frame = ctx
                    .read_parquet(url, ParquetReadOptions::default().schema(&schema))
                    .await?;
                if let Some(floor) = self.floor {
                    let floor = cast(lit(floor), timestamp_type());
                    frame = frame.filter(ident(TIME_COLUMN).gt_eq(floor))?;
                }
                let mut columns = keys.clone();
                columns.extend(counts.iter().map(|c| (ident(*c) * lit(sign)).alias(*c)));
                sides.push(frame.select(columns)?);
            }
        }
        let mut sides = sides.into_iter();
        let Some(mut both) = sides.next() else {
            return Ok(0);
        };
        for side in sides {
            both = both.union(side)?;
        }
        let sums = counts.iter().map(|c| sum(ident(*c)).alias(*c)).collect();
        let differs = (counts.iter())
            .map(|c| ident(*c).not_eq(lit(0i64)))
            .reduce(Expr::or)
            .unwrap_or(lit(false));
        Ok(both.aggregate(keys, sums)?.filter(differs)?.count().await?)
    }

    fn session(&self) -> Result<(SessionContext, Arc<PeakPool>), DataFusionError> {
        let pool = Arc::new(PeakPool::new(self.settings.memory_limit_bytes));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&pool) as Arc<dyn MemoryPool>)
            .build_arc()?;
        runtime.register_object_store(
            tributary_schemas::lake::lake_url().as_ref(),
            Arc::clone(self.lake.store()),
        );
        // A sort holds this much back for merging its spills. DataFusion's 10 MB is more than
        // all of a small pool, where every sort would fail instead of spilling.
        let merge_reserve = (self.settings.memory_limit_bytes / 16).min(10 << 20);
        let config = SessionConfig::new()
            .with_target_partitions(self.settings.threads.max(1))
            .with_batch_size(8192)
            .with_sort_spill_reservation_bytes(merge_reserve);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        functions::register_all(&ctx);
        Ok((ctx, pool))
    }

    /// Whether the slices run on a Ballista cluster.
    fn remote(&self) -> bool {
        matches!(self.settings.engine, BatchEngine::Ballista { .. })
    }

    /// The session the slices run in: [`Self::session`], or one whose plans run on the Ballista
    /// cluster (the client keeps the local runtime: its object store reads the files' statistics).
    async fn compute_session(&self) -> Result<(SessionContext, Arc<PeakPool>), BatchError> {
        let (local, pool) = self.session()?;
        match &self.settings.engine {
            BatchEngine::Local => Ok((local, pool)),
            BatchEngine::Ballista { scheduler } => {
                let config = local.copied_config();
                let remote =
                    crate::ballista::remote_session(scheduler, config, local.runtime_env()).await?;
                Ok((remote, pool))
            }
        }
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
        let (ctx, pool) = self.compute_session().await?;
        let files: Vec<&InputFile> = input.files.iter().chain(&input.closed_files).collect();
        let cache = ctx.runtime_env().cache_manager.get_file_metadata_cache();
        let file_spans =
            slices::read_spans(self.lake.store(), &cache, &files, &self.events.time_field).await?;
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
            remote: self.remote(),
            files: &files,
            file_spans: file_spans.as_deref(),
            rows_total: input_rows,
            scanned: 0,
            passed: None,
        };
        let mut parts = PartWriter::new(&self.view, version, self.settings.part_rows);
        let mut runs: Vec<SliceRun> = Vec::new();
        let mut rest = TimeRange {
            from: self.floor,
            to: None,
        };
        bounds.retain(|&bound| self.floor.is_none_or(|floor| bound > floor));
        if known_groups.is_none()
            && let Some(&to) = bounds.first()
        {
            // A first run: the first slice's groups tell how many the rest will have.
            let first = TimeRange {
                from: self.floor,
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
        let (files, newest_bucket_ms) = parts.finish(&self.lake).await?;
        Ok(Computed {
            files,
            newest_bucket_ms,
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
        // A Ballista session plans one partition already (and must keep its query planner).
        let single = match self.remote() {
            true => ctx.clone(),
            false => {
                let config = ctx.copied_config().with_target_partitions(1);
                SessionContext::new_with_config_rt(config, ctx.runtime_env())
            }
        };
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
                parts.push(batch, &self.lake).await?;
            }
            progress.scanned += match progress.remote {
                true => progress.rows_in(collected.range),
                false => collected.scanned,
            };
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
                        parts.push(batch, &self.lake).await?;
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
        let scanned = report(progress, true);
        progress.scanned += match progress.remote {
            true => progress.rows_in(range),
            false => scanned,
        };
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
    /// The slices run on a Ballista cluster, whose plans' scan counts stay there: a finished
    /// slice counts the rows its files' statistics put in its range.
    remote: bool,
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

    /// The rows of the file pages whose event times meet `range` (what a slice over it reads).
    fn rows_in(&self, range: TimeRange) -> u64 {
        let meets = |span: &&Span| {
            range.from.is_none_or(|from| span.max >= from)
                && range.to.is_none_or(|to| span.min < to)
        };
        (self.file_spans.into_iter().flatten())
            .flat_map(|file| file.spans.iter().filter(meets))
            .map(|span| span.rows)
            .sum()
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
pub(super) struct AbortOnDrop<T>(pub(super) tokio::task::JoinHandle<T>);

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
    newest_bucket_ms: Option<i64>,
    rows_read: u64,
    rows_scanned: u64,
    peak_memory_bytes: usize,
    spilled_bytes: u64,
    slices: usize,
}
