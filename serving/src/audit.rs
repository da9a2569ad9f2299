//! The audit log (`[auth] audit_log`): one JSON line per request to a route that needs a scope, and
//! per statement on the Postgres wire, refused ones included. Each line says who (the token's
//! name, or null), from where (the client's address), what (the route or `postgres`, the views,
//! the query: the structured request or the SQL text), how much (rows returned, duration) and how
//! it ended (the HTTP status or the SQLSTATE).
//!
//! Requests never wait for the disk: lines go through a channel to a writer thread, which flushes
//! after each burst. `SIGHUP` makes it reopen the file (for logrotate's `create` mode); `"-"`
//! writes to stdout.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

/// One audited request.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub token: Option<String>,
    pub client: Option<String>,
    /// `POST /v1/query`, or `postgres`.
    pub route: String,
    pub views: Vec<String>,
    /// The structured request or the SQL text; null when there is none.
    pub query: Value,
    pub rows: Option<usize>,
    pub duration: Duration,
    /// The HTTP status, or the SQLSTATE on the wire (`00000` for success).
    pub status: Value,
}

/// What a handler tells the audit about its answer (a response extension).
#[derive(Debug, Clone, Default)]
pub struct Answered {
    pub views: Vec<String>,
    pub query: Value,
    pub rows: Option<usize>,
}

/// Where audit lines go; off when `[auth] audit_log` is empty.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    lines: Option<Sender<String>>,
    reopen: Arc<AtomicBool>,
}

impl Audit {
    /// Starts the writer for `target` (`""`: off, `"-"`: stdout, else a file appended to).
    pub fn open(target: &str) -> std::io::Result<Self> {
        if target.is_empty() {
            return Ok(Self::default());
        }
        let out = Out::open(target)?;
        let (lines, received) = channel();
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("audit".to_owned())
            .spawn(move || write_lines(out, &received, &flag))?;
        Ok(Self {
            lines: Some(lines),
            reopen,
        })
    }

    pub fn enabled(&self) -> bool {
        self.lines.is_some()
    }

    /// Asks the writer to reopen its file before its next line (on `SIGHUP`).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Records `entry`; never waits.
    pub fn record(&self, entry: &Entry) {
        let Some(lines) = &self.lines else {
            return;
        };
        let line = json!({
            "time": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "token": entry.token,
            "client": entry.client,
            "route": entry.route,
            "views": entry.views,
            "query": entry.query,
            "rows": entry.rows,
            "duration_ms": entry.duration.as_secs_f64() * 1e3,
            "status": entry.status,
        });
        let _ = lines.send(line.to_string());
    }
}

enum Out {
    Stdout,
    File(PathBuf, BufWriter<std::fs::File>),
}

impl Out {
    fn open(target: &str) -> std::io::Result<Self> {
        if target == "-" {
            return Ok(Out::Stdout);
        }
        let path = PathBuf::from(target);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Out::File(path, BufWriter::new(file)))
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Out::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Out::File(_, file) => writeln!(file, "{line}"),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout => std::io::stdout().flush(),
            Out::File(_, file) => file.flush(),
        }
    }
}

fn write_lines(mut out: Out, lines: &Receiver<String>, reopen: &AtomicBool) {
    while let Ok(line) = lines.recv() {
        if reopen.swap(false, Ordering::AcqRel)
            && let Out::File(path, _) = &out
        {
            let path = path.display().to_string();
            let _ = out.flush();
            match Out::open(&path) {
                Ok(reopened) => out = reopened,
                Err(error) => {
                    tracing::error!(%error, "reopening the audit log failed; writing to the old file");
                }
            }
        }
        let mut result = out.write(&line);
        // The rest of the burst, then one flush.
        while let Ok(line) = lines.try_recv() {
            result = result.and(out.write(&line));
        }
        if let Err(error) = result.and(out.flush()) {
            tracing::error!(%error, "writing the audit log failed");
        }
    }
}
