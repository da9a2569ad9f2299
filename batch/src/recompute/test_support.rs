//! What the recompute's operator tests share: aggregate-like input and a run in a bounded pool.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

/// `whole` handed on in zero-copy slices of `rows` rows, the way a hash aggregation emits its
/// groups.
pub fn zero_copy_slices(whole: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    let total = whole.num_rows();
    (0..total)
        .step_by(rows)
        .map(|start| whole.slice(start, rows.min(total - start)))
        .collect()
}

/// Runs `plan` to the end with a greedy pool of `pool_bytes`.
pub fn collect_in_pool(
    plan: Arc<dyn ExecutionPlan>,
    pool_bytes: usize,
    config: SessionConfig,
) -> Vec<RecordBatch> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(pool_bytes)))
        .build_arc()
        .unwrap();
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(collect(plan, ctx.task_ctx()))
        .unwrap()
}
