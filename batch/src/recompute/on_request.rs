//! The recompute service as the serving layer runs it (`POST /v1/batch/run`): [`Recompute`] of
//! `tributary_schemas::layers`, with [`BatchError`]s sorted by who is to blame: another run in
//! the way (the caller may retry), an unknown view (the caller's mistake), the lake's object store
//! (outside), or a failure of ours.

use futures::FutureExt;
use futures::future::BoxFuture;
use tributary_schemas::blame::{Blame, classify_datafusion_error};
use tributary_schemas::lake::LakeError;
use tributary_schemas::layers::recompute::{Recompute, RecomputeError, RunReport};

use super::progress::quiet;
use super::{BatchError, RecomputeService, ViewRun};

impl Recompute for RecomputeService {
    fn run<'a>(
        &'a self,
        only: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<RunReport>, RecomputeError>> {
        async move {
            let runs = RecomputeService::run(self, only, quiet())
                .await
                .map_err(classify)?;
            Ok(runs.iter().map(report).collect())
        }
        .boxed()
    }
}

fn classify(error: BatchError) -> RecomputeError {
    match error {
        busy @ (BatchError::AlreadyRunning | BatchError::Lock(_)) => {
            RecomputeError::Busy(Box::new(busy))
        }
        unknown @ BatchError::UnknownView { .. } => RecomputeError::UnknownView(Box::new(unknown)),
        store @ (BatchError::Store(_) | BatchError::Lake(LakeError::Store(_))) => {
            RecomputeError::Unavailable(Box::new(store))
        }
        BatchError::Query(query) if classify_datafusion_error(&query) == Blame::Outside => {
            RecomputeError::Unavailable(Box::new(BatchError::Query(query)))
        }
        failed => RecomputeError::Failed(Box::new(failed)),
    }
}

fn report(run: &ViewRun) -> RunReport {
    RunReport {
        view: run.view.clone(),
        outcome: run.outcome.name(),
        manifest: run.outcome.manifest().cloned(),
        rows_read: run.rows_read,
        elapsed: run.elapsed,
    }
}
