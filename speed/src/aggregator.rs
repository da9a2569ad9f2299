//! The speed layer's incremental aggregation: every view's states per `(partition, epoch)`
//! (ARCHITECTURE.md §5), updated a poll's worth of messages at a time.
//!
//! Semantics are the batch layer's, from the same definitions: the shared [`Decoder`] decides what
//! is an event, the view filter is the *same DataFusion expression* evaluated over an Arrow batch
//! of the poll's events (so `NULL` handling, casts and functions cannot drift from the recompute),
//! buckets use [`Granularity::bucket_start`] (the batch plan's floor arithmetic), and states are
//! the shared [`MetricState`]s, so a speed epoch's row merges with a batch row into exactly the
//! state of the union.
//!
//! The hot path decodes each message once for all views, and allocates only when a new row key
//! appears in an epoch: dimension values are interned per view (a string is copied once per
//! distinct value), and row keys are looked up with a reused buffer.
//!
//! Pieces: [`dictionary`] (interned dimension values), [`epochs`] (one view's states in one
//! epoch), [`filter`] (the columns a view filter is evaluated on).
//!
//! [`Granularity::bucket_start`]: tributary_schemas::duration::Granularity::bucket_start

mod dictionary;
mod epochs;
mod filter;

use std::collections::BTreeMap;

/// Hash maps of the hot path: foldhash, built for short keys like these (SipHash took ~9% of the
/// aggregation, and xxh3's streaming `Hasher` still ~9%).
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, TimestampMillisecondBuilder};
use arrow::datatypes::TimestampMillisecondType;
use arrow::error::ArrowError;
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use tributary_schemas::aggregate::MetricState;
use tributary_schemas::aggregate::arrow::{StateColumnBuilder, read_state};
use tributary_schemas::config::{MetricDef, MetricFunction, ViewDef};
use tributary_schemas::decode::Decoder;
use tributary_schemas::event::raw_rows::{KafkaPosition, ValueColumnBuilder, read_value};
use tributary_schemas::event::{EventSchema, Value};
use tributary_schemas::lake::Boundary;
use tributary_schemas::layers::speed::{SpeedPart, SpeedSnapshot};
use tributary_schemas::seam::{epoch_of, first_speed_epoch};

use dictionary::Dictionary;
pub use epochs::EpochStates;
use filter::FilterColumns;

/// One row of a speed snapshot: the bucket, the dimension values and one state per metric.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedRow {
    pub bucket_ms: i64,
    pub dimensions: Vec<Value<'static>>,
    pub states: Vec<MetricState>,
}

/// One view's speed-layer states.
#[derive(Debug)]
pub struct ViewStates {
    view: ViewDef,
    epoch_size: u64,
    dictionaries: Vec<Dictionary>,
    epochs: BTreeMap<(i32, i64), EpochStates>,
    /// Words per row key: the bucket, then one per dimension.
    key_width: usize,
    key: Vec<u64>,
    hasher: foldhash::fast::RandomState,
    /// Per state of a row, the metric that defines it. Metrics whose states are equal by
    /// construction (the same kind of state over the same field, as `quantile(latency_ms, 0.5)`
    /// and `quantile(latency_ms, 0.99)`) share one state, updated once per event.
    defining: Vec<usize>,
    /// Per metric, the index of its state in a row.
    sources: Vec<usize>,
    /// No longer aggregated: an old definition whose replacement went live (blue/green).
    retired: bool,
    /// The highest boundary the epochs were dropped below, per partition (since the last clear).
    dropped: Boundary,
}

/// [`ViewStates::defining`] and [`ViewStates::sources`] of `metrics`.
fn shared_states(metrics: &[MetricDef]) -> (Vec<usize>, Vec<usize>) {
    // `late` counts like `count`, but only late events: never the same state.
    let input = |m: &MetricDef| {
        let late = matches!(m.function, MetricFunction::Late { .. });
        (m.state_kind(), m.field.as_ref().map(|f| f.index), late)
    };
    let mut defining: Vec<usize> = Vec::new();
    let sources = (metrics.iter())
        .enumerate()
        .map(|(index, metric)| {
            let shared = defining
                .iter()
                .position(|&d| input(&metrics[d]) == input(metric));
            shared.unwrap_or_else(|| {
                defining.push(index);
                defining.len() - 1
            })
        })
        .collect();
    (defining, sources)
}

impl ViewStates {
    fn new(view: ViewDef, epoch_size: u64) -> Self {
        let (defining, sources) = shared_states(&view.metrics);
        Self {
            dictionaries: view.dimensions.iter().map(|_| Dictionary::new()).collect(),
            key_width: 1 + view.dimensions.len(),
            view,
            epoch_size,
            epochs: BTreeMap::new(),
            key: Vec::new(),
            hasher: Default::default(),
            defining,
            sources,
            retired: false,
            dropped: Boundary::default(),
        }
    }

    /// The states of one row, one per [`Self::defining`] metric.
    fn row<'s>(&self, states: &'s EpochStates, row: usize) -> &'s [MetricState] {
        let width = self.defining.len();
        &states.states[row * width..(row + 1) * width]
    }

    pub fn view(&self) -> &ViewDef {
        &self.view
    }

    /// Adds events of one `(partition, epoch)`: each its time, its Kafka timestamp and its field
    /// values (schema order). The epoch is looked up once for the run, not once per event.
    fn add<'e, 'v: 'e>(
        &mut self,
        epoch: (i32, i64),
        events: impl IntoIterator<Item = (i64, Option<i64>, &'e [Value<'v>])>,
    ) {
        let mut events = events.into_iter().peekable();
        if events.peek().is_none() {
            return;
        }
        let epoch_states = self.epochs.entry(epoch).or_default();
        let metrics = &self.view.metrics;
        let width = self.defining.len();
        for (time_ms, kafka_ts_ms, values) in events {
            self.key.clear();
            self.key
                .push(self.view.granularity.bucket_start(time_ms) as u64);
            for (dimension, dictionary) in self.view.dimensions.iter().zip(&mut self.dictionaries) {
                self.key
                    .push(u64::from(dictionary.id(&values[dimension.index])));
            }
            let row = epoch_states.row(&self.key, &self.hasher, |states| {
                states.extend(
                    (self.defining.iter()).map(|&m| MetricState::empty(metrics[m].state_kind())),
                );
            });
            let states = &mut epoch_states.states[row * width..(row + 1) * width];
            for (state, &metric) in states.iter_mut().zip(&self.defining) {
                let metric = &metrics[metric];
                if metric.counts(time_ms, kafka_ts_ms) {
                    state.update(metric.value(values));
                }
            }
            epoch_states.events += 1;
            epoch_states.newest_event_ms = epoch_states.newest_event_ms.max(Some(time_ms));
        }
    }

    /// The row keys of `states` in row order.
    fn keys<'s>(&self, states: &'s EpochStates) -> impl Iterator<Item = &'s [u64]> {
        states.keys.chunks_exact(self.key_width)
    }

    /// Drops the epochs a batch version with `boundary` covers (call once no query still uses an
    /// older version).
    pub fn drop_below(&mut self, boundary: &Boundary) {
        self.epochs.retain(|&(partition, epoch), _| {
            epoch >= first_speed_epoch(boundary.get(partition), self.epoch_size)
        });
        for (&partition, &offset) in &boundary.0 {
            let dropped = self.dropped.0.entry(partition).or_default();
            *dropped = (*dropped).max(offset);
        }
    }

    /// The highest boundary the epochs were dropped below since the states were last cleared.
    pub fn dropped(&self) -> &Boundary {
        &self.dropped
    }

    /// Rows of the epochs above `boundary`, read back from [`Self::snapshot_parts`], the one form a
    /// query takes: for tests and tools that compare states row by row.
    pub fn snapshot(&self, boundary: &Boundary) -> Result<Vec<SpeedRow>, ArrowError> {
        let view = &self.view;
        let corrupt = |what: &str| ArrowError::ComputeError(format!("a speed part's {what}"));
        let mut rows = Vec::new();
        for part in self.snapshot_parts(boundary, &BTreeMap::new())?.parts {
            let batch = &part.batch;
            let time = batch.column(0).as_primitive::<TimestampMillisecondType>();
            for row in 0..batch.num_rows() {
                let dimensions = (view.dimensions.iter().enumerate())
                    .map(|(i, d)| read_value(d.ty, batch.column(1 + i), row))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| corrupt("dimension column"))?;
                let first_state = 1 + view.dimensions.len();
                let states = (view.metrics.iter().enumerate())
                    .map(|(i, m)| read_state(m.state_kind(), batch.column(first_state + i), row))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| corrupt("state column"))?;
                rows.push(SpeedRow {
                    bucket_ms: time.value(row),
                    dimensions,
                    states,
                });
            }
        }
        Ok(rows)
    }

    /// The view's rows in the epochs above `boundary` in the stored-state Arrow form, one part per
    /// epoch: what a query pinned to that batch version merges. An epoch whose offsets have all
    /// been read (`next_offsets` past its end) is sealed: its Arrow form is built once and kept.
    pub fn snapshot_parts(
        &self,
        boundary: &Boundary,
        next_offsets: &BTreeMap<i32, i64>,
    ) -> Result<SpeedSnapshot, ArrowError> {
        let mut snapshot = SpeedSnapshot::default();
        for (&(partition, epoch), states) in &self.epochs {
            if epoch < first_speed_epoch(boundary.get(partition), self.epoch_size) {
                continue;
            }
            let end = (epoch + 1).saturating_mul(self.epoch_size as i64);
            let sealed = next_offsets
                .get(&partition)
                .is_some_and(|&next| next >= end);
            let batch = match (sealed, states.sealed.get()) {
                (true, Some(batch)) => batch.clone(),
                (true, None) => {
                    let batch = self.encode(states)?;
                    let _ = states.sealed.set(batch.clone());
                    batch
                }
                (false, _) => self.encode(states)?,
            };
            snapshot.push(SpeedPart {
                partition,
                epoch,
                sealed,
                batch,
                events: states.events,
                newest_event_ms: states.newest_event_ms,
            });
        }
        Ok(snapshot)
    }

    /// One epoch's rows in the stored-state Arrow form.
    fn encode(&self, states: &EpochStates) -> Result<RecordBatch, ArrowError> {
        let mut time =
            TimestampMillisecondBuilder::with_capacity(states.rows()).with_timezone("UTC");
        let mut dimensions: Vec<_> = (self.view.dimensions.iter())
            .map(|d| ValueColumnBuilder::new(d.ty))
            .collect();
        let mut metrics: Vec<_> = (self.view.metrics.iter())
            .map(|m| StateColumnBuilder::new(m.state_kind()))
            .collect();
        for (row, key) in self.keys(states).enumerate() {
            time.append_value(key[0] as i64);
            for ((column, &id), dictionary) in
                dimensions.iter_mut().zip(&key[1..]).zip(&self.dictionaries)
            {
                column.append(&dictionary.borrowed(id as u32));
            }
            let row = self.row(states, row);
            for (column, &source) in metrics.iter_mut().zip(&self.sources) {
                column
                    .append(&row[source])
                    .map_err(|e| ArrowError::ComputeError(e.to_string()))?;
            }
        }
        let mut columns = vec![Arc::new(time.finish()) as _];
        columns.extend(dimensions.iter_mut().map(ValueColumnBuilder::finish));
        columns.extend(metrics.iter_mut().map(StateColumnBuilder::finish));
        RecordBatch::try_new(self.view.state_schema(), columns)
    }

    /// Forgets every epoch (before the consumer re-reads the log from a lower boundary).
    pub fn clear(&mut self) {
        self.epochs.clear();
        self.dropped = Boundary::default();
    }

    /// Stops aggregating this view and forgets its states: the old definition of a view whose new
    /// definition's first version is live, so nothing answers from these states any more.
    pub fn retire(&mut self) {
        self.retired = true;
        self.epochs.clear();
    }

    pub fn retired(&self) -> bool {
        self.retired
    }

    pub fn epochs(&self) -> &BTreeMap<(i32, i64), EpochStates> {
        &self.epochs
    }
}

/// What one [`Aggregator::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub events: u64,
    /// Messages the decoder rejected (the archiver quarantines them; the speed layer skips them).
    pub malformed: u64,
}

/// Every view's speed states, fed a poll's messages at a time.
#[derive(Debug)]
pub struct Aggregator {
    decoder: Decoder,
    views: Vec<ViewStates>,
    /// Per view, its filter planned against [`FilterColumns`]' schema (`None`: keeps every event).
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    batch: FilterColumns,
    /// Offsets per epoch (every view's epochs have this size).
    epoch_size: u64,
    /// Per partition, one past the last offset applied.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Since start: valid events aggregated, and messages the decoder rejected (skipped here,
    /// quarantined by the archiver).
    pub totals: Applied,
}

impl Aggregator {
    pub fn new(
        events: &EventSchema,
        views: &[ViewDef],
        epoch_size: u64,
    ) -> Result<Self, DataFusionError> {
        let batch = FilterColumns::new(events, views);
        let df_schema = DFSchema::try_from(batch.schema.as_ref().clone())?;
        let context = SessionContext::new();
        let filters = views
            .iter()
            .map(|view| {
                view.filter
                    .as_ref()
                    .map(|f| context.create_physical_expr(f.expr.clone(), &df_schema))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            decoder: Decoder::new(events.clone()),
            views: views
                .iter()
                .map(|v| ViewStates::new(v.clone(), epoch_size))
                .collect(),
            filters,
            batch,
            epoch_size,
            next_offsets: BTreeMap::new(),
            totals: Applied::default(),
        })
    }

    pub fn views(&self) -> &[ViewStates] {
        &self.views
    }

    pub fn views_mut(&mut self) -> &mut [ViewStates] {
        &mut self.views
    }

    /// Decodes `messages` once and adds every valid event to every view whose filter keeps it.
    pub fn apply(
        &mut self,
        messages: &[(KafkaPosition, &[u8])],
    ) -> Result<Applied, DataFusionError> {
        let mut applied = Applied::default();
        // One buffer of field values for the whole poll: event `i`'s are `values[i * width..]`.
        let width = self.decoder.schema().fields.len();
        let mut values = Vec::with_capacity(messages.len() * width);
        // Per decoded event: its `(partition, epoch)`, time and Kafka timestamp.
        let mut decoded = Vec::with_capacity(messages.len());
        for (position, payload) in messages {
            match self.decoder.decode_into(payload, &mut values) {
                Ok(time_ms) => {
                    let epoch = epoch_of(position.offset, self.epoch_size);
                    decoded.push(((position.partition, epoch), time_ms, position.timestamp_ms));
                }
                Err(_) => applied.malformed += 1,
            }
        }
        for run in messages.chunk_by(|(a, _), (b, _)| a.partition == b.partition) {
            let (first, _) = run[0];
            let last = run
                .iter()
                .map(|(p, _)| p.offset)
                .max()
                .unwrap_or(first.offset);
            let next = self.next_offsets.entry(first.partition).or_default();
            *next = (*next).max(last + 1);
        }
        let fields = |event: usize| &values[event * width..(event + 1) * width];
        applied.events = decoded.len() as u64;
        self.totals.events += applied.events;
        self.totals.malformed += applied.malformed;
        let needs_batch = self.filters.iter().any(Option::is_some);
        let batch = if needs_batch && !decoded.is_empty() {
            for (event, &(_, time_ms, _)) in decoded.iter().enumerate() {
                self.batch.append(time_ms, fields(event));
            }
            Some(self.batch.finish()?)
        } else {
            None
        };
        for (view, filter) in self.views.iter_mut().zip(&self.filters) {
            if view.retired {
                continue;
            }
            let keep = match (filter, &batch) {
                (Some(filter), Some(batch)) => {
                    Some(filter.evaluate(batch)?.into_array(batch.num_rows())?)
                }
                _ => None,
            };
            let keep = keep.as_ref().map(|k| k.as_boolean());
            let kept = |event: &usize| keep.is_none_or(|k| k.is_valid(*event) && k.value(*event));
            let mut first = 0;
            for run in decoded.chunk_by(|(a, ..), (b, ..)| a == b) {
                let events = (first..first + run.len()).filter(kept);
                view.add(
                    run[0].0,
                    events.map(|e| (decoded[e].1, decoded[e].2, fields(e))),
                );
                first += run.len();
            }
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests;
