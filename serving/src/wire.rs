//! The Postgres wire protocol (`[serving] pg_listen`), so that BI tools (Grafana, Metabase,
//! Superset, DBeaver, psql) connect to Tributary as to a Postgres database named `tributary`.
//!
//! `datafusion-postgres` speaks the protocol (pgwire: simple and extended query, parameters,
//! prepared statements, text and binary results), rewrites the Postgres forms BI tools send, and
//! serves `pg_catalog` over the engine's catalog. Every statement that reads data runs through the
//! same [`Engine`] as `POST /v1/sql`: the same tables (`<view>`, `<view>_states`), the same
//! read-only planning, query timeout and row cap. What is the wire's own:
//!
//! - **One snapshot per transaction.** Between `BEGIN` and `COMMIT` every statement reads the
//!   snapshot the transaction opened (so the panels a dashboard queries in one transaction agree);
//!   outside a transaction each statement takes a new one. `SHOW tributary.snapshot` names the
//!   transaction's snapshot, or outside one the last statement's: the id `POST /v1/sql` and
//!   `/v1/query` accept as `snapshot`. A transaction that outlives `[serving] snapshot_ttl` gets
//!   SQLSTATE 40001 and must start again.
//! - **Session settings only.** `SET` takes the Postgres session settings clients send
//!   (`statement_timeout`, `DateStyle`, `TimeZone`, `application_name`, `search_path`, ...); the
//!   engine's own settings are the server's configuration, and setting them is refused (55P02).
//!   `statement_timeout` can shorten the server's query timeout, never lengthen it.
//! - **A row cap that is never silent.** An answer past `[serving] max_rows` is an error
//!   (SQLSTATE 54000) rather than truncated rows a tool would show as the whole answer.
//! - **Errors by who is to blame**, as on HTTP: the caller's mistakes carry DataFusion's message
//!   (42xxx, 22000); a failed object store is 58030 and ours XX000, both without internals (the
//!   cause is logged).
//!
//! - **Tokens** (`[auth]` on): the user is a token's name and the password the token, which needs
//!   scope `read`; the token's row filters apply to every statement of the connection. The password
//!   is cleartext, so off loopback it is taken over TLS only (`[serving] tls_cert`).
//!
//! On shutdown the listener stops accepting, statements in flight finish (for at most the HTTP
//! server's drain time), and then the connections close.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::common::{DataFusionError, ParamValues};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{ContextModifier, Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager,
    ErrorHandler, PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::startup::ParameterStatus;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::{Sink, SinkExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tributary_schemas::blame::{Blame, chain, classify_datafusion_error};
use tributary_schemas::config::{Scope, TokenDef};

use crate::api::App;
use crate::audit::Entry;
use crate::query::{DATABASE, Engine, QueryError, Reads, Statement as Run};

/// The connection's state, kept in its pgwire metadata (strings, per connection).
mod key {
    /// The snapshot of the open transaction.
    pub const TRANSACTION: &str = "tributary.transaction";
    /// The snapshot of the last statement.
    pub const SNAPSHOT: &str = "tributary.snapshot";
    /// The result format of the portal being executed (extended protocol).
    pub const FORMAT: &str = "tributary.format";
    /// The session's time zone (`SET TIME ZONE`); datafusion-postgres's own key, which its
    /// `SHOW TIME ZONE` reads.
    pub const TIME_ZONE: &str = "timezone";
    /// `statement_timeout` in milliseconds; datafusion-postgres's key, which its `SET` writes.
    pub const STATEMENT_TIMEOUT: &str = "statement_timeout_ms";
    /// The database named at startup.
    pub const DATABASE: &str = "database";
    /// The user named at startup.
    pub const USER: &str = "user";
}

/// Settings a session may set that datafusion-postgres keeps per connection (`SetShowHook`).
const KEPT_SETTINGS: &[&str] = &[
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
];

/// Session settings clients send that change nothing here: acknowledged and ignored.
const IGNORED_SETTINGS: &[&str] = &[
    "client_encoding",
    "client_min_messages",
    "standard_conforming_strings",
    "idle_in_transaction_session_timeout",
    "lock_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "jit",
    "escape_string_warning",
    "row_security",
];

/// Serves the Postgres wire on `listener` until `stop` completes.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let handlers = Arc::new(Handlers::new(Arc::clone(&app), Arc::clone(&in_flight)));
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let (handlers, tls) = (Arc::clone(&handlers), tls.clone());
                    connections.spawn(async move {
                        let _ = socket.set_nodelay(true);
                        if let Err(error) = datafusion_postgres::pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!(%peer, %error, "a Postgres connection ended with an error");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "accepting a Postgres connection failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Statements in flight finish; idle connections are closed with the rest.
    let deadline = Instant::now() + drain;
    while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    connections.shutdown().await;
}

/// The pgwire handlers of every connection.
struct Handlers {
    service: Arc<Service>,
    startup: Arc<Startup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    fn new(app: Arc<App>, in_flight: Arc<AtomicUsize>) -> Self {
        let base = Arc::clone(app.engine.base());
        let app_for_startup = Arc::clone(&app);
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(SessionHook {
                app: Arc::clone(&app),
            }),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
            Arc::new(ExecuteHook { app, in_flight }),
        ];
        let connections = Arc::new(ConnectionManager::new());
        Self {
            service: Arc::new(Service {
                inner: DfSessionService::new_with_hooks(base, hooks),
            }),
            startup: Arc::new(Startup {
                app: Arc::clone(&app_for_startup),
                connections: Arc::clone(&connections),
                keys: RandomPidSecretKeyGenerator::default(),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.service)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.service)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(Errors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// The database must be `tributary`. With `[auth]` on, the user is a token's name and the password
/// the token (cleartext: `serve` allows it on a loopback address only), and the token needs scope
/// `read`.
struct Startup {
    app: Arc<App>,
    connections: Arc<ConnectionManager>,
    keys: RandomPidSecretKeyGenerator,
}

impl Startup {
    /// Authenticated (or no auth): the server's parameters and ready for queries.
    async fn finish<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.keys.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        // Registered for cancel requests (what pgwire's own handlers do).
        let (handle, guard) = self.connections.register(pid, secret);
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert::<ConnectionGuard>(guard);
        finish_authentication(client, &DefaultServerParameterProvider::default()).await
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if let Some(database) = client.metadata().get(key::DATABASE)
                    && database != DATABASE
                {
                    return Err(user_error(
                        "FATAL",
                        "3D000",
                        format!(
                            "database {database:?} does not exist: Tributary's database is {DATABASE:?}"
                        ),
                    ));
                }
                if !self.app.auth.enabled() {
                    return self.finish(client).await;
                }
                // A token is a cleartext password: only over TLS, or on this machine.
                if !client.is_secure() && !client.socket_addr().ip().is_loopback() {
                    return Err(user_error(
                        "FATAL",
                        "28000",
                        "this server takes tokens only over TLS: connect with sslmode=require"
                            .to_owned(),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let ask = Authentication::CleartextPassword;
                client
                    .send(PgWireBackendMessage::Authentication(ask))
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let token = password.into_password()?.password;
                let user = client
                    .metadata()
                    .get(key::USER)
                    .cloned()
                    .unwrap_or_default();
                let failed = || {
                    user_error(
                        "FATAL",
                        "28P01",
                        format!(
                            "password authentication failed for user {user:?}: the user is a token's name, the password the token"
                        ),
                    )
                };
                // Who the token is, first: a token of another name fails like a wrong one.
                if (self.app.auth.identify(&token)).is_none_or(|c| c.name != user) {
                    return Err(failed());
                }
                match self.app.auth.check(Some(&token), Scope::Read) {
                    Ok(_) => self.finish(client).await,
                    Err(denied) => Err(user_error(
                        "FATAL",
                        "42501",
                        denied.message("the Postgres wire"),
                    )),
                }
            }
            _ => Ok(()),
        }
    }
}

/// datafusion-postgres's session service, with the result format of the portal being executed
/// left where the [`ExecuteHook`] finds it (its hooks are not given the portal).
struct Service {
    inner: DfSessionService,
}

#[async_trait]
impl SimpleQueryHandler for Service {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.metadata_mut().remove(key::FORMAT);
        SimpleQueryHandler::do_query(&self.inner, client, query).await
    }
}

#[async_trait]
impl ExtendedQueryHandler for Service {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let format = encode_format(&portal.result_column_format);
        client.metadata_mut().insert(key::FORMAT.to_owned(), format);
        ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows).await
    }
}

fn encode_format(format: &Format) -> String {
    match format {
        Format::UnifiedText => "text".to_owned(),
        Format::UnifiedBinary => "binary".to_owned(),
        Format::Individual(codes) => (codes.iter().map(i16::to_string))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn decode_format(text: Option<&String>) -> Format {
    match text.map(String::as_str) {
        None | Some("text") => Format::UnifiedText,
        Some("binary") => Format::UnifiedBinary,
        Some(codes) => {
            Format::Individual(codes.split(',').filter_map(|c| c.parse().ok()).collect())
        }
    }
}

/// Snapshots per transaction, `SHOW tributary.snapshot`, and which `SET`s a session may run.
/// First of the hooks: it answers what is Tributary's and lets the rest through.
struct SessionHook {
    app: Arc<App>,
}

#[async_trait]
impl QueryHook for SessionHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match statement {
            Statement::StartTransaction { .. } => {
                // A nested BEGIN keeps the transaction's snapshot, as Postgres keeps the transaction.
                if !client.metadata().contains_key(key::TRANSACTION) {
                    let engine = &self.app.engine;
                    let snapshot = engine.snapshots().take(engine.live().views().len());
                    let id = snapshot.id().to_owned();
                    client
                        .metadata_mut()
                        .insert(key::TRANSACTION.to_owned(), id);
                }
                None
            }
            Statement::Commit { .. } | Statement::Rollback { .. } => {
                client.metadata_mut().remove(key::TRANSACTION);
                None
            }
            Statement::ShowVariable { variable } => {
                let name: Vec<String> = variable.iter().map(|v| v.value.to_lowercase()).collect();
                if name.join(".") != "tributary.snapshot" {
                    return None;
                }
                let metadata = client.metadata();
                let id = (metadata.get(key::TRANSACTION))
                    .or_else(|| metadata.get(key::SNAPSHOT))
                    .cloned()
                    .unwrap_or_default();
                Some(show("tributary.snapshot", &id))
            }
            Statement::Set(set) => set_statement(set, client).await,
            _ => None,
        }
    }

    /// `SET` and `SHOW` are planned by datafusion-postgres's own hook.
    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.handle_simple_query(statement, session_context, client)
            .await
    }
}

/// A `SET`: `None` lets datafusion-postgres keep one of its per-connection settings.
async fn set_statement(set: &Set, client: &mut dyn HookClient) -> Option<PgWireResult<Response>> {
    let done = || Some(Ok(Response::Execution(Tag::new("SET"))));
    match set {
        Set::SingleAssignment {
            scope,
            hivevar: false,
            variable,
            values,
        } if matches!(scope, None | Some(ContextModifier::Session)) => {
            let name = variable.to_string().to_lowercase();
            if KEPT_SETTINGS.contains(&name.as_str()) && scope.is_none() {
                return None;
            }
            if name == "timezone" || name == "time zone" {
                let value = values.first().map(|v| v.to_string()).unwrap_or_default();
                return Some(set_time_zone(client, &value).await);
            }
            if IGNORED_SETTINGS.contains(&name.as_str()) {
                return done();
            }
            Some(Err(refused_setting(&name)))
        }
        Set::SetTimeZone {
            local: false,
            value,
        } => Some(set_time_zone(client, &value.to_string()).await),
        // Tributary is read-only and its transactions read one snapshot: the characteristics
        // clients ask for (READ ONLY, an isolation level) hold or do not matter.
        Set::SetTransaction { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => done(),
        other => Some(Err(refused_setting(&other.to_string()))),
    }
}

fn refused_setting(name: &str) -> PgWireError {
    user_error(
        "ERROR",
        "55P02",
        format!(
            "{name} cannot be set: a session sets only Postgres session settings ({}, TimeZone); the engine's settings are the server's configuration",
            KEPT_SETTINGS.join(", ")
        ),
    )
}

/// `SET TIME ZONE`: for this connection only (the shared session is never changed).
async fn set_time_zone(client: &mut dyn HookClient, value: &str) -> PgWireResult<Response> {
    let zone = value.trim_matches(|c| c == '\'' || c == '"');
    let zone = match zone.to_ascii_lowercase().as_str() {
        "local" | "default" => "UTC",
        _ => zone,
    };
    if zone.parse::<arrow::array::timezone::Tz>().is_err() {
        return Err(user_error(
            "ERROR",
            "22023",
            format!(
                "invalid time zone {zone:?}: use a name such as 'UTC' or 'Europe/Berlin', or an offset such as '+02:00'"
            ),
        ));
    }
    (client.metadata_mut()).insert(key::TIME_ZONE.to_owned(), zone.to_owned());
    let status = ParameterStatus::new("TimeZone".to_owned(), zone.to_owned());
    client
        .send_message(PgWireBackendMessage::ParameterStatus(status))
        .await?;
    Ok(Response::Execution(Tag::new("SET")))
}

fn show(name: &str, value: &str) -> PgWireResult<Response> {
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new(name, arrow::datatypes::DataType::Utf8, false),
    ]));
    let column = Arc::new(arrow::array::StringArray::from(vec![value]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column])
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    respond(&schema, vec![batch], &Format::UnifiedText, &HashMap::new())
}

/// Every statement the other hooks let through: planned and run by the [`Engine`], as on
/// `POST /v1/sql`. Last of the hooks.
struct ExecuteHook {
    app: Arc<App>,
    in_flight: Arc<AtomicUsize>,
}

/// Counts a statement in flight while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the [`ExecuteHook`] runs: a statement of the simple protocol, or the plan of a portal
/// with its parameters bound.
enum Query {
    Statement(Box<Statement>),
    Bound(Result<LogicalPlan, QueryError>),
}

impl ExecuteHook {
    fn engine(&self) -> &Engine {
        &self.app.engine
    }

    /// The statement's session: its snapshot (the transaction's, or a new one) and time zone.
    fn context(
        &self,
        client: &mut dyn HookClient,
        caller: Option<&TokenDef>,
    ) -> PgWireResult<(SessionContext, Arc<Reads>)> {
        let engine = self.engine();
        let transaction = client.metadata().get(key::TRANSACTION).cloned();
        let snapshot = (engine.snapshots())
            .open(transaction.as_deref(), engine.live().views().len())
            .map_err(|e| wire_error(&QueryError::SnapshotExpired(e)))?;
        (client.metadata_mut()).insert(key::SNAPSHOT.to_owned(), snapshot.id().to_owned());
        let time_zone = client.metadata().get(key::TIME_ZONE).cloned();
        Ok(engine.statement_context(snapshot, time_zone.as_deref(), caller))
    }

    /// The server's query timeout, or the session's `statement_timeout` if shorter.
    fn timeout(&self, client: &dyn HookClient) -> Duration {
        let session = (client.metadata().get(key::STATEMENT_TIMEOUT))
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        let server = self.engine().timeout();
        session.map_or(server, |session| session.min(server))
    }

    /// Runs a statement (`sql` is its text, for the audit log) and records it.
    async fn run(
        &self,
        client: &mut dyn HookClient,
        query: Query,
        sql: String,
    ) -> PgWireResult<Response> {
        let _in_flight = InFlight::enter(&self.in_flight);
        let started = Instant::now();
        let ran = self.answer(client, query, started).await;
        let outcome = match &ran {
            Ok((rows, views, _)) => Ok((*rows, views.clone())),
            Err(error) => Err(sql_state(error)),
        };
        self.audit(&*client, sql, outcome, started);
        ran.map(|(_, _, response)| response)
    }

    /// Records a statement in the audit log (when it is on): rows and views read, or the SQLSTATE.
    fn audit(
        &self,
        client: &(dyn ClientInfo + Send + Sync),
        sql: String,
        outcome: Result<(usize, Vec<String>), String>,
        started: Instant,
    ) {
        if !self.app.audit.enabled() {
            return;
        }
        let user = client.metadata().get(key::USER).cloned();
        let (rows, views, status) = match outcome {
            Ok((rows, views)) => (Some(rows), views, "00000".to_owned()),
            Err(code) => (None, Vec::new(), code),
        };
        self.app.audit.record(&Entry {
            token: user.filter(|_| self.app.auth.enabled()),
            client: Some(client.socket_addr().to_string()),
            route: "postgres".to_owned(),
            views,
            query: sql.into(),
            rows,
            duration: started.elapsed(),
            status: status.into(),
        });
    }

    /// The statement's answer: its rows, the views it read and the response.
    async fn answer(
        &self,
        client: &mut dyn HookClient,
        query: Query,
        started: Instant,
    ) -> PgWireResult<(usize, Vec<String>, Response)> {
        let user = client
            .metadata()
            .get(key::USER)
            .cloned()
            .unwrap_or_default();
        // With auth on, the connection authenticated as its user: that token's rate and row
        // filters apply.
        let caller = self.app.auth.named(&user);
        if let Some(caller) = &caller
            && let Err(after) = self.app.auth.take(caller)
        {
            return Err(user_error(
                "ERROR",
                "53400",
                format!(
                    "token {user:?} made more than its max_requests_per_s; try again in {after} s"
                ),
            ));
        }
        let (ctx, reads) = self.context(client, caller.as_deref())?;
        let timeout = self.timeout(client);
        let engine = self.engine();
        let answer = async {
            let statement = match query {
                Query::Statement(statement) => Run::Sql(statement),
                Query::Bound(plan) => Run::Planned(plan?),
            };
            engine.execute(&ctx, statement, timeout).await
        };
        let (schema, batches, truncated) = answer.await.map_err(|e| wire_error(&e))?;
        if truncated {
            return Err(user_error(
                "ERROR",
                "54000",
                format!(
                    "the answer has more than {} rows ([serving] max_rows): add a LIMIT, a coarser time bucket or a filter",
                    engine.max_rows()
                ),
            ));
        }
        self.app.metrics.query("postgres", started.elapsed());
        let format = decode_format(client.metadata().get(key::FORMAT));
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let views = reads.take_merged().into_iter().map(|m| m.view).collect();
        Ok((
            rows,
            views,
            respond(&schema, batches, &format, client.metadata())?,
        ))
    }
}

#[async_trait]
impl QueryHook for ExecuteHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let query = Query::Statement(Box::new(statement.clone()));
        Some(self.run(client, query, statement.to_string()).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let started = Instant::now();
        let engine = self.engine();
        let planned = engine.plan(engine.base(), statement.clone()).await;
        // A statement refused at parse never executes: its line is written here.
        Some(planned.map_err(|e| {
            let error = wire_error(&e);
            self.audit(
                client,
                statement.to_string(),
                Err(sql_state(&error)),
                started,
            );
            error
        }))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        logical_plan: &LogicalPlan,
        params: &ParamValues,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let bound = (logical_plan.clone())
            .replace_params_with_values(params)
            .map_err(|e| QueryError::invalid("bad_sql", e.to_string()));
        Some(
            self.run(client, Query::Bound(bound), statement.to_string())
                .await,
        )
    }
}

/// Rows in the formats the client asked for.
fn respond(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    format: &Format,
    metadata: &HashMap<String, String>,
) -> PgWireResult<Response> {
    let options = Arc::new(FormatOptions::from_client_metadata(metadata));
    let fields = Arc::new(arrow_schema_to_pg_fields(schema, format, Some(options))?);
    let encoded = Arc::clone(&fields);
    let rows = (batches.into_iter())
        .flat_map(move |batch| encode_recordbatch(Arc::clone(&encoded), batch));
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(rows.collect::<Vec<_>>()),
    )))
}

/// An error's SQLSTATE, for the audit log (the error itself goes to the client).
fn sql_state(error: &PgWireError) -> String {
    match error {
        PgWireError::UserError(info) => info.code.clone(),
        _ => "XX000".to_owned(),
    }
}

fn user_error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message,
    )))
}

/// A query's error as the wire says it: SQLSTATE by who is to blame, nothing internal shown.
fn wire_error(error: &QueryError) -> PgWireError {
    let code = match error {
        QueryError::Invalid {
            code: "read_only", ..
        } => "25006",
        QueryError::Invalid {
            code: "sql_failed", ..
        } => "22000",
        QueryError::Invalid {
            code: "unknown_view",
            ..
        } => "42P01",
        QueryError::Invalid { .. } => "42000",
        QueryError::Building(_) => "55000",
        QueryError::Timeout(_) => "57014",
        QueryError::SnapshotExpired(_) => "40001",
        QueryError::Busy { .. } => "53000",
        QueryError::TooBig { .. } => "53200",
        QueryError::Unavailable(cause) => {
            tracing::warn!("a Postgres-wire query: {}", chain(cause));
            "58030"
        }
        QueryError::Internal(cause) => {
            tracing::error!("a Postgres-wire query: {}", chain(cause.as_ref()));
            "XX000"
        }
    };
    let message = match error {
        QueryError::Internal(_) => "the query failed on the server; the cause is in its log".to_owned(),
        QueryError::Unavailable(_) => "the lake's object store failed during the query; try again (the cause is in the server's log)".to_owned(),
        other => other.to_string(),
    };
    user_error("ERROR", code, message)
}

/// Errors raised inside datafusion-postgres (parsing, planning what its hooks answer, binding
/// parameters) are told by who is to blame too, instead of all as internal errors.
struct Errors;

impl ErrorHandler for Errors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        let PgWireError::ApiError(cause) = error else {
            return;
        };
        let replacement = if let Some(error) = cause.downcast_ref::<DataFusionError>() {
            match classify_datafusion_error(error) {
                Blame::Caller => user_error("ERROR", "42000", error.to_string()),
                Blame::Outside => wire_error(&QueryError::Unavailable(DataFusionError::External(
                    error.to_string().into(),
                ))),
                Blame::Us => wire_error(&QueryError::Internal(error.to_string().into())),
            }
        } else if cause.is::<datafusion::sql::sqlparser::parser::ParserError>() {
            user_error("ERROR", "42601", cause.to_string())
        } else {
            wire_error(&QueryError::Internal(cause.to_string().into()))
        };
        *error = replacement;
    }
}
