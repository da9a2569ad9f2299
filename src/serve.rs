//! `tributary serve`: runs the chosen roles in one process until SIGTERM or SIGINT, then stops them
//! cleanly (the archiver writes what it has buffered, so nothing is half-written).

use std::sync::Arc;
use std::thread;

use anyhow::{Context, bail};
use tributary_batch::archiver::{Archiver, ArchiverSettings, StopSignal};
use tributary_schemas::config::Config;
use tributary_schemas::lake::open_store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Archiver,
    Speed,
    Serving,
    Batch,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Archiver, Role::Speed, Role::Serving, Role::Batch];
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Role::Archiver => "archiver",
            Role::Speed => "speed",
            Role::Serving => "serving",
            Role::Batch => "batch",
        };
        f.write_str(name)
    }
}

pub fn serve(config: &Config, roles: &[Role]) -> anyhow::Result<()> {
    let unbuilt: Vec<String> = roles
        .iter()
        .filter(|r| **r != Role::Archiver)
        .map(Role::to_string)
        .collect();
    if !unbuilt.is_empty() {
        bail!(
            "the {} role(s) are not built yet; run `tributary serve --roles archiver`",
            unbuilt.join(", ")
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tributary-io")
        .build()
        .context("starting the async runtime")?;
    let store = open_store(&config.lake.url).context("opening the lake")?;
    let stop = Arc::new(StopSignal::default());

    let on_signal = stop.clone();
    runtime.spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down: writing buffered events");
        on_signal.stop();
    });

    let archiver = Archiver::new(ArchiverSettings::from_config(config), store);
    let handle = runtime.handle().clone();
    let worker = thread::Builder::new()
        .name("archiver".to_owned())
        .spawn(move || archiver.run(&handle, &stop))
        .context("starting the archiver thread")?;
    match worker.join() {
        Ok(result) => result.context("the archiver stopped"),
        Err(_) => bail!("the archiver thread panicked"),
    }
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
