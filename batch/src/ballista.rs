//! The recompute on an Apache DataFusion Ballista cluster (issue 32, ARCHITECTURE.md §8):
//! `[batch] engine = "ballista"`.
//!
//! A cluster is three commands of this binary: `tributary ballista scheduler --bind ADDR` and
//! `tributary ballista executor --scheduler ADDR` (as many as wanted). They are Ballista's own
//! scheduler and executor, started with what Tributary's plans need:
//! - the view functions (`state_<kind>`, `merge_<kind>`, `time_bucket_<granularity>`, …) in the
//!   function registry, and a codec that finds the parameterized ones by the name a plan carries
//!   ([`TributaryLogicalCodec`], [`TributaryPhysicalCodec`]);
//! - the lake's object store under the URL the plans read it by (`tributary-lake://lake/`), from
//!   the same configuration as every other process (a file, `TRIBUTARY_*` or S3's `AWS_*`);
//! - on executors, a memory pool of `[batch] memory_limit_mb` per task slot, so sorts and
//!   aggregations spill as they do locally.
//!
//! **What runs where.** The recompute plans its time slices as it does locally (from the raw
//! files' statistics) and submits each slice as one Ballista job of one partition: a slice's
//! groups are its own, so no stage shuffles or merges a sketch twice, and each slice's states are
//! computed in the order a local run computes them, bit for bit. Up to `[batch] threads` slices
//! run at once, spread over the executors' task slots. The client streams each job's sorted rows
//! back and writes the parts, the manifest and `_current` itself, as it does locally: a failed or
//! cancelled job fails the run before anything is published. Folding an extended version's deltas
//! and the full run's check stay in the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::common::{Result, TableReference};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use tributary_schemas::functions;
use tributary_schemas::lake::{Lake, lake_url};

/// How often an executor tells the scheduler it is alive, and how long the scheduler waits
/// before it takes a silent executor for dead and runs its tasks elsewhere (Ballista's defaults,
/// 60 s and 180 s, are for long interactive clusters; a recompute would wait minutes).
const HEARTBEAT: Duration = Duration::from_secs(2);
const EXECUTOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Tributary's function of the name a plan carries, or what Ballista's codec makes of it.
fn ours_or<F>(ours: Option<F>, theirs: impl FnOnce() -> Result<Arc<F>>) -> Result<Arc<F>> {
    ours.map_or_else(theirs, |function| Ok(Arc::new(function)))
}

/// Ballista's logical codec, plus Tributary's functions by name.
#[derive(Debug, Default)]
pub struct TributaryLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for TributaryLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: arrow::datatypes::SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        (self.inner).try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        ours_or(functions::scalar_by_name(name), || {
            self.inner.try_decode_udf(name, buf)
        })
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        ours_or(functions::aggregate_by_name(name), || {
            self.inner.try_decode_udaf(name, buf)
        })
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }
}

/// Ballista's physical codec, plus Tributary's functions by name.
#[derive(Debug, Default)]
pub struct TributaryPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for TributaryPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        ours_or(functions::scalar_by_name(name), || {
            self.inner.try_decode_udf(name, buf)
        })
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        ours_or(functions::aggregate_by_name(name), || {
            self.inner.try_decode_udaf(name, buf)
        })
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }
}

/// `config` with Tributary's codecs, for every session that plans or runs on the cluster.
fn with_codecs(config: SessionConfig) -> SessionConfig {
    config
        .with_ballista_logical_extension_codec(Arc::new(TributaryLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(TributaryPhysicalCodec::default()))
}

/// A runtime whose object store registry holds the lake under the plans' URL.
fn lake_runtime(lake: &Lake, builder: RuntimeEnvBuilder) -> Result<Arc<RuntimeEnv>> {
    let runtime = builder.build_arc()?;
    runtime.register_object_store(lake_url().as_ref(), Arc::clone(lake.store()));
    Ok(runtime)
}

/// The client side: a session over `state` whose queries run on the cluster at `scheduler`
/// (`df://host:port`), with one partition per plan (see the module docs).
pub async fn remote_session(
    scheduler: &str,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
) -> Result<SessionContext> {
    // One stage of one partition: Ballista's adaptive planner has nothing to adapt.
    let config =
        with_codecs(config.with_target_partitions(1)).with_ballista_adaptive_query_planner(false);
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .build();
    let ctx = SessionContext::remote_with_state(scheduler, state).await?;
    functions::register_all(&ctx);
    Ok(ctx)
}

/// The scheduler's sessions: DataFusion's defaults, Tributary's functions, the lake.
fn scheduler_state(lake: &Lake, config: SessionConfig) -> Result<SessionState> {
    let runtime = lake_runtime(lake, RuntimeEnvBuilder::new())?;
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(with_codecs(config))
        .with_runtime_env(runtime)
        .build();
    let ctx = SessionContext::new_with_state(state);
    functions::register_all(&ctx);
    Ok(ctx.state())
}

/// Runs a Ballista scheduler on `bind` until the process is stopped. `external_host` is the
/// address executors and clients reach it at.
pub async fn scheduler(
    lake: Lake,
    bind: SocketAddr,
    external_host: Option<String>,
) -> Result<(), ballista_core::error::BallistaError> {
    let mut config = SchedulerConfig::default();
    config.bind_host = bind.ip().to_string();
    config.bind_port = bind.port();
    config.external_host = external_host.unwrap_or_else(|| bind.ip().to_string());
    // Slices are tasks of one partition each: spread them over the executors rather than fill
    // one executor's slots first.
    config.task_distribution = TaskDistributionPolicy::RoundRobin;
    config.executor_timeout_seconds = EXECUTOR_TIMEOUT.as_secs();
    config.expire_dead_executor_interval_seconds = HEARTBEAT.as_secs();
    config.override_logical_codec = Some(Arc::new(TributaryLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(TributaryPhysicalCodec::default()));
    config.override_session_builder = Some(Arc::new(move |config| scheduler_state(&lake, config)));
    let cluster = BallistaCluster::new_from_config(&config).await?;
    start_server(cluster, bind, Arc::new(config)).await
}

/// What one executor runs with.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// The scheduler's gRPC address: host (a name or an IP) and port.
    pub scheduler: (String, u16),
    /// Where it serves its results (Arrow Flight) and takes tasks (gRPC, `grpc_port`).
    pub bind: SocketAddr,
    pub grpc_port: u16,
    /// The host the scheduler and clients reach it at (default: the bind address).
    pub external_host: Option<String>,
    /// Tasks (time slices) it runs at once.
    pub slots: usize,
    /// Memory of one task's pool (`[batch] memory_limit_mb`).
    pub memory_per_slot: usize,
}

/// Runs a Ballista executor registered with the scheduler until the process is stopped.
pub async fn executor(
    lake: Lake,
    settings: ExecutorSettings,
) -> Result<(), ballista_core::error::BallistaError> {
    let registry = {
        let mut registry = BallistaFunctionRegistry::default();
        let ctx = SessionContext::new();
        functions::register_all(&ctx);
        let state = ctx.state();
        registry.aggregate_functions.extend(
            (state.aggregate_functions().iter()).map(|(name, f)| (name.clone(), Arc::clone(f))),
        );
        registry.scalar_functions.extend(
            (state.scalar_functions().iter()).map(|(name, f)| (name.clone(), Arc::clone(f))),
        );
        registry
    };
    let config = ExecutorProcessConfig {
        bind_host: settings.bind.ip().to_string(),
        port: settings.bind.port(),
        grpc_port: settings.grpc_port,
        external_host: settings.external_host,
        scheduler_host: settings.scheduler.0,
        scheduler_port: settings.scheduler.1,
        scheduler_connect_timeout_seconds: 30,
        vcores: settings.slots.max(1),
        executor_heartbeat_interval_seconds: HEARTBEAT.as_secs(),
        memory_pool_size: Some((settings.memory_per_slot * settings.slots.max(1)) as u64),
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(Arc::new(move |_config: &SessionConfig| {
            lake_runtime(&lake, RuntimeEnvBuilder::new())
        })),
        override_config_producer: Some(Arc::new(
            || with_codecs(SessionConfig::new_with_ballista()),
        )),
        override_logical_codec: Some(Arc::new(TributaryLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(TributaryPhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config)).await
}
