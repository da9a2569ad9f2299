//! The DataFusion functions of a view, in one place, so that one view definition means one
//! computation in the recompute and in the serving layer's queries alike:
//!
//! - [`state`]: per metric kind, the aggregate that turns raw values into the kind's state
//!   (`state_<kind>`, the recompute) and the one that merges states (`merge_<kind>`, batch ∪ speed
//!   rows and roll-ups in serving);
//! - [`finalize`]: the scalar functions that turn a merged state into its answer;
//! - [`merge`]: `merge(state)`, SQL's roll-up of a `<view>_states` column to its answer;
//! - [`time_bucket`]: an event time floored to its bucket (the recompute's grouping, and serving's
//!   roll-up to a coarser grain).
//!
//! Plans call them as expressions ([`state::StateUdaf::udaf`], [`finalize::Finalize`],
//! [`time_bucket::time_bucket`]); [`register_all`] also gives them their SQL names in a session,
//! the recompute's and the serving layer's alike.

pub mod finalize;
pub mod merge;
pub mod state;
pub mod time_bucket;

pub use time_bucket::time_bucket;

use datafusion::logical_expr::{AggregateUDF, AggregateUDFImpl, ScalarUDF};
use datafusion::prelude::SessionContext;

use crate::aggregate::StateKind;
use crate::duration::Granularity;
use finalize::Finalize;
use state::{Phase, StateUdaf};
use time_bucket::TimeBucket;

/// Registers every view function under its SQL name: `state_<kind>` and `merge_<kind>` for every
/// state kind, `merge`, `finalize_avg` and `finalize_count_distinct`. (Quantiles and time buckets take their
/// parameter in the function itself, `finalize_quantile_<q>` and `time_bucket_<granularity>`,
/// so plans build them as expressions.)
pub fn register_all(ctx: &SessionContext) {
    for kind in StateKind::ALL {
        ctx.register_udaf(StateUdaf::udaf(kind, Phase::Update));
        ctx.register_udaf(StateUdaf::udaf(kind, Phase::Merge));
    }
    ctx.register_udaf(merge::Merge::udaf());
    ctx.register_udf(Finalize::avg());
    ctx.register_udf(Finalize::count_distinct());
}

/// The scalar view function a plan names `name`, parameterized ones included
/// (`time_bucket_<granularity>`, `finalize_quantile_<q>`): how a plan serialized in one process is
/// read in another (a Ballista scheduler or executor), where no session registered them.
pub fn scalar_by_name(name: &str) -> Option<ScalarUDF> {
    if let Some(granularity) = name.strip_prefix("time_bucket_") {
        let granularity = Granularity::parse(granularity).ok()?;
        return Some(ScalarUDF::from(TimeBucket::new(granularity)));
    }
    if let Some(q) = name.strip_prefix("finalize_quantile_") {
        return q.parse().ok().map(Finalize::quantile);
    }
    match name {
        "finalize_avg" => Some(Finalize::avg()),
        "finalize_count_distinct" => Some(Finalize::count_distinct()),
        _ => None,
    }
}

/// The aggregate view function named `name` (see [`scalar_by_name`]).
pub fn aggregate_by_name(name: &str) -> Option<AggregateUDF> {
    if name == "merge" {
        return Some(merge::Merge::udaf());
    }
    (StateKind::ALL.into_iter())
        .flat_map(|kind| [Phase::Update, Phase::Merge].map(|phase| StateUdaf::new(kind, phase)))
        .find(|udaf| udaf.name() == name)
        .map(AggregateUDF::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_is_found_again_by_the_name_a_plan_carries() {
        let scalars = [
            ScalarUDF::from(TimeBucket::new(Granularity::parse("15m").unwrap())),
            ScalarUDF::from(TimeBucket::new(Granularity::parse("1d").unwrap())),
            Finalize::quantile(0.95),
            Finalize::avg(),
            Finalize::count_distinct(),
        ];
        for udf in scalars {
            assert_eq!(scalar_by_name(udf.name()), Some(udf));
        }
        for kind in StateKind::ALL {
            for phase in [Phase::Update, Phase::Merge] {
                let udaf = StateUdaf::udaf(kind, phase);
                assert_eq!(aggregate_by_name(udaf.name()), Some(udaf));
            }
        }
        assert_eq!(aggregate_by_name("merge"), Some(merge::Merge::udaf()));
        for unknown in [
            "time_bucket_7x",
            "finalize_quantile_x",
            "sum",
            "state_nothing",
        ] {
            assert!(scalar_by_name(unknown).is_none() && aggregate_by_name(unknown).is_none());
        }
    }

    #[test]
    fn every_function_has_its_sql_name() {
        let ctx = SessionContext::new();
        register_all(&ctx);
        let state = ctx.state();
        for name in [
            "state_count",
            "merge_count",
            "merge_quantile",
            "state_count_distinct",
            "merge",
        ] {
            assert!(state.aggregate_functions().contains_key(name), "{name}");
        }
        for name in ["finalize_avg", "finalize_count_distinct"] {
            assert!(state.scalar_functions().contains_key(name), "{name}");
        }
    }
}
