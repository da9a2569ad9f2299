//! Step 5 of a run, after every view and still under the run lock: the raw master dataset's
//! upkeep. Both touch only offsets that views already cover ([`Coverage`]): compaction those of
//! every view's live version (it changes no offset, only how many files hold them, so the next
//! incremental run's files are left as they are), retention those of **every complete version**
//! of every view, so a rollback to any kept version can still be extended. Both hold the run lock,
//! so they never race a recompute reading raw files.
//!
//! - **Compaction** ([`compact_partition`]): the archiver rolls a file every `max_file_age`, so a
//!   quiet partition gets hundreds of small files a day, and every full run opens them all.
//!   Contiguous small files are rewritten as one file of up to `[archiver] max_file_rows` offsets
//!   named by the union of their ranges; it is put before the small ones are deleted, and listings
//!   skip files a wider one covers (`Lake::ranges`), so each offset is read exactly once at every
//!   moment, a kill -9 at any point included (the next compaction deletes what a killed one left).
//! - **Retention** ([`expire_partition`], `[lake] raw_retention`, off by default): deletes a
//!   partition's oldest files whose newest event is older than the retention, oldest first and
//!   never its newest file (the archiver resumes after it). What it deletes is recorded first in
//!   the lake's [`RawHistory`]: a full recompute reads it and refuses to pass a partial history
//!   off as a whole one (see [`super::RunOptions::allow_partial_history`]).
//!
//! Files of closed generations (a restarted topic's old log, backfills) are compacted too, all of
//! them: every run reads them whole, and nothing appends to them. Retention leaves them alone.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use tributary_schemas::config::ViewDef;
use tributary_schemas::lake::generations::generation_topic;
use tributary_schemas::lake::history::RawHistory;
use tributary_schemas::lake::{Area, Boundary, Lake, OffsetRange, Removed};

use super::BatchError;
use super::plan::InputFile;
use super::publish::{crash_point, versions_of};
use super::slices;

/// Offsets of the current generation that versions of every view cover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub generation: u32,
    /// Per partition, the least boundary of those versions (absent: nothing covered).
    pub below: Boundary,
}

impl Coverage {
    /// What every complete version of `views` covers in `generation` (only the live ones with
    /// `live_only`): nothing when a view has no version, or one of another generation.
    pub async fn of(
        lake: &Lake,
        views: &[ViewDef],
        generation: u32,
        live_only: bool,
    ) -> Result<Self, BatchError> {
        let mut below: Option<BTreeMap<i32, i64>> = None;
        for view in views {
            let versions = match live_only {
                true => lake.live_manifest(&view.name).await?.into_iter().collect(),
                false => versions_of(lake, &view.name).await?.0,
            };
            if versions.is_empty() {
                below = Some(BTreeMap::new());
            }
            for version in versions {
                let boundary = match version.generation == generation {
                    true => version.boundary.0,
                    false => BTreeMap::new(),
                };
                below = Some(match below {
                    None => boundary,
                    Some(least) => (least.into_iter())
                        .filter_map(|(p, w)| Some((p, w.min(*boundary.get(&p)?))))
                        .collect(),
                });
            }
        }
        Ok(Coverage {
            generation,
            below: Boundary(below.unwrap_or_default()),
        })
    }
}

/// What compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Small files replaced.
    pub files_in: usize,
    /// Files written in their place.
    pub files_out: usize,
    pub rows: u64,
    /// Files a killed compaction left behind (covered by the file it wrote), deleted now.
    pub leftovers: usize,
}

impl std::ops::AddAssign for Compacted {
    fn add_assign(&mut self, other: Self) {
        self.files_in += other.files_in;
        self.files_out += other.files_out;
        self.rows += other.rows;
        self.leftovers += other.leftovers;
    }
}

/// Offsets a file spans (an upper bound of its rows: quarantined offsets are not in it).
fn span(range: OffsetRange) -> i64 {
    range.end - range.start + 1
}

/// The runs of contiguous files below `below`, each under half of `max_rows` offsets, that join
/// into files of at most `max_rows`: the groups compaction rewrites (two files or more each).
pub fn compaction_groups(
    ranges: &[OffsetRange],
    below: i64,
    max_rows: i64,
) -> Vec<Vec<OffsetRange>> {
    let mut groups: Vec<Vec<OffsetRange>> = Vec::new();
    let mut group: Vec<OffsetRange> = Vec::new();
    let mut close = |group: &mut Vec<OffsetRange>| {
        if group.len() >= 2 {
            groups.push(std::mem::take(group));
        }
        group.clear();
    };
    for &range in ranges {
        let small = range.end < below && span(range) < max_rows / 2;
        if !small {
            close(&mut group);
            continue;
        }
        let joins = group.last().is_some_and(|last| last.next() == range.start)
            && group.iter().map(|r| span(*r)).sum::<i64>() + span(range) <= max_rows;
        if !joins {
            close(&mut group);
        }
        group.push(range);
    }
    close(&mut group);
    groups
}

/// Compacts one partition's small files below `below` into files of up to `max_rows` offsets,
/// after deleting what a killed compaction left.
pub async fn compact_partition(
    lake: &Lake,
    lake_topic: &str,
    partition: i32,
    below: i64,
    max_rows: usize,
) -> Result<Compacted, BatchError> {
    let listing = lake.listing(Area::Raw, lake_topic, partition).await?;
    let mut done = Compacted::default();
    for (range, _) in &listing.covered {
        lake.delete_partition_file(Area::Raw, lake_topic, partition, *range)
            .await?;
        done.leftovers += 1;
    }
    let ranges: Vec<OffsetRange> = listing.files.iter().map(|(r, _)| *r).collect();
    let max_rows = i64::try_from(max_rows).unwrap_or(i64::MAX);
    for group in compaction_groups(&ranges, below, max_rows) {
        let mut batches: Vec<RecordBatch> = Vec::new();
        for range in &group {
            let (_, path) = (listing.files.iter())
                .find(|(r, _)| r == range)
                .expect("groups are made of listed files");
            for batch in lake.read_parquet(path.as_ref(), 64 * 1024).await? {
                batches.push(batch?);
            }
        }
        let schema = batches.first().map(RecordBatch::schema);
        if batches.iter().any(|b| Some(b.schema()) != schema) {
            // Files of different event schemas stay apart (each is read with its own).
            tracing::info!(
                partition,
                "raw files with different schemas are not compacted together"
            );
            continue;
        }
        let union = OffsetRange {
            start: group[0].start,
            end: group[group.len() - 1].end,
        };
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if batches.is_empty() {
            // Every offset of the group quarantined: the empty files are their record; kept.
            continue;
        }
        let bytes = crate::parquet_io::encode(&batches)?;
        lake.put_partition_file(Area::Raw, lake_topic, partition, union, bytes)
            .await?;
        crash_point("compaction_written");
        for (i, range) in group.iter().enumerate() {
            if i == 1 {
                crash_point("compaction_deleting");
            }
            lake.delete_partition_file(Area::Raw, lake_topic, partition, *range)
                .await?;
        }
        done.files_in += group.len();
        done.files_out += 1;
        done.rows += rows;
    }
    Ok(done)
}

/// What retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub files: usize,
    pub rows: u64,
}

/// Deletes `partition`'s oldest files below `below` whose newest event is before `cutoff`, in
/// offset order, never the newest file; records the loss in the topic's history first.
#[allow(clippy::too_many_arguments)]
pub async fn expire_partition(
    lake: &Lake,
    topic: &str,
    (generation, lake_topic): (u32, &str),
    partition: i32,
    below: i64,
    cutoff: DateTime<Utc>,
    time_field: &str,
    history: &mut RawHistory,
) -> Result<Expired, BatchError> {
    let files = lake.ranges(Area::Raw, lake_topic, partition).await?;
    let candidates: Vec<InputFile> = (files.iter().take(files.len().saturating_sub(1)))
        .take_while(|(range, _)| range.end < below)
        .map(|(range, path)| InputFile {
            generation,
            partition,
            range: *range,
            path: path.clone(),
        })
        .collect();
    if candidates.is_empty() {
        return Ok(Expired::default());
    }
    let ctx = SessionContext::new();
    let cache = ctx.runtime_env().cache_manager.get_file_metadata_cache();
    let refs: Vec<&InputFile> = candidates.iter().collect();
    let Some(spans) = slices::read_spans(lake.store(), &cache, &refs, time_field).await? else {
        tracing::warn!(
            partition,
            "raw files without time statistics: retention keeps them"
        );
        return Ok(Expired::default());
    };
    let cutoff_ms = cutoff.timestamp_millis();
    let expired: Vec<(&InputFile, u64, Option<i64>)> = (candidates.iter().zip(&spans))
        .map(|(file, spans)| (file, spans.rows(), spans.max()))
        .take_while(|(_, _, newest)| newest.is_none_or(|newest| newest < cutoff_ms))
        .collect();
    let Some(&(last, _, _)) = expired.last() else {
        return Ok(Expired::default());
    };
    let newest = (expired.iter().filter_map(|(_, _, newest)| *newest))
        .max()
        .and_then(DateTime::from_timestamp_millis);
    history.record(lake_topic, partition, last.range.next(), newest);
    lake.write_raw_history(topic, history).await?;
    let mut done = Expired::default();
    for (file, rows, _) in &expired {
        lake.delete_partition_file(Area::Raw, lake_topic, partition, file.range)
            .await?;
        done.files += 1;
        done.rows += rows;
    }
    Ok(done)
}

/// What one run's upkeep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upkeep {
    pub compacted: Compacted,
    pub expired: Expired,
}

/// The upkeep of `topic`'s current generation: compaction, then retention when `retention` is
/// set. Call only while holding the run lock.
pub async fn upkeep(
    lake: &Lake,
    topic: &str,
    views: &[ViewDef],
    max_file_rows: usize,
    retention: Option<Duration>,
    time_field: &str,
) -> Result<Upkeep, BatchError> {
    let generations = lake.generations(topic).await?;
    let live = Coverage::of(lake, views, generations.current, true).await?;
    let lake_topic = generations.current_topic(topic);
    let mut done = Upkeep::default();
    for (&partition, &below) in &live.below.0 {
        done.compacted +=
            compact_partition(lake, &lake_topic, partition, below, max_file_rows).await?;
    }
    for closed in &generations.closed {
        let closed_topic = generation_topic(topic, closed.generation);
        for partition in lake.partitions(Area::Raw, &closed_topic).await? {
            done.compacted +=
                compact_partition(lake, &closed_topic, partition, i64::MAX, max_file_rows).await?;
        }
    }
    if let Some(retention) = retention {
        let coverage = Coverage::of(lake, views, generations.current, false).await?;
        let cutoff = Utc::now() - retention;
        let mut history = lake.raw_history(topic).await?;
        for (&partition, &below) in &coverage.below.0 {
            let expired = expire_partition(
                lake,
                topic,
                (coverage.generation, &lake_topic),
                partition,
                below,
                cutoff,
                time_field,
                &mut history,
            )
            .await?;
            done.expired.files += expired.files;
            done.expired.rows += expired.rows;
        }
    }
    Ok(done)
}

/// Views the configuration no longer has (a removed view answers 404 at once, ARCHITECTURE.md
/// §11): each run over every view counts one more on their `_removed`, and past `keep` such runs
/// (`[batch] keep_versions`) their versions are deleted. A view configured again before that keeps
/// them. Returns the views deleted.
pub async fn collect_removed(
    lake: &Lake,
    views: &[ViewDef],
    keep: usize,
) -> Result<Vec<String>, BatchError> {
    let mut deleted = Vec::new();
    for name in lake.view_names().await? {
        if views.iter().any(|v| v.name == name) {
            continue;
        }
        let mut removed = (lake.removed(&name).await?).unwrap_or(Removed {
            since: Utc::now(),
            runs: 0,
        });
        removed.runs += 1;
        if removed.runs as usize > keep {
            lake.forget_view(&name).await?;
            tracing::info!(view = name, since = %removed.since, runs = keep, "the view left the configuration that many runs ago: its versions are deleted");
            deleted.push(name);
        } else {
            lake.put_removed(&name, &removed).await?;
        }
    }
    for view in views {
        lake.clear_removed(&view.name).await?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: i64, end: i64) -> OffsetRange {
        OffsetRange { start, end }
    }

    #[test]
    fn contiguous_small_files_below_the_coverage_join_up_to_the_file_size() {
        let files = [
            r(0, 9),
            r(10, 19),
            r(20, 29),
            r(30, 39),
            r(40, 49),
            r(50, 59),
        ];
        // Up to 30 offsets a file; the last file is not covered yet.
        assert_eq!(
            compaction_groups(&files, 50, 30),
            vec![
                vec![r(0, 9), r(10, 19), r(20, 29)],
                vec![r(30, 39), r(40, 49)]
            ]
        );
        // A gap (a hole) or a big file splits the runs; a lone small file is left alone.
        let files = [r(0, 9), r(10, 19), r(25, 34), r(35, 99), r(100, 109)];
        assert_eq!(
            compaction_groups(&files, 1000, 100),
            vec![vec![r(0, 9), r(10, 19)]]
        );
        assert!(compaction_groups(&files, 0, 100).is_empty());
    }
}
