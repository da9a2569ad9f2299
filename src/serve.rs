//! `tributary serve`: runs the chosen roles in one process until SIGTERM or SIGINT, then stops them
//! cleanly: the archiver writes what it has buffered (nothing is half-written) and a running
//! recompute is cancelled before it publishes (its files are collected by the next run). If a role
//! fails, the process stops with its error so that a supervisor restarts it.

use std::sync::Arc;
use std::thread;

use anyhow::{Context, bail};
use tributary_batch::archiver::{Archiver, ArchiverSettings, StopSignal};
use tributary_batch::recompute::progress::logged;
use tributary_batch::recompute::{Batch, BatchError};
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
        .filter(|r| matches!(r, Role::Speed | Role::Serving))
        .map(Role::to_string)
        .collect();
    if !unbuilt.is_empty() {
        bail!(
            "the {} role(s) are not built yet; run `tributary serve --roles archiver,batch`",
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
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel::<anyhow::Error>();

    let archiver = if roles.contains(&Role::Archiver) {
        let archiver = Archiver::new(ArchiverSettings::from_config(config), Arc::clone(&store));
        let (handle, stop, failed) = (runtime.handle().clone(), Arc::clone(&stop), failed_tx);
        let worker = thread::Builder::new()
            .name("archiver".to_owned())
            .spawn(move || {
                let result = archiver.run(&handle, &stop);
                if let Err(error) = &result {
                    let _ = failed.send(anyhow::anyhow!("the archiver stopped: {error}"));
                }
                result
            })
            .context("starting the archiver thread")?;
        Some(worker)
    } else {
        None
    };

    let batch = if roles.contains(&Role::Batch) {
        let batch = Arc::new(crate::batch::open(config)?);
        runtime.spawn(schedule(Arc::clone(&batch), config.batch.interval));
        Some(batch)
    } else {
        None
    };

    runtime.block_on(async {
        tokio::select! {
            _ = wait_for_shutdown_signal() => {
                tracing::info!("shutting down: writing buffered events, cancelling a running recompute");
                Ok(())
            }
            Some(error) = failed.recv() => Err(error),
        }
    })
    .inspect_err(|error| tracing::error!("{error:#}; shutting down"))
    .ok();
    stop.stop();
    if let Some(batch) = &batch {
        batch.cancel();
    }
    let archived = match archiver.map(thread::JoinHandle::join) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(error))) => Err(anyhow::Error::new(error).context("the archiver stopped")),
        Some(Err(_)) => Err(anyhow::anyhow!("the archiver thread panicked")),
    };
    // Give a cancelled recompute a moment to release the lake's lock.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    archived
}

/// Runs a recompute every `interval` (the first one interval after start). A run still going when
/// the next is due delays it rather than overlapping it.
async fn schedule(batch: Arc<Batch>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match batch.run(None, logged()).await {
            Ok(runs) => runs
                .iter()
                .for_each(|run| tracing::info!("{}", crate::batch::describe(run))),
            Err(BatchError::Cancelled) => return,
            Err(error @ (BatchError::Lock(_) | BatchError::AlreadyRunning)) => {
                tracing::info!("scheduled recompute skipped: {error}");
            }
            Err(error) => {
                tracing::error!(
                    "scheduled recompute failed (retrying at the next interval): {:#}",
                    anyhow::Error::new(error)
                );
            }
        }
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
