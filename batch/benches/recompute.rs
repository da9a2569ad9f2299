//! Recompute throughput and memory: the default `pageviews` view (1m buckets by page and country;
//! count, count_distinct, sum, min, max, avg, quantile) over 10 million raw events in Parquet on a
//! local lake, through the real [`RecomputeService::run`] (scan, boundary and view filter, aggregation into
//! states, sort, Parquet parts, manifest, `_current`).
//!
//! Data: one day of clickstream, 3 partitions of 500 000-event files (the archiver's default
//! roll), 100 pages with a power-law popularity, 20 countries, 200 000 users, log-normal-ish
//! latencies, 2% of pages null (filtered out by the view).
//!
//! A multi-second run is measured as a whole a few times rather than sampled by criterion:
//! `cargo bench -p tributary-batch --bench recompute` (set `RECOMPUTE_EVENTS` for a smaller run).
//! `RECOMPUTE_CONFIG=batch/benches/recompute_breakdown.toml` with `RECOMPUTE_VIEW=<name>` runs one
//! of the views there, which take `pageviews` apart (its scan, metrics and cardinality).
//! Target (issue 3): >= 5M raw rows/s per core, peak memory reported.

use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use object_store::path::Path;
use tributary_batch::parquet_io;
use tributary_batch::recompute::progress::quiet;
use tributary_batch::recompute::slices::SliceTarget;
use tributary_batch::recompute::{BatchSettings, Outcome, RecomputeService, RunOptions};
use tributary_schemas::config::Config;
use tributary_schemas::event::raw_rows::{KafkaPosition, RawBatchBuilder};
use tributary_schemas::event::{Event, Value};
use tributary_schemas::lake::{self, Area, Lake, OffsetRange};
use tributary_testkit::rng::Rng;

const PARTITIONS: i32 = 3;
const FILE_ROWS: usize = 500_000;

/// Event `n` of the day: times spread over 24 h in offset order, with a little jitter.
fn event(rng: &mut Rng, n: usize, total: usize, config: &Config) -> Event<'static> {
    let day_start = 1_795_046_400_000i64; // 2026-11-18T00:00:00Z
    let time_ms =
        day_start + (n as i64 * 86_400_000 / total as i64) + (rng.next_u64() % 5_000) as i64;
    // Power law: page k with probability ~ 1/(k+1).
    let page = ((101f64).powf(rng.unit()) - 1.0) as u64;
    let page = if rng.next_u64().is_multiple_of(50) {
        Value::Null
    } else {
        Value::Str(format!("/page/{page}").into())
    };
    let country = ((21f64).powf(rng.unit()) - 1.0) as u64;
    let user = rng.next_u64() % 200_000;
    let latency = (rng.unit() * 6.0).exp() * 3.0;
    let values = config
        .events
        .fields
        .iter()
        .map(|field| match field.name.as_str() {
            "user_id" => Value::Str(format!("user-{user}").into()),
            "session_id" => Value::Str(format!("s-{}", user * 7 + (n as u64 / 40_000)).into()),
            "page" => page.clone(),
            "referrer" => Value::Str(["google", "direct", "news", "social"][n % 4].into()),
            "country" => Value::Str(format!("C{country:02}").into()),
            "device" => Value::Str(["mobile", "desktop", "tablet"][n % 3].into()),
            "latency_ms" => Value::Float(latency),
            "bytes" => Value::Int((rng.next_u64() % 100_000) as i64),
            other => panic!("unexpected field {other}"),
        })
        .collect();
    Event { time_ms, values }
}

async fn write_lake(store: &Lake, config: &Config, events: usize) {
    let mut rng = Rng(7);
    let per_partition = events / PARTITIONS as usize;
    for partition in 0..PARTITIONS {
        let mut offset = 0i64;
        while (offset as usize) < per_partition {
            let rows = FILE_ROWS.min(per_partition - offset as usize);
            let file = (0..rows).map(|i| {
                let n = (offset as usize + i) * PARTITIONS as usize + partition as usize;
                event(&mut rng, n, events, config)
            });
            put_raw_file(store, config, partition, offset, file).await;
            offset += rows as i64;
        }
    }
}

/// `extra` more events after the `events` of [`write_lake`], one file per partition with the next
/// offsets, 5% of them up to two days late: what arrives between two scheduled runs.
async fn append_to_lake(store: &Lake, config: &Config, events: usize, extra: usize) {
    let mut rng = Rng(11);
    let per_partition = events / PARTITIONS as usize;
    for partition in 0..PARTITIONS {
        let file = (0..extra / PARTITIONS as usize).map(|i| {
            let n = (per_partition + i) * PARTITIONS as usize + partition as usize;
            let mut event = event(&mut rng, n, events, config);
            if rng.next_u64().is_multiple_of(20) {
                event.time_ms -= (rng.next_u64() % 172_800_000) as i64;
            }
            event
        });
        put_raw_file(store, config, partition, per_partition as i64, file).await;
    }
}

/// One raw file of `partition` holding `events` at offsets from `first` on, stamped by Kafka at
/// their event time.
async fn put_raw_file(
    store: &Lake,
    config: &Config,
    partition: i32,
    first: i64,
    events: impl Iterator<Item = Event<'static>>,
) {
    let mut builder = RawBatchBuilder::new(&config.events);
    let mut batches = Vec::new();
    let mut next = first;
    for event in events {
        let position = KafkaPosition {
            partition,
            offset: next,
            timestamp_ms: Some(event.time_ms),
        };
        builder.append(&event, position);
        next += 1;
        if builder.len() == 65_536 {
            batches.push(builder.finish().expect("raw batch"));
        }
    }
    if !builder.is_empty() {
        batches.push(builder.finish().expect("raw batch"));
    }
    let range = OffsetRange {
        start: first,
        end: next - 1,
    };
    let bytes = parquet_io::encode(&batches).expect("encode");
    (store.put_partition_file(Area::Raw, "events", partition, range, bytes))
        .await
        .expect("put");
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// CPU seconds this process has used, user and system, on every thread (the object store's
/// blocking writes included): what "per core" divides by.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse().ok())
        .collect();
    // Linux reports these in USER_HZ, 100 on every platform Rust targets.
    ticks.iter().sum::<u64>() as f64 / 100.0
}

#[allow(clippy::print_stdout)]
fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` of the bench target passes nothing and
    // should not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let events: usize = std::env::var("RECOMPUTE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    // RECOMPUTE_CONFIG=<file>: views (and events) from a file instead of the defaults.
    let config_file = std::env::var("RECOMPUTE_CONFIG").ok().map(|path| {
        (
            std::fs::read_to_string(&path).expect("RECOMPUTE_CONFIG"),
            path,
        )
    });
    let config = Config::from_sources(
        config_file
            .as_ref()
            .map(|(text, path)| (text.as_str(), path.as_str())),
        [],
    )
    .expect("config");
    // RECOMPUTE_VIEW=traffic measures the other default view (1h by device and referrer: few groups).
    let view_name = std::env::var("RECOMPUTE_VIEW").unwrap_or_else(|_| "pageviews".to_owned());
    let view = config.view(&view_name).expect("a default view").clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // RECOMPUTE_LAKE=<dir> keeps the generated lake there and reuses it on the next run.
    let dir = tempfile::tempdir().expect("temp dir");
    let kept = std::env::var("RECOMPUTE_LAKE").ok();
    let root = kept
        .clone()
        .unwrap_or_else(|| dir.path().to_str().expect("utf-8 path").to_owned());
    let reuse = kept.is_some_and(|d| std::path::Path::new(&d).join("raw").exists());
    let store = Lake::open(&root).expect("lake");
    if !reuse {
        let started = Instant::now();
        runtime.block_on(write_lake(&store, &config, events));
        println!(
            "wrote {events} raw events in {:.1}s (rss peak so far {} MiB)",
            started.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
    }

    // RECOMPUTE_ROUNDS=1 measures one recompute in a fresh process (`tributary batch run` from
    // cron); the default 3 also shows a long-lived one (`tributary serve`).
    let rounds: usize = std::env::var("RECOMPUTE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // RECOMPUTE_SLICE_ROWS=<n> sets the rows a time slice aims at (groups in proportion).
    let slice_target = std::env::var("RECOMPUTE_SLICE_ROWS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(SliceTarget::DEFAULT, |rows| SliceTarget {
            rows,
            groups: rows
                / SliceTarget::DEFAULT
                    .rows
                    .div_ceil(SliceTarget::DEFAULT.groups),
        });
    let thread_counts: Vec<usize> = std::env::var("RECOMPUTE_THREADS")
        .ok()
        .map_or(vec![1, 2], |v| {
            v.split(',').filter_map(|t| t.parse().ok()).collect()
        });
    for threads in thread_counts {
        let mut seconds = Vec::new();
        let mut cpu_seconds_used = Vec::new();
        for _ in 0..rounds {
            // A fresh lake view each round: delete the previous versions by using a new view dir.
            let batch = RecomputeService::new(
                BatchSettings {
                    topic: "events".to_owned(),
                    epoch_size: 1,
                    keep_versions: 1,
                    memory_limit_bytes: std::env::var("RECOMPUTE_MEMORY_MB")
                        .ok()
                        .and_then(|v| v.parse::<usize>().ok())
                        .map_or(2 << 30, |mb| mb << 20),
                    threads,
                    part_rows: 1_000_000,
                    slice: slice_target,
                    lock_lease: Duration::from_secs(600),
                    full_every: Duration::from_secs(86_400),
                    raw_file_rows: 500_000,
                    raw_retention: None,
                    max_deltas: 24,
                    engine: tributary_schemas::config::BatchEngine::Local,
                },
                config.events.clone(),
                vec![view.clone()],
                store.clone(),
            )
            .expect("batch");
            // Remove `_current` so the run is not "unchanged".
            runtime
                .block_on(
                    store
                        .store()
                        .delete(&Path::from(lake::current_path(&view_name))),
                )
                .ok();
            let cpu_before = cpu_seconds();
            let runs = runtime
                .block_on(batch.run(None, quiet()))
                .expect("recompute");
            let cpu = cpu_seconds() - cpu_before;
            let run = &runs[0];
            let Outcome::Published(manifest) = &run.outcome else {
                panic!("not published: {run:?}");
            };
            if !reuse {
                assert_eq!(run.rows_read as usize, events / 3 * 3);
            }
            seconds.push(run.elapsed.as_secs_f64());
            cpu_seconds_used.push(cpu);
            println!(
                "threads {threads}: {:.2}s, {:.2}M raw rows/s ({:.2}M/s per thread), cpu {cpu:.2}s ({:.2}M rows per cpu-second), {} view rows, {} time slices ({:.2}x the rows scanned), pool peak {} MiB, spilled {} MiB, rss peak {} MiB",
                run.elapsed.as_secs_f64(),
                run.rows_read as f64 / run.elapsed.as_secs_f64() / 1e6,
                run.rows_read as f64 / run.elapsed.as_secs_f64() / 1e6 / threads as f64,
                run.rows_read as f64 / cpu / 1e6,
                manifest.row_count,
                run.slices,
                run.rows_scanned as f64 / run.rows_read as f64,
                run.peak_memory_bytes >> 20,
                run.spilled_bytes >> 20,
                peak_rss_mib()
            );
        }
        seconds.sort_by(f64::total_cmp);
        cpu_seconds_used.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        let median_cpu = cpu_seconds_used[cpu_seconds_used.len() / 2];
        println!(
            "threads {threads}: median {median:.2}s = {:.2}M raw rows/s; median cpu {median_cpu:.2}s = {:.2}M raw rows per cpu-second",
            events as f64 / median / 1e6,
            events as f64 / median_cpu / 1e6
        );
    }

    // RECOMPUTE_INCREMENTAL=1 (issue 30): 1% more events on a fresh copy of the lake's state, then
    // the incremental run (reads only the new offsets) and a full run over the same boundary, one
    // thread each. (Appends to the lake: use it with a throwaway RECOMPUTE_LAKE.)
    if std::env::var("RECOMPUTE_INCREMENTAL").as_deref() == Ok("1") {
        let batch = RecomputeService::new(
            BatchSettings {
                topic: "events".to_owned(),
                epoch_size: 1,
                keep_versions: 3,
                memory_limit_bytes: 2 << 30,
                threads: 1,
                part_rows: 1_000_000,
                slice: slice_target,
                lock_lease: Duration::from_secs(600),
                full_every: Duration::from_secs(86_400),
                raw_file_rows: 500_000,
                raw_retention: None,
                max_deltas: 24,
                engine: tributary_schemas::config::BatchEngine::Local,
            },
            config.events.clone(),
            vec![view],
            store.clone(),
        )
        .expect("batch");
        let base = runtime
            .block_on(batch.run_as(None, quiet(), RunOptions::FULL))
            .expect("full");
        let extra = events / 100;
        runtime.block_on(append_to_lake(&store, &config, events, extra));
        let incremental = runtime
            .block_on(batch.run(None, quiet()))
            .expect("incremental");
        let full = runtime
            .block_on(batch.run_as(None, quiet(), RunOptions::FULL))
            .expect("full");
        let (base, incremental, full) = (&base[0], &incremental[0], &full[0]);
        let deltas = match &incremental.outcome {
            Outcome::Published(manifest) => manifest.deltas,
            other => panic!("not published: {other:?}"),
        };
        println!(
            "incremental: base full run {:.2}s; +{extra} events (5% late): incremental {:.2}s ({} rows read, deltas {deltas}), full {:.2}s ({} rows read): {:.1}% of the full run",
            base.elapsed.as_secs_f64(),
            incremental.elapsed.as_secs_f64(),
            incremental.rows_read,
            full.elapsed.as_secs_f64(),
            full.rows_read,
            100.0 * incremental.elapsed.as_secs_f64() / full.elapsed.as_secs_f64()
        );
    }
}
