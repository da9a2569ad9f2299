//! The views as SQL tables, for `POST /v1/sql` and the Postgres wire alike: one catalog lists them
//! all (so `information_schema` and `pg_catalog` describe them), and each statement reads them
//! through the [`Reads`] its session carries, pinning every view it touches once, from its
//! snapshot.
//!
//! Per view there are two tables. `<view>` holds the finalized metrics at the stored granularity.
//! `<view>_states` holds the view's *state rows*, time, dimensions and one state per metric, as
//! the batch version and the speed layer keep them: a (time, dimensions) key may appear once per
//! layer and speed partition that counted events for it, as in ClickHouse's AggregatingMergeTree
//! before a merge. `merge(metric)` over any grouping of them is exact, and skips a merge of its
//! own at the stored grain that a roll-up would repeat.
//!
//! A caller's row filter (`[auth.tokens.row_filter]`) is applied in the scan, to the state rows
//! themselves, before anything the statement says: no `OR`, subquery, join or `UNION` gets past it,
//! because every path to a view's rows is a scan of one of its tables.
//!
//! Filters on time and dimensions reach the rows before anything is merged (DataFusion also keeps
//! them above the scan), so a dashboard's `WHERE country = 'DE' AND time >= ...` merges only what
//! it keeps.

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{MemTable, TableType};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, ident};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use tributary_schemas::config::{TIME_COLUMN, ViewDef};

use super::plan::{finalize, group, names, states, states_table, view_metrics};
use super::request::Bucket;
use super::{Merged, ViewBuilding};
use crate::live::{Live, Pinned};
use crate::snapshots::Snapshot;
use tributary_schemas::duration::Granularity;

/// What one statement reads: the snapshot it pins views from, the caller's row filters, and the
/// views it pinned (for the answer's `meta`). A statement's session carries it as a config
/// extension.
#[derive(Debug)]
pub struct Reads {
    snapshot: Arc<Snapshot>,
    live: Arc<Live>,
    /// Per view (by index): the caller's row filter, applied to the state rows before anything.
    row_filters: Vec<Option<Expr>>,
    merged: Mutex<Vec<Merged>>,
}

impl Reads {
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        live: Arc<Live>,
        row_filters: Vec<Option<Expr>>,
    ) -> Self {
        Self {
            snapshot,
            live,
            row_filters,
            merged: Mutex::default(),
        }
    }

    /// The session a scan of `view` runs in, and its statement's reads.
    pub(crate) fn of<'a>(
        session: &'a dyn Session,
        view: &str,
    ) -> Result<(&'a SessionState, Arc<Reads>)> {
        let state = (session.as_any().downcast_ref::<SessionState>()).ok_or_else(|| {
            DataFusionError::Internal(format!("view {view:?} is scanned outside a SessionState"))
        })?;
        let reads = state.config().get_extension::<Reads>().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "view {view:?} is scanned by a statement without its reads"
            ))
        })?;
        Ok((state, reads))
    }

    /// The caller's filter on the `index`th view's rows.
    pub(crate) fn row_filter(&self, index: usize) -> Option<&Expr> {
        self.row_filters.get(index)?.as_ref()
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// `index`'s pin in this statement's snapshot.
    pub(crate) fn pin(&self, index: usize) -> Result<Pinned> {
        let pinned = (self.snapshot)
            .pin(index, || self.live.pin(index))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let name = &self.live.views()[index].name;
        let mut merged = self.merged.lock().unwrap_or_else(|e| e.into_inner());
        if !merged.iter().any(|m| &m.view == name) {
            merged.push(Merged {
                view: name.clone(),
                pinned: pinned.clone(),
            });
        }
        Ok(pinned)
    }

    /// The views the statement read, in the order it first read them.
    pub fn take_merged(&self) -> Vec<Merged> {
        std::mem::take(&mut *self.merged.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Which of a view's two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `<view>`: finalized at the stored granularity.
    Finalized,
    /// `<view>_states`: state rows, for `merge()`.
    States,
}

impl Kind {
    /// The table's rows over a view's state rows; `bucket` merges them into coarser buckets
    /// (finalized rows only: state rows stay at the grain they are stored at).
    fn rows(
        self,
        view: &ViewDef,
        states: DataFrame,
        bucket: Option<Granularity>,
    ) -> Result<DataFrame> {
        match self {
            Kind::Finalized => {
                let merged = group(states, view, bucket.map(Bucket::Every), &names(view))?;
                finalize(view, view_metrics(view), merged)
            }
            Kind::States => states_table(view, states),
        }
    }
}

/// One of a view's tables.
#[derive(Debug)]
pub(crate) struct ViewTable {
    index: usize,
    view: ViewDef,
    kind: Kind,
    schema: SchemaRef,
}

impl ViewTable {
    /// The table of `kind` of the `index`th view; `ctx` plans it once over no rows for its schema.
    pub(crate) fn new(
        ctx: &SessionContext,
        index: usize,
        view: &ViewDef,
        kind: Kind,
    ) -> Result<Self> {
        let none = MemTable::try_new(view.state_schema(), vec![vec![]])?;
        let rows = kind.rows(view, ctx.read_table(Arc::new(none))?, None)?;
        Ok(Self {
            index,
            view: view.clone(),
            kind,
            schema: Arc::new(rows.schema().as_arrow().clone()),
        })
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn view(&self) -> &ViewDef {
        &self.view
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether `filter` reads only columns every state row has as they are: time and dimensions.
    fn on_keys(&self, filter: &Expr) -> bool {
        !filter.is_volatile()
            && filter.column_refs().iter().all(|column| {
                column.name == TIME_COLUMN
                    || self.view.dimensions.iter().any(|d| d.name == column.name)
            })
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| match self.on_keys(filter) {
                true => TableProviderFilterPushDown::Inexact,
                false => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (state, reads) = Reads::of(session, &self.view.name)?;
        let pinned = reads.pin(self.index)?;
        let fields = self.schema.fields();
        let columns: Vec<&str> = match projection {
            Some(projection) => projection
                .iter()
                .map(|&i| fields[i].name().as_str())
                .collect(),
            None => fields.iter().map(|f| f.name().as_str()).collect(),
        };
        // While the view builds, the old definition answers what it has as configured.
        let filtered = (filters.iter().chain(reads.row_filter(self.index)))
            .flat_map(|f| f.column_refs())
            .map(|c| c.name.as_str());
        let rolls_up = self.kind == Kind::Finalized;
        ViewBuilding::check(
            &self.view,
            &pinned,
            columns.iter().copied().chain(filtered),
            rolls_up,
        )
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let view = &pinned.definition;
        let ctx = SessionContext::new_with_state(state.clone());
        let mut rows = states(&ctx, view, &pinned).await?;
        // The caller's row filter first: nothing the statement says comes before it.
        if let Some(allowed) = reads.row_filter(self.index) {
            rows = rows.filter(allowed.clone())?;
        }
        if let Some(predicate) = filters.iter().cloned().reduce(Expr::and) {
            rows = rows.filter(predicate)?;
        }
        // An old definition of finer buckets: merged into the configured ones.
        let bucket = (view.granularity != self.view.granularity).then_some(self.view.granularity);
        let mut table = self.kind.rows(view, rows, bucket)?;
        // By name: under an old definition the columns are the shared ones, in its order.
        table = table.select(columns.into_iter().map(ident).collect::<Vec<_>>())?;
        table.create_physical_plan().await
    }
}
