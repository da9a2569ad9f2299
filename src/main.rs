//! # tributary: the binary
//!
//! The command line (clap) that wires the layers into processes (ARCHITECTURE.md §7): it checks
//! configuration, serves every role (archiver, speed, batch scheduler, HTTP API), and runs, lists
//! and rolls back batch views, generates a synthetic clickstream (`gen`) and runs the local demo.
//! Configuration is loaded once here and passed explicitly to whatever runs.

mod batch;
mod cli;
mod demo;
mod generator;
mod serve;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.run() {
        Ok(code) => code,
        Err(error) => {
            // The CLI's own output, not a log line: one plain sentence with its causes.
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
