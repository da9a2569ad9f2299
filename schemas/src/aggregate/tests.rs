//! Property tests of the algebra's laws, for every state kind.

use std::borrow::Cow;

use proptest::prelude::*;

use super::arrow::{StateColumnBuilder, read_state};
use super::*;

/// A state kind with a stream of values that fits it (nulls included).
pub(crate) fn kind_and_values() -> impl Strategy<Value = (StateKind, Vec<Value<'static>>)> {
    let int = prop_oneof![
        9 => any::<i64>().prop_map(Value::Int),
        1 => Just(Value::Null),
    ];
    let float = prop_oneof![
        6 => (-1e12f64..1e12).prop_map(Value::Float),
        2 => (-1000i64..1000).prop_map(Value::Int),
        1 => prop_oneof![Just(Value::Float(0.0)), Just(Value::Float(-0.0))],
        1 => Just(Value::Null),
    ];
    // A small alphabet gives duplicates; a large range crosses the sparse/dense boundary.
    let distinct = prop_oneof![
        (0u32..50).prop_map(|v| Value::Str(Cow::Owned(format!("user-{v}")))),
        (0u32..20_000).prop_map(|v| Value::Str(Cow::Owned(format!("u{v}")))),
        any::<i64>().prop_map(Value::Int),
        Just(Value::Null),
    ];
    let ints = proptest::collection::vec(int, 0..200);
    let floats = proptest::collection::vec(float, 0..200);
    prop_oneof![
        ints.clone().prop_map(|v| (StateKind::Count, v)),
        ints.clone().prop_map(|v| (StateKind::IntSum, v)),
        ints.clone().prop_map(|v| (StateKind::IntMin, v)),
        ints.prop_map(|v| (StateKind::IntMax, v)),
        floats.clone().prop_map(|v| (StateKind::FloatSum, v)),
        floats.clone().prop_map(|v| (StateKind::FloatMin, v)),
        floats.clone().prop_map(|v| (StateKind::FloatMax, v)),
        floats.clone().prop_map(|v| (StateKind::Avg, v)),
        floats.prop_map(|v| (StateKind::Quantile, v)),
        proptest::collection::vec(distinct, 0..5000).prop_map(|v| (StateKind::CountDistinct, v)),
    ]
}

pub(crate) fn aggregate(kind: StateKind, values: &[Value<'_>]) -> MetricState {
    let mut state = MetricState::empty(kind);
    values.iter().for_each(|v| state.update(v));
    state
}

pub(crate) fn merged(mut left: MetricState, right: &MetricState) -> MetricState {
    left.merge(right).expect("same kinds merge");
    left
}

/// Equal, bit for bit, except float sums (and avg's sum), which add in a different order and must
/// agree within 1e-9 of the sum of magnitudes (the bound that holds whatever the cancellation).
pub(crate) fn assert_equivalent(
    left: &MetricState,
    right: &MetricState,
    values: &[Value<'_>],
) -> Result<(), TestCaseError> {
    let magnitude: f64 = values.iter().filter_map(Value::as_f64).map(f64::abs).sum();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * magnitude.max(f64::MIN_POSITIVE);
    match (left, right) {
        (MetricState::FloatSum(a), MetricState::FloatSum(b)) => {
            prop_assert!(close(a.finalize(), b.finalize()), "{a:?} vs {b:?}");
        }
        (MetricState::Avg(a), MetricState::Avg(b)) => {
            prop_assert_eq!(a.count(), b.count());
            prop_assert!(close(a.sum(), b.sum()), "{a:?} vs {b:?}");
        }
        _ => prop_assert_eq!(left, right),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn merging_parts_equals_aggregating_the_whole(
        (kind, values) in kind_and_values(),
        split in any::<prop::sample::Index>(),
    ) {
        let cut = split.index(values.len() + 1);
        let (a, b) = values.split_at(cut);
        let whole = aggregate(kind, &values);
        assert_equivalent(&merged(aggregate(kind, a), &aggregate(kind, b)), &whole, &values)?;
    }

    #[test]
    fn merge_is_associative_and_commutative(
        (kind, values) in kind_and_values(),
        cuts in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let mut at = [cuts.0.index(values.len() + 1), cuts.1.index(values.len() + 1)];
        at.sort_unstable();
        let a = aggregate(kind, &values[..at[0]]);
        let b = aggregate(kind, &values[at[0]..at[1]]);
        let c = aggregate(kind, &values[at[1]..]);
        let left = merged(merged(a.clone(), &b), &c);
        let right = merged(a.clone(), &merged(b.clone(), &c));
        assert_equivalent(&left, &right, &values)?;
        assert_equivalent(&merged(a.clone(), &b), &merged(b, &a), &values)?;
    }

    #[test]
    fn the_empty_state_is_the_identity((kind, values) in kind_and_values()) {
        let state = aggregate(kind, &values);
        prop_assert_eq!(&merged(state.clone(), &MetricState::empty(kind)), &state);
        prop_assert_eq!(&merged(MetricState::empty(kind), &state), &state);
    }

    #[test]
    fn byte_and_arrow_forms_round_trip((kind, values) in kind_and_values()) {
        let state = aggregate(kind, &values);
        prop_assert_eq!(&MetricState::from_bytes(&state.to_bytes()).unwrap(), &state);

        let mut builder = StateColumnBuilder::new(kind);
        builder.append(&MetricState::empty(kind)).unwrap();
        builder.append(&state).unwrap();
        let column = builder.finish();
        prop_assert_eq!(column.data_type(), &kind.data_type());
        prop_assert_eq!(read_state(kind, &column, 0).unwrap(), MetricState::empty(kind));
        prop_assert_eq!(&read_state(kind, &column, 1).unwrap(), &state);
    }

    /// Quantiles read in place equal those of the decoded sketch, bit for bit, for any q.
    #[test]
    fn quantiles_read_from_bytes_equal_the_decoded_sketchs(
        values in proptest::collection::vec(prop_oneof![
            6 => -1e6f64..1e6,
            1 => Just(0.0),
            2 => (-50i64..50).prop_map(|v| v as f64),
        ], 0..300),
        q in 0.0f64..=1.0,
    ) {
        let state = aggregate(StateKind::Quantile, &values.iter().map(|&v| Value::Float(v)).collect::<Vec<_>>());
        let bytes = state.to_bytes();
        for q in [q, 0.0, 0.01, 0.5, 0.95, 0.99, 1.0] {
            let expected = match state.finalize(q, false) {
                Finalized::Float(v) => Some(v.to_bits()),
                _ => None,
            };
            let read = quantile_from_bytes(&bytes, q).unwrap().map(f64::to_bits);
            prop_assert_eq!(read, expected, "q={}", q);
        }
    }

    #[test]
    fn quantiles_of_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut framed = vec![STATE_FORMAT_VERSION, StateKind::Quantile.tag()];
        framed.extend_from_slice(&bytes);
        let read = quantile_from_bytes(&framed, 0.5);
        if let Err(error) = MetricState::from_bytes(&framed) {
            prop_assert!(read.is_err(), "{error}: read as {read:?}");
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = MetricState::from_bytes(&bytes);
        let mut tagged = vec![STATE_FORMAT_VERSION];
        tagged.extend_from_slice(&bytes);
        let _ = MetricState::from_bytes(&tagged);
    }

    #[test]
    fn exact_aggregates_match_a_direct_computation(values in proptest::collection::vec(any::<i64>(), 1..100)) {
        let ints: Vec<Value<'static>> = values.iter().map(|v| Value::Int(*v)).collect();
        let total = values.iter().fold(0i64, |acc, v| acc.wrapping_add(*v));
        prop_assert_eq!(aggregate(StateKind::IntSum, &ints).finalize(0.0, false), Finalized::Int(total));
        prop_assert_eq!(
            aggregate(StateKind::IntMin, &ints).finalize(0.0, false),
            Finalized::Int(*values.iter().min().unwrap())
        );
        prop_assert_eq!(
            aggregate(StateKind::IntMax, &ints).finalize(0.0, true),
            Finalized::Timestamp(*values.iter().max().unwrap())
        );
        prop_assert_eq!(aggregate(StateKind::Count, &ints).finalize(0.0, false), Finalized::Int(values.len() as i64));
    }

    #[test]
    fn distinct_counts_are_within_five_standard_errors(values in proptest::collection::vec(0u32..40_000, 0..8000)) {
        let exact = values.iter().collect::<std::collections::HashSet<_>>().len() as i64;
        let strings: Vec<Value<'static>> = values.iter().map(|v| Value::Str(Cow::Owned(v.to_string()))).collect();
        let Finalized::Int(estimate) = aggregate(StateKind::CountDistinct, &strings).finalize(0.0, false) else {
            unreachable!("count_distinct finalizes to an integer");
        };
        prop_assert!((estimate - exact).abs() as f64 <= (0.0405 * exact as f64).max(1.0), "{estimate} vs {exact}");
    }

    #[test]
    fn quantiles_are_within_one_percent_of_the_exact_lower_quantile(
        values in proptest::collection::vec(-1e9f64..1e9, 1..500),
        q in 0.0f64..=1.0,
    ) {
        let floats: Vec<Value<'static>> = values.iter().map(|v| Value::Float(*v)).collect();
        let Finalized::Float(estimate) = aggregate(StateKind::Quantile, &floats).finalize(q, false) else {
            unreachable!("a non-empty quantile sketch finalizes to a float");
        };
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        prop_assert!((estimate - exact).abs() <= RELATIVE_ACCURACY * exact.abs() + 1e-9, "{estimate} vs {exact}");
    }
}

#[test]
fn a_distinct_sketch_of_ten_values_serializes_to_at_most_64_bytes() {
    for seed in 0..200u64 {
        let values: Vec<Value<'static>> = (0..10)
            .map(|i| Value::Str(Cow::Owned(format!("user-{seed}-{i}"))))
            .collect();
        let state = aggregate(StateKind::CountDistinct, &values);
        let bytes = state.to_bytes();
        assert!(bytes.len() <= 64, "seed {seed}: {} bytes", bytes.len());
        assert_eq!(state.finalize(0.0, false), Finalized::Int(10));
    }
}

#[test]
fn merging_different_kinds_is_an_error() {
    let mut count = MetricState::empty(StateKind::Count);
    let error = count
        .merge(&MetricState::empty(StateKind::Avg))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot merge a state of kind avg into one of kind count"
    );
}

#[test]
fn states_from_a_newer_format_are_refused() {
    let mut bytes = MetricState::empty(StateKind::Count).to_bytes();
    bytes[0] = STATE_FORMAT_VERSION + 1;
    assert_eq!(
        MetricState::from_bytes(&bytes),
        Err(StateError::UnsupportedVersion(STATE_FORMAT_VERSION + 1))
    );
}

#[test]
fn avg_and_empty_aggregates_finalize_like_sql() {
    let values = [Value::Int(2), Value::Null, Value::Float(4.0)];
    assert_eq!(
        aggregate(StateKind::Avg, &values).finalize(0.0, false),
        Finalized::Float(3.0)
    );
    assert_eq!(
        aggregate(StateKind::Avg, &[]).finalize(0.0, false),
        Finalized::Null
    );
    assert_eq!(
        aggregate(StateKind::FloatMax, &[Value::Null]).finalize(0.0, false),
        Finalized::Null
    );
    assert_eq!(
        aggregate(StateKind::Count, &[Value::Null]).finalize(0.0, false),
        Finalized::Int(1)
    );
}
