//! Row-level access (issue 27 item 2): a token's `row_filter` for a view holds on `/v1/query`,
//! `/v1/sql` and the Postgres wire, and no SQL gets past it (`OR`, `UNION`, subqueries, roll-ups,
//! the finalized table). Differential: what a DE-only token sees equals what an unrestricted
//! token sees of DE, over the same app (real lake directory, real aggregated events).

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tributary_schemas::config::Config;
use tributary_serving::api::{App, DRAIN, router};
use tributary_serving::auth::token_hash_hex;
use tributary_serving::wire;
use tributary_testkit::pg::{connect_with_password, json_rows};

use common::Setup;

const DE: &str = "trb_de";
const ALL: &str = "trb_all";

fn app() -> (Arc<App>, tempfile::TempDir) {
    let file = format!(
        r#"
[auth]
enabled = true
[[auth.tokens]]
name = "de"
sha256 = "{}"
scopes = ["read"]
[auth.tokens.row_filter]
pageviews = "country = 'DE'"
[[auth.tokens]]
name = "all"
sha256 = "{}"
scopes = ["read"]
"#,
        token_hash_hex(DE),
        token_hash_hex(ALL)
    );
    let config = Config::from_sources(Some((&file, "auth.toml")), []).unwrap();
    common::app(Setup {
        auth: config.auth,
        ..Setup::default()
    })
}

async fn post(app: &Arc<App>, token: &str, path: &str, body: Value) -> Value {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router(Arc::clone(app)).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let reply: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, StatusCode::OK, "{path} {body}: {reply}");
    reply
}

async fn sql(app: &Arc<App>, token: &str, sql: &str) -> Value {
    post(app, token, "/v1/sql", json!({"sql": sql})).await["rows"].clone()
}

#[tokio::test]
async fn a_row_filter_holds_on_every_path_and_cannot_be_escaped() {
    let (app, _lake) = app();

    // /v1/query: the DE token's totals are the unrestricted token's totals of DE.
    let by_country = json!({"view": "pageviews", "granularity": "all", "group_by": ["country"],
        "metrics": ["views", "users", "latency_p95"]});
    let seen = post(&app, DE, "/v1/query", by_country.clone()).await;
    let rows = seen["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{seen}");
    assert_eq!(rows[0]["country"], "DE");
    let mut of_de = by_country.clone();
    of_de["filter"] = json!([{"field": "country", "op": "eq", "value": "DE"}]);
    let truth = post(&app, ALL, "/v1/query", of_de).await;
    assert_eq!(seen["rows"], truth["rows"]);
    let everything = post(&app, ALL, "/v1/query", by_country).await;
    assert!(
        everything["rows"].as_array().unwrap().len() > 1,
        "{everything}"
    );

    // SQL: what the DE token reads of pageviews is DE, however it asks.
    let de_views = sql(
        &app,
        ALL,
        "SELECT sum(views) AS n FROM pageviews WHERE country = 'DE'",
    )
    .await;
    let all_views = sql(&app, ALL, "SELECT sum(views) AS n FROM pageviews").await;
    assert_ne!(de_views, all_views);
    let attempts = [
        "SELECT sum(views) AS n FROM pageviews",
        "SELECT sum(views) AS n FROM pageviews WHERE country = 'DE' OR 1 = 1",
        "SELECT sum(views) AS n FROM (SELECT * FROM pageviews WHERE country <> 'DE' OR true) s",
        "SELECT merge(views) AS n FROM pageviews_states",
        "SELECT sum(n) AS n FROM (SELECT merge(views) AS n FROM pageviews_states GROUP BY country) t",
        "SELECT sum(views) AS n FROM pageviews WHERE country IN (SELECT country FROM pageviews_states)",
    ];
    for attempt in attempts {
        assert_eq!(sql(&app, DE, attempt).await, de_views, "{attempt}");
    }
    let countries = sql(
        &app,
        DE,
        "SELECT country FROM pageviews UNION SELECT country FROM pageviews_states \
         UNION SELECT country FROM (SELECT * FROM pageviews p JOIN pageviews_states s USING (time, page, country)) j",
    )
    .await;
    assert_eq!(countries, json!([{"country": "DE"}]));
    // A view the token has no filter for reads whole.
    let traffic = "SELECT sum(events) AS n FROM traffic";
    assert_eq!(sql(&app, DE, traffic).await, sql(&app, ALL, traffic).await);

    // The Postgres wire, authenticated as the token: the same answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(wire::serve(
        Arc::clone(&app),
        listener,
        None,
        std::future::pending(),
        DRAIN,
    ));
    let client = connect_with_password(address, "de", DE, "tributary")
        .await
        .unwrap();
    for attempt in attempts {
        let rows = json_rows(&client.query(attempt, &[]).await.unwrap());
        let n = &rows[0]["n"];
        assert_eq!(n.as_f64(), de_views[0]["n"].as_f64(), "wire: {attempt}");
    }
    let rows = client
        .query("SELECT DISTINCT country FROM pageviews_states", &[])
        .await
        .unwrap();
    assert_eq!(
        json_rows(&rows),
        [json!({"country": "DE"}).as_object().unwrap().clone()]
    );
}
