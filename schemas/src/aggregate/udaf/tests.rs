//! Differential tests: DataFusion plans over the UDAFs against the algebra applied value by value,
//! through DataFusion's multi-partition (partial → repartition → final) aggregation.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{SessionConfig, SessionContext, col};
use proptest::prelude::*;

use super::super::arrow::read_state;
use super::super::tests::{aggregate, assert_equivalent, kind_and_values, merged};
use super::*;
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
        let mut builder = super::super::arrow::StateColumnBuilder::new(kind);
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
fn memory_accounting_counts_each_sketch_once_however_many_rows_it_takes() {
    let udaf = StateUdaf::new(StateKind::CountDistinct, Phase::Update);
    let mut groups = udaf.groups(&DataType::Utf8).unwrap();
    let values: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..50_000).map(|i| format!("user-{i}")),
    ));
    groups
        .update_batch(&[values], &vec![0; 50_000], None, 1)
        .unwrap();
    let size = groups.size();
    // One dense sketch: 16 KiB of registers, plus the state itself.
    assert!((16_384..20_000).contains(&size), "{size}");
}
