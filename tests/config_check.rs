//! The real binary's `config check`: exit codes and messages a person (or a deploy script) relies on.

use std::process::{Command, Output};

fn tributary(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .env_remove("TRIBUTARY_CONFIG")
        .output()
        .expect("run tributary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_defaults_check_clean_and_are_summarised() {
    let output = tributary(&["config", "check"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.starts_with("configuration is valid\n"), "{text}");
    assert!(
        text.contains("view pageviews: per 1m by [page, country]: views = count, users = count_distinct(user_id)"),
        "{text}"
    );
}

#[test]
fn every_problem_is_listed_with_its_key_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[events]
time_field = "ts"
[events.fields]
page = "text"

[[views]]
name = "v"
granularity = "7m"
[views.metrics]
total = "sum(price)"
"#,
    )
    .unwrap();
    let output = tributary(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        stdout(&output),
        "invalid configuration (3 problems):\n\
         \x20 - events.fields.page: unknown field type \"text\" (expected one of string, int64, float64, bool, timestamp)\n\
         \x20 - views[0].granularity: granularity \"7m\" must divide a day evenly, from 1s to 1d (e.g. 1s, 10s, 1m, 5m, 15m, 1h, 6h, 1d)\n\
         \x20 - views[0].metrics.total: \"price\" is not a field configured in [events.fields]\n"
    );
}

#[test]
fn the_printed_defaults_are_a_valid_configuration_file() {
    let defaults = tributary(&["config", "defaults"]);
    assert!(defaults.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defaults.toml");
    std::fs::write(&path, &defaults.stdout).unwrap();
    let check = tributary(&["--config", path.to_str().unwrap(), "config", "check"]);
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn an_unreadable_file_fails_with_the_path_and_cause() {
    let output = tributary(&["config", "check", "/nonexistent/tributary.toml"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "cannot read configuration file /nonexistent/tributary.toml: No such file or directory"
        ),
        "{stderr}"
    );
}

/// A container platform hands the whole file through TRIBUTARY_CONFIG_TOML (from a secret): it is
/// read as the file would be, problems and all.
#[test]
fn the_configuration_can_come_whole_from_tributary_config_toml() {
    let with_text = |text: &str| {
        Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["config", "check"])
            .env_remove("TRIBUTARY_CONFIG")
            .env("TRIBUTARY_CONFIG_TOML", text)
            .output()
            .expect("run tributary")
    };
    let good = with_text("[batch]\ninterval = \"5m\"\n");
    assert!(good.status.success(), "{good:?}");
    let bad = with_text("[batch]\nintervall = \"5m\"\n");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let text = format!("{}{}", stdout(&bad), String::from_utf8_lossy(&bad.stderr));
    assert!(text.contains("batch.intervall: unknown key"), "{text}");
}

/// `config diff OLD NEW`: what a deploy will do, exit 0 when NEW can run on a lake OLD wrote, 2
/// when it cannot.
#[test]
fn config_diff_says_what_a_deploy_will_do_and_refuses_what_the_lake_cannot_follow() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = tributary_schemas::config::DEFAULT_CONFIG;
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let old = write("old.toml", defaults.to_owned());
    let added = write(
        "added.toml",
        defaults
            .replace("bytes = \"int64\"", "bytes = \"int64\"\nplan = \"string\"")
            .replace("granularity = \"1h\"", "granularity = \"1d\""),
    );
    let output = tributary(&["config", "diff", &old, &added]);
    let text = stdout(&output);
    assert!(output.status.success(), "{output:?}");
    assert!(
        text.contains("event schema: compatible")
            && text.contains("field \"plan\" (string) added")
            && text.contains("view pageviews: unchanged")
            && text.contains("view traffic: REBUILT (granularity 1h → 1d)")
            && text.contains("the old definition answers events, sessions, bytes, latency_p50, latency_p99, late exactly; SQL reads of time in traffic_states answer 503 view_building"),
        "{text}"
    );
    let retyped = write(
        "retyped.toml",
        defaults.replace("session_id = \"string\"", "session_id = \"int64\""),
    );
    let output = tributary(&["config", "diff", &old, &retyped]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        text.contains("INCOMPATIBLE") && text.contains("field \"session_id\" is string"),
        "{text}"
    );
}
