//! Who is to blame for an error: the caller (a 4xx that says what to fix), a system outside
//! Tributary (the lake's object store, Kafka: a 503 that says which, retried by loops), or us (a
//! 500 that says nothing internal; the cause is logged). One classification of DataFusion's
//! errors, [`classify_datafusion_error`], serves every path that runs a query, and [`chain`]
//! prints an error with all its causes for the log.

use std::error::Error;
use std::fmt::Write;

use datafusion::error::DataFusionError;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request asked for something wrong or impossible.
    Caller,
    /// A system outside Tributary failed (object store, disk, network).
    Outside,
    /// A bug of ours.
    Us,
}

/// Classifies an error of a query the caller wrote (SQL). Storage failures anywhere in the
/// chain are [`Blame::Outside`], whatever wraps them. Planning, SQL, schema and execution
/// errors (a bad cast, a division by zero, an unsupported feature, a query too big for memory)
/// are the caller's. Internal errors, and anything not known to be otherwise, are ours.
///
/// A structured query (`POST /v1/query`) is planned by Tributary from a validated request, so there
/// a caller-class DataFusion error is still ours; only [`Blame::Outside`] changes its answer.
pub fn classify_datafusion_error(error: &DataFusionError) -> Blame {
    if caused_by_storage(error) {
        return Blame::Outside;
    }
    match error.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ResourcesExhausted(_)
        | DataFusionError::ArrowError(..) => Blame::Caller,
        DataFusionError::Diagnostic(_, inner) => classify_datafusion_error(inner),
        _ => Blame::Us,
    }
}

/// Whether an object store or I/O error is anywhere in the chain.
fn caused_by_storage(error: &DataFusionError) -> bool {
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(error) = current {
        let storage = error.is::<object_store::Error>()
            || error.is::<std::io::Error>()
            || matches!(
                error.downcast_ref::<DataFusionError>(),
                Some(DataFusionError::ObjectStore(_) | DataFusionError::IoError(_))
            );
        if storage {
            return true;
        }
        current = error.source();
    }
    false
}

/// `error: cause: cause ...`, every message of the chain once, for the log.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        // Wrappers that print their source inside their own message would repeat it.
        if !out.ends_with(&message) {
            let _ = write!(out, ": {message}");
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_outside_wherever_they_sit_in_the_chain() {
        let missing = object_store::Error::NotFound {
            path: "views/v/1/part-0.parquet".to_owned(),
            source: "404".into(),
        };
        let direct = DataFusionError::ObjectStore(Box::new(missing));
        assert_eq!(classify_datafusion_error(&direct), Blame::Outside);
        let wrapped = DataFusionError::External(Box::new(DataFusionError::Context(
            "scanning".to_owned(),
            Box::new(direct),
        )));
        assert_eq!(classify_datafusion_error(&wrapped), Blame::Outside);
        let io = DataFusionError::IoError(std::io::Error::other("disk gone"));
        assert_eq!(classify_datafusion_error(&io), Blame::Outside);
    }

    #[test]
    fn planning_is_the_callers_and_internal_errors_are_ours() {
        let plan = DataFusionError::Plan("table 'nope' not found".to_owned());
        assert_eq!(classify_datafusion_error(&plan), Blame::Caller);
        let context = DataFusionError::Context("planning".to_owned(), Box::new(plan));
        assert_eq!(classify_datafusion_error(&context), Blame::Caller);
        let divide =
            DataFusionError::ArrowError(Box::new(arrow::error::ArrowError::DivideByZero), None);
        assert_eq!(classify_datafusion_error(&divide), Blame::Caller);
        let internal = DataFusionError::Internal("bad state".to_owned());
        assert_eq!(classify_datafusion_error(&internal), Blame::Us);
    }

    #[test]
    fn a_chain_prints_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("the recompute failed")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("404 views/v/_current"));
        assert_eq!(chain(&error), "the recompute failed: 404 views/v/_current");
        let plain = std::io::Error::other("alone");
        assert_eq!(chain(&plain), "alone");
    }
}
