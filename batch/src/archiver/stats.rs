//! The archiver's counters, and how they show: its `/v1/status` section and Prometheus samples
//! ([`StatusSource`]). Every counter kept here is rendered here, so none is counted and never
//! shown.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tributary_schemas::layers::StatusSource;
use tributary_schemas::layers::prometheus::Exposition;

/// Counters the archiver keeps while it runs.
#[derive(Debug, Default)]
pub struct ArchiverStats {
    /// Valid events taken from Kafka: written, or buffered for the next file ([`Self::progress`]
    /// says what the lake holds).
    pub archived: AtomicU64,
    /// Malformed events taken from Kafka, for the quarantine (and the DLQ topic).
    pub quarantined: AtomicU64,
    /// [`Self::quarantined`] by reason (the decoder's error code).
    quarantined_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// Raw files written.
    pub files: AtomicU64,
    /// Offsets deleted by retention before they could be archived.
    pub lost_offsets: AtomicU64,
    /// Malformed events the DLQ topic did not take.
    pub dlq_failures: AtomicU64,
    /// Failed writes to the lake (retried).
    pub store_errors: AtomicU64,
    progress: Mutex<BTreeMap<i32, i64>>,
}

impl ArchiverStats {
    /// Per partition, the first offset not yet in the lake.
    pub fn progress(&self) -> BTreeMap<i32, i64> {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Counts a malformed event for the quarantine, by `reason`.
    pub(super) fn quarantine(&self, reason: &'static str) -> u64 {
        if let Ok(mut by_reason) = self.quarantined_by_reason.lock() {
            *by_reason.entry(reason).or_default() += 1;
        }
        self.quarantined.fetch_add(1, Ordering::Relaxed)
    }

    /// Malformed events taken since start, by reason.
    pub fn quarantined_by_reason(&self) -> BTreeMap<&'static str, u64> {
        (self.quarantined_by_reason.lock())
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub(super) fn set_progress(&self, partition: i32, next_offset: i64) {
        if let Ok(mut progress) = self.progress.lock() {
            progress.insert(partition, next_offset);
        }
    }

    /// `(name in /v1/status, Prometheus name, help, counter)` of every counter.
    fn counters(&self) -> [(&'static str, &'static str, &'static str, &AtomicU64); 6] {
        [
            (
                "archived",
                "tributary_archiver_events_total",
                "valid events the archiver took from Kafka (written, or buffered for the next file)",
                &self.archived,
            ),
            (
                "quarantined",
                "tributary_archiver_quarantined_total",
                "malformed events taken for the quarantine",
                &self.quarantined,
            ),
            (
                "files",
                "tributary_archiver_files_total",
                "raw files written to the master dataset",
                &self.files,
            ),
            (
                "lost_offsets",
                "tributary_archiver_lost_offsets_total",
                "offsets deleted by retention before they were archived",
                &self.lost_offsets,
            ),
            (
                "dlq_failures",
                "tributary_archiver_dlq_failures_total",
                "malformed events the DLQ topic did not take",
                &self.dlq_failures,
            ),
            (
                "store_errors",
                "tributary_archiver_store_errors_total",
                "failed writes to the lake (retried)",
                &self.store_errors,
            ),
        ]
    }
}

impl StatusSource for ArchiverStats {
    fn status(&self) -> Value {
        let mut status = serde_json::Map::new();
        for (key, _, _, counter) in self.counters() {
            status.insert(key.to_owned(), counter.load(Ordering::Relaxed).into());
        }
        status.insert("progress".to_owned(), json!(self.progress()));
        status.insert(
            "quarantined_by_reason".to_owned(),
            json!(self.quarantined_by_reason()),
        );
        Value::Object(status)
    }

    fn metrics(&self, out: &mut Exposition) {
        for (_, name, help, counter) in self.counters() {
            out.counter(name, help, counter.load(Ordering::Relaxed));
        }
        let name = "tributary_archiver_next_offset";
        out.family(
            name,
            "gauge",
            "per partition, the first offset not yet in the master dataset",
        );
        for (partition, next) in self.progress() {
            out.sample(name, &[("partition", partition.to_string())], next as f64);
        }
        let name = "tributary_archiver_quarantined_by_reason_total";
        out.family(
            name,
            "counter",
            "malformed events taken for the quarantine, by the decoder's reason",
        );
        for (reason, count) in self.quarantined_by_reason() {
            out.sample(name, &[("reason", reason.to_owned())], count as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_in_the_status_and_the_metrics() {
        let stats = ArchiverStats::default();
        for (index, (_, _, _, counter)) in stats.counters().into_iter().enumerate() {
            counter.store(10 + index as u64, Ordering::Relaxed);
        }
        stats.set_progress(2, 500);
        stats.quarantine("not_json");
        stats.quarantine("not_json");
        stats.quarantine("missing_time");
        let status = stats.status();
        assert_eq!(
            status["quarantined_by_reason"],
            json!({"missing_time": 1, "not_json": 2})
        );
        assert_eq!(status["quarantined"], 11 + 3);
        assert_eq!(status["store_errors"], 15);
        assert_eq!(status["archived"], 10);
        assert_eq!(status["progress"]["2"], 500);
        let mut out = Exposition::new();
        stats.metrics(&mut out);
        let text = out.finish();
        assert!(
            text.contains("\ntributary_archiver_store_errors_total 15\n"),
            "{text}"
        );
        assert!(
            text.contains("\ntributary_archiver_files_total 12\n"),
            "{text}"
        );
        assert!(
            text.contains("tributary_archiver_next_offset{partition=\"2\"} 500\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "tributary_archiver_quarantined_by_reason_total{reason=\"not_json\"} 2\n"
            ),
            "{text}"
        );
    }
}
