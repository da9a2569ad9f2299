//! What raw retention (`[lake] raw_retention`) deleted from the master dataset: per generation
//! topic and partition, the first offset the lake still holds, and the newest event time among
//! the deleted files. Written before any file is deleted (a crash in between claims a loss that did
//! not happen yet, never the opposite), at `raw/<topic>/_history.json`; without it, the history is
//! whole. A full recompute reads it to know whether it can still cover everything its view ever
//! counted (see `tributary_batch::recompute`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Lake, LakeError};

fn history_path(topic: &str) -> String {
    format!("raw/{topic}/_history.json")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    /// Generation topic (see [`super::generations::generation_topic`]) → partition → the first
    /// offset still held (every offset below it was deleted).
    pub deleted_below: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The newest event time in any deleted file: a full recompute misses events up to it.
    pub newest_deleted_event: Option<DateTime<Utc>>,
}

impl RawHistory {
    /// Whether retention deleted anything: a full recompute would then miss events.
    pub fn is_partial(&self) -> bool {
        !self.deleted_below.is_empty()
    }

    /// Records that `partition` of `lake_topic` holds nothing below `below`, and that the deleted
    /// files' newest event was at `newest_event`.
    pub fn record(
        &mut self,
        lake_topic: &str,
        partition: i32,
        below: i64,
        newest_event: Option<DateTime<Utc>>,
    ) {
        let first = (self.deleted_below.entry(lake_topic.to_owned()).or_default())
            .entry(partition)
            .or_insert(below);
        *first = (*first).max(below);
        self.newest_deleted_event = self.newest_deleted_event.max(newest_event);
    }

    /// For people: what a full recompute can no longer cover.
    pub fn describe(&self) -> String {
        let newest = self.newest_deleted_event.map_or_else(
            || "unknown times".to_owned(),
            |at| format!("events up to {}", at.format("%Y-%m-%dT%H:%M:%SZ")),
        );
        let offsets: Vec<String> = (self.deleted_below.iter())
            .flat_map(|(topic, partitions)| {
                (partitions.iter()).map(move |(p, below)| format!("{topic}/{p} below {below}"))
            })
            .collect();
        format!(
            "raw retention deleted {newest} (offsets {})",
            offsets.join(", ")
        )
    }
}

impl Lake {
    /// What retention deleted from `topic`'s raw files; the default (nothing) when it never ran.
    pub async fn raw_history(&self, topic: &str) -> Result<RawHistory, LakeError> {
        Ok(self
            .get_json(&history_path(topic))
            .await?
            .unwrap_or_default())
    }

    /// Replaces the record of what retention deleted (one atomic put).
    pub async fn write_raw_history(
        &self,
        topic: &str,
        history: &RawHistory,
    ) -> Result<(), LakeError> {
        self.put_json(&history_path(topic), history).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn the_history_is_whole_until_retention_records_a_deletion() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        let mut history = lake.raw_history("events").await.unwrap();
        assert!(!history.is_partial());
        let at = |s| DateTime::parse_from_rfc3339(s).ok().map(Into::into);
        history.record("events", 1, 500, at("2026-11-01T10:00:00Z"));
        history.record("events", 1, 300, at("2026-10-01T10:00:00Z"));
        lake.write_raw_history("events", &history).await.unwrap();
        let read = lake.raw_history("events").await.unwrap();
        assert_eq!(read, history);
        assert!(read.is_partial());
        assert_eq!(read.deleted_below["events"][&1], 500, "never moves down");
        assert_eq!(
            read.describe(),
            "raw retention deleted events up to 2026-11-01T10:00:00Z (offsets events/1 below 500)"
        );
    }
}
