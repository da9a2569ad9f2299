//! Starting, probing and stopping a tansu broker, and creating topics on it.
//!
//! tansu runs under a small `sh` watchdog in its own process group: the watchdog stops the broker
//! when the test process that started it is gone, so even the shared broker (a `static`, never
//! dropped) does not outlive its test binary, and removes the broker's directory once the test
//! process is gone. Dropping a [`Broker`] stops the whole group at once.
//!
//! Storage is `sqlite://` in a temporary directory that is the broker's working directory: with it,
//! watermarks, seeks and consumer groups behave as in Kafka (`memory://` gets them wrong), and tansu
//! resolves the file against its working directory (absolute paths are mishandled).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tempfile::TempDir;

const INSTALL_HINT: &str = "install it with `cargo install --locked tansu@0.6.0 --features libsql` \
     (or point TANSU_BIN at the binary)";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("the tansu broker binary was not found; {INSTALL_HINT}")]
    TansuMissing,
    #[error("cannot start the broker")]
    Spawn(#[source] std::io::Error),
    #[error("the broker did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("Kafka admin request failed")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic} failed: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("topic {topic} did not show {partitions} partitions in metadata within {timeout:?}")]
    TopicNotVisible {
        topic: String,
        partitions: i32,
        timeout: Duration,
    },
    #[error("temporary directory")]
    TempDir(#[source] std::io::Error),
}

/// A topic's messages: `(offset, payload)` in order, per partition.
pub type Messages = BTreeMap<i32, Vec<(i64, Vec<u8>)>>;

/// A running tansu broker on a loopback port.
#[derive(Debug)]
pub struct Broker {
    /// The watchdog process (behind a lock: a shared broker can be stopped and restarted too).
    child: Mutex<Child>,
    address: SocketAddr,
    dir: TempDir,
    /// tansu's `--storage-engine` URL.
    storage: String,
}

/// Where tansu keeps its data (in its working directory, see the module docs).
const STORAGE: &str = "sqlite://tansu.db";

/// The tansu binary: `$TANSU_BIN`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
fn tansu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
        Some(cargo_home.join("bin/tansu")).filter(|p| p.is_file())
    })
}

/// A port nothing listens on right now (the OS picks it; the broker binds it a moment later).
/// A loopback port nothing listens on (for a server a test starts).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Starts tansu on `address` with its data in `dir`, under the watchdog.
fn spawn(dir: &Path, address: SocketAddr, storage: &str) -> Result<Child, HarnessError> {
    let binary = tansu_binary().ok_or(HarnessError::TansuMissing)?;
    let url = format!("tcp://{address}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .map_err(HarnessError::Spawn)?;
    let watchdog = r#"
        "$TANSU_BIN_PATH" broker --listener-url "$URL" --advertised-listener-url "$URL" \
            --storage-engine "$STORAGE" --cluster-id tributary-test &
        broker=$!
        trap 'kill $broker 2>/dev/null; wait $broker; exit 0' TERM INT
        while kill -0 "$OWNER" 2>/dev/null && kill -0 $broker 2>/dev/null; do sleep 0.5; done
        kill $broker 2>/dev/null
        wait $broker
        # The owner is gone: nothing can restart this broker, so its data goes too (the shared
        # broker is a `static` whose directory is never dropped).
        kill -0 "$OWNER" 2>/dev/null || rm -rf -- "$DATA_DIR"
    "#;
    Command::new("sh")
        .args(["-c", watchdog])
        .current_dir(dir)
        .env("TANSU_BIN_PATH", &binary)
        .env("URL", &url)
        .env("OWNER", std::process::id().to_string())
        .env("DATA_DIR", dir)
        .env("STORAGE", storage)
        .env_remove("STORAGE_ENGINE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(HarnessError::Spawn)?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(HarnessError::Spawn)
}

impl Broker {
    /// The broker shared by every test of this test binary, started on first use.
    ///
    /// Panics when the broker cannot start: a test that needs Kafka cannot run without it, and the
    /// panic message says how to install tansu.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| Broker::start().unwrap_or_else(|error| panic!("{error}")))
    }

    /// Starts a private broker, stopped when dropped.
    pub fn start() -> Result<Broker, HarnessError> {
        Self::start_on(STORAGE.to_owned())
    }

    /// Starts a private broker that applies topics' retention (`cleanup.policy = "delete"`,
    /// `retention.ms`, by record timestamp) every `every`, as Kafka deletes old segments.
    pub fn start_with_retention(every: Duration) -> Result<Broker, HarnessError> {
        Self::start_on(format!(
            "{STORAGE}?maintenance_interval={}ms",
            every.as_millis()
        ))
    }

    fn start_on(storage: String) -> Result<Broker, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let port = free_port().map_err(HarnessError::Spawn)?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let child = spawn(dir.path(), address, &storage)?;
        let broker = Broker {
            child: Mutex::new(child),
            address,
            dir,
            storage,
        };
        broker.wait_until_ready()?;
        Ok(broker)
    }

    /// Stops the broker as an outage would, keeping its data for [`Broker::restart`].
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        // The watchdog leads its own process group: signal the group so the broker goes too.
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        // A paused broker handles the TERM only once it runs again.
        let _ = Command::new("kill").args(["-CONT", "--", &group]).status();
        let _ = child.wait();
    }

    /// Freezes the broker (`SIGSTOP`): connections stay open and requests go unanswered, as with a
    /// hung broker or a network partition, until [`Broker::resume`].
    pub fn pause(&self) {
        self.signal_group("-STOP");
    }

    /// Lets a [`Broker::pause`]d broker run again; it answers the requests that queued meanwhile.
    pub fn resume(&self) {
        self.signal_group("-CONT");
    }

    fn signal_group(&self, signal: &str) {
        let id = self.child.lock().unwrap_or_else(|e| e.into_inner()).id();
        let group = format!("-{id}");
        let status = Command::new("kill").args([signal, "--", &group]).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill {signal} -- {group} failed"
        );
    }

    /// Starts the broker again on the same address over the same data (topics and logs survive).
    pub fn restart(&self) -> Result<(), HarnessError> {
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) =
            spawn(self.dir.path(), self.address, &self.storage)?;
        self.wait_until_ready()
    }

    fn wait_until_ready(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let exited = (self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait())
            .is_ok_and(|status| status.is_some());
            if exited {
                break;
            }
            let listening =
                TcpStream::connect_timeout(&self.address, Duration::from_millis(200)).is_ok();
            if listening && self.metadata_answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::NotReady {
            timeout: START_TIMEOUT,
            log: self.log(),
        })
    }

    fn metadata_answers(&self) -> bool {
        let consumer: Result<BaseConsumer, _> = self.client_config().create();
        consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.address.to_string()
    }

    /// A client configuration pointing at this broker, to add settings to.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap_servers());
        config
    }

    /// A producer's configuration as the service's own producers use it: every write acknowledged
    /// by all replicas (`acks=all`) and idempotent, so a test knows exactly what the log holds.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        config
    }

    /// What the broker has printed so far (for failure messages).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("broker.log")) {
            let _ = file.read_to_string(&mut text);
        }
        let tail_start = text.len().saturating_sub(8_000);
        let tail_start = (tail_start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[tail_start..].to_owned()
    }

    /// The high watermark (next offset to be written) of partitions `0..partitions` of `topic`.
    pub fn high_watermarks(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<BTreeMap<i32, i64>, HarnessError> {
        self.watermarks(topic, partitions, |(_, high)| high)
    }

    /// The low watermark (first offset still held) of partitions `0..partitions` of `topic`.
    pub fn low_watermarks(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<BTreeMap<i32, i64>, HarnessError> {
        self.watermarks(topic, partitions, |(low, _)| low)
    }

    /// `which` of the `(low, high)` watermarks of partitions `0..partitions` of `topic`.
    fn watermarks(
        &self,
        topic: &str,
        partitions: i32,
        which: fn((i64, i64)) -> i64,
    ) -> Result<BTreeMap<i32, i64>, HarnessError> {
        let consumer: BaseConsumer = self.client_config().create()?;
        (0..partitions)
            .map(|p| {
                let marks = consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?;
                Ok((p, which(marks)))
            })
            .collect()
    }

    /// Every message of partitions `0..partitions` of `topic` up to their current end, as
    /// `(offset, payload)` per partition.
    pub fn read_topic(&self, topic: &str, partitions: i32) -> Result<Messages, HarnessError> {
        let ends = self.high_watermarks(topic, partitions)?;
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", "tributary-testkit-reader")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let mut read: Messages = (0..partitions).map(|p| (p, Vec::new())).collect();
        let done = |read: &Messages| {
            (read.iter()).all(|(p, messages)| messages.last().map_or(0, |m| m.0 + 1) >= ends[p])
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&read) && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message?;
                let payload = message.payload().unwrap_or_default().to_vec();
                (read.entry(message.partition()).or_default()).push((message.offset(), payload));
            }
        }
        Ok(read)
    }

    /// Creates a topic with a name no other test uses and waits until metadata shows all its
    /// partitions. tansu does not create topics on first use.
    pub async fn create_topic(&self, partitions: i32) -> Result<String, HarnessError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let topic = format!(
            "test-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.create_named_topic(&topic, partitions).await?;
        Ok(topic)
    }

    /// Creates `topic` (for tests that need the same name on another broker, as after a cluster
    /// replacement) and waits until metadata shows all its partitions.
    pub async fn create_named_topic(
        &self,
        topic: &str,
        partitions: i32,
    ) -> Result<(), HarnessError> {
        self.create_topic_with(topic, partitions, &[]).await
    }

    /// Creates `topic` with topic `configs` (e.g. `("retention.ms", "20000")`).
    pub async fn create_topic_with(
        &self,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), HarnessError> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (key, value) in configs {
            new_topic = new_topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&new_topic], &options).await? {
            result.map_err(|(topic, code)| HarnessError::CreateTopic {
                topic,
                message: code.to_string(),
            })?;
        }
        self.wait_for_topic(topic, partitions)
    }

    fn wait_for_topic(&self, topic: &str, partitions: i32) -> Result<(), HarnessError> {
        let timeout = Duration::from_secs(15);
        let deadline = Instant::now() + timeout;
        let consumer: BaseConsumer = self.client_config().create()?;
        while Instant::now() < deadline {
            let visible = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(2))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()));
            if visible == Some(partitions as usize) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(HarnessError::TopicNotVisible {
            topic: topic.to_owned(),
            partitions,
            timeout,
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
