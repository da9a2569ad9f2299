//! The event schema's history in the lake (`raw/<topic>/_schemas.json`): each event schema the
//! master dataset was written in (time field, fields and types) and the offsets from which it
//! applies, per generation and partition. The archiver appends an entry when it starts with a
//! compatible change; every process checks its configured schema against the lake's current one
//! before it touches the lake ([`Evolution::between`]).
//!
//! **Compatible** changes, which every reader handles by reading each raw file with the current
//! schema: a field added (events written before read it as `NULL`), a field removed (it stays in the
//! raw files, no longer decoded or read), `int64` widened to `float64` (read and cast). Anything else
//! (another time field, a type narrowed or changed, e.g. `string` → `int64`) is refused, with the fix
//! spelled out: a field of a new name.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Lake, LakeError};
use crate::event::{EventSchema, FieldDef, FieldType};

fn schemas_path(topic: &str) -> String {
    format!("raw/{topic}/_schemas.json")
}

/// One event schema and where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaEntry {
    pub recorded_at: DateTime<Utc>,
    /// The offset generation the offsets below refer to.
    pub generation: u32,
    /// Per partition, the first offset written in this schema (absent: from the start).
    pub since: BTreeMap<i32, i64>,
    pub time_field: String,
    /// Field name → type, in configuration order.
    pub fields: Vec<(String, FieldType)>,
}

impl SchemaEntry {
    pub fn of(schema: &EventSchema, generation: u32, since: BTreeMap<i32, i64>) -> Self {
        SchemaEntry {
            recorded_at: Utc::now(),
            generation,
            since,
            time_field: schema.time_field.clone(),
            fields: (schema.fields.iter())
                .map(|f| (f.name.clone(), f.ty))
                .collect(),
        }
    }

    pub fn schema(&self) -> EventSchema {
        EventSchema {
            time_field: self.time_field.clone(),
            fields: (self.fields.iter())
                .map(|(name, ty)| FieldDef {
                    name: name.clone(),
                    ty: *ty,
                })
                .collect(),
        }
    }
}

/// Every schema the topic's raw files were written in, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaHistory {
    pub schemas: Vec<SchemaEntry>,
}

impl SchemaHistory {
    pub fn current(&self) -> Option<&SchemaEntry> {
        self.schemas.last()
    }

    /// What `configured` changes from the current schema of `topic` (nothing when none is
    /// recorded yet), or why the raw files cannot be read with it.
    fn evolution_to(
        &self,
        topic: &str,
        configured: &EventSchema,
    ) -> Result<Evolution, SchemaError> {
        let Some(current) = self.current() else {
            return Ok(Evolution::default());
        };
        Evolution::between(&current.schema(), configured).map_err(|source| {
            SchemaError::Incompatible {
                topic: topic.to_owned(),
                source,
            }
        })
    }
}

/// One compatible difference between two event schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added { field: String, ty: FieldType },
    Removed { field: String, ty: FieldType },
    Widened { field: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { field, ty } => write!(
                f,
                "field {field:?} ({ty}) added: events written before read it as NULL"
            ),
            Change::Removed { field, ty } => write!(
                f,
                "field {field:?} ({ty}) removed: kept in the raw files, no longer read"
            ),
            Change::Widened { field } => write!(
                f,
                "field {field:?} widened from int64 to float64: earlier values read as floats"
            ),
        }
    }
}

/// A change no reader can follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error(
        "field {field:?} is {lake} in the lake's event schema and {configured} in this configuration: raw files cannot be read as both. Keep {field:?} as {lake} and add the new values as a field of a new name (e.g. \"{field}_{configured}\")"
    )]
    Type {
        field: String,
        lake: FieldType,
        configured: FieldType,
    },
    #[error(
        "the time field is {lake:?} in the lake's event schema and {configured:?} in this configuration: every raw file is ordered and bucketed by the lake's. Keep time_field = {lake:?}"
    )]
    TimeField { lake: String, configured: String },
}

/// What a configured schema changes from the lake's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evolution {
    pub changes: Vec<Change>,
}

impl Evolution {
    /// The changes from `lake` to `configured`, or the first incompatible one.
    pub fn between(lake: &EventSchema, configured: &EventSchema) -> Result<Self, Incompatible> {
        if lake.time_field != configured.time_field {
            return Err(Incompatible::TimeField {
                lake: lake.time_field.clone(),
                configured: configured.time_field.clone(),
            });
        }
        let mut changes = Vec::new();
        for field in &configured.fields {
            match lake.field(&field.name) {
                None => changes.push(Change::Added {
                    field: field.name.clone(),
                    ty: field.ty,
                }),
                Some(old) if old.ty == field.ty => {}
                Some(old) if old.ty == FieldType::Int64 && field.ty == FieldType::Float64 => {
                    changes.push(Change::Widened {
                        field: field.name.clone(),
                    });
                }
                Some(old) => {
                    return Err(Incompatible::Type {
                        field: field.name.clone(),
                        lake: old.ty,
                        configured: field.ty,
                    });
                }
            }
        }
        for old in &lake.fields {
            if configured.field(&old.name).is_none() {
                changes.push(Change::Removed {
                    field: old.name.clone(),
                    ty: old.ty,
                });
            }
        }
        Ok(Evolution { changes })
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Why a configuration cannot run on a lake, or the lake could not say.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the configured event schema cannot read the raw files already in the lake (raw/{topic}/_schemas.json): {source}"
    )]
    Incompatible {
        topic: String,
        #[source]
        source: Incompatible,
    },
    #[error(transparent)]
    Lake(#[from] LakeError),
}

impl Lake {
    /// Checks `configured` against the lake's current event schema: the compatible changes it
    /// makes (none when they are equal, or the lake has recorded none yet), or why it cannot run.
    pub async fn check_event_schema(
        &self,
        topic: &str,
        configured: &EventSchema,
    ) -> Result<Evolution, SchemaError> {
        let history = self.schema_history(topic).await?;
        history.evolution_to(topic, configured)
    }

    /// Records `configured` as the schema of the offsets of `generation` from `since` on when it
    /// changes the current one (compatibly); the first record covers everything before it too.
    /// Returns the changes recorded.
    pub async fn record_event_schema(
        &self,
        topic: &str,
        configured: &EventSchema,
        generation: u32,
        since: BTreeMap<i32, i64>,
    ) -> Result<Evolution, SchemaError> {
        let mut history = self.schema_history(topic).await?;
        let evolution = history.evolution_to(topic, configured)?;
        let entry = match history.current() {
            None => SchemaEntry::of(configured, generation, BTreeMap::new()),
            Some(_) if evolution.is_empty() => return Ok(evolution),
            Some(_) => SchemaEntry::of(configured, generation, since),
        };
        history.schemas.push(entry);
        self.write_schema_history(topic, &history).await?;
        Ok(evolution)
    }

    /// The topic's event schema history; empty before the first archiver recorded one.
    pub async fn schema_history(&self, topic: &str) -> Result<SchemaHistory, LakeError> {
        Ok(self
            .get_json(&schemas_path(topic))
            .await?
            .unwrap_or_default())
    }

    /// Replaces the topic's event schema history (one atomic put).
    pub async fn write_schema_history(
        &self,
        topic: &str,
        history: &SchemaHistory,
    ) -> Result<(), LakeError> {
        self.put_json(&schemas_path(topic), history).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;

    fn schema(fields: &[(&str, FieldType)]) -> EventSchema {
        EventSchema {
            time_field: "ts".to_owned(),
            fields: (fields.iter())
                .map(|(name, ty)| FieldDef {
                    name: (*name).to_owned(),
                    ty: *ty,
                })
                .collect(),
        }
    }

    #[test]
    fn added_removed_and_widened_fields_are_compatible_and_said() {
        let lake = schema(&[("page", FieldType::String), ("bytes", FieldType::Int64)]);
        let configured = schema(&[("bytes", FieldType::Float64), ("plan", FieldType::String)]);
        let evolution = Evolution::between(&lake, &configured).unwrap();
        let said: Vec<String> = evolution.changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "field \"bytes\" widened from int64 to float64: earlier values read as floats",
                "field \"plan\" (string) added: events written before read it as NULL",
                "field \"page\" (string) removed: kept in the raw files, no longer read",
            ]
        );
        assert!(Evolution::between(&lake, &lake).unwrap().is_empty());
    }

    #[test]
    fn other_type_changes_and_another_time_field_are_refused_with_the_fix() {
        let lake = schema(&[("page", FieldType::String), ("bytes", FieldType::Float64)]);
        let narrowed = schema(&[("page", FieldType::String), ("bytes", FieldType::Int64)]);
        let error = Evolution::between(&lake, &narrowed).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field \"bytes\" is float64 in the lake's event schema and int64 in this configuration: raw files cannot be read as both. Keep \"bytes\" as float64 and add the new values as a field of a new name (e.g. \"bytes_int64\")"
        );
        let retyped = schema(&[("page", FieldType::Int64)]);
        assert!(matches!(
            Evolution::between(&lake, &retyped),
            Err(Incompatible::Type { .. })
        ));
        let mut moved = lake.clone();
        moved.time_field = "at".to_owned();
        assert!(matches!(
            Evolution::between(&lake, &moved),
            Err(Incompatible::TimeField { .. })
        ));
    }

    #[tokio::test]
    async fn the_archiver_records_changes_and_a_wrong_type_is_refused() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        let first = schema(&[("page", FieldType::String), ("bytes", FieldType::Int64)]);
        let recorded = lake.record_event_schema("events", &first, 0, [(0, 50)].into());
        assert!(recorded.await.unwrap().is_empty());
        let history = lake.schema_history("events").await.unwrap();
        assert_eq!(history.schemas.len(), 1);
        assert!(
            history.schemas[0].since.is_empty(),
            "the first covers what came before"
        );
        // The same schema again: nothing recorded.
        lake.record_event_schema("events", &first, 0, [(0, 70)].into())
            .await
            .unwrap();
        assert_eq!(
            lake.schema_history("events").await.unwrap().schemas.len(),
            1
        );
        let second = schema(&[("page", FieldType::String), ("bytes", FieldType::Float64)]);
        let evolution = lake
            .record_event_schema("events", &second, 0, [(0, 90)].into())
            .await
            .unwrap();
        assert_eq!(evolution.changes.len(), 1);
        let history = lake.schema_history("events").await.unwrap();
        assert_eq!(history.schemas[1].since, [(0, 90)].into());
        let wrong = schema(&[("page", FieldType::Bool), ("bytes", FieldType::Float64)]);
        let error = lake.check_event_schema("events", &wrong).await.unwrap_err();
        assert!(
            error.to_string().starts_with(
                "the configured event schema cannot read the raw files already in the lake (raw/events/_schemas.json): field \"page\" is string in the lake's event schema and bool in this configuration"
            ),
            "{error}"
        );
        assert!(
            lake.record_event_schema("events", &wrong, 0, BTreeMap::new())
                .await
                .is_err()
        );
        assert_eq!(
            lake.schema_history("events").await.unwrap().schemas.len(),
            2
        );
    }

    #[tokio::test]
    async fn the_history_reads_back_and_starts_empty() {
        let lake = Lake::new(Arc::new(InMemory::new()));
        let mut history = lake.schema_history("events").await.unwrap();
        assert!(history.current().is_none());
        let first = schema(&[("page", FieldType::String)]);
        history
            .schemas
            .push(SchemaEntry::of(&first, 0, BTreeMap::new()));
        let second = schema(&[("page", FieldType::String), ("plan", FieldType::String)]);
        history
            .schemas
            .push(SchemaEntry::of(&second, 0, [(0, 120), (1, 80)].into()));
        lake.write_schema_history("events", &history).await.unwrap();
        let read = lake.schema_history("events").await.unwrap();
        assert_eq!(read, history);
        assert_eq!(read.current().unwrap().schema(), second);
    }
}
