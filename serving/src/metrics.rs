//! Prometheus metrics in the text exposition format: the few counters and histograms the service
//! keeps itself, plus gauges read from the layers when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

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

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (count, bound) in self.counts.iter().zip(BOUNDS) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// What the HTTP layer and the batch scheduler record.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By route, then by status code.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Query latency by route.
    queries: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Recompute durations by outcome (`published`, `unchanged`, `failed`...).
    batch_runs: Mutex<BTreeMap<String, Histogram>>,
}

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

    pub fn batch_run(&self, outcome: &str, elapsed: Duration) {
        let mut runs = self.batch_runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.entry(outcome.to_owned())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// The recorded series, in exposition format.
    pub fn render(&self, out: &mut String) {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        header(
            out,
            "tributary_http_requests_total",
            "counter",
            "HTTP requests by route and status",
        );
        for ((route, status), count) in requests.iter() {
            let _ = writeln!(
                out,
                "tributary_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        drop(requests);
        let name = "tributary_query_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "query latency by route (planning, merge and finalize)",
        );
        let queries = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        for (route, histogram) in queries.iter() {
            histogram.render(out, name, &format!("route=\"{route}\""));
        }
        drop(queries);
        let name = "tributary_batch_run_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "recompute duration per view by outcome",
        );
        let runs = self.batch_runs.lock().unwrap_or_else(|e| e.into_inner());
        for (outcome, histogram) in runs.iter() {
            histogram.render(out, name, &format!("outcome=\"{outcome}\""));
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes a counter family with its one unlabelled sample: `(name, help, value)`.
pub fn counter(out: &mut String, (name, help, value): (&str, &str, u64)) {
    header(out, name, "counter", help);
    sample(out, name, &[], value as f64);
}

/// Writes one sample.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, String)], value: f64) {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
}
