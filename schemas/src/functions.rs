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

use datafusion::prelude::SessionContext;

use crate::aggregate::StateKind;
use finalize::Finalize;
use state::{Phase, StateUdaf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
