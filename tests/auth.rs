//! `[auth]` through the real binary (issue 27): tokens made by `tributary token new`, every route
//! with no token, a wrong one and each scope over real HTTP, the Postgres wire's token passwords,
//! and `serve` refusing to expose itself without auth.

use std::collections::BTreeMap;

use tributary_testkit::http::{Reply, request_with};
use tributary_testkit::pg::connect_with_password;
use tributary_testkit::{Broker, TestServer};

#[test]
fn every_route_needs_its_scope_and_the_wire_a_token() {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(1)).unwrap();
    let mut server = TestServer::new(env!("CARGO_BIN_EXE_tributary"), broker, &topic);
    let mut tokens = BTreeMap::new();
    let audit = server.dir().join("audit").join("audit.log");
    let mut config = format!(
        "[auth]\nenabled = true\naudit_log = {:?}\n",
        audit.display().to_string()
    );
    for (name, scope) in [
        ("reader", "read"),
        ("pusher", "ingest"),
        ("operator", "admin"),
    ] {
        let (token, lines) = server.new_token(name, &[scope]);
        assert!(!lines.contains(&token), "only the hash is configured");
        config.push_str(&lines);
        config.push('\n');
        tokens.insert(scope, token);
    }
    let file = server.dir().join("auth.toml");
    std::fs::write(&file, &config).unwrap();
    server.env("TRIBUTARY_CONFIG", file.display().to_string());
    server.start(&["serve"]);
    let address = server.address;

    let event = r#"{"ts":"2026-11-21T10:00:00Z","page":"/a","user_id":"u1","country":"DE"}"#;
    let query = r#"{"view":"pageviews","granularity":"all","metrics":["views"]}"#;
    let sql = r#"{"sql":"SELECT count(*) AS n FROM pageviews"}"#;
    // (method, path, body, the scope it needs; None: open)
    let routes: [(&str, &str, Option<&str>, Option<&str>); 10] = [
        ("GET", "/v1/views", None, Some("read")),
        ("POST", "/v1/query", Some(query), Some("read")),
        ("POST", "/v1/sql", Some(sql), Some("read")),
        ("GET", "/v1/status", None, Some("read")),
        ("GET", "/metrics", None, Some("read")),
        ("POST", "/v1/events", Some(event), Some("ingest")),
        ("POST", "/v1/batch/run", None, Some("admin")),
        ("GET", "/livez", None, None),
        ("GET", "/readyz", None, None),
        ("GET", "/openapi.json", None, None),
    ];
    let callers: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("a wrong token", Some("trb_0000".to_owned())),
        ("read", Some(tokens["read"].clone())),
        ("ingest", Some(tokens["ingest"].clone())),
        ("admin", Some(tokens["admin"].clone())),
    ];
    let mut audited: Vec<(String, &str, u16)> = Vec::new();
    for (method, path, body, needs) in routes {
        for (caller, token) in &callers {
            let header = token.as_ref().map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = (header.iter())
                .map(|h| ("Authorization", h.as_str()))
                .collect();
            let reply: Reply = request_with(address, method, path, &headers, body).unwrap();
            let case = format!(
                "{method} {path} with {caller}: {} {}",
                reply.status, reply.body
            );
            if needs.is_some() {
                audited.push((format!("{method} {path}"), caller, reply.status));
            }
            match needs {
                None => assert!(reply.status < 300, "{case}"),
                Some(scope) if token.is_none() || *caller == "a wrong token" => {
                    assert_eq!(reply.status, 401, "{case}");
                    assert!(
                        reply
                            .header("www-authenticate")
                            .is_some_and(|h| h.starts_with("Bearer")),
                        "{case}\n{}",
                        reply.head
                    );
                    assert!(reply.body.contains(&format!("scope {scope}")), "{case}");
                    assert!(reply.body.contains("\"unauthorized\""), "{case}");
                }
                Some(scope) if scope == *caller => assert!(reply.status < 300, "{case}"),
                Some(scope) => {
                    assert_eq!(reply.status, 403, "{case}");
                    assert!(
                        reply.body.contains(&format!("lacks scope {scope}")),
                        "{case}"
                    );
                    assert!(reply.body.contains("\"forbidden\""), "{case}");
                }
            }
        }
    }

    // The Postgres wire: the user is the token's name, the password the token; it needs `read`.
    let pg = server.pg_address;
    runtime.block_on(async {
        let client = connect_with_password(pg, "reader", &tokens["read"], "tributary")
            .await
            .unwrap();
        let one = client.query_one("SELECT 1::bigint", &[]).await.unwrap();
        assert_eq!(one.get::<_, i64>(0), 1);
        for (user, token, code) in [
            ("reader", "trb_wrong", "28P01"),
            ("reader", tokens["admin"].as_str(), "28P01"),
            ("anyone", "trb_anything", "28P01"),
            ("pusher", tokens["ingest"].as_str(), "42501"),
        ] {
            let error = connect_with_password(pg, user, token, "tributary")
                .await
                .err()
                .unwrap_or_else(|| panic!("{user} connected"));
            let db = error
                .as_db_error()
                .unwrap_or_else(|| panic!("{user}: {error:?}"));
            assert_eq!(db.code().code(), code, "{user}: {db:?}");
        }
        let refused = client.query("DROP TABLE pageviews", &[]).await.unwrap_err();
        assert_eq!(refused.as_db_error().unwrap().code().code(), "25006");
        // Without a password the server asks for one (the driver then refuses to go on).
        let error = connect_with_password(pg, "reader", "", "tributary")
            .await
            .err()
            .unwrap();
        assert!(
            format!("{error:?}").contains("password missing"),
            "{error:?}"
        );
    });

    // The audit log: a line per request to a scoped route, refused ones too, and per statement
    // on the wire; none for the open routes.
    let expected = audited.len() + 2;
    let mut lines = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        lines = (text.lines())
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if lines.len() >= expected {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(lines.len(), expected, "{lines:#?}");
    let names = BTreeMap::from([
        ("read", "reader"),
        ("ingest", "pusher"),
        ("admin", "operator"),
    ]);
    for ((route, caller, status), line) in audited.iter().zip(&lines) {
        assert_eq!(line["route"], *route, "{line}");
        assert_eq!(line["status"], *status, "{line}");
        let token = match *caller {
            "no token" | "a wrong token" => serde_json::Value::Null,
            scope => names[scope].into(),
        };
        assert_eq!(line["token"], token, "{route} with {caller}: {line}");
        assert!(
            line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    let query = (lines.iter())
        .find(|l| l["route"] == "POST /v1/query" && l["status"] == 200)
        .unwrap();
    assert_eq!(query["views"], serde_json::json!(["pageviews"]), "{query}");
    assert_eq!(query["query"]["view"], "pageviews", "{query}");
    assert_eq!(query["rows"], 1, "{query}");
    let sql = (lines.iter())
        .find(|l| l["route"] == "POST /v1/sql" && l["status"] == 200)
        .unwrap();
    assert_eq!(sql["query"], "SELECT count(*) AS n FROM pageviews", "{sql}");
    let wire = &lines[lines.len() - 2..];
    assert_eq!(wire[0]["route"], "postgres", "{}", wire[0]);
    assert_eq!(wire[0]["token"], "reader", "{}", wire[0]);
    assert_eq!(wire[0]["status"], "00000", "{}", wire[0]);
    assert_eq!(wire[0]["rows"], 1, "{}", wire[0]);
    assert_eq!(wire[1]["status"], "25006", "{}", wire[1]);

    // logrotate's `create` mode: the file is moved away, SIGHUP, and new lines go to a new file.
    let rotated = audit.with_extension("log.1");
    std::fs::rename(&audit, &rotated).unwrap();
    let pid = server.pid().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let header = format!("Bearer {}", tokens["read"]);
    let after = request_with(
        address,
        "GET",
        "/v1/views",
        &[("Authorization", &header)],
        None,
    );
    assert_eq!(after.unwrap().status, 200);
    let mut reopened = String::new();
    for _ in 0..50 {
        reopened = std::fs::read_to_string(&audit).unwrap_or_default();
        if !reopened.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(reopened.lines().count(), 1, "{reopened}");
    assert!(reopened.contains("GET /v1/views"), "{reopened}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(
        old.lines().count(),
        expected,
        "nothing more went to the moved file"
    );
}

#[test]
fn serve_refuses_to_expose_itself_without_auth() {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(1)).unwrap();
    let mut server = TestServer::new(env!("CARGO_BIN_EXE_tributary"), broker, &topic);
    let port = server.address.port();
    server.env("TRIBUTARY_SERVING__LISTEN", format!("0.0.0.0:{port}"));
    let output = server.run(&["serve"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("reachable from other machines")
            && stderr.contains("[auth] enabled = true"),
        "{stderr}"
    );
    // Said on purpose, it serves.
    server.env("TRIBUTARY_AUTH__ALLOW_UNAUTHENTICATED", "true");
    server.start(&["serve"]);
    let reply = request_with(server.address, "GET", "/v1/views", &[], None).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
}
