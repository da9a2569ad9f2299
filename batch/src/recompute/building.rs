//! The progress of a build, a run computing a view's first version under its configured definition
//! (a new view, or a changed one whose old definition keeps answering meanwhile), written to the
//! lake's `views/<view>/_building` for every serving process's `/v1/views` (ARCHITECTURE.md §11).
//!
//! The run's progress reports go to memory; a task puts the latest in the lake once a second (also
//! when nothing moved: `updated_at` is the build's heartbeat), so a build's cost does not depend on
//! how often it reports. The object is removed when the run ends, published or failed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tributary_schemas::blame::chain;
use tributary_schemas::lake::{BuildProgress, Lake};

use super::job::AbortOnDrop;
use super::progress::{ProgressSink, RunProgress};

/// How often the latest progress is written.
const EVERY: Duration = Duration::from_secs(1);

pub(super) struct Building {
    lake: Lake,
    view: String,
    latest: Arc<Mutex<BuildProgress>>,
    _writer: AbortOnDrop<()>,
}

impl Building {
    /// Starts reporting the build of `view` under `definition_hash`: written at once (the view
    /// shows `building` with no rows read yet), then as the run reports.
    pub(super) async fn start(lake: &Lake, view: &str, definition_hash: &str) -> Self {
        let now = Utc::now();
        let first = BuildProgress {
            definition_hash: definition_hash.to_owned(),
            started_at: now,
            updated_at: now,
            files_done: 0,
            files_total: 0,
            rows_done: 0,
            rows_total: None,
        };
        put(lake, view, &first).await;
        let latest = Arc::new(Mutex::new(first));
        let writer = tokio::spawn(write_every(
            lake.clone(),
            view.to_owned(),
            Arc::clone(&latest),
        ));
        Self {
            lake: lake.clone(),
            view: view.to_owned(),
            latest,
            _writer: AbortOnDrop(writer),
        }
    }

    /// `sink`, also keeping each report for the lake.
    pub(super) fn sink(&self, sink: ProgressSink) -> ProgressSink {
        let latest = Arc::clone(&self.latest);
        Arc::new(move |report: &RunProgress| {
            let mut progress = latest.lock().unwrap_or_else(|e| e.into_inner());
            progress.files_done = report.files_done;
            progress.files_total = report.files_total;
            progress.rows_done = report.rows_done;
            progress.rows_total = report.rows_total;
            drop(progress);
            sink(report);
        })
    }

    /// The build ended (published, failed or found nothing to do): the object goes.
    pub(super) async fn finish(self) {
        drop(self._writer);
        if let Err(error) = self.lake.clear_build_progress(&self.view).await {
            tracing::warn!(view = self.view, error = %chain(&error), "cannot remove the build's progress; readers see it stop moving");
        }
    }
}

async fn write_every(lake: Lake, view: String, latest: Arc<Mutex<BuildProgress>>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let progress = {
            let mut progress = latest.lock().unwrap_or_else(|e| e.into_inner());
            progress.updated_at = Utc::now();
            progress.clone()
        };
        put(&lake, &view, &progress).await;
    }
}

async fn put(lake: &Lake, view: &str, progress: &BuildProgress) {
    if let Err(error) = lake.put_build_progress(view, progress).await {
        tracing::warn!(view, error = %chain(&error), "cannot write the build's progress (retrying)");
    }
}
