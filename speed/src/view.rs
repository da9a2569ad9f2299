//! The speed layer as the serving layer sees it: [`SpeedView`] (pin a view's states above a
//! boundary, drop below one, restart at one) and [`StatusSource`] (its `/v1/status` section and
//! Prometheus samples), both from `tributary_schemas::layers`. Rendered here, beside the counters
//! they show, so that the serving layer needs to know nothing of them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use arrow::error::ArrowError;
use serde_json::{Value, json};
use tributary_schemas::lake::Boundary;
use tributary_schemas::layers::StatusSource;
use tributary_schemas::layers::prometheus::Exposition;
use tributary_schemas::layers::speed::{PartitionHealth, SpeedPin, SpeedView, expose_progress};

use crate::consumer::SpeedLayer;

impl SpeedView for SpeedLayer {
    fn pin(&self, view: usize, from: &Boundary) -> Result<SpeedPin, ArrowError> {
        self.read(|aggregator| {
            let next_offsets = &aggregator.next_offsets;
            let snapshot = aggregator.views()[view].snapshot_parts(from, next_offsets)?;
            Ok(SpeedPin {
                snapshot,
                next_offsets: next_offsets.clone(),
                restarts: SpeedLayer::restarts(self),
                partitions: SpeedLayer::partitions(self),
                unread: SpeedLayer::unread(self),
                nodes: BTreeMap::new(),
            })
        })
    }

    fn drop_below(&self, view: usize, boundary: &Boundary) {
        SpeedLayer::drop_below(self, view, boundary);
    }

    fn restart_at(&self, boundary: Boundary) {
        SpeedLayer::restart_at(self, boundary);
    }

    fn retire(&self, view: usize) {
        SpeedLayer::retire(self, view);
    }

    fn restarts(&self) -> u64 {
        SpeedLayer::restarts(self)
    }

    fn ready(&self) -> bool {
        SpeedLayer::ready(self)
    }

    fn partitions(&self) -> BTreeMap<i32, PartitionHealth> {
        SpeedLayer::partitions(self)
    }

    fn ready_max_lag(&self) -> u64 {
        self.health_settings().ready_max_lag
    }

    fn unread(&self) -> Vec<i32> {
        SpeedLayer::unread(self)
    }

    fn export(
        &self,
        definition_hash: &str,
        have: &std::collections::BTreeSet<(i32, i64)>,
    ) -> Result<Option<Vec<u8>>, ArrowError> {
        SpeedLayer::export(self, definition_hash, have)
    }
}

impl StatusSource for SpeedLayer {
    fn status(&self) -> Value {
        let totals = self.read(|aggregator| aggregator.totals);
        let partitions: Vec<Value> = (SpeedLayer::partitions(self).into_iter())
            .map(|(partition, p)| {
                json!({
                    "partition": partition,
                    "start": p.start,
                    "next": p.next,
                    "high_watermark": p.high_watermark,
                    "lag": p.lag(),
                    "stalled": p.stalled,
                })
            })
            .collect();
        json!({
            "ready": SpeedLayer::ready(self),
            "complete": self.complete(),
            "stalls": self.stalls(),
            "restarts": SpeedLayer::restarts(self),
            "ready_max_lag": self.health_settings().ready_max_lag,
            "from": self.boundary().0,
            "events": totals.events,
            "malformed": totals.malformed,
            "lost_offsets": self.lost_offsets.load(Ordering::Relaxed),
            "partitions": partitions,
        })
    }

    fn metrics(&self, out: &mut Exposition) {
        let totals = self.read(|aggregator| aggregator.totals);
        out.counter(
            "tributary_speed_events_total",
            "events aggregated by the speed layer",
            totals.events,
        );
        out.counter(
            "tributary_speed_malformed_total",
            "messages the speed layer skipped as malformed",
            totals.malformed,
        );
        out.counter(
            "tributary_speed_lost_offsets_total",
            "offsets deleted by retention before the speed layer read them",
            self.lost_offsets.load(Ordering::Relaxed),
        );
        out.counter(
            "tributary_speed_stalls_total",
            "times the watchdog recreated a speed-layer consumer that made no progress while behind",
            self.stalls(),
        );
        out.counter(
            "tributary_speed_restarts_total",
            "times the speed layer forgot its states to re-read the log from a lower boundary",
            SpeedLayer::restarts(self),
        );
        expose_progress(out, &SpeedLayer::partitions(self), SpeedLayer::ready(self));
    }
}
