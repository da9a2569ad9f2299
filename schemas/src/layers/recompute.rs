//! The recompute service as the serving layer uses it: `POST /v1/batch/run` runs one now and
//! reports what each view published.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::lake::Manifest;

/// What one view's run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub view: String,
    /// A stable name for logs, metrics and the API: `published`, `unchanged`, `nothing_archived`.
    pub outcome: &'static str,
    /// The live version's manifest after the run, if there is one.
    pub manifest: Option<Manifest>,
    /// Raw rows the run read (0 when nothing was computed).
    pub rows_read: u64,
    pub elapsed: Duration,
    /// A full run's check found the live version's incremental line counting other events.
    pub diverged: bool,
}

/// Why a run did not happen or did not finish, by who is to blame.
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    /// Another recompute is running (in this process, or holding the lake's lock elsewhere): the
    /// caller may try again later. Its message says which.
    #[error(transparent)]
    Busy(Box<dyn std::error::Error + Send + Sync>),
    /// The caller named a view that does not exist; the message lists those that do.
    #[error(transparent)]
    UnknownView(Box<dyn std::error::Error + Send + Sync>),
    /// The lake's object store failed: the run can be tried again later.
    #[error("the lake's object store failed during the recompute")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The run needs the caller's consent to go on (a full recompute over a master dataset raw
    /// retention has cut); the message says what to pass.
    #[error(transparent)]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// The recompute failed, and not for one of the reasons above: ours.
    #[error("the recompute failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How a run computes its views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Recompute every view from the whole master dataset, even where the live version could be
    /// extended (`batch run --full`).
    pub full: bool,
    /// Let a full recompute run over a master dataset that raw retention has cut (its versions then
    /// miss the deleted events); without it such a run is refused.
    pub allow_partial_history: bool,
}

impl RunOptions {
    pub const FULL: RunOptions = RunOptions {
        full: true,
        allow_partial_history: false,
    };
}

/// A service that recomputes the batch views.
pub trait Recompute: Send + Sync + std::fmt::Debug {
    /// Recomputes every view, or only `only`, and publishes what changed (see [`RunOptions`]).
    fn run<'a>(
        &'a self,
        only: Option<&'a str>,
        options: RunOptions,
    ) -> BoxFuture<'a, Result<Vec<RunReport>, RecomputeError>>;
}
