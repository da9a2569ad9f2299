//! The recompute's sort by time bucket, done in one copy of the aggregation's output.
//!
//! A hash aggregation emits all its groups as one batch and hands it on in zero-copy slices.
//! DataFusion's [`SortExec`] would count every slice as the whole output (see [`Compact`]), so the
//! slices were first copied, then each copy sorted (a second copy), then the sorted runs merged (a
//! third): three copies of a `pageviews` day's ~260 MB, and as many fresh pages to fault in.
//!
//! [`TimeSort`] keeps the slices as they are, reserves the buffers they share once, orders
//! `(time, batch, row)` keys with a stable sort (the aggregation emits groups in first-seen order,
//! which is nearly time order, and the sort exploits its runs) and gathers the rows in time order,
//! `batch_size` at a time: one copy, handed on and freed batch by batch.
//!
//! When the pool cannot hold the output (a day that made the aggregation spill), it hands what it
//! holds and the rest of the input to DataFusion's sort, which spills. The result is the same rows
//! in the same time order either way; rows of equal time stay in input order here.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::utils::memory::RecordBatchMemoryCounter;
use datafusion::common::{Result, internal_err};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::{StreamExt, TryStreamExt, stream};

use super::compact::Compact;

/// Replaces every sort of `plan` on one ascending time column (no limit) with a [`TimeSort`], and
/// puts a [`Compact`] under every other sort.
pub fn plan_sorts(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(sort) = node.downcast_ref::<SortExec>() else {
            return Ok(Transformed::no(node));
        };
        if let Some(time_sort) = TimeSort::try_new(sort)? {
            return Ok(Transformed::yes(
                Arc::new(time_sort) as Arc<dyn ExecutionPlan>
            ));
        }
        let input: Arc<dyn ExecutionPlan> = Arc::new(Compact::new(Arc::clone(sort.input())));
        let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
        Ok(Transformed::yes(node.replace_children(vec![input], keep)?))
    })
    .map(|transformed| transformed.data)
}

/// Sorts each partition of its input by one time column (`Int64` or a timestamp), ascending.
#[derive(Debug)]
pub struct TimeSort {
    input: Arc<dyn ExecutionPlan>,
    column: usize,
    nulls_first: bool,
    /// DataFusion's sort of the same rows (through [`Compact`]), reading them from `replay`: what
    /// runs when the pool cannot hold the input.
    fallback: Arc<dyn ExecutionPlan>,
    replay: Arc<Replay>,
    properties: Arc<PlanProperties>,
}

impl TimeSort {
    /// The time sort standing in for `sort`, if `sort` orders by one ascending time column and
    /// keeps every row.
    fn try_new(sort: &SortExec) -> Result<Option<Self>> {
        let [key] = sort.expr().as_ref() else {
            return Ok(None);
        };
        let Some(column) = key.expr.downcast_ref::<Column>() else {
            return Ok(None);
        };
        let time_type = matches!(
            sort.input().schema().field(column.index()).data_type(),
            DataType::Int64 | DataType::Timestamp(..)
        );
        if !time_type || key.options.descending || sort.fetch().is_some() {
            return Ok(None);
        }
        Self::over(sort, Arc::clone(sort.input())).map(Some)
    }

    /// The time sort of `sort`'s ordering over `input`.
    fn over(sort: &SortExec, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let [key] = sort.expr().as_ref() else {
            return internal_err!("a time sort orders by one column");
        };
        let Some(column) = key.expr.downcast_ref::<Column>() else {
            return internal_err!("a time sort orders by a column");
        };
        let replay = Arc::new(Replay::new(&input));
        let compact: Arc<dyn ExecutionPlan> =
            Arc::new(Compact::new(Arc::clone(&replay) as Arc<dyn ExecutionPlan>));
        let fallback = SortExec::new(sort.expr().clone(), compact)
            .with_preserve_partitioning(sort.preserve_partitioning());
        Ok(Self {
            properties: Arc::clone(fallback.properties()),
            column: column.index(),
            nulls_first: key.options.nulls_first,
            fallback: Arc::new(fallback),
            replay,
            input,
        })
    }
}

impl DisplayAs for TimeSort {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let name = self.input.schema().field(self.column).name().clone();
        write!(f, "TimeSort: {name}")
    }
}

impl ExecutionPlan for TimeSort {
    fn name(&self) -> &str {
        "TimeSort"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(sort) = self.fallback.downcast_ref::<SortExec>() else {
            return internal_err!("a time sort falls back to a SortExec");
        };
        Ok(Arc::new(Self::over(sort, children.swap_remove(0))?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let recompute = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
        self.replace_children(children, recompute)
    }

    /// The fallback sort's metrics: what it spilled, if it ran.
    fn metrics(&self) -> Option<MetricsSet> {
        self.fallback.metrics()
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let run = Run {
            partition,
            column: self.column,
            nulls_first: self.nulls_first,
            fallback: Arc::clone(&self.fallback),
            replay: Arc::clone(&self.replay),
            context,
        };
        let sorted = stream::once(run.sort(input)).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            sorted,
        )))
    }
}

/// One partition's sort.
struct Run {
    partition: usize,
    column: usize,
    nulls_first: bool,
    fallback: Arc<dyn ExecutionPlan>,
    replay: Arc<Replay>,
    context: Arc<TaskContext>,
}

/// Where a row sits in the buffered input.
type RowKey = (i64, u32, u32);

impl Run {
    async fn sort(self, mut input: SendableRecordBatchStream) -> Result<SendableRecordBatchStream> {
        let schema = input.schema();
        // Registered as spilling so that a fair pool caps it at its share, as it caps the sorts
        // of other partitions; past the share it gives everything back and the fallback spills.
        let reservation = MemoryConsumer::new(format!("TimeSort[{}]", self.partition))
            .with_can_spill(true)
            .register(self.context.memory_pool());
        let mut counter = RecordBatchMemoryCounter::new();
        let mut batches = Vec::new();
        let mut rows = 0;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            let grown = reservation.try_grow(counter.count_batch(&batch));
            batches.push(batch);
            if grown.is_err() {
                drop(reservation);
                return self.fall_back(schema, batches, input);
            }
        }
        let key_bytes = rows * size_of::<RowKey>();
        if u32::try_from(batches.len()).is_err() || reservation.try_grow(key_bytes).is_err() {
            drop(reservation);
            return self.fall_back(schema, batches, input);
        }
        let (nulls, keys) = self.keys(&batches, rows);
        let order = nulls_and_keys(self.nulls_first, nulls, keys);
        let batch_size = self.context.session_config().batch_size().max(1);
        let chunks = (0..order.len().div_ceil(batch_size)).map(move |chunk| {
            let _held = &reservation;
            let start = chunk * batch_size;
            let end = (start + batch_size).min(order.len());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            Ok(interleave_record_batch(&refs, &order[start..end])?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream::iter(chunks),
        )))
    }

    /// The rows' positions: those with a null time, and the others keyed by time, stably sorted.
    fn keys(&self, batches: &[RecordBatch], rows: usize) -> (Vec<(usize, usize)>, Vec<RowKey>) {
        let mut keys: Vec<RowKey> = Vec::with_capacity(rows);
        let mut nulls = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            let data = batch.column(self.column).to_data();
            let times = &data.buffer::<i64>(0)[..data.len()];
            match data.nulls().filter(|n| n.null_count() > 0) {
                None => keys.extend(
                    times
                        .iter()
                        .enumerate()
                        .map(|(row, &t)| (t, b as u32, row as u32)),
                ),
                Some(valid) => {
                    for (row, &t) in times.iter().enumerate() {
                        match valid.is_valid(row) {
                            true => keys.push((t, b as u32, row as u32)),
                            false => nulls.push((b, row)),
                        }
                    }
                }
            }
        }
        keys.sort_by_key(|&(time, _, _)| time);
        (nulls, keys)
    }

    /// Hands the rows read so far and the rest of `input` to DataFusion's sort.
    fn fall_back(
        &self,
        schema: SchemaRef,
        read: Vec<RecordBatch>,
        input: SendableRecordBatchStream,
    ) -> Result<SendableRecordBatchStream> {
        let rows = stream::iter(read.into_iter().map(Ok)).chain(input);
        self.replay.offer(
            self.partition,
            Box::pin(RecordBatchStreamAdapter::new(schema, rows)),
        );
        self.fallback
            .execute(self.partition, Arc::clone(&self.context))
    }
}

/// The gather order: null times first or last, then every other row in time order.
fn nulls_and_keys(
    nulls_first: bool,
    nulls: Vec<(usize, usize)>,
    keys: Vec<RowKey>,
) -> Vec<(usize, usize)> {
    let sorted = keys
        .into_iter()
        .map(|(_, batch, row)| (batch as usize, row as usize));
    match nulls_first {
        true => nulls.into_iter().chain(sorted).collect(),
        false => sorted.chain(nulls).collect(),
    }
}

/// A leaf that yields, per partition, the stream [`TimeSort`] hands it before running its fallback.
pub struct Replay {
    properties: Arc<PlanProperties>,
    streams: Mutex<HashMap<usize, SendableRecordBatchStream>>,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl Replay {
    fn new(input: &Arc<dyn ExecutionPlan>) -> Self {
        Self {
            properties: Arc::clone(input.properties()),
            streams: Mutex::new(HashMap::new()),
        }
    }

    fn offer(&self, partition: usize, stream: SendableRecordBatchStream) {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(partition, stream);
    }
}

impl DisplayAs for Replay {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Replay")
    }
}

impl ExecutionPlan for Replay {
    fn name(&self) -> &str {
        "Replay"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => internal_err!("Replay has no children"),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let recompute = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
        self.replace_children(children, recompute)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stream = self
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&partition);
        match stream {
            Some(stream) => Ok(stream),
            None => internal_err!("nothing to replay for partition {partition}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, BinaryArray, Int64Array, UInt64Array};
    use arrow::datatypes::{Field, Schema};
    use datafusion::arrow::compute::SortOptions;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
    use datafusion::prelude::SessionConfig;

    use super::*;
    use crate::recompute::progress::spilled_bytes;
    use crate::recompute::test_support::{collect_in_pool, zero_copy_slices};

    const ROWS: usize = 200_000;
    const SLICE: usize = 8192;

    /// One batch of `ROWS` rows handed on in `SLICE`-row zero-copy slices, the way a hash
    /// aggregation emits its groups: a time column of nearly sorted runs with ties and nulls, the
    /// row's input position, and a 24-byte sketch.
    fn aggregate_like_output() -> (Arc<Schema>, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("time", DataType::Int64, true),
            Field::new("position", DataType::UInt64, false),
            Field::new("sketch", DataType::Binary, false),
        ]));
        let times: ArrayRef = Arc::new(Int64Array::from_iter((0..ROWS as i64).map(|i| {
            // Mostly ascending by minute, every 7th row late by up to an hour, some nulls.
            let minute = i / 100 * 60_000;
            match i % 7 {
                _ if i % 997 == 0 => None,
                0 => Some(minute - (i * 7919 % 60) * 60_000),
                _ => Some(minute),
            }
        })));
        let positions: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..ROWS as u64));
        let sketches: ArrayRef = Arc::new(BinaryArray::from_iter_values(
            (0..ROWS).map(|i| (i as u64).to_le_bytes().repeat(3)),
        ));
        let whole =
            RecordBatch::try_new(Arc::clone(&schema), vec![times, positions, sketches]).unwrap();
        (schema, zero_copy_slices(&whole, SLICE))
    }

    /// A row as the tests compare it: its time and its input position.
    type Row = (Option<i64>, u64);

    fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
        batches
            .iter()
            .flat_map(|b| {
                let times = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let positions = b.column(1).as_any().downcast_ref::<UInt64Array>().unwrap();
                times
                    .iter()
                    .zip(positions.values().iter().copied())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Runs `order` over the slices as [`plan_sorts`] plans it, in a pool of `pool_bytes`, and
    /// returns the plan and the rows as `(time, position)`.
    fn sorted(options: SortOptions, pool_bytes: usize) -> (Arc<dyn ExecutionPlan>, Vec<Row>) {
        let (schema, slices) = aggregate_like_output();
        let input = MemorySourceConfig::try_new_exec(&[slices], Arc::clone(&schema), None).unwrap();
        let key = PhysicalSortExpr::new(col("time", &schema).unwrap(), options);
        let sort = SortExec::new(LexOrdering::new([key]).unwrap(), input);
        let plan = plan_sorts(Arc::new(sort)).unwrap();
        // As the recompute sets it: a sixteenth of the pool held back for merging spills.
        let config = SessionConfig::new().with_sort_spill_reservation_bytes(pool_bytes / 16);
        let batches = collect_in_pool(Arc::clone(&plan), pool_bytes, config);
        (plan, rows_of(&batches))
    }

    /// The slices' rows by time (nulls first or last), ties in input order.
    fn expected(nulls_first: bool) -> Vec<Row> {
        let (_, slices) = aggregate_like_output();
        let mut rows = rows_of(&slices);
        rows.sort_by_key(|&(time, _)| (time.is_some() == nulls_first, time));
        rows
    }

    fn ascending(nulls_first: bool) -> SortOptions {
        SortOptions {
            descending: false,
            nulls_first,
        }
    }

    #[test]
    fn sorts_the_slices_by_time_in_one_reservation_keeping_ties_in_input_order() {
        // ~7.6 MB of rows: every slice counted as the whole output would be ~190 MB.
        for nulls_first in [true, false] {
            let (plan, rows) = sorted(ascending(nulls_first), 32 << 20);
            assert_eq!(plan.name(), "TimeSort");
            assert_eq!(rows, expected(nulls_first), "nulls first: {nulls_first}");
            assert_eq!(spilled_bytes(plan.as_ref()), 0);
        }
    }

    #[test]
    fn a_pool_too_small_for_the_rows_falls_back_to_datafusions_spilling_sort() {
        let (plan, rows) = sorted(ascending(true), 4 << 20);
        assert_eq!(plan.name(), "TimeSort");
        assert!(spilled_bytes(plan.as_ref()) > 0, "the fallback spilled");
        let times: Vec<Option<i64>> = rows.iter().map(|&(time, _)| time).collect();
        let want: Vec<Option<i64>> = expected(true).iter().map(|&(time, _)| time).collect();
        assert_eq!(times, want);
        let mut positions: Vec<u64> = rows.iter().map(|&(_, p)| p).collect();
        positions.sort_unstable();
        assert_eq!(
            positions,
            (0..ROWS as u64).collect::<Vec<_>>(),
            "every row once"
        );
    }

    #[test]
    fn other_sorts_stay_datafusions_over_compacted_input() {
        let options = SortOptions {
            descending: true,
            nulls_first: true,
        };
        let (plan, rows) = sorted(options, 64 << 20);
        assert_eq!(plan.name(), "SortExec");
        assert_eq!(plan.children()[0].name(), "Compact");
        let times: Vec<Option<i64>> = rows.iter().map(|&(time, _)| time).collect();
        let mut want: Vec<Option<i64>> = expected(true).iter().map(|&(time, _)| time).collect();
        want[..].sort_by(|a, b| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => b.cmp(a),
        });
        assert_eq!(times, want);
    }
}
