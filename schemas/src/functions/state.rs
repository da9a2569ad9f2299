//! The algebra as DataFusion aggregate functions, so that plans compute exactly the states the
//! speed layer computes event by event.
//!
//! Every [`StateKind`] has two functions:
//! - **update** ([`Phase::Update`], named `state_<kind>`): aggregates raw event values (one column of
//!   the master dataset) into the kind's state. The batch layer's recompute uses these.
//! - **merge** ([`Phase::Merge`], named `merge_<kind>`): merges state columns (the Arrow form of
//!   [`crate::aggregate::arrow`]) into one state. The serving layer uses these to re-aggregate batch and speed
//!   rows, and to roll a 1m view up to hours or days.
//!
//! Both return the Arrow form of the state, and both use the state as their intermediate form, so
//! DataFusion's two-phase (partial → final) aggregation, spilling and skipped partial aggregation
//! all go through the same merge as everything else. The per-group work is done by
//! [`GroupsAccumulator`]s over one `Vec` of states per function (no per-row dispatch). Sketch
//! updates log their bucket or register keys and each group's sketch is encoded once, when it is
//! emitted (see `States::log`), so a recompute's many small groups allocate nothing of their own.
//!
//! Input values are read exactly as [`MetricState::update`] reads an event [`Value`](crate::event::Value):
//! `count` counts every row (nulls included), the other kinds skip nulls; `sum`/`avg`/`quantile`
//! over `int64` add the value as `f64` where the state is a float; `count_distinct` hashes with
//! [`crate::aggregate::hash_value`]'s functions (strings by their UTF-8 bytes, timestamps as their `i64`
//! milliseconds).
//!
//! One file past the usual size on purpose: the ten kinds share one accumulator skeleton
//! (`ColumnState` and its groups accumulator) with small per-kind parts, and the skeleton is what a
//! reader checks against the algebra; split per kind, that one loop would be read in pieces.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::aggregate::arrow::StateColumnBuilder;
use crate::aggregate::ddsketch::BucketKey;
use crate::aggregate::{
    AggregateState, Avg, Count, DdSketch, FloatSum, Hll, IntSum, Max, MetricState, Min, StateError,
    StateKind, hll,
};

/// Which side of the algebra a function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Raw values → state.
    Update,
    /// States → state.
    Merge,
}

/// The DataFusion aggregate function of one state kind and phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateUdaf {
    kind: StateKind,
    phase: Phase,
    name: String,
    signature: Signature,
}

impl StateUdaf {
    pub fn new(kind: StateKind, phase: Phase) -> Self {
        let suffix = kind.name().replace(' ', "_");
        let name = match phase {
            Phase::Update => format!("state_{suffix}"),
            Phase::Merge => format!("merge_{suffix}"),
        };
        Self {
            kind,
            phase,
            name,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    /// The function as a DataFusion [`AggregateUDF`]; call it with one argument.
    pub fn udaf(kind: StateKind, phase: Phase) -> AggregateUDF {
        AggregateUDF::from(Self::new(kind, phase))
    }

    fn check_input(&self, input: &DataType) -> Result<()> {
        let accepted = match self.phase {
            Phase::Merge => state_input_type(self.kind, input),
            Phase::Update => update_input_type(self.kind, input),
        };
        if accepted.is_none() {
            return plan_err!(
                "{}() cannot take an argument of type {input} (the {} state needs {})",
                self.name,
                self.kind,
                match self.phase {
                    Phase::Merge => self.kind.data_type().to_string(),
                    Phase::Update => "a field type the view definition allows".to_owned(),
                }
            );
        }
        Ok(())
    }

    pub(super) fn groups(&self, input: &DataType) -> Result<Box<dyn GroupsAccumulator + Sync>> {
        self.check_input(input)?;
        let (kind, phase) = (self.kind, self.phase);
        Ok(match kind {
            StateKind::Count => Box::new(States::<Count>::new(kind, phase)),
            StateKind::IntSum => Box::new(States::<IntSum>::new(kind, phase)),
            StateKind::FloatSum => Box::new(States::<FloatSum>::new(kind, phase)),
            StateKind::IntMin => Box::new(States::<Min<i64>>::new(kind, phase)),
            StateKind::IntMax => Box::new(States::<Max<i64>>::new(kind, phase)),
            StateKind::FloatMin => Box::new(States::<Min<f64>>::new(kind, phase)),
            StateKind::FloatMax => Box::new(States::<Max<f64>>::new(kind, phase)),
            StateKind::Avg => Box::new(States::<Avg>::new(kind, phase)),
            StateKind::CountDistinct => Box::new(States::<Hll>::new(kind, phase)),
            StateKind::Quantile => Box::new(States::<DdSketch>::new(kind, phase)),
        })
    }
}

/// The canonical type an update input is read as, if the kind accepts `input`.
fn update_input_type(kind: StateKind, input: &DataType) -> Option<DataType> {
    let integer = matches!(input, DataType::Int64 | DataType::Timestamp(..));
    let numeric = matches!(input, DataType::Int64 | DataType::Float64);
    let string = matches!(
        input,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    match kind {
        StateKind::Count => Some(input.clone()),
        StateKind::IntSum | StateKind::IntMin | StateKind::IntMax => {
            integer.then_some(DataType::Int64)
        }
        StateKind::FloatSum | StateKind::FloatMin | StateKind::FloatMax => {
            (*input == DataType::Float64).then_some(DataType::Float64)
        }
        StateKind::Avg | StateKind::Quantile => numeric.then_some(DataType::Float64),
        StateKind::CountDistinct if string || *input == DataType::Boolean => Some(input.clone()),
        StateKind::CountDistinct if *input == DataType::Float64 => Some(DataType::Float64),
        StateKind::CountDistinct => integer.then_some(DataType::Int64),
    }
}

/// The canonical type a merge input is read as, if `input` holds states of `kind`.
fn state_input_type(kind: StateKind, input: &DataType) -> Option<DataType> {
    let want = kind.data_type();
    let binary = matches!(
        input,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    );
    (*input == want || (want == DataType::Binary && binary)).then_some(want)
}

impl AggregateUDFImpl for StateUdaf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if let [input] = arg_types {
            self.check_input(input)?;
        }
        Ok(self.kind.data_type())
    }

    fn is_nullable(&self) -> bool {
        self.kind.nullable()
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[state]", args.name),
            self.kind.data_type(),
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let input = args.expr_fields[0].data_type();
        Ok(Box::new(SingleGroup::new(self.kind, self.groups(input)?)))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(self.groups(args.expr_fields[0].data_type())?)
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        let empty = state_column(&MetricState::empty(self.kind))?;
        ScalarValue::try_from_array(&empty, 0)
    }
}

/// The rows of a batch that take part: those passing the aggregate's `FILTER` and, when `nulls` is
/// given, not null. `None` means every row.
fn selected_rows(
    len: usize,
    nulls: Option<&NullBuffer>,
    filter: Option<&BooleanArray>,
) -> Option<BooleanBuffer> {
    let filter = filter.map(|f| match f.nulls() {
        Some(valid) => f.values() & valid.inner(),
        None => f.values().clone(),
    });
    match (nulls.filter(|n| n.null_count() > 0), filter) {
        (None, None) => None,
        (Some(n), None) => Some(n.inner().clone()),
        (None, Some(f)) => Some(f),
        (Some(n), Some(f)) => Some(n.inner() & &f),
    }
    .filter(|mask| mask.count_set_bits() < len)
}

fn for_each_row(len: usize, rows: Option<&BooleanBuffer>, mut f: impl FnMut(usize)) {
    match rows {
        None => (0..len).for_each(f),
        Some(mask) => mask.set_indices().for_each(&mut f),
    }
}

/// A deferred key of `group` as [`States::log`] holds it.
fn logged(group: usize, key: u32) -> u64 {
    (group as u64) << 32 | u64::from(key)
}

/// One state type's vectorised operations: how it reads a raw column, how it reads and writes its
/// Arrow form.
trait ColumnState: AggregateState + Default + Clone + Send + Sync + Debug + 'static {
    /// Folds the selected rows of `values` (already cast to the update input type) into `states`.
    fn update_rows(
        states: &mut [Self],
        values: &dyn Array,
        groups: &[usize],
        rows: Option<&BooleanBuffer>,
    );

    /// Whether update skips null values (all but `count`).
    const SKIPS_NULLS: bool = true;

    /// Whether states grow on the heap (the sketches), so memory accounting must follow them.
    const GROWS: bool = false;

    /// Heap bytes beyond `size_of::<Self>()`; only sketches have any.
    fn heap_size(&self) -> usize {
        0
    }

    fn wrap(self) -> MetricState;

    /// Folds `other` in, taking it whole when `self` is still empty (the common case of a group's
    /// first state, which then costs no merge); the result is the same either way.
    fn absorb(&mut self, other: Self) {
        self.merge(&other);
    }

    /// Whether the state is the empty one (only sketches answer; others say no, which only
    /// costs them the pass-through of [`States::merge`], which they do not use).
    fn is_empty_state(&self) -> bool {
        false
    }

    /// The inverse of [`ColumnState::wrap`]: `None` for a state of another kind.
    fn unwrap(state: MetricState) -> Option<Self>;

    /// Whether updates split into an immediate part and a deferred `u32` key whose effect
    /// commutes (a DDSketch bucket count, a HyperLogLog register). [`States`] logs the keys of the
    /// update phase and encodes each group's sketch from its keys when it emits, instead of
    /// growing a sketch on the heap row by row (see [`States::log`]).
    const DEFERS: bool = false;

    /// Whether a deferred update is all key, leaving the state as it was (an HLL, unlike a
    /// DDSketch's count and extremes). [`States`] then allocates no states while it only logs:
    /// a recompute's 1.9M HyperLogLogs would be ~75 MB of empty sketches, written once and
    /// emitted as empty.
    const DEFERS_ALL: bool = false;

    /// [`ColumnState::update_rows`] that logs each row's deferred key as `group << 32 | key`.
    /// Groups must fit 32 bits.
    fn defer_rows(
        states: &mut [Self],
        values: &dyn Array,
        groups: &[usize],
        rows: Option<&BooleanBuffer>,
        log: &mut Vec<u64>,
    ) {
        let _ = log;
        Self::update_rows(states, values, groups, rows);
    }

    /// Applies one deferred key.
    fn apply_key(&mut self, key: u32) {
        let _ = key;
    }

    /// Writes the payload of the state with `keys` applied, straight from the keys without
    /// building it, when the state allows; `None` (nothing written) otherwise. May reorder `keys`.
    fn encode_payload_with_keys(&self, keys: &mut [u32], out: &mut Vec<u8>) -> Option<()> {
        let _ = (keys, out);
        None
    }

    /// Appends the state with `keys` applied to `builder`: encoded from the keys when
    /// [`ColumnState::encode_payload_with_keys`] can, else applied and encoded as usual.
    fn append_with_keys(
        mut self,
        keys: &mut [u32],
        builder: &mut StateColumnBuilder,
    ) -> std::result::Result<(), StateError> {
        if builder
            .append_payload(|out| self.encode_payload_with_keys(keys, out))
            .is_some()
        {
            return Ok(());
        }
        keys.iter().for_each(|&key| self.apply_key(key));
        builder.append(&self.wrap())
    }
}

fn ints(values: &dyn Array) -> &[i64] {
    values.as_primitive::<Int64Type>().values()
}

fn floats(values: &dyn Array) -> &[f64] {
    values.as_primitive::<Float64Type>().values()
}

/// `wrap`/`unwrap` between a state type and its [`MetricState`] variant.
macro_rules! variant {
    ($variant:ident) => {
        fn wrap(self) -> MetricState {
            MetricState::$variant(self)
        }

        fn unwrap(state: MetricState) -> Option<Self> {
            match state {
                MetricState::$variant(s) => Some(s),
                _ => None,
            }
        }
    };
}

impl ColumnState for Count {
    const SKIPS_NULLS: bool = false;

    fn update_rows(
        states: &mut [Self],
        values: &dyn Array,
        groups: &[usize],
        rows: Option<&BooleanBuffer>,
    ) {
        for_each_row(values.len(), rows, |row| states[groups[row]].update());
    }

    variant!(Count);
}

/// A state updated with one native value per row, read from an `Int64` or `Float64` column.
macro_rules! numeric_state {
    ($state:ty, $variant:ident, $read:ident) => {
        impl ColumnState for $state {
            fn update_rows(
                states: &mut [Self],
                values: &dyn Array,
                groups: &[usize],
                rows: Option<&BooleanBuffer>,
            ) {
                let values = $read(values);
                for_each_row(values.len(), rows, |row| {
                    states[groups[row]].update(values[row]);
                });
            }

            variant!($variant);
        }
    };
}

numeric_state!(IntSum, IntSum, ints);
numeric_state!(FloatSum, FloatSum, floats);
numeric_state!(Min<i64>, IntMin, ints);
numeric_state!(Max<i64>, IntMax, ints);
numeric_state!(Min<f64>, FloatMin, floats);
numeric_state!(Max<f64>, FloatMax, floats);
numeric_state!(Avg, Avg, floats);

impl ColumnState for DdSketch {
    fn update_rows(
        states: &mut [Self],
        values: &dyn Array,
        groups: &[usize],
        rows: Option<&BooleanBuffer>,
    ) {
        let values = floats(values);
        for_each_row(values.len(), rows, |row| {
            states[groups[row]].update(values[row]);
        });
    }

    const DEFERS: bool = true;

    fn defer_rows(
        states: &mut [Self],
        values: &dyn Array,
        groups: &[usize],
        rows: Option<&BooleanBuffer>,
        log: &mut Vec<u64>,
    ) {
        let values = floats(values);
        for_each_row(values.len(), rows, |row| {
            let group = groups[row];
            if let Some(key) = states[group].update_deferred(values[row]) {
                log.push(logged(group, key.to_bits()));
            }
        });
    }

    fn apply_key(&mut self, key: u32) {
        self.add_key(BucketKey::from_bits(key));
    }

    fn encode_payload_with_keys(&self, keys: &mut [u32], out: &mut Vec<u8>) -> Option<()> {
        DdSketch::encode_payload_with_keys(self, keys, out)
    }

    const GROWS: bool = true;

    fn heap_size(&self) -> usize {
        DdSketch::heap_size(self)
    }

    fn absorb(&mut self, other: Self) {
        match self.count() {
            0 => *self = other,
            _ => self.merge(&other),
        }
    }

    fn is_empty_state(&self) -> bool {
        self.count() == 0
    }

    variant!(Quantile);
}

/// Calls `f(row, hash)` for the selected rows of `values`, hashed as [`crate::aggregate::hash_value`] hashes.
fn for_each_hash(values: &dyn Array, rows: Option<&BooleanBuffer>, mut f: impl FnMut(usize, u64)) {
    let len = values.len();
    match values.data_type() {
        DataType::Utf8 => {
            let strings = values.as_string::<i32>();
            for_each_row(len, rows, |row| f(row, hll::hash_str(strings.value(row))));
        }
        DataType::LargeUtf8 => {
            let strings = values.as_string::<i64>();
            for_each_row(len, rows, |row| f(row, hll::hash_str(strings.value(row))));
        }
        DataType::Utf8View => {
            let strings = values.as_string_view();
            for_each_row(len, rows, |row| f(row, hll::hash_str(strings.value(row))));
        }
        DataType::Boolean => {
            let bools = values.as_boolean();
            for_each_row(len, rows, |row| f(row, hll::hash_bool(bools.value(row))));
        }
        DataType::Float64 => {
            let values = floats(values);
            for_each_row(len, rows, |row| f(row, hll::hash_f64(values[row])));
        }
        _ => {
            let values = ints(values);
            for_each_row(len, rows, |row| f(row, hll::hash_i64(values[row])));
        }
    }
}

impl ColumnState for Hll {
    fn update_rows(
        states: &mut [Self],
        values: &dyn Array,
        groups: &[usize],
        rows: Option<&BooleanBuffer>,
    ) {
        for_each_hash(values, rows, |row, hash| {
            states[groups[row]].insert_hash(hash);
        });
    }

    const DEFERS: bool = true;

    const DEFERS_ALL: bool = true;

    fn defer_rows(
        _states: &mut [Self],
        values: &dyn Array,
        groups: &[usize],
        rows: Option<&BooleanBuffer>,
        log: &mut Vec<u64>,
    ) {
        for_each_hash(values, rows, |row, hash| {
            log.push(logged(groups[row], hll::sparse_entry(hash)));
        });
    }

    fn apply_key(&mut self, key: u32) {
        self.insert_entry(key);
    }

    fn encode_payload_with_keys(&self, keys: &mut [u32], out: &mut Vec<u8>) -> Option<()> {
        match self.is_empty() {
            true => hll::encode_payload_of_entries(keys, out),
            false => None,
        }
    }

    const GROWS: bool = true;

    fn heap_size(&self) -> usize {
        Hll::heap_size(self)
    }

    fn absorb(&mut self, other: Self) {
        match self.is_empty() {
            true => *self = other,
            false => self.merge(&other),
        }
    }

    fn is_empty_state(&self) -> bool {
        self.is_empty()
    }

    variant!(CountDistinct);
}

/// A [`GroupsAccumulator`] holding one state per group.
#[derive(Debug)]
struct States<S> {
    kind: StateKind,
    phase: Phase,
    /// The groups so far. `states` may be shorter (see [`ColumnState::DEFERS_ALL`]): a missing
    /// state is the empty one.
    groups: usize,
    states: Vec<S>,
    /// Sum of [`ColumnState::heap_size`] over `states`, kept up to date as sketches grow.
    heap_bytes: usize,
    /// Per group, the last pass of [`States::touched_heap_size`] that counted it.
    marks: Vec<u32>,
    mark: u32,
    /// Merging sketches: per group, the encoded state while the group has received exactly one.
    /// It is emitted as it came, so a group merged from a single row (most groups when serving
    /// merges a cached part with a few speed rows) costs a copy instead of a decode and an encode.
    single: Vec<Option<Box<[u8]>>>,
    single_bytes: usize,
    /// Update phase of sketches ([`ColumnState::DEFERS`]): the deferred keys of the rows so far,
    /// `group << 32 | key`, in row order. A recompute's groups mostly hold a handful of rows (a
    /// minute of one page in one country), and growing a sketch per group row by row cost an
    /// allocation or two per group, a binary-search insert per row, and a free per group after
    /// emitting. Logged keys cost 8 bytes a row; emitting sorts them by group (a counting sort)
    /// and encodes each group's sketch straight from its keys, without building it.
    /// Groups that take many rows are folded into their own sketches once the log outgrows
    /// [`fold_limit`], which bounds the log by the groups and keeps the work linear.
    log: Vec<u64>,
}

/// The log length that folds logged keys into the groups' own sketches: 8 keys a group (a few times
/// what a sketch of one group costs), and at least 64 Ki keys (512 KiB) for few, busy groups.
fn fold_limit(groups: usize) -> usize {
    groups.saturating_mul(8).max(1 << 16)
}

/// Logged keys taken for emitting: those of group `g` are `keys[ends[g - 1]..ends[g]]`.
struct TakenKeys {
    ends: Vec<usize>,
    keys: Vec<u32>,
}

impl TakenKeys {
    fn of(&mut self, group: usize) -> &mut [u32] {
        match self.ends.get(group) {
            None => &mut [],
            Some(&end) => {
                let start = group.checked_sub(1).map_or(0, |g| self.ends[g]);
                &mut self.keys[start..end]
            }
        }
    }
}

impl<S: ColumnState> States<S> {
    fn new(kind: StateKind, phase: Phase) -> Self {
        Self {
            kind,
            phase,
            groups: 0,
            states: Vec::new(),
            heap_bytes: 0,
            marks: Vec::new(),
            mark: 0,
            single: Vec::new(),
            single_bytes: 0,
            log: Vec::new(),
        }
    }

    /// Whether updates log their keys ([`States::log`]).
    fn defers(&self, total_num_groups: usize) -> bool {
        S::DEFERS && self.phase == Phase::Update && u32::try_from(total_num_groups).is_ok()
    }

    /// Applies the logged keys to the groups' own sketches.
    fn fold(&mut self) {
        self.grow(self.groups);
        for &entry in &self.log {
            self.states[(entry >> 32) as usize].apply_key(entry as u32);
        }
        self.log.clear();
        self.heap_bytes = self.states.iter().map(S::heap_size).sum();
    }

    /// Takes the logged keys of the first `emitted` groups, ordered by group (a counting sort),
    /// and renumbers the rest for the groups that stay.
    fn take_logged(&mut self, emitted: usize) -> TakenKeys {
        if self.log.is_empty() {
            return TakenKeys {
                ends: Vec::new(),
                keys: Vec::new(),
            };
        }
        // Counts, then starts, then (after the scatter) ends.
        let mut ends = vec![0usize; emitted + 1];
        for &entry in &self.log {
            let group = (entry >> 32) as usize;
            if group < emitted {
                ends[group + 1] += 1;
            }
        }
        for group in 1..=emitted {
            ends[group] += ends[group - 1];
        }
        ends.pop();
        let mut keys = vec![0u32; self.log.len()];
        if emitted >= self.groups {
            // Everything goes (the end, or a spill): no entry stays to renumber, and the memory
            // goes back to the pool.
            for &entry in &self.log {
                let group = (entry >> 32) as usize;
                keys[ends[group]] = entry as u32;
                ends[group] += 1;
            }
            self.log = Vec::new();
            return TakenKeys { ends, keys };
        }
        let shift = (emitted as u64) << 32;
        self.log.retain_mut(|entry| {
            let group = (*entry >> 32) as usize;
            if group < emitted {
                keys[ends[group]] = *entry as u32;
                ends[group] += 1;
                false
            } else {
                *entry -= shift;
                true
            }
        });
        keys.truncate(ends.last().copied().unwrap_or(0));
        if self.log.is_empty() {
            self.log = Vec::new();
        }
        TakenKeys { ends, keys }
    }

    /// What emitting logged keys allocates beyond the states (see [`States::take_logged`]): the
    /// sorted key and the group ends, and the bytes a key becomes in the state column (a bucket
    /// delta and count, or an HLL entry delta). The pool must hold it before the emit: a spill
    /// emits everything at once.
    fn emit_bytes(&self) -> usize {
        const PER_KEY: usize = size_of::<u32>() + 8;
        match self.log.is_empty() {
            true => 0,
            false => self.log.len() * PER_KEY + self.groups * size_of::<usize>(),
        }
    }

    /// Whether merges keep single encoded states ([`States::single`]).
    fn passes_through(&self) -> bool {
        S::GROWS && self.phase == Phase::Merge
    }

    fn grow(&mut self, total_num_groups: usize) {
        self.groups = self.groups.max(total_num_groups);
        if self.states.len() < total_num_groups {
            self.states.resize_with(total_num_groups, S::default);
            if self.passes_through() {
                self.single.resize_with(total_num_groups, || None);
            }
        }
    }

    /// Runs `f` on the states, keeping `heap_bytes` current for types whose states grow.
    fn tracked(&mut self, groups: &[usize], f: impl FnOnce(&mut [S])) {
        if !S::GROWS {
            f(&mut self.states);
            return;
        }
        let before = self.touched_heap_size(groups);
        f(&mut self.states);
        let after = self.touched_heap_size(groups);
        self.heap_bytes = (self.heap_bytes + after).saturating_sub(before);
    }

    /// Heap bytes of the distinct groups in `groups` (a batch names a group once per row).
    fn touched_heap_size(&mut self, groups: &[usize]) -> usize {
        self.marks.resize(self.states.len(), 0);
        self.mark = self.mark.wrapping_add(1);
        if self.mark == 0 {
            self.marks.fill(0);
            self.mark = 1;
        }
        let mut bytes = 0;
        for &group in groups {
            if self.marks[group] != self.mark {
                self.marks[group] = self.mark;
                bytes += self.states[group].heap_size();
            }
        }
        bytes
    }

    fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        match S::DEFERS_ALL && self.defers(total_num_groups) {
            true => self.groups = self.groups.max(total_num_groups),
            false => self.grow(total_num_groups),
        }
        let Some(input_type) = update_input_type(self.kind, values.data_type()) else {
            return exec_err!("{} state cannot read {}", self.kind, values.data_type());
        };
        let values = cast(values, &input_type)?;
        let nulls = if S::SKIPS_NULLS {
            values.logical_nulls()
        } else {
            None
        };
        let rows = selected_rows(values.len(), nulls.as_ref(), filter);
        let rows = rows.as_ref();
        if self.defers(total_num_groups) {
            S::defer_rows(&mut self.states, &values, groups, rows, &mut self.log);
            if self.log.len() >= fold_limit(self.groups) {
                self.fold();
            }
            return Ok(());
        }
        self.tracked(groups, |states| {
            S::update_rows(states, &values, groups, rows);
        });
        Ok(())
    }

    fn merge(
        &mut self,
        states: &ArrayRef,
        groups: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let kind = self.kind;
        let Some(state_type) = state_input_type(kind, states.data_type()) else {
            return exec_err!("{} states cannot be read from {}", kind, states.data_type());
        };
        let column = cast(states, &state_type)?;
        if self.passes_through() {
            return self.merge_sketches(&column, groups);
        }
        let mut result = Ok(());
        self.tracked(groups, |mine| {
            result = groups.iter().enumerate().try_for_each(|(row, &group)| {
                let theirs = crate::aggregate::arrow::read_state(kind, &column, row)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let theirs = S::unwrap(theirs).expect("read_state checks the kind");
                mine[group].absorb(theirs);
                Ok(())
            });
        });
        result
    }

    /// [`States::merge`] of sketch states: a group's first state is kept encoded; a second one
    /// decodes it and merges as usual.
    fn merge_sketches(&mut self, column: &ArrayRef, groups: &[usize]) -> Result<()> {
        let kind = self.kind;
        let decode = |row: usize| -> Result<S> {
            let state = crate::aggregate::arrow::read_state(kind, column, row)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok(S::unwrap(state).expect("read_state checks the kind"))
        };
        let bytes = column.as_binary::<i32>();
        let before = self.touched_heap_size(groups);
        for (row, &group) in groups.iter().enumerate() {
            let first = self.single[group].is_none() && self.states[group].is_empty_state();
            if first && bytes.is_valid(row) {
                let encoded: Box<[u8]> = bytes.value(row).into();
                self.single_bytes += encoded.len();
                self.single[group] = Some(encoded);
                continue;
            }
            if let Some(encoded) = self.single[group].take() {
                self.single_bytes -= encoded.len();
                let state = MetricState::from_bytes(&encoded)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                self.states[group] = S::unwrap(state).ok_or_else(|| {
                    DataFusionError::Execution(format!("a {kind} state held another kind"))
                })?;
            }
            self.states[group].absorb(decode(row)?);
        }
        let after = self.touched_heap_size(groups);
        self.heap_bytes = (self.heap_bytes + after).saturating_sub(before);
        Ok(())
    }

    /// Takes the states of the first `emitted` groups (fewer where the rest were never allocated)
    /// and counts those groups out.
    fn take_states(&mut self, emitted: usize) -> Vec<S> {
        self.groups -= emitted;
        let rest = self.states.split_off(emitted.min(self.states.len()));
        std::mem::replace(&mut self.states, rest)
    }

    fn emit(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let emitted = match emit_to {
            EmitTo::All => self.groups,
            EmitTo::First(n) => n.min(self.groups),
        };
        let mut logged = self.take_logged(emitted);
        let mut taken = self.take_states(emitted).into_iter();
        let singles = match self.passes_through() {
            true => emit_to.take_needed(&mut self.single),
            false => Vec::new(),
        };
        self.marks.clear();
        if S::GROWS {
            self.heap_bytes = self.states.iter().map(S::heap_size).sum();
            self.single_bytes = self.single.iter().flatten().map(|b| b.len()).sum();
        }
        // Measured on `pageviews`: ~5 keys make a 31-byte HLL or a 37-byte DDSketch. Room the
        // builder does not fill is never touched.
        let sketch_bytes = logged.keys.len() * 6 + emitted * 8;
        let mut builder = StateColumnBuilder::with_capacity(self.kind, emitted, sketch_bytes);
        for group in 0..emitted {
            let state = taken.next().unwrap_or_default();
            let keys = logged.of(group);
            match singles.get(group).and_then(Option::as_deref) {
                Some(encoded) => builder.append_encoded(encoded),
                None if keys.is_empty() => builder.append(&state.wrap()),
                None => state.append_with_keys(keys, &mut builder),
            }
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        Ok(builder.finish())
    }
}

/// A one-row column holding `state`.
fn state_column(state: &MetricState) -> Result<ArrayRef> {
    let mut builder = StateColumnBuilder::new(state.kind());
    builder
        .append(state)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(builder.finish())
}

impl<S: ColumnState> GroupsAccumulator for States<S> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        match self.phase {
            Phase::Update => self.update(&values[0], group_indices, opt_filter, total_num_groups),
            Phase::Merge => {
                let values = match opt_filter {
                    Some(filter) => arrow::compute::filter(&values[0], filter)?,
                    None => Arc::clone(&values[0]),
                };
                let groups: Vec<usize> = match opt_filter {
                    Some(filter) => group_indices
                        .iter()
                        .zip(filter.iter())
                        .filter(|(_, keep)| *keep == Some(true))
                        .map(|(g, _)| *g)
                        .collect(),
                    None => group_indices.to_vec(),
                };
                self.merge(&values, &groups, total_num_groups)
            }
        }
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.emit(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.merge(&values[0], group_indices, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Every row becomes its own group.
        let rows = values[0].len();
        let mut single = Self::new(self.kind, self.phase);
        let groups: Vec<usize> = (0..rows).collect();
        single.update_batch(values, &groups, opt_filter, rows)?;
        Ok(vec![single.emit(EmitTo::All)?])
    }

    fn size(&self) -> usize {
        self.states.capacity() * size_of::<S>()
            + self.marks.capacity() * 4
            + self.heap_bytes
            + self.single.capacity() * size_of::<Option<Box<[u8]>>>()
            + self.single_bytes
            + self.log.capacity() * size_of::<u64>()
            + self.emit_bytes()
    }
}

/// The [`Accumulator`] DataFusion asks for in plans without grouping: one group of the same
/// [`GroupsAccumulator`], whose state is answered through `finish` (the state itself for the
/// `state_<kind>`/`merge_<kind>` functions, the kind's finalize for `merge`).
pub(super) struct SingleGroup {
    kind: StateKind,
    groups: Box<dyn GroupsAccumulator + Sync>,
    finish: Finish,
}

/// How a [`SingleGroup`] answers its state.
type Finish = Box<dyn Fn(&ArrayRef) -> Result<ArrayRef> + Send + Sync>;

impl Debug for SingleGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleGroup")
            .field("kind", &self.kind)
            .finish()
    }
}

impl SingleGroup {
    /// One group of `groups`, which holds states of `kind`; evaluates to the state.
    pub(super) fn new(kind: StateKind, groups: Box<dyn GroupsAccumulator + Sync>) -> Self {
        Self {
            kind,
            groups,
            finish: Box::new(|state| Ok(Arc::clone(state))),
        }
    }

    /// Evaluates to `finish` of the state instead.
    pub(super) fn finishing(
        self,
        finish: impl Fn(&ArrayRef) -> Result<ArrayRef> + Send + Sync + 'static,
    ) -> Self {
        Self {
            finish: Box::new(finish),
            ..self
        }
    }

    /// The state so far, as a one-row column (the empty state before any row).
    fn merged(&mut self) -> Result<ArrayRef> {
        // Emitting resets a groups accumulator: put the state back for later calls.
        let column = self.groups.evaluate(EmitTo::All)?;
        if column.is_empty() {
            return state_column(&MetricState::empty(self.kind));
        }
        self.groups.merge_batch(&[Arc::clone(&column)], &[0], 1)?;
        Ok(column)
    }
}

impl Accumulator for SingleGroup {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let groups = vec![0; values[0].len()];
        self.groups.update_batch(values, &groups, None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let state = self.merged()?;
        ScalarValue::try_from_array(&(self.finish)(&state)?, 0)
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::try_from_array(&self.merged()?, 0)?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let groups = vec![0; states[0].len()];
        self.groups.merge_batch(states, &groups, 1)
    }
}

#[cfg(test)]
mod tests;
