//! Copies the aggregation's output into batches that own their buffers before a DataFusion sort
//! (the sorts [`super::time_sort::TimeSort`] does not do, and its fallback).
//!
//! A hash aggregation emits all its groups as one batch and hands it on in zero-copy slices of
//! `batch_size` rows. The sort reserves memory per batch by the buffers a batch holds, not by the
//! rows it references, so each slice of a 1.9M-group `pageviews` day counted as the whole ~290 MB
//! output: a sort that needed ~0.3 GB reserved tens of GB and spilled 19 times even with an 8 GB
//! pool. Copying each slice (a memcpy of what the sort would hold anyway) makes the reservation
//! match the memory.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use datafusion::common::Result;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::utils::memory::get_record_batch_memory_size;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;

/// Passes batches through, copying those that reference less than half of the buffers they hold.
#[derive(Debug)]
pub struct Compact {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl Compact {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::clone(input.properties());
        Self { input, properties }
    }
}

/// `batch`, copied if it is a small view of large buffers.
fn compacted(batch: RecordBatch) -> Result<RecordBatch> {
    let referenced: usize = batch
        .columns()
        .iter()
        .map(|column| column.to_data().get_slice_memory_size())
        .sum::<std::result::Result<usize, _>>()?;
    if get_record_batch_memory_size(&batch) <= referenced.saturating_mul(2) {
        return Ok(batch);
    }
    let rows = UInt32Array::from_iter_values(0..batch.num_rows() as u32);
    Ok(take_record_batch(&batch, &rows)?)
}

impl DisplayAs for Compact {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Compact")
    }
}

impl ExecutionPlan for Compact {
    fn name(&self) -> &str {
        "Compact"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
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
        Ok(Arc::new(Compact::new(children.swap_remove(0))))
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
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let batches = input.map(|batch| batch.and_then(compacted));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_plan::sorts::sort::SortExec;
    use datafusion::prelude::SessionConfig;

    use super::*;
    use crate::recompute::progress::spilled_bytes;
    use crate::recompute::test_support::{collect_in_pool, zero_copy_slices};

    const ROWS: usize = 400_000;
    const SLICE: usize = 8192;

    /// One batch of `ROWS` rows (shuffled times and a 24-byte sketch each), handed on in
    /// `SLICE`-row zero-copy slices the way a hash aggregation emits its groups.
    fn aggregate_like_output() -> (Arc<Schema>, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("time", DataType::Int64, false),
            Field::new("sketch", DataType::Binary, false),
        ]));
        let times: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (0..ROWS as i64).map(|i| (i * 7919) % ROWS as i64),
        ));
        let sketches: ArrayRef = Arc::new(BinaryArray::from_iter_values(
            (0..ROWS).map(|i| (i as u64).to_le_bytes().repeat(3)),
        ));
        let whole = RecordBatch::try_new(Arc::clone(&schema), vec![times, sketches]).unwrap();
        (schema, zero_copy_slices(&whole, SLICE))
    }

    #[test]
    fn a_slice_is_copied_into_its_own_buffers_and_a_whole_batch_is_not() {
        let (_, slices) = aggregate_like_output();
        let slice = slices[3].clone();
        let copy = compacted(slice.clone()).unwrap();
        assert_eq!(copy, slice);
        assert!(
            get_record_batch_memory_size(&copy) * 10 < get_record_batch_memory_size(&slice),
            "a copy holds its rows only"
        );
        let again = compacted(copy.clone()).unwrap();
        assert_eq!(
            again.column(1).to_data().buffers()[1].as_ptr(),
            copy.column(1).to_data().buffers()[1].as_ptr(),
            "a batch that owns its buffers passes through"
        );
    }

    /// Sorts the slices under a 64 MiB pool (the data is ~14 MB) and returns the sorted times
    /// and the bytes the sort spilled.
    fn sort_in_small_pool(compact: bool) -> (Vec<i64>, u64) {
        let (schema, slices) = aggregate_like_output();
        let input = MemorySourceConfig::try_new_exec(&[slices], Arc::clone(&schema), None).unwrap();
        let order =
            LexOrdering::new([PhysicalSortExpr::new_default(col("time", &schema).unwrap())]);
        let input: Arc<dyn ExecutionPlan> = match compact {
            true => Arc::new(Compact::new(input)),
            false => input,
        };
        let plan: Arc<dyn ExecutionPlan> = Arc::new(SortExec::new(order.unwrap(), input));
        let batches = collect_in_pool(Arc::clone(&plan), 64 << 20, SessionConfig::new());
        let times = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        (times, spilled_bytes(plan.as_ref()))
    }

    #[test]
    fn the_sort_of_compacted_slices_fits_the_pool_that_uncompacted_slices_overflow() {
        let (sliced_times, sliced_spill) = sort_in_small_pool(false);
        let (times, spill) = sort_in_small_pool(true);
        assert!(sliced_spill > 0, "each slice counts as the whole output");
        assert_eq!(spill, 0, "compacted slices count as what they hold");
        assert_eq!(times, (0..ROWS as i64).collect::<Vec<_>>());
        assert_eq!(sliced_times, times);
    }
}
