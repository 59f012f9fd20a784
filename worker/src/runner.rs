//! Runs push tasks on this worker.
//!
//! The leader's scheduler assigns tasks to workers (`assign/{worker}/...`); each worker
//! follows its own assignments and keeps, per task, a runner that waits for the stream in
//! its local [`Hub`] (ingested here, or relayed here by the ingest worker).
//!
//! A task pushes to each of its destinations in a session of its own (one hub
//! subscription each); a change of its destinations while it runs starts and stops only
//! the sessions of the destinations that changed.
//!
//! A runner's life: wait for the stream (`ready`) → session: connect (`ready`) → sending
//! (`started`) → on failure `error` + backoff + reconnect from the GOP cache → the source
//! ends (`stopped`, `sequence`+1) → `ready` again, waiting for the next publish.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{Assignment, SourceRef, TaskSpec, TaskState};
use pushcast_proto::v1::ApplyAssignmentsRequest;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Store, WatchEvent};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::hub::{Hub, QueueLimits, StreamKey, Subscription, TryRecvError};
use crate::live::{LiveTasks, TaskKey, TaskLive};
use crate::push::{self, FrameSource, PushConfig, SessionEnd, SessionEvent};
use crate::status::StatusWriter;
use crate::tracks;
use pushcast_media::Frame;
use pushcast_retry::{Backoff, BackoffConfig};

/// What every runner shares.
#[derive(Clone)]
pub struct Runner {
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    pub live: LiveTasks,
    pub status: StatusWriter,
    pub push: PushConfig,
    pub backoff: BackoffConfig,
    pub queue: QueueLimits,
    pub node_id: String,
    /// True while the worker is fenced: no session may run.
    pub fence: watch::Receiver<bool>,
}

struct Running {
    /// The assignment, less its spec (which `spec` holds: one copy per task).
    source: SourceRef,
    generation: u64,
    cancel: CancellationToken,
    /// The running task follows changes of its spec that keep its source (updatePush):
    /// only the destinations that changed start or stop.
    spec: watch::Sender<TaskSpec>,
}

/// Assignment updates pushed by the leader over gRPC (`WorkerService.ApplyAssignments`),
/// with a reply channel for how many changed something.
pub type Updates = mpsc::Receiver<(ApplyAssignmentsRequest, oneshot::Sender<u32>)>;

/// The assignments this worker runs, keyed by their store key.
struct Assigned<'a> {
    runner: &'a Arc<Runner>,
    shutdown: &'a CancellationToken,
    running: HashMap<String, Running>,
}

impl Assigned<'_> {
    /// Starts (or restarts) an assignment unless the same one, or a newer generation of
    /// it, already runs: etcd's watch and the gRPC path may deliver it in either order.
    /// A newer generation of the same task from the same source (an `updatePush`) is
    /// handed to the running task instead: only its changed destinations start or stop.
    fn put(&mut self, key: String, a: Assignment) -> bool {
        if let Some(cur) = self.running.get_mut(&key) {
            let same = cur.generation == a.generation
                && cur.source == a.source
                && *cur.spec.borrow() == a.spec;
            if same || cur.generation > a.generation {
                return false;
            }
            if cur.source == a.source && same_source(&cur.spec.borrow(), &a.spec) {
                tracing::info!(id = %a.spec.id, generation = a.generation, "task updated in place");
                cur.generation = a.generation;
                cur.spec.send_replace(a.spec);
                return true;
            }
        }
        if let Some(old) = self.running.remove(&key) {
            old.cancel.cancel();
        }
        let r = self.runner.spawn(a, self.shutdown);
        self.running.insert(key, r);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        match self.running.remove(key) {
            Some(r) => {
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Makes `set` the whole set.
    fn replace_all(&mut self, set: HashMap<String, Assignment>) -> u32 {
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|k| !set.contains_key(*k))
            .cloned()
            .collect();
        let mut changed = 0;
        for k in stale {
            changed += u32::from(self.delete(&k));
        }
        for (k, a) in set {
            changed += u32::from(self.put(k, a));
        }
        changed
    }

    fn apply(&mut self, req: ApplyAssignmentsRequest) -> u32 {
        let mut set = HashMap::new();
        let mut changed = 0;
        for u in req.updates {
            if u.assignment.is_empty() {
                changed += u32::from(self.delete(&u.key));
            } else if let Ok(a) = serde_json::from_slice::<Assignment>(&u.assignment) {
                if req.full {
                    set.insert(u.key, a);
                } else {
                    changed += u32::from(self.put(u.key, a));
                }
            }
        }
        if req.full {
            changed += self.replace_all(set);
        }
        changed
    }
}

impl Runner {
    /// Follows this worker's assignments until `shutdown`: from the store (list, then
    /// watch from the listing's revision; on a broken watch, list again) and from the
    /// leader's gRPC updates. Applying an assignment that already runs is a no-op.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, mut updates: Updates) {
        let prefix = keys::assignments_of(&self.node_id);
        let mut assigned = Assigned {
            runner: &self,
            shutdown: &shutdown,
            running: HashMap::new(),
        };
        while !shutdown.is_cancelled() {
            let listing = match self.store.list(&prefix).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list assignments; sessions keep running, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        u = updates.recv() => {
                            if let Some((req, reply)) = u {
                                let _ = reply.send(assigned.apply(req));
                            }
                            continue;
                        }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let set = listing
                .kvs
                .iter()
                .filter_map(|kv| Some((kv.key.clone(), serde_json::from_slice(&kv.value).ok()?)))
                .collect();
            assigned.replace_all(set);
            let mut events = match self.store.watch(&prefix, listing.revision + 1).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch assignments; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    u = updates.recv() => {
                        if let Some((req, reply)) = u {
                            let _ = reply.send(assigned.apply(req));
                        }
                        continue;
                    }
                    ev = events.next() => ev,
                };
                match ev {
                    Some(Ok(WatchEvent::Put(kv))) => {
                        if let Ok(a) = serde_json::from_slice::<Assignment>(&kv.value) {
                            assigned.put(kv.key, a);
                        }
                    }
                    Some(Ok(WatchEvent::Delete { key, .. })) => {
                        assigned.delete(&key);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "assignment watch broke; listing again");
                        break;
                    }
                    None => break,
                }
            }
        }
        for r in assigned.running.values() {
            r.cancel.cancel();
        }
    }

    fn spawn(self: &Arc<Self>, assignment: Assignment, shutdown: &CancellationToken) -> Running {
        let cancel = shutdown.child_token();
        let Assignment {
            spec,
            source,
            generation,
        } = assignment;
        let span = tracing::info_span!(
            "task",
            id = %spec.id,
            app = %spec.app,
            stream = %spec.stream.name,
            generation
        );
        // The task joins the trace of the API call that created it, and leaves a short
        // span there at once (the task span itself is exported when the task ends).
        if let Some(tp) = &spec.trace_parent {
            let carrier =
                std::collections::HashMap::from([("traceparent".to_string(), tp.clone())]);
            pushcast_runtime::logging::set_parent(&span, &carrier);
            let assigned = tracing::info_span!("assigned", id = %spec.id, generation);
            pushcast_runtime::logging::set_parent(&assigned, &carrier);
            assigned.in_scope(|| tracing::debug!("task assigned to this worker"));
        }
        let (tx, rx) = watch::channel(spec);
        tokio::spawn(Arc::clone(self).task(rx, cancel.clone()).instrument(span));
        Running {
            source,
            generation,
            cancel,
            spec: tx,
        }
    }

    /// One task's whole life on this worker.
    async fn task(
        self: Arc<Self>,
        mut spec_rx: watch::Receiver<TaskSpec>,
        cancel: CancellationToken,
    ) {
        // Only what the whole life needs stays in this (long-lived) future: not the spec.
        let (key, stream) = {
            let spec = spec_rx.borrow_and_update();
            let stream = StreamKey::new(
                spec.vhost.clone(),
                spec.app.clone(),
                spec.stream.name.clone(),
            );
            (task_key(&spec), stream)
        };
        // Totals and `sequence` continue from the last status, whichever worker wrote it.
        let previous = match self.store.get(&keys::status(&key.0, &key.1, &key.2)).await {
            Ok(Some(kv)) => serde_json::from_slice(&kv.value).ok(),
            _ => None,
        };
        let live = Arc::new(TaskLive::new(
            key.clone(),
            &self.node_id,
            previous,
            &spec_rx.borrow(),
        ));
        let mut fence = self.fence.clone();
        let mut spec_open = true;
        loop {
            // A fenced worker runs no session (see `lease`).
            if !wait_unfenced(&mut fence, &cancel).await {
                break;
            }
            let sub = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wait_fenced(&mut fence) => continue,
                r = spec_rx.changed(), if spec_open => {
                    match r {
                        Ok(()) => live.set_destinations(&spec_rx.borrow_and_update()),
                        Err(_) => spec_open = false,
                    }
                    continue;
                }
                s = self.hub.subscribe_when_live(&stream, self.queue) => s,
            };
            // The stream is live here: this worker holds the task now.
            self.live.insert(live.clone());
            let end = self
                .source_session(
                    &mut spec_rx,
                    &mut spec_open,
                    &mut fence,
                    &stream,
                    &live,
                    sub,
                    &cancel,
                )
                .await;
            live.end_session(TaskState::Stopped);
            self.status.changed(&live);
            if end == SessionEnd::Cancelled && cancel.is_cancelled() {
                break;
            }
            live.set_state(TaskState::Ready);
            self.status.changed(&live);
        }
        self.live.remove_if_same(&live);
    }

    /// While the source is live: one push session per destination, each with its own
    /// hub subscription, started and stopped as the task's destinations change. Ends
    /// when the source ends, the task is cancelled or the worker is fenced.
    #[allow(clippy::too_many_arguments)]
    async fn source_session(
        self: &Arc<Self>,
        spec_rx: &mut watch::Receiver<TaskSpec>,
        spec_open: &mut bool,
        fence: &mut watch::Receiver<bool>,
        stream: &StreamKey,
        live: &Arc<TaskLive>,
        first: Subscription,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        let mut first = Some(first);
        // destination → (its session's spec, its cancel token)
        let mut running: HashMap<String, (Arc<TaskSpec>, CancellationToken)> = HashMap::new();
        let mut sessions: tokio::task::JoinSet<SessionEnd> = tokio::task::JoinSet::new();
        let end = 'outer: loop {
            let spec = spec_rx.borrow_and_update().clone();
            live.set_destinations(&spec);
            let wanted: Vec<(String, Arc<TaskSpec>)> = spec
                .destination_list()
                .iter()
                .map(|d| (d.destination(), Arc::new(spec.for_destination(d))))
                .collect();
            running.retain(|dest, (s, c)| {
                let keep = wanted.iter().any(|(w, ws)| w == dest && ws == s);
                if !keep {
                    tracing::info!(url = %s.url, "destination removed; its session stops");
                    c.cancel();
                }
                keep
            });
            for (dest, dspec) in wanted {
                if running.contains_key(&dest) {
                    continue;
                }
                let Some(sub) = first
                    .take()
                    .or_else(|| self.hub.subscribe(stream, self.queue))
                else {
                    break 'outer SessionEnd::SourceEnded;
                };
                let c = cancel.child_token();
                let counters = live.begin_session(&dest);
                self.status.changed(live);
                let args = SessionArgs {
                    runner: Arc::clone(self),
                    spec: Arc::clone(&dspec),
                    dest: dest.clone(),
                    stream: stream.clone(),
                    live: live.clone(),
                    counters,
                    cancel: c.clone(),
                };
                // In the task's span: the push span inside names the destination, and one
                // more span per destination is memory per destination.
                sessions.spawn(Runner::session(Box::new(args), sub).in_current_span());
                running.insert(dest, (dspec, c));
            }
            tokio::select! {
                _ = cancel.cancelled() => break SessionEnd::Cancelled,
                // A fenced worker runs no session (see `lease`).
                _ = wait_fenced(fence) => break SessionEnd::Cancelled,
                r = spec_rx.changed(), if *spec_open => {
                    if r.is_err() {
                        *spec_open = false;
                    }
                }
                Some(r) = sessions.join_next() => {
                    if let Ok(SessionEnd::SourceEnded) = r {
                        break SessionEnd::SourceEnded;
                    }
                }
            }
        };
        for (_, c) in running.values() {
            c.cancel();
        }
        while sessions.join_next().await.is_some() {}
        end
    }

    /// One destination while the source is live: connect, push, reconnect with
    /// backoff, until the source ends or the session is cancelled.
    ///
    /// Its arguments come in one box: an async fn keeps its arguments twice (as captured
    /// and as moved-in locals), and this future lives, per destination, for as long as
    /// the push does.
    async fn session(args: Box<SessionArgs>, first: Subscription) -> SessionEnd {
        let SessionArgs {
            runner,
            spec,
            dest,
            stream,
            live,
            counters,
            cancel,
        } = &*args;
        let mut backoff = Backoff::new(runner.backoff);
        let mut next = Some(first);
        loop {
            let Some(mut source) = next
                .take()
                .or_else(|| runner.hub.subscribe(stream, runner.queue))
            else {
                return SessionEnd::SourceEnded;
            };
            // Tracks are known once a decodable start (headers + keyframe) is queued; a
            // reserved task wakes at publish time, before any frame.
            let tracks = tokio::select! {
                _ = cancel.cancelled() => return SessionEnd::Cancelled,
                i = source.ready() => match i {
                    Some(info) => info.tracks(),
                    None => return SessionEnd::SourceEnded,
                },
            };
            let selection = match tracks::select(spec.protocol, &spec.stream, &tracks) {
                Ok(s) => s.kinds,
                Err(e) => {
                    // Nothing to do until the stream changes: report and wait for its end.
                    live.failed(dest, &e.to_string());
                    runner.status.changed(live);
                    return wait_end(source, cancel).await;
                }
            };
            drop(tracks);
            let mut cfg = runner.push.clone();
            cfg.shutdown = cancel.child_token();
            let started = Instant::now();
            let result = push::run_session(spec, selection, &mut source, counters, &cfg, |ev| {
                if let SessionEvent::Connected { .. } = ev {
                    live.started(dest);
                    runner.status.changed(live);
                }
            })
            .await;
            match result {
                Ok(end) => return end,
                Err(e) => {
                    tracing::warn!(url = %spec.url, error = %e, "push failed; retrying");
                    live.failed(dest, &e.to_string());
                    runner.status.changed(live);
                    backoff.record_run(started.elapsed());
                    let delay = backoff.next_delay_for(e.retry_class());
                    // Keep following the stream while waiting, so its end is noticed.
                    tokio::select! {
                        _ = cancel.cancelled() => return SessionEnd::Cancelled,
                        end = wait_end(source, cancel) => return end,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Everything one destination's session works with (see [`Runner::session`]).
struct SessionArgs {
    runner: Arc<Runner>,
    spec: Arc<TaskSpec>,
    dest: String,
    stream: StreamKey,
    live: Arc<TaskLive>,
    counters: Arc<push::SessionCounters>,
    cancel: CancellationToken,
}

/// True when `b` is `a` changed in place: same task, same source stream.
fn same_source(a: &TaskSpec, b: &TaskSpec) -> bool {
    (&a.vhost, &a.app, &a.id, &a.stream.name) == (&b.vhost, &b.app, &b.id, &b.stream.name)
}

/// Waits until the fence is down; false if the task was cancelled meanwhile.
async fn wait_unfenced(fence: &mut watch::Receiver<bool>, cancel: &CancellationToken) -> bool {
    while *fence.borrow_and_update() {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            r = fence.changed() => if r.is_err() { return false },
        }
    }
    !cancel.is_cancelled()
}

/// Resolves when the worker becomes fenced (never, if the fence is gone).
async fn wait_fenced(fence: &mut watch::Receiver<bool>) {
    loop {
        if *fence.borrow_and_update() {
            return;
        }
        if fence.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits until the stream behind `sub` ends (or the task is cancelled), discarding frames.
async fn wait_end(mut sub: Subscription, cancel: &CancellationToken) -> SessionEnd {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            f = sub.recv() => if f.is_none() { return SessionEnd::SourceEnded },
        }
    }
}

fn task_key(spec: &TaskSpec) -> TaskKey {
    (spec.vhost.clone(), spec.app.clone(), spec.id.clone())
}

/// A hub subscription is what push sessions read (tasks and relays alike).
#[async_trait::async_trait]
impl FrameSource for Subscription {
    async fn next_frame(&mut self) -> Option<Frame> {
        self.recv().await
    }

    fn try_next_frame(&mut self) -> Option<Option<Frame>> {
        match self.try_recv() {
            Ok(f) => Some(Some(f)),
            Err(TryRecvError::Empty) => None,
            Err(_) => Some(None),
        }
    }
}
