//! Progress of a running recompute: read live from the DataFusion plan's scan metrics (files
//! finished, rows read), shown on a terminal as one updating line, logged every few seconds
//! otherwise.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// A snapshot of one view's recompute.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProgress {
    pub view: String,
    pub files_done: usize,
    pub files_total: usize,
    pub rows_done: u64,
    /// From the Parquet footers; `None` if DataFusion has no exact count.
    pub rows_total: Option<u64>,
    pub elapsed: Duration,
    /// Set on the last report of a view.
    pub finished: bool,
}

impl RunProgress {
    pub fn rows_per_second(&self) -> f64 {
        self.rows_done as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// Estimated time left, once there is a rate to go by.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.rows_total?;
        let rate = self.rows_per_second();
        (rate > 0.0 && self.rows_done > 0)
            .then(|| Duration::from_secs_f64(total.saturating_sub(self.rows_done) as f64 / rate))
    }
}

fn millions(rows: u64) -> String {
    if rows >= 100_000 {
        format!("{:.1}M", rows as f64 / 1e6)
    } else {
        rows.to_string()
    }
}

impl fmt::Display for RunProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}/{} files, {}",
            self.view,
            self.files_done,
            self.files_total,
            millions(self.rows_done)
        )?;
        if let Some(total) = self.rows_total {
            write!(f, "/{}", millions(total))?;
        }
        write!(f, " rows, {}/s", millions(self.rows_per_second() as u64))?;
        match (self.finished, self.eta()) {
            (true, _) => write!(f, ", done in {:.1}s", self.elapsed.as_secs_f64()),
            (false, Some(eta)) => write!(f, ", ETA {}s", eta.as_secs()),
            (false, None) => Ok(()),
        }
    }
}

/// Where progress goes.
pub type ProgressSink = Arc<dyn Fn(&RunProgress) + Send + Sync>;

/// Discards progress (library use, tests).
pub fn quiet() -> ProgressSink {
    Arc::new(|_| {})
}

/// One updating line on a terminal (stderr), or an `info` log line every 10 s when stderr is not a
/// terminal (a cron job, a container log).
pub fn for_humans() -> ProgressSink {
    sink(std::io::stderr().is_terminal())
}

/// Always log lines (a long-running service whose stderr also carries its logs).
pub fn logged() -> ProgressSink {
    sink(false)
}

fn sink(terminal: bool) -> ProgressSink {
    let last_log: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move |progress: &RunProgress| {
        if terminal {
            let end = if progress.finished { "\n" } else { "" };
            let _ = write!(std::io::stderr(), "\r\x1b[2K{progress}{end}");
            return;
        }
        let mut last = last_log.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if progress.finished || due {
            *last = Some(Instant::now());
            tracing::info!(
                view = progress.view,
                files_done = progress.files_done,
                files_total = progress.files_total,
                rows_done = progress.rows_done,
                rows_total = progress.rows_total,
                "{progress}"
            );
        }
    })
}

/// `(files finished, rows read)` so far by the plan's Parquet scans.
pub fn scan_counts(plan: &dyn ExecutionPlan) -> (usize, u64) {
    let mut counts = (0, 0);
    if plan.name() == "DataSourceExec"
        && let Some(metrics) = plan.metrics()
    {
        counts.0 += metrics
            .sum_by_name("files_processed")
            .map_or(0, |v| v.as_usize());
        counts.1 += metrics.output_rows().unwrap_or(0) as u64;
    }
    for child in plan.children() {
        let (files, rows) = scan_counts(child.as_ref());
        counts.0 += files;
        counts.1 += rows;
    }
    counts
}

/// Bytes the plan's operators spilled to disk (aggregation and sort past the memory pool).
pub fn spilled_bytes(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan
        .children()
        .into_iter()
        .map(|child| spilled_bytes(child.as_ref()))
        .sum::<u64>()
}

/// Rows the plan's scans will read, when the Parquet footers give an exact count.
pub fn scan_total_rows(plan: &dyn ExecutionPlan) -> Option<u64> {
    if plan.name() == "DataSourceExec" {
        let statistics = StatisticsContext::new()
            .compute(plan, &StatisticsArgs::new())
            .ok()?;
        return statistics.num_rows.get_value().map(|rows| *rows as u64);
    }
    plan.children()
        .into_iter()
        .map(|child| scan_total_rows(child.as_ref()))
        .try_fold(0u64, |sum, rows| Some(sum + rows?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_like_a_status_line() {
        let progress = RunProgress {
            view: "pageviews".to_owned(),
            files_done: 3,
            files_total: 20,
            rows_done: 1_500_000,
            rows_total: Some(10_000_000),
            elapsed: Duration::from_secs(1),
            finished: false,
        };
        assert_eq!(
            progress.to_string(),
            "pageviews: 3/20 files, 1.5M/10.0M rows, 1.5M/s, ETA 5s"
        );
        let done = RunProgress {
            finished: true,
            files_done: 20,
            rows_done: 10_000_000,
            elapsed: Duration::from_secs(4),
            ..progress
        };
        assert_eq!(
            done.to_string(),
            "pageviews: 20/20 files, 10.0M/10.0M rows, 2.5M/s, done in 4.0s"
        );
    }
}
