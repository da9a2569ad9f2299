//! The deployment files (issue 29): `docker-compose.yml` is valid Compose (`docker-compose config`),
//! every `TRIBUTARY_*` variable the compose file, the Dockerfile and the Terraform task definitions set
//! is a configuration key that takes its value, the provisioned Grafana dashboard's queries answer on
//! the real Postgres wire, and `infra/terraform/` is formatted, validates against the pinned AWS
//! provider (from a local provider mirror where the machine has one) and passes checkov but for the
//! checks skipped inline with a reason.
//!
//! No Docker engine runs on the project's machines: the compose stack is validated, not started
//! (README "Deploying"). A tool these checks need and the machine lacks fails the test, saying what
//! to install; only `TRIBUTARY_SKIP_TERRAFORM=1`, set by hand, skips the Terraform checks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value as Json;
use tributary_schemas::config::Config;
use tributary_testkit::{Broker, pg, setup_tool};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); scripts/setup installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    output
}

#[test]
fn the_compose_file_is_valid_compose() {
    run(
        Command::new("docker-compose")
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(repo("")),
        "docker-compose config",
    );
}

/// `TRIBUTARY_<SECTION>__<KEY>` settings in a file, with their values as written: `KEY: value`,
/// `KEY=value` or Terraform's `{ name = "KEY", value = ... }`. An interpolation inside a string
/// (`df://${local.host}:50050`) becomes `host`; a value computed whole (`local.x`, `var.x`,
/// `tostring(...)`) takes the key's built-in default, which fails the check when the key does not
/// exist.
fn settings(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let Some(at) = line.find("TRIBUTARY_") else {
            continue;
        };
        let rest = &line[at..];
        let key: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !key.contains("__") {
            continue;
        }
        let after = rest[key.len()..].trim_start_matches('"').trim_start();
        let value = if let Some(value) = after.strip_prefix(':').or(after.strip_prefix('=')) {
            value
        } else if let Some((_, value)) = after.split_once("value =") {
            value
        } else {
            continue;
        };
        let value = value
            .trim()
            .trim_end_matches(['}', ',', '\\'])
            .trim()
            .trim_matches('"');
        let computed = value.starts_with("local.")
            || value.starts_with("var.")
            || value.split('(').next().is_some_and(|f| {
                f.len() < value.len() && f.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        let value = match computed {
            true => default_of(&key),
            false => interpolated(value),
        };
        found.push((key, value));
    }
    found
}

/// `value` with every `${...}` replaced by `host`.
fn interpolated(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').map_or(rest.len(), |e| at + e + 1);
        out.push_str("host");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The built-in default of `TRIBUTARY_<SECTION>__<KEY>`, as text.
fn default_of(variable: &str) -> String {
    let defaults: toml::Table = tributary_schemas::config::DEFAULT_CONFIG.parse().unwrap();
    let (section, key) = variable["TRIBUTARY_".len()..].split_once("__").unwrap();
    let value = &defaults[&section.to_ascii_lowercase()][&key.to_ascii_lowercase()];
    match value {
        toml::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[test]
fn every_variable_the_deployments_set_is_a_configuration_key() {
    for file in [
        "docker-compose.yml",
        "Dockerfile",
        "infra/terraform/ecs.tf",
        "infra/terraform/ballista.tf",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let settings = settings(&text);
        assert!(settings.len() >= 3, "{file}: {settings:?}");
        if let Err(error) = Config::from_sources(None, settings.clone()) {
            panic!("{file} sets what the configuration refuses: {error}\n{settings:?}");
        }
    }
    // The check itself: a misspelt key is refused.
    let typo = [("TRIBUTARY_SERVING__LISTENN".to_owned(), "x".to_owned())];
    assert!(Config::from_sources(None, typo).is_err());
}

/// Grafana's `$__timeFilter(time)` as its Postgres data source expands it.
fn expand_macros(sql: &str, from: &str, to: &str) -> String {
    sql.replace(
        "$__timeFilter(time)",
        &format!("time BETWEEN '{from}' AND '{to}'"),
    )
}

#[test]
fn the_provisioned_grafana_dashboard_answers_on_the_wire() {
    let dashboard: Json = serde_json::from_str(
        &std::fs::read_to_string(repo("infra/grafana/dashboards/tributary.json")).unwrap(),
    )
    .unwrap();
    let datasource = std::fs::read_to_string(repo(
        "infra/grafana/provisioning/datasources/tributary.yaml",
    ))
    .unwrap();
    assert!(datasource.contains("database: tributary") && datasource.contains("tributary:5433"));

    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    service.start(64);
    let mut truth = Truth::new();
    truth.produce(broker, &topic, 2000);
    service.wait_for_log();
    run_batch(&service);

    let client = runtime
        .block_on(pg::connect(
            service.server.pg_address,
            "grafana",
            "tributary",
        ))
        .unwrap();
    let (from, to) = ("2026-11-01T00:00:00Z", "2026-12-31T00:00:00Z");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 4);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let sql = expand_macros(target["rawSql"].as_str().unwrap(), from, to);
            let rows = runtime
                .block_on(client.query(&sql, &[]))
                .unwrap_or_else(|e| panic!("{}: {sql}: {e:?}", panel["title"]));
            assert!(!rows.is_empty(), "{}: no rows from {sql}", panel["title"]);
        }
    }
}

/// Where a local mirror of the `hashicorp/aws` provider is (the folder holding
/// `registry.terraform.io`), if the machine has one.
fn provider_mirror() -> Option<PathBuf> {
    let candidates = [
        std::env::var("TRIBUTARY_TF_PLUGIN_DIR")
            .ok()
            .map(PathBuf::from),
        Some(PathBuf::from("/opt/tf-plugins")),
        std::env::var("HOME")
            .ok()
            .map(|h| Path::new(&h).join(".terraform.d/plugins")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("registry.terraform.io/hashicorp/aws").is_dir())
}

fn checkov() -> PathBuf {
    setup_tool("TRIBUTARY_CHECKOV", "checkov-3.2.495/bin/checkov")
}

#[test]
fn the_terraform_formats_validates_and_passes_checkov() {
    if std::env::var("TRIBUTARY_SKIP_TERRAFORM").as_deref() == Ok("1") {
        return;
    }
    let source = repo("infra/terraform");
    run(
        Command::new("terraform")
            .args(["fmt", "-check", "-recursive", "-no-color"])
            .current_dir(&source),
        "terraform fmt -check (terraform is not installed by scripts/setup: install Terraform >= 1.5, or set TRIBUTARY_SKIP_TERRAFORM=1 by hand)",
    );
    // A copy: `init` writes .terraform and a lock file where it runs.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf" || e == "tfvars") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut init = Command::new("terraform");
    init.args(["init", "-backend=false", "-input=false", "-no-color"]);
    if let Some(mirror) = provider_mirror() {
        init.arg(format!("-plugin-dir={}", mirror.display()));
    }
    run(init.current_dir(dir.path()), "terraform init");
    run(
        Command::new("terraform")
            .args(["validate", "-no-color"])
            .current_dir(dir.path()),
        "terraform validate",
    );
    let checkov = checkov();
    assert!(
        checkov.exists(),
        "{} is missing: scripts/setup installs checkov",
        checkov.display()
    );
    let report = run(
        Command::new(&checkov)
            .args(["-d", ".", "--framework", "terraform", "--compact"])
            .args(["--skip-download", "--output", "json"])
            .current_dir(dir.path()),
        "checkov (every failed check must be fixed or skipped inline with a reason)",
    );
    let report: Json = serde_json::from_slice(&report.stdout).unwrap();
    let summary = &report["summary"];
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["passed"].as_u64() > Some(100), "{summary}");
    // Every inline skip carries a reason.
    for skipped in report["results"]["skipped_checks"].as_array().unwrap() {
        let reason = skipped["check_result"]["suppress_comment"]
            .as_str()
            .unwrap_or("");
        assert!(
            reason.len() > 20,
            "{} skipped without a reason",
            skipped["check_id"]
        );
    }
}
