//! Configuration: built-in defaults, then a TOML file, then `TRIBUTARY_<SECTION>__<KEY>` environment
//! variables, validated once at load into a [`Config`] the layers receive explicitly.
//!
//! Layering rules: the `kafka`, `lake`, `batch` and `serving` sections merge key by key. `events` and
//! `views` describe one dataset and are taken together: a file that sets either replaces both, so
//! the demo's views never end up over someone else's fields. Environment variables override scalar
//! keys of the sections (`TRIBUTARY_EVENTS__TIME_FIELD` included, views excluded); a value is read as
//! the type the key has (integer keys parse as integers, everything else is a string).
//!
//! Validation collects every problem, each naming its key (`views[1].metrics.users`) and saying what
//! is wrong, so `tributary config check` reports them all at once.
//!
//! One file past the usual size on purpose: every section's settings, defaults and checks read as
//! one schema (the view definitions, the largest part, are `config/view.rs`).

mod auth;
mod view;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value as Toml};

use crate::duration::{format_duration, parse_duration};
use crate::event::{EventSchema, FieldDef, FieldType};
pub use auth::{AuthConfig, RowFilter, Scope, TokenDef, parse_sha256};
pub use view::{
    FieldRef, LATE_METRIC, MetricDef, MetricFunction, TIME_COLUMN, ViewDef, ViewFilter, ViewSpec,
};

/// The built-in defaults: a complete local demo over a realistic clickstream.
pub const DEFAULT_CONFIG: &str = include_str!("config/defaults.toml");
const ENV_PREFIX: &str = "TRIBUTARY_";
const MERGED_SECTIONS: [&str; 7] = [
    "kafka", "lake", "archiver", "batch", "serving", "auth", "log",
];

/// How the process writes its logs (`[log] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, with its span's fields (for log pipelines).
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeConfig {
    /// A local directory, `file:///abs/path`, or `s3://bucket/prefix` (resolved by the layers with
    /// object_store).
    pub url: String,
    /// `[lake] raw_retention`: raw files whose events are all older than this, and which every
    /// kept version covers, are deleted (`None`, the default `""`: kept forever).
    pub raw_retention: Option<Duration>,
}

/// When the archiver rolls a raw file: small enough to bound memory and delay, large enough to avoid
/// a lake of tiny files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverConfig {
    pub max_file_rows: usize,
    pub max_file_age: Duration,
    /// How long a stop waits for the archiver to write what it buffered (the lake may be down);
    /// past it, the buffer is left to Kafka and archived again at the next start.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    pub interval: Duration,
    /// A run recomputes everything from the master dataset at least this often; runs between
    /// merge the live version with the states of the new offsets only.
    pub full_every: Duration,
    pub epoch_size: u64,
    pub keep_versions: usize,
    /// DataFusion's memory pool for a recompute; past it, sorts and aggregations spill to disk.
    pub memory_limit_mb: usize,
    /// Threads of the recompute's own runtime; 0 means half the cores (at least one), so that a big
    /// recompute never takes the cores the speed layer and HTTP server need. With the Ballista
    /// engine: the time slices submitted to the cluster at once.
    pub threads: usize,
    /// Where the recompute's plans run.
    pub engine: BatchEngine,
}

/// `[batch] engine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEngine {
    /// DataFusion in the process running the recompute.
    Local,
    /// An Apache DataFusion Ballista cluster whose scheduler is at `scheduler`
    /// (`df://host:port`, `[batch] ballista_scheduler`), its executors started by
    /// `tributary ballista executor`.
    Ballista { scheduler: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingConfig {
    pub listen: SocketAddr,
    /// The Postgres wire listener (BI tools); `None` (`pg_listen = ""`) runs none.
    pub pg_listen: Option<SocketAddr>,
    /// TLS for both listeners: PEM certificate chain and private key (`None`: plaintext).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A live batch version up to this size is held in memory; a bigger one is scanned from Parquet.
    pub memory_budget_mb: usize,
    /// Merged batch states of repeated query shapes are kept up to this size (0: none are).
    pub partial_cache_mb: usize,
    /// Longest a query (structured or SQL) may run before it is cancelled.
    pub query_timeout: Duration,
    /// Most rows one reply carries; past it the reply is cut and says so (`meta.truncated`).
    pub max_rows: usize,
    /// How often the live version pointers (`_current`) are checked for a newly published version.
    pub refresh: Duration,
    /// Largest `POST /v1/events` body, before and after gzip decompression.
    pub ingest_max_body_mb: usize,
    /// Longest push ingest waits for Kafka to acknowledge a request's events.
    pub ingest_timeout: Duration,
    /// Most messages the speed layer may be behind the broker on any partition while `/readyz`
    /// says ready and answers say `meta.complete`.
    pub ready_max_lag: u64,
    /// How long the speed layer may make no progress on a partition it is behind on before it
    /// counts as stalled (not ready, answers incomplete) and its consumer is recreated.
    pub stall_after: Duration,
    /// How long after it was taken a snapshot (`meta.snapshot`) still answers.
    pub snapshot_ttl: Duration,
    /// Most memory the speed rows held by snapshots may take; past it the oldest are dropped.
    pub snapshot_max_mb: usize,
    /// Memory of one query's operators (aggregations, sorts, joins); past it the query fails.
    pub query_memory_mb: usize,
    /// Queries (structured, SQL, the wire) running at once; past it new ones get a 429.
    pub max_concurrent_queries: usize,
    /// The speed nodes of a split speed layer (`http://host:port`, ARCHITECTURE.md §8): when set,
    /// this serving node merges their states instead of reading Kafka itself.
    pub speed_nodes: Vec<String>,
    /// How often a serving node asks each speed node for what changed.
    pub speed_poll: Duration,
    /// A speed node not answered for this long is down: its partitions are missing from answers.
    pub speed_node_timeout: Duration,
    /// The bearer token a serving node sends to the speed nodes (scope `admin` there when their
    /// `[auth]` is on; "" sends none).
    pub speed_token: String,
    /// How long the speed layer keeps the epochs a new batch version covers after it went live
    /// here, so serving nodes loading that version later still find them on a speed node.
    pub speed_drop_after: Duration,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub lake: LakeConfig,
    pub events: EventSchema,
    pub views: Vec<ViewDef>,
    pub archiver: ArchiverConfig,
    pub batch: BatchConfig,
    pub serving: ServingConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

/// One thing wrong with a configuration: where, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not valid TOML")]
    Syntax {
        origin: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The problems found, when the configuration parsed but did not validate.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

impl Config {
    /// Loads the built-in defaults, overlaid by `file` when given, then by the process environment.
    ///
    /// Without a file, the text of the variable [`CONFIG_TEXT_VAR`] is taken as the file, if set:
    /// a container platform can hand the whole configuration (tokens included, which no
    /// `TRIBUTARY_<SECTION>__<KEY>` variable can set) from a secret without mounting a file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let text = file
            .map(|path| {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let origin = file.map(|p| p.display().to_string());
        let from_env = std::env::var(CONFIG_TEXT_VAR)
            .ok()
            .filter(|_| file.is_none());
        let source = match &from_env {
            Some(text) => Some((text.as_str(), CONFIG_TEXT_VAR)),
            None => text.as_deref().zip(origin.as_deref()),
        };
        Self::from_sources(source, std::env::vars())
    }

    /// Defaults overlaid by `file` (its text and a name for messages) and `env` variables.
    pub fn from_sources(
        file: Option<(&str, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse = |text: &str, origin: &str| {
            text.parse::<Table>().map_err(|source| ConfigError::Syntax {
                origin: origin.to_owned(),
                source: Box::new(source),
            })
        };
        let mut merged = parse(DEFAULT_CONFIG, "the built-in defaults")?;
        let mut problems = Vec::new();
        if let Some((text, origin)) = file {
            overlay_file(&mut merged, parse(text, origin)?, &mut problems);
        }
        // A dataset of a file replaces the defaults' whole, `late_after` with it: keep its default
        // there when the file leaves it out (and so overridable by the environment like any key).
        if let Some(Toml::Table(events)) = merged.get_mut("events") {
            events
                .entry("late_after")
                .or_insert_with(|| Toml::String(format_duration(DEFAULT_LATE_AFTER)));
        }
        overlay_env(&mut merged, env, &mut problems);
        let config = validate(&merged, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }

    pub fn view(&self, name: &str) -> Option<&ViewDef> {
        self.views.iter().find(|v| v.name == name)
    }
}

fn problem(problems: &mut Vec<Problem>, key: impl Into<String>, message: impl Into<String>) {
    problems.push(Problem {
        key: key.into(),
        message: message.into(),
    });
}

fn overlay_file(merged: &mut Table, file: Table, problems: &mut Vec<Problem>) {
    if file.contains_key("events") || file.contains_key("views") {
        merged.remove("events");
        merged.remove("views");
    }
    for (section, value) in file {
        match (section.as_str(), value) {
            (name, Toml::Table(keys)) if MERGED_SECTIONS.contains(&name) => {
                let target = merged
                    .entry(name)
                    .or_insert_with(|| Toml::Table(Table::new()));
                if let Toml::Table(target) = target {
                    target.extend(keys);
                }
            }
            ("events" | "views", value) => {
                merged.insert(section, value);
            }
            (name, _) if MERGED_SECTIONS.contains(&name) => {
                problem(problems, name, "must be a table ([section])");
            }
            (name, _) => problem(
                problems,
                name,
                "unknown section (expected kafka, lake, events, views, archiver, batch, serving, auth or log)",
            ),
        }
    }
}

fn overlay_env(
    merged: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<Problem>,
) {
    for (name, value) in env {
        let Some((section, key)) = name
            .strip_prefix(ENV_PREFIX)
            .and_then(|rest| rest.split_once("__"))
        else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let Some(target) = merged.get_mut(&section).and_then(Toml::as_table_mut) else {
            problem(
                problems,
                name,
                format!("no section [{section}] to override"),
            );
            continue;
        };
        let parsed = match target.get(&key) {
            Some(Toml::Integer(_)) => value
                .trim()
                .parse()
                .map(Toml::Integer)
                .map_err(|_| format!("{value:?} is not an integer")),
            Some(Toml::Boolean(_)) => value
                .trim()
                .parse()
                .map(Toml::Boolean)
                .map_err(|_| format!("{value:?} is not true or false")),
            Some(Toml::String(_)) => Ok(Toml::String(value)),
            // A list from the environment: comma-separated.
            Some(Toml::Array(_)) => Ok(Toml::Array(
                (value.split(',').map(str::trim))
                    .filter(|item| !item.is_empty())
                    .map(|item| Toml::String(item.to_owned()))
                    .collect(),
            )),
            Some(_) => Err(format!(
                "{section}.{key} cannot be set from the environment"
            )),
            None => Err(format!(
                "no key {section}.{key} to override (overrides are TRIBUTARY_<SECTION>__<KEY>)"
            )),
        };
        match parsed {
            Ok(parsed) => {
                target.insert(key, parsed);
            }
            Err(message) => problem(problems, name, message),
        }
    }
}

/// Reads the keys of one table, recording a problem for each missing, mistyped or unknown key.
struct Section<'a> {
    path: String,
    table: &'a Table,
    used: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(
        path: impl Into<String>,
        value: Option<&'a Toml>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let path = path.into();
        match value {
            Some(Toml::Table(table)) => Some(Self {
                path,
                table,
                used: Vec::new(),
            }),
            Some(_) => {
                problem(problems, path, "must be a table");
                None
            }
            None => {
                problem(problems, path, "is missing");
                None
            }
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Toml> {
        self.used.push(key);
        self.table.get(key)
    }

    fn string(&mut self, key: &'static str, problems: &mut Vec<Problem>) -> Option<String> {
        match self.get(key) {
            Some(Toml::String(s)) => Some(s.clone()),
            Some(_) => {
                problem(problems, self.key(key), "must be a string");
                None
            }
            None => {
                problem(problems, self.key(key), "is missing");
                None
            }
        }
    }

    fn optional_string(
        &mut self,
        key: &'static str,
        problems: &mut Vec<Problem>,
    ) -> Option<String> {
        if self.table.contains_key(key) {
            self.string(key, problems)
        } else {
            self.used.push(key);
            None
        }
    }

    fn positive_integer(&mut self, key: &'static str, problems: &mut Vec<Problem>) -> Option<u64> {
        match self.get(key) {
            Some(Toml::Integer(i)) if *i > 0 => Some(*i as u64),
            Some(_) => {
                problem(problems, self.key(key), "must be a positive integer");
                None
            }
            None => {
                problem(problems, self.key(key), "is missing");
                None
            }
        }
    }

    fn non_negative_integer(
        &mut self,
        key: &'static str,
        problems: &mut Vec<Problem>,
    ) -> Option<u64> {
        match self.get(key) {
            Some(Toml::Integer(i)) if *i >= 0 => Some(*i as u64),
            Some(_) => {
                problem(problems, self.key(key), "must be an integer >= 0");
                None
            }
            None => {
                problem(problems, self.key(key), "is missing");
                None
            }
        }
    }

    fn boolean(&mut self, key: &'static str, problems: &mut Vec<Problem>) -> Option<bool> {
        match self.get(key) {
            Some(Toml::Boolean(b)) => Some(*b),
            Some(_) => {
                problem(problems, self.key(key), "must be true or false");
                None
            }
            None => {
                problem(problems, self.key(key), "is missing");
                None
            }
        }
    }

    fn string_list(
        &mut self,
        key: &'static str,
        problems: &mut Vec<Problem>,
    ) -> Option<Vec<String>> {
        let list = match self.get(key) {
            Some(Toml::Array(items)) => items,
            Some(_) => {
                problem(problems, self.key(key), "must be a list of strings");
                return None;
            }
            None => {
                problem(problems, self.key(key), "is missing");
                return None;
            }
        };
        let strings: Option<Vec<String>> = (list.iter())
            .map(|item| item.as_str().map(str::to_owned))
            .collect();
        if strings.is_none() {
            problem(problems, self.key(key), "must be a list of strings");
        }
        strings
    }

    fn duration(&mut self, key: &'static str, problems: &mut Vec<Problem>) -> Option<Duration> {
        let text = self.string(key, problems)?;
        parse_duration(&text)
            .map_err(|message| problem(problems, self.key(key), message))
            .ok()
    }

    /// Records every key that no reader asked for.
    fn finish(self, problems: &mut Vec<Problem>) {
        for key in self.table.keys() {
            if !self.used.contains(&key.as_str()) {
                let known = self.used.join(", ");
                problem(
                    problems,
                    self.key(key),
                    format!("unknown key (known keys: {known})"),
                );
            }
        }
    }
}

fn validate(merged: &Table, problems: &mut Vec<Problem>) -> Option<Config> {
    let kafka = validate_kafka(merged, problems);
    let lake = validate_lake(merged, problems);
    let archiver = validate_archiver(merged, problems);
    let batch = validate_batch(merged, problems);
    let serving = validate_serving(merged, problems);
    let (events, late_after) = validate_events(merged, problems).unzip();
    let views = events
        .as_ref()
        .zip(late_after)
        .and_then(|(events, late_after)| {
            view::validate_views(merged.get("views"), events, late_after, problems)
        });
    let auth = auth::validate_auth(merged, views.as_deref(), problems);
    let log = validate_log(merged, problems);
    Some(Config {
        kafka: kafka?,
        lake: lake?,
        events: events?,
        views: views?,
        archiver: archiver?,
        batch: batch?,
        serving: serving?,
        auth: auth?,
        log: log?,
    })
}

fn validate_log(merged: &Table, problems: &mut Vec<Problem>) -> Option<LogConfig> {
    let mut section = Section::new("log", merged.get("log"), problems)?;
    let format = section.string("format", problems);
    section.finish(problems);
    let format = match format?.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            problem(
                problems,
                "log.format",
                format!("{other:?} is not a log format (text or json)"),
            );
            return None;
        }
    };
    Some(LogConfig { format })
}

fn validate_kafka(merged: &Table, problems: &mut Vec<Problem>) -> Option<KafkaConfig> {
    let mut section = Section::new("kafka", merged.get("kafka"), problems)?;
    let brokers = section.string("brokers", problems);
    let topic = section.string("topic", problems);
    let dlq_topic = section.optional_string("dlq_topic", problems);
    section.finish(problems);
    if brokers
        .as_deref()
        .is_some_and(|b| b.split(',').any(|broker| broker.trim().is_empty()))
    {
        problem(
            problems,
            "kafka.brokers",
            "must list host:port pairs separated by commas",
        );
    }
    for (key, name) in [("kafka.topic", &topic), ("kafka.dlq_topic", &dlq_topic)] {
        // An empty DLQ topic means "no DLQ"; an empty topic is an error.
        let checked = name
            .as_deref()
            .filter(|n| !n.is_empty() || key == "kafka.topic");
        if let Some(Err(message)) = checked.map(check_topic_name) {
            problem(problems, key, message);
        }
    }
    if topic.is_some() && topic == dlq_topic {
        problem(problems, "kafka.dlq_topic", "must differ from kafka.topic");
    }
    Some(KafkaConfig {
        brokers: brokers?,
        topic: topic?,
        dlq_topic: dlq_topic.filter(|t| !t.is_empty()),
    })
}

/// Kafka's own rule for topic names.
fn check_topic_name(name: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty()
        || name.len() > 249
        || name == "."
        || name == ".."
        || !name.chars().all(legal)
    {
        return Err(format!(
            "{name:?} is not a valid Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"
        ));
    }
    Ok(())
}

fn validate_lake(merged: &Table, problems: &mut Vec<Problem>) -> Option<LakeConfig> {
    let mut section = Section::new("lake", merged.get("lake"), problems)?;
    let url = section.string("url", problems);
    let raw_retention = section.optional_string("raw_retention", problems);
    section.finish(problems);
    let raw_retention = match raw_retention.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match parse_duration(text) {
            Ok(retention) => Some(retention),
            Err(message) => {
                problem(problems, "lake.raw_retention", message);
                return None;
            }
        },
    };
    let url = url?;
    match url.split_once("://") {
        None if !url.trim().is_empty() => {}
        Some(("file", path)) if path.starts_with('/') => {}
        Some(("s3", rest)) if !rest.is_empty() && !rest.starts_with('/') => {}
        Some(("memory", _)) => {}
        _ => {
            problem(
                problems,
                "lake.url",
                format!(
                    "{url:?} is not a lake location (write a directory, file:///absolute/path or s3://bucket/prefix)"
                ),
            );
            return None;
        }
    }
    Some(LakeConfig { url, raw_retention })
}

fn validate_archiver(merged: &Table, problems: &mut Vec<Problem>) -> Option<ArchiverConfig> {
    let mut section = Section::new("archiver", merged.get("archiver"), problems)?;
    let max_file_rows = section.positive_integer("max_file_rows", problems);
    let max_file_age = section.duration("max_file_age", problems);
    let shutdown_timeout = section.duration("shutdown_timeout", problems);
    section.finish(problems);
    if max_file_age.is_some_and(|age| age < Duration::from_millis(10)) {
        problem(problems, "archiver.max_file_age", "must be at least 10ms");
    }
    Some(ArchiverConfig {
        max_file_rows: usize::try_from(max_file_rows?).ok()?,
        max_file_age: max_file_age?,
        shutdown_timeout: shutdown_timeout?,
    })
}

fn validate_batch(merged: &Table, problems: &mut Vec<Problem>) -> Option<BatchConfig> {
    let mut section = Section::new("batch", merged.get("batch"), problems)?;
    let interval = section.duration("interval", problems);
    let full_every = section.duration("full_every", problems);
    let epoch_size = section.positive_integer("epoch_size", problems);
    let keep_versions = section.positive_integer("keep_versions", problems);
    let memory_limit_mb = section.positive_integer("memory_limit_mb", problems);
    let threads = section.non_negative_integer("threads", problems);
    let engine = section.string("engine", problems);
    let scheduler = section.string("ballista_scheduler", problems);
    section.finish(problems);
    if interval.is_some_and(|i| i < Duration::from_secs(1)) {
        problem(problems, "batch.interval", "must be at least 1s");
    }
    let engine = match (engine?.as_str(), scheduler?) {
        ("local", _) => BatchEngine::Local,
        ("ballista", scheduler) => {
            let valid = (scheduler.strip_prefix("df://"))
                .and_then(|rest| rest.rsplit_once(':'))
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                problem(
                    problems,
                    "batch.ballista_scheduler",
                    format!("{scheduler:?} is not a scheduler address such as df://10.0.0.7:50050"),
                );
                return None;
            }
            BatchEngine::Ballista { scheduler }
        }
        (other, _) => {
            problem(
                problems,
                "batch.engine",
                format!("{other:?} is not an engine (\"local\" or \"ballista\")"),
            );
            return None;
        }
    };
    Some(BatchConfig {
        interval: interval?,
        full_every: full_every?,
        epoch_size: epoch_size?,
        keep_versions: usize::try_from(keep_versions?).ok()?,
        memory_limit_mb: usize::try_from(memory_limit_mb?).ok()?,
        threads: usize::try_from(threads?).ok()?,
        engine,
    })
}

fn validate_serving(merged: &Table, problems: &mut Vec<Problem>) -> Option<ServingConfig> {
    let mut section = Section::new("serving", merged.get("serving"), problems)?;
    let listen = section.string("listen", problems);
    let pg_listen = section.string("pg_listen", problems);
    let tls_cert = section.string("tls_cert", problems);
    let tls_key = section.string("tls_key", problems);
    let memory_budget_mb = section.non_negative_integer("memory_budget_mb", problems);
    let partial_cache_mb = section.non_negative_integer("partial_cache_mb", problems);
    let query_timeout = section.duration("query_timeout", problems);
    let max_rows = section.positive_integer("max_rows", problems);
    let refresh = section.duration("refresh", problems);
    let ingest_max_body_mb = section.positive_integer("ingest_max_body_mb", problems);
    let ingest_timeout = section.duration("ingest_timeout", problems);
    let ready_max_lag = section.non_negative_integer("ready_max_lag", problems);
    let stall_after = section.duration("stall_after", problems);
    let snapshot_ttl = section.duration("snapshot_ttl", problems);
    let snapshot_max_mb = section.non_negative_integer("snapshot_max_mb", problems);
    let query_memory_mb = section.positive_integer("query_memory_mb", problems);
    let max_concurrent_queries = section.positive_integer("max_concurrent_queries", problems);
    let speed_nodes = section.string_list("speed_nodes", problems);
    let speed_poll = section.duration("speed_poll", problems);
    let speed_node_timeout = section.duration("speed_node_timeout", problems);
    let speed_token = section.string("speed_token", problems);
    let speed_drop_after = section.duration("speed_drop_after", problems);
    section.finish(problems);
    if speed_poll.is_some_and(|p| p < Duration::from_millis(10)) {
        problem(problems, "serving.speed_poll", "must be at least 10ms");
    }
    if let (Some(poll), Some(timeout)) = (speed_poll, speed_node_timeout)
        && timeout <= poll
    {
        problem(
            problems,
            "serving.speed_node_timeout",
            format!("must be longer than speed_poll ({})", format_duration(poll)),
        );
    }
    let speed_nodes = speed_nodes.and_then(|nodes| {
        let bad: Vec<&String> = (nodes.iter())
            .filter(|n| !(n.starts_with("http://") || n.starts_with("https://")) || n.len() < 10)
            .collect();
        if bad.is_empty() {
            return Some(nodes);
        }
        problem(
            problems,
            "serving.speed_nodes",
            format!("{bad:?}: a speed node is a URL such as http://10.0.0.5:8080"),
        );
        None
    });
    if stall_after.is_some_and(|t| t < Duration::from_secs(1)) {
        problem(
            problems,
            "serving.stall_after",
            "must be at least 1s (the broker's end is checked every second)",
        );
    }
    if refresh.is_some_and(|r| r < Duration::from_millis(10)) {
        problem(problems, "serving.refresh", "must be at least 10ms");
    }
    if query_timeout.is_some_and(|t| t < Duration::from_millis(1)) {
        problem(problems, "serving.query_timeout", "must be at least 1ms");
    }
    if ingest_timeout.is_some_and(|t| t < Duration::from_millis(100)) {
        problem(problems, "serving.ingest_timeout", "must be at least 100ms");
    }
    // `Some(None)`: off; `None`: not an address.
    let pg_listen = pg_listen.and_then(|address| match address.as_str() {
        "" => Some(None),
        address => match address.parse() {
            Ok(address) => Some(Some(address)),
            Err(_) => {
                problem(
                    problems,
                    "serving.pg_listen",
                    format!(
                        "{address:?} is not an address such as 127.0.0.1:5433 (\"\" turns the Postgres wire off)"
                    ),
                );
                None
            }
        },
    });
    let tls = match (tls_cert?.as_str(), tls_key?.as_str()) {
        ("", "") => None,
        ("", _) | (_, "") => {
            problem(
                problems,
                "serving.tls_cert",
                "tls_cert and tls_key go together: set both (PEM files) or neither",
            );
            return None;
        }
        (cert, key) => Some((PathBuf::from(cert), PathBuf::from(key))),
    };
    let listen = listen?;
    match listen.parse() {
        Ok(listen) => Some(ServingConfig {
            listen,
            pg_listen: pg_listen?,
            tls,
            memory_budget_mb: usize::try_from(memory_budget_mb?).ok()?,
            partial_cache_mb: usize::try_from(partial_cache_mb?).ok()?,
            query_timeout: query_timeout?,
            max_rows: usize::try_from(max_rows?).ok()?,
            refresh: refresh?,
            ingest_max_body_mb: usize::try_from(ingest_max_body_mb?).ok()?,
            ingest_timeout: ingest_timeout?,
            ready_max_lag: ready_max_lag?,
            stall_after: stall_after?,
            snapshot_ttl: snapshot_ttl?,
            snapshot_max_mb: usize::try_from(snapshot_max_mb?).ok()?,
            query_memory_mb: usize::try_from(query_memory_mb?).ok()?,
            max_concurrent_queries: usize::try_from(max_concurrent_queries?).ok()?,
            speed_nodes: speed_nodes?,
            speed_poll: speed_poll?,
            speed_node_timeout: speed_node_timeout?,
            speed_token: speed_token?,
            speed_drop_after: speed_drop_after?,
        }),
        Err(_) => {
            problem(
                problems,
                "serving.listen",
                format!("{listen:?} is not an address such as 127.0.0.1:8080"),
            );
            None
        }
    }
}

/// Configured field names: an identifier that does not start with `_` (reserved for the Kafka
/// metadata columns of the master dataset).
fn check_field_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 128 {
        return Err(format!(
            "{name:?} is not a valid field name (a letter, then letters, digits or '_'; names starting with '_' are reserved)"
        ));
    }
    Ok(())
}

/// A variable holding the whole configuration file's text (see [`Config::load`]).
pub const CONFIG_TEXT_VAR: &str = "TRIBUTARY_CONFIG_TOML";

/// `[events] late_after` when not configured: an event is late when Kafka got it more than a minute
/// after its event time.
pub const DEFAULT_LATE_AFTER: Duration = Duration::from_secs(60);

/// The event schema and `late_after` (which the views' built-in `late` metric reads).
fn validate_events(merged: &Table, problems: &mut Vec<Problem>) -> Option<(EventSchema, Duration)> {
    let mut section = Section::new("events", merged.get("events"), problems)?;
    let time_field = section.string("time_field", problems);
    let late_after = section.duration("late_after", problems);
    let fields = section.get("fields");
    section.finish(problems);
    let late_after = late_after?;
    let time_field = time_field?;
    if let Err(message) = check_field_name(&time_field) {
        problem(problems, "events.time_field", message);
    }
    let Some(Toml::Table(fields)) = fields else {
        problem(problems, "events.fields", "must be a table of name = type");
        return None;
    };
    let mut defs = Vec::with_capacity(fields.len());
    for (name, ty) in fields {
        let key = format!("events.fields.{name}");
        if let Err(message) = check_field_name(name) {
            problem(problems, &key, message);
        } else if *name == time_field {
            problem(
                problems,
                &key,
                "is the time field; list only the other fields here",
            );
        }
        let types = FieldType::ALL.map(FieldType::name).join(", ");
        match ty.as_str().and_then(FieldType::parse) {
            Some(ty) => defs.push(FieldDef {
                name: name.clone(),
                ty,
            }),
            None => problem(
                problems,
                key,
                format!("unknown field type {ty} (expected one of {types})"),
            ),
        }
    }
    let events = EventSchema {
        time_field,
        fields: defs,
    };
    Some((events, late_after))
}

#[cfg(test)]
mod tests;
