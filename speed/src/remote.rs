//! A serving node's speed layer when the speed layer is split by partitions (issue 32,
//! ARCHITECTURE.md §8): [`RemoteSpeed`] reads no Kafka. It keeps a replica of every speed node's
//! states, refreshed every `[serving] speed_poll` over `GET /v1/speed/{definition}` (see
//! [`crate::export`]), and answers [`SpeedView::pin`] from them, one node per partition.
//!
//! What a pin may take from a node, partition by partition:
//! - the node answered within `[serving] speed_node_timeout` and reads the partition;
//! - its states start at or below the pinned version's boundary (`held_from <= from`): a node that
//!   already dropped epochs the version needs (it loaded a newer version first) cannot give them.
//!   Nodes keep covered epochs `[serving] speed_drop_after` after a swap so that this is rare; when
//!   it happens the partition is missing from the answer and the serving node checks for the newer
//!   version at once ([`RemoteSpeed::behind`]).
//!
//! A partition no node can give is in the pin's `unread`: the answer says `complete: false` and
//! names it. The topic's partitions come from Kafka's metadata (and every node's list), so a
//! partition whose node never answered is still known to be missing.
//!
//! A replica is exactly one node's states at one instant per view: the export reads its head and
//! parts under one lock, sealed parts never change (only those the replica lacks are sent) and
//! open parts are replaced whole at every poll. A node whose process or restart count changed
//! (its sealed parts may be of another log) is read again from nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use rdkafka::consumer::BaseConsumer;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tributary_schemas::blame::chain;
use tributary_schemas::config::{Config, ViewDef};
use tributary_schemas::kafka::{positioned_consumer, topic_partitions};
use tributary_schemas::lake::Boundary;
use tributary_schemas::layers::StatusSource;
use tributary_schemas::layers::prometheus::Exposition;
use tributary_schemas::layers::speed::{
    PartitionHealth, SpeedPart, SpeedPin, SpeedSnapshot, SpeedView, expose_progress, format_have,
};
use tributary_schemas::seam::first_speed_epoch;
use tributary_schemas::shutdown::Shutdown;

use crate::export::{ExportError, ExportHead, decode};

/// How often the topic's partitions are asked for again once known.
const METADATA_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// The speed nodes' base URLs (`[serving] speed_nodes`).
    pub nodes: Vec<String>,
    pub poll: Duration,
    pub node_timeout: Duration,
    /// Sent as a bearer token when not empty.
    pub token: String,
    pub ready_max_lag: u64,
    pub epoch_size: u64,
    pub brokers: String,
    pub topic: String,
}

impl RemoteSettings {
    pub fn from_config(config: &Config) -> Self {
        let serving = &config.serving;
        Self {
            nodes: serving.speed_nodes.clone(),
            poll: serving.speed_poll,
            node_timeout: serving.speed_node_timeout,
            token: serving.speed_token.clone(),
            ready_max_lag: serving.ready_max_lag,
            epoch_size: config.batch.epoch_size,
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.topic.clone(),
        }
    }
}

/// One view definition the serving node reads from the nodes.
#[derive(Debug, Clone)]
struct Polled {
    hash: String,
    schema: SchemaRef,
    /// Epochs below this are covered by every version the serving node may still pin
    /// ([`SpeedView::drop_below`]): not kept.
    floor: Boundary,
}

/// One node's states of one view, as of its last answer.
#[derive(Debug, Default)]
struct Replica {
    next_offsets: BTreeMap<i32, i64>,
    held_from: Boundary,
    parts: BTreeMap<(i32, i64), SpeedPart>,
}

#[derive(Debug, Default)]
struct NodeState {
    /// When the node last answered a poll of every view.
    answered: Option<Instant>,
    /// Why the last poll failed, or which view the node does not have.
    error: Option<String>,
    /// `(instance, restarts)` of the node's states the replicas hold.
    identity: Option<(u64, u64)>,
    /// Bumped whenever the replicas are forgotten: an answer to a request made before is dropped.
    resets: u64,
    ready: bool,
    events_total: u64,
    malformed_total: u64,
    partitions: BTreeMap<i32, PartitionHealth>,
    /// Per speed index.
    replicas: BTreeMap<usize, Replica>,
}

impl NodeState {
    fn fresh(&self, now: Instant, timeout: Duration) -> bool {
        self.answered
            .is_some_and(|at| now.duration_since(at) < timeout)
    }

    fn forget(&mut self) {
        self.replicas.clear();
        self.resets += 1;
    }
}

#[derive(Debug)]
struct Node {
    url: String,
    state: RwLock<NodeState>,
    failed_polls: AtomicU64,
}

impl Node {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, NodeState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, NodeState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why one poll of one view failed.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot reach the speed node")]
    Http(#[from] reqwest::Error),
    #[error("the speed node answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the speed node's answer is not a speed export")]
    Export(#[from] ExportError),
}

/// What one poll of one view brought.
enum Polled1 {
    States(Box<ExportHead>, Vec<SpeedPart>),
    /// The node has no view of that definition (another configuration, or it switched
    /// definitions before or after this node).
    Unknown,
}

/// The speed layer of a serving node that reads speed nodes (see the module docs).
#[derive(Debug)]
pub struct RemoteSpeed {
    settings: RemoteSettings,
    client: reqwest::Client,
    /// Per speed index (`Loaded::speed_views`); `None` once retired.
    views: RwLock<Vec<Option<Polled>>>,
    nodes: Vec<Node>,
    /// The topic's partitions, from Kafka's metadata (empty until it answered).
    topic_partitions: RwLock<Vec<i32>>,
    /// Bumped whenever sealed parts a cache may hold could differ: a replica forgotten or a
    /// partition taken from another node than before.
    restarts: AtomicU64,
    /// Per partition, the node the last pin took it from.
    served_by: Mutex<BTreeMap<i32, usize>>,
    behind: Arc<Notify>,
}

impl RemoteSpeed {
    /// Reads the views `views` (by speed index) from `settings.nodes` once [`Self::run`] runs.
    pub fn new(settings: RemoteSettings, views: &[ViewDef]) -> Self {
        let polled = (views.iter())
            .map(|view| {
                Some(Polled {
                    hash: view.definition_hash(),
                    schema: view.state_schema(),
                    floor: Boundary::default(),
                })
            })
            .collect();
        let nodes = (settings.nodes.iter())
            .map(|url| Node {
                url: url.trim_end_matches('/').to_owned(),
                state: RwLock::default(),
                failed_polls: AtomicU64::new(0),
            })
            .collect();
        Self {
            settings,
            client: reqwest::Client::new(),
            views: RwLock::new(polled),
            nodes,
            topic_partitions: RwLock::default(),
            restarts: AtomicU64::new(0),
            served_by: Mutex::default(),
            behind: Arc::new(Notify::new()),
        }
    }

    /// Notified when a node holds less than a pinned version needs: it has loaded a newer batch
    /// version, which the serving node should check for now rather than at its next refresh.
    pub fn behind(&self) -> Arc<Notify> {
        Arc::clone(&self.behind)
    }

    /// Polls every node every `poll` and asks Kafka for the topic's partitions, until `stop`.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.nodes.len() {
            let me = Arc::clone(&self);
            tasks.spawn(async move { me.poll_node(index).await });
        }
        let me = Arc::clone(&self);
        tasks.spawn(async move { me.follow_partitions().await });
        stop.stopped().await;
        tasks.abort_all();
    }

    async fn follow_partitions(&self) {
        let (brokers, topic) = (self.settings.brokers.clone(), self.settings.topic.clone());
        loop {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            let asked = tokio::task::spawn_blocking(move || -> Result<Vec<i32>, String> {
                let consumer: BaseConsumer = positioned_consumer(&brokers, "serving", &topic)
                    .create()
                    .map_err(|e| chain(&e))?;
                topic_partitions(&consumer, &topic).map_err(|e| chain(&e))
            })
            .await;
            let wait = match asked {
                Ok(Ok(partitions)) => {
                    *self
                        .topic_partitions
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = partitions;
                    METADATA_INTERVAL
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot learn the topic's partitions from Kafka (answers know those the speed nodes name)");
                    Duration::from_secs(2)
                }
                Err(_) => Duration::from_secs(2),
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn poll_node(&self, index: usize) {
        let node = &self.nodes[index];
        let mut ticks = tokio::time::interval(self.settings.poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = false;
        loop {
            ticks.tick().await;
            let outcome = self.poll_views(node).await;
            let mut state = node.write();
            match outcome {
                Ok(unknown) => {
                    state.answered = Some(Instant::now());
                    state.error = (!unknown.is_empty()).then(|| {
                        format!(
                            "the node aggregates no view of definition {unknown:?} (is its configuration the same as this node's?)"
                        )
                    });
                    if !was_up {
                        tracing::info!(node = node.url, partitions = ?state.partitions.keys().collect::<Vec<_>>(), "speed node answering");
                    }
                    was_up = true;
                }
                Err(error) => {
                    node.failed_polls.fetch_add(1, Ordering::Relaxed);
                    let error = chain(&error);
                    if was_up || state.error.as_ref() != Some(&error) {
                        tracing::warn!(node = node.url, %error, "cannot read a speed node's states (its partitions are missing from answers once it has not answered for speed_node_timeout)");
                    }
                    state.error = Some(error);
                    was_up = false;
                }
            }
        }
    }

    /// Polls every view of one node; returns the definitions it does not have.
    async fn poll_views(&self, node: &Node) -> Result<Vec<String>, PollError> {
        let views: Vec<(usize, Polled)> = (self.views().iter().enumerate())
            .filter_map(|(index, polled)| Some((index, polled.clone()?)))
            .collect();
        let mut unknown = Vec::new();
        for (index, polled) in views {
            // A node whose process or states changed answers the sealed parts the replica held as
            // if it had them: asked again with nothing held.
            for _ in 0..2 {
                let (have, resets) = {
                    let state = node.read();
                    let have: BTreeSet<(i32, i64)> = (state.replicas.get(&index))
                        .map(|r| (r.parts.iter()).filter(|(_, p)| p.sealed).map(|(&k, _)| k))
                        .into_iter()
                        .flatten()
                        .collect();
                    (have, state.resets)
                };
                match self.fetch(node, &polled, &have).await? {
                    Polled1::Unknown => {
                        node.write().replicas.remove(&index);
                        unknown.push(polled.hash.clone());
                        break;
                    }
                    Polled1::States(head, parts) => {
                        if self.apply(node, index, &head, parts, resets, !have.is_empty()) {
                            break;
                        }
                    }
                }
            }
        }
        Ok(unknown)
    }

    async fn fetch(
        &self,
        node: &Node,
        polled: &Polled,
        have: &BTreeSet<(i32, i64)>,
    ) -> Result<Polled1, PollError> {
        let url = format!("{}/v1/speed/{}", node.url, polled.hash);
        let mut request = (self.client.get(url))
            .query(&[("have", format_have(have))])
            .timeout(self.settings.node_timeout);
        if !self.settings.token.is_empty() {
            request = request.bearer_auth(&self.settings.token);
        }
        let response = request.send().await?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Polled1::Unknown);
        }
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned();
            return Err(PollError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let bytes = response.bytes().await?;
        let (head, parts) = decode(&bytes, &polled.schema)?;
        Ok(Polled1::States(Box::new(head), parts))
    }

    /// Applies one answer to view `index`'s replica of `node`. Returns false when the answer
    /// must be asked for again with nothing held (the node's states changed under what it was
    /// told the replica holds); an answer to a request made before the replicas were forgotten
    /// is dropped (the next poll asks again).
    fn apply(
        &self,
        node: &Node,
        index: usize,
        head: &ExportHead,
        parts: Vec<SpeedPart>,
        resets: u64,
        had: bool,
    ) -> bool {
        let floor = match self.views().get(index) {
            Some(Some(polled)) => polled.floor.clone(),
            _ => return true, // retired meanwhile
        };
        let mut state = node.write();
        if state.resets != resets {
            return true;
        }
        let identity = (head.instance, head.restarts);
        if state.identity != Some(identity) {
            if state.identity.is_some() {
                tracing::info!(
                    node = node.url,
                    "a speed node restarted or re-read the log: its states are read again"
                );
                self.restarts.fetch_add(1, Ordering::SeqCst);
            }
            state.forget();
            state.identity = Some(identity);
            if had {
                return false;
            }
        }
        state.ready = head.ready;
        state.events_total = head.events_total;
        state.malformed_total = head.malformed_total;
        state.partitions = head.partitions.clone();
        let epoch_size = self.settings.epoch_size;
        let replica = state.replicas.entry(index).or_default();
        replica.next_offsets = head.next_offsets.clone();
        replica.held_from = head.held_from.clone();
        replica.parts.retain(|&(partition, epoch), part| {
            part.sealed && epoch >= first_speed_epoch(floor.get(partition), epoch_size)
        });
        for part in parts {
            if part.epoch >= first_speed_epoch(floor.get(part.partition), epoch_size) {
                replica.parts.insert((part.partition, part.epoch), part);
            }
        }
        true
    }

    fn views(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<Polled>>> {
        self.views.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic's partitions: Kafka's, and every one a node reads.
    fn known_partitions(&self) -> BTreeSet<i32> {
        let mut known: BTreeSet<i32> = (self.topic_partitions.read())
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default();
        for node in &self.nodes {
            known.extend(node.read().partitions.keys());
        }
        known
    }

    /// Per partition, the up node reading it furthest along (for health and readiness).
    fn best_nodes(&self, now: Instant) -> BTreeMap<i32, (usize, PartitionHealth, bool)> {
        let mut best: BTreeMap<i32, (usize, PartitionHealth, bool)> = BTreeMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let state = node.read();
            if !state.fresh(now, self.settings.node_timeout) {
                continue;
            }
            for (&partition, &health) in &state.partitions {
                let better = best
                    .get(&partition)
                    .is_none_or(|(_, held, _)| health.next > held.next);
                if better {
                    best.insert(partition, (index, health, state.ready));
                }
            }
        }
        best
    }

    /// The speed nodes (for `/v1/status`).
    fn nodes_status(&self, now: Instant) -> Vec<Value> {
        (self.nodes.iter())
            .map(|node| {
                let state = node.read();
                json!({
                    "url": node.url,
                    "up": state.fresh(now, self.settings.node_timeout),
                    "answered_ms_ago": state.answered.map(|at| now.duration_since(at).as_millis() as u64),
                    "error": state.error,
                    "ready": state.ready,
                    "partitions": state.partitions.keys().collect::<Vec<_>>(),
                    "events": state.events_total,
                    "malformed": state.malformed_total,
                    "failed_polls": node.failed_polls.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

impl SpeedView for RemoteSpeed {
    fn pin(&self, view: usize, from: &Boundary) -> Result<SpeedPin, ArrowError> {
        let now = Instant::now();
        let known = self.known_partitions();
        let epoch_size = self.settings.epoch_size;
        let mut pin = SpeedPin {
            snapshot: SpeedSnapshot::default(),
            next_offsets: BTreeMap::new(),
            restarts: 0,
            partitions: BTreeMap::new(),
            unread: Vec::new(),
            nodes: BTreeMap::new(),
        };
        let mut chosen: BTreeMap<i32, usize> = BTreeMap::new();
        let mut behind = false;
        let guards: Vec<_> = self.nodes.iter().map(Node::read).collect();
        for &partition in &known {
            let mut best: Option<(usize, i64)> = None;
            for (index, state) in guards.iter().enumerate() {
                if !state.fresh(now, self.settings.node_timeout)
                    || !state.partitions.contains_key(&partition)
                {
                    continue;
                }
                let Some(replica) = state.replicas.get(&view) else {
                    continue;
                };
                let Some(&next) = replica.next_offsets.get(&partition) else {
                    continue;
                };
                if replica.held_from.get(partition) > from.get(partition) {
                    behind = true;
                    continue;
                }
                if best.is_none_or(|(_, furthest)| next > furthest) {
                    best = Some((index, next));
                }
            }
            let Some((index, next)) = best else {
                pin.unread.push(partition);
                continue;
            };
            let state = &guards[index];
            let replica = &state.replicas[&view];
            let first = first_speed_epoch(from.get(partition), epoch_size);
            for (_, part) in replica
                .parts
                .range((partition, first)..=(partition, i64::MAX))
            {
                pin.snapshot.push(part.clone());
            }
            pin.next_offsets.insert(partition, next);
            pin.partitions
                .insert(partition, state.partitions[&partition]);
            pin.nodes.insert(partition, self.nodes[index].url.clone());
            chosen.insert(partition, index);
        }
        drop(guards);
        if behind {
            self.behind.notify_one();
        }
        let mut served_by = self.served_by.lock().unwrap_or_else(|e| e.into_inner());
        let moved =
            (chosen.iter()).any(|(p, node)| served_by.get(p).is_some_and(|was| was != node));
        if moved {
            self.restarts.fetch_add(1, Ordering::SeqCst);
        }
        served_by.extend(chosen);
        pin.restarts = self.restarts.load(Ordering::SeqCst);
        Ok(pin)
    }

    fn drop_below(&self, view: usize, boundary: &Boundary) {
        let floor = {
            let mut views = self.views.write().unwrap_or_else(|e| e.into_inner());
            let Some(Some(polled)) = views.get_mut(view) else {
                return;
            };
            for (&partition, &offset) in &boundary.0 {
                let floor = polled.floor.0.entry(partition).or_default();
                *floor = (*floor).max(offset);
            }
            polled.floor.clone()
        };
        let epoch_size = self.settings.epoch_size;
        for node in &self.nodes {
            if let Some(replica) = node.write().replicas.get_mut(&view) {
                replica.parts.retain(|&(partition, epoch), _| {
                    epoch >= first_speed_epoch(floor.get(partition), epoch_size)
                });
            }
        }
    }

    fn restart_at(&self, boundary: Boundary) {
        {
            let mut views = self.views.write().unwrap_or_else(|e| e.into_inner());
            for polled in views.iter_mut().flatten() {
                polled.floor = boundary.clone();
            }
        }
        // Parts below the old floors are gone here; the nodes still hold what they hold.
        for node in &self.nodes {
            node.write().forget();
        }
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    fn retire(&self, view: usize) {
        if let Some(polled) = self
            .views
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(view)
        {
            *polled = None;
        }
        for node in &self.nodes {
            node.write().replicas.remove(&view);
        }
    }

    fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    fn ready(&self) -> bool {
        let known = self.known_partitions();
        let best = self.best_nodes(Instant::now());
        !known.is_empty() && (known.iter()).all(|p| best.get(p).is_some_and(|&(_, _, ready)| ready))
    }

    fn partitions(&self) -> BTreeMap<i32, PartitionHealth> {
        (self.best_nodes(Instant::now()).into_iter())
            .map(|(partition, (_, health, _))| (partition, health))
            .collect()
    }

    fn ready_max_lag(&self) -> u64 {
        self.settings.ready_max_lag
    }

    fn unread(&self) -> Vec<i32> {
        let best = self.best_nodes(Instant::now());
        (self.known_partitions().into_iter())
            .filter(|p| !best.contains_key(p))
            .collect()
    }
}

impl StatusSource for RemoteSpeed {
    fn status(&self) -> Value {
        let now = Instant::now();
        let best = self.best_nodes(now);
        let partitions: Vec<Value> = (best.iter())
            .map(|(&partition, (node, p, _))| {
                json!({
                    "partition": partition,
                    "node": self.nodes[*node].url,
                    "start": p.start,
                    "next": p.next,
                    "high_watermark": p.high_watermark,
                    "lag": p.lag(),
                    "stalled": p.stalled,
                })
            })
            .collect();
        let events: u64 = (self.nodes.iter())
            .map(Node::read)
            .filter(|state| state.fresh(now, self.settings.node_timeout))
            .map(|state| state.events_total)
            .sum();
        json!({
            "mode": "speed_nodes",
            "ready": SpeedView::ready(self),
            "restarts": SpeedView::restarts(self),
            "ready_max_lag": self.settings.ready_max_lag,
            "events": events,
            "missing_partitions": SpeedView::unread(self),
            "nodes": self.nodes_status(now),
            "partitions": partitions,
        })
    }

    fn metrics(&self, out: &mut Exposition) {
        let now = Instant::now();
        out.family(
            "tributary_speed_node_up",
            "gauge",
            "1 when the speed node answered within speed_node_timeout",
        );
        for node in &self.nodes {
            let up = node.read().fresh(now, self.settings.node_timeout);
            out.sample(
                "tributary_speed_node_up",
                &[("node", node.url.clone())],
                f64::from(u8::from(up)),
            );
        }
        out.family(
            "tributary_speed_node_failed_polls_total",
            "counter",
            "polls of a speed node that failed",
        );
        for node in &self.nodes {
            out.sample(
                "tributary_speed_node_failed_polls_total",
                &[("node", node.url.clone())],
                node.failed_polls.load(Ordering::Relaxed) as f64,
            );
        }
        out.gauge(
            "tributary_speed_missing_partitions",
            "the topic's partitions no speed node up serves",
            SpeedView::unread(self).len() as f64,
        );
        expose_progress(out, &SpeedView::partitions(self), SpeedView::ready(self));
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::RecordBatch;

    use super::*;

    fn remote() -> RemoteSpeed {
        let config = Config::from_sources(None, []).unwrap();
        let settings = RemoteSettings {
            nodes: vec!["http://a".to_owned(), "http://b/".to_owned()],
            epoch_size: 100,
            node_timeout: Duration::from_secs(3),
            ..RemoteSettings::from_config(&config)
        };
        let remote = RemoteSpeed::new(settings, &config.views[..1]);
        *remote.topic_partitions.write().unwrap() = vec![0, 1, 2];
        remote
    }

    fn head(instance: u64, next: &[(i32, i64)], held_from: &[(i32, i64)]) -> ExportHead {
        let health = |next: i64| PartitionHealth {
            start: 0,
            next,
            high_watermark: next,
            stalled: false,
            missing: None,
        };
        ExportHead {
            definition_hash: String::new(),
            instance,
            restarts: 0,
            ready: true,
            events_total: 0,
            malformed_total: 0,
            next_offsets: next.iter().copied().collect(),
            partitions: next.iter().map(|&(p, n)| (p, health(n))).collect(),
            held_from: Boundary(held_from.iter().copied().collect()),
            events: 0,
            newest_event_ms: None,
            parts: Vec::new(),
        }
    }

    /// Parts of `partition`, one per epoch in `epochs`, each counting `epoch` events.
    fn parts(remote: &RemoteSpeed, partition: i32, epochs: &[(i64, bool)]) -> Vec<SpeedPart> {
        let schema = remote.views()[0].as_ref().unwrap().schema.clone();
        (epochs.iter())
            .map(|&(epoch, sealed)| SpeedPart {
                partition,
                epoch,
                sealed,
                batch: RecordBatch::new_empty(schema.clone()),
                events: epoch as u64,
                newest_event_ms: Some(epoch),
            })
            .collect()
    }

    fn answer(
        remote: &RemoteSpeed,
        node: usize,
        head: &ExportHead,
        parts: Vec<SpeedPart>,
        had: bool,
    ) -> bool {
        let resets = remote.nodes[node].read().resets;
        let applied = remote.apply(&remote.nodes[node], 0, head, parts, resets, had);
        remote.nodes[node].write().answered = Some(Instant::now());
        applied
    }

    fn epochs(pin: &SpeedPin) -> Vec<(i32, i64)> {
        pin.snapshot
            .parts
            .iter()
            .map(|p| (p.partition, p.epoch))
            .collect()
    }

    #[test]
    fn a_pin_takes_each_partition_from_a_node_holding_it_from_the_boundary_and_names_the_rest() {
        let remote = remote();
        let a = parts(&remote, 0, &[(1, true), (2, true), (3, false)]);
        answer(&remote, 0, &head(7, &[(0, 350)], &[(0, 100)]), a, false);
        let b = parts(&remote, 1, &[(5, true), (6, false)]);
        answer(&remote, 1, &head(8, &[(1, 650)], &[(1, 500)]), b, false);

        // Partition 2 is read by no node; B's states start above the boundary on partition 1.
        let pin = remote.pin(0, &Boundary([(0, 200), (1, 0)].into())).unwrap();
        assert_eq!(epochs(&pin), [(0, 2), (0, 3)]);
        assert_eq!(pin.unread, [1, 2]);
        assert_eq!(pin.nodes, BTreeMap::from([(0, "http://a".to_owned())]));
        assert_eq!(pin.next_offsets, BTreeMap::from([(0, 350)]));
        assert_eq!(
            (pin.snapshot.events, pin.snapshot.newest_event_ms),
            (5, Some(3))
        );
        assert!(remote.unread().contains(&2));

        // At a boundary B holds, B serves partition 1.
        let pin = remote
            .pin(0, &Boundary([(0, 100), (1, 500)].into()))
            .unwrap();
        assert_eq!(epochs(&pin), [(0, 1), (0, 2), (0, 3), (1, 5), (1, 6)]);
        assert_eq!(pin.unread, [2]);
        assert_eq!(pin.nodes[&1], "http://b");

        // The next answer replaces the open parts and adds the sealed ones it sends.
        let a = parts(&remote, 0, &[(3, true), (4, false)]);
        answer(&remote, 0, &head(7, &[(0, 420)], &[(0, 100)]), a, true);
        let pin = remote
            .pin(0, &Boundary([(0, 100), (1, 500)].into()))
            .unwrap();
        assert_eq!(
            epochs(&pin),
            [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6)]
        );
        assert!(pin.snapshot.parts[2].sealed);

        // A new version here: what it covers goes, including parts a node sends again.
        remote.drop_below(0, &Boundary([(0, 300)].into()));
        let a = parts(&remote, 0, &[(2, true), (4, false)]);
        answer(&remote, 0, &head(7, &[(0, 420)], &[(0, 100)]), a, true);
        let pin = remote
            .pin(0, &Boundary([(0, 300), (1, 500)].into()))
            .unwrap();
        assert_eq!(epochs(&pin), [(0, 3), (0, 4), (1, 5), (1, 6)]);

        // A node that stopped answering serves nothing.
        remote.nodes[1].write().answered = Some(Instant::now() - Duration::from_secs(10));
        let pin = remote
            .pin(0, &Boundary([(0, 300), (1, 500)].into()))
            .unwrap();
        assert_eq!(pin.unread, [1, 2]);
        assert!(!SpeedView::ready(&remote));
    }

    #[test]
    fn a_node_whose_process_changed_is_read_again_from_nothing() {
        let remote = remote();
        let a = parts(&remote, 0, &[(1, true), (2, false)]);
        answer(&remote, 0, &head(7, &[(0, 250)], &[]), a, false);
        let before = SpeedView::restarts(&remote);
        // A new process answers without the sealed part the replica said it held.
        let a = parts(&remote, 0, &[(2, false)]);
        assert!(!answer(&remote, 0, &head(9, &[(0, 260)], &[]), a, true));
        assert!(remote.nodes[0].read().replicas.is_empty());
        assert_eq!(SpeedView::restarts(&remote), before + 1);
        // Asked again with nothing held, it sends everything.
        let a = parts(&remote, 0, &[(1, true), (2, false)]);
        assert!(answer(&remote, 0, &head(9, &[(0, 260)], &[]), a, false));
        let pin = remote.pin(0, &Boundary::default()).unwrap();
        assert_eq!(epochs(&pin), [(0, 1), (0, 2)]);
        // An answer to a request made before the replicas were forgotten is dropped.
        let resets = remote.nodes[0].read().resets;
        remote.restart_at(Boundary::default());
        let a = parts(&remote, 0, &[(2, false)]);
        assert!(remote.apply(
            &remote.nodes[0],
            0,
            &head(9, &[(0, 270)], &[]),
            a,
            resets,
            true
        ));
        assert!(remote.nodes[0].read().replicas.is_empty());
    }
}
