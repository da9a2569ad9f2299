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

pub use request::{Filter, Order, QueryRequest};

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider,
};
use datafusion::common::DataFusionError;
use datafusion::common::TableReference;
use datafusion::config::Dialect;
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use tributary_schemas::blame::{Blame, classify_datafusion_error};
use tributary_schemas::config::ViewDef;
use tributary_schemas::functions::{self};
use tributary_schemas::lake::lake_url;

use crate::cache::PartialCache;
use crate::live::{Live, Pinned};
use crate::snapshots::{SnapshotExpired, Snapshots};
use plan::{batch_states, finalize, group, names, states, states_table, view_metrics};

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
}

impl QueryError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        QueryError::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// A DataFusion error of a plan Tributary built from a checked request: a failed store is
/// outside, anything else is ours (the request was validated before planning).
impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
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
        match classify_datafusion_error(&error) {
            Blame::Caller => QueryError::invalid("sql_failed", sql_message(&error)),
            Blame::Outside | Blame::Us => QueryError::from(error),
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

/// Plans and runs queries over the live views.
#[derive(Debug)]
pub struct Engine {
    live: Arc<Live>,
    cache: PartialCache,
    snapshots: Snapshots,
    session: SessionState,
    max_rows: usize,
    timeout: Duration,
}

impl Engine {
    /// `partial_cache_bytes` bounds the merged batch states kept for repeated query shapes.
    pub fn new(
        live: Arc<Live>,
        max_rows: usize,
        timeout: Duration,
        partial_cache_bytes: usize,
    ) -> Result<Self, QueryError> {
        let runtime = RuntimeEnvBuilder::new().build_arc()?;
        runtime.register_object_store(lake_url().as_ref(), Arc::clone(live.lake().store()));
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true);
        let context = SessionContext::new_with_config_rt(config, runtime);
        functions::register_all(&context);
        Ok(Self {
            live,
            cache: PartialCache::new(partial_cache_bytes),
            snapshots: Snapshots::new(Duration::from_secs(60), 256 << 20),
            session: context.state(),
            max_rows,
            timeout,
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

    /// A context for one query: the shared functions and object store, and a catalog of its own
    /// (the query registers the views it pinned there).
    fn context(&self) -> SessionContext {
        let schema = MemoryCatalogProvider::new();
        let _ = schema.register_schema("public", Arc::new(MemorySchemaProvider::new()));
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog("datafusion".to_owned(), Arc::new(schema));
        let state = SessionStateBuilder::new_from_existing(self.session.clone())
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

    /// Runs a structured query.
    pub async fn query(&self, request: &QueryRequest) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let (index, view) = self.view(&request.view)?;
        let plan = QueryPlan::check(view, request, self.max_rows)?;
        let snapshot =
            (self.snapshots).open(request.snapshot.as_deref(), self.live.views().len())?;
        let pinned = snapshot.pin(index, || self.pin(index))?;
        let run = self.run_query(&plan, &pinned);
        let (schema, batches, truncated) = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| QueryError::Timeout(self.timeout))??;
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
        Ok(self
            .collect(plan.finish(merged, merge)?, plan.limit)
            .await?)
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

    /// Runs a read-only SQL query over the views; `snapshot` answers it from an earlier answer's
    /// data.
    pub async fn sql(&self, sql: &str, snapshot: Option<&str>) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let snapshot = self.snapshots.open(snapshot, self.live.views().len())?;
        let ctx = self.context();
        let state = ctx.state();
        let bad_sql = |e: DataFusionError| QueryError::invalid("bad_sql", sql_message(&e));
        let statement = state
            .sql_to_statement(sql, &Dialect::Generic)
            .map_err(bad_sql)?;
        let mut merged = Vec::new();
        for table in state
            .resolve_table_references(&statement)
            .map_err(bad_sql)?
        {
            let TableReference::Bare { table: name } = &table else {
                continue;
            };
            // `<view>` (finalized) or `<view>_states` (states for `merge()`), both at the stored grain.
            let states_of = |name: &str| {
                let view_name = name.strip_suffix(STATES_SUFFIX)?;
                self.view(view_name).ok()
            };
            let ((index, view), as_states) = match self.view(name) {
                Ok(found) => (found, false),
                Err(_) => match states_of(name) {
                    Some(found) => (found, true),
                    None => continue, // DataFusion names the missing table
                },
            };
            let pinned = snapshot.pin(index, || self.pin(index))?;
            let rows = group(states(&ctx, view, &pinned).await?, view, None, &names(view))?;
            let table_frame = match as_states {
                true => states_table(view, rows)?,
                false => finalize(view, view_metrics(view), rows)?,
            };
            ctx.register_table(table.clone(), table_frame.into_view())?;
            if !merged.iter().any(|m: &Merged| m.view == view.name) {
                merged.push(Merged {
                    view: view.name.clone(),
                    pinned,
                });
            }
        }
        let plan = state.statement_to_plan(statement).await.map_err(bad_sql)?;
        datafusion::execution::context::SQLOptions::new()
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
        let frame = ctx.execute_logical_plan(plan).await.map_err(bad_sql)?;
        let run = self.collect(frame, self.max_rows);
        let (schema, batches, truncated) = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| QueryError::Timeout(self.timeout))?
            .map_err(QueryError::of_sql)?;
        Ok(Answer {
            schema,
            batches,
            truncated,
            merged,
            snapshot: snapshot.id().to_owned(),
            elapsed: started.elapsed(),
        })
    }

    /// Runs `frame` for at most `limit` rows.
    async fn collect(
        &self,
        frame: DataFrame,
        limit: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>, bool), DataFusionError> {
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let frame = frame.limit(0, Some(limit + 1))?;
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
}

/// The message of a DataFusion planning error, without its internal prefixes.
fn sql_message(error: &DataFusionError) -> String {
    let text = error.to_string();
    text.trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Schema error: ")
        .to_owned()
}
