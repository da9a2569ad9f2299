//! Scalar functions that turn a merged state column into its answer, so that a whole query (merge,
//! roll-up, finalize, filter, order) is one DataFusion plan.
//!
//! Only the kinds whose Arrow state is not already the answer need one: `avg` (a `{sum, count}`
//! struct), `count_distinct` (an HLL sketch) and `quantile` (a DDSketch). Each reads states with the
//! shared algebra ([`MetricState::finalize`], or its in-place readings [`hll::sparse_estimate`] and
//! [`quantile_from_bytes`], property-tested to agree with it), so the answer is the one every layer
//! would give.

use std::sync::Arc;

use crate::aggregate::{Avg, Finalized, MetricState, hll, quantile_from_bytes};
use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The finalizing function of one metric kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finalize {
    kind: Kind,
    name: String,
    signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Avg,
    CountDistinct,
    /// The quantile's bits (`f64` is neither `Eq` nor `Hash`).
    Quantile(u64),
}

impl Finalize {
    /// `avg`: `{sum, count}` → `sum / count` (`NULL` when nothing was counted).
    pub fn avg() -> ScalarUDF {
        Self::udf(Kind::Avg, "finalize_avg".to_owned())
    }

    /// `count_distinct`: HLL sketch → estimated distinct count.
    pub fn count_distinct() -> ScalarUDF {
        Self::udf(Kind::CountDistinct, "finalize_count_distinct".to_owned())
    }

    /// `quantile(f, q)`: DDSketch → the `q` quantile (`NULL` when empty).
    pub fn quantile(q: f64) -> ScalarUDF {
        Self::udf(
            Kind::Quantile(q.to_bits()),
            format!("finalize_quantile_{q}"),
        )
    }

    fn udf(kind: Kind, name: String) -> ScalarUDF {
        ScalarUDF::from(Self {
            kind,
            name,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for Finalize {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::CountDistinct => DataType::Int64,
            Kind::Avg | Kind::Quantile(_) => DataType::Float64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [state] = args.args.as_slice() else {
            return exec_err!("{} takes one state column", self.name);
        };
        let states = state.to_array(args.number_rows)?;
        let answers = match self.kind {
            Kind::Avg => averages(&states)?,
            Kind::CountDistinct => distinct_counts(&states)?,
            Kind::Quantile(bits) => quantiles(&states, f64::from_bits(bits))?,
        };
        Ok(ColumnarValue::Array(answers))
    }
}

pub(super) fn averages(states: &ArrayRef) -> Result<ArrayRef> {
    let Some(avg) = states.as_struct_opt() else {
        return exec_err!(
            "finalize_avg needs an avg state, not {}",
            states.data_type()
        );
    };
    let sums = avg.column(0).as_primitive::<Float64Type>();
    let counts = avg.column(1).as_primitive::<Int64Type>();
    let mut out = Float64Builder::with_capacity(avg.len());
    for row in 0..avg.len() {
        let state = Avg::from_parts(sums.value(row), counts.value(row));
        out.append_option(state.finalize().filter(|_| !avg.is_null(row)));
    }
    Ok(Arc::new(out.finish()))
}

/// HLL estimates; a sparse sketch is answered from its entry count without decoding it.
pub(super) fn distinct_counts(states: &ArrayRef) -> Result<ArrayRef> {
    let Some(bytes) = states.as_binary_opt::<i32>() else {
        return exec_err!("a sketch state must be Binary, not {}", states.data_type());
    };
    let mut out = Int64Builder::with_capacity(bytes.len());
    for value in bytes.iter() {
        let Some(value) = value else {
            out.append_null();
            continue;
        };
        match hll::sparse_estimate(value) {
            Some(estimate) => out.append_value(estimate),
            None => match MetricState::from_bytes(value)
                .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?
                .finalize(0.0, false)
            {
                Finalized::Int(v) => out.append_value(v),
                _ => out.append_null(),
            },
        }
    }
    Ok(Arc::new(out.finish()))
}

/// DDSketch quantiles, each read from the encoded sketch in place.
pub(super) fn quantiles(states: &ArrayRef, q: f64) -> Result<ArrayRef> {
    let Some(bytes) = states.as_binary_opt::<i32>() else {
        return exec_err!("a sketch state must be Binary, not {}", states.data_type());
    };
    let mut out = Float64Builder::with_capacity(bytes.len());
    for value in bytes.iter() {
        let answer = match value {
            None => None,
            Some(value) => quantile_from_bytes(value, q)
                .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?,
        };
        out.append_option(answer);
    }
    Ok(Arc::new(out.finish()))
}
