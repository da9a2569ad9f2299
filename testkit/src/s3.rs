//! A real S3-protocol server on loopback: moto in server mode (PyPI `moto[server]`, pinned, in the
//! virtualenv `scripts/setup` makes under `~/.cache/tributary`), reached through a TCP proxy of
//! ours that a test can cut ([`S3Server::cut`]) to make the object store unreachable, as an outage
//! or a network partition would, while the server keeps its objects.
//!
//! [`S3Server::shared`] is the one server of a test binary (each test uses a bucket of its own);
//! [`S3Server::start`] a private one, for a test that cuts it. The server runs under a watchdog that
//! stops it when the test process is gone, as the broker's does.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use tributary_schemas::lake::{Lake, Rooted};

use crate::TestServer;
use crate::broker::free_port;
use crate::http::request;

/// The moto release `scripts/setup` installs.
pub const MOTO: &str = "5.2.6";

/// Where `scripts/setup` puts `moto_server` (`TRIBUTARY_MOTO_SERVER` overrides).
pub fn moto_server() -> PathBuf {
    crate::setup_tool(
        "TRIBUTARY_MOTO_SERVER",
        &format!("moto-{MOTO}/bin/moto_server"),
    )
}

/// moto behind a cuttable proxy; stopped when dropped.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    proxy: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    buckets: AtomicU64,
}

impl S3Server {
    /// The server shared by every test of this test binary, started on first use. Panics when
    /// moto is missing, saying how to install it.
    pub fn shared() -> &'static S3Server {
        static SHARED: OnceLock<S3Server> = OnceLock::new();
        SHARED.get_or_init(|| S3Server::start().unwrap_or_else(|error| panic!("{error}")))
    }

    /// Starts a private server.
    pub fn start() -> io::Result<S3Server> {
        let binary = moto_server();
        if !binary.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is missing: scripts/setup installs moto[server] {MOTO} there",
                    binary.display()
                ),
            ));
        }
        let port = free_port()?;
        let watchdog = r#"
            "$MOTO" -H 127.0.0.1 -p "$PORT" &
            server=$!
            trap 'kill $server 2>/dev/null; wait $server; exit 0' TERM INT
            while kill -0 "$OWNER" 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.5; done
            kill $server 2>/dev/null
            wait $server
        "#;
        let child = Command::new("sh")
            .args(["-c", watchdog])
            .env("MOTO", &binary)
            .env("PORT", port.to_string())
            .env("OWNER", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let proxy = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (flag, streams) = (Arc::clone(&cut), Arc::clone(&open));
        thread::Builder::new()
            .name("s3-proxy".to_owned())
            .spawn(move || accept(&listener, server, &flag, &streams))?;
        let mut s3 = S3Server {
            child,
            proxy,
            cut,
            open,
            buckets: AtomicU64::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(proxy, "GET", "/", None).is_err() {
            if Instant::now() > deadline || s3.child.try_wait()?.is_some() {
                return Err(io::Error::other("moto_server did not answer within 30 s"));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(s3)
    }

    /// The endpoint clients use (the proxy's).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// A new empty bucket, named after `what` (lowercase letters, digits and '-').
    pub fn bucket(&self, what: &str) -> String {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        let name = format!("{what}-{}-{n}", std::process::id());
        let reply = request(self.proxy, "PUT", &format!("/{name}"), Some(""))
            .unwrap_or_else(|e| panic!("creating bucket {name}: {e}"));
        assert_eq!(reply.status, 200, "creating bucket {name}: {}", reply.body);
        name
    }

    /// What a `tributary` process (object_store's `AmazonS3Builder::from_env`) needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "tributary-test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "tributary-test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    /// Cuts the server off (connections open now are reset, new ones refused at once) or lets
    /// clients reach it again. The server keeps its objects.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            for stream in open.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn accept(
    listener: &TcpListener,
    server: SocketAddr,
    cut: &AtomicBool,
    open: &Mutex<Vec<TcpStream>>,
) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        if cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(upstream) = TcpStream::connect(server) else {
            continue;
        };
        let pairs = [
            (client.try_clone(), upstream.try_clone()),
            (upstream.try_clone(), client.try_clone()),
        ];
        if let Ok(mut streams) = open.lock() {
            streams.retain(|s| s.peer_addr().is_ok());
            streams.extend([client, upstream]);
        }
        for pair in pairs {
            if let (Ok(from), Ok(to)) = pair {
                let _ = thread::Builder::new()
                    .name("s3-proxy-pump".to_owned())
                    .spawn(move || pump(from, to));
            }
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl S3Server {
    /// A signed client of `bucket` (as the binary's, but built here, not from the environment).
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id("tributary-test")
            .with_secret_access_key("tributary-test")
            .with_region("us-east-1")
            .build()
            .expect("an S3 client");
        Arc::new(store)
    }

    /// The keys under `prefix` in `bucket`.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let store = self.store(bucket);
        let prefix = ObjectPath::from(prefix);
        let listed = runtime().block_on(async {
            store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location.to_string())
                .try_collect::<Vec<_>>()
                .await
        });
        listed.unwrap_or_else(|e| panic!("listing {bucket}/{prefix}: {e}"))
    }

    /// Deletes `key` from `bucket`.
    pub fn delete(&self, bucket: &str, key: &str) {
        let store = self.store(bucket);
        let deleted = runtime().block_on(store.delete(&ObjectPath::from(key)));
        deleted.unwrap_or_else(|e| panic!("deleting {bucket}/{key}: {e}"));
    }
}

/// Where [`S3Server::lake_for`] roots a lake in its bucket: two levels, as a production prefix.
pub const LAKE_PREFIX: &str = "a/prefix";

/// A lake on the S3 server: its bucket, and the test's own handle on it.
#[derive(Debug, Clone)]
pub struct S3Lake {
    pub bucket: String,
    pub lake: Lake,
}

impl S3Server {
    /// Points `server` at a lake on `s3://<a new bucket>/a/prefix` of this server (the variables
    /// `tributary` reads), and returns the test's handle on the same lake.
    pub fn lake_for(&self, server: &mut TestServer, what: &str) -> S3Lake {
        let bucket = self.bucket(what);
        server.env(
            "TRIBUTARY_LAKE__URL",
            format!("s3://{bucket}/{LAKE_PREFIX}"),
        );
        for (key, value) in self.env() {
            server.env(key, value);
        }
        let lake = Lake::new(Arc::new(Rooted::new(self.store(&bucket), LAKE_PREFIX)));
        S3Lake { bucket, lake }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}
