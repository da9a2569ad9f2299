//! What a recompute reads and how DataFusion computes a view from it.
//!
//! **Boundary** (ARCHITECTURE.md §5): for each partition, `W[p]` is the archiver's contiguous progress
//! (one past the end of the partition's last raw file) aligned down to a multiple of the epoch size.
//! The archiver only ever publishes whole files, so every offset below `W[p]` that the broker still
//! had is in the lake; the recompute reads the files that start below `W[p]` and keeps rows with
//! `_offset < W[p]` (the last file may straddle it).
//!
//! **Generations**: files of closed generations (see [`tributary_schemas::lake::generations`])
//! are read whole; the boundary applies to the current generation only.
//!
//! **Plan**: a Parquet scan of those files, the boundary and the view's filter, then
//! `GROUP BY time_bucket, dimensions` with the state functions of [`StateUdaf`], sorted by time. The
//! time bucket floors like [`Granularity::bucket_start`], also before 1970.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result as DfResult, plan_err};
use datafusion::logical_expr::{Expr, ExprFunctionExt, SortExpr, cast, ident, lit};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use object_store::path::Path;
use tributary_schemas::config::{MetricFunction, TIME_COLUMN, ViewDef};
use tributary_schemas::duration::Granularity;
use tributary_schemas::event::raw_rows::{
    KAFKA_TS_COLUMN, OFFSET_COLUMN, PARTITION_COLUMN, raw_schema,
};
use tributary_schemas::event::{EventSchema, timestamp_type};
use tributary_schemas::functions::{
    self,
    state::{Phase, StateUdaf},
};
use tributary_schemas::lake::generations::generation_topic;
use tributary_schemas::lake::{Area, Boundary, LAKE_URL, Lake, LakeError, OffsetRange};
use tributary_schemas::seam::aligned_boundary;

/// One raw file a recompute reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// The offset generation the file belongs to.
    pub generation: u32,
    pub partition: i32,
    pub range: OffsetRange,
    pub path: Path,
}

/// What one recompute covers: the boundary and the raw files below it in the current generation,
/// and every file of the closed generations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    pub generation: u32,
    /// Per partition, the first offset read (empty: from the start). An incremental run reads
    /// `[from[p], boundary[p])` only (see [`Input::above`]).
    pub from: Boundary,
    pub boundary: Boundary,
    pub files: Vec<InputFile>,
    pub closed_generations: Vec<u32>,
    /// Files of closed generations: read whole, no boundary.
    pub closed_files: Vec<InputFile>,
}

impl Input {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.closed_files.is_empty()
    }

    /// The part of this input a version with boundary `from` and closed generations `held`
    /// lacks, for an incremental run over it: the current generation's files that hold offsets in
    /// `[from[p], W[p])`, and the files of closed generations it does not hold (a backfill since).
    pub fn above(&self, from: &Boundary, held: &[u32]) -> Input {
        Input {
            generation: self.generation,
            from: from.clone(),
            boundary: self.boundary.clone(),
            files: (self.files.iter())
                .filter(|f| f.range.next() > from.get(f.partition))
                .cloned()
                .collect(),
            closed_generations: self.closed_generations.clone(),
            closed_files: (self.closed_files.iter())
                .filter(|f| !held.contains(&f.generation))
                .cloned()
                .collect(),
        }
    }
}

/// Chooses the boundary from the archiver's progress and lists the files below it, plus every
/// file of the closed generations.
pub async fn select_input(lake: &Lake, topic: &str, epoch_size: u64) -> Result<Input, LakeError> {
    let generations = lake.generations(topic).await?;
    let mut input = Input {
        generation: generations.current,
        ..Input::default()
    };
    for closed in &generations.closed {
        let lake_topic = generation_topic(topic, closed.generation);
        input.closed_generations.push(closed.generation);
        for partition in lake.partitions(Area::Raw, &lake_topic).await? {
            let ranges = lake.ranges(Area::Raw, &lake_topic, partition).await?;
            input
                .closed_files
                .extend(ranges.into_iter().map(|(range, path)| InputFile {
                    generation: closed.generation,
                    partition,
                    range,
                    path,
                }));
        }
    }
    let lake_topic = generations.current_topic(topic);
    for partition in lake.partitions(Area::Raw, &lake_topic).await? {
        let ranges = lake.ranges(Area::Raw, &lake_topic, partition).await?;
        let progress = ranges.last().map_or(0, |(range, _)| range.next());
        let w = aligned_boundary(progress, epoch_size);
        if w == 0 {
            continue;
        }
        input.boundary.0.insert(partition, w);
        input
            .files
            .extend(ranges.into_iter().filter(|(range, _)| range.start < w).map(
                |(range, path)| InputFile {
                    generation: generations.current,
                    partition,
                    range,
                    path,
                },
            ));
    }
    Ok(input)
}

/// `(_partition = p0 AND _offset >= F0 AND _offset < W0) OR …`: the rows a run reads, from
/// `from[p]` (0 when absent) below the boundary.
fn boundary_predicate(from: &Boundary, boundary: &Boundary) -> Expr {
    boundary
        .0
        .iter()
        .map(|(&partition, &w)| {
            let below = ident(PARTITION_COLUMN)
                .eq(lit(partition))
                .and(ident(OFFSET_COLUMN).lt(lit(w)));
            match from.get(partition) {
                0 => below,
                f => below.and(ident(OFFSET_COLUMN).gt_eq(lit(f))),
            }
        })
        .reduce(Expr::or)
        .unwrap_or(lit(false))
}

/// The bucket start of the event time, floored like [`Granularity::bucket_start`] (also before
/// 1970), as the `time` column.
fn time_bucket(time_field: &str, granularity: Granularity) -> Expr {
    functions::time_bucket(ident(time_field), granularity).alias(TIME_COLUMN)
}

/// The master dataset's schema as the recompute scans it: strings as `Utf8View`, which the Parquet
/// reader fills with views into each page's dictionary instead of copying every value, and which
/// grouping compares 16 bytes at a time (strings of up to 12 bytes are inline in the view).
fn scan_schema(events: &EventSchema) -> SchemaRef {
    let fields: Vec<Field> = raw_schema(events)
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Utf8 => field.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// A range of event time in epoch milliseconds, `from <= time < to`, open where `None`: the rows
/// one slice of a recompute aggregates (see [`super::slices`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl TimeRange {
    /// `self` cut at `bounds` (ascending; those outside `self` are ignored), in time order.
    pub fn split(self, bounds: &[i64]) -> Vec<TimeRange> {
        let inside = bounds
            .iter()
            .copied()
            .filter(|&b| self.from.is_none_or(|from| b > from) && self.to.is_none_or(|to| b < to));
        let mut ranges = Vec::new();
        let mut from = self.from;
        for bound in inside {
            ranges.push(TimeRange {
                from,
                to: Some(bound),
            });
            from = Some(bound);
        }
        ranges.push(TimeRange { from, to: self.to });
        ranges
    }

    /// The predicate on the time field, `None` for the whole time line.
    fn predicate(self, time_field: &str) -> Option<Expr> {
        // A literal of the field's type (the planner folds the cast), which the scan prunes with.
        let time = |ms: i64| cast(lit(ms), timestamp_type());
        let from = self.from.map(|ms| ident(time_field).gt_eq(time(ms)));
        let to = self.to.map(|ms| ident(time_field).lt(time(ms)));
        from.into_iter().chain(to).reduce(Expr::and)
    }
}

/// The DataFrame computing `view`'s states over the rows of `input` (which must hold at least one
/// file) in `range`. Closed generations' files are read whole and unioned with the current
/// generation's rows below the boundary.
pub async fn view_frame(
    ctx: &SessionContext,
    events: &EventSchema,
    view: &ViewDef,
    input: &Input,
    range: TimeRange,
) -> DfResult<DataFrame> {
    let schema = scan_schema(events);
    let paths = |files: &[InputFile]| -> Vec<String> {
        files
            .iter()
            .map(|f| format!("{LAKE_URL}{}", f.path))
            .collect()
    };
    let read =
        |files: Vec<String>| ctx.read_parquet(files, ParquetReadOptions::default().schema(&schema));
    let current = match input.files.is_empty() {
        true => None,
        false => Some(
            read(paths(&input.files))
                .await?
                .filter(boundary_predicate(&input.from, &input.boundary))?,
        ),
    };
    let closed = match input.closed_files.is_empty() {
        true => None,
        false => Some(read(paths(&input.closed_files)).await?),
    };
    let mut frame = match (current, closed) {
        (Some(current), Some(closed)) => current.union(closed)?,
        (Some(frame), None) | (None, Some(frame)) => frame,
        (None, None) => return plan_err!("a recompute needs at least one raw file"),
    };
    if let Some(range) = range.predicate(&events.time_field) {
        frame = frame.filter(range)?;
    }
    if let Some(filter) = &view.filter {
        frame = frame.filter(filter.expr.clone())?;
    }
    let mut group_by = vec![time_bucket(&events.time_field, view.granularity)];
    group_by.extend(view.dimensions.iter().map(|d| ident(&d.name)));
    let aggregates = view
        .metrics
        .iter()
        .map(|metric| {
            let argument = metric
                .field
                .as_ref()
                .map_or(lit(true), |field| ident(&field.name));
            let state = StateUdaf::udaf(metric.state_kind(), Phase::Update).call(vec![argument]);
            match metric.function {
                MetricFunction::Late { after_ms } => state
                    .filter(late_predicate(&events.time_field, after_ms))
                    .build(),
                _ => Ok(state),
            }
            .map(|state| state.alias(&metric.name))
        })
        .collect::<DfResult<Vec<_>>>()?;
    let state_schema = view.state_schema();
    // Cast to the stored schema (scans may produce view types such as Utf8View).
    let columns = state_schema
        .fields()
        .iter()
        .map(|field| cast(ident(field.name()), field.data_type().clone()).alias(field.name()))
        .collect::<Vec<_>>();
    // By time only: what time-range pruning needs. Adding the dimensions made the sort a
    // lexicographic one and cost ~10% of a recompute for nothing the readers use.
    let order: Vec<SortExpr> = vec![ident(TIME_COLUMN).sort(true, true)];
    frame
        .aggregate(group_by, aggregates)?
        .select(columns)?
        .sort(order)
}

/// The DataFrame merging `view`'s state rows in `parts` (a version's part files, where a key may
/// repeat across delta parts) into one row per key in `range`, sorted by time: how an extended
/// version's deltas are folded into fresh base parts without the raw files.
pub async fn merge_frame(
    ctx: &SessionContext,
    view: &ViewDef,
    parts: &[String],
    range: TimeRange,
) -> DfResult<DataFrame> {
    let schema = view.state_schema();
    let urls: Vec<String> = parts.iter().map(|p| format!("{LAKE_URL}{p}")).collect();
    let mut frame = ctx
        .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
        .await?;
    if let Some(range) = range.predicate(TIME_COLUMN) {
        frame = frame.filter(range)?;
    }
    let mut group_by = vec![ident(TIME_COLUMN)];
    group_by.extend(view.dimensions.iter().map(|d| ident(&d.name)));
    let merges = (view.metrics.iter())
        .map(|m| {
            StateUdaf::udaf(m.state_kind(), Phase::Merge)
                .call(vec![ident(&m.name)])
                .alias(&m.name)
        })
        .collect();
    let columns = (schema.fields().iter())
        .map(|field| cast(ident(field.name()), field.data_type().clone()).alias(field.name()))
        .collect::<Vec<_>>();
    frame
        .aggregate(group_by, merges)?
        .select(columns)?
        .sort(vec![ident(TIME_COLUMN).sort(true, true)])
}

/// `_kafka_ts - late_after > time` on the raw rows, in `Int64` milliseconds (wrapping, as
/// [`MetricDef::counts`](tributary_schemas::config::MetricDef::counts) in the speed layer); `NULL`,
/// so not late, for a row without a Kafka timestamp.
fn late_predicate(time_field: &str, after_ms: i64) -> Expr {
    let ms = |column: &str| cast(ident(column), DataType::Int64);
    (ms(KAFKA_TS_COLUMN) - lit(after_ms)).gt(ms(time_field))
}

/// A stable identity for the planning inputs (used in tests and logs).
pub fn describe(input: &Input) -> String {
    let partitions: Vec<String> = input
        .boundary
        .0
        .iter()
        .map(|(p, w)| format!("{p}<{w}"))
        .collect();
    let closed = match input.closed_files.len() {
        0 => String::new(),
        n => format!(" + {n} of closed generations"),
    };
    format!(
        "{} files{closed}, W = {{{}}}",
        input.files.len(),
        partitions.join(", ")
    )
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn a_split_range_tiles_it_in_order_at_the_bounds_inside_it() {
        let range = |from, to| TimeRange { from, to };
        assert_eq!(
            TimeRange::default().split(&[10, 20]),
            vec![
                range(None, Some(10)),
                range(Some(10), Some(20)),
                range(Some(20), None)
            ]
        );
        assert_eq!(
            range(Some(10), None).split(&[5, 10, 30]),
            vec![range(Some(10), Some(30)), range(Some(30), None)]
        );
        assert_eq!(
            range(Some(10), Some(20)).split(&[]),
            vec![range(Some(10), Some(20))]
        );
    }
}
