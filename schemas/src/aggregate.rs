//! The aggregate algebra: mergeable states for every metric a view can hold.
//!
//! A view row stores *states*, never final values (ARCHITECTURE.md §3). Each state can be updated with
//! one value, merged with a state of the same kind (associatively and commutatively), finalized into
//! the answer, and encoded in two forms that every layer shares:
//! - a compact **byte form**, `[STATE_FORMAT_VERSION, kind tag, payload…]`, see [`MetricState::to_bytes`];
//! - an **Arrow form**, one column per metric, see [`arrow`]: native `Int64`/`Float64` columns for
//!   counts, sums, min and max (so scans and merges run vectorised), a struct for `avg`, and the byte
//!   form in a `Binary` column for the two sketches.
//!
//! | metric            | state                         | merge                | answer        |
//! |-------------------|-------------------------------|----------------------|---------------|
//! | `count`           | [`Count`] (i64)               | add                  | exact         |
//! | `sum(int64)`      | [`IntSum`] (i64, wrapping)    | add                  | exact         |
//! | `sum(float64)`    | [`FloatSum`] (Neumaier)       | compensated add      | ~1e-15 rel.   |
//! | `min`/`max`       | [`Extremum`]                  | total order          | exact         |
//! | `avg`             | [`Avg`] (sum, count)          | add both             | sum / count   |
//! | `count_distinct`  | [`Hll`] (HyperLogLog, p=14)   | register max         | ±0.81% (1σ)   |
//! | `quantile(f, q)`  | [`DdSketch`] (α = 1%)         | bucket add           | ±1% relative  |

pub mod arrow;
mod avg;
pub mod codec;
mod count;
pub(crate) mod ddsketch;
mod extremum;
pub mod hll;
mod sum;

pub use avg::Avg;
pub use count::Count;
pub use ddsketch::{DdSketch, RELATIVE_ACCURACY};
pub use extremum::{Extreme, Extremum, Max, Min};
pub use hll::Hll;
pub use sum::{FloatSum, IntSum};

use crate::event::Value;
use codec::Reader;

/// Version of every encoded state; bumped whenever any state's byte or Arrow form changes. A view's
/// definition hash covers it, so a format change forces a full recompute instead of a bad merge.
pub const STATE_FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state bytes end too early")]
    Truncated,
    #[error(
        "state format version {0} is not supported (this build reads version {STATE_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u8),
    #[error("unknown state kind tag {0}")]
    UnknownKind(u8),
    #[error("cannot merge a state of kind {found} into one of kind {expected}")]
    KindMismatch {
        expected: StateKind,
        found: StateKind,
    },
    #[error("corrupt state: {0}")]
    Corrupt(&'static str),
}

/// What every state implements; [`MetricState`] dispatches to it.
pub trait AggregateState: Sized {
    /// Folds `other` into `self`. Associative and commutative.
    fn merge(&mut self, other: &Self);
    fn encode_payload(&self, out: &mut Vec<u8>);
    fn decode_payload(reader: &mut Reader<'_>) -> Result<Self, StateError>;
}

/// The kind of state a metric keeps; its byte tag is part of the state format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    Count,
    IntSum,
    FloatSum,
    IntMin,
    IntMax,
    FloatMin,
    FloatMax,
    Avg,
    CountDistinct,
    Quantile,
}

impl StateKind {
    /// Every kind, in tag order.
    pub const ALL: [StateKind; 10] = [
        StateKind::Count,
        StateKind::IntSum,
        StateKind::FloatSum,
        StateKind::IntMin,
        StateKind::IntMax,
        StateKind::FloatMin,
        StateKind::FloatMax,
        StateKind::Avg,
        StateKind::CountDistinct,
        StateKind::Quantile,
    ];

    pub fn tag(self) -> u8 {
        self as u8 + 1
    }

    pub fn from_tag(tag: u8) -> Result<Self, StateError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.tag() == tag)
            .ok_or(StateError::UnknownKind(tag))
    }

    pub fn name(self) -> &'static str {
        match self {
            StateKind::Count => "count",
            StateKind::IntSum => "int sum",
            StateKind::FloatSum => "float sum",
            StateKind::IntMin => "int min",
            StateKind::IntMax => "int max",
            StateKind::FloatMin => "float min",
            StateKind::FloatMax => "float max",
            StateKind::Avg => "avg",
            StateKind::CountDistinct => "count_distinct",
            StateKind::Quantile => "quantile",
        }
    }
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One metric's state, of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricState {
    Count(Count),
    IntSum(IntSum),
    FloatSum(FloatSum),
    IntMin(Min<i64>),
    IntMax(Max<i64>),
    FloatMin(Min<f64>),
    FloatMax(Max<f64>),
    Avg(Avg),
    CountDistinct(Hll),
    Quantile(DdSketch),
}

/// Calls `$body` with the inner state bound to `$s`, whatever the variant.
macro_rules! each_state {
    ($value:expr, $s:ident => $body:expr) => {
        match $value {
            MetricState::Count($s) => $body,
            MetricState::IntSum($s) => $body,
            MetricState::FloatSum($s) => $body,
            MetricState::IntMin($s) => $body,
            MetricState::IntMax($s) => $body,
            MetricState::FloatMin($s) => $body,
            MetricState::FloatMax($s) => $body,
            MetricState::Avg($s) => $body,
            MetricState::CountDistinct($s) => $body,
            MetricState::Quantile($s) => $body,
        }
    };
}

/// The final value of a metric, computed only when a query answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finalized {
    Null,
    Int(i64),
    Float(f64),
    /// Epoch milliseconds (`min`/`max` of a timestamp field).
    Timestamp(i64),
}

impl MetricState {
    /// The empty state of a kind: the identity of its merge.
    pub fn empty(kind: StateKind) -> Self {
        match kind {
            StateKind::Count => MetricState::Count(Count::default()),
            StateKind::IntSum => MetricState::IntSum(IntSum::default()),
            StateKind::FloatSum => MetricState::FloatSum(FloatSum::default()),
            StateKind::IntMin => MetricState::IntMin(Min::default()),
            StateKind::IntMax => MetricState::IntMax(Max::default()),
            StateKind::FloatMin => MetricState::FloatMin(Min::default()),
            StateKind::FloatMax => MetricState::FloatMax(Max::default()),
            StateKind::Avg => MetricState::Avg(Avg::default()),
            StateKind::CountDistinct => MetricState::CountDistinct(Hll::default()),
            StateKind::Quantile => MetricState::Quantile(DdSketch::default()),
        }
    }

    pub fn kind(&self) -> StateKind {
        match self {
            MetricState::Count(_) => StateKind::Count,
            MetricState::IntSum(_) => StateKind::IntSum,
            MetricState::FloatSum(_) => StateKind::FloatSum,
            MetricState::IntMin(_) => StateKind::IntMin,
            MetricState::IntMax(_) => StateKind::IntMax,
            MetricState::FloatMin(_) => StateKind::FloatMin,
            MetricState::FloatMax(_) => StateKind::FloatMax,
            MetricState::Avg(_) => StateKind::Avg,
            MetricState::CountDistinct(_) => StateKind::CountDistinct,
            MetricState::Quantile(_) => StateKind::Quantile,
        }
    }

    /// Adds one event's value of the metric's field. `count` counts the event whatever the value;
    /// every other aggregate skips `NULL`, as SQL does. The view definition guarantees the field's
    /// type fits the state, so a value of another type cannot arrive and is skipped.
    pub fn update(&mut self, value: &Value<'_>) {
        match (self, value) {
            (MetricState::Count(s), _) => s.update(),
            (_, Value::Null) => {}
            (MetricState::IntSum(s), Value::Int(v)) => s.update(*v),
            (MetricState::IntMin(s), Value::Int(v) | Value::Timestamp(v)) => s.update(*v),
            (MetricState::IntMax(s), Value::Int(v) | Value::Timestamp(v)) => s.update(*v),
            (MetricState::FloatSum(s), v) => v.as_f64().into_iter().for_each(|v| s.update(v)),
            (MetricState::FloatMin(s), v) => v.as_f64().into_iter().for_each(|v| s.update(v)),
            (MetricState::FloatMax(s), v) => v.as_f64().into_iter().for_each(|v| s.update(v)),
            (MetricState::Avg(s), v) => v.as_f64().into_iter().for_each(|v| s.update(v)),
            (MetricState::Quantile(s), v) => v.as_f64().into_iter().for_each(|v| s.update(v)),
            (MetricState::CountDistinct(s), v) => s.insert_hash(hash_value(v)),
            _ => {}
        }
    }

    /// Folds `other` into `self`; both must be of the same kind.
    pub fn merge(&mut self, other: &MetricState) -> Result<(), StateError> {
        match (&mut *self, other) {
            (MetricState::Count(a), MetricState::Count(b)) => a.merge(b),
            (MetricState::IntSum(a), MetricState::IntSum(b)) => a.merge(b),
            (MetricState::FloatSum(a), MetricState::FloatSum(b)) => a.merge(b),
            (MetricState::IntMin(a), MetricState::IntMin(b)) => a.merge(b),
            (MetricState::IntMax(a), MetricState::IntMax(b)) => a.merge(b),
            (MetricState::FloatMin(a), MetricState::FloatMin(b)) => a.merge(b),
            (MetricState::FloatMax(a), MetricState::FloatMax(b)) => a.merge(b),
            (MetricState::Avg(a), MetricState::Avg(b)) => a.merge(b),
            (MetricState::CountDistinct(a), MetricState::CountDistinct(b)) => a.merge(b),
            (MetricState::Quantile(a), MetricState::Quantile(b)) => a.merge(b),
            (mine, theirs) => {
                return Err(StateError::KindMismatch {
                    expected: mine.kind(),
                    found: theirs.kind(),
                });
            }
        }
        Ok(())
    }

    /// The answer. `quantile` is the quantile to read from a [`DdSketch`] (ignored by other kinds);
    /// `timestamp` marks `min`/`max` over a timestamp field.
    pub fn finalize(&self, quantile: f64, timestamp: bool) -> Finalized {
        let int = |v: Option<i64>| match (v, timestamp) {
            (None, _) => Finalized::Null,
            (Some(v), true) => Finalized::Timestamp(v),
            (Some(v), false) => Finalized::Int(v),
        };
        let float = |v: Option<f64>| v.map_or(Finalized::Null, Finalized::Float);
        match self {
            MetricState::Count(s) => Finalized::Int(s.finalize()),
            MetricState::IntSum(s) => Finalized::Int(s.finalize()),
            MetricState::FloatSum(s) => Finalized::Float(s.finalize()),
            MetricState::IntMin(s) => int(s.finalize()),
            MetricState::IntMax(s) => int(s.finalize()),
            MetricState::FloatMin(s) => float(s.finalize()),
            MetricState::FloatMax(s) => float(s.finalize()),
            MetricState::Avg(s) => float(s.finalize()),
            MetricState::CountDistinct(s) => Finalized::Int(s.finalize()),
            MetricState::Quantile(s) => float(s.quantile(quantile)),
        }
    }

    /// The versioned byte form: `[STATE_FORMAT_VERSION, kind tag, payload…]`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the byte form to `out` (reuse one buffer to encode many states without allocating).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&header(self.kind()));
        each_state!(self, s => s.encode_payload(out));
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut reader = Reader::new(bytes);
        let mut state = Self::empty(read_header(&mut reader)?);
        each_state!(&mut state, s => *s = AggregateState::decode_payload(&mut reader)?);
        reader.finish()?;
        Ok(state)
    }
}

/// The first bytes of every state's byte form.
fn header(kind: StateKind) -> [u8; 2] {
    [STATE_FORMAT_VERSION, kind.tag()]
}

/// Reads the header of a state's byte form (format version, kind tag) and returns the kind.
fn read_header(reader: &mut Reader<'_>) -> Result<StateKind, StateError> {
    let version = reader.u8()?;
    if version != STATE_FORMAT_VERSION {
        return Err(StateError::UnsupportedVersion(version));
    }
    StateKind::from_tag(reader.u8()?)
}

/// The `q` quantile of a `quantile` state in its byte form, read in place: the same answer as
/// `MetricState::from_bytes(bytes)?.finalize(q, false)`, without decoding the buckets.
pub fn quantile_from_bytes(bytes: &[u8], q: f64) -> Result<Option<f64>, StateError> {
    let mut reader = Reader::new(bytes);
    let kind = read_header(&mut reader)?;
    if kind != StateKind::Quantile {
        return Err(StateError::KindMismatch {
            expected: StateKind::Quantile,
            found: kind,
        });
    }
    DdSketch::quantile_of_payload(reader.remaining(), q)
}

/// The hash `count_distinct` inserts for a value: the one function every layer uses.
pub fn hash_value(value: &Value<'_>) -> u64 {
    match value {
        Value::Str(s) => hll::hash_str(s),
        Value::Int(v) | Value::Timestamp(v) => hll::hash_i64(*v),
        Value::Float(v) => hll::hash_f64(*v),
        Value::Bool(v) => hll::hash_bool(*v),
        Value::Null => 0,
    }
}

#[cfg(test)]
pub(crate) mod tests;
