//! # tributary: the binary
//!
//! The command line (clap) that wires the layers into processes (ARCHITECTURE.md §7): it checks
//! configuration, serves every role (archiver, speed, batch scheduler, HTTP API), and runs, lists
//! and rolls back batch views, generates a synthetic clickstream (`gen`) and runs the local demo.
//! Configuration is loaded once here and passed explicitly to whatever runs.

mod ballista;
mod batch;
mod cli;
mod config_diff;
mod demo;
mod generator;
mod serve;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tributary_schemas::config::LogFormat;

/// jemalloc instead of glibc's malloc. A long-running `serve` swaps in a new batch version every few
/// minutes and drops the old one (hundreds of MB of Arrow buffers, freed by threads other than the
/// ones that allocated them). glibc keeps such memory in its per-thread arenas: in the 30-minute soak
/// (BENCHMARKS.md "Soak") RSS doubled while the live data stayed the same size, and telling glibc to
/// return memory (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) flattened RSS but slowed every
/// answer. jemalloc's background thread purges dirty pages after `dirty_decay_ms` (10 s by default,
/// tunable at run time through `_RJEM_MALLOC_CONF`) without slowing allocation. Only Rust's heap
/// moves: librdkafka's C code keeps the system malloc.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    // The demo on a terminal keeps the screen for its URLs and one status line: logs go to a file.
    let file = cli.is_demo().then(demo::terminal_log).flatten();
    match (cli.log_format(), file) {
        (LogFormat::Json, Some(file)) => logs.json().with_writer(file).init(),
        (LogFormat::Json, None) => logs.json().with_writer(std::io::stderr).init(),
        (LogFormat::Text, Some(file)) => logs.with_ansi(false).with_writer(file).init(),
        (LogFormat::Text, None) => logs.with_writer(std::io::stderr).init(),
    }
    match cli.run() {
        Ok(code) => code,
        Err(error) => {
            // The CLI's own output, not a log line: one plain sentence with its causes.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
