//! `tributary demo` on a machine where nothing is configured or running: it starts its own broker,
//! serves live numbers within 60 seconds, runs its first batch recompute, prints curl and psql
//! examples that work as printed, and stops everything it started on Ctrl-C (SIGINT).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tributary_testkit::http::request;
use tributary_testkit::{TestServer, free_port};

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
    // If an assertion fails, dropping the harness stops the demo (SIGTERM), and with it its broker.
    let mut demo = TestServer::without_broker(env!("CARGO_BIN_EXE_tributary"));
    let api = demo.address;
    let broker = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap()));
    demo.env("TRIBUTARY_KAFKA__BROKERS", broker.to_string());
    let started = Instant::now();
    demo.spawn(&["demo", "--rate", "200", "--first-batch-after", "5"]);

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
    let printed = demo.stdout_text();
    let examples: Vec<&str> = (printed.lines())
        .filter_map(|l| l.trim().strip_prefix("-d '")?.strip_suffix('\''))
        .collect();
    assert_eq!(examples.len(), 2, "{printed}");
    assert!(
        printed.contains(&format!("curl -s http://{api}/v1/query")),
        "{printed}"
    );
    // The dashboard's URL, first among them, serves the page; without a terminal there is no
    // status line, and the logs go where they always went (stderr, the harness's log).
    assert!(
        printed.contains(&format!("dashboard     http://{api}/ ")),
        "{printed}"
    );
    let page = request(api, "GET", "/", None).unwrap();
    assert!(page.status == 200 && page.body.contains("<title>Tributary</title>"));
    assert!(!printed.contains("events/s in"), "{printed}");
    assert!(demo.log_text().contains("INFO"), "{}", demo.log_text());
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

    // The printed psql line, run as printed by a shell, answers over the Postgres wire.
    let lines: Vec<&str> = printed.lines().map(str::trim).collect();
    let at = (lines.iter())
        .position(|l| l.starts_with("psql -h"))
        .unwrap_or_else(|| panic!("no psql line: {printed}"));
    let command = format!(
        "{} {}",
        lines[at].trim_end_matches('\\').trim_end(),
        lines[at + 1]
    );
    assert!(
        command.contains(&format!("-p {}", demo.pg_address.port())),
        "{command}"
    );
    let output = std::process::Command::new("sh")
        .args(["-c", &command])
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("views") && (stdout.contains("(1 row)") || stdout.contains(" rows)")),
        "{command}: {stdout}"
    );

    // Ctrl-C: the demo stops the service, the generator and its broker, and exits 0.
    let status = demo.interrupt(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", demo.log_text());
    assert!(
        demo.stdout_text().contains("demo stopped"),
        "{}",
        demo.stdout_text()
    );
    assert!(
        TcpStream::connect_timeout(&broker, Duration::from_millis(500)).is_err(),
        "the demo's broker still listens after the demo stopped"
    );
}

/// On a terminal (`script` gives the demo one), the screen keeps the URLs and one updating status
/// line; the logs go to `data/demo.log`. (The test above, without a terminal, gets its logs on
/// stderr as every command does.)
#[test]
fn on_a_terminal_the_demo_shows_a_status_line_and_logs_to_a_file() {
    let demo = TestServer::without_broker(env!("CARGO_BIN_EXE_tributary"));
    let broker = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap()));
    let inner = demo.command(&[]);
    let screen = demo.dir().join("screen.txt");
    let command = format!(
        "exec {} demo --rate 100 --first-batch-after 3",
        env!("CARGO_BIN_EXE_tributary")
    );
    let mut script = std::process::Command::new("script");
    script
        .args(["-qfec", &command])
        .arg(&screen)
        .current_dir(demo.dir())
        .env("TRIBUTARY_KAFKA__BROKERS", broker.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let mut script = script
        .spawn()
        .expect("script (util-linux) runs: scripts/setup installs it");
    let shown = || std::fs::read_to_string(&screen).unwrap_or_default();
    let line = poll(
        "a status line with a batch version",
        Duration::from_secs(90),
        || {
            let text = shown();
            let last = text.rsplit("\r\x1b[2K").next()?.to_owned();
            (last.contains("events/s in") && last.contains("pageviews v1")).then_some(last)
        },
    );
    assert!(
        line.contains("freshness") && line.contains("speed lag"),
        "{line}"
    );
    let text = shown();
    assert!(text.contains("dashboard     http://"), "{text}");
    assert!(text.contains("Logs: data/demo.log"), "{text}");
    assert!(!text.contains("INFO"), "logs on the screen: {text}");
    let log = std::fs::read_to_string(demo.dir().join("data/demo.log")).unwrap();
    assert!(log.contains(" INFO ") && log.contains("published"), "{log}");

    // Ctrl-C reaches the demo (script's child): it stops and says so under the status line.
    let pid = std::process::Command::new("pgrep")
        .args(["-P", &script.id().to_string()])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_owned();
    assert!(!pid.is_empty(), "the demo under script");
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = poll("the demo to stop", Duration::from_secs(30), || {
        script.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    assert!(shown().contains("demo stopped"), "{}", shown());
}
