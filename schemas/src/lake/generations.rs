//! Generations of a topic's offsets (ARCHITECTURE.md §4): when a topic's offsets restart (the topic
//! was recreated, the cluster replaced, an ephemeral broker restarted), the archived data cannot be
//! continued at the same offsets. The archiver closes the current **generation** and archives the
//! new log as the next one; closed generations keep every file they hold and are included whole in
//! every recompute (they are *fully batched*: the speed layer, which only reads the live log, never
//! sees them), so no archived event is lost or counted twice.
//!
//! A **backfill** (`tributary backfill FILE`) is a closed generation of its own: events that never
//! went through Kafka, numbered by their position in the file (partition 0), included whole in
//! every recompute from then on, and recorded with the file's content hash so the same file is
//! never added twice.
//!
//! Generation 0 lives at `raw/<topic>/...` (the layout before any restart); generation `g > 0` at
//! `raw/<topic>@<g>/...`. Kafka topic names cannot contain `@`, so these never collide with another
//! topic. The log of generations is `raw/<topic>/_generations.json`, replaced atomically when one
//! closes; without it, generation 0 is current and none is closed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Lake, LakeError};

/// The lake's name for `topic`'s files in `generation` (the `<topic>` of every raw path).
pub fn generation_topic(topic: &str, generation: u32) -> String {
    match generation {
        0 => topic.to_owned(),
        g => format!("{topic}@{g}"),
    }
}

fn generations_path(topic: &str) -> String {
    format!("raw/{topic}/_generations.json")
}

/// A generation that will never grow again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClosedGeneration {
    pub generation: u32,
    pub closed_at: DateTime<Utc>,
    /// Per partition, one past the last archived offset when it closed.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Why it closed, for operators.
    pub reason: String,
    /// Set for a generation made by a backfill: the file its events came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillSource>,
}

/// The file a backfilled generation's events came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSource {
    /// The file's name as given.
    pub file: String,
    /// SHA-256 of its content, hex: a second backfill of the same content is refused.
    pub sha256: String,
    pub events: u64,
    pub quarantined: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generations {
    /// The generation the archiver appends to and the speed layer's offsets refer to.
    pub current: u32,
    pub closed: Vec<ClosedGeneration>,
}

impl Generations {
    pub fn current_topic(&self, topic: &str) -> String {
        generation_topic(topic, self.current)
    }

    /// The first number no generation has used.
    fn next_free(&self) -> u32 {
        let closed = self.closed.iter().map(|c| c.generation);
        closed.chain([self.current]).max().unwrap_or(0) + 1
    }

    /// Closes the current generation and opens the next.
    pub fn close_current(&mut self, next_offsets: BTreeMap<i32, i64>, reason: String) {
        self.closed.push(ClosedGeneration {
            generation: self.current,
            closed_at: Utc::now(),
            next_offsets,
            reason,
            backfill: None,
        });
        self.current = self.next_free();
    }

    /// The number the next backfill's generation gets (the current one stays current).
    pub fn next_backfill(&self) -> u32 {
        self.next_free()
    }

    /// Records a backfilled generation `generation` (from [`Self::next_backfill`]) holding
    /// `events` offsets of partition 0.
    pub fn add_backfill(&mut self, generation: u32, source: BackfillSource) {
        let next_offsets = [(0, (source.events + source.quarantined) as i64)].into();
        self.closed.push(ClosedGeneration {
            generation,
            closed_at: Utc::now(),
            next_offsets,
            reason: format!("backfill of {}", source.file),
            backfill: Some(source),
        });
    }

    /// The backfill of a file with this content, if there was one.
    pub fn backfilled(&self, sha256: &str) -> Option<&ClosedGeneration> {
        (self.closed.iter()).find(|c| c.backfill.as_ref().is_some_and(|b| b.sha256 == sha256))
    }
}

impl Lake {
    /// The topic's log of generations; the default (generation 0 current, none closed) when
    /// none has closed yet.
    pub async fn generations(&self, topic: &str) -> Result<Generations, LakeError> {
        Ok(self
            .get_json(&generations_path(topic))
            .await?
            .unwrap_or_default())
    }

    /// Replaces the topic's log of generations (one atomic put).
    pub async fn write_generations(
        &self,
        topic: &str,
        generations: &Generations,
    ) -> Result<(), LakeError> {
        self.put_json(&generations_path(topic), generations).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn generations_start_at_zero_and_close_one_at_a_time() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        let mut generations = lake.generations("events").await.unwrap();
        assert_eq!(generations, Generations::default());
        assert_eq!(generations.current_topic("events"), "events");
        generations.close_current([(0, 1000)].into(), "offsets restarted".to_owned());
        lake.write_generations("events", &generations)
            .await
            .unwrap();
        let read = lake.generations("events").await.unwrap();
        assert_eq!(read, generations);
        assert_eq!(read.current_topic("events"), "events@1");
        assert_eq!(read.closed[0].next_offsets[&0], 1000);
    }

    #[test]
    fn backfills_take_numbers_of_their_own_and_the_current_generation_stays() {
        let mut generations = Generations::default();
        let source = |sha: &str| BackfillSource {
            file: "old.ndjson".to_owned(),
            sha256: sha.to_owned(),
            events: 10,
            quarantined: 2,
        };
        let first = generations.next_backfill();
        generations.add_backfill(first, source("aa"));
        assert_eq!((first, generations.current), (1, 0));
        assert_eq!(generations.closed[0].next_offsets[&0], 12);
        assert_eq!(generations.backfilled("aa").unwrap().generation, 1);
        assert!(generations.backfilled("bb").is_none());
        // The archiver's next generation skips the backfill's number.
        generations.close_current([(0, 5)].into(), "offsets restarted".to_owned());
        assert_eq!(generations.current, 2);
        assert_eq!(generations.next_backfill(), 3);
    }
}
