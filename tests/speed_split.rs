//! The speed layer split by partitions (issue 32): speed nodes (`serve --partitions`) read only
//! their partitions, say which they miss, and give their states (Arrow IPC over
//! `GET /v1/speed/{definition}`) at the seam of the live batch version; a serving node
//! (`--roles serving`, `[serving] speed_nodes`) merges them with the batch version, exact against
//! the ground truth across batch runs and swaps, and says which partitions a dead node leaves out.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::{PARTITIONS, QUERIES, Service, Truth, counted};
use serde_json::{Value as Json, json};
use tributary_schemas::config::Config;
use tributary_schemas::lake::Boundary;
use tributary_schemas::seam::first_speed_epoch;
use tributary_speed::export::{ExportHead, decode};
use tributary_testkit::Broker;

/// A node's export of `pageviews`: its head, and `views` summed per partition over its parts.
fn export(service: &Service) -> (ExportHead, BTreeMap<i32, i64>) {
    export_having(service, "")
}

/// [`export`] for a caller that holds the sealed parts `have` says.
fn export_having(service: &Service, have: &str) -> (ExportHead, BTreeMap<i32, i64>) {
    let config = Config::from_sources(None, []).unwrap();
    let view = config.view("pageviews").unwrap();
    let path = format!("/v1/speed/{}?have={have}", view.definition_hash());
    let reply = request_bytes(service, &path);
    let (head, parts) = decode(&reply, &view.state_schema()).unwrap();
    let column = 1 + view.dimensions.len(); // `views`, the first metric: a count
    let mut views: BTreeMap<i32, i64> = BTreeMap::new();
    for part in &parts {
        let counts = part.batch.column(column).as_primitive::<Int64Type>();
        let total: i64 = (0..counts.len()).map(|i| counts.value(i)).sum();
        *views.entry(part.partition).or_default() += total;
    }
    (head, views)
}

/// The body of a GET, as bytes (the export is binary).
fn request_bytes(service: &Service, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(service.server.address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = raw[split + 4..].to_vec();
    match head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        true => dechunk(&body),
        false => body,
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap().trim(), 16).unwrap();
        body = &body[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Per partition, the `pageviews` events (page not null) the broker holds at offsets at or above
/// `from`, read back from the log itself.
fn truth_per_partition(
    broker: &Broker,
    topic: &str,
    truth: &Truth,
    from: &Boundary,
) -> BTreeMap<i32, i64> {
    let mut views = BTreeMap::new();
    for (partition, messages) in broker.read_topic(topic, PARTITIONS).unwrap() {
        for (offset, payload) in messages {
            let Ok(event) = truth.decoder.decode(&payload) else {
                continue;
            };
            let page = common::value(&event, &truth.config.events, "page");
            if offset >= from.get(partition) && page != "null" {
                *views.entry(partition).or_default() += 1;
            }
        }
    }
    views
}

fn read_all(service: &Service, partitions: &[i32], heads: &BTreeMap<i32, i64>) -> bool {
    let Some(reply) = service.call("GET", "/v1/status", None) else {
        return false;
    };
    let status: Json = serde_json::from_str(&reply.body).unwrap();
    partitions.iter().all(|p| {
        (status["speed"]["partitions"].as_array().unwrap().iter())
            .any(|l| l["partition"] == json!(p) && l["next"].as_i64() >= heads.get(p).copied())
    })
}

#[test]
fn speed_nodes_read_their_partitions_and_export_their_states_at_the_seam() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    // Node A runs every role and reads partition 0; node B reads 1 and 2 of the same lake.
    let mut a = Service::new(broker, &topic);
    a.server.start(&["serve", "--partitions", "0"]);
    let mut b = Service::new(broker, &topic);
    let lake = a.server.lake().display().to_string();
    b.server.env("TRIBUTARY_LAKE__URL", lake);
    b.server
        .start(&["serve", "--roles", "speed,serving", "--partitions", "1-2"]);
    let mut truth = Truth::new();
    truth.produce(broker, &topic, 3000);
    let heads = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    a.wait_for("node A to read partition 0", |s| read_all(s, &[0], &heads));
    b.wait_for("node B to read partitions 1 and 2", |s| {
        read_all(s, &[1, 2], &heads)
    });

    // Each node's own answer says what it misses.
    let query = json!({"view": "pageviews", "granularity": "all"});
    let answer = a.json("POST", "/v1/query", Some(&query));
    assert_eq!(answer["meta"]["complete"], false, "{answer}");
    assert_eq!(answer["meta"]["speed"]["unread"], json!([1, 2]), "{answer}");
    let answer = b.json("POST", "/v1/query", Some(&query));
    assert_eq!(answer["meta"]["speed"]["unread"], json!([0]), "{answer}");

    // Together the two exports count every event once, each node only its partitions.
    let (head_a, views_a) = export(&a);
    let (head_b, views_b) = export(&b);
    assert_eq!(head_a.partitions.keys().collect::<Vec<_>>(), [&0]);
    assert_eq!(head_b.partitions.keys().collect::<Vec<_>>(), [&1, &2]);
    assert_eq!(views_a.keys().collect::<Vec<_>>(), [&0]);
    let mut together = views_a;
    together.extend(views_b);
    let nothing = Boundary::default();
    assert_eq!(
        together,
        truth_per_partition(broker, &topic, &truth, &nothing)
    );

    // A batch version: both nodes follow the lake, drop what it covers, and say where their
    // states start; the exports then hold exactly the events above the boundary.
    a.wait_for("the archiver to hold the log", |s| {
        let status = s.json("GET", "/v1/status", None);
        (heads.iter())
            .all(|(p, head)| status["archiver"]["progress"][p.to_string()].as_i64() >= Some(*head))
    });
    let run = a.json("POST", "/v1/batch/run", None);
    let boundary: Boundary = Boundary(
        (run["views"][0]["boundary"].as_object().unwrap().iter())
            .map(|(p, w)| (p.parse().unwrap(), w.as_i64().unwrap()))
            .collect(),
    );
    assert!(boundary.0.values().all(|&w| w > 0), "{run}");
    for node in [&a, &b] {
        node.wait_for("the version to be followed", |s| {
            export(s)
                .0
                .held_from
                .0
                .iter()
                .all(|(p, w)| *w == boundary.get(*p))
                && !export(s).0.held_from.0.is_empty()
        });
    }
    let (head_a, views_a) = export(&a);
    let (head_b, views_b) = export(&b);
    let mut together = views_a;
    together.extend(views_b);
    let above = truth_per_partition(broker, &topic, &truth, &boundary);
    let above: BTreeMap<i32, i64> = above.into_iter().filter(|(_, v)| *v > 0).collect();
    assert_eq!(together, above, "held from {:?}", head_a.held_from);
    assert_eq!(head_b.held_from.get(1), boundary.get(1));

    // The sealed parts a serving node holds are not sent again; the open ones always are.
    truth.produce(broker, &topic, 1800); // 600 per partition: one sealed epoch and an open one
    let heads = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    b.wait_for("node B to read on", |s| read_all(s, &[1, 2], &heads));
    let first = first_speed_epoch(boundary.get(1), 500);
    let (head, _) = export_having(&b, &format!("1:{first}-{}", first + 100));
    let sent: BTreeSet<(i32, bool)> = head.parts.iter().map(|p| (p.partition, p.sealed)).collect();
    assert_eq!(
        sent,
        BTreeSet::from([(1, false), (2, true), (2, false)]),
        "{:?}",
        head.parts
    );
    let bad = (b.server.call("GET", "/v1/speed/nope", None)).unwrap();
    assert_eq!(bad.status, 404, "{}", bad.body);
    let bad = (b.server.call("GET", "/v1/speed/x?have=1:9-2", None)).unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
}

/// The `views` of `pageviews` over every event of the log below `counted` per partition (a
/// partition not named: none of it), read back from the broker.
fn views_below(broker: &Broker, topic: &str, truth: &Truth, counted: &BTreeMap<i32, i64>) -> i64 {
    let mut views = 0;
    for (partition, messages) in broker.read_topic(topic, PARTITIONS).unwrap() {
        let end = counted.get(&partition).copied().unwrap_or(0);
        for (offset, payload) in messages {
            let Ok(event) = truth.decoder.decode(&payload) else {
                continue;
            };
            let page = common::value(&event, &truth.config.events, "page");
            views += i64::from(offset < end && page != "null");
        }
    }
    views
}

/// Every partition served by the node that reads it.
fn assert_served_by(meta: &Json, a: &Service, b: &Service) {
    let (a, b) = (
        format!("http://{}", a.server.address),
        format!("http://{}", b.server.address),
    );
    assert_eq!(
        meta["speed"]["nodes"],
        json!({"0": a, "1": b, "2": b}),
        "{meta}"
    );
    assert_eq!(meta["complete"], true, "{meta}");
    assert_eq!(meta["speed"]["unread"], json!([]), "{meta}");
}

#[test]
fn a_serving_node_merges_two_speed_nodes_exactly_and_names_the_partitions_of_a_dead_one() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::shared();
    let topic = runtime.block_on(broker.create_topic(PARTITIONS)).unwrap();
    // Speed node A reads partition 0, B partitions 1 and 2; the serving node S archives, runs
    // the batch layer and merges both nodes' states. One lake.
    let mut a = Service::new(broker, &topic);
    a.server
        .start(&["serve", "--roles", "speed", "--partitions", "0"]);
    let lake = a.server.lake().display().to_string();
    let mut b = Service::new(broker, &topic);
    b.server.env("TRIBUTARY_LAKE__URL", &lake);
    b.server
        .start(&["serve", "--roles", "speed", "--partitions", "1-2"]);
    let mut s = Service::new(broker, &topic);
    let nodes = format!("http://{},http://{}", a.server.address, b.server.address);
    s.server
        .env("TRIBUTARY_LAKE__URL", &lake)
        .env("TRIBUTARY_SERVING__SPEED_NODES", nodes)
        .env("TRIBUTARY_SERVING__SPEED_NODE_TIMEOUT", "1s");
    s.server
        .start(&["serve", "--roles", "archiver,serving,batch"]);

    // The speed layer alone.
    let mut truth = Truth::new();
    truth.produce(broker, &topic, 3000);
    s.wait_for_read();
    let meta = common::check_all(&s, &truth, "speed nodes only");
    assert_served_by(&meta, &a, &b);
    assert!(meta["batch"].is_null(), "{meta}");

    // After a batch run, with late events above it.
    s.wait_for_log();
    common::run_batch(&s);
    truth.produce(broker, &topic, 1500);
    s.wait_for_read();
    let meta = common::check_all(&s, &truth, "after a batch run");
    assert_served_by(&meta, &a, &b);
    assert!(meta["batch"]["version"].as_u64() >= Some(1), "{meta}");

    // A snapshot answers from the same states and offsets after more events arrived.
    let taken = s.json("POST", "/v1/query", Some(&QUERIES[1].body()));
    let mut in_snapshot = QUERIES[1].body();
    in_snapshot["snapshot"] = taken["meta"]["snapshot"].clone();

    // During a swap: every answer exact and complete while a version goes live on the three
    // processes at their own pace, and the nodes drop what it covers (speed_drop_after later).
    truth.produce(broker, &topic, 1500);
    s.wait_for_read();
    let again = s.json("POST", "/v1/query", Some(&in_snapshot));
    assert_eq!(again["rows"], taken["rows"]);
    assert_eq!(again["meta"]["speed"], taken["meta"]["speed"]);
    s.wait_for_log();
    let stop = AtomicBool::new(false);
    let samples = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                for query in &QUERIES {
                    let meta = common::check(&s, &truth, query, "during a swap");
                    assert_eq!(meta["complete"], true, "during a swap: {meta}");
                    samples += 1;
                }
            }
            samples
        });
        let version = common::run_batch(&s)["views"][0]["version"].clone();
        // Past the nodes' speed_drop_after (5 s) after S and both nodes load the version.
        std::thread::sleep(Duration::from_secs(7));
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.join().unwrap();
        let meta = common::check(&s, &truth, &QUERIES[0], "after the swap");
        assert_eq!(meta["batch"]["version"], version, "{meta}");
        samples
    });
    assert!(
        samples >= 8,
        "only {samples} answers sampled during the swap"
    );
    let held = |node: &Service| {
        let status = node.json("GET", "/v1/status", None);
        status["speed"]["partitions"].clone()
    };
    assert_eq!(
        held(&s).as_array().unwrap().len(),
        3,
        "status: {}",
        held(&s)
    );

    // B dies: answers still count every partition below the boundary and A's above it, and say
    // they lack B's partitions; S is not ready.
    b.kill();
    truth.produce(broker, &topic, 1500);
    s.wait_for("an answer without B's partitions", |s| {
        let reply = s.json("POST", "/v1/query", Some(&QUERIES[0].body()));
        reply["meta"]["speed"]["unread"] == json!([1, 2])
    });
    let heads = broker.high_watermarks(&topic, PARTITIONS).unwrap();
    s.wait_for("A to read partition 0 to its end", |s| {
        let reply = s.json("POST", "/v1/query", Some(&QUERIES[0].body()));
        reply["meta"]["speed"]["next_offsets"]["0"].as_i64() >= heads.get(&0).copied()
    });
    let reply = s.json("POST", "/v1/query", Some(&QUERIES[0].body()));
    let meta = &reply["meta"];
    assert_eq!(meta["complete"], false, "{meta}");
    assert_eq!(
        meta["speed"]["nodes"],
        json!({"0": format!("http://{}", a.server.address)}),
        "{meta}"
    );
    let counted = counted(meta);
    let got = reply["rows"][0]["views"].as_i64().unwrap();
    assert_eq!(got, views_below(broker, &topic, &truth, &counted), "{meta}");
    assert!(
        got < views_below(broker, &topic, &truth, &heads),
        "the answer lacks B's new events and says so"
    );
    let status = s.json("GET", "/v1/status", None);
    assert_eq!(
        status["speed"]["missing_partitions"],
        json!([1, 2]),
        "{status}"
    );
    let node_b = &status["speed"]["nodes"][1];
    assert_eq!(node_b["up"], false, "{status}");
    let ready = s.server.call("GET", "/readyz", None).unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    let metrics = s.server.call("GET", "/metrics", None).unwrap().body;
    let down = format!(
        "tributary_speed_node_up{{node=\"http://{}\"}} 0",
        b.server.address
    );
    assert!(metrics.contains(&down), "{metrics}");

    // B is back: complete and exact again.
    b.server
        .start(&["serve", "--roles", "speed", "--partitions", "1-2"]);
    s.wait_for("answers to be complete again", |s| {
        let reply = s.json("POST", "/v1/query", Some(&QUERIES[0].body()));
        reply["meta"]["complete"] == true
    });
    s.wait_for_read();
    let meta = common::check_all(&s, &truth, "B restarted");
    assert_served_by(&meta, &a, &b);
}
