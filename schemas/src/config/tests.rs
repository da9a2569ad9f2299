use super::*;
use crate::aggregate::StateKind;

fn load(file: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_sources(Some((file, "test.toml")), env)
}

/// The problems of an invalid configuration, each as "key: message".
fn problems(file: &str) -> Vec<String> {
    load(file, &[])
        .expect_err("configuration should be invalid")
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect()
}

const EVENTS: &str = r#"
[events]
time_field = "ts"
[events.fields]
user_id = "string"
page = "string"
latency_ms = "float64"
"#;

fn with_view(view: &str) -> String {
    format!("{EVENTS}\n[[views]]\n{view}")
}

#[test]
fn the_defaults_describe_a_complete_clickstream_demo() {
    let config = Config::from_sources(None, []).unwrap();
    assert_eq!(config.kafka.topic, "events");
    assert_eq!(config.kafka.dlq_topic.as_deref(), Some("events.dlq"));
    assert_eq!(config.events.time_field, "ts");
    assert_eq!(config.batch.epoch_size, 100_000);
    assert_eq!(config.archiver.max_file_rows, 500_000);
    assert_eq!(config.archiver.max_file_age, Duration::from_secs(120));
    assert_eq!(config.serving.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        config.serving.pg_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:5433")
    );
    assert_eq!(config.serving.partial_cache_mb, 256);
    assert_eq!(config.serving.ready_max_lag, 10_000);
    assert_eq!(config.serving.stall_after, Duration::from_secs(30));
    assert_eq!(config.serving.snapshot_ttl, Duration::from_secs(60));
    assert_eq!(config.serving.snapshot_max_mb, 256);
    let pageviews = config.view("pageviews").unwrap();
    assert_eq!(pageviews.granularity.to_string(), "1m");
    assert_eq!(pageviews.filter.as_ref().unwrap().sql, "page IS NOT NULL");
    let kinds: Vec<(&str, StateKind)> = pageviews
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.state_kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("views", StateKind::Count),
            ("users", StateKind::CountDistinct),
            ("latency_sum", StateKind::FloatSum),
            ("latency_min", StateKind::FloatMin),
            ("latency_max", StateKind::FloatMax),
            ("latency_avg", StateKind::Avg),
            ("latency_p95", StateKind::Quantile),
            ("late", StateKind::Count),
        ]
    );
    assert_eq!(
        pageviews.metric("late").unwrap().function,
        MetricFunction::Late { after_ms: 60_000 }
    );
    assert_eq!(
        pageviews.metric("latency_p95").unwrap().function,
        MetricFunction::Quantile(0.95)
    );
    let schema = pageviews.state_schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names[..3], ["time", "page", "country"]);
    assert_eq!(
        config
            .view("traffic")
            .unwrap()
            .metric("bytes")
            .unwrap()
            .state_kind(),
        StateKind::IntSum
    );
}

#[test]
fn a_file_overlays_sections_key_by_key_and_replaces_the_dataset_whole() {
    let file = format!(
        "[kafka]\nbrokers = \"kafka-1:9092,kafka-2:9092\"\n{}",
        with_view("name = \"latency\"\ngranularity = \"5m\"\n[views.metrics]\nn = \"count\"",)
    );
    let config = load(&file, &[]).unwrap();
    assert_eq!(config.kafka.brokers, "kafka-1:9092,kafka-2:9092");
    assert_eq!(
        config.kafka.topic, "events",
        "keys the file does not set keep their defaults"
    );
    assert_eq!(config.events.fields.len(), 3);
    assert_eq!(
        config.views.len(),
        1,
        "the demo views are not mixed into a file's dataset"
    );
}

#[test]
fn environment_variables_override_typed_keys() {
    let env = [
        ("TRIBUTARY_KAFKA__BROKERS", "10.0.0.1:9092"),
        ("TRIBUTARY_BATCH__EPOCH_SIZE", "5000"),
        ("TRIBUTARY_SERVING__LISTEN", "0.0.0.0:9000"),
        ("TRIBUTARY_SERVING__PARTIAL_CACHE_MB", "0"),
        ("TRIBUTARY_SERVING__PG_LISTEN", ""),
        ("TRIBUTARY_KAFKA__DLQ_TOPIC", ""),
        ("TRIBUTARY_LOG", "ignored: not a section override"),
        ("PATH", "/usr/bin"),
    ];
    let config = load("", &env).unwrap();
    assert_eq!(config.kafka.brokers, "10.0.0.1:9092");
    assert_eq!(config.batch.epoch_size, 5000);
    assert_eq!(config.serving.listen.port(), 9000);
    assert_eq!(
        config.serving.pg_listen, None,
        "\"\" turns the Postgres wire off"
    );
    assert_eq!(
        config.serving.partial_cache_mb, 0,
        "0 turns the partial cache off"
    );
    assert_eq!(
        config.kafka.dlq_topic, None,
        "an empty DLQ topic disables it"
    );
}

#[test]
fn bad_environment_overrides_name_the_variable() {
    let env = [
        ("TRIBUTARY_BATCH__EPOCH_SIZE", "lots"),
        ("TRIBUTARY_KAFKA__BROKER", "x:1"),
        ("TRIBUTARY_NOPE__X", "1"),
    ];
    let error = load("", &env).unwrap_err();
    let found: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "TRIBUTARY_BATCH__EPOCH_SIZE: \"lots\" is not an integer",
            "TRIBUTARY_KAFKA__BROKER: no key kafka.broker to override (overrides are TRIBUTARY_<SECTION>__<KEY>)",
            "TRIBUTARY_NOPE__X: no section [nope] to override",
        ]
    );
}

#[test]
fn every_problem_names_its_key_and_says_what_to_fix() {
    let cases: &[(String, &str)] = &[
        (
            format!(
                "{EVENTS}clicks = \"integer\"\n[[views]]\nname = \"v\"\ngranularity = \"1m\"\n[views.metrics]\nn = \"count\""
            ),
            "events.fields.clicks: unknown field type \"integer\" (expected one of string, int64, float64, bool, timestamp)",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\n[views.metrics]\ntotal = \"sum(price)\"",
            ),
            "views[0].metrics.total: \"price\" is not a field configured in [events.fields]",
        ),
        (
            with_view("name = \"v\"\ngranularity = \"7m\"\n[views.metrics]\nn = \"count\""),
            "views[0].granularity: granularity \"7m\" must divide a day evenly, from 1s to 1d (e.g. 1s, 10s, 1m, 5m, 15m, 1h, 6h, 1d)",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\nfilter = \"page IS NOT\"\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].filter: cannot plan filter \"page IS NOT\": SQL error: ParserError(\"Expected: [NOT] NULL | TRUE | FALSE | DISTINCT | [form] NORMALIZED FROM after IS, found: EOF\")",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\nfilter = \"pages = 'x'\"\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].filter: cannot plan filter \"pages = 'x'\": Schema error: No field named pages. Did you mean 'page'? Valid fields are ts, user_id, page, latency_ms.",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\nfilter = \"latency_ms * 2\"\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].filter: filter \"latency_ms * 2\" must be true or false for one event, not Float64",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\nfilter = \"random() < 0.5\"\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].filter: filter \"random() < 0.5\" uses a volatile function: the batch and speed layers would disagree",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\nfilter = \"count(page) > 1\"\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].filter: filter \"count(page) > 1\" must be a condition on one event (no aggregates, windows or subqueries)",
        ),
        (
            with_view("name = \"v\"\ngranularity = \"1m\"\n[views.metrics]\ntotal = \"sum(page)\""),
            "views[0].metrics.total: sum(page) needs a int64 or float64 field, and \"page\" is string",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\n[views.metrics]\np = \"quantile(latency_ms, 95)\"",
            ),
            "views[0].metrics.p: quantile fraction \"95\" must be a number from 0 to 1, e.g. 0.95",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\n[views.metrics]\nm = \"median(latency_ms)\"",
            ),
            "views[0].metrics.m: unknown metric \"median(latency_ms)\" (expected count, sum(f), min(f), max(f), avg(f), count_distinct(f) or quantile(f, q))",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\ndimensions = [\"ts\"]\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].dimensions: \"ts\" is the time field: views bucket it by their granularity",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\ndimensions = [\"page\"]\n[views.metrics]\npage = \"count\"",
            ),
            "views[0].metrics.page: \"page\" clashes with the time column or a dimension",
        ),
        (
            with_view(
                "name = \"Page Views\"\ngranularity = \"1m\"\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].name: \"Page Views\" is not a valid view name (a lowercase letter, then lowercase letters, digits or '_', at most 64)",
        ),
        (
            with_view(
                "name = \"v\"\ngranularity = \"1m\"\ngranularty = \"1h\"\n[views.metrics]\nn = \"count\"",
            ),
            "views[0].granularty: unknown key (known keys: name, granularity, dimensions, filter, metrics, retention)",
        ),
        (
            "[kafka]\nbrokrs = \"x:1\"".to_owned(),
            "kafka.brokrs: unknown key (known keys: brokers, topic, dlq_topic)",
        ),
        (
            "[lake]\nurl = \"ftp://host/lake\"".to_owned(),
            "lake.url: \"ftp://host/lake\" is not a lake location (write a directory, file:///absolute/path or s3://bucket/prefix)",
        ),
        (
            "[batch]\ninterval = \"soon\"".to_owned(),
            "batch.interval: cannot read \"soon\" as a duration (write e.g. \"15m\", \"1h30m\" or \"500ms\")",
        ),
        (
            "[kafka]\ntopic = \"my topic\"".to_owned(),
            "kafka.topic: \"my topic\" is not a valid Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')",
        ),
        (
            "[serving]\nstall_after = \"500ms\"".to_owned(),
            "serving.stall_after: must be at least 1s (the broker's end is checked every second)",
        ),
        (
            "[serving]\nready_max_lag = -1".to_owned(),
            "serving.ready_max_lag: must be an integer >= 0",
        ),
        (
            "[metrics]\nport = 1".to_owned(),
            "metrics: unknown section (expected kafka, lake, events, views, archiver, batch, serving, auth or log)",
        ),
        (
            EVENTS.to_owned(),
            "views: at least one [[views]] table is required",
        ),
    ];
    for (file, expected) in cases {
        assert_eq!(problems(file), [*expected], "for file:\n{file}");
    }
}

#[test]
fn duplicate_view_names_are_refused() {
    let view = "name = \"v\"\ngranularity = \"1m\"\n[views.metrics]\nn = \"count\"";
    let file = format!("{}\n[[views]]\n{view}", with_view(view));
    assert_eq!(
        problems(&file),
        ["views[1].name: duplicate view name \"v\""]
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let file = format!(
        "[batch]\nepoch_size = 0\n{}",
        with_view("name = \"v\"\ngranularity = \"2d\"\n[views.metrics]\nn = \"count(page)\"")
    );
    let error = load(&file, &[]).unwrap_err();
    assert_eq!(error.problems().len(), 3, "{error}");
    assert!(
        error
            .to_string()
            .starts_with("invalid configuration (3 problems):\n  - "),
        "{error}"
    );
}

#[test]
fn toml_syntax_errors_say_where() {
    let error = load("[kafka\nbrokers = 1", &[]).unwrap_err();
    assert!(matches!(error, ConfigError::Syntax { .. }));
    assert_eq!(error.to_string(), "test.toml is not valid TOML");
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(source.contains("line 1"), "{source}");
}

#[test]
fn a_view_rebuilt_from_its_spec_is_the_same_definition() {
    let config = Config::from_sources(None, []).unwrap();
    for view in &config.views {
        let spec = view.spec();
        assert!(spec.metrics.iter().all(|(name, _)| name != LATE_METRIC));
        let json = serde_json::to_string(&spec).unwrap();
        let back: ViewSpec = serde_json::from_str(&json).unwrap();
        let rebuilt = ViewDef::from_spec(&back, &config.events, view.late_after()).unwrap();
        assert_eq!(rebuilt.definition_hash(), view.definition_hash(), "{json}");
        assert_eq!(rebuilt.spec(), spec);
    }
    // An event schema that lost a field the definition needs says so.
    let mut events = config.events.clone();
    events.fields.retain(|f| f.name != "country");
    let view = config.view("pageviews").unwrap();
    let problems = ViewDef::from_spec(&view.spec(), &events, view.late_after()).unwrap_err();
    assert!(
        problems.iter().any(|p| p.to_string().contains("country")),
        "{problems:?}"
    );
}

#[test]
fn the_definition_hash_changes_with_what_decides_the_states_only() {
    let view = |filter: &str, granularity: &str| {
        let file = with_view(&format!(
            "name = \"v\"\ngranularity = \"{granularity}\"\nfilter = \"{filter}\"\n[views.metrics]\nn = \"count\""
        ));
        load(&file, &[]).unwrap().views[0].definition_hash()
    };
    let base = view("page IS NOT NULL", "1m");
    assert_eq!(base.len(), 32);
    assert_eq!(
        base,
        view("page IS NOT NULL", "60s"),
        "the same granularity spelled differently"
    );
    assert_ne!(base, view("page = 'x'", "1m"));
    assert_ne!(base, view("page IS NOT NULL", "5m"));

    // `late_after` decides the built-in `late` states.
    let late_after = |late_after: &str| {
        let events = EVENTS.replace(
            "[events]\n",
            &format!("[events]\nlate_after = \"{late_after}\"\n"),
        );
        let file = format!(
            "{events}\n[[views]]\nname = \"v\"\ngranularity = \"1m\"\nfilter = \"page IS NOT NULL\"\n\
             [views.metrics]\nn = \"count\""
        );
        load(&file, &[]).unwrap().views[0].definition_hash()
    };
    assert_eq!(base, late_after("60s"), "1m is the default");
    assert_ne!(base, late_after("5m"));
}

#[test]
fn every_view_counts_late_events_and_late_is_reserved() {
    let file = with_view("name = \"v\"\ngranularity = \"1m\"\n[views.metrics]\nn = \"count\"");
    let config = load(&file, &[("TRIBUTARY_EVENTS__LATE_AFTER", "30s")]).unwrap();
    let late = config.views[0].metric("late").unwrap();
    assert_eq!(late.function, MetricFunction::Late { after_ms: 30_000 });
    assert_eq!(late.output_type(), arrow::datatypes::DataType::Int64);
    // Late: Kafka's timestamp more than 30 s after the event time; never without one.
    assert!(late.counts(0, Some(30_001)));
    assert!(!late.counts(0, Some(30_000)));
    assert!(!late.counts(0, None));
    assert!(config.views[0].metric("n").unwrap().counts(0, None));

    assert_eq!(
        problems(&with_view(
            "name = \"v\"\ngranularity = \"1m\"\n[views.metrics]\nlate = \"count\""
        )),
        [
            "views[0].metrics.late: \"late\" is built in: every view counts its late events \
          ([events] late_after); name this metric otherwise"
        ]
    );
    let bad = EVENTS.replace("[events]\n", "[events]\nlate_after = \"soon\"\n");
    let problems = problems(&format!(
        "{bad}\n[[views]]\nname = \"v\"\ngranularity = \"1m\"\n[views.metrics]\nn = \"count\""
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("events.late_after: "),
        "{problems:?}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let error = Config::load(Some(Path::new("/nonexistent/tributary.toml"))).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot read configuration file /nonexistent/tributary.toml"
    );
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn auth_tokens_carry_scopes_and_row_filters_over_dimensions() {
    let file = format!(
        r#"
[auth]
enabled = true
[[auth.tokens]]
name = "grafana"
sha256 = "{HASH}"
scopes = ["read"]
[auth.tokens.row_filter]
pageviews = "country = 'DE'"
[[auth.tokens]]
name = "ops"
sha256 = "{}"
scopes = ["read", "ingest", "admin"]
"#,
        HASH.replace('9', "a")
    );
    let config = load(&file, &[]).unwrap();
    assert!(config.auth.enabled);
    let grafana = &config.auth.tokens[0];
    assert_eq!(grafana.scopes, [Scope::Read]);
    assert_eq!(grafana.sha256, parse_sha256(HASH).unwrap());
    let filter = grafana.row_filter("pageviews").unwrap();
    assert_eq!(filter.sql, "country = 'DE'");
    assert!(grafana.row_filter("traffic").is_none());
    assert_eq!(config.auth.tokens[1].scopes.len(), 3);
    let defaults = load("", &[]).unwrap();
    assert!(!defaults.auth.enabled && defaults.auth.tokens.is_empty());
}

#[test]
fn auth_problems_name_their_key() {
    let token = |extra: &str| {
        format!(
            "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"t\"\nsha256 = \"{HASH}\"\nscopes = [\"read\"]\n{extra}"
        )
    };
    let cases = [
        (
            token("[auth.tokens.row_filter]\npageviews = \"latency_ms > 3\""),
            "auth.tokens[0].row_filter.pageviews: cannot plan filter",
        ),
        (
            token("[auth.tokens.row_filter]\nnope = \"country = 'DE'\""),
            "auth.tokens[0].row_filter.nope: no view \"nope\"",
        ),
        (
            token("max_requests = 3"),
            "auth.tokens[0].max_requests: unknown key",
        ),
        (
            token("max_requests_per_s = 0"),
            "auth.tokens[0].max_requests_per_s: must be a whole number",
        ),
        (
            "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"t\"\nsha256 = \"secret\"\nscopes = [\"read\"]".to_owned(),
            "auth.tokens[0].sha256: must be the token's SHA-256",
        ),
        (
            format!("[[auth.tokens]]\nname = \"t\"\nsha256 = \"{HASH}\"\nscopes = [\"root\"]"),
            "auth.tokens[0].scopes: must list read, ingest or admin",
        ),
        (
            "[auth]\nenabled = true".to_owned(),
            "auth.tokens: auth is enabled but no token is configured",
        ),
    ];
    for (file, expected) in cases {
        let found = problems(&file);
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "{file}\n{found:?}"
        );
    }
}

#[test]
fn speed_nodes_are_urls_from_a_file_or_a_comma_separated_variable() {
    let config = load(
        "[serving]\nspeed_nodes = [\"http://10.0.0.5:8080\", \"https://speed-1:8443\"]",
        &[],
    )
    .unwrap();
    assert_eq!(
        config.serving.speed_nodes,
        ["http://10.0.0.5:8080", "https://speed-1:8443"]
    );
    let config = load(
        "",
        &[(
            "TRIBUTARY_SERVING__SPEED_NODES",
            "http://a:8080, http://b:8080,",
        )],
    )
    .unwrap();
    assert_eq!(
        config.serving.speed_nodes,
        ["http://a:8080", "http://b:8080"]
    );
    assert!(
        Config::from_sources(None, [])
            .unwrap()
            .serving
            .speed_nodes
            .is_empty()
    );
    let wrong = problems("[serving]\nspeed_nodes = [\"10.0.0.5:8080\"]");
    assert!(wrong[0].starts_with("serving.speed_nodes: "), "{wrong:?}");
    assert!(wrong[0].contains("http://"), "{wrong:?}");
    let wrong = problems("[serving]\nspeed_nodes = \"http://a:8080\"");
    assert_eq!(wrong, ["serving.speed_nodes: must be a list of strings"]);
    let wrong = problems("[serving]\nspeed_poll = \"2s\"\nspeed_node_timeout = \"1s\"");
    assert_eq!(
        wrong,
        ["serving.speed_node_timeout: must be longer than speed_poll (2s)"]
    );
}
