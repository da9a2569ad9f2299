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
//! SQL (`/v1/sql`) sees one table per view, finalized at the stored granularity, built the same way;
//! DataFusion pushes the caller's `WHERE` on time and dimensions below the merge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider,
};
use datafusion::common::TableReference;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::config::Dialect;
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, SortExpr, cast, ident, lit};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};
use serde::Deserialize;
use serde_json::Value as Json;
use tributary_batch::recompute::plan::{LAKE_URL, lake_url};
use tributary_schemas::aggregate::StateKind;
use tributary_schemas::aggregate::udaf::{Phase, StateUdaf};
use tributary_schemas::config::{MetricDef, MetricFunction, TIME_COLUMN, ViewDef};
use tributary_schemas::duration::Granularity;
use tributary_schemas::event::{FieldType, timestamp_type};

use crate::cache::PartialCache;
use crate::finalize::Finalize;
use crate::live::{BatchData, BatchVersion, Live, Pinned};

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The caller's mistake (HTTP 4xx): `code` is stable, `message` says what to fix.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("the query ran longer than {0:?} and was cancelled; narrow the time range or filter")]
    Timeout(Duration),
    /// Ours (HTTP 500); the message is logged, not shown.
    #[error("query failed: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        QueryError::Invalid {
            code,
            message: message.into(),
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        QueryError::Internal(error.to_string())
    }
}

/// `POST /v1/query`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub view: String,
    /// RFC 3339; the first bucket start included. Default: the beginning of time.
    pub from: Option<String>,
    /// RFC 3339; the first bucket start excluded. Default: no end.
    pub to: Option<String>,
    /// A multiple of the view's granularity (`"1h"`, `"1d"`), or `"all"` for one row per group.
    /// Default: the view's own.
    pub granularity: Option<String>,
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Default: every metric of the view.
    #[serde(default)]
    pub metrics: Vec<String>,
    #[serde(default)]
    pub filter: Vec<Filter>,
    #[serde(default)]
    pub order_by: Vec<Order>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub field: String,
    pub op: String,
    #[serde(default)]
    pub value: Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub field: String,
    #[serde(default)]
    pub desc: bool,
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
    pub elapsed: Duration,
}

/// Plans and runs queries over the live views.
#[derive(Debug)]
pub struct Engine {
    live: Arc<Live>,
    cache: PartialCache,
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
        runtime.register_object_store(lake_url().as_ref(), Arc::clone(live.store()));
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true);
        let context = SessionContext::new_with_config_rt(config, runtime);
        Ok(Self {
            live,
            cache: PartialCache::new(partial_cache_bytes),
            session: context.state(),
            max_rows,
            timeout,
        })
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
            .map_err(|e| QueryError::Internal(format!("{e:#}")))
    }

    /// Runs a structured query.
    pub async fn query(&self, request: &QueryRequest) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let (index, view) = self.view(&request.view)?;
        let plan = QueryPlan::check(view, request, self.max_rows)?;
        let pinned = self.pin(index)?;
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
        self.collect(plan.finish(merged, merge)?, plan.limit).await
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

    /// Runs a read-only SQL query over the finalized views.
    pub async fn sql(&self, sql: &str) -> Result<Answer, QueryError> {
        let started = Instant::now();
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
            let Ok((index, view)) = self.view(name) else {
                continue; // DataFusion names the missing table
            };
            if merged.iter().any(|m: &Merged| m.view == view.name) {
                continue;
            }
            let pinned = self.pin(index)?;
            let finalized = finalize(
                view,
                view_metrics(view),
                group(states(&ctx, view, &pinned).await?, view, None, &names(view))?,
            )?;
            ctx.register_table(table.clone(), finalized.into_view())?;
            merged.push(Merged {
                view: view.name.clone(),
                pinned,
            });
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
            .map_err(|e| match e {
                QueryError::Internal(message) => QueryError::invalid("sql_failed", message),
                other => other,
            })?;
        Ok(Answer {
            schema,
            batches,
            truncated,
            merged,
            elapsed: started.elapsed(),
        })
    }

    /// Runs `frame` for at most `limit` rows.
    async fn collect(
        &self,
        frame: DataFrame,
        limit: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>, bool), QueryError> {
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

/// The view's state rows: the pinned batch version's and the speed snapshot's.
async fn states(
    ctx: &SessionContext,
    view: &ViewDef,
    pinned: &Pinned,
) -> Result<DataFrame, QueryError> {
    let speed = MemTable::try_new(view.state_schema(), vec![pinned.speed.batches()])?;
    let speed = ctx.read_table(Arc::new(speed))?;
    match &pinned.version {
        None => Ok(speed),
        Some(version) => Ok(batch_states(ctx, view, version).await?.union(speed)?),
    }
}

/// A batch version's state rows.
async fn batch_states(
    ctx: &SessionContext,
    view: &ViewDef,
    version: &BatchVersion,
) -> Result<DataFrame, QueryError> {
    match &version.data {
        BatchData::Memory(batches) => {
            // Two partitions, so that the scan and the partial merge use both cores.
            let half = batches.len().div_ceil(2).max(1);
            let partitions: Vec<Vec<RecordBatch>> =
                batches.chunks(half).map(<[_]>::to_vec).collect();
            let table = MemTable::try_new(view.state_schema(), partitions)?;
            Ok(ctx.read_table(Arc::new(table))?)
        }
        BatchData::Parquet(files) => {
            let schema = view.state_schema();
            let urls: Vec<String> = files.iter().map(|f| format!("{LAKE_URL}{f}")).collect();
            Ok(ctx
                .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
                .await?)
        }
    }
}

fn names(view: &ViewDef) -> Vec<String> {
    view.dimensions.iter().map(|d| d.name.clone()).collect()
}

fn view_metrics(view: &ViewDef) -> Vec<&MetricDef> {
    view.metrics.iter().collect()
}

/// Merges state rows per (time bucket, `dimensions`); `bucket` `None` keeps the view's own buckets.
fn group(
    frame: DataFrame,
    view: &ViewDef,
    bucket: Option<Bucket>,
    dimensions: &[String],
) -> Result<DataFrame, QueryError> {
    let mut keys = Vec::new();
    match bucket {
        None => keys.push(ident(TIME_COLUMN)),
        Some(Bucket::All) => {}
        Some(Bucket::Every(ms)) => {
            let t = cast(ident(TIME_COLUMN), DataType::Int64);
            let floor = t.clone() - ((t % lit(ms)) + lit(ms)) % lit(ms);
            keys.push(cast(floor, timestamp_type()).alias(TIME_COLUMN));
        }
    }
    keys.extend(dimensions.iter().map(ident));
    let merges = view.metrics.iter().map(|m| {
        StateUdaf::udaf(m.state_kind(), Phase::Merge)
            .call(vec![ident(&m.name)])
            .alias(&m.name)
    });
    Ok(frame.aggregate(keys, merges.collect())?)
}

/// Finalizes the merged states of `metrics`, keeping the grouping columns.
fn finalize(
    view: &ViewDef,
    metrics: Vec<&MetricDef>,
    frame: DataFrame,
) -> Result<DataFrame, QueryError> {
    let metric_names: Vec<&str> = view.metrics.iter().map(|m| m.name.as_str()).collect();
    let mut columns: Vec<Expr> = frame
        .schema()
        .fields()
        .iter()
        .filter(|f| !metric_names.contains(&f.name().as_str()))
        .map(|f| ident(f.name()))
        .collect();
    columns.extend(metrics.into_iter().map(|m| answer(m).alias(&m.name)));
    Ok(frame.select(columns)?)
}

/// The expression answering one merged metric.
fn answer(metric: &MetricDef) -> Expr {
    let state = ident(&metric.name);
    let timestamp = metric
        .field
        .as_ref()
        .is_some_and(|f| f.ty == FieldType::Timestamp);
    match (metric.state_kind(), metric.function) {
        (StateKind::Avg, _) => Finalize::avg().call(vec![state]),
        (StateKind::CountDistinct, _) => Finalize::count_distinct().call(vec![state]),
        (StateKind::Quantile, MetricFunction::Quantile(q)) => {
            Finalize::quantile(q).call(vec![state])
        }
        (StateKind::IntMin | StateKind::IntMax, _) if timestamp => cast(state, timestamp_type()),
        _ => state,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    All,
    Every(i64),
}

/// A checked structured query.
#[derive(Debug)]
struct QueryPlan<'v> {
    view: &'v ViewDef,
    bucket: Option<Bucket>,
    group_by: Vec<String>,
    metrics: Vec<&'v MetricDef>,
    before: Vec<Expr>,
    after: Vec<Expr>,
    order: Vec<SortExpr>,
    limit: usize,
}

impl<'v> QueryPlan<'v> {
    fn check(
        view: &'v ViewDef,
        request: &QueryRequest,
        max_rows: usize,
    ) -> Result<Self, QueryError> {
        let dimension_names = names(view);
        let list = |names: &[String]| names.join(", ");
        let bucket = match request.granularity.as_deref() {
            None => None,
            Some("all") => Some(Bucket::All),
            Some(text) => {
                let wanted = Granularity::parse(text).map_err(|e| {
                    QueryError::invalid(
                        "bad_granularity",
                        format!("granularity {text:?}: {e} (or write \"all\")"),
                    )
                })?;
                if !view.granularity.divides(wanted) {
                    return Err(QueryError::invalid(
                        "bad_granularity",
                        format!(
                            "view {} stores {} buckets, so granularity must be a multiple of {} (or \"all\"), not {text}",
                            view.name, view.granularity, view.granularity
                        ),
                    ));
                }
                (wanted != view.granularity).then_some(Bucket::Every(wanted.millis()))
            }
        };
        let mut group_by = Vec::new();
        for name in &request.group_by {
            if !dimension_names.contains(name) {
                return Err(QueryError::invalid(
                    "unknown_field",
                    format!(
                        "cannot group by {name:?}: the dimensions of {} are: {}",
                        view.name,
                        list(&dimension_names)
                    ),
                ));
            }
            if group_by.contains(name) {
                return Err(QueryError::invalid(
                    "bad_group_by",
                    format!("{name:?} is listed twice in group_by"),
                ));
            }
            group_by.push(name.clone());
        }
        let metrics: Vec<&MetricDef> = if request.metrics.is_empty() {
            view.metrics.iter().collect()
        } else {
            let mut metrics = Vec::new();
            for name in &request.metrics {
                let metric = view.metric(name).ok_or_else(|| {
                    let names: Vec<String> = view.metrics.iter().map(|m| m.name.clone()).collect();
                    QueryError::invalid(
                        "unknown_metric",
                        format!(
                            "there is no metric {name:?} in {}; its metrics are: {}",
                            view.name,
                            list(&names)
                        ),
                    )
                })?;
                if !metrics.iter().any(|m: &&MetricDef| m.name == *name) {
                    metrics.push(metric);
                }
            }
            metrics
        };

        let mut before = Vec::new();
        let from = request
            .from
            .as_deref()
            .map(|t| time("from", t))
            .transpose()?;
        let to = request.to.as_deref().map(|t| time("to", t)).transpose()?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(QueryError::invalid(
                "bad_time_range",
                "from must be before to",
            ));
        }
        if let Some(from) = from {
            before.push(ident(TIME_COLUMN).gt_eq(timestamp_literal(from)));
        }
        if let Some(to) = to {
            before.push(ident(TIME_COLUMN).lt(timestamp_literal(to)));
        }
        let mut after = Vec::new();
        for filter in &request.filter {
            if let Some(dimension) = view.dimensions.iter().find(|d| d.name == filter.field) {
                before.push(condition(filter, dimension.ty)?);
            } else if let Some(metric) = metrics.iter().find(|m| m.name == filter.field) {
                let ty = match metric.output_type() {
                    DataType::Int64 => FieldType::Int64,
                    DataType::Float64 => FieldType::Float64,
                    _ => FieldType::Timestamp,
                };
                after.push(condition(filter, ty)?);
            } else {
                return Err(QueryError::invalid(
                    "unknown_field",
                    format!(
                        "cannot filter on {:?}: filter a dimension ({}) or a requested metric",
                        filter.field,
                        list(&dimension_names)
                    ),
                ));
            }
        }

        let mut outputs: Vec<String> = Vec::new();
        if bucket != Some(Bucket::All) {
            outputs.push(TIME_COLUMN.to_owned());
        }
        outputs.extend(group_by.iter().cloned());
        outputs.extend(metrics.iter().map(|m| m.name.clone()));
        let mut order = Vec::new();
        for item in &request.order_by {
            if !outputs.contains(&item.field) {
                return Err(QueryError::invalid(
                    "unknown_field",
                    format!(
                        "cannot order by {:?}: the answer's columns are: {}",
                        item.field,
                        list(&outputs)
                    ),
                ));
            }
            order.push(ident(&item.field).sort(!item.desc, false));
        }
        // Then by time and the groups, so that equal keys come back in a stable order.
        let groups = outputs.iter().take(outputs.len() - metrics.len());
        order.extend(groups.map(|name| ident(name).sort(true, false)));

        let limit = request.limit.unwrap_or(max_rows);
        if limit == 0 || limit > max_rows {
            return Err(QueryError::invalid(
                "bad_limit",
                format!("limit must be between 1 and {max_rows} (the server's max_rows)"),
            ));
        }
        Ok(Self {
            view,
            bucket,
            group_by,
            metrics,
            before,
            after,
            order,
            limit,
        })
    }

    /// Filters state rows and merges them per group: a partial answer, merged again by [`Self::finish`].
    fn part(&self, states: DataFrame) -> Result<DataFrame, QueryError> {
        let mut frame = states;
        if let Some(predicate) = self.before.iter().cloned().reduce(Expr::and) {
            frame = frame.filter(predicate)?;
        }
        group(frame, self.view, self.bucket, &self.group_by)
    }

    /// Merges partial answers (`merge`: the union of several, each with a row per group),
    /// finalizes, filters on metrics and orders. A single part is not merged again: its groups
    /// are unique, and DataFusion would add every column that depends on them to the grouping.
    fn finish(&self, parts: DataFrame, merge: bool) -> Result<DataFrame, QueryError> {
        let frame = match merge {
            true => group(parts, self.view, self.bucket, &self.group_by)?,
            false => parts,
        };
        let mut frame = finalize(self.view, self.metrics.clone(), frame)?;
        if let Some(predicate) = self.after.iter().cloned().reduce(Expr::and) {
            frame = frame.filter(predicate)?;
        }
        if self.order.is_empty() {
            return Ok(frame);
        }
        Ok(frame.sort(self.order.clone())?)
    }

    /// What decides [`Self::part`] of immutable rows: which rows (`source`) and the query's shape.
    fn cache_key(&self, source: &str) -> String {
        format!(
            "{}/{source}/{:?}/{:?}/{:?}",
            self.view.name, self.bucket, self.group_by, self.before
        )
    }
}

fn time(which: &str, text: &str) -> Result<i64, QueryError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            QueryError::invalid(
                "bad_time_range",
                format!(
                    "{which} {text:?} is not an RFC 3339 time such as 2026-11-21T10:00:00Z ({e})"
                ),
            )
        })
}

fn timestamp_literal(ms: i64) -> Expr {
    lit(ScalarValue::TimestampMillisecond(
        Some(ms),
        Some("UTC".into()),
    ))
}

/// The predicate of one filter on a column of type `ty`.
fn condition(filter: &Filter, ty: FieldType) -> Result<Expr, QueryError> {
    let column = ident(&filter.field);
    let one = || scalar(&filter.field, &filter.value, ty);
    let many = || match &filter.value {
        Json::Array(values) if !values.is_empty() => values
            .iter()
            .map(|v| scalar(&filter.field, v, ty).map(lit))
            .collect::<Result<Vec<_>, _>>(),
        _ => Err(QueryError::invalid(
            "bad_filter",
            format!(
                "filter on {:?} with {:?} needs a non-empty array value",
                filter.field, filter.op
            ),
        )),
    };
    Ok(match filter.op.as_str() {
        "eq" | "=" => column.eq(lit(one()?)),
        "ne" | "!=" => column.not_eq(lit(one()?)),
        "lt" | "<" => column.lt(lit(one()?)),
        "lte" | "<=" => column.lt_eq(lit(one()?)),
        "gt" | ">" => column.gt(lit(one()?)),
        "gte" | ">=" => column.gt_eq(lit(one()?)),
        "in" => column.in_list(many()?, false),
        "not_in" => column.in_list(many()?, true),
        "is_null" => column.is_null(),
        "is_not_null" => column.is_not_null(),
        op => {
            return Err(QueryError::invalid(
                "bad_filter",
                format!(
                    "unknown filter op {op:?} on {:?} (use eq, ne, lt, lte, gt, gte, in, not_in, is_null or is_not_null)",
                    filter.field
                ),
            ));
        }
    })
}

/// A JSON filter value as a literal of the field's type.
fn scalar(field: &str, value: &Json, ty: FieldType) -> Result<ScalarValue, QueryError> {
    let parsed = match (ty, value) {
        (FieldType::String, Json::String(s)) => Some(ScalarValue::Utf8(Some(s.clone()))),
        (FieldType::Int64, Json::Number(n)) => n.as_i64().map(|v| ScalarValue::Int64(Some(v))),
        (FieldType::Float64, Json::Number(n)) => n.as_f64().map(|v| ScalarValue::Float64(Some(v))),
        (FieldType::Bool, Json::Bool(b)) => Some(ScalarValue::Boolean(Some(*b))),
        (FieldType::Timestamp, Json::Number(n)) => n
            .as_i64()
            .map(|v| ScalarValue::TimestampMillisecond(Some(v), Some("UTC".into()))),
        (FieldType::Timestamp, Json::String(s)) => {
            let ms = time(field, s)?;
            Some(ScalarValue::TimestampMillisecond(
                Some(ms),
                Some("UTC".into()),
            ))
        }
        _ => None,
    };
    parsed.ok_or_else(|| {
        QueryError::invalid(
            "bad_filter",
            format!(
                "filter on {field:?} needs a {} value, not {value}",
                ty.name()
            ),
        )
    })
}
