//! `tributary batch run | list | rollback` and `tributary backfill`: the batch layer from the
//! command line, for operators and for schedulers (cron, Kubernetes CronJob, ECS scheduled tasks).
//!
//! Exit codes of `batch run`: 0 when every view was published or is unchanged, 3 when another run
//! holds the lake (nothing was done; try again later), 1 on any other failure.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tributary_batch::backfill;
use tributary_batch::recompute::lock::LockError;
use tributary_batch::recompute::progress::for_humans;
use tributary_batch::recompute::{
    BatchError, BatchSettings, Outcome, RecomputeService, RunOptions, ViewRun,
};
use tributary_schemas::blame::chain;
use tributary_schemas::config::Config;
use tributary_schemas::lake::schemas::SchemaError;
use tributary_schemas::lake::{Boundary, Lake};

/// Exit code of `batch run` when another run holds the lake.
pub const EXIT_ALREADY_RUNNING: u8 = 3;
/// `batch run`'s exit code when a full run's check found the incremental line diverging.
pub const EXIT_DIVERGED: u8 = 4;

/// Opens the lake named by the configuration.
pub fn open_lake(config: &Config) -> anyhow::Result<Lake> {
    Lake::open(&config.lake.url).context("opening the lake")
}

/// [`open_lake`], refusing a configuration whose event schema cannot read the raw files already
/// in the lake (see `tributary_schemas::lake::schemas`): every command that reads or writes the
/// lake starts here. A lake that cannot be reached now is left to the roles, which retry; the
/// archiver checks again before it writes.
pub fn open_checked_lake(config: &Config) -> anyhow::Result<Lake> {
    let lake = open_lake(config)?;
    let checked = runtime()?.block_on(lake.check_event_schema(&config.kafka.topic, &config.events));
    match checked {
        Ok(evolution) => {
            for change in &evolution.changes {
                tracing::info!(%change, "the configured event schema changes the lake's; the archiver records it when it starts");
            }
            Ok(lake)
        }
        Err(error @ SchemaError::Incompatible { .. }) => Err(error.into()),
        Err(SchemaError::Lake(error)) => {
            tracing::warn!(error = %chain(&error), "cannot read the lake's event schema history now; the archiver checks it before it writes");
            Ok(lake)
        }
    }
}

/// The recompute service over `lake`.
pub fn open(config: &Config, lake: Lake) -> anyhow::Result<RecomputeService> {
    RecomputeService::new(
        BatchSettings::from_config(config),
        config.events.clone(),
        config.views.clone(),
        lake,
    )
    .context("starting the batch layer")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn boundary_text(boundary: &Boundary) -> String {
    let parts: Vec<String> = boundary
        .0
        .iter()
        .map(|(p, w)| format!("{p}: {w}"))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// One line per view, for people and logs.
pub fn describe(run: &ViewRun) -> String {
    match &run.outcome {
        Outcome::Published(manifest) => format!(
            "{}: published version {} ({} rows in {} files from {} raw rows in {} time slices, {:.3}s, peak memory {} MiB, spilled {} MiB; W = {})",
            run.view,
            manifest.version,
            manifest.row_count,
            manifest.files.len(),
            run.rows_read,
            run.slices,
            run.elapsed.as_secs_f64(),
            run.peak_memory_bytes >> 20,
            run.spilled_bytes >> 20,
            boundary_text(&manifest.boundary)
        ),
        Outcome::Unchanged(manifest) => format!(
            "{}: unchanged, version {} already covers W = {}",
            run.view,
            manifest.version,
            boundary_text(&manifest.boundary)
        ),
        Outcome::NothingArchived => format!(
            "{}: nothing to compute yet (no partition has archived a whole epoch)",
            run.view
        ),
    }
}

pub fn run(config: &Config, view: Option<&str>, options: RunOptions) -> anyhow::Result<ExitCode> {
    let batch = open(config, open_checked_lake(config)?)?;
    let result = runtime()?.block_on(batch.run_as(view, for_humans(), options));
    let mut out = std::io::stdout().lock();
    match result {
        Ok(runs) => {
            for run in &runs {
                writeln!(out, "{}", describe(run))?;
            }
            let diverged: Vec<&str> = (runs.iter().filter(|r| r.diverged))
                .map(|r| r.view.as_str())
                .collect();
            if !diverged.is_empty() {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: the full recompute of {} counts other events than its live version extended by the same offsets (an incremental run would have been wrong; the full version is published); please report it",
                    diverged.join(", ")
                );
                return Ok(ExitCode::from(EXIT_DIVERGED));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ (BatchError::Lock(LockError::Held(_)) | BatchError::AlreadyRunning)) => {
            let _ = writeln!(std::io::stderr(), "error: {error}");
            Ok(ExitCode::from(EXIT_ALREADY_RUNNING))
        }
        Err(error @ BatchError::PartialHistory { .. }) => {
            let _ = writeln!(std::io::stderr(), "error: {error}");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error).context("the recompute failed"),
    }
}

/// `tributary backfill FILE...`: each file in turn; a refused or failed one is reported and the
/// others still go in.
pub fn backfill(config: &Config, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let lake = open_checked_lake(config)?;
    let runtime = runtime()?;
    let terminal = std::io::stderr().is_terminal();
    let mut failed = false;
    for file in files {
        let name = file.display().to_string();
        let content = match std::fs::read(file) {
            Ok(content) => content,
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "error: cannot read {name}: {error}");
                failed = true;
                continue;
            }
        };
        let mut progress = |done: u64, total: u64| {
            if terminal {
                let _ = write!(std::io::stderr(), "\r{name}: {done}/{total} events");
            }
        };
        let result = runtime.block_on(backfill::backfill(
            &lake,
            &config.kafka.topic,
            &config.events,
            config.archiver.max_file_rows,
            &name,
            content,
            &mut progress,
        ));
        if terminal {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
        match result {
            Ok(done) => {
                let reasons: Vec<String> = (done.reasons.iter())
                    .map(|(code, n)| format!("{code}: {n}"))
                    .collect();
                let quarantined = match reasons.is_empty() {
                    true => String::new(),
                    false => format!(" ({})", reasons.join(", ")),
                };
                writeln!(
                    std::io::stdout(),
                    "{name}: {} events added as generation {}, {} quarantined{quarantined}; the next batch run includes them",
                    done.events,
                    done.generation,
                    done.quarantined
                )?;
            }
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "error: {}", chain(&error));
                failed = true;
            }
        }
    }
    Ok(match failed {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

pub fn list(config: &Config) -> anyhow::Result<ExitCode> {
    let batch = open(config, open_checked_lake(config)?)?;
    let views = runtime()?.block_on(batch.list())?;
    let mut out = std::io::stdout().lock();
    for view in views {
        writeln!(out, "{}", view.view)?;
        if view.versions.is_empty() {
            writeln!(out, "  no version yet")?;
        }
        for manifest in view.versions.iter().rev() {
            let live = if view.current == Some(manifest.version) {
                "*"
            } else {
                " "
            };
            writeln!(
                out,
                "  {live} {:>4}  {}  {:>9} rows  {:>3} files  W = {}",
                manifest.version,
                manifest.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                manifest.row_count,
                manifest.files.len(),
                boundary_text(&manifest.boundary)
            )?;
        }
        if !view.incomplete.is_empty() {
            let numbers: Vec<String> = view.incomplete.iter().map(u64::to_string).collect();
            writeln!(
                out,
                "    incomplete (running, or left by a crashed run; collected by the next run): {}",
                numbers.join(", ")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(config: &Config, view: &str, version: u64) -> anyhow::Result<ExitCode> {
    let batch = open(config, open_checked_lake(config)?)?;
    let manifest = runtime()?.block_on(batch.rollback(view, version))?;
    writeln!(
        std::io::stdout(),
        "{view}: version {} is live again (W = {})",
        manifest.version,
        boundary_text(&manifest.boundary)
    )?;
    Ok(ExitCode::SUCCESS)
}
