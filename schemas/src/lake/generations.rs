//! Generations of a topic's offsets (ARCHITECTURE.md §4): when a topic's offsets restart (the topic
//! was recreated, the cluster replaced, an ephemeral broker restarted), the archived data cannot be
//! continued at the same offsets. The archiver closes the current **generation** and archives the
//! new log as the next one; closed generations keep every file they hold and are included whole in
//! every recompute (they are *fully batched*: the speed layer, which only reads the live log, never
//! sees them), so no archived event is lost or counted twice.
//!
//! Generation 0 lives at `raw/<topic>/...` (the layout before any restart); generation `g > 0` at
//! `raw/<topic>@<g>/...`. Kafka topic names cannot contain `@`, so these never collide with another
//! topic. The log of generations is `raw/<topic>/_generations.json`, replaced atomically when one
//! closes; without it, generation 0 is current and none is closed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
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

    /// Closes the current generation and opens the next.
    pub fn close_current(&mut self, next_offsets: BTreeMap<i32, i64>, reason: String) {
        self.closed.push(ClosedGeneration {
            generation: self.current,
            closed_at: Utc::now(),
            next_offsets,
            reason,
        });
        self.current += 1;
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
        let json = serde_json::to_vec_pretty(generations).expect("generations serialize");
        self.store()
            .put(&Path::from(generations_path(topic)), PutPayload::from(json))
            .await?;
        Ok(())
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
}
