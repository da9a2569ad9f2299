//! A structured query (`POST /v1/query`) as the caller sends it, and checked against its view:
//! every name, time, granularity, filter and order resolved, or a 400 that says what to fix.

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, SortExpr, ident, lit};
use serde::Deserialize;
use serde_json::Value as Json;
use tributary_schemas::config::{MetricDef, TIME_COLUMN, ViewDef};
use tributary_schemas::duration::Granularity;
use tributary_schemas::event::FieldType;

use super::QueryError;
use super::plan::names;

/// `POST /v1/query`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub view: String,
    /// RFC 3339; the first bucket start included. Default: the beginning of time.
    pub from: Option<String>,
    /// RFC 3339; the first bucket start excluded. Default: no end.
    pub to: Option<String>,
    /// A multiple of the view's granularity (`"1h"`, `"1d"`), or `"all"` for one row per group.
    /// Default: the view's own.
    pub granularity: Option<String>,
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Default: every metric of the view.
    #[serde(default)]
    pub metrics: Vec<String>,
    #[serde(default)]
    pub filter: Vec<Filter>,
    #[serde(default)]
    pub order_by: Vec<Order>,
    pub limit: Option<usize>,
    /// `meta.snapshot` of an earlier answer: answer from exactly its data.
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub field: String,
    pub op: String,
    #[serde(default)]
    pub value: Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub field: String,
    #[serde(default)]
    pub desc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bucket {
    All,
    Every(Granularity),
}

/// A checked structured query.
#[derive(Debug)]
pub(super) struct QueryPlan<'v> {
    pub(super) view: &'v ViewDef,
    pub(super) bucket: Option<Bucket>,
    pub(super) group_by: Vec<String>,
    pub(super) metrics: Vec<&'v MetricDef>,
    /// Conditions on state rows, before any merge: the caller's row filter first, then the range
    /// and the request's dimension filters.
    pub(super) before: Vec<Expr>,
    pub(super) after: Vec<Expr>,
    pub(super) order: Vec<SortExpr>,
    pub(super) limit: usize,
    /// The view's definition hash: rows of another definition never share a cache entry.
    definition: String,
}

impl<'v> QueryPlan<'v> {
    pub(super) fn check(
        view: &'v ViewDef,
        request: &QueryRequest,
        max_rows: usize,
    ) -> Result<Self, QueryError> {
        let dimension_names = names(view);
        let list = |names: &[String]| names.join(", ");
        let bucket = match request.granularity.as_deref() {
            None => None,
            Some("all") => Some(Bucket::All),
            Some(text) => {
                let wanted = Granularity::parse(text).map_err(|e| {
                    QueryError::invalid(
                        "bad_granularity",
                        format!("granularity {text:?}: {e} (or write \"all\")"),
                    )
                })?;
                if !view.granularity.divides(wanted) {
                    return Err(QueryError::invalid(
                        "bad_granularity",
                        format!(
                            "view {} stores {} buckets, so granularity must be a multiple of {} (or \"all\"), not {text}",
                            view.name, view.granularity, view.granularity
                        ),
                    ));
                }
                (wanted != view.granularity).then_some(Bucket::Every(wanted))
            }
        };
        let mut group_by = Vec::new();
        for name in &request.group_by {
            if !dimension_names.contains(name) {
                return Err(QueryError::invalid(
                    "unknown_field",
                    format!(
                        "cannot group by {name:?}: the dimensions of {} are: {}",
                        view.name,
                        list(&dimension_names)
                    ),
                ));
            }
            if group_by.contains(name) {
                return Err(QueryError::invalid(
                    "bad_group_by",
                    format!("{name:?} is listed twice in group_by"),
                ));
            }
            group_by.push(name.clone());
        }
        let metrics: Vec<&MetricDef> = if request.metrics.is_empty() {
            view.metrics.iter().collect()
        } else {
            let mut metrics = Vec::new();
            for name in &request.metrics {
                let metric = view.metric(name).ok_or_else(|| {
                    let names: Vec<String> = view.metrics.iter().map(|m| m.name.clone()).collect();
                    QueryError::invalid(
                        "unknown_metric",
                        format!(
                            "there is no metric {name:?} in {}; its metrics are: {}",
                            view.name,
                            list(&names)
                        ),
                    )
                })?;
                if !metrics.iter().any(|m: &&MetricDef| m.name == *name) {
                    metrics.push(metric);
                }
            }
            metrics
        };

        let mut before = Vec::new();
        let from = request
            .from
            .as_deref()
            .map(|t| time("from", t))
            .transpose()?;
        let to = request.to.as_deref().map(|t| time("to", t)).transpose()?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(QueryError::invalid(
                "bad_time_range",
                "from must be before to",
            ));
        }
        if let Some(from) = from {
            before.push(ident(TIME_COLUMN).gt_eq(timestamp_literal(from)));
        }
        if let Some(to) = to {
            before.push(ident(TIME_COLUMN).lt(timestamp_literal(to)));
        }
        let mut after = Vec::new();
        for filter in &request.filter {
            if let Some(dimension) = view.dimensions.iter().find(|d| d.name == filter.field) {
                before.push(condition(filter, dimension.ty)?);
            } else if let Some(metric) = metrics.iter().find(|m| m.name == filter.field) {
                let ty = match metric.output_type() {
                    DataType::Int64 => FieldType::Int64,
                    DataType::Float64 => FieldType::Float64,
                    _ => FieldType::Timestamp,
                };
                after.push(condition(filter, ty)?);
            } else {
                return Err(QueryError::invalid(
                    "unknown_field",
                    format!(
                        "cannot filter on {:?}: filter a dimension ({}) or a requested metric",
                        filter.field,
                        list(&dimension_names)
                    ),
                ));
            }
        }

        let mut outputs: Vec<String> = Vec::new();
        if bucket != Some(Bucket::All) {
            outputs.push(TIME_COLUMN.to_owned());
        }
        outputs.extend(group_by.iter().cloned());
        outputs.extend(metrics.iter().map(|m| m.name.clone()));
        let mut order = Vec::new();
        for item in &request.order_by {
            if !outputs.contains(&item.field) {
                return Err(QueryError::invalid(
                    "unknown_field",
                    format!(
                        "cannot order by {:?}: the answer's columns are: {}",
                        item.field,
                        list(&outputs)
                    ),
                ));
            }
            order.push(ident(&item.field).sort(!item.desc, false));
        }
        // Then by time and the groups, so that equal keys come back in a stable order.
        let groups = outputs.iter().take(outputs.len() - metrics.len());
        order.extend(groups.map(|name| ident(name).sort(true, false)));

        let limit = request.limit.unwrap_or(max_rows);
        if limit == 0 || limit > max_rows {
            return Err(QueryError::invalid(
                "bad_limit",
                format!("limit must be between 1 and {max_rows} (the server's max_rows)"),
            ));
        }
        Ok(Self {
            view,
            bucket,
            group_by,
            metrics,
            before,
            after,
            order,
            limit,
            definition: view.definition_hash(),
        })
    }

    /// The view's columns the query reads: the metrics, and the dimensions it groups by or
    /// filters on (its time buckets are checked by [`Self::under`]).
    pub(super) fn columns(&self) -> impl Iterator<Item = &str> {
        let dimensions = (self.before.iter().flat_map(|e| e.column_refs()))
            .map(|c| c.name.as_str())
            .filter(|name| *name != TIME_COLUMN);
        (self.metrics.iter().map(|m| m.name.as_str()))
            .chain(self.group_by.iter().map(String::as_str))
            .chain(dimensions)
    }

    /// This plan (checked against the configured definition) as `old`, the definition a view
    /// answers under while the configured one builds, answers it: the same metrics, and the
    /// buckets of the configured granularity when the request leaves it to the view. The reason
    /// when `old` cannot (its buckets are coarser than asked).
    pub(super) fn under<'o>(
        &self,
        old: &'o ViewDef,
        request: &QueryRequest,
        max_rows: usize,
    ) -> Result<QueryPlan<'o>, QueryError> {
        let mut request = request.clone();
        request.metrics = self.metrics.iter().map(|m| m.name.clone()).collect();
        if request.granularity.is_none() && old.granularity != self.view.granularity {
            request.granularity = Some(self.view.granularity.to_string());
        }
        QueryPlan::check(old, &request, max_rows)
    }

    /// What decides [`Self::part`] of immutable rows: which rows (`source`, of this definition)
    /// and the query's shape.
    pub(super) fn cache_key(&self, source: &str) -> String {
        format!(
            "{}/{}/{source}/{:?}/{:?}/{:?}",
            self.view.name, self.definition, self.bucket, self.group_by, self.before
        )
    }
}

fn time(which: &str, text: &str) -> Result<i64, QueryError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            QueryError::invalid(
                "bad_time_range",
                format!(
                    "{which} {text:?} is not an RFC 3339 time such as 2026-11-21T10:00:00Z ({e})"
                ),
            )
        })
}

fn timestamp_literal(ms: i64) -> Expr {
    lit(ScalarValue::TimestampMillisecond(
        Some(ms),
        Some("UTC".into()),
    ))
}

/// The predicate of one filter on a column of type `ty`.
fn condition(filter: &Filter, ty: FieldType) -> Result<Expr, QueryError> {
    let column = ident(&filter.field);
    let one = || scalar(&filter.field, &filter.value, ty);
    let many = || match &filter.value {
        Json::Array(values) if !values.is_empty() => values
            .iter()
            .map(|v| scalar(&filter.field, v, ty).map(lit))
            .collect::<Result<Vec<_>, _>>(),
        _ => Err(QueryError::invalid(
            "bad_filter",
            format!(
                "filter on {:?} with {:?} needs a non-empty array value",
                filter.field, filter.op
            ),
        )),
    };
    Ok(match filter.op.as_str() {
        "eq" | "=" => column.eq(lit(one()?)),
        "ne" | "!=" => column.not_eq(lit(one()?)),
        "lt" | "<" => column.lt(lit(one()?)),
        "lte" | "<=" => column.lt_eq(lit(one()?)),
        "gt" | ">" => column.gt(lit(one()?)),
        "gte" | ">=" => column.gt_eq(lit(one()?)),
        "in" => column.in_list(many()?, false),
        "not_in" => column.in_list(many()?, true),
        "is_null" => column.is_null(),
        "is_not_null" => column.is_not_null(),
        op => {
            return Err(QueryError::invalid(
                "bad_filter",
                format!(
                    "unknown filter op {op:?} on {:?} (use eq, ne, lt, lte, gt, gte, in, not_in, is_null or is_not_null)",
                    filter.field
                ),
            ));
        }
    })
}

/// A JSON filter value as a literal of the field's type.
fn scalar(field: &str, value: &Json, ty: FieldType) -> Result<ScalarValue, QueryError> {
    let parsed = match (ty, value) {
        (FieldType::String, Json::String(s)) => Some(ScalarValue::Utf8(Some(s.clone()))),
        (FieldType::Int64, Json::Number(n)) => n.as_i64().map(|v| ScalarValue::Int64(Some(v))),
        (FieldType::Float64, Json::Number(n)) => n.as_f64().map(|v| ScalarValue::Float64(Some(v))),
        (FieldType::Bool, Json::Bool(b)) => Some(ScalarValue::Boolean(Some(*b))),
        (FieldType::Timestamp, Json::Number(n)) => n
            .as_i64()
            .map(|v| ScalarValue::TimestampMillisecond(Some(v), Some("UTC".into()))),
        (FieldType::Timestamp, Json::String(s)) => {
            let ms = time(field, s)?;
            Some(ScalarValue::TimestampMillisecond(
                Some(ms),
                Some("UTC".into()),
            ))
        }
        _ => None,
    };
    parsed.ok_or_else(|| {
        QueryError::invalid(
            "bad_filter",
            format!(
                "filter on {field:?} needs a {} value, not {value}",
                ty.name()
            ),
        )
    })
}
