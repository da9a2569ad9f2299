//! How far the speed layer is behind the log, and whether it is still moving: the facts behind
//! `/readyz`, every answer's `meta.complete` and the consumer's watchdog.
//!
//! Two threads feed it: the consumer reports each poll step's next offsets
//! ([`Health::progress`]), and a watcher on a Kafka client of its own reports the broker's end
//! every second ([`Health::high_watermark`]). From those, per partition:
//! - **lag** = high watermark − next offset;
//! - **stalled** = behind and no progress for `stall_after` (the clock starts when the partition
//!   is first seen behind, or at its last progress), or the broker's end not learnt for
//!   `stall_after` (the lag is then unknown, so it cannot pass for small).
//!
//! The speed layer is **complete** when every partition's lag is at most `ready_max_lag` and none
//! is stalled, and **ready** when it is complete and has also read, since it last (re)started from
//! a boundary, up to the end each partition had then: a process started on a backlog smaller than
//! `ready_max_lag` still reads it before it says ready.
//!
//! Time is passed in (`now`), so the rules are tested without sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use tributary_schemas::layers::speed::PartitionHealth;

/// The two thresholds (`[serving] ready_max_lag` and `stall_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub ready_max_lag: u64,
    pub stall_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Partition {
    start: i64,
    next: i64,
    high_watermark: i64,
    /// The broker's end when consumption (re)started: read past it, the initial catch-up is done.
    head_at_start: i64,
    /// Since when the partition has been behind with no progress; `None` when not behind.
    idle_since: Option<Instant>,
    /// When the broker's end was last learnt.
    end_seen: Instant,
    /// Offsets Kafka deleted before they were read (see [`PartitionHealth::missing`]).
    missing: Option<(i64, i64)>,
}

impl Partition {
    fn behind(&self) -> bool {
        self.next < self.high_watermark
    }

    fn stalled(&self, now: Instant, stall_after: Duration) -> bool {
        let idle = self
            .idle_since
            .is_some_and(|since| now.saturating_duration_since(since) >= stall_after);
        idle || now.saturating_duration_since(self.end_seen) >= stall_after
    }
}

/// Per-partition progress against the broker's end.
#[derive(Debug, Clone)]
pub struct Health {
    settings: HealthSettings,
    partitions: BTreeMap<i32, Partition>,
    /// Consumers recreated by the watchdog.
    stalls: u64,
}

impl Health {
    pub fn new(settings: HealthSettings) -> Self {
        Self {
            settings,
            partitions: BTreeMap::new(),
            stalls: 0,
        }
    }

    pub fn settings(&self) -> HealthSettings {
        self.settings
    }

    /// Consumption (re)starts at `starts` with the broker's ends `heads`: forgets the old
    /// progress (the stall counter stays).
    pub fn restart(&mut self, starts: &BTreeMap<i32, (i64, i64)>, now: Instant) {
        self.partitions = (starts.iter())
            .map(|(&partition, &(start, head))| {
                let mut p = Partition {
                    start,
                    next: start,
                    high_watermark: head,
                    head_at_start: head,
                    idle_since: None,
                    end_seen: now,
                    missing: None,
                };
                p.idle_since = p.behind().then_some(now);
                (partition, p)
            })
            .collect();
    }

    /// Kafka deleted `partition`'s offsets `[from, to]` before they were read (widening what was
    /// recorded since the last restart).
    pub fn missing(&mut self, partition: i32, from: i64, to: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.missing = Some(match p.missing {
                Some((f, t)) => (f.min(from), t.max(to)),
                None => (from, to),
            });
        }
    }

    /// A poll step aggregated everything below `next` on `partition`.
    pub fn progress(&mut self, partition: i32, next: i64, now: Instant) {
        if let Some(p) = self.partitions.get_mut(&partition)
            && next > p.next
        {
            p.next = next;
            p.high_watermark = p.high_watermark.max(next);
            p.idle_since = p.behind().then_some(now);
        }
    }

    /// The broker's end of `partition` is `high`.
    pub fn high_watermark(&mut self, partition: i32, high: i64, now: Instant) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.high_watermark = high;
            p.end_seen = now;
            if !p.behind() {
                p.idle_since = None;
            } else if p.idle_since.is_none() {
                p.idle_since = Some(now);
            }
        }
    }

    /// The watchdog recreated the consumer: the partitions' clocks start again, so a consumer is
    /// given `stall_after` to show progress before it counts as stalled again.
    pub fn recreated(&mut self, now: Instant) {
        self.stalls += 1;
        for p in self.partitions.values_mut() {
            if p.idle_since.is_some() {
                p.idle_since = Some(now);
            }
        }
    }

    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// Per partition, the next offset to aggregate.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        (self.partitions.iter())
            .map(|(&partition, p)| (partition, p.next))
            .collect()
    }

    pub fn partitions(&self, now: Instant) -> BTreeMap<i32, PartitionHealth> {
        let stall_after = self.settings.stall_after;
        (self.partitions.iter())
            .map(|(&partition, p)| {
                let health = PartitionHealth {
                    start: p.start,
                    next: p.next,
                    high_watermark: p.high_watermark,
                    stalled: p.stalled(now, stall_after),
                    missing: p.missing,
                };
                (partition, health)
            })
            .collect()
    }

    /// The partitions that are stalled (see the module docs).
    pub fn stalled(&self, now: Instant) -> Vec<i32> {
        let stall_after = self.settings.stall_after;
        (self.partitions.iter())
            .filter(|(_, p)| p.stalled(now, stall_after))
            .map(|(&partition, _)| partition)
            .collect()
    }

    /// Every partition within `ready_max_lag` of the broker's end and none stalled: an answer
    /// misses at most that many messages per partition.
    pub fn complete(&self, now: Instant) -> bool {
        let HealthSettings {
            ready_max_lag,
            stall_after,
        } = self.settings;
        !self.partitions.is_empty()
            && (self.partitions.values()).all(|p| {
                (p.high_watermark - p.next).max(0) as u64 <= ready_max_lag
                    && !p.stalled(now, stall_after)
            })
    }

    /// Complete, and read up to the end every partition had when consumption (re)started.
    pub fn ready(&self, now: Instant) -> bool {
        self.caught_up() && self.complete(now)
    }

    /// Every partition read up to the end it had when consumption (re)started.
    pub fn caught_up(&self) -> bool {
        !self.partitions.is_empty() && (self.partitions.values()).all(|p| p.next >= p.head_at_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    fn health(ready_max_lag: u64) -> Health {
        Health::new(HealthSettings {
            ready_max_lag,
            stall_after: STALL,
        })
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn offsets_deleted_unread_are_reported_until_the_next_restart() {
        let t0 = Instant::now();
        let mut h = health(10);
        h.restart(&BTreeMap::from([(0, (100, 150)), (1, (0, 10))]), t0);
        h.missing(0, 40, 99);
        h.missing(0, 20, 60);
        h.missing(7, 1, 2); // not a partition read: ignored
        let partitions = h.partitions(t0);
        assert_eq!(partitions[&0].missing, Some((20, 99)));
        assert_eq!(partitions[&1].missing, None);
        assert!(!partitions.contains_key(&7));
        h.restart(&BTreeMap::from([(0, (150, 150))]), t0);
        assert_eq!(h.partitions(t0)[&0].missing, None);
    }

    #[test]
    fn nothing_known_is_neither_complete_nor_ready() {
        let h = health(10);
        let now = Instant::now();
        assert!(!h.complete(now));
        assert!(!h.ready(now));
    }

    #[test]
    fn ready_needs_the_initial_catch_up_even_within_the_lag_allowed() {
        let t0 = Instant::now();
        let mut h = health(100);
        h.restart(&BTreeMap::from([(0, (0, 50)), (1, (10, 10))]), t0);
        assert!(h.complete(t0), "50 behind is within 100");
        assert!(!h.ready(t0), "the backlog present at start is read first");
        h.progress(0, 50, secs(t0, 1));
        assert!(h.ready(secs(t0, 1)));
    }

    #[test]
    fn lag_above_the_limit_is_incomplete_until_read() {
        let t0 = Instant::now();
        let mut h = health(10);
        h.restart(&BTreeMap::from([(0, (0, 0))]), t0);
        assert!(h.ready(t0));
        h.high_watermark(0, 11, secs(t0, 1));
        assert!(!h.complete(secs(t0, 1)));
        assert_eq!(h.partitions(secs(t0, 1))[&0].lag(), 11);
        h.progress(0, 1, secs(t0, 2));
        assert!(h.complete(secs(t0, 2)), "10 behind is within the limit");
        assert!(h.ready(secs(t0, 2)));
    }

    #[test]
    fn behind_without_progress_for_stall_after_is_stalled() {
        let t0 = Instant::now();
        let mut h = health(1_000);
        h.restart(&BTreeMap::from([(0, (0, 0)), (1, (0, 0))]), t0);
        h.high_watermark(0, 5, secs(t0, 1));
        h.high_watermark(1, 0, secs(t0, 1));
        // The watcher keeps reporting the same end: no progress is no progress.
        for s in 2..=30 {
            h.high_watermark(0, 5, secs(t0, s));
            h.high_watermark(1, 0, secs(t0, s));
        }
        assert!(h.stalled(secs(t0, 30)).is_empty(), "29 s idle");
        h.high_watermark(0, 5, secs(t0, 31));
        h.high_watermark(1, 0, secs(t0, 31));
        assert_eq!(h.stalled(secs(t0, 31)), vec![0]);
        assert!(
            !h.complete(secs(t0, 31)),
            "stalled, although within the lag allowed"
        );
        // Progress, even partial, restarts the clock.
        h.progress(0, 3, secs(t0, 32));
        assert!(h.stalled(secs(t0, 32)).is_empty());
        assert!(h.complete(secs(t0, 32)));
        h.high_watermark(0, 5, secs(t0, 62));
        h.high_watermark(1, 0, secs(t0, 62));
        assert_eq!(h.stalled(secs(t0, 62)), vec![0], "still behind, idle again");
    }

    #[test]
    fn caught_up_and_idle_is_not_stalled() {
        let t0 = Instant::now();
        let mut h = health(0);
        h.restart(&BTreeMap::from([(0, (7, 7))]), t0);
        for s in 1..=120 {
            h.high_watermark(0, 7, secs(t0, s));
        }
        assert!(h.ready(secs(t0, 120)));
    }

    #[test]
    fn an_unknown_end_counts_as_stalled() {
        let t0 = Instant::now();
        let mut h = health(1_000);
        h.restart(&BTreeMap::from([(0, (0, 0))]), t0);
        assert!(h.ready(secs(t0, 29)));
        assert_eq!(
            h.stalled(secs(t0, 30)),
            vec![0],
            "the watcher has not answered"
        );
        h.high_watermark(0, 0, secs(t0, 31));
        assert!(h.ready(secs(t0, 31)));
    }

    #[test]
    fn a_recreated_consumer_gets_stall_after_to_show_progress() {
        let t0 = Instant::now();
        let mut h = health(1_000);
        h.restart(&BTreeMap::from([(0, (0, 9))]), t0);
        h.high_watermark(0, 9, secs(t0, 30));
        assert_eq!(h.stalled(secs(t0, 30)), vec![0]);
        h.recreated(secs(t0, 30));
        assert_eq!(h.stalls(), 1);
        h.high_watermark(0, 9, secs(t0, 45));
        assert!(h.stalled(secs(t0, 45)).is_empty());
        assert_eq!(h.stalled(secs(t0, 60)), vec![0]);
    }

    #[test]
    fn a_restart_forgets_progress_but_keeps_the_stall_count() {
        let t0 = Instant::now();
        let mut h = health(0);
        h.restart(&BTreeMap::from([(0, (0, 4))]), t0);
        h.progress(0, 4, t0);
        h.recreated(t0);
        assert!(h.ready(t0));
        h.restart(&BTreeMap::from([(0, (2, 4))]), secs(t0, 1));
        assert_eq!(h.next_offsets(), BTreeMap::from([(0, 2)]));
        assert!(!h.ready(secs(t0, 1)));
        assert_eq!(h.stalls(), 1);
    }
}
