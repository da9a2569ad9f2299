//! The SQL path's guard (issue 27): no statement that is not a read runs, on `/v1/sql` or the wire
//! (one engine path). Property test: statements that would create, change, configure or write
//! anything, in random forms (case, comments, names, nesting under EXPLAIN or a CTE), are all
//! refused, and afterwards the catalog and the file system are as they were.

mod common;

use proptest::prelude::*;
use tributary_serving::query::QueryError;

use common::Setup;

/// A statement that is not a read, with `name` and `n` woven in, and the file it would write.
fn writer(kind: usize, name: &str, n: u32, dir: &str) -> String {
    let file = format!("{dir}/{name}.csv");
    match kind {
        0 => format!("CREATE TABLE {name} AS SELECT * FROM pageviews"),
        1 => format!("CREATE TABLE {name} (a INT)"),
        2 => format!("INSERT INTO pageviews_states (page) VALUES ('{name}')"),
        3 => format!("DELETE FROM pageviews WHERE views > {n}"),
        4 => format!("UPDATE pageviews SET views = {n}"),
        5 => "DROP TABLE pageviews".to_owned(),
        6 => format!("CREATE VIEW {name} AS SELECT {n}"),
        7 => format!("COPY (SELECT * FROM pageviews) TO '{file}'"),
        8 => format!("COPY pageviews TO '{file}' STORED AS CSV"),
        9 => format!("CREATE EXTERNAL TABLE {name} STORED AS CSV LOCATION '{dir}/'"),
        10 => format!("SET datafusion.execution.target_partitions = {n}"),
        11 => format!("PREPARE {name} AS SELECT {n}"),
        12 => "TRUNCATE pageviews".to_owned(),
        13 => format!("ALTER TABLE pageviews RENAME TO {name}"),
        14 => format!("EXPLAIN ANALYZE INSERT INTO pageviews_states (page) VALUES ('{name}')"),
        15 => format!("CREATE SCHEMA {name}"),
        16 => format!("DROP VIEW IF EXISTS {name}"),
        17 => format!("INSERT INTO {name} SELECT * FROM traffic"),
        _ => format!("CREATE OR REPLACE TABLE pageviews AS SELECT {n} AS views"),
    }
}

fn case(sql: &str, upper: bool) -> String {
    match upper {
        true => sql.to_uppercase().replace(".CSV", ".csv"),
        false => sql.to_lowercase(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    #[test]
    fn no_statement_that_is_not_a_read_runs(
        kind in 0usize..19,
        name in "[a-z][a-z0-9_]{0,8}",
        n in 0u32..1000,
        upper in any::<bool>(),
        comment in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (app, _lake) = common::app(Setup::default());
        let dir = tempfile::tempdir().unwrap();
        let dir_name = dir.path().display().to_string();
        let mut sql = writer(kind, &name, n, &dir_name);
        if kind < 10 && kind % 2 == 0 {
            sql = case(&sql, upper);
        }
        if comment {
            sql = format!("/* a dashboard */ {sql} -- refreshed");
        }
        let engine = &app.engine;
        let tables = "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2";
        let before = runtime.block_on(engine.sql(tables, None, None)).unwrap().batches;
        let refused = runtime.block_on(engine.sql(&sql, None, None));
        match &refused {
            Err(QueryError::Invalid { code, .. }) => {
                prop_assert!(["read_only", "bad_sql", "sql_failed"].contains(code), "{sql}: {code}");
            }
            Ok(_) => prop_assert!(false, "{sql} ran"),
            Err(other) => prop_assert!(false, "{sql}: {other}"),
        }
        let after = runtime.block_on(engine.sql(tables, None, None)).unwrap().batches;
        prop_assert_eq!(before, after, "{} changed the catalog", sql);
        let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        prop_assert!(written.is_empty(), "{} wrote {:?}", sql, written);
    }
}
