//! TLS (issue 27 item 5) through the real binary: both listeners on all interfaces with auth on
//! and a certificate, `curl` over HTTPS verifying it, `psql` with `sslmode=verify-full` and a
//! token, plaintext refused; a certificate that does not load stops `serve` with what is wrong.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tributary_testkit::{Broker, TestServer};

/// A self-signed certificate for localhost and 127.0.0.1, with `openssl`.
fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (scripts/setup installs it)");
    assert!(made.status.success(), "{made:?}");
    (cert.display().to_string(), key.display().to_string())
}

fn curl(cert: &str, url: &str, token: Option<&str>) -> (bool, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "--cacert", cert, url]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn both_listeners_serve_tls_and_a_bad_certificate_stops_serve() {
    let broker = Broker::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(broker.create_topic(1)).unwrap();
    let mut server = TestServer::new(env!("CARGO_BIN_EXE_tributary"), broker, &topic);
    let (cert, key) = certificate(server.dir());
    let (token, lines) = server.new_token("reader", &["read"]);
    let config = format!("[auth]\nenabled = true\n{lines}\n");
    let file = server.dir().join("auth.toml");
    std::fs::write(&file, config).unwrap();
    let (http, pg) = (server.address.port(), server.pg_address.port());
    server
        .env("TRIBUTARY_CONFIG", file.display().to_string())
        .env("TRIBUTARY_SERVING__LISTEN", format!("0.0.0.0:{http}"))
        .env("TRIBUTARY_SERVING__PG_LISTEN", format!("0.0.0.0:{pg}"))
        .env("TRIBUTARY_SERVING__TLS_CERT", &cert)
        .env("TRIBUTARY_SERVING__TLS_KEY", &key);
    server.spawn(&["serve"]);
    let url = |path: &str| format!("https://localhost:{http}{path}");
    let started = Instant::now();
    while !curl(&cert, &url("/readyz"), None).0 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{}",
            server.log_text()
        );
        assert!(server.running(), "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    let (ok, views) = curl(&cert, &url("/v1/views"), Some(&token));
    assert!(ok && views.contains("pageviews"), "{views}");
    let (ok, refused) = curl(&cert, &url("/v1/views"), None);
    assert!(ok && refused.contains("unauthorized"), "{refused}");
    // Plaintext HTTP on the TLS port gets no answer.
    let plain = tributary_testkit::http::request(server.address, "GET", "/livez", None);
    assert!(plain.is_err() || plain.unwrap().status != 200);

    // psql verifies the certificate and sends the token inside TLS.
    let connection = format!(
        "host=localhost port={pg} dbname=tributary user=reader password={token} sslmode=verify-full sslrootcert={cert}"
    );
    let psql = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            &connection,
            "-c",
            "SELECT count(*) FROM pageviews_states",
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs (scripts/setup installs postgresql-client)");
    let said =
        String::from_utf8_lossy(&psql.stdout).into_owned() + &String::from_utf8_lossy(&psql.stderr);
    assert!(psql.status.success(), "{said}");
    assert!(said.trim().parse::<u64>().is_ok(), "{said}");
    let status = server.terminate();
    assert!(status.success(), "{status}\n{}", server.log_text());

    // A certificate that is not one: serve stops and says which file and why.
    std::fs::write(&cert, "not a certificate").unwrap();
    let output = server.run(&["serve"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("tls_cert") && stderr.contains("cert.pem"),
        "{stderr}"
    );
}
