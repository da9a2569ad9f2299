//! Merged query planning: a view is the union of its pinned batch rows and the speed rows above
//! them, re-aggregated with the merge functions and finalized, all in one DataFusion plan.
//!
//! ```text
//! batch version (memory or Parquet) ∪ speed snapshot      (state rows: time, dimensions, states)
//!   → WHERE time range, dimension filters                  (on states: before any merge)
//!   → GROUP BY bucket(time), group_by  with merge_<kind>   (roll-up: a 1m view answers 1h, 1d, all)
//!   → finalize (avg = sum/count, HLL → distinct, DDSketch → quantile)
//!   → metric filters, ORDER BY, LIMIT
//! ```
//!
//! A bucket is in `[from, to)` when its *start* is: a range that does not fall on the view's
//! granularity takes whole buckets (the stored rows cannot be split).
//!
//! SQL (`/v1/sql`) sees two tables per view, built the same way: `<view>`, finalized at the stored
//! granularity, and `<view>_states`, the merged states at that grain, which `merge(metric)` rolls
//! up to any grain or breakdown exactly (summing a finalized distinct count or quantile across
//! rows would not be). Both of one statement read one pin of the view. DataFusion pushes the
//! caller's `WHERE` on time and dimensions below the merge.
//!
//! [`request`] checks a structured query against its view; [`plan`] builds the DataFusion plan;
//! this file holds the [`Engine`] that pins, caches, runs and times both kinds of query.

mod plan;
mod request;
mod rollup;
mod tables;

pub use request::{Filter, Order, QueryRequest};

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider,
};
use datafusion::common::DataFusionError;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use tributary_schemas::blame::{Blame, classify_datafusion_error};
use tributary_schemas::config::{TokenDef, ViewDef};
use tributary_schemas::functions::{self};
use tributary_schemas::lake::lake_url;

use crate::cache::PartialCache;
use crate::live::{Live, Pinned};
use crate::snapshots::{Snapshot, SnapshotExpired, Snapshots};
use plan::batch_states;
use rollup::RollupRule;
pub use tables::Reads;
use tables::{Kind, ViewTable};

/// The suffix of a view's state table in SQL: `pageviews_states`.
pub const STATES_SUFFIX: &str = "_states";
use request::QueryPlan;

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The caller's mistake (HTTP 4xx): `code` is stable, `message` says what to fix.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("the query ran longer than {0:?} and was cancelled; narrow the time range or filter")]
    Timeout(Duration),
    /// A system outside Tributary (the lake's object store) failed (HTTP 503).
    #[error("the lake's storage failed while answering")]
    Unavailable(#[source] DataFusionError),
    /// Ours (HTTP 500); the cause is logged, not shown.
    #[error("the query failed")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The caller's snapshot is gone (HTTP 410).
    #[error(transparent)]
    SnapshotExpired(#[from] SnapshotExpired),
    /// As many queries as `[serving] max_concurrent_queries` are running (HTTP 429).
    #[error(
        "{limit} queries are running, as many as [serving] max_concurrent_queries allows; try again shortly"
    )]
    Busy { limit: usize },
    /// The view is being built under its configured definition and cannot give what was asked
    /// yet (HTTP 503 `view_building`, with `Retry-After`).
    #[error(transparent)]
    Building(#[from] ViewBuilding),
    /// The query's operators needed more memory than `[serving] query_memory_mb` (a 4xx).
    #[error(
        "the query needs more memory than [serving] query_memory_mb ({mb} MB) allows: narrow its time range or filters, group more coarsely, or add a LIMIT"
    )]
    TooBig { mb: usize },
}

impl QueryError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        QueryError::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// What a view being built under its configured definition cannot answer yet: all of it (a view
/// with no batch version in a lake with history), or what only the configured definition has
/// while the old one answers the rest (ARCHITECTURE.md §11).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "view {view} is being built under its configured definition: {what}; it is answered once the batch layer publishes the view's first version under that definition (its progress is in GET /v1/views)"
)]
pub struct ViewBuilding {
    pub view: String,
    pub what: String,
}

impl ViewBuilding {
    /// How long a client should wait before asking again (seconds).
    pub const RETRY_AFTER_SECS: u64 = 30;

    /// Whether `pinned` gives the `columns` (time, dimensions and metrics by name) of
    /// `configured` as configured. With `rolls_up`, the reader merges the old definition's
    /// buckets into the configured ones, which it can when the old granularity divides them.
    pub fn check<'c>(
        configured: &ViewDef,
        pinned: &Pinned,
        columns: impl IntoIterator<Item = &'c str>,
        rolls_up: bool,
    ) -> Result<(), ViewBuilding> {
        let building = |what: String| ViewBuilding {
            view: configured.name.clone(),
            what,
        };
        if pinned.short {
            return Err(building(
                "it has no batch version yet, and the speed layer holds only what arrived since it started".to_owned(),
            ));
        }
        if pinned.configured {
            return Ok(());
        }
        let old = &pinned.definition;
        let mut pending = configured.not_answered_by(old);
        let rolled = rolls_up && old.granularity.divides(configured.granularity);
        if old.granularity != configured.granularity && !rolled {
            pending.push(tributary_schemas::config::TIME_COLUMN);
        }
        let mut waiting: Vec<String> = (columns.into_iter())
            .filter(|c| pending.contains(c))
            .map(|c| match c == tributary_schemas::config::TIME_COLUMN {
                true => format!(
                    "time (in {} buckets, the old definition's are {})",
                    configured.granularity, old.granularity
                ),
                false => c.to_owned(),
            })
            .collect();
        waiting.sort_unstable();
        waiting.dedup();
        match waiting.is_empty() {
            true => Ok(()),
            false => Err(building(format!(
                "{} {} only in the new definition ({} answered now under the old one)",
                waiting.join(", "),
                if waiting.len() == 1 { "is" } else { "are" },
                shared(configured, old),
            ))),
        }
    }

    /// A query that the old definition a view answers under cannot plan: `why`.
    pub fn unplannable(configured: &ViewDef, why: impl std::fmt::Display) -> Self {
        ViewBuilding {
            view: configured.name.clone(),
            what: format!("the old definition answering meanwhile cannot: {why}"),
        }
    }

    /// The building error in a DataFusion error's chain (raised by a scan).
    fn find(error: &DataFusionError) -> Option<ViewBuilding> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = source {
            if let Some(building) = error.downcast_ref::<ViewBuilding>() {
                return Some(building.clone());
            }
            if let Some(DataFusionError::External(inner)) = error.downcast_ref::<DataFusionError>()
                && let Some(building) = inner.downcast_ref::<ViewBuilding>()
            {
                return Some(building.clone());
            }
            source = error.source();
        }
        None
    }
}

/// The metrics `configured` and `old` both have as they are, for the message.
fn shared(configured: &ViewDef, old: &ViewDef) -> String {
    let pending = configured.not_answered_by(old);
    let metrics: Vec<&str> = (configured.metrics.iter())
        .map(|m| m.name.as_str())
        .filter(|m| !pending.contains(m))
        .collect();
    match metrics.is_empty() {
        true => "no metric is".to_owned(),
        false => format!("{} are", metrics.join(", ")),
    }
}

/// A DataFusion error of a plan Tributary built from a checked request: a failed store is
/// outside, anything else is ours (the request was validated before planning).
impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        if let Some(building) = ViewBuilding::find(&error) {
            return QueryError::Building(building);
        }
        if matches!(error.find_root(), DataFusionError::ResourcesExhausted(_)) {
            return QueryError::TooBig { mb: 0 };
        }
        match classify_datafusion_error(&error) {
            Blame::Outside => QueryError::Unavailable(error),
            Blame::Caller | Blame::Us => QueryError::Internal(Box::new(error)),
        }
    }
}

impl QueryError {
    /// A DataFusion error of a query the caller wrote (SQL): the caller's errors become a 400
    /// with DataFusion's message.
    fn of_sql(error: DataFusionError) -> Self {
        if let Some(building) = ViewBuilding::find(&error) {
            return QueryError::Building(building);
        }
        if matches!(error.find_root(), DataFusionError::ResourcesExhausted(_)) {
            // Without a memory limit configured, this is the machine's: say 0 (unbounded).
            return QueryError::TooBig { mb: 0 };
        }
        match classify_datafusion_error(&error) {
            Blame::Caller => QueryError::invalid("sql_failed", sql_message(&error)),
            Blame::Outside | Blame::Us => QueryError::from(error),
        }
    }
}

impl QueryError {
    /// [`Self::of_sql`], naming the memory limit a query ran into.
    fn of_query(error: DataFusionError, memory_mb: usize) -> Self {
        match Self::of_sql(error) {
            QueryError::TooBig { .. } => QueryError::TooBig { mb: memory_mb },
            other => other,
        }
    }
}

/// One view's part of an answer: what was merged.
#[derive(Debug)]
pub struct Merged {
    pub view: String,
    pub pinned: Pinned,
}

/// A computed answer.
#[derive(Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
    pub merged: Vec<Merged>,
    /// The snapshot the answer was computed from (`meta.snapshot`).
    pub snapshot: String,
    pub elapsed: Duration,
}

/// The database (DataFusion catalog) the views are tables of, as SQL and the Postgres wire name it.
pub const DATABASE: &str = "tributary";

/// Plans and runs queries over the live views.
pub struct Engine {
    live: Arc<Live>,
    cache: Arc<PartialCache>,
    snapshots: Snapshots,
    /// The shared session: functions, the lake's object store, and the catalog of the views'
    /// tables with `information_schema` and `pg_catalog`. Each statement runs in a copy of it
    /// that carries the statement's [`Reads`].
    base: Arc<SessionContext>,
    parser: PostgresCompatibilityParser,
    max_rows: usize,
    timeout: Duration,
    /// Queries running at once (`[serving] max_concurrent_queries`); past it, `Busy`.
    running: Arc<Semaphore>,
    max_running: usize,
    memory_mb: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("views", &self.live.views().len())
            .field("max_rows", &self.max_rows)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// `partial_cache_bytes` bounds the merged batch states kept for repeated query shapes.
    pub fn new(
        live: Arc<Live>,
        max_rows: usize,
        timeout: Duration,
        partial_cache_bytes: usize,
    ) -> Result<Self, QueryError> {
        Self::with_limits(live, max_rows, timeout, partial_cache_bytes, 0, 0)
    }

    /// [`Self::new`] with `memory_mb` for the operators of a query (0: unbounded; a query past it
    /// fails with `query_too_big`, nothing spills to disk while serving) and at most
    /// `max_running` queries at once (0: unbounded; past it `too_many_queries`).
    pub fn with_limits(
        live: Arc<Live>,
        max_rows: usize,
        timeout: Duration,
        partial_cache_bytes: usize,
        memory_mb: usize,
        max_running: usize,
    ) -> Result<Self, QueryError> {
        let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        );
        if memory_mb > 0 {
            runtime = runtime.with_memory_limit(memory_mb << 20, 1.0);
        }
        let runtime = runtime.build_arc()?;
        runtime.register_object_store(lake_url().as_ref(), Arc::clone(live.lake().store()));
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true)
            .with_default_catalog_and_schema(DATABASE, "public");
        let base = Arc::new(SessionContext::new_with_config_rt(config, runtime));
        functions::register_all(&base);
        for (index, view) in live.views().iter().enumerate() {
            for (name, kind) in [
                (view.name.clone(), Kind::Finalized),
                (format!("{}{STATES_SUFFIX}", view.name), Kind::States),
            ] {
                let table = ViewTable::new(&base, index, view, kind)?;
                base.register_table(name.as_str(), Arc::new(table))?;
            }
        }
        setup_pg_catalog(&base, DATABASE, EmptyContextProvider)
            .map_err(|e| QueryError::Internal(e))?;
        let cache = Arc::new(PartialCache::new(partial_cache_bytes));
        base.add_optimizer_rule(Arc::new(RollupRule::new(Arc::clone(&cache))));
        Ok(Self {
            live,
            cache,
            snapshots: Snapshots::new(Duration::from_secs(60), 256 << 20),
            base,
            parser: PostgresCompatibilityParser::new(),
            max_rows,
            timeout,
            running: Arc::new(Semaphore::new(match max_running {
                0 => Semaphore::MAX_PERMITS,
                n => n,
            })),
            max_running,
            memory_mb,
        })
    }

    /// A place among the queries running at once, or `Busy`.
    fn admit(&self) -> Result<OwnedSemaphorePermit, QueryError> {
        (Arc::clone(&self.running).try_acquire_owned()).map_err(|_| QueryError::Busy {
            limit: self.max_running,
        })
    }

    /// Keeps snapshots `ttl` after they are taken, their speed rows up to `max_bytes` (defaults:
    /// 60 s, 256 MiB).
    pub fn with_snapshots(mut self, ttl: Duration, max_bytes: usize) -> Self {
        self.snapshots = Snapshots::new(ttl, max_bytes);
        self
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    pub fn cache(&self) -> &PartialCache {
        &self.cache
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    /// The shared session the views' tables are registered in (the Postgres wire plans in it).
    pub fn base(&self) -> &Arc<SessionContext> {
        &self.base
    }

    /// A context for one structured query: the shared functions and object store, and a catalog
    /// of its own.
    fn context(&self) -> SessionContext {
        let schema = MemoryCatalogProvider::new();
        let _ = schema.register_schema("public", Arc::new(MemorySchemaProvider::new()));
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog("datafusion".to_owned(), Arc::new(schema));
        let state = SessionStateBuilder::new_from_existing(self.base.state())
            .with_catalog_list(Arc::new(catalogs))
            .build();
        SessionContext::new_with_state(state)
    }

    /// A configured view and its index, or the `unknown_view` error naming the views there are.
    pub fn view(&self, name: &str) -> Result<(usize, &ViewDef), QueryError> {
        let views = self.live.views();
        views
            .iter()
            .position(|v| v.name == name)
            .map(|i| (i, &views[i]))
            .ok_or_else(|| {
                let names: Vec<_> = views.iter().map(|v| v.name.as_str()).collect();
                QueryError::invalid(
                    "unknown_view",
                    format!(
                        "there is no view {name:?}; the views are: {}",
                        names.join(", ")
                    ),
                )
            })
    }

    fn pin(&self, index: usize) -> Result<Pinned, QueryError> {
        self.live
            .pin(index)
            .map_err(|e| QueryError::Internal(Box::new(e)))
    }

    /// The caller's row filter per view (by index), from its token (none without auth).
    pub fn row_filters(&self, caller: Option<&TokenDef>) -> Vec<Option<Expr>> {
        (self.live.views().iter())
            .map(|view| Some(caller?.row_filter(&view.name)?.expr.clone()))
            .collect()
    }

    /// Runs a structured query for `caller` (its row filter applies before the request's own).
    pub async fn query(
        &self,
        request: &QueryRequest,
        caller: Option<&TokenDef>,
    ) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let (index, view) = self.view(&request.view)?;
        let configured = QueryPlan::check(view, request, self.max_rows)?;
        let _admitted = self.admit()?;
        let allowed = self.row_filters(caller).swap_remove(index);
        let snapshot =
            (self.snapshots).open(request.snapshot.as_deref(), self.live.views().len())?;
        let pinned = snapshot.pin(index, || self.pin(index))?;
        let mut plan = match pinned.building() {
            false => configured,
            true => {
                // The caller's row filter must hold under the definition that answers.
                let filtered = (allowed.iter().flat_map(|a| a.column_refs()))
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>();
                // Its buckets are checked by `under`, which rolls them up.
                ViewBuilding::check(view, &pinned, configured.columns().chain(filtered), false)?;
                configured
                    .under(&pinned.definition, request, self.max_rows)
                    .map_err(|why| ViewBuilding::unplannable(view, why))?
            }
        };
        if let Some(allowed) = allowed {
            plan.before.insert(0, allowed);
        }
        let run = self.run_query(&plan, &pinned);
        let (schema, batches, truncated) = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| QueryError::Timeout(self.timeout))?
            .map_err(|e| match e {
                QueryError::TooBig { .. } => QueryError::TooBig { mb: self.memory_mb },
                other => other,
            })?;
        Ok(Answer {
            schema,
            batches,
            truncated,
            merged: vec![Merged {
                view: view.name.clone(),
                pinned,
            }],
            snapshot: snapshot.id().to_owned(),
            elapsed: started.elapsed(),
        })
    }

    /// The speed rows merged per group, plus the batch version's (from the cache when this shape
    /// was asked of this version before), merged again and finalized.
    async fn run_query(
        &self,
        plan: &QueryPlan<'_>,
        pinned: &Pinned,
    ) -> Result<(SchemaRef, Vec<RecordBatch>, bool), QueryError> {
        let ctx = self.context();
        let view = plan.view;
        // Rows that may still change (the open epochs): merged per query.
        let open: Vec<RecordBatch> = (pinned.speed.parts.iter())
            .filter(|p| !p.sealed)
            .map(|p| p.batch.clone())
            .collect();
        let open = MemTable::try_new(view.state_schema(), vec![open])?;
        let mut inputs = vec![plan.part(ctx.read_table(Arc::new(open))?)?];
        let schema: SchemaRef = Arc::new(inputs[0].schema().as_arrow().clone());
        // Immutable rows (sealed epochs, the batch version): merged once per query shape.
        let mut cached = Vec::new();
        for part in pinned.speed.parts.iter().filter(|p| p.sealed) {
            let key = plan.cache_key(&format!(
                "speed/{}/{}/{}",
                pinned.speed_restarts, part.partition, part.epoch
            ));
            let frame = ctx.read_batch(part.batch.clone())?;
            cached.extend(self.cached_part(plan, key, frame).await?.iter().cloned());
        }
        if let Some(version) = &pinned.version {
            let manifest = &version.manifest;
            let key = plan.cache_key(&format!(
                "batch/{}/{}",
                manifest.version, manifest.generation
            ));
            let frame = batch_states(&ctx, view, version).await?;
            cached.extend(self.cached_part(plan, key, frame).await?.iter().cloned());
        }
        if !cached.is_empty() {
            let table = MemTable::try_new(schema, vec![cached])?;
            inputs.push(ctx.read_table(Arc::new(table))?);
        }
        let merge = inputs.len() > 1;
        let merged = inputs
            .into_iter()
            .reduce(|a, b| a.union(b).expect("parts of one plan have one schema"))
            .expect("the open part is always there");
        Ok(collect(plan.finish(merged, merge)?, plan.limit).await?)
    }

    /// The part of immutable rows for this query shape, from the cache or computed and kept.
    async fn cached_part(
        &self,
        plan: &QueryPlan<'_>,
        key: String,
        rows: DataFrame,
    ) -> Result<Arc<Vec<RecordBatch>>, QueryError> {
        if let Some(batches) = self.cache.get(&key) {
            return Ok(batches);
        }
        let batches = Arc::new(plan.part(rows)?.collect().await?);
        self.cache.insert(key, Arc::clone(&batches));
        Ok(batches)
    }

    /// Runs one read-only SQL statement over the views for `caller` (its row filters apply in every
    /// scan); `snapshot` answers it from an earlier answer's data.
    pub async fn sql(
        &self,
        sql: &str,
        snapshot: Option<&str>,
        caller: Option<&TokenDef>,
    ) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let mut statements = self.parse(sql)?;
        if statements.len() != 1 {
            return Err(QueryError::invalid(
                "bad_sql",
                format!(
                    "send one statement per request (this has {})",
                    statements.len()
                ),
            ));
        }
        let statement = statements.remove(0);
        let snapshot = self.snapshots.open(snapshot, self.live.views().len())?;
        let (ctx, reads) = self.statement_context(snapshot, None, caller);
        let (schema, batches, truncated) = self
            .execute(&ctx, Statement::Sql(Box::new(statement)), self.timeout)
            .await?;
        Ok(Answer {
            schema,
            batches,
            truncated,
            merged: reads.take_merged(),
            snapshot: reads.snapshot().id().to_owned(),
            elapsed: started.elapsed(),
        })
    }

    /// Parses SQL in the Postgres dialect, rewritten where DataFusion needs it (the forms BI tools
    /// and their catalog queries send).
    pub fn parse(&self, sql: &str) -> Result<Vec<SqlStatement>, QueryError> {
        (self.parser.parse(sql)).map_err(|e| QueryError::invalid("bad_sql", e.to_string()))
    }

    /// A session for one statement of `caller` that reads the views from `snapshot`, with the
    /// caller's time zone (the wire's `SET TIME ZONE`), and what it reads.
    pub fn statement_context(
        &self,
        snapshot: Arc<Snapshot>,
        time_zone: Option<&str>,
        caller: Option<&TokenDef>,
    ) -> (SessionContext, Arc<Reads>) {
        let filters = self.row_filters(caller);
        let reads = Arc::new(Reads::new(snapshot, Arc::clone(&self.live), filters));
        let mut state = self.base.state();
        let config = state.config_mut();
        config.set_extension(Arc::clone(&reads));
        if let Some(time_zone) = time_zone {
            config.options_mut().execution.time_zone = Some(time_zone.to_owned());
        }
        (SessionContext::new_with_state(state), reads)
    }

    /// Plans a statement, refusing any that is not a query: nothing over SQL creates, changes or
    /// configures anything.
    pub async fn plan(
        &self,
        ctx: &SessionContext,
        statement: SqlStatement,
    ) -> Result<LogicalPlan, QueryError> {
        plan(ctx, statement).await
    }

    /// Plans (if need be) and runs a statement in its context, both within `timeout`, for at most
    /// [`Self::max_rows`] rows. It runs as a task of its own, so that the caller gets its timeout
    /// on time even while an operator that does not yield (a cross join's inner loop) holds the
    /// task; the task is aborted then, and stops at its next yield.
    pub async fn execute(
        &self,
        ctx: &SessionContext,
        statement: Statement,
        timeout: Duration,
    ) -> Result<(SchemaRef, Vec<RecordBatch>, bool), QueryError> {
        let _admitted = self.admit()?;
        let (ctx, max_rows, memory_mb) = (ctx.clone(), self.max_rows, self.memory_mb);
        let mut run = tokio::spawn(async move {
            let plan = match statement {
                Statement::Sql(statement) => plan(&ctx, *statement).await?,
                Statement::Planned(plan) => plan,
            };
            let frame = ctx
                .execute_logical_plan(plan)
                .await
                .map_err(QueryError::of_sql)?;
            (collect(frame, max_rows).await).map_err(|e| QueryError::of_query(e, memory_mb))
        });
        match tokio::time::timeout(timeout, &mut run).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(failed)) => Err(QueryError::Internal(Box::new(failed))),
            Err(_) => {
                run.abort();
                Err(QueryError::Timeout(timeout))
            }
        }
    }
}

/// What [`Engine::execute`] runs: SQL to plan, or a plan (the wire's, with its parameters bound).
#[derive(Debug)]
pub enum Statement {
    Sql(Box<SqlStatement>),
    Planned(LogicalPlan),
}

/// Plans a statement, refusing any that is not a query.
async fn plan(ctx: &SessionContext, statement: SqlStatement) -> Result<LogicalPlan, QueryError> {
    let bad_sql = |e: DataFusionError| QueryError::invalid("bad_sql", sql_message(&e));
    let statement = datafusion::sql::parser::Statement::Statement(Box::new(statement));
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(bad_sql)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|_| {
            QueryError::invalid(
                "read_only",
                "only queries (SELECT, WITH, VALUES, EXPLAIN) can run here: statements that create, change or configure anything are refused",
            )
        })?;
    Ok(plan)
}

/// Runs `frame` for at most `limit` rows.
async fn collect(
    frame: DataFrame,
    limit: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>, bool), DataFusionError> {
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    // An EXPLAIN must stay the plan's root; its rows are few.
    let explain = matches!(
        frame.logical_plan(),
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)
    );
    let frame = match explain {
        true => frame,
        false => frame.limit(0, Some(limit + 1))?,
    };
    let mut batches = frame.collect().await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let truncated = rows > limit;
    if truncated {
        let mut keep = limit;
        for batch in &mut batches {
            *batch = batch.slice(0, keep.min(batch.num_rows()));
            keep -= batch.num_rows();
        }
    }
    Ok((schema, batches, truncated))
}

/// The message of a DataFusion planning error, without its internal prefixes.
fn sql_message(error: &DataFusionError) -> String {
    let text = error.to_string();
    text.trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Schema error: ")
        .to_owned()
}
