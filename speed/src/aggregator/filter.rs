//! The columns a poll's events are filtered on: the views' filters are the batch layer's
//! DataFusion expressions, evaluated here over an Arrow batch of just the time and the fields they
//! name.

use std::sync::Arc;

use arrow::array::{RecordBatch, TimestampMillisecondBuilder};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use tributary_schemas::config::ViewDef;
use tributary_schemas::event::raw_rows::ValueColumnBuilder;
use tributary_schemas::event::{EventSchema, Value};

/// The columns the views' filters read, as an Arrow batch of a poll's events: the time and the
/// fields the filters name, nothing else (a filter on `page` should not pay for copying every
/// string of every event into Arrow).
#[derive(Debug)]
pub(super) struct FilterColumns {
    pub(super) schema: SchemaRef,
    time: TimestampMillisecondBuilder,
    /// `(index in the event's values, builder)` for each field a filter names.
    fields: Vec<(usize, ValueColumnBuilder)>,
}

impl FilterColumns {
    pub(super) fn new(events: &EventSchema, views: &[ViewDef]) -> Self {
        let named: std::collections::HashSet<&str> = views
            .iter()
            .filter_map(|v| v.filter.as_ref())
            .flat_map(|f| f.expr.column_refs())
            .map(|c| c.name.as_str())
            .collect();
        let full = events.arrow_schema();
        let mut columns = vec![full.field(0).clone()];
        let mut fields = Vec::new();
        for (index, field) in events.fields.iter().enumerate() {
            if named.contains(field.name.as_str()) {
                columns.push(full.field(index + 1).clone());
                fields.push((index, ValueColumnBuilder::new(field.ty)));
            }
        }
        Self {
            schema: Arc::new(Schema::new(columns)),
            time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            fields,
        }
    }

    pub(super) fn append(&mut self, time_ms: i64, values: &[Value<'_>]) {
        self.time.append_value(time_ms);
        for (index, column) in &mut self.fields {
            column.append(&values[*index]);
        }
    }

    pub(super) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns = vec![Arc::new(self.time.finish()) as _];
        columns.extend(self.fields.iter_mut().map(|(_, column)| column.finish()));
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}
