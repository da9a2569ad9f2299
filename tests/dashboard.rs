//! The dashboard (issue 28) in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/dashboard.py`, in the virtualenv `scripts/setup` makes), against the real binary
//! with auth on, events from the generator (on time and late), a batch version and more events
//! above it. What the script checks is listed in its docstring; here: the page and its assets are
//! served with no outside reference, and the run's screenshot is kept under the target directory
//! (`CARGO_TARGET_TMPDIR/dashboard.png`: a CI artifact, not committed).
//!
//! Where Chromium or Playwright cannot be had, the test fails and says what to install.
// The script's progress and the screenshot's path are the test's report (`--nocapture`).
#![allow(clippy::print_stderr)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value as Json, json};
use tributary_testkit::Broker;
use tributary_testkit::http::{request, request_with};

const PLAYWRIGHT: &str = "1.56.0";

fn playwright_python() -> PathBuf {
    if let Ok(path) = std::env::var("TRIBUTARY_PLAYWRIGHT_PYTHON") {
        return PathBuf::from(path);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    cache.join(format!("tributary/playwright-{PLAYWRIGHT}/bin/python"))
}

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()))
}

fn call(service: &Service, token: &str, method: &str, path: &str, body: Option<&Json>) -> Json {
    let header = format!("Bearer {token}");
    let body = body.map(Json::to_string);
    let reply = request_with(
        service.server.address,
        method,
        path,
        &[("Authorization", &header)],
        body.as_deref(),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// `tributary gen` to the service's topic: `count` events now, a fifth of them late.
fn generate(service: &Service, count: u64) {
    let output = service.server.run(&[
        "gen",
        "--count",
        &count.to_string(),
        "--rate",
        "0",
        "--late-fraction",
        "0.2",
        "--seed",
        &count.to_string(),
    ]);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn the_dashboard_shows_exact_totals_the_seam_and_late_events_in_a_real_browser() {
    let python = playwright_python();
    assert!(
        python.exists(),
        "{} is missing: scripts/setup installs Playwright {PLAYWRIGHT} (Python) there",
        python.display()
    );
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "{} is missing: scripts/setup installs Debian's chromium (or set CHROMIUM)",
        chromium.display()
    );

    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    let (token, dash) = service.server.new_token("dash", &["read", "ingest"]);
    let (nl_token, nl) = service.server.new_token("nl", &["read"]);
    let (admin_token, admin) = service.server.new_token("admin", &["read", "admin"]);
    let config = format!(
        "[auth]\nenabled = true\n{dash}\n{nl}\n[auth.tokens.row_filter]\npageviews = \"country = 'NL'\"\n{admin}\n"
    );
    let file = service.server.dir().join("auth.toml");
    std::fs::write(&file, config).unwrap();
    service
        .server
        .env("TRIBUTARY_CONFIG", file.display().to_string());
    service.start(64);

    // The page and its assets: served without a token, nothing from another origin.
    let address = service.server.address;
    for (path, kind) in [
        ("/", "text/html"),
        ("/views", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let reply = request(address, "GET", path, None).unwrap();
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.header("content-type").unwrap().starts_with(kind));
        let policy = reply.header("content-security-policy").unwrap();
        assert!(policy.contains("default-src 'self'"), "{policy}");
        // No address of another origin (the SVG namespace is a name, never fetched).
        let body = reply.body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
        assert!(!reply.body.contains("//cdn") && !reply.body.contains("@import"));
    }

    let log_read = |service: &Service| {
        let heads = broker.high_watermarks(&topic, PARTITIONS).unwrap();
        let status = call(service, &admin_token, "GET", "/v1/status", None);
        heads.iter().all(|(p, head)| {
            (status["speed"]["partitions"].as_array().unwrap().iter())
                .any(|l| l["partition"] == json!(p) && l["next"].as_i64() >= Some(*head))
                && status["archiver"]["progress"][p.to_string()].as_i64() >= Some(*head)
        })
    };
    generate(&service, 3000);
    service.wait_for("the log to be read and archived", log_read);
    let run = call(&service, &admin_token, "POST", "/v1/batch/run", None);
    assert_eq!(run["views"][0]["outcome"], "published", "{run}");
    generate(&service, 1000);
    service.wait_for("the log to be read", log_read);

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.py");
    let mut child = Command::new(&python)
        .arg(script)
        .env("DASHBOARD_URL", format!("http://{address}"))
        .env("TOKEN", &token)
        .env("NL_TOKEN", &nl_token)
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .current_dir(service.server.dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    // A hung browser must not hang the suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{stderr}\n{}",
        output.status,
        service.log_text()
    );
    eprintln!("{stdout}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("screenshot kept at {}", screenshot.display());
}
