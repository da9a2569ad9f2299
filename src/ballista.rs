//! `tributary ballista scheduler|executor`: Apache DataFusion Ballista's scheduler and executor
//! with Tributary's view functions and the lake of this configuration, so that a cluster for
//! `[batch] engine = "ballista"` is three commands (see `tributary_batch::ballista`).

use std::net::SocketAddr;

use anyhow::Context;
use tributary_batch::ballista::{self, ExecutorSettings};
use tributary_schemas::config::Config;

/// Ballista's serde recurses through deep plans: its own binaries give their threads 32 MB.
const STACK: usize = 32 << 20;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(STACK)
        .thread_name("tributary-ballista")
        .build()
        .context("starting the async runtime")
}

/// Runs the scheduler on `bind` until the process is stopped.
pub fn scheduler(
    config: &Config,
    bind: SocketAddr,
    external_host: Option<String>,
) -> anyhow::Result<()> {
    let lake = crate::batch::open_checked_lake(config)?;
    tracing::info!(%bind, lake = config.lake.url, "Ballista scheduler for Tributary's recomputes");
    runtime()?
        .block_on(ballista::scheduler(lake, bind, external_host))
        .context("the Ballista scheduler stopped")
}

/// Runs an executor registered with `settings.scheduler` until the process is stopped (SIGTERM
/// or Ctrl-C: it finishes nothing half, the scheduler runs its tasks elsewhere).
pub fn executor(config: &Config, settings: ExecutorSettings) -> anyhow::Result<()> {
    let lake = crate::batch::open_checked_lake(config)?;
    tracing::info!(
        scheduler = format!("{}:{}", settings.scheduler.0, settings.scheduler.1),
        bind = %settings.bind,
        slots = settings.slots,
        "Ballista executor for Tributary's recomputes"
    );
    runtime()?
        .block_on(ballista::executor(lake, settings))
        .context("the Ballista executor stopped")
}
