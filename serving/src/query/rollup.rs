//! Roll-ups in SQL merge each part of a view once per query shape, as `/v1/query` does.
//!
//! A dashboard's SQL is one shape over and over: `SELECT <time bucket>, <dimensions>, merge(m)...
//! FROM <view>_states WHERE <time range and dimensions> GROUP BY ...`. Planned as written, every
//! run merges every state row of the batch version that passes the filter (144k sketches for a
//! day of one country at 1m), though the version never changes. [`RollupRule`] rewrites that shape
//! into two steps:
//!
//! ```text
//! Aggregate(keys, merge(m)...)                       Projection(the original names)
//!   [Filter(p), column Projection]        =>           Aggregate(k0.., merge(m)...)      final merge
//!     TableScan(<view>_states, filters q)                TableScan(Rollup)             a row per part and group
//! ```
//!
//! [`Rollup`]'s scan merges each part of the pinned view (the batch version, each sealed speed
//! epoch, the open speed rows) per group of the keys over the rows passing `p AND q`, and keeps the
//! result of the immutable parts in the engine's partial cache, keyed by part and shape: what the
//! structured queries' cache does (`cache.rs`). The final merge then reads a row per part and
//! group. Any other statement runs as written, through the tables of `tables.rs`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{MemTable, TableType, provider_as_source, source_as_provider};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, TableScan, col, ident,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use tributary_schemas::config::ViewDef;
use tributary_schemas::functions::merge;
use tributary_schemas::functions::state::{Phase, StateUdaf};

use super::ViewBuilding;
use super::plan::batch_states;
use super::tables::{Kind, Reads, ViewTable};
use crate::cache::PartialCache;

/// The optimizer rule; the last of the engine's logical rules, so that it sees the filters
/// DataFusion pushed into the scan.
#[derive(Debug)]
pub(crate) struct RollupRule {
    cache: Arc<PartialCache>,
}

impl RollupRule {
    pub(crate) fn new(cache: Arc<PartialCache>) -> Self {
        Self { cache }
    }
}

/// A key or a predicate over the state rows themselves: no table qualifiers.
fn unqualified(expr: Expr) -> Result<Expr> {
    use datafusion::common::tree_node::TreeNode;
    expr.transform(|e| match e {
        Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(
            Column::new_unqualified(c.name),
        ))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// `merge(column [, q])`, as written.
struct MergeCall {
    column: String,
    quantile: Option<Expr>,
}

fn merge_call(expr: &Expr) -> Option<MergeCall> {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return None;
    };
    let plain = !params.distinct && params.filter.is_none() && params.order_by.is_empty();
    if func.name() != "merge" || !plain {
        return None;
    }
    let Expr::Column(column) = params.args.first()? else {
        return None;
    };
    let quantile = match params.args.get(1) {
        None => None,
        Some(q @ Expr::Literal(..)) => Some(q.clone()),
        Some(_) => return None,
    };
    Some(MergeCall {
        column: column.name.clone(),
        quantile,
    })
}

impl RollupRule {
    /// The rewrite of `aggregate`, if it has the shape.
    fn rollup(&self, aggregate: &Aggregate) -> Result<Option<LogicalPlan>> {
        let calls: Option<Vec<MergeCall>> = aggregate.aggr_expr.iter().map(merge_call).collect();
        let Some(calls) = calls else {
            return Ok(None);
        };
        if calls.is_empty() || aggregate.group_expr.iter().any(Expr::is_volatile) {
            return Ok(None);
        }
        if (aggregate.group_expr.iter()).any(|e| matches!(e, Expr::GroupingSet(_))) {
            return Ok(None);
        }
        // Filters and aliases down to the scan of a states table.
        let mut predicates = Vec::new();
        let mut input = aggregate.input.as_ref();
        let scan: &TableScan = loop {
            match input {
                LogicalPlan::Filter(filter) => {
                    predicates.push(filter.predicate.clone());
                    input = filter.input.as_ref();
                }
                LogicalPlan::SubqueryAlias(alias) => input = alias.input.as_ref(),
                // Columns passed through as they are (DataFusion's projection pushdown).
                LogicalPlan::Projection(projection)
                    if projection.expr.iter().all(|e| matches!(e, Expr::Column(_))) =>
                {
                    input = projection.input.as_ref();
                }
                LogicalPlan::TableScan(scan) => break scan,
                _ => return Ok(None),
            }
        };
        let provider = source_as_provider(&scan.source)?;
        let provider: &dyn std::any::Any = provider.as_ref();
        let Some(table) = provider.downcast_ref::<ViewTable>() else {
            return Ok(None);
        };
        if table.kind() != Kind::States || scan.fetch.is_some() {
            return Ok(None);
        }
        predicates.extend(scan.filters.iter().cloned());
        if predicates
            .iter()
            .any(|p| p.is_volatile() || p.contains_outer())
        {
            return Ok(None);
        }
        let view = table.view();
        let keys = (aggregate.group_expr.iter().cloned())
            .map(unqualified)
            .collect::<Result<Vec<_>>>()?;
        let predicate = (predicates.into_iter().map(unqualified))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .reduce(Expr::and);
        let mut columns: Vec<String> = calls.iter().map(|c| c.column.clone()).collect();
        columns.sort();
        columns.dedup();
        let rollup = Rollup::new(
            table.index(),
            view,
            keys,
            predicate,
            columns,
            Arc::clone(&self.cache),
        )?;

        let key_names: Vec<String> = (0..rollup.keys.len()).map(|i| format!("k{i}")).collect();
        let merges = calls.iter().map(|call| {
            let mut args = vec![col(Column::new(Some("rollup"), &call.column))];
            args.extend(call.quantile.clone());
            merge::Merge::udaf().call(args)
        });
        let merged =
            LogicalPlanBuilder::scan("rollup", provider_as_source(Arc::new(rollup)), None)?
                .aggregate(
                    key_names
                        .iter()
                        .map(|k| col(Column::new(Some("rollup"), k))),
                    merges,
                )?
                .build()?;
        // The original output names, so the plan above reads the columns it planned with.
        let renamed = (merged.schema().columns().into_iter())
            .zip(aggregate.schema.iter())
            .map(|(column, (qualifier, field))| {
                Expr::Column(column).alias_qualified(qualifier.cloned(), field.name())
            });
        Ok(Some(
            LogicalPlanBuilder::from(merged).project(renamed)?.build()?,
        ))
    }
}

impl OptimizerRule for RollupRule {
    fn name(&self) -> &str {
        "tributary_rollup"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match self.rollup(aggregate)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// A view's state rows merged per part and group of `keys` (columns `k0`, `k1`, ..., then one state
/// column per metric merged, with the metadata `merge()` plans with).
#[derive(Debug)]
struct Rollup {
    index: usize,
    view: ViewDef,
    keys: Vec<Expr>,
    predicate: Option<Expr>,
    columns: Vec<String>,
    cache: Arc<PartialCache>,
    schema: SchemaRef,
    /// Identifies the shape in cache keys.
    shape: String,
}

impl Rollup {
    fn new(
        index: usize,
        view: &ViewDef,
        keys: Vec<Expr>,
        predicate: Option<Expr>,
        columns: Vec<String>,
        cache: Arc<PartialCache>,
    ) -> Result<Self> {
        let shape = format!("{keys:?}/{predicate:?}/{columns:?}");
        let mut rollup = Self {
            index,
            view: view.clone(),
            keys,
            predicate,
            columns,
            cache,
            schema: Arc::new(arrow::datatypes::Schema::empty()),
            shape,
        };
        let ctx = SessionContext::new();
        let none = MemTable::try_new(view.state_schema(), vec![vec![]])?;
        let planned = rollup.merged(ctx.read_table(Arc::new(none))?, None)?;
        rollup.schema = Arc::new(planned.schema().as_arrow().clone());
        Ok(rollup)
    }

    /// One part's rows, filtered (the caller's row filter first) and merged per group.
    fn merged(&self, rows: DataFrame, allowed: Option<&Expr>) -> Result<DataFrame> {
        let rows = match allowed {
            Some(allowed) => rows.filter(allowed.clone())?,
            None => rows,
        };
        let rows = match &self.predicate {
            Some(predicate) => rows.filter(predicate.clone())?,
            None => rows,
        };
        let keys =
            (self.keys.iter().enumerate()).map(|(i, key)| key.clone().alias(format!("k{i}")));
        let merges = self.columns.iter().map(|name| {
            let metric = (self.view.metrics.iter())
                .find(|m| &m.name == name)
                .expect("merge() planned over this view's state columns");
            StateUdaf::udaf(metric.state_kind(), Phase::Merge)
                .call(vec![ident(name)])
                .alias_with_metadata(name, Some(merge::state_metadata(metric).into()))
        });
        rows.aggregate(keys.collect(), merges.collect())
    }

    /// An immutable part's merged rows, from the cache or computed and kept (per row filter).
    async fn cached(
        &self,
        part: &str,
        rows: DataFrame,
        allowed: Option<&Expr>,
    ) -> Result<Arc<Vec<RecordBatch>>> {
        let key = format!("sql/{}/{part}/{}/{allowed:?}", self.view.name, self.shape);
        if let Some(batches) = self.cache.get(&key) {
            return Ok(batches);
        }
        let batches = Arc::new(self.merged(rows, allowed)?.collect().await?);
        self.cache.insert(key, Arc::clone(&batches));
        Ok(batches)
    }
}

#[async_trait]
impl TableProvider for Rollup {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (state, reads) = Reads::of(session, &self.view.name)?;
        let pinned = reads.pin(self.index)?;
        let allowed = reads.row_filter(self.index);
        // While the view builds, the old definition answers what it has as configured.
        let read = (self.keys.iter().chain(&self.predicate).chain(allowed))
            .flat_map(|e| e.column_refs())
            .map(|c| c.name.as_str())
            .chain(self.columns.iter().map(String::as_str));
        ViewBuilding::check(&self.view, &pinned, read, false)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // Parts of another definition never share a cache entry.
        let definition = pinned.definition.definition_hash();
        let ctx = SessionContext::new_with_state(state.clone());
        let schema = pinned.definition.state_schema();
        // Rows that may still change (open epochs): merged per query.
        let open: Vec<RecordBatch> = (pinned.speed.parts.iter())
            .filter(|p| !p.sealed)
            .map(|p| p.batch.clone())
            .collect();
        let open = ctx.read_table(Arc::new(MemTable::try_new(
            Arc::clone(&schema),
            vec![open],
        )?))?;
        let mut partitions = vec![self.merged(open, allowed)?.collect().await?];
        // Immutable rows (sealed epochs, the batch version): merged once per shape.
        let mut immutable = Vec::new();
        for part in pinned.speed.parts.iter().filter(|p| p.sealed) {
            let name = format!(
                "{definition}/speed/{}/{}/{}",
                pinned.speed_restarts, part.partition, part.epoch
            );
            let rows = ctx.read_batch(part.batch.clone())?;
            immutable.extend(self.cached(&name, rows, allowed).await?.iter().cloned());
        }
        if let Some(version) = &pinned.version {
            let manifest = &version.manifest;
            let name = format!(
                "{definition}/batch/{}/{}",
                manifest.version, manifest.generation
            );
            let rows = batch_states(&ctx, &pinned.definition, version).await?;
            immutable.extend(self.cached(&name, rows, allowed).await?.iter().cloned());
        }
        partitions.push(immutable);
        let exec = MemorySourceConfig::try_new_exec(
            &partitions,
            Arc::clone(&self.schema),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
