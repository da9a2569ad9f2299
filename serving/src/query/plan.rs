//! The DataFusion plan of an answer: a view's state rows (the pinned batch version, in memory or
//! scanned from Parquet, ∪ the speed snapshot), filtered, merged per group with the `merge_<kind>`
//! functions (rolled up with the view's time bucket), and finalized.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, cast, ident, lit};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tributary_schemas::aggregate::StateKind;
use tributary_schemas::config::{MetricDef, MetricFunction, TIME_COLUMN, ViewDef};
use tributary_schemas::event::{FieldType, timestamp_type};
use tributary_schemas::functions::finalize::Finalize;
use tributary_schemas::functions::merge;
use tributary_schemas::functions::state::{Phase, StateUdaf};
use tributary_schemas::functions::time_bucket;
use tributary_schemas::lake::{LAKE_URL, lake_url};

use super::request::{Bucket, QueryPlan};
use crate::live::{BatchData, BatchVersion, Pinned};

/// The view's state rows: the pinned batch version's and the speed snapshot's.
pub(super) async fn states(
    ctx: &SessionContext,
    view: &ViewDef,
    pinned: &Pinned,
) -> Result<DataFrame> {
    let speed = MemTable::try_new(view.state_schema(), vec![pinned.speed.batches()])?;
    let speed = ctx.read_table(Arc::new(speed))?;
    match &pinned.version {
        None => Ok(speed),
        Some(version) => Ok(batch_states(ctx, view, version).await?.union(speed)?),
    }
}

/// A batch version's state rows, from its retention cut on (the view's `retention`: parts it
/// shares with older versions may hold earlier buckets). The speed layer's late events for
/// buckets before the cut show until the next run takes them in and drops them.
pub(super) async fn batch_states(
    ctx: &SessionContext,
    view: &ViewDef,
    version: &BatchVersion,
) -> Result<DataFrame> {
    let rows = all_batch_states(ctx, view, version).await?;
    match version.manifest.retained_from {
        None => Ok(rows),
        Some(from) => {
            let from = cast(lit(from.timestamp_millis()), timestamp_type());
            rows.filter(ident(TIME_COLUMN).gt_eq(from))
        }
    }
}

async fn all_batch_states(
    ctx: &SessionContext,
    view: &ViewDef,
    version: &BatchVersion,
) -> Result<DataFrame> {
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
            // DataFusion lists a path it cannot find as a prefix, which lists nothing: a lost part
            // would give a smaller answer, silently. Every part must be there, or the lake failed.
            let store = ctx.runtime_env().object_store(lake_url())?;
            for file in files {
                let missing = |e| DataFusionError::ObjectStore(Box::new(e));
                store
                    .head(&Path::from(file.as_str()))
                    .await
                    .map_err(missing)?;
            }
            let schema = view.state_schema();
            let urls: Vec<String> = files.iter().map(|f| format!("{LAKE_URL}{f}")).collect();
            Ok(ctx
                .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
                .await?)
        }
    }
}

pub(super) fn names(view: &ViewDef) -> Vec<String> {
    view.dimensions.iter().map(|d| d.name.clone()).collect()
}

pub(super) fn view_metrics(view: &ViewDef) -> Vec<&MetricDef> {
    view.metrics.iter().collect()
}

/// Merges state rows per (time bucket, `dimensions`); `bucket` `None` keeps the view's own buckets.
pub(super) fn group(
    frame: DataFrame,
    view: &ViewDef,
    bucket: Option<Bucket>,
    dimensions: &[String],
) -> Result<DataFrame> {
    let mut keys = Vec::new();
    match bucket {
        None => keys.push(ident(TIME_COLUMN)),
        Some(Bucket::All) => {}
        Some(Bucket::Every(granularity)) => {
            keys.push(time_bucket(ident(TIME_COLUMN), granularity).alias(TIME_COLUMN));
        }
    }
    keys.extend(dimensions.iter().map(ident));
    let merges = view.metrics.iter().map(|m| {
        StateUdaf::udaf(m.state_kind(), Phase::Merge)
            .call(vec![ident(&m.name)])
            .alias(&m.name)
    });
    frame.aggregate(keys, merges.collect())
}

/// `<view>_states` as SQL sees it: the view's merged state rows at its stored grain, each metric's
/// column marked with what it holds (field metadata) so that `merge()` can roll it up and answer it.
pub(super) fn states_table(view: &ViewDef, merged: DataFrame) -> Result<DataFrame> {
    let mut columns = vec![ident(TIME_COLUMN)];
    columns.extend(view.dimensions.iter().map(|d| ident(&d.name)));
    columns.extend(view.metrics.iter().map(|metric| {
        let metadata = merge::state_metadata(metric);
        ident(&metric.name).alias_with_metadata(&metric.name, Some(metadata.into()))
    }));
    merged.select(columns)
}

/// Finalizes the merged states of `metrics`, keeping the grouping columns.
pub(super) fn finalize(
    view: &ViewDef,
    metrics: Vec<&MetricDef>,
    frame: DataFrame,
) -> Result<DataFrame> {
    let metric_names: Vec<&str> = view.metrics.iter().map(|m| m.name.as_str()).collect();
    let mut columns: Vec<Expr> = frame
        .schema()
        .fields()
        .iter()
        .filter(|f| !metric_names.contains(&f.name().as_str()))
        .map(|f| ident(f.name()))
        .collect();
    columns.extend(metrics.into_iter().map(|m| answer(m).alias(&m.name)));
    frame.select(columns)
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

impl QueryPlan<'_> {
    /// Filters state rows and merges them per group: a partial answer, merged again by [`Self::finish`].
    pub(super) fn part(&self, states: DataFrame) -> Result<DataFrame> {
        let mut frame = states;
        if let Some(predicate) = self.before.iter().cloned().reduce(Expr::and) {
            frame = frame.filter(predicate)?;
        }
        group(frame, self.view, self.bucket, &self.group_by)
    }

    /// Merges partial answers (`merge`: the union of several, each with a row per group),
    /// finalizes, filters on metrics and orders. A single part is not merged again: its groups
    /// are unique, and DataFusion would add every column that depends on them to the grouping.
    pub(super) fn finish(&self, parts: DataFrame, merge: bool) -> Result<DataFrame> {
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
        frame.sort(self.order.clone())
    }
}
