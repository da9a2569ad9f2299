//! `tributary demo` on a machine where nothing is configured or running: it starts its own broker,
//! serves live numbers within 60 seconds, runs its first batch recompute, prints curl examples that
//! work as printed, and stops everything it started on Ctrl-C (SIGINT).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tributary_testkit::free_port;
use tributary_testkit::http::request;

fn poll<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_demo_serves_live_numbers_within_a_minute_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let api = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap()));
    let broker = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap()));
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["demo", "--rate", "200", "--first-batch-after", "5"])
        .current_dir(dir.path())
        .env("TRIBUTARY_SERVING__LISTEN", api.to_string())
        .env("TRIBUTARY_KAFKA__BROKERS", broker.to_string())
        .env_remove("TRIBUTARY_CONFIG")
        .stdout(std::fs::File::create(dir.path().join("demo.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // If an assertion fails, the demo (and with it its broker) must not outlive the test.
    struct Interrupt<'a>(&'a str);
    impl Drop for Interrupt<'_> {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-INT", self.0]).status();
        }
    }
    let interrupt = Interrupt(&pid);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();

    let totals = r#"{"view":"pageviews","granularity":"all","metrics":["views","users"]}"#;
    let views = poll("non-empty answer", Duration::from_secs(60), || {
        let reply = request(api, "POST", "/v1/query", Some(totals)).ok()?;
        let answer: Json = serde_json::from_str(&reply.body).ok()?;
        answer["rows"][0]["views"].as_i64().filter(|v| *v > 0)
    });
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(views > 0);

    // The first recompute publishes a batch version, and answers keep growing past it.
    let version = poll("batch version", Duration::from_secs(90), || {
        let reply = request(api, "GET", "/v1/status", None).ok()?;
        let status: Json = serde_json::from_str(&reply.body).ok()?;
        status["batch"]["views"][0]["version"].as_i64()
    });
    assert_eq!(version, 1);
    poll("growing answer", Duration::from_secs(30), || {
        let reply = request(api, "POST", "/v1/query", Some(totals)).ok()?;
        let answer: Json = serde_json::from_str(&reply.body).ok()?;
        let merged = answer["meta"]["batch"]["version"].as_i64() == Some(1);
        (merged && answer["rows"][0]["views"].as_i64()? > views).then_some(())
    });

    // The printed examples, run as printed, return live numbers.
    let printed = read("demo.out");
    let examples: Vec<&str> = (printed.lines())
        .filter_map(|l| l.trim().strip_prefix("-d '")?.strip_suffix('\''))
        .collect();
    assert_eq!(examples.len(), 2, "{printed}");
    assert!(
        printed.contains(&format!("curl -s http://{api}/v1/query")),
        "{printed}"
    );
    for example in examples {
        let reply = request(api, "POST", "/v1/query", Some(example)).unwrap();
        let answer: Json = serde_json::from_str(&reply.body).unwrap();
        let rows = answer["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{example}: {answer}");
        assert!(
            rows.iter().all(|r| r["views"].as_i64() > Some(0)),
            "{answer}"
        );
    }

    // Ctrl-C: the demo stops the service, the generator and its broker, and exits 0.
    drop(interrupt);
    let mut child = child;
    let status = poll("exit after SIGINT", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}\n{}", read("demo.log"));
    assert!(
        read("demo.out").contains("demo stopped"),
        "{}",
        read("demo.out")
    );
    assert!(
        TcpStream::connect_timeout(&broker, Duration::from_millis(500)).is_err(),
        "the demo's broker still listens after the demo stopped"
    );
}
