//! The counters and histograms the serving layer keeps itself (HTTP requests, query latency,
//! recompute durations). `/metrics` writes them after each layer's own samples
//! (`tributary_schemas::layers::StatusSource`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tributary_schemas::layers::prometheus::Exposition;
use tributary_schemas::layers::recompute::RunReport;

/// Upper bounds (seconds) of latency buckets: queries are expected in milliseconds, recomputes in
/// seconds to minutes, so both share one wide ladder.
const BOUNDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    1800.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (count, bound) in self.counts.iter_mut().zip(BOUNDS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut Exposition, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (count, bound) in self.counts.iter().zip(BOUNDS) {
            out.line(format_args!(
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}"
            ));
        }
        out.line(format_args!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        ));
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        out.line(format_args!("{name}_sum{} {}", braces(labels), self.sum));
        out.line(format_args!(
            "{name}_count{} {}",
            braces(labels),
            self.count
        ));
    }
}

/// What the HTTP layer and the batch scheduler record.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By route, then by status code.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Query latency by route.
    queries: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Recompute durations by view (`all` for a run that failed as a whole) and outcome
    /// (`published`, `unchanged`, `failed`...).
    batch_runs: Mutex<BTreeMap<(String, String), Histogram>>,
    /// The latest recompute runs, newest last (at most [`RECENT_RUNS`]).
    recent_runs: Mutex<VecDeque<Value>>,
    /// Full runs whose check found the incremental line diverging, by view (must stay empty).
    divergences: Mutex<BTreeMap<String, u64>>,
}

/// How many recompute runs `/v1/status` lists.
pub const RECENT_RUNS: usize = 20;

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((route, status)).or_default() += 1;
    }

    pub fn query(&self, route: &'static str, elapsed: Duration) {
        let mut queries = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        queries
            .entry(route)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    fn batch_run(&self, view: &str, outcome: &str, elapsed: Duration) {
        let mut runs = self.batch_runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.entry((view.to_owned(), outcome.to_owned()))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Records one view's recompute run, on request or scheduled (`trigger`): its duration by outcome
    /// for `/metrics`, and the run for `/v1/status`. Returns what `/v1/status` shows of it.
    pub fn record_run(&self, report: &RunReport, trigger: &str) -> Value {
        self.batch_run(&report.view, report.outcome, report.elapsed);
        if report.diverged {
            let mut diverged = self.divergences.lock().unwrap_or_else(|e| e.into_inner());
            *diverged.entry(report.view.clone()).or_default() += 1;
        }
        let manifest = report.manifest.as_ref();
        let run = json!({
            "at": Utc::now(),
            "trigger": trigger,
            "view": report.view,
            "outcome": report.outcome,
            "version": manifest.map(|m| m.version),
            "boundary": manifest.map(|m| m.boundary.0.clone()),
            "rows_read": report.rows_read,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
            "diverged": report.diverged,
        });
        self.remember_run(run.clone());
        run
    }

    /// Records a recompute that failed as a whole (no view's report): `view` is the one asked for,
    /// if any; `error` says what failed without internals.
    pub fn record_failed_run(
        &self,
        view: Option<&str>,
        elapsed: Duration,
        trigger: &str,
        error: &str,
    ) {
        self.batch_run(view.unwrap_or("all"), "failed", elapsed);
        self.remember_run(json!({
            "at": Utc::now(),
            "trigger": trigger,
            "view": view,
            "outcome": "failed",
            "error": error,
            "elapsed_ms": elapsed.as_secs_f64() * 1e3,
        }));
    }

    /// Remembers one recompute run for `/v1/status` (`view` null for a run that failed before any
    /// view's report).
    fn remember_run(&self, run: Value) {
        let mut runs = self.recent_runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.len() == RECENT_RUNS {
            runs.pop_front();
        }
        runs.push_back(run);
    }

    /// The remembered runs, newest first.
    pub fn recent_runs(&self) -> Vec<Value> {
        let runs = self.recent_runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.iter().rev().cloned().collect()
    }

    /// The recorded series, in exposition format.
    pub fn render(&self, out: &mut Exposition) {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let name = "tributary_http_requests_total";
        out.family(name, "counter", "HTTP requests by route and status");
        for ((route, status), count) in requests.iter() {
            let labels = [
                ("route", (*route).to_owned()),
                ("status", status.to_string()),
            ];
            out.sample(name, &labels, *count as f64);
        }
        drop(requests);
        let name = "tributary_query_duration_seconds";
        out.family(
            name,
            "histogram",
            "query latency by route (planning, merge and finalize)",
        );
        let queries = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        for (route, histogram) in queries.iter() {
            histogram.render(out, name, &format!("route=\"{route}\""));
        }
        drop(queries);
        let name = "tributary_batch_divergences_total";
        out.family(
            name,
            "counter",
            "full recomputes whose check found the incremental line counting other events (must stay 0)",
        );
        let divergences = self.divergences.lock().unwrap_or_else(|e| e.into_inner());
        for (view, count) in divergences.iter() {
            out.sample(name, &[("view", view.clone())], *count as f64);
        }
        drop(divergences);
        let name = "tributary_batch_run_duration_seconds";
        out.family(
            name,
            "histogram",
            "recompute duration per view (all: a run that failed as a whole) and outcome",
        );
        let runs = self.batch_runs.lock().unwrap_or_else(|e| e.into_inner());
        for ((view, outcome), histogram) in runs.iter() {
            let labels = format!("view=\"{view}\",outcome=\"{outcome}\"");
            histogram.render(out, name, &labels);
        }
    }
}
