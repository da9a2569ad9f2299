//! Real Postgres clients for the wire's tests: the `tokio-postgres` driver (extended protocol with
//! binary results, or the simple protocol with text) and the `psql` binary of the
//! `postgresql-client` package, which `scripts/setup` installs. A test that needs `psql` on a
//! machine without it fails and says so.

use std::net::SocketAddr;
use std::process::Command;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Row, SimpleQueryMessage};

/// A row as the HTTP API writes it: column name → JSON value (timestamps as RFC 3339 in UTC with
/// milliseconds).
pub type JsonRow = Map<String, Value>;

/// Connects to `database` at `address` as `user`; the connection runs on the current runtime.
pub async fn connect(
    address: SocketAddr,
    user: &str,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_with_password(address, user, "", database).await
}

/// [`connect`] with a password (`[auth]` on: a token).
pub async fn connect_with_password(
    address: SocketAddr,
    user: &str,
    password: &str,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = format!(
        "host={} port={} user={user} dbname={database} connect_timeout=10",
        address.ip(),
        address.port()
    );
    if !password.is_empty() {
        config.push_str(&format!(" password={password}"));
    }
    let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn timestamp(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Rows of the extended protocol (binary results) as JSON.
pub fn json_rows(rows: &[Row]) -> Vec<JsonRow> {
    rows.iter()
        .map(|row| {
            (row.columns().iter().enumerate())
                .map(|(i, column)| {
                    let value = match *column.type_() {
                        Type::INT8 => json!(row.get::<_, Option<i64>>(i)),
                        Type::INT4 => json!(row.get::<_, Option<i32>>(i)),
                        Type::INT2 => json!(row.get::<_, Option<i16>>(i)),
                        Type::FLOAT8 => json!(row.get::<_, Option<f64>>(i)),
                        Type::FLOAT4 => json!(row.get::<_, Option<f32>>(i)),
                        Type::BOOL => json!(row.get::<_, Option<bool>>(i)),
                        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                            json!(row.get::<_, Option<String>>(i))
                        }
                        Type::TIMESTAMPTZ => {
                            (row.get::<_, Option<DateTime<Utc>>>(i)).map_or(Value::Null, timestamp)
                        }
                        Type::TIMESTAMP => (row.get::<_, Option<NaiveDateTime>>(i))
                            .map_or(Value::Null, |t| timestamp(t.and_utc())),
                        ref other => panic!("column {} has type {other}", column.name()),
                    };
                    (column.name().to_owned(), value)
                })
                .collect()
        })
        .collect()
}

/// The rows of a simple-protocol query (text results): column name → text (or null).
pub async fn simple_rows(
    client: &Client,
    sql: &str,
) -> Result<Vec<JsonRow>, tokio_postgres::Error> {
    let mut rows = Vec::new();
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            let columns = row.columns().iter().enumerate();
            rows.push(
                columns
                    .map(|(i, c)| (c.name().to_owned(), json!(row.get(i))))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// Runs `psql` against `database` at `address` with `args` (e.g. `["-c", "\\dt"]`), unaligned and
/// without a `.psqlrc`; returns its stdout, or its stderr as the error. Panics when `psql` is
/// missing: the wire's tests need the real client.
pub fn psql(address: SocketAddr, database: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new("psql")
        .args(["-X", "-A", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            &address.ip().to_string(),
            "-p",
            &address.port().to_string(),
        ])
        .args(["-U", "psql", "-d", database])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| {
            panic!("psql did not run ({e}): install postgresql-client (scripts/setup does)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.success() {
        true => Ok(stdout),
        false => Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}
