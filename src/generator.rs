//! `tributary gen`: a realistic synthetic clickstream for the default configuration, to Kafka or to
//! the push-ingest endpoint, at a steady rate.
//!
//! The stream: visitors (200 000 of them, each with a fixed country and device) start sessions
//! that view a few pages each. Page popularity follows a power law (Zipf, s = 1.1, over 200 pages),
//! the first page of a session carries the referrer that brought the visitor and later ones
//! `internal`, latency is log-normal (mobile slower than desktop), response sizes log-normal, and
//! 2% of events are API calls without a page (the `pageviews` view filters them out). A fraction of
//! events arrive late: their time lies between a minute and two days in the past (log-uniform).
//!
//! The same seed gives the same events. Times come from the clock, or with `--start` from the
//! event's number (`start + n / rate`), which makes the whole stream reproducible.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use tributary_schemas::config::Config;
use tributary_schemas::shutdown::Shutdown;

/// Where generated events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Produced to `[kafka] topic` (acks=all, idempotent), keyed by user.
    Kafka,
    /// POSTed as NDJSON to the push-ingest endpoint (`/v1/events`).
    Http,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Events per second (0: as fast as the target takes them).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Events to send, then stop (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    #[arg(long, value_enum, default_value_t = Target::Kafka)]
    pub to: Target,
    /// Fraction of events whose time lies a minute to two days in the past.
    #[arg(long, default_value_t = 0.02)]
    pub late_fraction: f64,
    /// Seed of the generator: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time of event 0 (RFC 3339); event n is at start + n / rate. Default: the clock.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Base URL of a serving process, for `--to http` (default: http://[serving] listen).
    #[arg(long)]
    pub url: Option<String>,
    /// Events per HTTP request, for `--to http`.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

impl GenArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a number of events per second, 0 or more");
        }
        if !(0.0..=1.0).contains(&self.late_fraction) {
            bail!("--late-fraction must lie between 0 and 1");
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if self.start.is_some() && self.rate == 0.0 {
            bail!("--start needs a --rate above 0 (event n is at start + n / rate)");
        }
        Ok(())
    }
}

/// Runs the generator until `count` events went out or `stop` is set; prints progress to stderr
/// when `report` is set.
pub fn run(config: &Config, args: &GenArgs, stop: &Shutdown, report: bool) -> anyhow::Result<Sent> {
    args.check()?;
    let mut stream = Clickstream::new(args.seed, args.late_fraction);
    let mut progress = Progress::new(args.to, report);
    let sent = match args.to {
        Target::Kafka => to_kafka(config, args, &mut stream, &mut progress, stop)?,
        Target::Http => {
            let url = match &args.url {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None => format!("http://{}", config.serving.listen),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the HTTP client's runtime")?;
            runtime.block_on(to_http(&url, args, &mut stream, &mut progress, stop))?
        }
    };
    progress.finish(&sent);
    Ok(sent)
}

/// What went out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub events: u64,
    pub failed: u64,
}

/// How many events are due by now: the pacing of every target.
#[derive(Debug)]
struct Pace {
    started: Instant,
    rate: f64,
    count: u64,
}

impl Pace {
    fn new(args: &GenArgs) -> Self {
        Self {
            started: Instant::now(),
            rate: args.rate,
            count: if args.count == 0 {
                u64::MAX
            } else {
                args.count
            },
        }
    }

    /// Events that should have gone out by now (at most `chunk` more than `sent`), or `None` once
    /// all are out. Sleeps briefly when none is due yet.
    fn due(&self, sent: u64, chunk: u64) -> Option<u64> {
        if sent >= self.count {
            return None;
        }
        let mut due = sent.saturating_add(chunk).min(self.count);
        if self.rate > 0.0 {
            let by_now = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
            due = due.min(by_now.max(sent));
            if due == sent {
                let next_in = (sent + 1) as f64 / self.rate - self.started.elapsed().as_secs_f64();
                std::thread::sleep(Duration::from_secs_f64(next_in.clamp(0.0005, 0.05)));
            }
        }
        Some(due)
    }

    /// The time of event `n`: from `--start`, else the clock.
    fn time_ms(&self, start: Option<DateTime<Utc>>, n: u64) -> i64 {
        match start {
            Some(start) => start.timestamp_millis() + (n as f64 * 1000.0 / self.rate) as i64,
            None => Utc::now().timestamp_millis(),
        }
    }
}

#[derive(Debug, Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl rdkafka::ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((error, _)) => {
                tracing::warn!(%error, "an event was not delivered");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn to_kafka(
    config: &Config,
    args: &GenArgs,
    stream: &mut Clickstream,
    progress: &mut Progress,
    stop: &Shutdown,
) -> anyhow::Result<Sent> {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Deliveries::default())
        .context("creating the Kafka producer")?;
    let deliveries = Arc::clone(producer.context());
    let pace = Pace::new(args);
    let (mut sent, mut event) = (0u64, Vec::with_capacity(512));
    while let Some(due) = pace.due(sent, 10_000) {
        if stop.is_stopping() {
            break;
        }
        for n in sent..due {
            let user = stream.next_event(pace.time_ms(args.start, n), &mut event);
            let mut record = BaseRecord::to(&config.kafka.topic)
                .key(user.as_bytes())
                .payload(event.as_slice());
            // A full local queue means the broker is behind: wait for it rather than drop.
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((error, _)) => return Err(error).context("producing an event"),
                }
            }
        }
        sent = due;
        progress.tick(sent, deliveries.failed.load(Ordering::Relaxed));
    }
    let flushed = producer.flush(Duration::from_secs(60));
    let failed = deliveries.failed.load(Ordering::Relaxed);
    flushed.context("waiting for Kafka to acknowledge the last events")?;
    Ok(Sent {
        events: deliveries.delivered.load(Ordering::Relaxed),
        failed,
    })
}

async fn to_http(
    url: &str,
    args: &GenArgs,
    stream: &mut Clickstream,
    progress: &mut Progress,
    stop: &Shutdown,
) -> anyhow::Result<Sent> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("creating the HTTP client")?;
    let endpoint = format!("{url}/v1/events");
    let pace = Pace::new(args);
    let mut totals = Sent::default();
    let (mut sent, mut event) = (0u64, Vec::with_capacity(512));
    while let Some(due) = pace.due(sent, args.batch as u64) {
        if stop.is_stopping() {
            break;
        }
        let mut lines: Vec<Vec<u8>> = (sent..due)
            .map(|n| {
                stream.next_event(pace.time_ms(args.start, n), &mut event);
                event.clone()
            })
            .collect();
        // A 503 lists the events Kafka did not take: resend exactly those until they are in.
        while !lines.is_empty() && !stop.is_stopping() {
            let body: Vec<u8> = lines
                .iter()
                .flat_map(|l| [l.as_slice(), b"\n"].concat())
                .collect();
            let reply = client
                .post(&endpoint)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await;
            let (status, report) = match reply {
                Ok(reply) => (reply.status(), reply.bytes().await),
                Err(error) => {
                    tracing::warn!(%error, "cannot reach {endpoint}; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let report: serde_json::Value = report
                .ok()
                .and_then(|body| serde_json::from_slice(&body).ok())
                .with_context(|| format!("{endpoint} answered {status} without a JSON report"))?;
            let count = |key: &str| report[key].as_u64().unwrap_or(0);
            totals.events += count("accepted");
            totals.failed += count("rejected");
            match status.as_u16() {
                200 => lines.clear(),
                503 => {
                    let unwritten: Vec<usize> = (report["unwritten"].as_array())
                        .into_iter()
                        .flatten()
                        .filter_map(|p| Some(p["line"].as_u64()? as usize - 1))
                        .collect();
                    tracing::warn!(
                        "{}; resending {} events in 1s",
                        report["error"]["message"],
                        unwritten.len()
                    );
                    lines = unwritten
                        .into_iter()
                        .filter_map(|i| lines.get(i).cloned())
                        .collect();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ => bail!(
                    "{endpoint} refused the events ({status}): {}",
                    report["error"]["message"]
                ),
            }
        }
        sent = due;
        progress.tick(sent, totals.failed);
    }
    Ok(totals)
}

/// Progress on stderr: one updating line on a terminal, a line every 10 s otherwise.
#[derive(Debug)]
struct Progress {
    target: Target,
    enabled: bool,
    started: Instant,
    last: Instant,
    terminal: bool,
}

impl Progress {
    fn new(target: Target, enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            target,
            enabled,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, sent: u64, failed: u64) {
        let every = if self.terminal { 0.5 } else { 10.0 };
        if !self.enabled || self.last.elapsed().as_secs_f64() < every {
            return;
        }
        self.last = Instant::now();
        let rate = sent as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let target = match self.target {
            Target::Kafka => "Kafka",
            Target::Http => "HTTP",
        };
        let line = format!("gen: {sent} events to {target} ({rate:.0}/s), {failed} failed");
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r{line}   ")
        } else {
            writeln!(err, "{line}")
        };
    }

    fn finish(&self, sent: &Sent) {
        if !self.enabled {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = writeln!(err);
        }
        let _ = writeln!(
            err,
            "gen: done, {} events acknowledged in {seconds:.1}s ({:.0}/s), {} failed",
            sent.events,
            sent.events as f64 / seconds.max(1e-9),
            sent.failed
        );
    }
}

/// A small seeded generator (PCG-XSH-RR), so that a seed names one stream on every machine.
#[derive(Debug, Clone)]
struct Pcg(u64);

impl Pcg {
    fn next_u32(&mut self) -> u32 {
        let old = self.0;
        self.0 = old
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        xorshifted.rotate_right((old >> 59) as u32)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        let bits = (u64::from(self.next_u32()) << 21) ^ u64::from(self.next_u32());
        (bits & ((1 << 53) - 1)) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }

    /// Index `i` with probability `weights[i] / Σ weights`, from cumulative weights.
    fn pick(&mut self, cumulative: &[f64]) -> usize {
        let x = self.unit() * cumulative.last().copied().unwrap_or(0.0);
        cumulative
            .partition_point(|c| *c <= x)
            .min(cumulative.len() - 1)
    }
}

fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    weights
        .into_iter()
        .scan(0.0, |sum, w| {
            *sum += w;
            Some(*sum)
        })
        .collect()
}

const USERS: u64 = 200_000;
const PAGES: usize = 200;
const COUNTRIES: [(&str, f64); 12] = [
    ("US", 30.0),
    ("DE", 10.0),
    ("GB", 8.0),
    ("IN", 8.0),
    ("FR", 6.0),
    ("BR", 6.0),
    ("JP", 5.0),
    ("NL", 4.0),
    ("CA", 4.0),
    ("ES", 3.0),
    ("AU", 3.0),
    ("MX", 3.0),
];
const DEVICES: [(&str, f64, f64); 3] = [
    // name, share, median latency (ms)
    ("desktop", 55.0, 90.0),
    ("mobile", 40.0, 160.0),
    ("tablet", 5.0, 130.0),
];
const REFERRERS: [(&str, f64); 6] = [
    ("direct", 35.0),
    ("google", 35.0),
    ("newsletter", 10.0),
    ("twitter", 8.0),
    ("linkedin", 7.0),
    ("partner", 5.0),
];
const SECTIONS: [&str; 5] = ["docs", "blog", "product", "help", "changelog"];

#[derive(Debug, Clone)]
struct Session {
    id: u64,
    user: u64,
    country: usize,
    device: usize,
    referrer: usize,
    views: u32,
    remaining: u32,
}

/// The clickstream state: pages, the open sessions and the generator.
#[derive(Debug)]
struct Clickstream {
    rng: Pcg,
    seed: u64,
    late_fraction: f64,
    pages: Vec<String>,
    page_weights: Vec<f64>,
    countries: Vec<f64>,
    devices: Vec<f64>,
    referrers: Vec<f64>,
    sessions: Vec<Session>,
    next_session: u64,
    user: String,
}

impl Clickstream {
    fn new(seed: u64, late_fraction: f64) -> Self {
        let mut pages = vec!["/".to_owned(), "/pricing".to_owned(), "/signup".to_owned()];
        pages.extend(
            (pages.len()..PAGES).map(|i| format!("/{}/{}", SECTIONS[i % SECTIONS.len()], i)),
        );
        let mut stream = Self {
            rng: Pcg(seed ^ 0x5851_f42d_4c95_7f2d),
            seed,
            late_fraction,
            pages,
            page_weights: cumulative((1..=PAGES).map(|rank| (rank as f64).powf(-1.1))),
            countries: cumulative(COUNTRIES.map(|c| c.1)),
            devices: cumulative(DEVICES.map(|d| d.1)),
            referrers: cumulative(REFERRERS.map(|r| r.1)),
            sessions: Vec::new(),
            next_session: 0,
            user: String::new(),
        };
        stream.sessions = (0..256).map(|_| stream.new_session()).collect();
        stream
    }

    fn new_session(&mut self) -> Session {
        let user = self.rng.below(USERS as usize) as u64;
        // A user's country and device stay the same across sessions: draw them from a generator
        // seeded by the user.
        let mut by_user = Pcg(user.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let country = by_user.pick(&self.countries);
        let device = by_user.pick(&self.devices);
        self.next_session += 1;
        Session {
            id: self.next_session,
            user,
            country,
            device,
            referrer: self.rng.pick(&self.referrers),
            views: 0,
            // 1 to ~12 pages per session, most sessions short.
            remaining: 1 + (-(1.0 - self.rng.unit()).ln() * 3.0) as u32,
        }
    }

    /// Writes the next event (JSON) at time `now_ms` into `out`; returns its user id (the key).
    fn next_event(&mut self, now_ms: i64, out: &mut Vec<u8>) -> &str {
        let slot = self.rng.below(self.sessions.len());
        if self.sessions[slot].remaining == 0 {
            self.sessions[slot] = self.new_session();
        }
        let rng = &mut self.rng;
        let session = &mut self.sessions[slot];
        session.remaining -= 1;
        session.views += 1;
        let (device, _, median) = DEVICES[session.device];
        let latency = median * (0.6 * rng.normal()).exp();
        let bytes = (30_000.0 * (0.8 * rng.normal()).exp()) as i64;
        let mut time = now_ms;
        if rng.unit() < self.late_fraction {
            // A minute to two days late, log-uniform.
            time -= (60_000.0 * (rng.unit() * 2880f64.ln()).exp()) as i64;
        }
        let referrer = match session.views {
            1 => REFERRERS[session.referrer].0,
            _ => "internal",
        };
        let ts = DateTime::from_timestamp_millis(time)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        out.clear();
        let _ = write!(
            out,
            r#"{{"ts":"{ts}","user_id":"u{}","session_id":"s{:x}-{}""#,
            session.user, self.seed, session.id
        );
        if rng.unit() >= 0.02 {
            let page = &self.pages[rng.pick(&self.page_weights)];
            let _ = write!(out, r#","page":"{page}""#);
        }
        let _ = write!(
            out,
            r#","referrer":"{referrer}","country":"{}","device":"{device}","latency_ms":{latency:.2},"bytes":{bytes}}}"#,
            COUNTRIES[session.country].0
        );
        self.user.clear();
        let _ = write!(self.user, "u{}", session.user);
        &self.user
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tributary_schemas::decode::Decoder;
    use tributary_schemas::event::Value;

    use super::*;

    fn events(seed: u64, late: f64, n: usize) -> Vec<Vec<u8>> {
        let mut stream = Clickstream::new(seed, late);
        let start = 1_795_000_000_000;
        (0..n)
            .map(|i| {
                let mut out = Vec::new();
                stream.next_event(start + i as i64 * 10, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn a_seed_names_one_stream_of_valid_default_events() {
        assert_eq!(events(7, 0.1, 2000), events(7, 0.1, 2000));
        assert_ne!(events(7, 0.1, 2000), events(8, 0.1, 2000));
        let config = Config::from_sources(None, []).unwrap();
        let decoder = Decoder::new(config.events);
        let schema = decoder.schema().clone();
        let field = |name: &str| schema.field_index(name).unwrap();
        let (start, n) = (1_795_000_000_000i64, 50_000);
        let mut pages: HashMap<String, usize> = HashMap::new();
        let (mut late, mut no_page) = (0, 0);
        let mut users_per_session: HashMap<String, String> = HashMap::new();
        for (i, event) in events(3, 0.05, n).iter().enumerate() {
            let event = decoder.decode(event).unwrap_or_else(|e| panic!("{e}"));
            let on_time = start + i as i64 * 10;
            assert!(event.time_ms <= on_time && event.time_ms >= on_time - 2 * 86_400_000);
            late += usize::from(event.time_ms < on_time);
            let text = |name| match &event.values[field(name)] {
                Value::Str(s) => Some(s.to_string()),
                _ => None,
            };
            match text("page") {
                Some(page) => *pages.entry(page).or_default() += 1,
                None => no_page += 1,
            }
            for name in ["user_id", "session_id", "country", "device", "referrer"] {
                assert!(text(name).is_some(), "{name} missing");
            }
            assert!(matches!(event.values[field("latency_ms")], Value::Float(l) if l > 0.0));
            assert!(matches!(event.values[field("bytes")], Value::Int(b) if b >= 0));
            let user = text("user_id").unwrap();
            let owner = users_per_session
                .entry(text("session_id").unwrap())
                .or_insert_with(|| user.clone());
            assert_eq!(*owner, user, "a session belongs to one user");
        }
        let share = |count: usize| count as f64 / n as f64;
        assert!(
            (0.04..0.06).contains(&share(late)),
            "late share {}",
            share(late)
        );
        assert!(
            (0.015..0.025).contains(&share(no_page)),
            "no page {}",
            share(no_page)
        );
        // Power law: the top page far above the median one, and the tail still visited.
        let mut counts: Vec<usize> = pages.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        assert!(counts[0] > 20 * counts[counts.len() / 2], "{counts:?}");
        assert!(counts.len() > 150, "{} pages visited", counts.len());
        assert!(
            users_per_session.len() > 5000,
            "{} sessions",
            users_per_session.len()
        );
    }
}
