//! The recompute service as the serving layer runs it (`POST /v1/batch/run`): [`Recompute`] of
//! `tributary_schemas::layers`, with [`BatchError`]s sorted by who is to blame: another run in
//! the way (the caller may retry), an unknown view (the caller's mistake), the lake's object store
//! (outside), or a failure of ours.

use futures::FutureExt;
use futures::future::BoxFuture;
use tributary_schemas::blame::{Blame, classify_datafusion_error};
use tributary_schemas::lake::LakeError;
use tributary_schemas::layers::recompute::{Recompute, RecomputeError, RunOptions, RunReport};

use super::lock::LockError;
use super::progress::quiet;
use super::{BatchError, RecomputeService, ViewRun};

impl Recompute for RecomputeService {
    fn run<'a>(
        &'a self,
        only: Option<&'a str>,
        options: RunOptions,
    ) -> BoxFuture<'a, Result<Vec<RunReport>, RecomputeError>> {
        async move {
            let runs = RecomputeService::run_as(self, only, quiet(), options)
                .await
                .map_err(classify)?;
            Ok(runs.iter().map(ViewRun::report).collect())
        }
        .boxed()
    }
}

impl BatchError {
    /// Whether an outside outage (the lake's object store) failed the run, not Tributary.
    pub fn is_outage(&self) -> bool {
        match self {
            BatchError::Store(_)
            | BatchError::Lake(LakeError::Store(_))
            | BatchError::Lock(LockError::Store(_)) => true,
            BatchError::Query(query) => classify_datafusion_error(query) == Blame::Outside,
            _ => false,
        }
    }
}

fn classify(error: BatchError) -> RecomputeError {
    match error {
        busy @ (BatchError::AlreadyRunning | BatchError::Lock(LockError::Held(_))) => {
            RecomputeError::Busy(Box::new(busy))
        }
        unknown @ BatchError::UnknownView { .. } => RecomputeError::UnknownView(Box::new(unknown)),
        refused @ BatchError::PartialHistory { .. } => RecomputeError::Refused(Box::new(refused)),
        outage if outage.is_outage() => RecomputeError::Unavailable(Box::new(outage)),
        failed => RecomputeError::Failed(Box::new(failed)),
    }
}

impl ViewRun {
    /// What the serving layer records of a run (`/v1/status`, `/metrics`).
    pub fn report(&self) -> RunReport {
        RunReport {
            view: self.view.clone(),
            outcome: self.outcome.name(),
            manifest: self.outcome.manifest().cloned(),
            rows_read: self.rows_read,
            elapsed: self.elapsed,
            diverged: self.diverged,
        }
    }
}
