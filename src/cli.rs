//! The `tributary` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_schemas::config::{Config, ConfigError, LogFormat};
use tributary_schemas::duration::format_duration;

use tributary_batch::recompute::RunOptions;

use crate::batch;
use crate::config_diff;
use crate::demo;
use crate::generator;
use crate::serve::{self, Role};

/// Exact, fresh analytics over event streams: a Lambda architecture on Kafka, Parquet and DataFusion.
#[derive(Debug, Parser)]
#[command(name = "tributary", version)]
pub struct Cli {
    /// Configuration file (TOML). Without one, built-in defaults run a local demo; every key can also be
    /// set with TRIBUTARY_<SECTION>__<KEY> environment variables.
    #[arg(long, short, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the service: every role in one process by default (ARCHITECTURE.md §7).
    Serve {
        /// Roles to run, comma-separated: archiver, speed, serving, batch. A split speed layer
        /// runs speed nodes (`--roles speed --partitions 0-5`) and serving nodes (`--roles
        /// serving` with `[serving] speed_nodes`).
        #[arg(long, value_delimiter = ',', default_values_t = Role::ALL)]
        roles: Vec<Role>,
        /// The Kafka partitions the speed layer reads, e.g. `0-5` or `0,2,4-7` (default: all): a
        /// speed node of a split speed layer, whose states serving nodes read from
        /// `GET /v1/speed/{definition}`; its own answers say which partitions they miss.
        #[arg(long, value_parser = parse_partitions)]
        partitions: Option<Partitions>,
    },
    /// Batch views: recompute now, list versions, roll back.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Add history that never went through Kafka to the master dataset: each file (NDJSON, a JSON
    /// array of events, or Parquet with the event fields as columns) becomes a closed generation
    /// of its own, included by the next batch run; malformed events are quarantined, and a file
    /// whose content was backfilled before is refused. 0 when every file was added, 1 otherwise.
    Backfill {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Send a realistic synthetic clickstream to Kafka or to the push-ingest endpoint.
    Gen(generator::GenArgs),
    /// Run the local demo: a local broker, every role of `serve` and the generator, until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Access tokens for `[auth]`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// A Ballista cluster for `[batch] engine = "ballista"`: its scheduler and executors, with
    /// Tributary's functions and this configuration's lake.
    #[command(subcommand)]
    Ballista(BallistaCommand),
}

#[derive(Debug, Subcommand)]
enum BallistaCommand {
    /// The scheduler: recomputes submit their slices to it (`[batch] ballista_scheduler =
    /// "df://ADDR"`), executors register with it.
    Scheduler {
        /// Where it listens (gRPC).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
        /// The host executors and clients reach it at (default: the bind address).
        #[arg(long)]
        external_host: Option<String>,
    },
    /// An executor: runs slices of recomputes; each task slot has `[batch] memory_limit_mb`.
    Executor {
        /// The scheduler's address, HOST:PORT (a name or an IP).
        #[arg(long, value_parser = parse_host_port)]
        scheduler: (String, u16),
        /// Where it serves its results (Arrow Flight).
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: std::net::SocketAddr,
        /// Where it takes tasks from the scheduler (gRPC).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// The host the scheduler and clients reach it at (default: the bind address).
        #[arg(long)]
        external_host: Option<String>,
        /// Slices it runs at once (default: its cores).
        #[arg(long)]
        slots: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a fresh random token and the configuration lines that grant it its scopes (only the
    /// token's SHA-256 goes into the configuration).
    New {
        /// The token's name (the user name on the Postgres wire; in the audit log).
        name: String,
        /// read (queries, SQL, the wire), ingest (POST /v1/events), admin (recomputes); repeatable.
        #[arg(long = "scope", required = true, value_parser = ["read", "ingest", "admin"])]
        scopes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BatchCommand {
    /// Recompute views once and exit: 0 when done, 3 when another run holds the lake, 1 on failure.
    Run {
        /// Only this view (default: every configured view).
        #[arg(long)]
        view: Option<String>,
        /// Recompute from the whole master dataset, even where the live version could be
        /// extended with the new offsets only.
        #[arg(long)]
        full: bool,
        /// Let a full recompute run over a master dataset that `[lake] raw_retention` has cut:
        /// its versions miss the deleted events (refused without it).
        #[arg(long)]
        allow_partial_history: bool,
    },
    /// List every view's versions; `*` marks the live one.
    List,
    /// Make an earlier version of a view live again.
    Rollback { view: String, version: u64 },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and report every problem, each with its key.
    Check {
        /// The file to check (defaults to --config, else the built-in defaults).
        file: Option<PathBuf>,
    },
    /// Print the built-in default configuration, a starting point for your own.
    Defaults,
    /// What deploying NEW over OLD will do: whether the event schema change is one the lake's raw
    /// files can follow, and which views keep answering, are rebuilt, are new or removed. Exit 0
    /// when NEW can run on a lake OLD wrote, 2 when it cannot.
    Diff { old: PathBuf, new: PathBuf },
}

impl Cli {
    /// `[log] format` of the configuration this command runs with (text when it does not load:
    /// the command reports why).
    pub fn log_format(&self) -> LogFormat {
        Config::load(self.config.as_deref())
            .map(|config| config.log.format)
            .unwrap_or_default()
    }

    /// Whether this runs the demo, whose terminal shows a status line instead of logs.
    pub fn is_demo(&self) -> bool {
        matches!(self.command, Command::Demo(_))
    }

    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut out = std::io::stdout();
        match self.command {
            Command::Config(ConfigCommand::Check { file }) => {
                let file = file.or(self.config);
                match Config::load(file.as_deref()) {
                    Ok(config) => {
                        writeln!(out, "{}", summary(&config))?;
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(error @ ConfigError::Invalid(_)) => {
                        writeln!(out, "{error}")?;
                        Ok(ExitCode::from(2))
                    }
                    Err(error) => Err(error).context("configuration check failed"),
                }
            }
            Command::Config(ConfigCommand::Diff { old, new }) => {
                let old = Config::load(Some(old.as_path())).context("the OLD configuration")?;
                let new = Config::load(Some(new.as_path())).context("the NEW configuration")?;
                let (report, compatible) = config_diff::diff(&old, &new);
                write!(out, "{report}")?;
                Ok(match compatible {
                    true => ExitCode::SUCCESS,
                    false => ExitCode::from(2),
                })
            }
            Command::Config(ConfigCommand::Defaults) => {
                write!(out, "{}", tributary_schemas::config::DEFAULT_CONFIG)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Serve { roles, partitions } => {
                let config = Config::load(self.config.as_deref())?;
                serve::serve(&config, &roles, partitions.map(|p| p.0))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Batch(command) => {
                let config = Config::load(self.config.as_deref())?;
                match command {
                    BatchCommand::Run {
                        view,
                        full,
                        allow_partial_history,
                    } => batch::run(
                        &config,
                        view.as_deref(),
                        RunOptions {
                            full,
                            allow_partial_history,
                        },
                    ),
                    BatchCommand::List => batch::list(&config),
                    BatchCommand::Rollback { view, version } => {
                        batch::rollback(&config, &view, version)
                    }
                }
            }
            Command::Ballista(command) => {
                let config = Config::load(self.config.as_deref())?;
                match command {
                    BallistaCommand::Scheduler {
                        bind,
                        external_host,
                    } => crate::ballista::scheduler(&config, bind, external_host)?,
                    BallistaCommand::Executor {
                        scheduler,
                        bind,
                        grpc_port,
                        external_host,
                        slots,
                    } => {
                        let slots = slots.unwrap_or_else(|| {
                            std::thread::available_parallelism().map_or(1, |n| n.get())
                        });
                        let settings = tributary_batch::ballista::ExecutorSettings {
                            scheduler,
                            bind,
                            grpc_port,
                            external_host,
                            slots,
                            memory_per_slot: config.batch.memory_limit_mb << 20,
                        };
                        crate::ballista::executor(&config, settings)?;
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Backfill { files } => {
                let config = Config::load(self.config.as_deref())?;
                batch::backfill(&config, &files)
            }
            Command::Gen(args) => {
                let config = Config::load(self.config.as_deref())?;
                let stop = tributary_schemas::shutdown::Shutdown::default();
                let sent = generator::run(&config, &args, &stop, true)?;
                Ok(if sent.failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Command::Demo(args) => {
                let config = Config::load(self.config.as_deref())?;
                demo::run(config, self.config.is_some(), &args)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Token(TokenCommand::New { name, scopes }) => {
                write!(out, "{}", new_token(&name, &scopes)?)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// A fresh token (256 random bits from the OS) and the lines that configure it.
fn new_token(name: &str, scopes: &[String]) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && (name.chars()).all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        anyhow::bail!(
            "a token's name is letters, digits, '-', '_' and '.' (it is the user name on the Postgres wire)"
        );
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).context("reading the OS's random source")?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("trb_{token}");
    let sha256 = tributary_serving::auth::token_hash_hex(&token);
    let mut unique: Vec<&str> = scopes.iter().map(String::as_str).collect();
    unique.dedup();
    let scopes: Vec<String> = unique.iter().map(|s| format!("{s:?}")).collect();
    Ok(format!(
        "token: {token}

Keep the token in your secret store: it is shown once and stored nowhere. Add to the
configuration (only its SHA-256 is kept there):

[[auth.tokens]]
name = \"{name}\"
sha256 = \"{sha256}\"
scopes = [{scopes}]

HTTP: Authorization: Bearer {token}
Postgres wire: user {name}, password the token
",
        scopes = scopes.join(", ")
    ))
}

/// What a valid configuration amounts to, for people.
fn summary(config: &Config) -> String {
    let mut lines = vec![
        "configuration is valid".to_owned(),
        format!(
            "  kafka:   {} topic {}",
            config.kafka.brokers, config.kafka.topic
        ),
        format!("  lake:    {}", config.lake.url),
        format!(
            "  events:  time field {}, {} fields",
            config.events.time_field,
            config.events.fields.len()
        ),
        format!(
            "  batch:   every {}, epoch size {}",
            format_duration(config.batch.interval),
            config.batch.epoch_size
        ),
        format!("  serving: {}", config.serving.listen),
    ];
    for view in &config.views {
        let dimensions: Vec<&str> = view.dimensions.iter().map(|d| d.name.as_str()).collect();
        let metrics: Vec<String> = view
            .metrics
            .iter()
            .map(|m| format!("{} = {}", m.name, m.expression))
            .collect();
        lines.push(format!(
            "  view {}: per {} by [{}]: {}",
            view.name,
            view.granularity,
            dimensions.join(", "),
            metrics.join(", ")
        ));
    }
    lines.join("\n")
}

/// `HOST:PORT`, the host a name or an IP.
fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not HOST:PORT (e.g. ballista-scheduler:50050)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// `serve --partitions`: ascending, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions(pub Vec<i32>);

/// `0-5`, `3` or `0,2,4-7`.
fn parse_partitions(text: &str) -> Result<Partitions, String> {
    let mut partitions = std::collections::BTreeSet::new();
    for item in text.split(',').map(str::trim) {
        let number = |n: &str| {
            (n.trim().parse::<i32>().ok().filter(|p| *p >= 0))
                .ok_or_else(|| format!("{n:?} is not a partition number (0 or more)"))
        };
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (number(first)?, number(last)?),
            None => (number(item)?, number(item)?),
        };
        if first > last {
            return Err(format!("{item:?}: a range goes up (e.g. 0-5)"));
        }
        partitions.extend(first..=last);
    }
    Ok(Partitions(partitions.into_iter().collect()))
}

#[cfg(test)]
mod partition_tests {
    use super::parse_partitions;

    #[test]
    fn partitions_are_ranges_and_numbers() {
        assert_eq!(parse_partitions("0-5").unwrap().0, [0, 1, 2, 3, 4, 5]);
        assert_eq!(parse_partitions("4-5, 0,2").unwrap().0, [0, 2, 4, 5]);
        assert_eq!(parse_partitions("3").unwrap().0, [3]);
        assert!(
            parse_partitions("5-2")
                .unwrap_err()
                .contains("a range goes up")
        );
        assert!(
            parse_partitions("x")
                .unwrap_err()
                .contains("not a partition number")
        );
        assert!(parse_partitions("-1").is_err());
    }
}
