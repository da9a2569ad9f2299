//! View definitions: what a view groups by, which events it keeps, and which metrics it holds.
//!
//! One [`ViewDef`] drives both layers (ARCHITECTURE.md §1): the batch layer turns it into a
//! DataFusion plan, the speed layer into incremental updates, and both read the same dimensions,
//! filter and metric states from it. The filter is planned by DataFusion against the event schema at
//! load, so a filter that parses but cannot run (unknown column, `page > 3` on a string, an aggregate,
//! a volatile function such as `random()`) is a configuration error, not a failed recompute.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;
use toml::Value as Toml;

use super::{Problem, Section, problem};
use crate::aggregate::{Finalized, MetricState, STATE_FORMAT_VERSION, StateKind};
use crate::duration::{Granularity, format_duration, parse_duration};
use crate::event::{EventSchema, FieldType, Value, timestamp_type};
use std::time::Duration;

/// The time-bucket column of every view (bucket start, UTC).
pub const TIME_COLUMN: &str = "time";

/// A configured field a metric reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef {
    pub name: String,
    /// Position in [`EventSchema::fields`] (and in [`Event::values`]).
    pub index: usize,
    pub ty: FieldType,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricFunction {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
    /// The quantile to answer, in `[0, 1]`.
    Quantile(f64),
    /// The built-in `late`: counts the events Kafka received more than `after_ms` after their
    /// event time (`[events] late_after`); see [`MetricDef::counts`].
    Late {
        after_ms: i64,
    },
}

/// The name of the built-in metric every view has: events that arrived late, per bucket.
pub const LATE_METRIC: &str = "late";

/// One metric of a view: `name = "function(field)"`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    pub name: String,
    /// The expression as configured, e.g. `quantile(latency_ms, 0.95)`.
    pub expression: String,
    pub function: MetricFunction,
    /// `None` for `count`.
    pub field: Option<FieldRef>,
}

impl MetricDef {
    pub fn state_kind(&self) -> StateKind {
        let ty = self.field.as_ref().map(|f| f.ty);
        let float = ty == Some(FieldType::Float64);
        match self.function {
            MetricFunction::Count | MetricFunction::Late { .. } => StateKind::Count,
            MetricFunction::Sum if float => StateKind::FloatSum,
            MetricFunction::Sum => StateKind::IntSum,
            MetricFunction::Min if float => StateKind::FloatMin,
            MetricFunction::Min => StateKind::IntMin,
            MetricFunction::Max if float => StateKind::FloatMax,
            MetricFunction::Max => StateKind::IntMax,
            MetricFunction::Avg => StateKind::Avg,
            MetricFunction::CountDistinct => StateKind::CountDistinct,
            MetricFunction::Quantile(_) => StateKind::Quantile,
        }
    }

    /// The Arrow type of the finalized metric.
    pub fn output_type(&self) -> DataType {
        match (self.function, &self.field) {
            (MetricFunction::Min | MetricFunction::Max, Some(field)) => field.ty.data_type(),
            _ => match self.state_kind() {
                StateKind::Count | StateKind::IntSum | StateKind::CountDistinct => DataType::Int64,
                _ => DataType::Float64,
            },
        }
    }

    /// The value this metric aggregates among one event's field values (schema order, as
    /// [`Event::values`](crate::event::Event::values)); `NULL` for `count`, which counts events.
    pub fn value<'e, 'a>(&self, values: &'e [Value<'a>]) -> &'e Value<'a> {
        static NULL: Value<'static> = Value::Null;
        self.field.as_ref().map_or(&NULL, |f| &values[f.index])
    }

    /// Whether this metric takes an event of time `time_ms` that Kafka stamped `kafka_ts_ms`: always,
    /// but for `late`, which takes it only when `kafka_ts - late_after > time` (in wrapping `i64`
    /// arithmetic, as DataFusion's `-` in the batch plan). An event without a Kafka timestamp is
    /// never late.
    pub fn counts(&self, time_ms: i64, kafka_ts_ms: Option<i64>) -> bool {
        match self.function {
            MetricFunction::Late { after_ms } => {
                kafka_ts_ms.is_some_and(|kafka| kafka.wrapping_sub(after_ms) > time_ms)
            }
            _ => true,
        }
    }

    pub fn finalize(&self, state: &MetricState) -> Finalized {
        let quantile = match self.function {
            MetricFunction::Quantile(q) => q,
            _ => 0.0,
        };
        let timestamp = self
            .field
            .as_ref()
            .is_some_and(|f| f.ty == FieldType::Timestamp);
        state.finalize(quantile, timestamp)
    }
}

/// A view's filter: the SQL as configured and the DataFusion expression it plans to.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewFilter {
    pub sql: String,
    pub expr: Expr,
}

/// A validated view definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewDef {
    pub name: String,
    pub granularity: Granularity,
    pub dimensions: Vec<FieldRef>,
    pub filter: Option<ViewFilter>,
    pub metrics: Vec<MetricDef>,
    /// `retention`: new versions hold only buckets from this long ago on (`None`: all). Not part
    /// of the definition: changing it changes what the next versions keep, not what they mean.
    pub retention: Option<Duration>,
}

impl ViewDef {
    /// Arrow schema of stored view rows: `time`, the dimensions, then one state column per metric.
    pub fn state_schema(&self) -> SchemaRef {
        self.schema(|m| {
            Field::new(
                &m.name,
                m.state_kind().data_type(),
                m.state_kind().nullable(),
            )
        })
    }

    /// Arrow schema of answered view rows: `time`, the dimensions, then finalized metrics.
    pub fn output_schema(&self) -> SchemaRef {
        self.schema(|m| Field::new(&m.name, m.output_type(), true))
    }

    fn schema(&self, metric: impl Fn(&MetricDef) -> Field) -> SchemaRef {
        let mut fields = vec![Field::new(TIME_COLUMN, timestamp_type(), false)];
        fields.extend(
            self.dimensions
                .iter()
                .map(|d| Field::new(&d.name, d.ty.data_type(), true)),
        );
        fields.extend(self.metrics.iter().map(metric));
        Arc::new(Schema::new(fields))
    }

    /// A stable hash of everything that decides the view's stored states: a batch version whose
    /// manifest carries another hash was computed under another definition and must be recomputed,
    /// never merged.
    pub fn definition_hash(&self) -> String {
        let dimensions: Vec<_> = self
            .dimensions
            .iter()
            .map(|d| (&d.name, d.ty.name()))
            .collect();
        let metrics: Vec<_> = self
            .metrics
            .iter()
            .map(|m| {
                let field = m.field.as_ref().map(|f| (&f.name, f.ty.name()));
                let late_after_ms = match m.function {
                    MetricFunction::Late { after_ms } => Some(after_ms),
                    _ => None,
                };
                (&m.name, m.state_kind().name(), field, late_after_ms)
            })
            .collect();
        let canonical = serde_json::json!({
            "state_format": STATE_FORMAT_VERSION,
            "name": self.name,
            "granularity_seconds": self.granularity.seconds(),
            "dimensions": dimensions,
            "filter": self.filter.as_ref().map(|f| f.sql.trim()),
            "metrics": metrics,
        });
        format!(
            "{:032x}",
            xxhash_rust::xxh3::xxh3_128(canonical.to_string().as_bytes())
        )
    }

    pub fn metric(&self, name: &str) -> Option<&MetricDef> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The dimensions and metrics of `self` that `old` does not have as they are here (absent,
    /// another type or another expression): while `self` is being built, `old` answers the
    /// others and these wait for `self`'s first version.
    pub fn not_answered_by(&self, old: &ViewDef) -> Vec<&str> {
        let dimensions = (self.dimensions.iter())
            .filter(|d| {
                !old.dimensions
                    .iter()
                    .any(|o| o.name == d.name && o.ty == d.ty)
            })
            .map(|d| d.name.as_str());
        let metrics = (self.metrics.iter())
            .filter(|m| old.metric(&m.name) != Some(m))
            .map(|m| m.name.as_str());
        dimensions.chain(metrics).collect()
    }
}

/// View and metric names: lowercase identifiers, usable unquoted in SQL and as lake path segments.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || name.len() > 64
    {
        return Err(format!(
            "{name:?} is not a valid {what} name (a lowercase letter, then lowercase letters, digits or '_', at most 64)"
        ));
    }
    Ok(())
}

pub(super) fn validate_views(
    value: Option<&Toml>,
    events: &EventSchema,
    late_after: Duration,
    problems: &mut Vec<Problem>,
) -> Option<Vec<ViewDef>> {
    let views = match value {
        Some(Toml::Array(views)) if !views.is_empty() => views,
        Some(Toml::Array(_)) | None => {
            problem(
                problems,
                "views",
                "at least one [[views]] table is required",
            );
            return None;
        }
        Some(_) => {
            problem(problems, "views", "must be an array of tables ([[views]])");
            return None;
        }
    };
    let before = problems.len();
    let mut defs: Vec<ViewDef> = Vec::with_capacity(views.len());
    for (i, view) in views.iter().enumerate() {
        if let Some(def) = validate_view(&format!("views[{i}]"), view, events, late_after, problems)
        {
            if defs.iter().any(|d| d.name == def.name) {
                problem(
                    problems,
                    format!("views[{i}].name"),
                    format!("duplicate view name {:?}", def.name),
                );
            }
            defs.push(def);
        }
    }
    (problems.len() == before).then_some(defs)
}

fn validate_view(
    path: &str,
    value: &Toml,
    events: &EventSchema,
    late_after: Duration,
    problems: &mut Vec<Problem>,
) -> Option<ViewDef> {
    let mut section = Section::new(path, Some(value), problems)?;
    let name = section.string("name", problems);
    let granularity = section.string("granularity", problems);
    let dimensions = section.get("dimensions");
    let filter = section.optional_string("filter", problems);
    let metrics = section.get("metrics");
    let retention = section.optional_string("retention", problems);
    section.finish(problems);
    let retention = retention.and_then(|text| {
        parse_duration(&text)
            .map_err(|message| problem(problems, format!("{path}.retention"), message))
            .ok()
    });

    let name = name.filter(|name| {
        check_name("view", name)
            .map_err(|message| problem(problems, format!("{path}.name"), message))
            .is_ok()
    });
    let granularity = granularity.and_then(|g| {
        Granularity::parse(&g)
            .map_err(|message| problem(problems, format!("{path}.granularity"), message))
            .ok()
    });
    let dimensions = validate_dimensions(path, dimensions, events, problems);
    let filter =
        filter.and_then(
            |sql| match plan_filter(&sql, &events.arrow_schema(), "one event") {
                Ok(expr) => Some(ViewFilter { sql, expr }),
                Err(message) => {
                    problem(problems, format!("{path}.filter"), message);
                    None
                }
            },
        );
    let mut metrics = validate_metrics(
        path,
        metrics,
        dimensions.as_deref().unwrap_or(&[]),
        events,
        problems,
    );
    if let Some(metrics) = &mut metrics {
        metrics.push(late_metric(late_after));
    }
    Some(ViewDef {
        name: name?,
        granularity: granularity?,
        dimensions: dimensions?,
        filter,
        metrics: metrics?,
        retention,
    })
}

/// A view's definition as configured (`[[views]]`, without the built-in `late`), kept in every
/// manifest so that a version can be read under the definition it was computed with, whatever the
/// configuration says now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    pub name: String,
    pub granularity: String,
    pub dimensions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Metric name → expression, in configuration order.
    pub metrics: Vec<(String, String)>,
}

impl ViewDef {
    /// `[events] late_after` as the view's built-in `late` metric counts it.
    pub fn late_after(&self) -> Duration {
        (self.metrics.iter())
            .find_map(|m| match m.function {
                MetricFunction::Late { after_ms } => Some(after_ms),
                _ => None,
            })
            .map_or(Duration::ZERO, |ms| Duration::from_millis(ms.max(0) as u64))
    }

    /// The definition as configured.
    pub fn spec(&self) -> ViewSpec {
        ViewSpec {
            name: self.name.clone(),
            granularity: self.granularity.to_string(),
            dimensions: self.dimensions.iter().map(|d| d.name.clone()).collect(),
            filter: self.filter.as_ref().map(|f| f.sql.clone()),
            metrics: (self.metrics.iter())
                .filter(|m| !matches!(m.function, MetricFunction::Late { .. }))
                .map(|m| (m.name.clone(), m.expression.clone()))
                .collect(),
        }
    }

    /// The view `spec` defines over `events` (with `late_after` for its `late` metric), validated
    /// as the configuration is: the problems if the event schema no longer fits it.
    pub fn from_spec(
        spec: &ViewSpec,
        events: &EventSchema,
        late_after: Duration,
    ) -> Result<ViewDef, Vec<Problem>> {
        let mut table = toml::Table::new();
        table.insert("name".to_owned(), Toml::String(spec.name.clone()));
        table.insert(
            "granularity".to_owned(),
            Toml::String(spec.granularity.clone()),
        );
        let dimensions = spec.dimensions.iter().cloned().map(Toml::String).collect();
        table.insert("dimensions".to_owned(), Toml::Array(dimensions));
        if let Some(filter) = &spec.filter {
            table.insert("filter".to_owned(), Toml::String(filter.clone()));
        }
        let metrics = (spec.metrics.iter())
            .map(|(name, expression)| (name.clone(), Toml::String(expression.clone())))
            .collect();
        table.insert("metrics".to_owned(), Toml::Table(metrics));
        let mut problems = Vec::new();
        let path = format!("the definition of view {:?}", spec.name);
        match validate_view(
            &path,
            &Toml::Table(table),
            events,
            late_after,
            &mut problems,
        ) {
            Some(view) if problems.is_empty() => Ok(view),
            _ => Err(problems),
        }
    }
}

/// The built-in `late` metric of a view (last among its metrics).
fn late_metric(late_after: Duration) -> MetricDef {
    MetricDef {
        name: LATE_METRIC.to_owned(),
        expression: format!(
            "late (Kafka received the event more than {} after its time)",
            format_duration(late_after)
        ),
        function: MetricFunction::Late {
            after_ms: i64::try_from(late_after.as_millis()).unwrap_or(i64::MAX),
        },
        field: None,
    }
}

fn field_ref(name: &str, events: &EventSchema) -> Result<FieldRef, String> {
    match events.field_index(name) {
        Some(index) => Ok(FieldRef {
            name: name.to_owned(),
            index,
            ty: events.fields[index].ty,
        }),
        None if name == events.time_field => Err(format!(
            "{name:?} is the time field: views bucket it by their granularity"
        )),
        None => Err(format!(
            "{name:?} is not a field configured in [events.fields]"
        )),
    }
}

fn validate_dimensions(
    path: &str,
    value: Option<&Toml>,
    events: &EventSchema,
    problems: &mut Vec<Problem>,
) -> Option<Vec<FieldRef>> {
    let key = format!("{path}.dimensions");
    let items = match value {
        None => return Some(Vec::new()),
        Some(Toml::Array(items)) => items,
        Some(_) => {
            problem(problems, key, "must be an array of field names");
            return None;
        }
    };
    let before = problems.len();
    let mut dimensions: Vec<FieldRef> = Vec::with_capacity(items.len());
    for item in items {
        let Some(name) = item.as_str() else {
            problem(
                problems,
                &key,
                format!("{item} is not a field name (a string)"),
            );
            continue;
        };
        match field_ref(name, events) {
            Ok(_) if dimensions.iter().any(|d| d.name == name) => {
                problem(problems, &key, format!("{name:?} is listed twice"));
            }
            Ok(_) if name == TIME_COLUMN => {
                problem(
                    problems,
                    &key,
                    format!("{name:?} would clash with the view's time column"),
                );
            }
            Ok(field) => dimensions.push(field),
            Err(message) => problem(problems, &key, message),
        }
    }
    (problems.len() == before).then_some(dimensions)
}

fn validate_metrics(
    path: &str,
    value: Option<&Toml>,
    dimensions: &[FieldRef],
    events: &EventSchema,
    problems: &mut Vec<Problem>,
) -> Option<Vec<MetricDef>> {
    let key = format!("{path}.metrics");
    let table = match value {
        Some(Toml::Table(table)) if !table.is_empty() => table,
        _ => {
            problem(
                problems,
                key,
                "must be a table of name = \"function(field)\" with at least one metric",
            );
            return None;
        }
    };
    let before = problems.len();
    let mut metrics = Vec::with_capacity(table.len());
    for (name, expression) in table {
        let key = format!("{key}.{name}");
        if let Err(message) = check_name("metric", name) {
            problem(problems, &key, message);
        } else if name == LATE_METRIC {
            problem(
                problems,
                &key,
                "\"late\" is built in: every view counts its late events ([events] late_after); \
                 name this metric otherwise",
            );
        } else if name == TIME_COLUMN || dimensions.iter().any(|d| d.name == *name) {
            problem(
                problems,
                &key,
                format!("{name:?} clashes with the time column or a dimension"),
            );
        }
        let Some(expression) = expression.as_str() else {
            problem(
                problems,
                &key,
                "must be a string such as \"count\" or \"sum(field)\"",
            );
            continue;
        };
        match parse_metric(expression, events) {
            Ok((function, field)) => metrics.push(MetricDef {
                name: name.clone(),
                expression: expression.to_owned(),
                function,
                field,
            }),
            Err(message) => problem(problems, key, message),
        }
    }
    (problems.len() == before).then_some(metrics)
}

const FUNCTIONS: &str =
    "count, sum(f), min(f), max(f), avg(f), count_distinct(f) or quantile(f, q)";

/// Parses `count`, `count()`, `count(*)`, `sum(f)`, `min(f)`, `max(f)`, `avg(f)`,
/// `count_distinct(f)` and `quantile(f, q)` (function names are case-insensitive).
fn parse_metric(
    expression: &str,
    events: &EventSchema,
) -> Result<(MetricFunction, Option<FieldRef>), String> {
    let text = expression.trim();
    let (function, args) = match text.split_once('(') {
        None => (text, Vec::new()),
        Some((function, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("{expression:?} is missing its closing parenthesis"))?;
            let args = inner
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty() && *a != "*");
            (function.trim(), args.collect())
        }
    };
    let function = function.to_ascii_lowercase();
    let numeric = |field: &FieldRef, allow_timestamp: bool| {
        let fits = field.ty.is_numeric() || (allow_timestamp && field.ty == FieldType::Timestamp);
        if fits {
            Ok(())
        } else {
            let needs = if allow_timestamp {
                "int64, float64 or timestamp"
            } else {
                "int64 or float64"
            };
            Err(format!(
                "{function}({}) needs a {needs} field, and {:?} is {}",
                field.name, field.name, field.ty
            ))
        }
    };
    let one_field = |args: &[&str]| match args {
        [field] => field_ref(field, events),
        _ => Err(format!("{function} takes one field: {function}(field)")),
    };
    let parsed = match function.as_str() {
        "count" if args.is_empty() => (MetricFunction::Count, None),
        "count" => {
            return Err("count takes no field: it counts events (write \"count\")".to_owned());
        }
        "sum" | "avg" | "min" | "max" => {
            let field = one_field(&args)?;
            numeric(&field, matches!(function.as_str(), "min" | "max"))?;
            let function = match function.as_str() {
                "sum" => MetricFunction::Sum,
                "avg" => MetricFunction::Avg,
                "min" => MetricFunction::Min,
                _ => MetricFunction::Max,
            };
            (function, Some(field))
        }
        "count_distinct" => (MetricFunction::CountDistinct, Some(one_field(&args)?)),
        "quantile" => {
            let [field, q] = args.as_slice() else {
                return Err(
                    "quantile takes a field and a fraction: quantile(field, 0.95)".to_owned(),
                );
            };
            let field = field_ref(field, events)?;
            numeric(&field, false)?;
            let q: f64 = q
                .parse()
                .ok()
                .filter(|q: &f64| (0.0..=1.0).contains(q))
                .ok_or_else(|| {
                    format!("quantile fraction {q:?} must be a number from 0 to 1, e.g. 0.95")
                })?;
            (MetricFunction::Quantile(q), Some(field))
        }
        _ => {
            return Err(format!(
                "unknown metric {expression:?} (expected {FUNCTIONS})"
            ));
        }
    };
    Ok(parsed)
}

/// A DataFusion error as one line, so that each configuration problem stays on one line.
fn one_line(error: &datafusion::error::DataFusionError) -> String {
    error.strip_backtrace().replace('\n', " ")
}

/// Plans a filter with DataFusion against `arrow_schema` (an event's fields, or a view's
/// dimensions) and checks it is a deterministic condition on one row (`row` says what a row is).
pub(super) fn plan_filter(sql: &str, arrow_schema: &Schema, row: &str) -> Result<Expr, String> {
    let df_schema = DFSchema::try_from(arrow_schema.clone()).map_err(|e| one_line(&e))?;
    let context = SessionContext::new();
    let expr = context
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| format!("cannot plan filter {sql:?}: {}", one_line(&e)))?;
    let not_row_level = expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
                    | Expr::ScalarSubquery(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
            ))
        })
        .unwrap_or(true);
    if not_row_level {
        return Err(format!(
            "filter {sql:?} must be a condition on {row} (no aggregates, windows or subqueries)"
        ));
    }
    if expr.is_volatile() {
        return Err(format!(
            "filter {sql:?} uses a volatile function: the batch and speed layers would disagree"
        ));
    }
    let physical = context
        .create_physical_expr(expr.clone(), &df_schema)
        .map_err(|e| format!("cannot plan filter {sql:?}: {}", one_line(&e)))?;
    match physical.data_type(arrow_schema) {
        Ok(DataType::Boolean) => Ok(expr),
        Ok(other) => Err(format!(
            "filter {sql:?} must be true or false for {row}, not {other}"
        )),
        Err(e) => Err(format!("cannot plan filter {sql:?}: {}", one_line(&e))),
    }
}
