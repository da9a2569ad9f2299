//! The serving layer of the in-process tests: a real lake directory, a speed layer holding real
//! aggregated clickstream events (fed to its aggregator directly, as its consumer would), and the
//! app over both.

use std::sync::Arc;
use std::time::Duration;

use tributary_batch::recompute::{BatchSettings, RecomputeService};
use tributary_schemas::config::{AuthConfig, Config};
use tributary_schemas::event::raw_rows::KafkaPosition;
use tributary_schemas::lake::Lake;
use tributary_schemas::layers::recompute::Recompute;
use tributary_serving::api::App;
use tributary_serving::audit::Audit;
use tributary_serving::auth::Auth;
use tributary_serving::ingest::Ingest;
use tributary_serving::live::{Live, Loaded};
use tributary_serving::metrics::Metrics;
use tributary_serving::query::Engine;
use tributary_speed::aggregator::Aggregator;
use tributary_speed::consumer::{SpeedLayer, SpeedSettings};
use tributary_speed::health::HealthSettings;
use tributary_testkit::stream::clickstream;

pub const EVENTS: usize = 3000;

/// How the app is set up.
pub struct Setup {
    pub with_batch: bool,
    pub timeout: Duration,
    pub ingest: Option<Arc<Ingest>>,
    pub max_rows: usize,
    /// `[auth]` of the app (off by default).
    pub auth: AuthConfig,
    /// `[serving] query_memory_mb` and `max_concurrent_queries` (0: unbounded).
    pub memory_mb: usize,
    pub max_running: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            with_batch: false,
            timeout: Duration::from_secs(30),
            ingest: None,
            max_rows: 1000,
            auth: AuthConfig::default(),
            memory_mb: 0,
            max_running: 0,
        }
    }
}

/// The app, and its lake (deleted when dropped).
pub fn app(setup: Setup) -> (Arc<App>, tempfile::TempDir) {
    let config = Config::from_sources(None, []).unwrap();
    let lake = tempfile::tempdir().unwrap();
    let store = Lake::open(lake.path().to_str().unwrap()).unwrap();
    let mut aggregator = Aggregator::new(&config.events, &config.views, 1000).unwrap();
    let payloads: Vec<Vec<u8>> = (0..EVENTS).map(clickstream).collect();
    let messages: Vec<(KafkaPosition, &[u8])> = (payloads.iter().enumerate())
        .map(|(n, payload)| {
            let position = KafkaPosition {
                partition: (n % 2) as i32,
                offset: (n / 2) as i64,
                timestamp_ms: None,
            };
            (position, payload.as_slice())
        })
        .collect();
    aggregator.apply(&messages).unwrap();
    let settings = SpeedSettings {
        brokers: "127.0.0.1:9".to_owned(),
        topic: "events".to_owned(),
        poll_batch: 100,
        poll_wait: Duration::from_millis(10),
        health: HealthSettings {
            ready_max_lag: config.serving.ready_max_lag,
            stall_after: config.serving.stall_after,
        },
        partitions: None,
        drop_after: Duration::ZERO,
    };
    let speed = Arc::new(SpeedLayer::new(settings, aggregator, Default::default()));
    let live = Live::new(
        store.clone(),
        "events".to_owned(),
        config.views.clone(),
        64 << 20,
        Loaded::none(&config.views),
        speed,
    );
    let recompute = setup.with_batch.then(|| {
        let settings = BatchSettings {
            threads: 1,
            ..BatchSettings::from_config(&config)
        };
        let batch =
            RecomputeService::new(settings, config.events.clone(), config.views.clone(), store);
        Arc::new(batch.unwrap()) as Arc<dyn Recompute>
    });
    let app = App {
        engine: Engine::with_limits(
            Arc::new(live),
            setup.max_rows,
            setup.timeout,
            256 << 20,
            setup.memory_mb,
            setup.max_running,
        )
        .unwrap(),
        recompute,
        archiver: None,
        ingest: setup.ingest,
        metrics: Arc::new(Metrics::default()),
        auth: Auth::new(&setup.auth),
        audit: Audit::open(&setup.auth.audit_log).unwrap(),
    };
    (Arc::new(app), lake)
}
