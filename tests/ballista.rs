//! The recompute on a Ballista cluster of real processes (issue 32): `tributary ballista
//! scheduler` and two `tributary ballista executor`s over the lake a real broker's events were
//! archived into. A `batch run` with `[batch] engine = "ballista"` publishes versions whose parts
//! hold exactly the rows (time, dimensions, every state column's bytes) of a local run over the
//! same input, for both default views (`pageviews` has a filter); an executor killed mid-run
//! makes the run fail or finish on the other, never publish a wrong version.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Output;
use std::time::{Duration, Instant};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Float64Type, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use tributary_schemas::lake::{Lake, Manifest};
use tributary_testkit::stream::{Expected, produce_mixed};
use tributary_testkit::{Broker, TestServer, output_text};

const PARTITIONS: i32 = 3;
const WAIT: Duration = Duration::from_secs(120);
const BIN: &str = env!("CARGO_BIN_EXE_tributary");

/// A scheduler and executors, each its own process of the binary over `lake`.
struct Cluster {
    scheduler: TestServer,
    executors: Vec<TestServer>,
}

fn wait_for_port(address: SocketAddr, server: &mut TestServer) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(address).is_err() {
        assert!(
            server.running() && Instant::now() < deadline,
            "nothing listens on {address}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    fn start(lake: &str, executors: usize) -> Self {
        let mut scheduler = TestServer::without_broker(BIN);
        scheduler.env("TRIBUTARY_LAKE__URL", lake);
        let at = scheduler.address;
        scheduler.spawn(&["ballista", "scheduler", "--bind", &at.to_string()]);
        wait_for_port(at, &mut scheduler);
        let mut cluster = Self {
            scheduler,
            executors: Vec::new(),
        };
        for _ in 0..executors {
            cluster.add_executor(lake);
        }
        cluster
    }

    fn add_executor(&mut self, lake: &str) {
        let mut executor = TestServer::without_broker(BIN);
        executor.env("TRIBUTARY_LAKE__URL", lake);
        let (flight, grpc) = (executor.address, executor.pg_address.port());
        executor.spawn(&[
            "ballista",
            "executor",
            "--scheduler",
            &self.scheduler.address.to_string(),
            "--bind",
            &flight.to_string(),
            "--grpc-port",
            &grpc.to_string(),
            "--slots",
            "1",
        ]);
        wait_for_port(flight, &mut executor);
        self.executors.push(executor);
    }

    fn url(&self) -> String {
        format!("df://{}", self.scheduler.address)
    }

    fn logs(&self) -> String {
        let mut logs = format!("scheduler:\n{}", self.scheduler.log_text());
        for (n, executor) in self.executors.iter().enumerate() {
            logs += &format!("\nexecutor {n}:\n{}", executor.log_text());
        }
        logs
    }
}

/// `batch run --full` with a pool of `memory_mb` and `threads` (on a cluster: slices at once).
fn batch_command(server: &TestServer, memory_mb: u32, threads: u32) -> std::process::Command {
    let mut command = server.command(&["batch", "run", "--full"]);
    command
        .env("TRIBUTARY_BATCH__THREADS", threads.to_string())
        .env("TRIBUTARY_BATCH__MEMORY_LIMIT_MB", memory_mb.to_string());
    command
}

/// How many time slices a run's report says it aggregated.
fn slices(output: &Output) -> usize {
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    let at = said.find(" time slices").expect("a run report");
    said[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

/// A float to 12 significant digits.
fn rounded(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(11 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Every row of a version's parts, each as the bytes of all its columns (time, dimensions, every
/// state), sorted: parts are sorted by time only, so rows of one bucket may come in another order.
/// Every float (sums, and the sum in `avg` states) is taken to 12 significant digits when
/// `spilled`: an aggregation that spilled merges partial float sums where its pool made it spill,
/// so their last bits follow the pool. Every other state (counts, integer sums, min, max, the HLL
/// and DDSketch sketches) does not depend on the order and stays byte for byte.
fn rows(
    runtime: &tokio::runtime::Runtime,
    lake: &Lake,
    manifest: &Manifest,
    spilled: bool,
) -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    for file in &manifest.files {
        for batch in runtime
            .block_on(lake.read_parquet(&file.path, 8192))
            .unwrap()
        {
            batches.push(batch.unwrap());
        }
    }
    assert!(!batches.is_empty(), "version {} has rows", manifest.version);
    let batch: RecordBatch = concat_batches(&batches[0].schema(), &batches).unwrap();
    let times = batch.column(0).as_primitive::<TimestampMillisecondType>();
    assert!(
        times.values().windows(2).all(|w| w[0] <= w[1]),
        "version {} is sorted by time",
        manifest.version
    );
    let round = |column: &ArrayRef| -> ArrayRef {
        match column.data_type() {
            DataType::Float64 => {
                let floats = column.as_primitive::<Float64Type>();
                Arc::new(floats.unary::<_, Float64Type>(rounded))
            }
            DataType::Struct(fields) => {
                let parts = column.as_struct();
                let children = (parts.columns().iter())
                    .map(|c| match c.data_type() {
                        DataType::Float64 => Arc::new(
                            c.as_primitive::<Float64Type>()
                                .unary::<_, Float64Type>(rounded),
                        ) as ArrayRef,
                        _ => Arc::clone(c),
                    })
                    .collect();
                Arc::new(StructArray::new(
                    fields.clone(),
                    children,
                    parts.nulls().cloned(),
                ))
            }
            _ => Arc::clone(column),
        }
    };
    let columns: Vec<ArrayRef> = match spilled {
        true => batch.columns().iter().map(round).collect(),
        false => batch.columns().to_vec(),
    };
    let fields = (batch.schema().fields().iter())
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).unwrap();
    let converted = converter.convert_columns(&columns).unwrap();
    let mut rows: Vec<Vec<u8>> = converted.iter().map(|row| row.as_ref().to_vec()).collect();
    rows.sort();
    rows
}

fn live(runtime: &tokio::runtime::Runtime, lake: &Lake, view: &str) -> Manifest {
    runtime.block_on(lake.live_manifest(view)).unwrap().unwrap()
}

#[test]
fn a_ballista_cluster_publishes_the_parts_a_local_run_does_and_survives_a_dead_executor() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut server = TestServer::new(BIN, broker, &topic);
    server
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_ROWS", "5000")
        .env("TRIBUTARY_ARCHIVER__MAX_FILE_AGE", "100ms")
        .env("TRIBUTARY_BATCH__EPOCH_SIZE", "500")
        .env("TRIBUTARY_BATCH__THREADS", "1");
    let lake_dir = server.lake().display().to_string();
    let lake = Lake::open(&lake_dir).unwrap();
    // Events in time order (narrow file spans: a run can be cut into time slices) and the
    // suite's stream (late events, pages missing for pageviews' filter, many groups).
    let mut expected = Expected::new();
    runtime.block_on(produce_mixed(
        broker,
        &topic,
        PARTITIONS,
        0,
        90_000,
        &mut expected,
    ));
    common::Truth::new().produce(broker, &topic, 30_000);
    server.spawn(&["serve", "--roles", "archiver"]);
    let heads = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    server.wait_within("the archiver", WAIT, |_| {
        (0..PARTITIONS).all(|p| {
            let ranges = runtime
                .block_on(lake.ranges(tributary_schemas::lake::Area::Raw, &topic, p))
                .unwrap();
            ranges.last().map(|(r, _)| r.next()) == heads.get(&p).copied()
        })
    });
    let status = server.terminate();
    assert!(status.success(), "{status}");

    // The same input twice: the cluster's lake is a copy of the local one, so each run on it has
    // a local twin planned alike (the first without a live version, the next with one).
    let cluster_dir = server.dir().join("cluster-lake").display().to_string();
    let copied = std::process::Command::new("cp")
        .args(["-r", &lake_dir, &cluster_dir])
        .status()
        .unwrap();
    assert!(copied.success());
    let cluster_lake = Lake::open(&cluster_dir).unwrap();
    let mut cluster = Cluster::start(&cluster_dir, 2);
    let url = cluster.url();
    let on_cluster = |memory_mb: u32| {
        let mut command = batch_command(&server, memory_mb, 2);
        command
            .env("TRIBUTARY_LAKE__URL", &cluster_dir)
            .env("TRIBUTARY_BATCH__ENGINE", "ballista")
            .env("TRIBUTARY_BATCH__BALLISTA_SCHEDULER", &url);
        command
    };
    let mut remotes = Vec::new();
    // Within the pool: one slice, every state byte for byte (locally one thread: with two,
    // DataFusion splits the slice's scan in two partitions and merges their partial float sums,
    // whose last bits then differ from the one pass over the rows that a slice on the cluster
    // makes). Then a small pool: several slices, planned up front from the live version's groups
    // and run two at a time (one partition each), on both executors; the aggregations spill, at
    // points that follow each pool (here one pool shared by two slices, there one per slot).
    for (memory_mb, threads, spilled) in [(1024, 1, false), (16, 2, true)] {
        let local = batch_command(&server, memory_mb, threads).output().unwrap();
        assert!(local.status.success(), "{}", output_text(&local));
        let remote = on_cluster(memory_mb).output().unwrap();
        assert!(
            remote.status.success(),
            "{}\n{}",
            output_text(&remote),
            cluster.logs()
        );
        assert_eq!(
            slices(&remote),
            slices(&local),
            "{}\n{}",
            output_text(&local),
            output_text(&remote)
        );
        for view in ["pageviews", "traffic"] {
            let (there, here) = (
                live(&runtime, &cluster_lake, view),
                live(&runtime, &lake, view),
            );
            assert_eq!(there.boundary, here.boundary, "{view}: the same input");
            assert_eq!(there.row_count, here.row_count, "{view}");
            assert_eq!(
                rows(&runtime, &cluster_lake, &there, spilled),
                rows(&runtime, &lake, &here, spilled),
                "{view} ({memory_mb} MB): the cluster's parts hold the local run's rows"
            );
        }
        remotes.push(remote);
    }
    assert!(slices(&remotes[1]) >= 2, "{}", output_text(&remotes[1]));
    for (n, executor) in cluster.executors.iter().enumerate() {
        let log = executor.log_text();
        assert!(
            log.contains("Finished task"),
            "executor {n} ran slices:\n{}",
            cluster.logs()
        );
    }

    // An executor killed while a run is in flight: the run fails, or finishes on the other
    // executor with the same rows; a failed run publishes nothing.
    let before = live(&runtime, &cluster_lake, "pageviews");
    let mut child = on_cluster(16)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed while it runs a slice: the first executor to start one.
    let mut running = None;
    let deadline = Instant::now() + WAIT;
    while running.is_none() && child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no slice started:\n{}",
            cluster.logs()
        );
        running = (0..2).find(|&n| {
            let log = cluster.executors[n].log_text();
            log.matches("Execute task").count() > log.matches("Finished task").count()
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    // (A run that finished between two looks loses an executor afterwards: the rest holds.)
    cluster.executors[running.unwrap_or(0)].kill();
    let output = child.wait_with_output().unwrap();
    let after = live(&runtime, &cluster_lake, "pageviews");
    if output.status.success() {
        assert_eq!(
            after.version,
            before.version + 1,
            "{}",
            output_text(&output)
        );
        assert_eq!(
            rows(&runtime, &cluster_lake, &after, true),
            rows(&runtime, &cluster_lake, &before, true),
            "a run that finished without the killed executor is right"
        );
    } else {
        assert_eq!(
            after.version, before.version,
            "a failed run publishes nothing"
        );
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("pageviews") || said.contains("traffic"),
            "{said}"
        );
    }
    // The cluster still runs recomputes with the executor left.
    let again = on_cluster(1024).output().unwrap();
    assert!(
        again.status.success(),
        "{}\n{}",
        output_text(&again),
        cluster.logs()
    );
    let (there, here) = (
        live(&runtime, &cluster_lake, "traffic"),
        live(&runtime, &lake, "traffic"),
    );
    // (The local version is the small pool's: floats to 12 digits.)
    assert_eq!(
        rows(&runtime, &cluster_lake, &there, true),
        rows(&runtime, &lake, &here, true)
    );
}
