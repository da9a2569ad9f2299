//! Row filters against the ground truth (issue 27 item 2): the real binary with a token whose
//! `row_filter` keeps `pageviews` to country NL, a random stream with late events, before and after
//! a batch run: what the token reads through `/v1/query`, `/v1/sql` and the Postgres wire, asking
//! for everything, equals the truth of the NL events alone.

mod common;

use common::*;
use serde_json::{Value as Json, json};
use tributary_testkit::Broker;
use tributary_testkit::pg;

/// Everything `pageviews` holds per hour and page: no filter of the caller's own.
const EVERYTHING: Query = Query {
    view: "pageviews",
    granularity: "1h",
    bucket_ms: Some(3_600_000),
    group_by: &["page"],
    filter: None,
};

/// The same, of the NL events: the truth the token must see.
const OF_NL: Query = Query {
    filter: Some(("country", "NL")),
    ..EVERYTHING
};

fn check_every_path(service: &Service, truth: &Truth, nl_token: &str, when: &str) {
    let by_query = service.json_as(
        Some(nl_token),
        "POST",
        "/v1/query",
        Some(&EVERYTHING.body()),
    );
    check_rows(
        by_query["rows"].as_array().unwrap(),
        truth,
        &OF_NL,
        &format!("{when}, /v1/query"),
    );
    let sql = merge_sql(truth, &EVERYTHING, false);
    let by_sql = service.json_as(
        Some(nl_token),
        "POST",
        "/v1/sql",
        Some(&json!({"sql": sql})),
    );
    check_rows(
        by_sql["rows"].as_array().unwrap(),
        truth,
        &OF_NL,
        &format!("{when}, /v1/sql"),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = runtime.block_on(async {
        let client =
            pg::connect_with_password(service.server.pg_address, "nl", nl_token, "tributary")
                .await
                .unwrap();
        client.query(&sql, &[]).await.unwrap()
    });
    let rows: Vec<Json> = pg::json_rows(&rows).into_iter().map(Json::Object).collect();
    check_rows(&rows, truth, &OF_NL, &format!("{when}, the wire"));
}

#[test]
fn a_row_filtered_token_reads_exactly_its_rows_across_a_batch_run() {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    let (nl_token, nl) = service.server.new_token("nl", &["read"]);
    let (admin_token, admin) = service.server.new_token("admin", &["read", "admin"]);
    let config = format!(
        "[auth]\nenabled = true\n{nl}\n[auth.tokens.row_filter]\npageviews = \"country = 'NL'\"\n{admin}\n"
    );
    let file = service.server.dir().join("auth.toml");
    std::fs::write(&file, config).unwrap();
    service
        .server
        .env("TRIBUTARY_CONFIG", file.display().to_string());
    service.start(64);
    let mut truth = Truth::new();
    truth.produce(broker, &topic, 3000);
    // The service's own calls (status, batch runs) carry the admin token.
    service.token = Some(admin_token);
    service.wait_for_log();
    check_every_path(&service, &truth, &nl_token, "speed only");
    let run = service.json("POST", "/v1/batch/run", None);
    assert_eq!(run["views"][0]["outcome"], "published", "{run}");
    check_every_path(&service, &truth, &nl_token, "after a batch run");
    // The unrestricted token sees more than NL: the filter is the token's, not the data's.
    let all = service.json("POST", "/v1/query", Some(&EVERYTHING.body()));
    let nl = service.json_as(
        Some(&nl_token),
        "POST",
        "/v1/query",
        Some(&EVERYTHING.body()),
    );
    let views = |reply: &Json| -> i64 {
        (reply["rows"].as_array().unwrap().iter())
            .map(|r| r["views"].as_i64().unwrap())
            .sum()
    };
    assert!(
        views(&all) > views(&nl),
        "{} vs {}",
        views(&all),
        views(&nl)
    );
}
