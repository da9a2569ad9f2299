//! The event schema's history in the lake through the real binary (issue 31): the archiver records
//! the schema and the offsets it applies from; a field added on restart is read as NULL from the
//! files before it, every answer stays exact; a type change the raw files cannot follow is refused
//! with the field and both types, by `serve` and by a second process on the same lake.

mod common;

use common::{PARTITIONS, Service, Truth, check_all};
use tributary_schemas::event::FieldType;
use tributary_schemas::lake::Lake;
use tributary_testkit::Broker;

#[test]
fn a_field_added_on_restart_is_recorded_and_an_incompatible_type_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    let mut service = Service::new(broker, &topic);
    service.start(256);
    let lake = Lake::open(service.server.lake().to_str().unwrap()).unwrap();
    let mut truth = Truth::new();
    truth.produce(broker, &topic, 1800);
    service.wait_for_log();
    let history = runtime.block_on(lake.schema_history(&topic)).unwrap();
    assert_eq!(history.schemas.len(), 1, "{history:?}");
    assert!(history.schemas[0].since.is_empty());
    common::run_batch(&service);
    check_all(&service, &truth, "before the change");

    // A field added: recorded from the archiver's progress on; old and new files read together.
    service.restart_with(
        "added.toml",
        &[("bytes = \"int64\"", "bytes = \"int64\"\nplan = \"string\"")],
    );
    truth.produce(broker, &topic, 1800);
    service.wait_for_log();
    let history = runtime.block_on(lake.schema_history(&topic)).unwrap();
    assert_eq!(history.schemas.len(), 2, "{history:?}");
    let since = &history.schemas[1].since;
    assert!(
        (0..PARTITIONS).all(|p| since.get(&p).is_some_and(|&o| o > 0)),
        "the new schema applies from where the archiver resumed: {since:?}"
    );
    assert!(
        (history.schemas[1].fields.iter())
            .any(|(name, ty)| name == "plan" && *ty == FieldType::String)
    );
    assert!(
        service.log_text().contains("the event schema changed"),
        "{}",
        service.log_text()
    );
    common::run_batch(&service);
    check_all(&service, &truth, "after a field was added");

    // A second process whose schema the raw files cannot follow is refused, naming the field.
    let changed = service.config_file(
        "changed.toml",
        &[(
            "user_id = \"string\"",
            "user_id = \"int64\"\nplan = \"string\"",
        )],
    );
    let refused = service
        .server
        .command(&["batch", "run"])
        .env("TRIBUTARY_CONFIG", &changed)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "field \"user_id\" is string in the lake's event schema and int64 in this configuration"
        ) && stderr.contains("a field of a new name (e.g. \"user_id_int64\")"),
        "{stderr}"
    );
    check_all(&service, &truth, "after the refusal");

    // And `serve` with it does not start.
    let status = service.server.terminate();
    assert!(status.success(), "{status}");
    let serve = service
        .server
        .command(&["serve"])
        .env("TRIBUTARY_CONFIG", &changed)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot read the raw files already in the lake"),
        "{stderr}"
    );
    assert_eq!(
        runtime
            .block_on(lake.schema_history(&topic))
            .unwrap()
            .schemas
            .len(),
        2,
        "nothing recorded"
    );
}
