//! The speed states against the algebra applied event by event, and the seam: epochs below a
//! boundary are excluded from snapshots and dropped.

use std::collections::BTreeMap;

use arrow::datatypes::TimestampMillisecondType;
use tributary_schemas::aggregate::MetricState;
use tributary_schemas::aggregate::arrow::read_state;
use tributary_schemas::config::Config;
use tributary_testkit::stream::mixed_event;

use super::*;

fn defaults() -> Config {
    Config::from_sources(None, []).unwrap()
}

/// The default events with `views` (TOML `[[views]]` tables) in place of the default views.
fn with_views(views: &str) -> Config {
    let events = tributary_schemas::config::DEFAULT_CONFIG
        .split("[[views]]")
        .next()
        .unwrap();
    Config::from_sources(Some((&format!("{events}\n{views}"), "test.toml")), []).unwrap()
}

/// Event `n` of the test stream: the shared mixed stream (1% malformed), with every 7th event
/// missing its page (so `pageviews`' filter drops it) and a few late ones.
fn payload(n: u64) -> Vec<u8> {
    let (payload, _) = mixed_event(n);
    let text = String::from_utf8_lossy(&payload).to_string();
    let text = if n % 7 == 3 {
        text.replace(&format!("\"page\":\"/p/{}\",", n % 50), "")
    } else {
        text
    };
    if n % 11 == 5 {
        text.replace("\"ts\":1795", "\"ts\":1794")
    } else {
        text
    }
    .into_bytes()
}

/// Per row key, the algebra over the events of `positions` the view keeps.
fn truth(
    config: &Config,
    view: &ViewDef,
    messages: &[(KafkaPosition, Vec<u8>)],
) -> BTreeMap<(i64, Vec<String>), Vec<MetricState>> {
    let decoder = Decoder::new(config.events.clone());
    let mut rows = BTreeMap::new();
    for (position, payload) in messages {
        let Ok(event) = decoder.decode(payload) else {
            continue;
        };
        if view.filter.is_some() {
            let page = config.events.field_index("page").unwrap();
            if event.values[page].is_null() {
                continue;
            }
        }
        let key = (
            view.granularity.bucket_start(event.time_ms),
            view.dimensions
                .iter()
                .map(|d| format!("{:?}", event.values[d.index]))
                .collect(),
        );
        let states = rows.entry(key).or_insert_with(|| {
            view.metrics
                .iter()
                .map(|m| MetricState::empty(m.state_kind()))
                .collect::<Vec<_>>()
        });
        // Late: Kafka got it more than the default `late_after` (1m) after its event time.
        let late = (position.timestamp_ms).is_some_and(|kafka| kafka - event.time_ms > 60_000);
        for (state, metric) in states.iter_mut().zip(&view.metrics) {
            if metric.name != "late" || late {
                state.update(metric.value(&event.values));
            }
        }
    }
    rows
}

/// Speed rows merged across epochs, by row key.
fn merged(rows: Vec<SpeedRow>) -> BTreeMap<(i64, Vec<String>), Vec<MetricState>> {
    let mut out: BTreeMap<(i64, Vec<String>), Vec<MetricState>> = BTreeMap::new();
    for row in rows {
        let key = (
            row.bucket_ms,
            row.dimensions.iter().map(|v| format!("{v:?}")).collect(),
        );
        match out.get_mut(&key) {
            Some(states) => {
                for (mine, theirs) in states.iter_mut().zip(&row.states) {
                    mine.merge(theirs).unwrap();
                }
            }
            None => {
                out.insert(key, row.states);
            }
        }
    }
    out
}

fn messages(count: u64, partitions: i32) -> Vec<(KafkaPosition, Vec<u8>)> {
    (0..count)
        .map(|n| {
            let partition = (n % partitions as u64) as i32;
            // Kafka stamps each 0 to 160 s after its event time (late past 60 s), some not at all.
            let stamped = 1_795_000_000_000 + n as i64 * 37 + (n % 9) as i64 * 20_000;
            let position = KafkaPosition {
                partition,
                offset: (n / partitions as u64) as i64,
                timestamp_ms: (n % 17 != 0).then_some(stamped),
            };
            (position, payload(n))
        })
        .collect()
}

fn apply_in_polls(aggregator: &mut Aggregator, messages: &[(KafkaPosition, Vec<u8>)]) -> Applied {
    let mut total = Applied::default();
    for poll in messages.chunks(137) {
        let borrowed: Vec<(KafkaPosition, &[u8])> =
            poll.iter().map(|(p, m)| (*p, m.as_slice())).collect();
        let applied = aggregator.apply(&borrowed).unwrap();
        total.events += applied.events;
        total.malformed += applied.malformed;
    }
    total
}

/// Float sums add in another order than the truth: compare them within 1e-9 relative.
fn assert_equivalent(
    got: &BTreeMap<(i64, Vec<String>), Vec<MetricState>>,
    want: &BTreeMap<(i64, Vec<String>), Vec<MetricState>>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (key, states) in want {
        for (a, b) in got[key].iter().zip(states) {
            match (a, b) {
                (MetricState::FloatSum(x), MetricState::FloatSum(y)) => {
                    assert!(
                        (x.finalize() - y.finalize()).abs() <= 1e-9 * y.finalize().abs().max(1.0)
                    );
                }
                (MetricState::Avg(x), MetricState::Avg(y)) => {
                    assert_eq!(x.count(), y.count());
                    assert!((x.sum() - y.sum()).abs() <= 1e-9 * y.sum().abs().max(1.0));
                }
                _ => assert_eq!(a, b, "{key:?}"),
            }
        }
    }
}

#[test]
fn speed_states_equal_the_algebra_over_the_same_events() {
    let config = defaults();
    let all = messages(20_000, 3);
    let mut aggregator = Aggregator::new(&config.events, &config.views, 1000).unwrap();
    let applied = apply_in_polls(&mut aggregator, &all);
    assert_eq!(applied.events + applied.malformed, 20_000);
    assert_eq!(
        applied.malformed,
        20_000 / 100 * 3,
        "three malformed kinds per 100"
    );
    assert_eq!(
        aggregator.next_offsets,
        [(0, 6667), (1, 6667), (2, 6666)].into()
    );
    for (states, view) in aggregator.views().iter().zip(&config.views) {
        let got = merged(states.snapshot(&Boundary::default()).unwrap());
        assert_equivalent(&got, &truth(&config, view, &all));
    }
}

#[test]
fn snapshots_take_only_epochs_above_the_boundary_and_dropping_frees_them() {
    let config = defaults();
    let all = messages(9_000, 3);
    let mut aggregator = Aggregator::new(&config.events, &config.views, 500).unwrap();
    apply_in_polls(&mut aggregator, &all);
    // The batch version covers offsets below 1500 of partition 0 and 1000 of partition 2.
    let boundary = Boundary([(0, 1500), (2, 1000)].into());
    let above: Vec<_> = all
        .iter()
        .filter(|(p, _)| !boundary.covers(p.partition, p.offset))
        .cloned()
        .collect();
    let view = &config.views[0];
    let got = merged(aggregator.views()[0].snapshot(&boundary).unwrap());
    assert_equivalent(&got, &truth(&config, view, &above));

    let before = aggregator.views()[0].epochs().len();
    aggregator.views_mut()[0].drop_below(&boundary);
    assert_eq!(aggregator.views()[0].epochs().len(), before - 3 - 2);
    let after = merged(
        aggregator.views()[0]
            .snapshot(&Boundary::default())
            .unwrap(),
    );
    assert_equivalent(&after, &truth(&config, view, &above));
}

/// Filters see only the columns they name, planned against a batch of just those: several fields,
/// the time field, and a filter naming none, each against a count computed by hand.
#[test]
fn filters_naming_several_fields_keep_the_same_events_as_a_direct_check() {
    let from = 1_795_000_000_000i64 + 5_000 * 37;
    let config = with_views(&format!(
        r#"[[views]]
name = "slow_late_users"
granularity = "1h"
filter = "latency_ms > 150 AND user_id <> 'u7' AND ts >= to_timestamp_millis({from})"
[views.metrics]
n = "count"

[[views]]
name = "constant"
granularity = "1h"
filter = "1 = 1"
[views.metrics]
n = "count"
"#
    ));
    let all = messages(10_000, 3);
    let mut aggregator = Aggregator::new(&config.events, &config.views, 1000).unwrap();
    let applied = apply_in_polls(&mut aggregator, &all);

    let decoder = Decoder::new(config.events.clone());
    let (latency, user) = (
        config.events.field_index("latency_ms").unwrap(),
        config.events.field_index("user_id").unwrap(),
    );
    let expected = all
        .iter()
        .filter_map(|(_, payload)| decoder.decode(payload).ok())
        .filter(|event| {
            event.values[latency].as_f64().is_some_and(|l| l > 150.0)
                && event.values[user] != Value::Str("u7".into())
                && event.time_ms >= from
        })
        .count() as u64;
    let counted = |view: usize| -> u64 {
        aggregator.views()[view]
            .epochs()
            .values()
            .map(|e| e.events)
            .sum()
    };
    assert!(expected > 1000 && expected < applied.events, "{expected}");
    assert_eq!(counted(0), expected);
    assert_eq!(counted(1), applied.events);
}

/// Row keys of any width: views with no dimension and with three, four and six (strings, ints and
/// floats, with NULLs) each equal the algebra over the same events.
#[test]
fn views_of_any_number_of_dimensions_give_the_rows_of_the_algebra() {
    let view = |name: &str, dimensions: &str| {
        format!(
            "[[views]]\nname = \"{name}\"\ngranularity = \"1m\"\ndimensions = [{dimensions}]\n\
             [views.metrics]\nn = \"count\"\nusers = \"count_distinct(user_id)\"\n"
        )
    };
    let config = with_views(
        &[
            view("none", ""),
            view("three", r#""page", "country", "device""#),
            view("four", r#""page", "country", "device", "bytes""#),
            view(
                "six",
                r#""page", "country", "device", "referrer", "latency_ms", "user_id""#,
            ),
        ]
        .join("\n"),
    );
    let all = messages(6_000, 3);
    let mut aggregator = Aggregator::new(&config.events, &config.views, 1000).unwrap();
    apply_in_polls(&mut aggregator, &all);
    for (states, view) in aggregator.views().iter().zip(&config.views) {
        let got = merged(states.snapshot(&Boundary::default()).unwrap());
        let want = truth(&config, view, &all);
        assert!(want.len() >= 9, "{}: {} rows", view.name, want.len());
        assert_equivalent(&got, &want);
    }
}

/// Metrics with equal states share one (quantiles of one field, counts), wherever they sit in the
/// view; each metric still gets its own state in row snapshots and in the Arrow parts, equal to the
/// algebra's.
#[test]
fn metrics_with_equal_states_share_one_and_each_still_reads_its_own() {
    let config = with_views(
        "[[views]]\nname = \"shared\"\ngranularity = \"1m\"\ndimensions = [\"device\"]\n\
         [views.metrics]\np50 = \"quantile(latency_ms, 0.5)\"\nn = \"count\"\n\
         bytes_p90 = \"quantile(bytes, 0.9)\"\np99 = \"quantile(latency_ms, 0.99)\"\n\
         again = \"count\"\nusers = \"count_distinct(user_id)\"\n\
         sessions = \"count_distinct(session_id)\"\nusers_too = \"count_distinct(user_id)\"\n",
    );
    let view = &config.views[0];
    let names: Vec<&str> = view.metrics.iter().map(|m| m.name.as_str()).collect();
    let (defining, sources) = shared_states(&view.metrics);
    let defined: Vec<&str> = defining.iter().map(|&m| names[m]).collect();
    let shared: Vec<(&str, &str)> = (names.iter().zip(&sources))
        .map(|(&name, &source)| (name, defined[source]))
        .collect();
    // The built-in `late` counts too, but only late events: a state of its own.
    assert_eq!(defined.len(), 6, "{shared:?}");
    for (metric, state) in [
        ("p99", "p50"),
        ("again", "n"),
        ("users_too", "users"),
        ("late", "late"),
    ] {
        assert!(shared.contains(&(metric, state)), "{shared:?}");
    }

    let all = messages(6_000, 3);
    let mut aggregator = Aggregator::new(&config.events, &config.views, 1000).unwrap();
    apply_in_polls(&mut aggregator, &all);
    let states = &aggregator.views()[0];
    let want = truth(&config, view, &all);
    assert_equivalent(
        &merged(states.snapshot(&Boundary::default()).unwrap()),
        &want,
    );

    let parts = states
        .snapshot_parts(&Boundary::default(), &aggregator.next_offsets)
        .unwrap();
    let mut rows = Vec::new();
    for part in &parts.parts {
        let batch = &part.batch;
        let time = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let device = batch.column(1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let states = (view.metrics.iter().enumerate())
                .map(|(m, metric)| read_state(metric.state_kind(), batch.column(2 + m), row))
                .collect::<Result<_, _>>()
                .unwrap();
            let dimension = match device.is_null(row) {
                true => Value::Null,
                false => Value::Str(device.value(row).to_owned().into()),
            };
            rows.push(SpeedRow {
                bucket_ms: time.value(row),
                dimensions: vec![dimension],
                states,
            });
        }
    }
    assert_equivalent(&merged(rows), &want);
}

/// What a speed node sends a serving node (issue 32): the view of a definition, all its parts
/// above where its states start, and that start after a new version dropped the epochs below it.
#[test]
fn an_export_carries_a_views_parts_and_where_its_states_start() {
    use crate::consumer::{SpeedLayer, SpeedSettings};
    use crate::export::decode;
    use std::collections::BTreeSet;

    let config = defaults();
    let all = messages(9_000, 3);
    let mut aggregator = Aggregator::new(&config.events, &config.views, 500).unwrap();
    apply_in_polls(&mut aggregator, &all);
    let start = Boundary([(0, 500)].into());
    // Drops at once: the delay serving nodes get (`drop_after`) is tested with the consumer.
    let settings = SpeedSettings {
        drop_after: std::time::Duration::ZERO,
        ..SpeedSettings::from_config(&config)
    };
    let speed = SpeedLayer::new(settings, aggregator, start);
    let view = &config.views[1];
    let hash = view.definition_hash();
    let bytes = speed.export(&hash, &BTreeSet::new()).unwrap().unwrap();
    let (head, parts) = decode(&bytes, &view.state_schema()).unwrap();
    assert_eq!(head.definition_hash, hash);
    assert_eq!(head.next_offsets, [(0, 3000), (1, 3000), (2, 3000)].into());
    assert_eq!(head.held_from, Boundary([(0, 500)].into()));
    let local = speed.read(|a| a.views()[1].snapshot_parts(&Boundary::default(), &a.next_offsets));
    let local = local.unwrap();
    assert_eq!(parts.len(), local.parts.len());
    for (got, want) in parts.iter().zip(&local.parts) {
        assert_eq!(
            (got.partition, got.epoch, got.sealed),
            (want.partition, want.epoch, want.sealed)
        );
        assert_eq!(got.batch, want.batch);
    }
    assert_eq!(head.events, local.events);

    // A version covering offsets below 1500 of partition 1: those epochs go, and the head says so.
    speed.drop_below(1, &Boundary([(1, 1500)].into()));
    let have: BTreeSet<(i32, i64)> = parts.iter().map(|p| (p.partition, p.epoch)).collect();
    let bytes = speed.export(&hash, &have).unwrap().unwrap();
    let (head, parts) = decode(&bytes, &view.state_schema()).unwrap();
    assert_eq!(head.held_from, Boundary([(0, 500), (1, 1500)].into()));
    assert!(
        parts.is_empty(),
        "every part is sealed and held: {:?}",
        head.parts
    );
    assert_eq!(speed.export("another definition", &have).unwrap(), None);
    speed.retire(1);
    assert_eq!(speed.export(&hash, &have).unwrap(), None, "retired");
}
