//! Differential tests: DataFusion plans over the UDAFs against the algebra applied value by value,
//! through DataFusion's multi-partition (partial → repartition → final) aggregation.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{SessionConfig, SessionContext, col};
use proptest::prelude::*;

use super::*;
use crate::aggregate::arrow::read_state;
use crate::aggregate::tests::{aggregate, assert_equivalent, kind_and_values, merged};
use crate::event::Value;

/// One Arrow column can hold one type: floats read ints as `f64` (as `Value::as_f64` does) and
/// distinct counts read everything as strings.
fn normalize(kind: StateKind, values: Vec<Value<'static>>) -> Vec<Value<'static>> {
    values
        .into_iter()
        .map(|value| match (kind.data_type(), value) {
            (_, Value::Null) => Value::Null,
            (DataType::Binary, Value::Int(v)) if kind == StateKind::CountDistinct => {
                Value::Str(Cow::Owned(v.to_string()))
            }
            (DataType::Int64, v) => v,
            (_, v @ Value::Str(_)) => v,
            (_, v) => Value::Float(v.as_f64().expect("numeric")),
        })
        .collect()
}

/// The column type follows the kind (as a view's field type does), not the values drawn.
fn column(kind: StateKind, values: &[Value<'_>]) -> ArrayRef {
    if kind == StateKind::CountDistinct {
        return Arc::new(StringArray::from_iter(values.iter().map(|v| match v {
            Value::Str(s) => Some(s.to_string()),
            _ => None,
        })));
    }
    if matches!(
        kind,
        StateKind::FloatSum
            | StateKind::FloatMin
            | StateKind::FloatMax
            | StateKind::Avg
            | StateKind::Quantile
    ) {
        return Arc::new(Float64Array::from_iter(values.iter().map(Value::as_f64)));
    }
    Arc::new(Int64Array::from_iter(values.iter().map(|v| match v {
        Value::Int(v) => Some(*v),
        _ => None,
    })))
}

/// Runs `SELECT g, <function>(v) FROM t GROUP BY g` over `batches` split into 4 partitions.
async fn run(
    function: AggregateUDF,
    groups: &[i64],
    values: ArrayRef,
) -> Vec<(i64, ArrayRef, usize)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("v", values.data_type().clone(), true),
    ]));
    let all = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int64Array::from(groups.to_vec())), values],
    )
    .unwrap();
    let chunk = all.num_rows().div_ceil(7).max(1);
    let batches: Vec<_> = (0..all.num_rows())
        .step_by(chunk)
        .map(|start| all.slice(start, chunk.min(all.num_rows() - start)))
        .collect();
    let config = SessionConfig::new()
        .with_target_partitions(4)
        .with_batch_size(64);
    let ctx = SessionContext::new_with_config(config);
    let frame = if batches.is_empty() {
        ctx.read_batch(RecordBatch::new_empty(schema)).unwrap()
    } else {
        ctx.read_batches(batches).unwrap()
    };
    let out = frame
        .repartition(datafusion::logical_expr::Partitioning::RoundRobinBatch(4))
        .unwrap()
        .aggregate(
            vec![col("g")],
            vec![function.call(vec![col("v")]).alias("s")],
        )
        .unwrap()
        .collect()
        .await
        .unwrap();
    out.iter()
        .flat_map(|batch| {
            let g = batch.column(0).as_primitive::<Int64Type>().clone();
            (0..batch.num_rows()).map(move |row| (g.value(row), Arc::clone(batch.column(1)), row))
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn update_and_merge_functions_compute_the_algebras_states(
        (kind, values) in kind_and_values(),
        keys in proptest::collection::vec(0i64..5, 5000),
    ) {
        let values = normalize(kind, values);
        let groups = &keys[..values.len()];
        let rows = runtime().block_on(run(StateUdaf::udaf(kind, Phase::Update), groups, column(kind, &values)));

        let expected = |wanted: &dyn Fn(i64) -> bool| {
            let picked: Vec<_> = values.iter().zip(groups).filter(|(_, g)| wanted(**g)).map(|(v, _)| v.clone()).collect();
            (aggregate(kind, &picked), picked)
        };
        let mut seen: Vec<i64> = groups.to_vec();
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(rows.len(), seen.len(), "one row per group");
        for (group, states, row) in &rows {
            let (want, picked) = expected(&|g| g == *group);
            let got = read_state(kind, states, *row).unwrap();
            assert_equivalent(&got, &want, &picked)?;
        }

        // Merge the per-group states again, two groups into one.
        let state_groups: Vec<i64> = rows.iter().map(|(g, _, _)| g % 2).collect();
        let states: Vec<MetricState> = rows.iter().map(|(_, s, r)| read_state(kind, s, *r).unwrap()).collect();
        let mut builder = StateColumnBuilder::new(kind);
        states.iter().for_each(|s| builder.append(s).unwrap());
        let merged_rows = runtime().block_on(run(StateUdaf::udaf(kind, Phase::Merge), &state_groups, builder.finish()));
        for (group, states, row) in &merged_rows {
            let (want, picked) = expected(&|g| g % 2 == *group);
            let got = read_state(kind, states, *row).unwrap();
            assert_equivalent(&got, &want, &picked)?;
            let _ = merged;
        }
    }
}

#[test]
fn wrong_argument_types_are_plan_errors_that_say_what_fits() {
    let error = StateUdaf::new(StateKind::Quantile, Phase::Update)
        .return_type(&[DataType::Utf8])
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("state_quantile() cannot take an argument of type Utf8"),
        "{error}"
    );
    let error = StateUdaf::new(StateKind::Avg, Phase::Merge)
        .return_type(&[DataType::Float64])
        .unwrap_err();
    assert!(error.to_string().contains("merge_avg()"), "{error}");
}

#[test]
fn an_aggregate_without_groups_of_nothing_is_the_empty_state() {
    let rows = runtime().block_on(async {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        ctx.read_batch(RecordBatch::new_empty(schema))
            .unwrap()
            .aggregate(
                vec![],
                vec![StateUdaf::udaf(StateKind::Quantile, Phase::Update).call(vec![col("v")])],
            )
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    let state = read_state(StateKind::Quantile, rows[0].column(0), 0).unwrap();
    assert_eq!(state, MetricState::empty(StateKind::Quantile));
}

#[test]
fn memory_accounting_counts_logged_keys_and_each_sketch_once() {
    let mut states = States::<Hll>::new(StateKind::CountDistinct, Phase::Update);
    let values: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..50_000).map(|i| format!("user-{i}")),
    ));
    states
        .update_batch(&[Arc::clone(&values)], &vec![0; 50_000], None, 1)
        .unwrap();
    // Logged, not folded yet: 8 bytes a row.
    assert_eq!(states.log.len(), 50_000);
    assert!(states.size() >= 50_000 * 8, "{}", states.size());
    // Past the fold limit the keys go into the group's one dense sketch: 16 KiB of registers,
    // counted once however many rows it took.
    states
        .update_batch(&[values], &vec![0; 50_000], None, 1)
        .unwrap();
    assert!(states.log.is_empty());
    let sketch = states.size() - states.log.capacity() * size_of::<u64>();
    assert!((16_384..20_000).contains(&sketch), "{sketch}");
}

/// Rows of `groups` groups, some busy, enough of them to fold the log more than once.
fn folding_rows(groups: usize) -> (Vec<usize>, Vec<f64>) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    (0..200_000)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let group = match rng % 4 {
                0 => 0,
                _ => (rng >> 8) as usize % groups,
            };
            let value = match rng % 97 {
                0 => 0.0,
                1 => -((rng >> 20) as f64),
                _ => (rng >> 40) as f64 / 1000.0,
            };
            (group, value)
        })
        .unzip()
}

/// The algebra's HyperLogLog of the `picked` strings.
fn distinct_of(strings: &[String], picked: &[usize]) -> MetricState {
    let mut sketch = Hll::default();
    picked
        .iter()
        .for_each(|&r| sketch.insert_hash(hll::hash_str(&strings[r])));
    MetricState::CountDistinct(sketch)
}

/// Emits `states` first in part, then whole (groups renumbered, as DataFusion does), and checks
/// every group's bytes against the sketch built value by value.
fn emits_in_parts_match<S: ColumnState>(
    mut states: States<S>,
    groups: usize,
    values: &ArrayRef,
    rows: &[usize],
    expected: impl Fn(&[usize]) -> MetricState,
) {
    let kind = states.kind;
    for chunk in (0..rows.len()).step_by(8192) {
        let end = (chunk + 8192).min(rows.len());
        states
            .update_batch(
                &[values.slice(chunk, end - chunk)],
                &rows[chunk..end],
                None,
                groups,
            )
            .unwrap();
    }
    let first = 40;
    let head = states.evaluate(EmitTo::First(first)).unwrap();
    let tail = states.evaluate(EmitTo::All).unwrap();
    assert_eq!((head.len(), tail.len()), (first, groups - first));
    for group in 0..groups {
        let (column, row) = match group < first {
            true => (&head, group),
            false => (&tail, group - first),
        };
        let picked: Vec<usize> = (0..rows.len()).filter(|&r| rows[r] == group).collect();
        let want = expected(&picked);
        let got = read_state(kind, column, row).unwrap();
        assert_eq!(
            column.as_binary::<i32>().value(row),
            want.to_bytes().as_slice(),
            "group {group} of {kind}"
        );
        assert_eq!(got, want);
    }
}

#[test]
fn logged_sketch_updates_fold_and_emit_in_parts_as_the_algebra_computes() {
    let groups = 100;
    let (rows, values) = folding_rows(groups);
    let floats: ArrayRef = Arc::new(Float64Array::from(values.clone()));
    emits_in_parts_match(
        States::<DdSketch>::new(StateKind::Quantile, Phase::Update),
        groups,
        &floats,
        &rows,
        |picked| {
            let mut sketch = DdSketch::default();
            picked.iter().for_each(|&r| sketch.update(values[r]));
            MetricState::Quantile(sketch)
        },
    );
    let strings: Vec<String> = values
        .iter()
        .map(|v| format!("u{}", (v * 7.0) as i64 % 5000))
        .collect();
    let column: ArrayRef = Arc::new(StringArray::from(strings.clone()));
    emits_in_parts_match(
        States::<Hll>::new(StateKind::CountDistinct, Phase::Update),
        groups,
        &column,
        &rows,
        |picked| distinct_of(&strings, picked),
    );
}

/// HyperLogLog updates are all key: while the log holds them no state is allocated, and emitting
/// in parts still gives every group its sketch (here nothing folds: 30k keys for 5000 groups).
#[test]
fn logged_distinct_counts_allocate_no_states_and_emit_in_parts() {
    let groups = 5000;
    let (rows, values) = folding_rows(groups);
    let (rows, values) = (&rows[..30_000], &values[..30_000]);
    let strings: Vec<String> = values.iter().map(|v| format!("u{v}")).collect();
    let column: ArrayRef = Arc::new(StringArray::from(strings.clone()));
    let mut lazy = States::<Hll>::new(StateKind::CountDistinct, Phase::Update);
    lazy.update_batch(&[Arc::clone(&column)], rows, None, groups)
        .unwrap();
    assert_eq!((lazy.groups, lazy.states.len()), (groups, 0));
    assert_eq!(lazy.log.len(), rows.len());
    emits_in_parts_match(
        States::<Hll>::new(StateKind::CountDistinct, Phase::Update),
        groups,
        &column,
        rows,
        |picked| distinct_of(&strings, picked),
    );
}
