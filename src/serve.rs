//! `tributary serve`: runs the chosen roles in one process until SIGTERM or SIGINT, then stops them
//! cleanly: the HTTP server and the Postgres wire stop accepting and let in-flight requests and
//! statements finish, the archiver writes
//! what it has buffered (nothing is half-written) and a running recompute is cancelled before it
//! publishes (its files are collected by the next run). If a role fails, the process stops with
//! its error so that a supervisor restarts it.
//!
//! Queries merge a speed layer's in-memory states, so the serving role runs either with the
//! speed role (`--roles speed,serving`: this process reads Kafka), or alone as a serving node of
//! a split speed layer reading `[serving] speed_nodes`. A speed node (`--roles speed`, usually
//! with `--partitions`) listens too: serving nodes read its states from its HTTP API.

use std::sync::Arc;
use std::thread;

use anyhow::{Context, bail};
use tributary_batch::archiver::{Archiver, ArchiverSettings};
use tributary_batch::recompute::lock::LockError;
use tributary_batch::recompute::progress::logged;
use tributary_batch::recompute::{BatchError, RecomputeService};
use tributary_schemas::config::Config;
use tributary_schemas::decode::Decoder;
use tributary_schemas::lake::Lake;
use tributary_schemas::layers::StatusSource;
use tributary_schemas::layers::recompute::Recompute;
use tributary_schemas::layers::speed::SpeedView;
use tributary_schemas::shutdown::Shutdown;
use tributary_serving::api::{self, App};
use tributary_serving::audit::Audit;
use tributary_serving::auth::Auth;
use tributary_serving::ingest::{Ingest, IngestSettings};
use tributary_serving::live::{Live, Loaded};
use tributary_serving::metrics::Metrics;
use tributary_serving::query::{DATABASE, Engine};
use tributary_serving::{tls, wire};
use tributary_speed::aggregator::Aggregator;
use tributary_speed::consumer::{SpeedLayer, SpeedSettings};
use tributary_speed::remote::{RemoteSettings, RemoteSpeed};

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

/// Serves until SIGTERM or SIGINT. With `partitions`, the speed layer reads only those (a speed
/// node of a split speed layer, issue 32): its own answers say they miss the others, and
/// `GET /v1/speed/{definition}` gives its states to serving nodes.
pub fn serve(config: &Config, roles: &[Role], partitions: Option<Vec<i32>>) -> anyhow::Result<()> {
    serve_until(
        config,
        roles,
        partitions,
        wait_for_shutdown_signal(),
        |_| {},
    )
}

/// Serves until `shutdown` completes. `started` is called with the HTTP address once the server
/// accepts requests (not called without the serving role).
pub fn serve_until(
    config: &Config,
    roles: &[Role],
    partitions: Option<Vec<i32>>,
    shutdown: impl Future<Output = ()>,
    started: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let speed_nodes = !config.serving.speed_nodes.is_empty();
    let (speed, serving) = (roles.contains(&Role::Speed), roles.contains(&Role::Serving));
    match (speed, serving, speed_nodes) {
        (true, true, true) => bail!(
            "[serving] speed_nodes is set: this process reads the speed layer from those speed nodes, so drop the speed role (`--roles serving`), or empty speed_nodes to read Kafka here"
        ),
        (false, true, false) => bail!(
            "the serving role merges a speed layer: run `--roles speed,serving` (with archiver and batch as you like), or list the speed nodes to read in [serving] speed_nodes"
        ),
        (true, false, true) => bail!(
            "[serving] speed_nodes is for serving nodes; a speed node (`--roles speed`) reads Kafka itself"
        ),
        _ => {}
    }
    if speed_nodes && partitions.is_some() {
        bail!("--partitions is for speed nodes; this serving node reads [serving] speed_nodes");
    }
    // A speed node alone still listens: serving nodes read its states over HTTP
    // (`GET /v1/speed/...`), and it answers queries with the partitions it reads, scanning batch
    // versions from Parquet rather than holding them in memory.
    let speed_node = speed && !serving;
    let serving = serving || speed;
    if serving {
        check_exposure(config)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tributary-io")
        .build()
        .context("starting the async runtime")?;
    let lake = crate::batch::open_checked_lake(config)?;
    // The roles stop together once the HTTP server has drained (`roles`); the HTTP server first
    // (`http`), so that requests in flight (a recompute on request among them) finish.
    let (roles_stop, http_stop) = (Shutdown::default(), Shutdown::default());
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel::<anyhow::Error>();

    let mut archiver_stats = None;
    let archiver = if roles.contains(&Role::Archiver) {
        let archiver = Archiver::new(ArchiverSettings::from_config(config), lake.clone());
        archiver_stats = Some(archiver.stats());
        let (handle, stop, failed) = (
            runtime.handle().clone(),
            roles_stop.clone(),
            failed_tx.clone(),
        );
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
        Some(Arc::new(
            crate::batch::open(config, lake.clone())?.with_shutdown(roles_stop.clone()),
        ))
    } else {
        None
    };
    let metrics = Arc::new(Metrics::default());
    let mut workers = Vec::new();
    let mut http = None;
    let mut pg = None;
    if serving {
        let (app, speed) = runtime.block_on(start_serving(
            config,
            partitions,
            speed_node,
            &lake,
            batch.clone().map(|batch| batch as Arc<dyn Recompute>),
            archiver_stats.map(|stats| stats as Arc<dyn StatusSource>),
            Arc::clone(&metrics),
        ))?;
        let behind = match speed {
            Speed::Local(speed) => {
                let (stop, failed) = (roles_stop.clone(), failed_tx.clone());
                workers.push(
                    thread::Builder::new()
                        .name("speed".to_owned())
                        .spawn(move || {
                            if let Err(error) = speed.run(&stop) {
                                let _ = failed.send(
                                    anyhow::Error::new(error).context("the speed layer stopped"),
                                );
                            }
                        })
                        .context("starting the speed layer thread")?,
                );
                None
            }
            Speed::Remote(remote) => {
                let behind = remote.behind();
                runtime.spawn(remote.run(roles_stop.clone()));
                Some(behind)
            }
        };
        runtime.spawn(follow_versions(
            Arc::clone(app.engine.live()),
            config.serving.refresh,
            behind,
        ));
        // A certificate that does not load stops the process: never plaintext in its place.
        let tls = match &config.serving.tls {
            None => None,
            Some((cert, key)) => Some(
                tls::acceptor(cert, key).context("setting up TLS ([serving] tls_cert, tls_key)")?,
            ),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.serving.listen))
            .with_context(|| format!("listening on {}", config.serving.listen))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("serving {scheme}://{}", config.serving.listen);
        if let Some(address) = config.serving.pg_listen {
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(address))
                .with_context(|| {
                    format!("listening for the Postgres wire on {address} ([serving] pg_listen)")
                })?;
            tracing::info!("serving the Postgres wire at {address} (database {DATABASE})");
            let stopped = http_stop.clone();
            pg = Some(runtime.spawn(wire::serve(
                Arc::clone(&app),
                listener,
                tls.clone(),
                async move { stopped.stopped().await },
                api::DRAIN,
            )));
        }
        started(config.serving.listen);
        runtime.spawn(reopen_audit_on_hangup(app.audit.clone()));
        let router = api::router(app);
        let stopped = http_stop.clone();
        http = Some(runtime.spawn(async move {
            let stopped = async move { stopped.stopped().await };
            if let Some(tls) = tls {
                tls::serve_https(listener, tls, router, stopped, api::DRAIN).await;
                return Ok(());
            }
            let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, service)
                .with_graceful_shutdown(stopped)
                .await
        }));
    }
    let scheduled = batch
        .as_ref()
        .map(|batch| runtime.spawn(schedule(Arc::clone(batch), config.batch.interval, metrics)));
    drop(failed_tx);

    runtime.block_on(async {
        tokio::select! {
            _ = shutdown => {
                tracing::info!("shutting down: finishing requests, writing buffered events, cancelling a running recompute");
                Ok(())
            }
            Some(error) = failed.recv() => Err(error),
        }
    })
    .inspect_err(|error| tracing::error!("{error:#}; shutting down"))
    .ok();
    http_stop.stop();
    if let Some(http) = http {
        match runtime.block_on(async { tokio::time::timeout(api::DRAIN, http).await }) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the HTTP server stopped with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "the HTTP server task failed"),
            Err(_) => tracing::warn!("requests still running after {:?} were cut", api::DRAIN),
        }
    }
    if let Some(pg) = pg {
        // The wire drains its statements in flight itself (within DRAIN), then closes connections.
        let _ = runtime.block_on(async { tokio::time::timeout(api::DRAIN * 2, pg).await });
    }
    roles_stop.stop();
    if let Some(scheduled) = scheduled {
        // A cancelled recompute stops at its next step and releases the lake's lock before the
        // scheduler returns. Should that take too long, the lock's lease frees the lake later.
        let stopped =
            runtime.block_on(async { tokio::time::timeout(SCHEDULER_STOP, scheduled).await });
        if stopped.is_err() {
            tracing::warn!(
                "the cancelled recompute did not stop within {SCHEDULER_STOP:?}; its lock on the lake expires with its lease"
            );
        }
    }
    // The archiver writes what it buffered; if the lake does not take it within shutdown_timeout
    // (an outage), it is abandoned: those events are still in Kafka and archived at the next start.
    if let Some(archiver) = &archiver {
        let deadline = std::time::Instant::now() + config.archiver.shutdown_timeout;
        while !archiver.is_finished() && std::time::Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_millis(20));
        }
        if !archiver.is_finished() {
            tracing::warn!(
                "the lake did not take the archiver's buffered events within [archiver] shutdown_timeout ({:?}); they stay in Kafka and are archived at the next start",
                config.archiver.shutdown_timeout
            );
            roles_stop.abandon();
        }
    }
    let archived = match archiver.map(thread::JoinHandle::join) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(error))) => Err(anyhow::Error::new(error).context("the archiver stopped")),
        Some(Err(_)) => Err(anyhow::anyhow!("the archiver thread panicked")),
    };
    for worker in workers {
        let _ = worker.join();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    archived
}

/// `SIGHUP` reopens the audit log (after logrotate moved it).
async fn reopen_audit_on_hangup(audit: Audit) {
    if !audit.enabled() {
        return;
    }
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("no SIGHUP handler: the audit log is not reopened on SIGHUP");
        return;
    };
    while hangups.recv().await.is_some() {
        audit.reopen();
    }
}

/// Refuses listeners that would serve other machines without auth (unless the configuration says
/// that is meant), and the Postgres wire's cleartext passwords anywhere but on loopback.
fn check_exposure(config: &Config) -> anyhow::Result<()> {
    let (serving, auth) = (&config.serving, &config.auth);
    let listeners = [
        ("listen", Some(serving.listen)),
        ("pg_listen", serving.pg_listen),
    ];
    let exposed = listeners
        .into_iter()
        .filter_map(|(key, address)| Some((key, address?)))
        .filter(|(_, address)| !address.ip().is_loopback());
    for (key, address) in exposed {
        if !auth.enabled && !auth.allow_unauthenticated {
            bail!(
                "[serving] {key} = \"{address}\" is reachable from other machines and [auth] is off: anyone who reaches it could read every view, push events and run recomputes. Turn auth on ([auth] enabled = true with [[auth.tokens]]; `tributary token new NAME --scope read` prints one), listen on 127.0.0.1, or set [auth] allow_unauthenticated = true if the network in between is what guards it"
            );
        }
        if auth.enabled && key == "pg_listen" && serving.tls.is_none() {
            bail!(
                "[serving] pg_listen = \"{address}\": the Postgres wire takes a token as a cleartext password, which goes over TLS only: set [serving] tls_cert and tls_key, listen on 127.0.0.1, or set pg_listen = \"\""
            );
        }
    }
    Ok(())
}

/// The speed layer a serving process merges.
enum Speed {
    /// Read from Kafka here (its thread runs it).
    Local(Arc<SpeedLayer>),
    /// Read from the speed nodes of `[serving] speed_nodes` (its task polls them).
    Remote(Arc<RemoteSpeed>),
}

/// Loads the live versions, builds the speed layer at their boundary, and the HTTP app over both.
/// Returns the app and the speed layer, for its thread or task to run.
async fn start_serving(
    config: &Config,
    partitions: Option<Vec<i32>>,
    speed_node: bool,
    lake: &Lake,
    recompute: Option<Arc<dyn Recompute>>,
    archiver: Option<Arc<dyn StatusSource>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Arc<App>, Speed)> {
    let serving = &config.serving;
    let budget = if speed_node {
        0
    } else {
        serving.memory_budget_mb << 20
    };
    let topic = &config.kafka.topic;
    let loaded = Loaded::load(lake, topic, &config.events, &config.views, budget)
        .await
        .context("loading the live batch versions")?;
    // The configured views, then the old definitions answering while their replacements build.
    let speed_views = loaded.speed_views(&config.views);
    let (speed, view): (Speed, Arc<dyn SpeedView>) = if serving.speed_nodes.is_empty() {
        let aggregator = Aggregator::new(&config.events, &speed_views, config.batch.epoch_size)
            .context("planning the view filters for the speed layer")?;
        let settings = SpeedSettings {
            partitions,
            ..SpeedSettings::from_config(config)
        };
        let speed = Arc::new(SpeedLayer::new(settings, aggregator, loaded.speed_start()));
        (Speed::Local(Arc::clone(&speed)), speed)
    } else {
        tracing::info!(nodes = ?serving.speed_nodes, "reading the speed layer from speed nodes");
        let settings = RemoteSettings::from_config(config);
        let remote = Arc::new(RemoteSpeed::new(settings, &speed_views));
        (Speed::Remote(Arc::clone(&remote)), remote)
    };
    let live = Live::new(
        lake.clone(),
        topic.clone(),
        config.views.clone(),
        budget,
        loaded,
        view,
    );
    let engine = Engine::with_limits(
        Arc::new(live),
        serving.max_rows,
        serving.query_timeout,
        serving.partial_cache_mb << 20,
        serving.query_memory_mb,
        serving.max_concurrent_queries,
    )
    .context("starting the query engine")?
    .with_snapshots(serving.snapshot_ttl, serving.snapshot_max_mb << 20);
    let decoder = Decoder::new(config.events.clone());
    let ingest = Ingest::new(IngestSettings::from_config(config), decoder)
        .context("creating the push-ingest producer")?;
    let app = App {
        engine,
        recompute,
        archiver,
        ingest: Some(Arc::new(ingest)),
        metrics,
        auth: Auth::new(&config.auth),
        audit: Audit::open(&config.auth.audit_log).with_context(|| {
            format!(
                "opening the audit log {:?} ([auth] audit_log)",
                config.auth.audit_log
            )
        })?,
    };
    Ok((Arc::new(app), speed))
}

/// Checks for newly published versions every `every` (the recompute may run in another process),
/// and at once when `behind` is notified (a speed node already dropped what the live version
/// needs: it has seen a newer one).
async fn follow_versions(
    live: Arc<Live>,
    every: std::time::Duration,
    behind: Option<Arc<tokio::sync::Notify>>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let behind = behind.unwrap_or_default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = behind.notified() => {}
        }
        if let Err(error) = live.refresh().await {
            tracing::warn!(
                "cannot check for new batch versions (retrying): {:#}",
                anyhow::Error::new(error)
            );
        }
    }
}

/// How long shutdown waits for the batch scheduler, and a recompute it is running, to stop.
const SCHEDULER_STOP: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a recompute every `interval` (the first one interval after start) until the batch layer
/// is cancelled, returning at once when that happens between runs. A run still going when the
/// next is due delays it rather than overlapping it.
async fn schedule(
    batch: Arc<RecomputeService>,
    interval: std::time::Duration,
    metrics: Arc<Metrics>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = batch.cancelled() => return,
        }
        let started = std::time::Instant::now();
        match batch.run(None, logged()).await {
            Ok(runs) => {
                for run in &runs {
                    tracing::info!("{}", crate::batch::describe(run));
                    metrics.record_run(&run.report(), "schedule");
                }
            }
            Err(BatchError::Cancelled) => return,
            Err(error @ (BatchError::Lock(LockError::Held(_)) | BatchError::AlreadyRunning)) => {
                tracing::info!("scheduled recompute skipped: {error}");
            }
            Err(error) => {
                let what = match error.is_outage() {
                    true => "the lake's object store failed",
                    false => "the recompute failed (see the server's log)",
                };
                metrics.record_failed_run(None, started.elapsed(), "schedule", what);
                tracing::error!(
                    "scheduled recompute failed (retrying at the next interval): {:#}",
                    anyhow::Error::new(error)
                );
            }
        }
    }
}

pub async fn wait_for_shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Shutdown waits for the scheduler to return, which must not take until its next interval.
    #[tokio::test]
    async fn a_cancelled_scheduler_returns_between_runs_without_waiting_for_the_interval() {
        let lake = tempfile::tempdir().unwrap();
        let url = format!("file://{}", lake.path().display());
        let config = Config::from_sources(None, [("TRIBUTARY_LAKE__URL".to_owned(), url)]).unwrap();
        let batch = Arc::new(
            crate::batch::open(&config, crate::batch::open_lake(&config).unwrap()).unwrap(),
        );
        let hour = std::time::Duration::from_secs(3600);
        let scheduled = tokio::spawn(schedule(
            Arc::clone(&batch),
            hour,
            Arc::new(Metrics::default()),
        ));
        tokio::task::yield_now().await;
        assert!(
            !scheduled.is_finished(),
            "the scheduler waits for its interval"
        );
        batch.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), scheduled)
            .await
            .expect("the scheduler returns once cancelled, not at the next interval")
            .unwrap();
    }
}
