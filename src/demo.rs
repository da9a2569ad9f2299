//! `tributary demo`: everything on one machine with nothing configured. It starts a local
//! Kafka-protocol broker (tansu) unless one already listens at `[kafka] brokers`, creates the topics,
//! runs every role of `tributary serve` on a local lake, feeds it the generator's clickstream, runs a
//! first batch recompute after a short while, and prints where to look. Ctrl-C (or SIGTERM) stops
//! everything it started.
//!
//! **Decision:** without `--config`, the demo shortens three defaults so that the batch layer shows
//! its work within a minute: raw files roll after 10 s (`archiver.max_file_age`), the boundary moves
//! in epochs of 1000 offsets (`batch.epoch_size`) and recomputes run every minute (`batch.interval`).
//! With `--config` the file is taken as it is.
//!
//! **The terminal:** when the demo runs on a terminal, its logs go to [`DEMO_LOG`] (every layer
//! logs at INFO, which buried the URLs), and under the URLs one status line updates every second:
//! events per second in, freshness, the batch versions and the speed layer's lag. Without a
//! terminal (CI, `| tee`, a service manager) it logs to stderr as every other command does.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use tributary_schemas::config::Config;
use tributary_schemas::shutdown::Shutdown;
use tributary_serving::query::DATABASE;

use crate::generator::{self, GenArgs, Target};
use crate::serve::{self, Role};

/// Where the demo's broker keeps its data and log.
const BROKER_DIR: &str = "data/tansu";
/// Where the demo's logs go when it runs on a terminal.
pub const DEMO_LOG: &str = "data/demo.log";

/// Whether the demo's terminal shows the status line (its logs go to [`DEMO_LOG`]).
static ON_TERMINAL: AtomicBool = AtomicBool::new(false);
/// Held while writing to the terminal, so a message and the status line never interleave.
static SCREEN: Mutex<()> = Mutex::new(());

/// The log file for a demo on a terminal (stdout and stderr both one): [`DEMO_LOG`], appended to.
/// `None` without a terminal, or when the file cannot be opened (then logs go to stderr).
pub fn terminal_log() -> Option<Mutex<File>> {
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return None;
    }
    let path = Path::new(DEMO_LOG);
    std::fs::create_dir_all(path.parent()?).ok()?;
    let file = (File::options().create(true).append(true).open(path)).ok()?;
    ON_TERMINAL.store(true, Ordering::Relaxed);
    Some(Mutex::new(file))
}

fn screen() -> MutexGuard<'static, ()> {
    SCREEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints `text` on stdout, first clearing the status line when there is one.
fn say(text: &str) {
    let _screen = screen();
    let mut out = std::io::stdout().lock();
    if ON_TERMINAL.load(Ordering::Relaxed) {
        let _ = out.write_all(b"\r\x1b[2K");
    }
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
const PARTITIONS: i32 = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Events per second the generator sends.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Seconds before the first batch recompute.
    #[arg(long, default_value_t = 20)]
    pub first_batch_after: u64,
}

pub fn run(mut config: Config, own_config: bool, args: &DemoArgs) -> anyhow::Result<()> {
    if !own_config {
        config.archiver.max_file_age = Duration::from_secs(10);
        config.batch.epoch_size = 1000;
        config.batch.interval = Duration::from_secs(60);
    }
    let _broker = LocalBroker::start_unless_running(&config.kafka.brokers)?;
    create_topics(&config)?;

    let stop = Shutdown::default();
    let generator = {
        let (config, stop) = (config.clone(), stop.clone());
        let args = GenArgs {
            rate: args.rate,
            count: 0,
            to: Target::Kafka,
            late_fraction: 0.02,
            seed: 1,
            start: None,
            url: None,
            batch: 500,
        };
        thread::Builder::new()
            .name("generator".to_owned())
            .spawn(move || generator::run(&config, &args, &stop, false))
            .context("starting the generator")?
    };
    let first_batch = args.first_batch_after;
    let helper_stop = stop.clone();
    let status_stop = stop.clone();
    let mut helper = None;
    let mut status = None;
    let served = serve::serve_until(
        &config,
        &Role::ALL,
        None,
        serve::wait_for_shutdown_signal(),
        |address| {
            print_welcome(address, &config);
            helper = thread::Builder::new()
                .name("first-batch".to_owned())
                .spawn(move || first_recompute(address, first_batch, &helper_stop))
                .ok();
            if ON_TERMINAL.load(Ordering::Relaxed) {
                status = thread::Builder::new()
                    .name("status-line".to_owned())
                    .spawn(move || status_line(address, &status_stop))
                    .ok();
            }
        },
    );
    stop.stop();
    if let Some(status) = status {
        let _ = status.join();
    }
    let generated = generator
        .join()
        .map_err(|_| anyhow::anyhow!("the generator panicked"))?;
    if let Some(helper) = helper {
        let _ = helper.join();
    }
    served?;
    let sent = generated?;
    say(&format!(
        "demo stopped: {} events generated; the lake stays in {} and the broker's data in {BROKER_DIR}\n",
        sent.events, config.lake.url
    ));
    Ok(())
}

fn print_welcome(address: SocketAddr, config: &Config) {
    let url = format!("http://{address}");
    let query = r#"{"view":"pageviews","granularity":"1m","metrics":["views","users","latency_p95"],"order_by":[{"field":"time","desc":true}],"limit":5}"#;
    let top = r#"{"view":"pageviews","granularity":"all","group_by":["page"],"metrics":["views","users"],"order_by":[{"field":"views","desc":true}],"limit":10}"#;
    let psql = match config.serving.pg_listen {
        None => String::new(),
        Some(pg) => format!(
            "SQL from psql or a BI tool (Postgres wire, database {DATABASE}; README \"BI tools\"):
  psql -h {host} -p {port} -U tributary {DATABASE} -c \\
    \"SELECT date_trunc('hour', time) AS hour, merge(views) AS views, merge(users) AS users FROM pageviews_states GROUP BY 1 ORDER BY 1\"

",
            host = pg.ip(),
            port = pg.port(),
        ),
    };
    let text = format!(
        "
Tributary demo: events flow from the generator through Kafka ({brokers}, topic {topic}) into the
speed layer, the archiver and the lake ({lake}); a first batch recompute runs shortly.

  dashboard     {url}/   (open it in a browser: live charts, the batch/speed seam, late events)
  API           {url}   (description: {url}/openapi.json)
  status        {url}/v1/status
  metrics       {url}/metrics

Views per minute over the last events (live, merged with the batch view once it exists):
  curl -s {url}/v1/query -H 'content-type: application/json' \\
    -d '{query}'

The ten most viewed pages so far:
  curl -s {url}/v1/query -H 'content-type: application/json' \\
    -d '{top}'

{psql}Push your own events: curl -s {url}/v1/events --data-binary @events.ndjson
Ctrl-C stops the demo, its broker and the generator.{logs}
",
        brokers = config.kafka.brokers,
        topic = config.kafka.topic,
        lake = config.lake.url,
        logs = match ON_TERMINAL.load(Ordering::Relaxed) {
            true => format!(
                "\nLogs: {DEMO_LOG} (tail -f {DEMO_LOG}); the line below updates every second.\n"
            ),
            false => String::new(),
        },
    );
    say(&text);
}

/// Redraws the status line every second until `stop`.
fn status_line(address: SocketAddr, stop: &Shutdown) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client
            .get(format!("http://{address}{path}"))
            .timeout(Duration::from_secs(2));
        runtime.block_on(async {
            let reply = request.send().await.ok()?;
            let body = reply.bytes().await.ok()?;
            serde_json::from_slice::<serde_json::Value>(&body).ok()
        })
    };
    let mut before: Option<(Instant, u64)> = None;
    while !stop.is_stopping() {
        let started = Instant::now();
        if let (Some(status), Some(views)) = (get("/v1/status"), get("/v1/views")) {
            let events = status["speed"]["events"].as_u64().unwrap_or(0);
            let rate = before.map(|(at, count)| {
                events.saturating_sub(count) as f64 / at.elapsed().as_secs_f64().max(1e-3)
            });
            before = Some((Instant::now(), events));
            let _screen = screen();
            let mut out = std::io::stdout().lock();
            let line = status_text(rate, &status, &views);
            let _ = write!(out, "\r\x1b[2K{line}");
            let _ = out.flush();
        }
        while started.elapsed() < Duration::from_secs(1) && !stop.is_stopping() {
            thread::sleep(Duration::from_millis(50));
        }
    }
    say("");
}

/// The status line: events per second in (`rate`, none yet on the first), freshness, the batch
/// versions and the speed layer's lag, from `/v1/status` and `/v1/views`.
fn status_text(rate: Option<f64>, status: &serde_json::Value, views: &serde_json::Value) -> String {
    let rate = rate.map_or("–".to_owned(), |r| format!("{r:.0}"));
    let views = views["views"].as_array().cloned().unwrap_or_default();
    let freshness = (views.iter())
        .filter_map(|v| v["freshness"]["age_ms"].as_i64())
        .min()
        .map_or("–".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1e3));
    let versions: Vec<String> = (views.iter())
        .map(|v| match v["batch"]["version"].as_u64() {
            Some(version) => format!("{} v{version}", v["name"].as_str().unwrap_or("?")),
            None => format!("{} –", v["name"].as_str().unwrap_or("?")),
        })
        .collect();
    let partitions = status["speed"]["partitions"].as_array();
    let lag: u64 = (partitions.into_iter().flatten())
        .filter_map(|p| p["lag"].as_u64())
        .sum();
    let stalled = (partitions.into_iter().flatten()).any(|p| p["stalled"] == true);
    format!(
        "{rate} events/s in · freshness {freshness} · batch {} · speed lag {lag}{}",
        versions.join(", "),
        if stalled { " (stalled)" } else { "" }
    )
}

/// After `after` seconds, asks the server for recomputes until one publishes (the first raw files
/// roll after `archiver.max_file_age`), and reports it.
fn first_recompute(address: SocketAddr, after: u64, stop: &Shutdown) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return tracing::warn!(%error, "cannot run the first recompute"),
    };
    let client = reqwest::Client::new();
    let mut due = Instant::now() + Duration::from_secs(after);
    while !stop.is_stopping() {
        if Instant::now() < due {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        due = Instant::now() + Duration::from_secs(5);
        let reply = runtime.block_on(async {
            let reply = (client.post(format!("http://{address}/v1/batch/run")))
                .send()
                .await?;
            reply.bytes().await
        });
        let runs: Vec<serde_json::Value> = match reply {
            Ok(body) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|reply| reply["views"].as_array().cloned())
                .unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "the first batch recompute did not run; retrying");
                continue;
            }
        };
        let published: Vec<String> = (runs.iter())
            .filter(|run| run["outcome"] == "published")
            .map(|run| {
                format!(
                    "{} version {} (boundary {}, {} events read)",
                    run["view"].as_str().unwrap_or("?"),
                    run["version"],
                    run["boundary"],
                    run["rows_read"]
                )
            })
            .collect();
        if !published.is_empty() {
            say(&format!(
                "\nfirst batch recompute published: {}\nanswers now merge these views with the speed layer above their boundary\n\n",
                published.join("; ")
            ));
            return;
        }
    }
}

/// A tansu broker this process started; stopped (with its process group) when dropped.
#[derive(Debug)]
struct LocalBroker {
    child: Option<Child>,
}

impl LocalBroker {
    /// Uses the broker at `brokers` if one answers; else starts tansu there when it is a local
    /// address.
    fn start_unless_running(brokers: &str) -> anyhow::Result<LocalBroker> {
        let first = brokers.split(',').next().unwrap_or_default().trim();
        let address = (first.to_socket_addrs().ok())
            .and_then(|mut addresses| addresses.next())
            .with_context(|| format!("cannot resolve the broker address {first:?}"))?;
        if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
            tracing::info!("using the Kafka broker already listening at {address}");
            return Ok(LocalBroker { child: None });
        }
        if !address.ip().is_loopback() {
            bail!(
                "no Kafka broker answers at {first}; the demo starts one only on a local address (127.0.0.1)"
            );
        }
        let binary = tansu_binary().context(
            "tansu (the local Kafka-protocol broker) is not installed: run scripts/setup, or `cargo install --locked tansu@0.6.0 --features libsql`, or point TANSU_BIN at it",
        )?;
        std::fs::create_dir_all(BROKER_DIR).with_context(|| format!("creating {BROKER_DIR}"))?;
        let log = File::create(Path::new(BROKER_DIR).join("broker.log"))
            .context("creating the broker's log")?;
        let url = format!("tcp://{address}");
        tracing::info!("starting tansu at {address} (data and log in {BROKER_DIR})");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "sqlite://tansu.db",
                "--cluster-id",
                "tributary-demo",
            ])
            .current_dir(BROKER_DIR)
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("the broker's log")?)
            .stderr(log)
            // Its own process group: a Ctrl-C reaches the demo, which then stops the broker last.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut broker = LocalBroker { child: Some(child) };
        broker.wait_until_ready(brokers)?;
        Ok(broker)
    }

    fn wait_until_ready(&mut self, brokers: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("creating a Kafka client")?;
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("tansu exited at start ({status}); see {BROKER_DIR}/broker.log");
            }
            if consumer
                .fetch_metadata(None, Duration::from_secs(1))
                .is_ok()
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(200));
        }
        bail!("tansu did not answer within 60s; see {BROKER_DIR}/broker.log")
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let _ = child.wait();
        }
    }
}

/// `$TANSU_BIN`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu` (where scripts/setup puts it).
fn tansu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(path));
    }
    let cargo_bin = (std::env::var_os("CARGO_HOME").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    (std::env::split_paths(&path).chain(cargo_bin))
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file())
}

/// Creates the events topic (3 partitions) and the DLQ topic unless they exist.
fn create_topics(config: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .context("creating a Kafka admin client")?;
    let topics: Vec<NewTopic> = std::iter::once(&config.kafka.topic)
        .chain(&config.kafka.dlq_topic)
        .map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let results = runtime
        .block_on(admin.create_topics(&topics, &options))
        .context("creating the demo's topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    // Metadata shows a new topic's partitions a moment after it is created.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let partitions = (consumer
            .fetch_metadata(Some(&config.kafka.topic), Duration::from_secs(2)))
        .ok()
        .and_then(|m| m.topics().first().map(|t| t.partitions().len()));
        if partitions.is_some_and(|p| p > 0) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the topic {} did not appear on the broker",
        config.kafka.topic
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_status_line_says_rate_freshness_versions_and_lag() {
        let status = json!({"speed": {"partitions": [
            {"partition": 0, "lag": 3, "stalled": false},
            {"partition": 1, "lag": 4, "stalled": false},
        ]}});
        let views = json!({"views": [
            {"name": "pageviews", "batch": {"version": 3}, "freshness": {"age_ms": 1250}},
            {"name": "traffic", "batch": null, "freshness": {"age_ms": 900}},
        ]});
        assert_eq!(
            status_text(Some(301.4), &status, &views),
            "301 events/s in · freshness 0.9 s · batch pageviews v3, traffic – · speed lag 7"
        );
        let stalled =
            json!({"speed": {"partitions": [{"partition": 0, "lag": 9, "stalled": true}]}});
        assert_eq!(
            status_text(None, &stalled, &json!({"views": []})),
            "– events/s in · freshness – · batch  · speed lag 9 (stalled)"
        );
    }
}
