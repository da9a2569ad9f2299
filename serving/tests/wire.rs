//! The Postgres wire, with real clients: the `tokio-postgres` driver (extended protocol, binary
//! results, parameters; simple protocol, text) and `psql`, against the listener serving the same
//! app as the HTTP API (in process, over a real lake directory and a speed layer of real
//! aggregated events). That the wire's answers equal a ground truth through the real binary,
//! across batch runs and late events, is `tests/serving_e2e.rs`'s.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, NaiveDateTime, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tower::ServiceExt;
use tributary_serving::api::{App, DRAIN, router};
use tributary_serving::wire;
use tributary_testkit::pg::{JsonRow, connect, json_rows, psql, simple_rows};

use common::Setup;

struct Wire {
    app: Arc<App>,
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
    _lake: tempfile::TempDir,
}

async fn start(setup: Setup) -> Wire {
    let (app, lake) = common::app(setup);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(wire::serve(
        Arc::clone(&app),
        listener,
        None,
        async move {
            let _ = stopped.await;
        },
        DRAIN,
    ));
    Wire {
        app,
        address,
        stop: Some(stop),
        served,
        _lake: lake,
    }
}

impl Wire {
    async fn client(&self) -> Client {
        connect(self.address, "grafana", "tributary").await.unwrap()
    }

    /// `POST /v1/sql` of the same app.
    async fn http_sql(&self, body: Value) -> Value {
        let request = Request::post("/v1/sql")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router(Arc::clone(&self.app))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let reply: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, StatusCode::OK, "{body}: {reply}");
        reply
    }
}

fn sql_state(error: &tokio_postgres::Error) -> (String, String) {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {error}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn assert_same_rows(got: &[JsonRow], want: &[JsonRow], case: &str) {
    assert_eq!(got.len(), want.len(), "{case}: {got:?} vs {want:?}");
    assert!(!want.is_empty(), "{case}: no rows");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            g.keys().collect::<Vec<_>>(),
            w.keys().collect::<Vec<_>>(),
            "{case}"
        );
        for (name, value) in w {
            assert!(
                same(&g[name], value),
                "{case}: {name}: {} vs {value}",
                g[name]
            );
        }
    }
}

fn http_rows(reply: &Value) -> Vec<JsonRow> {
    (reply["rows"].as_array().unwrap().iter())
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

/// A text cell of the simple protocol as the JSON value of the same column in binary.
fn text_as(binary: &Value, text: &Value) -> Value {
    let Some(text) = text.as_str() else {
        return Value::Null;
    };
    match binary {
        Value::Number(_) => json!(text.parse::<f64>().unwrap()),
        Value::String(b) if DateTime::parse_from_rfc3339(b).is_ok() => {
            // timestamptz carries its offset; a timestamp (`to_timestamp`'s) is UTC.
            let millis = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                .map(|t| t.timestamp_millis())
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                        .map(|t| t.and_utc().timestamp_millis())
                })
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            tributary_serving::json::timestamp(millis)
        }
        _ => json!(text),
    }
}

#[tokio::test]
async fn bi_tools_connect_list_the_views_and_describe_them() {
    let wire = start(Setup::default()).await;
    let address = wire.address;
    let listed = tokio::task::spawn_blocking(move || {
        let tables = psql(address, "tributary", &["-c", "\\dt"]).unwrap();
        let described = psql(address, "tributary", &["-c", "\\d pageviews"]).unwrap();
        let states = psql(address, "tributary", &["-c", "\\d pageviews_states"]).unwrap();
        let wrong = psql(address, "postgres", &["-c", "SELECT 1"]).unwrap_err();
        (tables, described, states, wrong)
    })
    .await
    .unwrap();
    let (tables, described, states, wrong) = listed;
    for table in ["pageviews", "pageviews_states", "traffic", "traffic_states"] {
        assert!(
            tables.lines().any(|l| l.split('|').nth(1) == Some(table)),
            "\\dt lists {table}:\n{tables}"
        );
    }
    for column in ["time", "page", "country", "views", "users", "latency_p95"] {
        assert!(
            described
                .lines()
                .any(|l| l.starts_with(&format!("{column}|"))),
            "\\d pageviews has {column}:\n{described}"
        );
        assert!(
            states.lines().any(|l| l.starts_with(&format!("{column}|"))),
            "\\d pageviews_states has {column}:\n{states}"
        );
    }
    assert!(
        wrong.contains("database \"postgres\" does not exist"),
        "{wrong}"
    );

    // What Grafana, Metabase and DBeaver send when they connect and list tables and columns
    // (datafusion-postgres's own lists of those tools' queries).
    let client = wire.client().await;
    for (tool, sql) in CATALOG_QUERIES {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{tool}: {sql}\n{e:?}"));
    }
    let tables = simple_rows(
        &client,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .await
    .unwrap();
    let names: Vec<&str> = tables
        .iter()
        .map(|r| r["table_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pageviews", "pageviews_states", "traffic", "traffic_states"]
    );
    let columns = simple_rows(
        &client,
        "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" FROM information_schema.columns \
         WHERE table_name = 'pageviews' ORDER BY ordinal_position",
    )
    .await
    .unwrap();
    assert_eq!(columns[0]["column"], "time", "{columns:?}");
    assert!(
        columns[0]["type"]
            .as_str()
            .unwrap()
            .starts_with("Timestamp"),
        "{columns:?}"
    );
    let database = simple_rows(&client, "SELECT current_database() AS db")
        .await
        .unwrap();
    assert_eq!(database[0]["db"], "tributary");
}

#[tokio::test]
async fn the_wire_answers_as_the_sql_api_in_both_formats_and_with_parameters() {
    let wire = start(Setup::default()).await;
    let client = wire.client().await;
    let statements = [
        // The roll-ups a dashboard asks, at 1h, 1d and all, with and without a filter.
        "SELECT date_trunc('hour', time) AS hour, merge(views) AS views, merge(users) AS users, \
         merge(latency_p95) AS p95 FROM pageviews_states WHERE country = 'NL' GROUP BY 1 ORDER BY 1",
        "SELECT date_trunc('day', time) AS day, country, merge(views) AS views, merge(users) AS users, \
         merge(latency_avg) AS avg FROM pageviews_states GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT merge(views) AS views, merge(users) AS users, merge(latency_p95) AS p95, \
         merge(latency_p95, 0.5) AS p50, merge(latency_min) AS low FROM pageviews_states",
        // Grafana's macros: $__timeGroupAlias(time, 5m) and $__timeFilter(time).
        "SELECT floor(extract(epoch from time)/300)*300 AS \"time\", merge(views) AS views \
         FROM pageviews_states WHERE time BETWEEN '2000-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' \
         GROUP BY 1 ORDER BY 1",
        "SELECT to_timestamp(floor(extract(epoch from time)/3600)*3600) AS hour, merge(views) AS views \
         FROM pageviews_states GROUP BY 1 ORDER BY 1",
        // The finalized view and SQL over it.
        "SELECT * FROM pageviews ORDER BY time, page, country LIMIT 200",
        "SELECT device, sum(events) AS events FROM traffic GROUP BY device ORDER BY device",
        "SELECT count(*) AS n FROM pageviews_states",
    ];
    for sql in statements {
        let binary = json_rows(
            &client
                .query(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}")),
        );
        let by_http = http_rows(&wire.http_sql(json!({"sql": sql})).await);
        assert_same_rows(&binary, &by_http, sql);
        let text = simple_rows(&client, sql).await.unwrap();
        let text: Vec<JsonRow> = (text.iter().zip(&binary))
            .map(|(t, b)| {
                t.iter()
                    .map(|(k, v)| (k.clone(), text_as(&b[k], v)))
                    .collect()
            })
            .collect();
        assert_same_rows(&text, &binary, &format!("text vs binary: {sql}"));
    }

    // The roll-up shapes merge each part per group first (once per shape for immutable parts);
    // others run as written.
    let plan = |sql: String| {
        let client = &client;
        async move {
            let rows = simple_rows(client, &format!("EXPLAIN {sql}"))
                .await
                .unwrap();
            (rows.iter())
                .map(|r| r["plan"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    for sql in &statements[..5] {
        let explained = plan(sql.to_string()).await;
        assert!(
            explained.contains("TableScan: rollup"),
            "{sql}:\n{explained}"
        );
    }
    let explained = plan(statements[7].to_owned()).await;
    assert!(!explained.contains("rollup"), "{explained}");

    // Parameters through the extended protocol give the rows of the same literals.
    let from: DateTime<Utc> = "2000-01-01T00:00:00Z".parse().unwrap();
    let literal_sql = "SELECT date_trunc('hour', time) AS hour, merge(views) AS views, merge(users) AS users \
                   FROM pageviews_states WHERE country = 'DE' AND time >= '2000-01-01T00:00:00Z' \
                   GROUP BY 1 ORDER BY 1";
    let with_parameters = "SELECT date_trunc('hour', time) AS hour, merge(views) AS views, merge(users) AS users \
                           FROM pageviews_states WHERE country = $1 AND time >= $2 GROUP BY 1 ORDER BY 1";
    let prepared = client.prepare(with_parameters).await.unwrap();
    let bound = json_rows(&client.query(&prepared, &[&"DE", &from]).await.unwrap());
    let literal = json_rows(&client.query(literal_sql, &[]).await.unwrap());
    assert_same_rows(&bound, &literal, "parameters vs literals");
    // The prepared statement runs again with other values.
    let late: DateTime<Utc> = "2100-01-01T00:00:00Z".parse().unwrap();
    let none = client.query(&prepared, &[&"NL", &late]).await.unwrap();
    assert!(none.is_empty(), "nothing after 2100");
    let nl = json_rows(&client.query(&prepared, &[&"NL", &from]).await.unwrap());
    let literal_nl = json_rows(
        &client
            .query(&literal_sql.replace("'DE'", "'NL'"), &[])
            .await
            .unwrap(),
    );
    assert_same_rows(&nl, &literal_nl, "parameters vs literals, again");
}

#[tokio::test]
async fn statements_that_change_anything_are_refused_and_the_connection_stays_usable() {
    let wire = start(Setup::default()).await;
    let client = wire.client().await;
    let refused = [
        ("CREATE TABLE copy AS SELECT * FROM pageviews", "25006"),
        ("INSERT INTO pageviews_states (page) VALUES ('x')", "25006"),
        ("DELETE FROM pageviews", "25006"),
        ("DROP TABLE pageviews", "25006"),
        ("CREATE VIEW v AS SELECT 1", "25006"),
        ("SET datafusion.execution.target_partitions = 1", "55P02"),
        ("SET work_mem = '1GB'", "55P02"),
    ];
    for (sql, code) in refused {
        let error = client.simple_query(sql).await.unwrap_err();
        let (got, message) = sql_state(&error);
        assert_eq!(got, code, "{sql}: {message}");
        let error = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(sql_state(&error).0, code, "extended: {sql}");
        let one = client
            .query_one("SELECT 1::bigint AS one", &[])
            .await
            .unwrap();
        assert_eq!(one.get::<_, i64>(0), 1, "usable after {sql}");
    }
    let error = client
        .simple_query("SELECT * FROM nowhere")
        .await
        .unwrap_err();
    let (code, message) = sql_state(&error);
    assert!(code.starts_with("42"), "{code} {message}");
    assert!(message.contains("nowhere"), "{message}");
    let error = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(
        sql_state(&error).0,
        SqlState::SYNTAX_ERROR.code(),
        "{error:?}"
    );

    // Session settings are the session's: another connection keeps its own.
    for sql in [
        "SET statement_timeout = '5s'",
        "SET application_name = 'a dashboard'",
        "SET extra_float_digits = 3",
        "SET client_encoding = 'UTF8'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET TIME ZONE 'Europe/Berlin'",
    ] {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let zone = simple_rows(&client, "SHOW TIME ZONE").await.unwrap();
    assert_eq!(zone[0].values().next().unwrap(), "Europe/Berlin");
    let other = wire.client().await;
    let zone = simple_rows(&other, "SHOW TIME ZONE").await.unwrap();
    assert_eq!(zone[0].values().next().unwrap(), "UTC");
    let error = client
        .simple_query("SET TIME ZONE 'Mars/Olympus'")
        .await
        .unwrap_err();
    assert_eq!(sql_state(&error).0, "22023");
}

#[tokio::test]
async fn a_transaction_reads_one_snapshot_that_http_can_name() {
    let wire = start(Setup::default()).await;
    let client = wire.client().await;
    let snapshot = async |client: &Client| {
        let rows = simple_rows(client, "SHOW tributary.snapshot")
            .await
            .unwrap();
        rows[0]["tributary.snapshot"].as_str().unwrap().to_owned()
    };
    let totals = "SELECT merge(views) AS views, merge(users) AS users FROM pageviews_states";
    client.simple_query(totals).await.unwrap();
    let first = snapshot(&client).await;
    client.simple_query(totals).await.unwrap();
    let second = snapshot(&client).await;
    assert!(!first.is_empty());
    assert_ne!(
        first, second,
        "outside a transaction, a snapshot per statement"
    );

    client.simple_query("BEGIN").await.unwrap();
    let opened = snapshot(&client).await;
    let in_transaction = simple_rows(&client, totals).await.unwrap();
    let again = simple_rows(
        &client,
        "SELECT merge(views) AS views FROM pageviews_states WHERE page IS NOT NULL",
    )
    .await
    .unwrap();
    assert_eq!(
        snapshot(&client).await,
        opened,
        "one snapshot per transaction"
    );
    assert_eq!(again[0]["views"], in_transaction[0]["views"]);
    // The HTTP API answers from the transaction's snapshot when given its id.
    let by_http = wire
        .http_sql(json!({"sql": totals, "snapshot": opened}))
        .await;
    assert_eq!(by_http["meta"]["snapshot"], json!(opened));
    assert_eq!(
        by_http["rows"][0]["views"].to_string(),
        in_transaction[0]["views"].as_str().unwrap()
    );
    client.simple_query("COMMIT").await.unwrap();
    client.simple_query(totals).await.unwrap();
    assert_ne!(
        snapshot(&client).await,
        opened,
        "a new snapshot after COMMIT"
    );
}

#[tokio::test]
async fn the_row_cap_and_the_timeouts_hold_on_the_wire() {
    let wire = start(Setup {
        max_rows: 3,
        ..Setup::default()
    })
    .await;
    let client = wire.client().await;
    let error = client
        .query("SELECT * FROM pageviews", &[])
        .await
        .unwrap_err();
    let (code, message) = sql_state(&error);
    assert_eq!(code, "54000", "{message}");
    assert!(message.contains("more than 3 rows"), "{message}");
    let rows = client
        .query("SELECT * FROM pageviews LIMIT 3", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);

    client
        .simple_query("SET statement_timeout = '1ms'")
        .await
        .unwrap();
    // Minutes of work, cancelled by the session's timeout long before the server's (30 s).
    let heavy = "SELECT sum(value) FROM generate_series(1, 100000000000)";
    let started = std::time::Instant::now();
    let error = client.simple_query(heavy).await.unwrap_err();
    assert_eq!(
        sql_state(&error).0,
        SqlState::QUERY_CANCELED.code(),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    client
        .simple_query("SET statement_timeout = 0")
        .await
        .unwrap();
    let one = client.query_one("SELECT 1::bigint", &[]).await.unwrap();
    assert_eq!(one.get::<_, i64>(0), 1);
    // The server's query timeout holds however long a session asks for.
    let short = start(Setup {
        timeout: Duration::from_millis(1),
        ..Setup::default()
    })
    .await;
    let client = short.client().await;
    client
        .simple_query("SET statement_timeout = '10min'")
        .await
        .unwrap();
    let error = client.simple_query(heavy).await.unwrap_err();
    assert_eq!(
        sql_state(&error).0,
        SqlState::QUERY_CANCELED.code(),
        "{error:?}"
    );
}

#[tokio::test]
async fn on_shutdown_the_listener_stops_and_connections_close() {
    let mut wire = start(Setup::default()).await;
    let client = wire.client().await;
    client.simple_query("SELECT 1").await.unwrap();
    wire.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut wire.served)
        .await
        .expect("the listener stops at once when nothing runs")
        .unwrap();
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the connection is closed"
    );
    assert!(connect(wire.address, "grafana", "tributary").await.is_err());
}

/// Catalog queries BI tools send at connect and when listing tables and columns, from
/// datafusion-postgres 0.19's tests of those tools (tests/grafana.rs, metabase.rs, dbeaver.rs),
/// with Grafana's table name set to one of ours.
const CATALOG_QUERIES: &[(&str, &str)] = &[
    (
        "grafana",
        r#"SELECT
        CASE WHEN
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
        END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog',
                                 '_timescaledb_cache', '_timescaledb_catalog')
        ORDER BY 1"#,
    ),
    (
        "grafana",
        r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('public.pageviews_states'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('public.pageviews_states'))[1]
              AND quote_ident(table_name) = (parse_ident('public.pageviews_states'))[2]
            ELSE quote_ident(table_name) = 'public.pageviews_states'
          END"#,
    ),
    ("metabase", "SET extra_float_digits = 2"),
    (
        "metabase",
        "SET application_name = 'Metabase v0.55.1 [f8f63fdf-d8f8-4573-86ea-4fe4a9548041]'",
    ),
    ("metabase", "SHOW TRANSACTION ISOLATION LEVEL"),
    (
        "metabase",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    ),
    (
        "metabase",
        r#"SELECT nspname AS "TABLE_SCHEM", current_database() AS "TABLE_CATALOG" FROM pg_catalog.pg_namespace  WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_'  OR nspname = (pg_catalog.current_schemas(true))[1]) AND (nspname !~ '^pg_toast_temp_'  OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', 'pg_toast_temp_'))  ORDER BY "TABLE_SCHEM""#,
    ),
    (
        "metabase",
        r#"SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS "type", "d"."description" AS "description", "stat"."n_live_tup" AS "estimated_row_count" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = '0') AND ("d"."classoid" = 'pg_class'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" ON ("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") WHERE ("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND ("n"."nspname" IN ('public')) ORDER BY "type" ASC, "schema" ASC, "name" ASC"#,
    ),
    ("metabase", "show timezone"),
    ("dbeaver", "SET extra_float_digits = 3"),
    (
        "dbeaver",
        "SET application_name = 'DBeaver 25.1.5 - Main <postgres>'",
    ),
    ("dbeaver", "SELECT current_schema(),session_user"),
    (
        "dbeaver",
        "SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 AND d.classoid='pg_namespace'::regclass ORDER BY nspname",
    ),
    ("dbeaver", "SHOW search_path"),
    (
        "dbeaver",
        "SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname='tributary'",
    ),
    (
        "dbeaver",
        "SELECT * FROM pg_catalog.pg_settings where name='standard_conforming_strings'",
    ),
    ("dbeaver", "SELECT version()"),
    (
        "dbeaver",
        "SELECT c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as partition_expr,  pg_catalog.pg_get_partkeydef(c.oid) as partition_key FROM pg_catalog.pg_class c LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass WHERE c.relnamespace=11 AND c.relkind not in ('i','I','c')",
    ),
];
