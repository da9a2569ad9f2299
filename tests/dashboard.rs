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
use tributary_testkit::http::request;
use tributary_testkit::{Broker, setup_tool};

const PLAYWRIGHT: &str = "1.56.0";

fn playwright_python() -> PathBuf {
    setup_tool(
        "TRIBUTARY_PLAYWRIGHT_PYTHON",
        &format!("playwright-{PLAYWRIGHT}/bin/python"),
    )
}

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()))
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

    // The service's own calls (status, the batch run) carry the admin token.
    service.token = Some(admin_token);
    generate(&service, 3000);
    service.wait_for_log();
    let run = service.json("POST", "/v1/batch/run", None);
    assert_eq!(run["views"][0]["outcome"], "published", "{run}");
    generate(&service, 1000);
    service.wait_for_log();

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
