//! The real `tributary` binary as a child process, the way every end-to-end test runs it
//! (InfluxDB 3's `TestServer`): a temp-dir lake, the test's broker and topic, an HTTP port of its
//! own (and a Postgres-wire port), settings as `TRIBUTARY_*` variables, the log in a file that failures print, and a child
//! that is stopped when the harness is dropped (SIGTERM, so that `demo` stops the broker it
//! started; SIGKILL after [`STOP`]), so that no failing test leaves a process behind.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{Broker, free_port};
use crate::http::{Reply, request};

/// How long [`TestServer::wait_for`] waits.
pub const WAIT: Duration = Duration::from_secs(90);
/// How long a dropped harness waits for SIGTERM to end the process before it kills it.
pub const STOP: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct TestServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// Where `serve` listens for HTTP.
    pub address: SocketAddr,
    /// Where `serve` listens for the Postgres wire.
    pub pg_address: SocketAddr,
    /// `TRIBUTARY_*` (and other) variables of every command, later ones winning.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// A finished command's exit status, stdout and stderr, for assertion messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl TestServer {
    /// A harness for `binary` (a test's `env!("CARGO_BIN_EXE_tributary")`) reading `topic` of
    /// `broker`, with no DLQ topic, a fresh lake and a free HTTP port. Nothing runs yet.
    pub fn new(binary: &str, broker: &Broker, topic: &str) -> Self {
        let mut server = Self::without_broker(binary);
        let lake = server.lake().display().to_string();
        server
            .env("TRIBUTARY_LAKE__URL", lake)
            .env("RUST_LOG", "info")
            .env("TRIBUTARY_KAFKA__BROKERS", broker.bootstrap_servers())
            .env("TRIBUTARY_KAFKA__TOPIC", topic)
            .env("TRIBUTARY_KAFKA__DLQ_TOPIC", "");
        server
    }

    /// A harness with a free HTTP port and its own working directory, and nothing else set: the
    /// binary's defaults (`demo` starts its own broker and keeps its lake in the working
    /// directory).
    pub fn without_broker(binary: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let free = || SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("a free port")));
        let address = free();
        let pg_address = std::iter::repeat_with(free)
            .find(|a| *a != address)
            .expect("a second free port");
        let mut server = Self {
            binary: PathBuf::from(binary),
            address,
            pg_address,
            env: Vec::new(),
            child: None,
            dir,
        };
        server
            .env("TRIBUTARY_SERVING__LISTEN", address.to_string())
            .env("TRIBUTARY_SERVING__PG_LISTEN", pg_address.to_string());
        server
    }

    /// A fresh token from `tributary token new NAME --scope ...`: the token, and the configuration
    /// lines it printed (`[[auth.tokens]]`, its name, hash and scopes).
    pub fn new_token(&self, name: &str, scopes: &[&str]) -> (String, String) {
        let mut args = vec!["token", "new", name];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        let output = self.run(&args);
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).expect("UTF-8");
        let token = (text.lines())
            .find_map(|l| l.strip_prefix("token: "))
            .expect("a token line")
            .to_owned();
        let start = text.find("[[auth.tokens]]").expect("configuration lines");
        let end = text[start..].find("\n\n").expect("their end") + start;
        (token, text[start..end].to_owned())
    }

    /// Sets a variable for every command from now on.
    pub fn env(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The lake directory (created on first write by the binary).
    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    /// The harness's own directory: the working directory of every command.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file every spawned process logs to (its standard error).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("tributary.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// What spawned processes printed on standard output.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.txt")).unwrap_or_default()
    }

    /// The binary with `args` and every variable set, standard input closed.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("TRIBUTARY_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// Runs a one-shot command (`batch run`, `config check`) to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run tributary")
    }

    /// Starts a long-running command (`serve`) in the background, logging to [`Self::log`]. A
    /// process still running is killed first.
    pub fn spawn(&mut self, args: &[&str]) {
        self.kill();
        let append = |path: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open a log file")
        };
        let child = self
            .command(args)
            .stdout(append(self.dir.path().join("stdout.txt")))
            .stderr(append(self.log()))
            .spawn()
            .expect("start tributary");
        self.child = Some(child);
    }

    /// Starts `serve` with `args` and waits until `/readyz` says ready.
    ///
    /// A port is only known free when the harness is made; between a test's restarts any socket
    /// may take it, an outgoing connection's ephemeral port among them. A process that exits
    /// because its port is taken is started again on new ports (at most twice).
    pub fn start(&mut self, args: &[&str]) {
        for _ in 0..2 {
            let logged = self.log_text().len();
            self.spawn(args);
            let ready = |server: &Self| {
                (server.call("GET", "/readyz", None)).is_some_and(|reply| reply.status == 200)
            };
            let deadline = Instant::now() + WAIT;
            while !ready(self) && self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let taken =
                !self.running() && self.log_text()[logged..].contains("Address already in use");
            if !taken {
                break;
            }
            self.new_ports();
        }
        self.wait_for("ready", |server| {
            server
                .call("GET", "/readyz", None)
                .is_some_and(|reply| reply.status == 200)
        });
    }

    /// Moves the HTTP and Postgres-wire listeners to new free ports.
    fn new_ports(&mut self) {
        let free = || SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("a free port")));
        let old = [self.address, self.pg_address];
        self.address = std::iter::repeat_with(free)
            .find(|a| !old.contains(a))
            .expect("a free port");
        self.pg_address = std::iter::repeat_with(free)
            .find(|a| !old.contains(a) && *a != self.address)
            .expect("a second free port");
        let (http, pg) = (self.address.to_string(), self.pg_address.to_string());
        self.env("TRIBUTARY_SERVING__LISTEN", http)
            .env("TRIBUTARY_SERVING__PG_LISTEN", pg);
    }

    /// Whether the spawned process is still running.
    pub fn running(&mut self) -> bool {
        (self.child.as_mut()).is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    /// One HTTP request to the server, `None` when it does not answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Option<Reply> {
        request(self.address, method, path, body).ok()
    }

    /// Waits up to [`WAIT`] for `done`; fails the test, with the log, when the process exits
    /// first or time runs out.
    pub fn wait_for(&self, what: &str, done: impl FnMut(&Self) -> bool) {
        self.wait_within(what, WAIT, done);
    }

    pub fn wait_within(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if let Some(child) = &self.child
                && !Path::new(&format!("/proc/{}", child.id())).exists()
            {
                panic!(
                    "tributary exited while waiting for {what}\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The spawned process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, as a supervisor stops the process, and its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running process");
        assert!(signal(&child, "-TERM"), "kill -TERM failed");
        child.wait().expect("wait for tributary")
    }

    /// SIGINT (Ctrl-C), and the exit status once the process has stopped within `within`.
    pub fn interrupt(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running process");
        assert!(signal(&child, "-INT"), "kill -INT failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for tributary") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tributary did not stop within {within:?} of SIGINT\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL (kill -9), as a crash ends the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() && signal(child, "-TERM") {
            let deadline = Instant::now() + STOP;
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }
}

/// Sends a signal with `kill`; whether it was delivered.
fn signal(child: &Child, which: &str) -> bool {
    (Command::new("kill")
        .args([which, &child.id().to_string()])
        .status())
    .is_ok_and(|status| status.success())
}
