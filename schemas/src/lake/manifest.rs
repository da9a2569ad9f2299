//! The manifest of a batch view version and the `_current` pointer that makes one version live.
//!
//! A version is published by writing its Parquet parts, then `manifest.json`, then replacing
//! `_current` (ARCHITECTURE.md §4), so a reader that follows `_current` always finds a complete
//! version. The manifest's [`Boundary`] is the seam with the speed layer (§5).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Version of the manifest's JSON layout.
pub const MANIFEST_FORMAT: u32 = 1;

/// For every partition `p`, `W[p]`: the first offset the version does *not* cover. Partitions absent
/// from the map are not covered at all (`W[p] = 0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Boundary(pub BTreeMap<i32, i64>);

impl Boundary {
    pub fn get(&self, partition: i32) -> i64 {
        self.0.get(&partition).copied().unwrap_or(0)
    }

    /// Whether the version covers `offset` of `partition`.
    pub fn covers(&self, partition: i32, offset: i64) -> bool {
        offset < self.get(partition)
    }
}

/// One Parquet part of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the lake root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// What one immutable batch view version covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub view: String,
    /// [`crate::config::ViewDef::definition_hash`] of the definition the version was computed with.
    pub definition_hash: String,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub row_count: u64,
    pub files: Vec<ManifestFile>,
    /// The epoch size the boundary was aligned to.
    pub epoch_size: u64,
    /// The generation of the topic's offsets the boundary refers to (see
    /// [`super::generations`]). A speed layer reading a later generation's log starts it at 0.
    #[serde(default)]
    pub generation: u32,
    /// Closed generations included whole.
    #[serde(default)]
    pub closed_generations: Vec<u32>,
    pub boundary: Boundary,
    /// The newest time bucket the version holds: where batch coverage ends in event time (newer
    /// buckets are the speed layer's alone). Absent in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_bucket: Option<DateTime<Utc>>,
    /// When the full recompute this version descends from ran (`None` in manifests written before
    /// incremental runs: the next run is full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at: Option<DateTime<Utc>>,
    /// Incremental runs since that full one: how many delta generations of parts the version lists
    /// (0 for a full version).
    #[serde(default)]
    pub deltas: u32,
    /// The view's `retention` cut: the version answers for buckets from this time on only (parts
    /// it shares with older versions may still hold earlier ones; readers skip them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_from: Option<DateTime<Utc>>,
    /// The view's definition as configured when the version was computed (absent in manifests
    /// written before it was recorded): what its states mean, whatever the configuration says now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<crate::config::ViewSpec>,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Content of `views/<view>/_current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentPointer {
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_through_json_with_partition_keys_as_strings() {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            view: "pageviews".to_owned(),
            definition_hash: "00ff".to_owned(),
            version: 3,
            created_at: DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
                .unwrap()
                .into(),
            row_count: 42,
            files: vec![ManifestFile {
                path: "views/pageviews/00000000000000000003/part-00000.parquet".to_owned(),
                rows: 42,
                bytes: 4096,
            }],
            epoch_size: 100,
            generation: 0,
            closed_generations: Vec::new(),
            boundary: Boundary([(0, 300), (2, 100)].into()),
            newest_bucket: DateTime::parse_from_rfc3339("2026-11-21T09:59:00Z")
                .ok()
                .map(Into::into),
            full_at: None,
            deltas: 0,
            retained_from: None,
            definition: None,
        };
        let json = manifest.to_json();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(
            text.contains("\"boundary\": {\n    \"0\": 300,\n    \"2\": 100\n  }"),
            "{text}"
        );
        assert!(
            text.contains("\"created_at\": \"2026-11-21T10:00:00Z\""),
            "{text}"
        );
        assert_eq!(Manifest::from_json(&json).unwrap(), manifest);
        assert!(manifest.boundary.covers(0, 299));
        assert!(!manifest.boundary.covers(0, 300));
        assert!(
            !manifest.boundary.covers(1, 0),
            "an absent partition is not covered"
        );
    }

    #[test]
    fn unknown_manifest_keys_are_refused() {
        let error =
            serde_json::from_str::<CurrentPointer>(r#"{"version":1,"extra":2}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `extra`"),
            "{error}"
        );
    }
}
