//! The Arrow form of states: how a view's metric columns are typed, written and read back.
//!
//! | state kind                     | Arrow type                              | empty state   |
//! |--------------------------------|-----------------------------------------|---------------|
//! | count, int sum                 | `Int64` (non-null)                      | `0`           |
//! | float sum                      | `Float64` (non-null)                    | `0.0`         |
//! | int min / max                  | `Int64`                                 | `NULL`        |
//! | float min / max                | `Float64`                               | `NULL`        |
//! | avg                            | `Struct{sum: Float64, count: Int64}`    | `{0.0, 0}`    |
//! | count_distinct, quantile       | `Binary`: the versioned byte form       | an empty sketch |
//!
//! `min`/`max` of a timestamp field keep `Int64` epoch milliseconds here; views present them as
//! timestamps only once finalized.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Float64Builder, Int64Builder, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Int64Type};

use super::{Avg, Count, FloatSum, IntSum, MetricState, StateError, StateKind};

fn avg_fields() -> Fields {
    Fields::from(vec![
        Field::new("sum", DataType::Float64, false),
        Field::new("count", DataType::Int64, false),
    ])
}

impl StateKind {
    /// The Arrow type of this kind's state column.
    pub fn data_type(self) -> DataType {
        match self {
            StateKind::Count | StateKind::IntSum | StateKind::IntMin | StateKind::IntMax => {
                DataType::Int64
            }
            StateKind::FloatSum | StateKind::FloatMin | StateKind::FloatMax => DataType::Float64,
            StateKind::Avg => DataType::Struct(avg_fields()),
            StateKind::CountDistinct | StateKind::Quantile => DataType::Binary,
        }
    }

    /// Whether the column can hold `NULL` (only `min`/`max`, for "no value seen").
    pub fn nullable(self) -> bool {
        matches!(
            self,
            StateKind::IntMin | StateKind::IntMax | StateKind::FloatMin | StateKind::FloatMax
        )
    }
}

/// Builds one state column from states of a single kind.
#[derive(Debug)]
pub struct StateColumnBuilder {
    kind: StateKind,
    ints: Int64Builder,
    floats: Float64Builder,
    binary: BinaryBuilder,
    /// Reused to encode sketches without an allocation each.
    scratch: Vec<u8>,
}

impl StateColumnBuilder {
    pub fn new(kind: StateKind) -> Self {
        Self::with_capacity(kind, 0, 0)
    }

    /// A builder with room for `states` states and, for sketches, `bytes` bytes of them: emitting
    /// a recompute's groups then fills its buffers once instead of regrowing and copying them.
    pub fn with_capacity(kind: StateKind, states: usize, bytes: usize) -> Self {
        let data_type = kind.data_type();
        let room = |used: bool| if used { states } else { 0 };
        let avg = kind == StateKind::Avg;
        let binary = data_type == DataType::Binary;
        Self {
            kind,
            ints: Int64Builder::with_capacity(room(avg || data_type == DataType::Int64)),
            floats: Float64Builder::with_capacity(room(avg || data_type == DataType::Float64)),
            binary: BinaryBuilder::with_capacity(room(binary), if binary { bytes } else { 0 }),
            scratch: Vec::new(),
        }
    }

    pub fn append(&mut self, state: &MetricState) -> Result<(), StateError> {
        if state.kind() != self.kind {
            return Err(StateError::KindMismatch {
                expected: self.kind,
                found: state.kind(),
            });
        }
        match state {
            MetricState::Count(s) => self.ints.append_value(s.finalize()),
            MetricState::IntSum(s) => self.ints.append_value(s.finalize()),
            MetricState::FloatSum(s) => self.floats.append_value(s.finalize()),
            MetricState::IntMin(s) => self.ints.append_option(s.finalize()),
            MetricState::IntMax(s) => self.ints.append_option(s.finalize()),
            MetricState::FloatMin(s) => self.floats.append_option(s.finalize()),
            MetricState::FloatMax(s) => self.floats.append_option(s.finalize()),
            MetricState::Avg(s) => {
                self.floats.append_value(s.sum());
                self.ints.append_value(s.count());
            }
            MetricState::CountDistinct(_) | MetricState::Quantile(_) => {
                self.scratch.clear();
                state.encode_into(&mut self.scratch);
                self.binary.append_value(&self.scratch);
            }
        }
        Ok(())
    }

    /// Appends a sketch state whose payload `encode` writes (the header comes first), for states
    /// encoded without being built. When `encode` cannot (`None`, having written nothing), nothing
    /// is appended.
    pub fn append_payload(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&super::header(self.kind));
        encode(&mut self.scratch)?;
        self.binary.append_value(&self.scratch);
        Some(())
    }

    /// Appends a sketch state already in byte form (as read from a state column).
    pub fn append_encoded(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        if self.kind.data_type() != DataType::Binary {
            return Err(StateError::Corrupt(
                "only sketch states are appended encoded",
            ));
        }
        self.binary.append_value(bytes);
        Ok(())
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self.kind.data_type() {
            DataType::Int64 => Arc::new(self.ints.finish()),
            DataType::Float64 => Arc::new(self.floats.finish()),
            DataType::Binary => Arc::new(self.binary.finish()),
            _ => Arc::new(StructArray::new(
                avg_fields(),
                vec![Arc::new(self.floats.finish()), Arc::new(self.ints.finish())],
                None,
            )),
        }
    }
}

/// Reads the state at `row` of a column written by [`StateColumnBuilder`] for `kind`.
pub fn read_state(
    kind: StateKind,
    column: &dyn Array,
    row: usize,
) -> Result<MetricState, StateError> {
    if column.data_type() != &kind.data_type() {
        return Err(StateError::Corrupt("state column has the wrong Arrow type"));
    }
    if row >= column.len() {
        return Err(StateError::Truncated);
    }
    let null = column.is_null(row);
    let int = || column.as_primitive::<Int64Type>().value(row);
    let float = || column.as_primitive::<Float64Type>().value(row);
    let mut state = MetricState::empty(kind);
    match &mut state {
        MetricState::Count(s) => *s = Count(int()),
        MetricState::IntSum(s) => *s = IntSum(int()),
        MetricState::FloatSum(s) => *s = FloatSum::from_total(float()),
        MetricState::IntMin(s) if !null => s.update(int()),
        MetricState::IntMax(s) if !null => s.update(int()),
        MetricState::FloatMin(s) if !null => s.update(float()),
        MetricState::FloatMax(s) if !null => s.update(float()),
        MetricState::Avg(s) => {
            let parts = column.as_struct();
            *s = Avg::from_parts(
                parts.column(0).as_primitive::<Float64Type>().value(row),
                parts.column(1).as_primitive::<Int64Type>().value(row),
            );
        }
        MetricState::CountDistinct(_) | MetricState::Quantile(_) => {
            state = MetricState::from_bytes(column.as_binary::<i32>().value(row))?;
            if state.kind() != kind {
                return Err(StateError::KindMismatch {
                    expected: kind,
                    found: state.kind(),
                });
            }
        }
        _ => {}
    }
    Ok(state)
}
