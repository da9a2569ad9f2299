//! Time slices: a recompute aggregates its input one range of event time at a time.
//!
//! A view's groups include the time bucket, so a group never spans two ranges aligned to bucket
//! boundaries: slices aggregate independently, and their outputs, each sorted by time, concatenate
//! into the whole view in time order. A slice holds only its own groups: `pageviews` over a
//! 10M-event day has 1.9M groups (a ~1 GiB hash table, states and sorted output, which the shipped
//! 1 GiB pool spilled); each of its 11 slices has ~175k, which stay in memory and in cache.
//!
//! A slice reads only the pages whose time statistics overlap it (DataFusion prunes with the
//! Parquet page index). The archiver writes in offset order, which follows event time, so pages
//! are narrow in time and the slices together read each page about once. Late events widen a
//! page's range, and a page read by two slices is decoded twice: [`plan`] predicts the rows every
//! slice reads from the same statistics DataFusion prunes with, and takes fewer slices (down to
//! one, the whole input at once) when they would read more than [`MAX_READ_FACTOR`] times the input.
//!
//! The first slice is open below and the last open above, so rows outside the statistics' range
//! (none, if the statistics are right) are still counted, once.

use std::sync::Arc;

use datafusion::common::Result as DfResult;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;

use super::plan::InputFile;

/// Most rows all slices together may read, as a multiple of the input's rows. Reading is ~10-15%
/// of a recompute, so half the input read twice costs less than slicing saves, in time as in memory.
pub const MAX_READ_FACTOR: f64 = 1.5;

/// Rows of one page of the time column (a row group where a file has no page index) and the range
/// of event times in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min: i64,
    pub max: i64,
    pub rows: u64,
}

/// One input file's spans, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpans {
    pub spans: Vec<Span>,
}

impl FileSpans {
    pub fn rows(&self) -> u64 {
        self.spans.iter().map(|s| s.rows).sum()
    }

    /// The latest event time in the file, `None` for an empty file.
    pub fn max(&self) -> Option<i64> {
        self.spans.iter().map(|s| s.max).max()
    }
}

/// Reads the time statistics of `files` (footers and page indexes, a few KiB each) through the
/// session's metadata cache, where the scans of the slices find them again. `None` when a file has
/// no statistics for `time_column`: the recompute then runs as one slice.
pub async fn read_spans(
    store: &Arc<dyn ObjectStore>,
    cache: &Arc<FileMetadataCache>,
    files: &[&InputFile],
    time_column: &str,
) -> DfResult<Option<Vec<FileSpans>>> {
    // Owned arguments: the futures must be `Send` for any lifetime inside the spawned run.
    let reads: Vec<_> = files
        .iter()
        .map(|file| {
            read_file_spans(
                Arc::clone(store),
                Arc::clone(cache),
                file.path.clone(),
                time_column.to_owned(),
            )
        })
        .collect();
    let all: Vec<Option<FileSpans>> = futures::stream::iter(reads)
        .buffered(8)
        .try_collect()
        .await?;
    Ok(all.into_iter().collect())
}

async fn read_file_spans(
    store: Arc<dyn ObjectStore>,
    cache: Arc<FileMetadataCache>,
    path: Path,
    time_column: String,
) -> DfResult<Option<FileSpans>> {
    let object = store.head(&path).await?;
    let metadata = DFParquetMetadata::new(store.as_ref(), &object)
        .with_file_metadata_cache(Some(cache))
        .with_page_index_policy(Some(PageIndexPolicy::Optional))
        .fetch_metadata()
        .await?;
    Ok(file_spans(&metadata, &time_column))
}

/// The spans of one file: per page from the page index, else per row group.
fn file_spans(metadata: &ParquetMetaData, time_column: &str) -> Option<FileSpans> {
    let column = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [time_column])?;
    let mut spans = Vec::new();
    for (index, group) in metadata.row_groups().iter().enumerate() {
        let pages = metadata
            .column_index()
            .zip(metadata.offset_index())
            .and_then(|(columns, offsets)| {
                let ColumnIndexMetaData::INT64(stats) = columns.get(index)?.get(column)? else {
                    return None;
                };
                let locations = offsets.get(index)?.get(column)?.page_locations();
                let mut pages = Vec::with_capacity(locations.len());
                for (page, location) in locations.iter().enumerate() {
                    let end = locations
                        .get(page + 1)
                        .map_or(group.num_rows(), |next| next.first_row_index);
                    pages.push(Span {
                        min: *stats.min_value(page)?,
                        max: *stats.max_value(page)?,
                        rows: u64::try_from(end - location.first_row_index).ok()?,
                    });
                }
                Some(pages)
            });
        match pages {
            Some(pages) => spans.extend(pages),
            None => {
                let Some(Statistics::Int64(stats)) = group.column(column).statistics() else {
                    return None;
                };
                spans.push(Span {
                    min: *stats.min_opt()?,
                    max: *stats.max_opt()?,
                    rows: u64::try_from(group.num_rows()).ok()?,
                });
            }
        }
    }
    Some(FileSpans { spans })
}

/// The rows and groups a slice aims at (`[batch]` settings, see [`crate::recompute::BatchSettings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceTarget {
    pub rows: usize,
    pub groups: usize,
}

impl SliceTarget {
    /// A million rows, 160k groups: `pageviews` over a 10M-event day in 10 slices of ~80 MiB of
    /// hash table, states and sorted output each, and the fastest of 6, 12 and 24 slices measured.
    pub const DEFAULT: Self = Self {
        rows: 1_000_000,
        groups: 160_000,
    };

    /// Bytes of pool a slice's group takes, generously (`pageviews`: ~500).
    const GROUP_BYTES: usize = 1024;

    /// [`SliceTarget::DEFAULT`], with fewer groups and rows where `threads` slices at once would
    /// not fit a pool of `memory_limit_bytes` (a view of 2 rows a group needs no more rows).
    pub fn for_pool(memory_limit_bytes: usize, threads: usize) -> Self {
        let groups = (memory_limit_bytes / threads.max(1) / Self::GROUP_BYTES)
            .clamp(1, Self::DEFAULT.groups);
        let rows = Self::DEFAULT.rows * groups / Self::DEFAULT.groups;
        Self {
            rows: rows.max(1),
            groups,
        }
    }
}

/// How many slices a recompute aims at: one per `target.rows` input rows, but no more than one per
/// `target.groups` groups when the live version tells how many the view has (`known_groups`: a
/// view of few groups, such as `traffic`'s hours by device, gains nothing from slicing and pays
/// its re-reads).
pub fn wanted_slices(rows: u64, target: SliceTarget, known_groups: Option<u64>) -> usize {
    let by_rows = rows.div_ceil(target.rows.max(1) as u64);
    let by_groups = known_groups.map_or(u64::MAX, |groups| {
        groups.div_ceil(target.groups.max(1) as u64)
    });
    usize::try_from(by_rows.min(by_groups).max(1)).unwrap_or(usize::MAX)
}

/// The slices' inner boundaries, ascending multiples of `granularity_ms`: slice `i` holds the rows
/// with `bounds[i - 1] <= time < bounds[i]` (open below for the first, above for the last). Aims
/// at `wanted` slices of equal rows (assuming rows spread evenly over each span's range) and takes
/// fewer when all of them would read more than [`MAX_READ_FACTOR`] times the rows. Empty: one
/// slice, the whole input.
pub fn plan(spans: &[Span], granularity_ms: i64, wanted: usize) -> Vec<i64> {
    let total: u64 = spans.iter().map(|s| s.rows).sum();
    if total == 0 || granularity_ms <= 0 {
        return Vec::new();
    }
    let curve = RowCurve::new(spans);
    // A quarter fewer slices a step: a few steps even for thousands of wanted slices.
    let mut slices = wanted;
    while slices >= 2 {
        let bounds = equal_row_bounds(&curve, granularity_ms, slices);
        if !bounds.is_empty() && read_rows(spans, &bounds) as f64 <= total as f64 * MAX_READ_FACTOR
        {
            return bounds;
        }
        slices = (slices * 3 / 4).min(slices - 1);
    }
    Vec::new()
}

/// The bounds after `bound` once the first slice (the rows below `bound`) made `groups` groups:
/// planned for the groups the rest should have at the first slice's groups per row. A first run
/// has no live version to say how many groups a view makes; this keeps a view of few groups to
/// two slices.
pub fn replan(
    spans: &[Span],
    granularity_ms: i64,
    target: SliceTarget,
    bound: i64,
    groups: u64,
) -> Vec<i64> {
    let first_rows = rows_below(spans, bound);
    // The spans the rest reads; one that straddles `bound` is read again whole.
    let rest: Vec<Span> = spans
        .iter()
        .filter(|s| s.max >= bound)
        .map(|s| Span {
            min: s.min.max(bound),
            ..*s
        })
        .collect();
    let rest_rows: u64 = rest.iter().map(|s| s.rows).sum();
    let rest_groups = match first_rows > 0.0 {
        true => (groups as f64 * rest_rows as f64 / first_rows).ceil() as u64,
        false => u64::MAX,
    };
    let wanted = wanted_slices(rest_rows, target, Some(rest_groups));
    plan(&rest, granularity_ms, wanted)
}

/// Boundaries near the `1/slices`-quantiles of the rows, aligned down to bucket starts, without
/// repeats or empty ends.
fn equal_row_bounds(curve: &RowCurve, granularity_ms: i64, slices: usize) -> Vec<i64> {
    let targets: Vec<f64> = (1..slices)
        .map(|i| curve.total * i as f64 / slices as f64)
        .collect();
    let mut bounds: Vec<i64> = curve
        .times_at(&targets)
        .into_iter()
        .filter_map(|time| time.div_euclid(granularity_ms).checked_mul(granularity_ms))
        .filter(|&bound| bound > curve.lowest && bound <= curve.highest)
        .collect();
    bounds.dedup();
    bounds
}

/// The estimated rows below each time, with each span's rows spread evenly over its range: a
/// piecewise-constant density whose changes are sorted once.
struct RowCurve {
    /// `(time, change of rows per millisecond)`, ascending by time.
    changes: Vec<(i64, f64)>,
    total: f64,
    lowest: i64,
    highest: i64,
}

impl RowCurve {
    fn new(spans: &[Span]) -> Self {
        let mut changes: Vec<(i64, f64)> = spans
            .iter()
            .flat_map(|s| {
                let density = s.rows as f64 / width(s.min, s.max.saturating_add(1));
                [(s.min, density), (s.max.saturating_add(1), -density)]
            })
            .collect();
        changes.sort_by_key(|&(time, _)| time);
        Self {
            changes,
            total: spans.iter().map(|s| s.rows as f64).sum(),
            lowest: spans.iter().map(|s| s.min).min().unwrap_or(0),
            highest: spans.iter().map(|s| s.max).max().unwrap_or(0),
        }
    }

    /// For each of the ascending `targets`, the first time below which about that many rows lie.
    fn times_at(&self, targets: &[f64]) -> Vec<i64> {
        let mut times = Vec::with_capacity(targets.len());
        let mut pending = targets.iter().copied().peekable();
        let (mut density, mut below) = (0.0f64, 0.0f64);
        let mut at = self.lowest;
        for &(time, change) in &self.changes {
            let step = density.max(0.0);
            while let Some(target) = pending.next_if(|&t| below + step * width(at, time) >= t) {
                let within = match step > 0.0 {
                    true => ((target - below) / step).ceil() as i64,
                    false => 0,
                };
                times.push(at.saturating_add(within.max(0)).min(time));
            }
            below += step * width(at, time);
            density += change;
            at = time;
        }
        // Rounding may leave the last targets a hair above the total: the end of the data.
        times.extend(pending.map(|_| self.highest));
        times
    }
}

/// Milliseconds from `from` to `to`, in floating point: no overflow at the ends of the time line.
fn width(from: i64, to: i64) -> f64 {
    to as f64 - from as f64
}

/// The estimated rows with a time below `time`.
fn rows_below(spans: &[Span], time: i64) -> f64 {
    spans
        .iter()
        .map(|s| {
            if time <= s.min {
                0.0
            } else if time > s.max {
                s.rows as f64
            } else {
                s.rows as f64 * width(s.min, time) / width(s.min, s.max.saturating_add(1))
            }
        })
        .sum()
}

/// The rows the slices of `bounds` read together: each slice reads every span its range overlaps.
pub fn read_rows(spans: &[Span], bounds: &[i64]) -> u64 {
    spans
        .iter()
        .map(|span| {
            // Slices whose range meets [min, max]: the first one holding `min` to the one holding `max`.
            let first = bounds.partition_point(|&b| b <= span.min);
            let last = bounds.partition_point(|&b| b <= span.max);
            span.rows * (last - first + 1) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;

    /// A day of `pages` pages of equal rows, each covering its share of the day in time order, the
    /// way the archiver writes a partition.
    fn ordered_day(pages: i64, rows: u64) -> Vec<Span> {
        let width = 24 * HOUR / pages;
        (0..pages)
            .map(|p| Span {
                min: p * width,
                max: (p + 1) * width - 1,
                rows,
            })
            .collect()
    }

    #[test]
    fn ordered_input_splits_into_the_wanted_slices_of_equal_rows_on_bucket_starts() {
        let spans = ordered_day(500, 20_000);
        let bounds = plan(&spans, MINUTE, 12);
        assert_eq!(bounds.len(), 11);
        for (i, bound) in bounds.iter().enumerate() {
            assert_eq!(bound % MINUTE, 0);
            // Two hours a slice, to within one page of time (the quantile may fall inside a page).
            assert!(
                (bound - (i as i64 + 1) * 2 * HOUR).abs() <= 24 * HOUR / 500,
                "{bounds:?}"
            );
        }
        let read = read_rows(&spans, &bounds);
        assert!(read <= 500 * 20_000 + 11 * 20_000, "{read}");
    }

    #[test]
    fn bounds_never_split_a_bucket_nor_repeat() {
        // One day, but hour buckets and 100 wanted slices: at most 23 inner bounds, all on hours.
        let spans = ordered_day(2_000, 5_000);
        let bounds = plan(&spans, HOUR, 100);
        assert!(!bounds.is_empty() && bounds.len() <= 23, "{bounds:?}");
        assert!(bounds.iter().all(|b| b % HOUR == 0));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn late_events_in_every_page_mean_one_slice() {
        // Each page holds an event from the start of the day: every slice would read every page
        // from its start onwards.
        let spans: Vec<Span> = ordered_day(500, 20_000)
            .into_iter()
            .map(|s| Span { min: 0, ..s })
            .collect();
        assert_eq!(plan(&spans, MINUTE, 12), Vec::<i64>::new());
    }

    #[test]
    fn some_wide_pages_cost_fewer_slices_not_none() {
        // A tenth of the pages span the whole day: twelve slices would read them twelve times.
        let spans: Vec<Span> = ordered_day(500, 20_000)
            .into_iter()
            .enumerate()
            .map(|(i, s)| match i % 10 {
                0 => Span {
                    min: 0,
                    max: 24 * HOUR - 1,
                    ..s
                },
                _ => s,
            })
            .collect();
        let bounds = plan(&spans, MINUTE, 12);
        let total: u64 = spans.iter().map(|s| s.rows).sum();
        assert!(!bounds.is_empty() && bounds.len() < 11, "{bounds:?}");
        assert!(read_rows(&spans, &bounds) as f64 <= total as f64 * MAX_READ_FACTOR);
    }

    #[test]
    fn a_single_bucket_or_one_wanted_slice_is_not_split() {
        let spans = vec![Span {
            min: 5,
            max: 50_000,
            rows: 1_000_000,
        }];
        assert_eq!(plan(&spans, HOUR, 12), Vec::<i64>::new());
        assert_eq!(
            plan(&ordered_day(500, 20_000), MINUTE, 1),
            Vec::<i64>::new()
        );
        assert_eq!(plan(&[], MINUTE, 12), Vec::<i64>::new());
    }

    #[test]
    fn read_rows_counts_a_span_once_per_slice_it_meets() {
        let spans = [
            Span {
                min: 0,
                max: 9,
                rows: 10,
            },
            Span {
                min: 5,
                max: 25,
                rows: 7,
            },
        ];
        // Slices (-inf, 10), [10, 20), [20, +inf): the first span meets one, the second all three.
        assert_eq!(read_rows(&spans, &[10, 20]), 10 + 3 * 7);
        assert_eq!(read_rows(&spans, &[]), 17);
    }

    const TARGET: SliceTarget = SliceTarget::DEFAULT;

    #[test]
    fn after_a_first_slice_of_few_groups_the_rest_is_one_slice() {
        let spans = ordered_day(500, 20_000);
        let first = plan(&spans, MINUTE, 10)[0];
        // `traffic`: 300 groups a day, ~30 in the first tenth.
        assert_eq!(replan(&spans, MINUTE, TARGET, first, 30), Vec::<i64>::new());
        // `pageviews`: 1.9M groups a day, ~190k in the first tenth: the remaining nine tenths
        // in ~9 slices of a million rows (the groups alone would ask for 11).
        let rest = replan(&spans, MINUTE, TARGET, first, 190_000);
        assert!((7..=9).contains(&rest.len()), "{rest:?}");
        assert!(rest.iter().all(|&b| b > first && b % MINUTE == 0));
    }

    #[test]
    fn the_curve_finds_the_times_rows_below_reaches() {
        let spans: Vec<Span> = ordered_day(500, 20_000)
            .into_iter()
            .enumerate()
            .map(|(i, s)| match i % 7 {
                0 => Span { min: 0, ..s },
                _ => s,
            })
            .collect();
        let curve = RowCurve::new(&spans);
        let targets: Vec<f64> = (1..40).map(|i| curve.total * i as f64 / 40.0).collect();
        for (target, time) in targets.iter().zip(curve.times_at(&targets)) {
            // The first such time: the rows below it reach the target, below the one before not.
            assert!(
                rows_below(&spans, time) >= target * (1.0 - 1e-9),
                "{target} at {time}"
            );
            assert!(rows_below(&spans, time - 1) < *target, "{target} at {time}");
        }
    }

    #[test]
    fn a_year_of_pages_splits_evenly_into_thousands_of_slices() {
        // 100k pages of 5 minutes (2B rows), 2000 slices of 50 pages (one sweep of the sorted
        // spans places every bound; a bisection per bound took minutes here).
        let spans: Vec<Span> = (0..100_000i64)
            .map(|p| Span {
                min: p * 5 * MINUTE,
                max: (p + 1) * 5 * MINUTE - 1,
                rows: 20_000,
            })
            .collect();
        let bounds = plan(&spans, MINUTE, 2000);
        assert_eq!(bounds.len(), 1999);
        for (i, bound) in bounds.iter().enumerate() {
            assert_eq!(*bound, (i as i64 + 1) * 50 * 5 * MINUTE, "bound {i}");
        }
        assert_eq!(read_rows(&spans, &bounds), 2_000_000_000);
    }

    #[test]
    fn slices_shrink_to_fit_the_pool_of_the_slices_at_once() {
        assert_eq!(SliceTarget::for_pool(1 << 30, 1), SliceTarget::DEFAULT);
        assert_eq!(SliceTarget::for_pool(1 << 30, 4), SliceTarget::DEFAULT);
        let small = SliceTarget::for_pool(64 << 20, 2);
        assert_eq!(small.groups, 32 * 1024);
        assert_eq!(small.rows, 1_000_000 * 32 * 1024 / 160_000);
        assert_eq!(
            SliceTarget::for_pool(0, 0),
            SliceTarget { rows: 6, groups: 1 }
        );
    }

    #[test]
    fn spans_at_the_ends_of_the_time_line_do_not_overflow() {
        let spans = [
            Span {
                min: i64::MIN,
                max: i64::MAX,
                rows: 10,
            },
            Span {
                min: 0,
                max: 999,
                rows: 1_000_000,
            },
        ];
        let bounds = plan(&spans, 10, 4);
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        // Quantiles far out in the wide span, without the read guard.
        let fine = equal_row_bounds(&RowCurve::new(&spans), 10, 1_000_000);
        // Most fall into the narrow span's 100 buckets, once each.
        assert!((100..200).contains(&fine.len()), "{}", fine.len());
        assert!(fine.windows(2).all(|w| w[0] < w[1] && w[1] % 10 == 0));
        // The wide span is read by every slice: few slices, or none.
        assert!(read_rows(&spans, &bounds) as f64 <= 1_000_010.0 * MAX_READ_FACTOR);
    }

    #[test]
    fn the_wanted_slices_follow_rows_capped_by_known_groups() {
        assert_eq!(wanted_slices(10_000_000, TARGET, None), 10);
        assert_eq!(wanted_slices(10_000_000, TARGET, Some(1_929_296)), 10);
        assert_eq!(wanted_slices(30_000_000, TARGET, Some(1_929_296)), 13);
        assert_eq!(wanted_slices(10_000_000, TARGET, Some(300)), 1);
        assert_eq!(wanted_slices(0, TARGET, None), 1);
        let zero = SliceTarget { rows: 0, groups: 0 };
        assert_eq!(wanted_slices(5, zero, Some(3)), 3);
    }
}
