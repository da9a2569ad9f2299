//! Speed nodes of a split speed layer (issue 32, in progress): `serve --partitions` reads only
//! those partitions, its own answers say which they miss, and `GET /v1/speed/{definition}` gives
//! its states (Arrow IPC) at the seam of the live batch version: together, two nodes' states count
//! every event above the boundary exactly once. (The serving node that merges them is next.)

mod common;

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::{PARTITIONS, Service, Truth};
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
