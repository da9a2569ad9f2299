//! Reads back what the archiver wrote, to check it: which offsets the raw and quarantine areas hold
//! and whether each partition's raw files tile its offsets. Tests use it to prove exactly-once
//! archiving; an operator can use it on a live lake.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, Int64Type};
use tributary_schemas::event::raw_rows::{OFFSET_COLUMN, PARTITION_COLUMN};
use tributary_schemas::lake::{Area, Lake, LakeError};

use super::quarantine::ERROR_CODE_COLUMN;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot read the lake")]
    Lake(#[from] LakeError),
    #[error("{path} lacks the column {column}")]
    MissingColumn { path: String, column: &'static str },
}

/// What the lake holds for one topic.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Every archived (partition, offset), in file order (duplicates would show twice).
    pub raw: Vec<(i32, i64)>,
    /// Every quarantined (partition, offset) with its error code.
    pub quarantine: Vec<((i32, i64), String)>,
    /// Per partition, the first offset where raw files stop tiling `[0, …)`, if they do not.
    pub gaps: BTreeMap<i32, i64>,
}

impl Audit {
    /// How the lake differs from what was produced. `expected` maps every produced (partition, offset)
    /// to `None` (valid) or `Some(error code)`. Empty when the raw area holds each valid offset once,
    /// quarantine each malformed one once with its code, and raw files tile every partition.
    pub fn discrepancies(&self, expected: &BTreeMap<(i32, i64), Option<String>>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut raw: BTreeMap<(i32, i64), usize> = BTreeMap::new();
        for key in &self.raw {
            *raw.entry(*key).or_default() += 1;
        }
        let mut quarantine: BTreeMap<(i32, i64), Vec<&str>> = BTreeMap::new();
        for (key, code) in &self.quarantine {
            quarantine.entry(*key).or_default().push(code);
        }
        for (key, want) in expected {
            let archived = raw.remove(key).unwrap_or(0);
            let quarantined = quarantine.remove(key).unwrap_or_default();
            match want {
                None if archived != 1 || !quarantined.is_empty() => problems.push(format!(
                    "valid offset {key:?}: archived {archived} times, quarantined {} times",
                    quarantined.len()
                )),
                Some(code) if archived != 0 || quarantined != [code.as_str()] => problems.push(format!(
                    "malformed offset {key:?} ({code}): archived {archived} times, quarantined as {quarantined:?}"
                )),
                _ => {}
            }
        }
        problems.extend(
            raw.keys()
                .map(|key| format!("archived offset {key:?} was never produced")),
        );
        problems.extend(
            quarantine
                .keys()
                .map(|key| format!("quarantined offset {key:?} was never produced")),
        );
        problems.extend(self.gaps.iter().map(|(partition, at)| {
            format!("partition {partition}: raw files stop tiling at offset {at}")
        }));
        problems
    }
}

/// Audits `partitions` of `topic`.
pub async fn audit(lake: &Lake, topic: &str, partitions: &[i32]) -> Result<Audit, AuditError> {
    let mut audit = Audit::default();
    for &partition in partitions {
        let mut next = 0;
        for (range, path) in lake.ranges(Area::Raw, topic, partition).await? {
            if range.start != next && !audit.gaps.contains_key(&partition) {
                audit.gaps.insert(partition, next);
            }
            next = range.next();
            for (key, _) in read(lake, path.as_ref(), false).await? {
                audit.raw.push(key);
            }
        }
        for (_, path) in lake.ranges(Area::Quarantine, topic, partition).await? {
            for (key, code) in read(lake, path.as_ref(), true).await? {
                audit.quarantine.push((key, code.unwrap_or_default()));
            }
        }
    }
    Ok(audit)
}

type Row = ((i32, i64), Option<String>);

async fn read(lake: &Lake, path: &str, with_code: bool) -> Result<Vec<Row>, AuditError> {
    let mut rows = Vec::new();
    for batch in lake.read_parquet(path, 8192).await? {
        let batch = batch?;
        let column = |column| {
            batch
                .column_by_name(column)
                .ok_or_else(|| AuditError::MissingColumn {
                    path: path.to_owned(),
                    column,
                })
        };
        let partition = column(PARTITION_COLUMN)?
            .as_primitive::<Int32Type>()
            .clone();
        let offset = column(OFFSET_COLUMN)?.as_primitive::<Int64Type>().clone();
        let code = if with_code {
            Some(column(ERROR_CODE_COLUMN)?.as_string::<i32>().clone())
        } else {
            None
        };
        for row in 0..batch.num_rows() {
            let code = code.as_ref().map(|c| c.value(row).to_owned());
            rows.push(((partition.value(row), offset.value(row)), code));
        }
    }
    Ok(rows)
}
