//! Bounded queries (issue 27 item 4): a query past `[serving] query_memory_mb` gets a 4xx naming
//! the setting and the server goes on; past `max_concurrent_queries`, a 429 with `Retry-After` and
//! never a 5xx; a token past its `max_requests_per_s`, a 429 too. Over HTTP and the wire, in
//! process (real lake directory, real aggregated events).

mod common;

use std::sync::Arc;
use std::time::Duration;

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
use tributary_testkit::pg::{connect, connect_with_password};

use common::Setup;

/// `POST path` with an optional bearer token: the status, `Retry-After` and the body.
async fn post(
    app: &Arc<App>,
    token: Option<&str>,
    path: &str,
    body: Value,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::post(path).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Body::from(body.to_string())).unwrap();
    let response = router(Arc::clone(app)).oneshot(request).await.unwrap();
    let status = response.status();
    let retry = (response.headers().get("retry-after")).map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, retry, serde_json::from_slice(&bytes).unwrap())
}

async fn serve_wire(app: &Arc<App>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(wire::serve(
        Arc::clone(app),
        listener,
        None,
        std::future::pending(),
        DRAIN,
    ));
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_memory_gets_a_4xx_naming_the_setting() {
    let (app, _lake) = common::app(Setup {
        memory_mb: 1,
        ..Setup::default()
    });
    let big = "SELECT value, count(*) AS n FROM generate_series(1, 3000000) GROUP BY value";
    let (status, _, reply) = post(&app, None, "/v1/sql", json!({"sql": big})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "query_too_big", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("query_memory_mb (1 MB)"), "{message}");
    // The server goes on.
    let small = json!({"sql": "SELECT merge(views) AS views FROM pageviews_states"});
    assert_eq!(post(&app, None, "/v1/sql", small).await.0, StatusCode::OK);
    let client = connect(serve_wire(&app).await, "me", "tributary")
        .await
        .unwrap();
    let error = client.simple_query(big).await.unwrap_err();
    assert_eq!(
        error.as_db_error().unwrap().code().code(),
        "53200",
        "{error:?}"
    );
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_queries_get_429_and_never_a_5xx() {
    let (app, _lake) = common::app(Setup {
        max_running: 2,
        ..Setup::default()
    });
    let slow = json!({"sql": "SELECT sum(value) AS s FROM generate_series(1, 150000000)"});
    let queries: Vec<_> = (0..7)
        .map(|_| {
            let (app, slow) = (Arc::clone(&app), slow.clone());
            tokio::spawn(async move { post(&app, None, "/v1/sql", slow).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for query in queries {
        let (status, retry, reply) = query.await.unwrap();
        assert!(!status.is_server_error(), "{status}: {reply}");
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply["error"]["code"], "too_many_queries", "{reply}");
            assert!(
                reply["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("max_concurrent_queries")
            );
            assert_eq!(retry.as_deref(), Some("1"));
        }
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = (statuses.iter())
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(ok >= 1 && ok <= 7 - refused, "{statuses:?}");
    assert!(refused >= 1, "7 at once with room for 2: {statuses:?}");
    // Once they are done, there is room again.
    let small = json!({"sql": "SELECT 1 AS one"});
    assert_eq!(post(&app, None, "/v1/sql", small).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_token_past_its_rate_gets_429() {
    let hash = token_hash_hex("trb_slow");
    let file = format!(
        "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"slow\"\nsha256 = \"{hash}\"\n\
         scopes = [\"read\"]\nmax_requests_per_s = 3\n"
    );
    let config = Config::from_sources(Some((&file, "auth.toml")), []).unwrap();
    let (app, _lake) = common::app(Setup {
        auth: config.auth,
        ..Setup::default()
    });
    let query = json!({"view": "pageviews", "granularity": "all", "metrics": ["views"]});
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, retry, reply) = post(&app, Some("trb_slow"), "/v1/query", query.clone()).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
            assert!(retry.is_some());
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // The wire counts statements against the same rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let address = serve_wire(&app).await;
    let client = connect_with_password(address, "slow", "trb_slow", "tributary")
        .await
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..6 {
        match client.simple_query("SELECT 1").await {
            Ok(_) => codes.push("ok".to_owned()),
            Err(e) => codes.push(e.as_db_error().unwrap().code().code().to_owned()),
        }
    }
    assert!(codes.contains(&"53400".to_owned()), "{codes:?}");
}
