//! `merge(state [, q])`: the SQL aggregate that rolls a metric's states up and answers it the way the
//! metric is defined, so that a BI tool grouping `<view>_states` rows by hour, day or a dimension
//! gets the exact answer `/v1/query` gives at that grain (ClickHouse's `-Merge` combinators over
//! `AggregatingMergeTree` columns are the precedent).
//!
//! A state column does not say by its Arrow type alone what it holds (a min and a max are both
//! `Int64`; an HLL and a DDSketch are both `Binary`), so the columns of `<view>_states` carry it in
//! their field metadata ([`state_metadata`]): the state kind, and how the metric is answered (the
//! quantile a DDSketch metric was defined with, or that an integer min/max is a timestamp). `merge`
//! reads it when it is planned and runs the kind's merge function (the same groups accumulator as
//! `merge_<kind>`), then the kind's finalize, on each group's merged state. `merge(latency_p95,
//! 0.99)` answers another quantile of the same sketch.
//!
//! Why this exists: a finalized distinct count or quantile summed or averaged across rows (the
//! `<view>` table's `users`, per minute, summed per hour) is not the hour's distinct count. Merging
//! the states is.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature,
    TypeSignature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

use super::finalize::{averages, distinct_counts, quantiles};
use super::state::{Phase, SingleGroup, StateUdaf};
use crate::aggregate::StateKind;
use crate::config::{MetricDef, MetricFunction};
use crate::event::{FieldType, timestamp_type};

/// Field metadata key: the [`StateKind`] (its name) a state column holds.
pub const STATE_KIND_KEY: &str = "tributary.state";
/// Field metadata key: how the metric is answered when it is not the state itself
/// (`quantile:<q>`, `timestamp`).
pub const ANSWER_KEY: &str = "tributary.answer";

/// The metadata of `metric`'s state column in `<view>_states`, which `merge` plans with.
pub fn state_metadata(metric: &MetricDef) -> HashMap<String, String> {
    let kind = metric.state_kind();
    let mut metadata = HashMap::from([(STATE_KIND_KEY.to_owned(), kind.name().to_owned())]);
    let timestamp = metric
        .field
        .as_ref()
        .is_some_and(|f| f.ty == FieldType::Timestamp);
    let answer = match (kind, metric.function) {
        (StateKind::Quantile, MetricFunction::Quantile(q)) => Some(format!("quantile:{q}")),
        (StateKind::IntMin | StateKind::IntMax, _) if timestamp => Some("timestamp".to_owned()),
        _ => None,
    };
    metadata.extend(answer.map(|a| (ANSWER_KEY.to_owned(), a)));
    metadata
}

/// How a merged state becomes the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Finish {
    /// The state is the answer (count, sum, min, max).
    State,
    Timestamp,
    Avg,
    Distinct,
    Quantile(f64),
}

/// What one call of `merge` merges and answers, read from its argument's field.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    kind: StateKind,
    finish: Finish,
}

impl Plan {
    fn of(field: &Field) -> Result<Self> {
        let metadata = field.metadata();
        let Some(kind) = metadata
            .get(STATE_KIND_KEY)
            .and_then(|name| StateKind::ALL.into_iter().find(|k| k.name() == name))
        else {
            return plan_err!(
                "merge() takes a metric's state column of a <view>_states table, e.g. \
                 SELECT merge(users) FROM pageviews_states; {:?} is not one",
                field.name()
            );
        };
        let answer = metadata.get(ANSWER_KEY).map(String::as_str);
        let finish = match kind {
            StateKind::Avg => Finish::Avg,
            StateKind::CountDistinct => Finish::Distinct,
            StateKind::Quantile => {
                let q = answer
                    .and_then(|a| a.strip_prefix("quantile:"))
                    .and_then(|q| q.parse().ok());
                Finish::Quantile(q.unwrap_or(0.5))
            }
            StateKind::IntMin | StateKind::IntMax if answer == Some("timestamp") => {
                Finish::Timestamp
            }
            _ => Finish::State,
        };
        Ok(Self { kind, finish })
    }

    fn answer_type(&self) -> DataType {
        match self.finish {
            Finish::State => self.kind.data_type(),
            Finish::Timestamp => timestamp_type(),
            Finish::Avg | Finish::Quantile(_) => DataType::Float64,
            Finish::Distinct => DataType::Int64,
        }
    }

    /// Merged states → answers.
    fn finish(&self, states: &ArrayRef) -> Result<ArrayRef> {
        match self.finish {
            Finish::State => Ok(Arc::clone(states)),
            Finish::Timestamp => Ok(cast(states, &timestamp_type())?),
            Finish::Avg => averages(states),
            Finish::Distinct => distinct_counts(states),
            Finish::Quantile(q) => quantiles(states, q),
        }
    }

    /// The plan of a call: its first argument's field, and the quantile literal of a second.
    fn of_call(args: &AccumulatorArgs) -> Result<Self> {
        let mut plan = Self::of(&args.expr_fields[0])?;
        if let Some(q) = args.exprs.get(1) {
            let quantile = (q.downcast_ref::<Literal>())
                .and_then(|l| match l.value() {
                    ScalarValue::Float64(Some(q)) => Some(*q),
                    ScalarValue::Int64(Some(q)) => Some(*q as f64),
                    _ => None,
                })
                .filter(|q| (0.0..=1.0).contains(q));
            match (plan.finish, quantile) {
                (Finish::Quantile(_), Some(q)) => plan.finish = Finish::Quantile(q),
                (Finish::Quantile(_), None) => {
                    return plan_err!(
                        "merge(state, q): q must be a number between 0 and 1, e.g. merge(latency_p95, 0.99)"
                    );
                }
                _ => {
                    return plan_err!(
                        "merge(state, q) takes a quantile only for a quantile metric; {:?} is a {} state",
                        args.expr_fields[0].name(),
                        plan.kind
                    );
                }
            }
        }
        Ok(plan)
    }
}

/// The `merge` aggregate function.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Merge {
    signature: Signature,
}

impl Merge {
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::from(Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(1), TypeSignature::Any(2)],
                Volatility::Immutable,
            ),
        })
    }
}

impl AggregateUDFImpl for Merge {
    fn name(&self) -> &str {
        "merge"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        // Planned through `return_field`: the type depends on the argument's metadata.
        plan_err!("merge() needs its argument's field to be planned")
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        let plan = Plan::of(&arg_fields[0])?;
        if arg_fields.len() == 2 && plan.kind != StateKind::Quantile {
            return plan_err!(
                "merge(state, q) takes a quantile only for a quantile metric; {:?} is a {} state",
                arg_fields[0].name(),
                plan.kind
            );
        }
        Ok(Arc::new(Field::new(self.name(), plan.answer_type(), true)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let plan = Plan::of(&args.input_fields[0])?;
        Ok(vec![Arc::new(Field::new(
            format!("{}[state]", args.name),
            plan.kind.data_type(),
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let Finishing { plan, merge } = self.groups(&args)?;
        let one = SingleGroup::new(plan.kind, merge).finishing(move |state| plan.finish(state));
        Ok(Box::new(one))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.groups(&args)?))
    }
}

impl Merge {
    fn groups(&self, args: &AccumulatorArgs) -> Result<Finishing> {
        let plan = Plan::of_call(args)?;
        let merge = StateUdaf::new(plan.kind, Phase::Merge);
        Ok(Finishing {
            plan,
            merge: merge.groups(args.expr_fields[0].data_type())?,
        })
    }
}

/// The kind's merge accumulator, finalizing what it emits. Its intermediate state (between
/// DataFusion's partial and final aggregation) is the merged state itself.
struct Finishing {
    plan: Plan,
    merge: Box<dyn GroupsAccumulator + Sync>,
}

impl Debug for Finishing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finishing")
            .field("plan", &self.plan)
            .finish()
    }
}

impl GroupsAccumulator for Finishing {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        // A second argument is the quantile literal, already read.
        (self.merge).update_batch(&values[..1], group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let states = self.merge.evaluate(emit_to)?;
        self.plan.finish(&states)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.merge.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        (self.merge).merge_batch(values, group_indices, total_num_groups)
    }

    fn size(&self) -> usize {
        self.merge.size()
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.merge.convert_to_state(&values[..1], opt_filter)
    }
}
