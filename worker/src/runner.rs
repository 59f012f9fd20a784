//! Runs push tasks on this worker.
//!
//! The leader's scheduler assigns tasks to workers (`assign/{worker}/...`); each worker
//! follows its own assignments and keeps, per task, a runner that waits for the stream in
//! its local [`Hub`] (ingested here, or forwarded here by the ingest worker).
//!
//! A task pushes to each of its destinations in a reconnect loop of its own (one hub
//! subscription each, see `reconnect`); a change of its destinations while it runs
//! starts and stops only the loops of the destinations that changed.
//!
//! A task's life: wait for the stream (`ready`) → a session per destination: connect
//! (`ready`) → sending (`started`) → on failure `error` + backoff + reconnect from the
//! GOP cache → the source ends (`stopped`, `sequence`+1) → `ready` again, waiting for the
//! next publish. Every change of state is reported by the task's [`TaskLive`] itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pushcast_proto::destination::Destination;
use pushcast_proto::keys;
use pushcast_proto::model::{Assignment, SourceEventKind, SourceRef, TaskSpec, TaskState};
use pushcast_proto::v1::ApplyAssignmentsRequest;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Store, WatchEvent, decoded};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::hub::{Role, SpliceStatus, StreamId, Subscription, TryRecvError};
use crate::lease::Fence;
use crate::live::{LiveTasks, TaskKey, TaskLive};
use crate::push::{FrameSource, SessionEnd};
use crate::reconnect::{self, Report, Settings, Tracks};
use crate::status::StatusWriter;
use pushcast_media::Frame;

/// What every task of this worker shares.
pub struct Runner {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub live: LiveTasks,
    pub status: StatusWriter,
    pub node_id: String,
    /// Up while the worker is fenced: no push may run.
    pub fence: Fence,
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

impl<'a> Assigned<'a> {
    /// Nothing running yet.
    fn new(runner: &'a Arc<Runner>, shutdown: &'a CancellationToken) -> Self {
        Assigned {
            runner,
            shutdown,
            running: HashMap::new(),
        }
    }

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
            // A new source of the same stream (continued on another worker and
            // forwarded here) is the same task too: it reads the stream from this
            // worker's hub either way, and its connections stay.
            if same_source(&cur.spec.borrow(), &a.spec) {
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
            } else if let Some(a) = decoded::<Assignment>(&u.key, &u.assignment, "assignment") {
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
        let mut assigned = Assigned::new(&self, &shutdown);
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
                .filter_map(|kv| Some((kv.key.clone(), decoded(&kv.key, &kv.value, "assignment")?)))
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
                        if let Some(a) = decoded::<Assignment>(&kv.key, &kv.value, "assignment") {
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
            let stream = StreamId::new(
                spec.vhost.clone(),
                spec.app.clone(),
                spec.stream.name.clone(),
            );
            (task_key(&spec), stream)
        };
        // Totals and `sequence` continue from the last status, whichever worker wrote it.
        let previous = match self.store.get(&keys::status(&key.0, &key.1, &key.2)).await {
            Ok(Some(kv)) => decoded(&kv.key, &kv.value, "status"),
            _ => None,
        };
        let live = Arc::new(TaskLive::new(
            key.clone(),
            &self.node_id,
            previous,
            &spec_rx.borrow(),
            self.status.clone(),
        ));
        let mut fence = self.fence.clone();
        let mut spec_open = true;
        loop {
            // A fenced worker runs no push (see `lease`).
            if !fence.lifted(&cancel).await {
                break;
            }
            let sub = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = fence.raised() => continue,
                r = spec_rx.changed(), if spec_open => {
                    match r {
                        Ok(()) => live.set_destinations(&spec_rx.borrow_and_update()),
                        Err(_) => spec_open = false,
                    }
                    continue;
                }
                s = self.settings.hub.subscribe_when_live(&stream, self.settings.queue) => s,
            };
            // An interrupted stream (its publisher gone, a reconnect window open) is not
            // live for a task that is not pushing it: it waits for a publisher.
            let mut inputs = sub.splice_status();
            if inputs.borrow().active.is_none() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = fence.raised() => continue,
                    fed = inputs.wait_for(|s| s.active.is_some()) => if fed.is_err() { continue },
                }
            }
            // The stream is live here: this worker holds the task now.
            self.live.insert(live.clone());
            let end = self
                .while_live(
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
            if end == SessionEnd::Cancelled && cancel.is_cancelled() {
                break;
            }
            live.set_state(TaskState::Ready);
        }
        self.live.remove_if_same(&live);
    }

    /// While the source is live: one reconnect loop per destination, each with its own
    /// hub subscription, started and stopped as the task's destinations change. Ends
    /// when the source ends, the task is cancelled or the worker is fenced.
    #[allow(clippy::too_many_arguments)]
    async fn while_live(
        self: &Arc<Self>,
        spec_rx: &mut watch::Receiver<TaskSpec>,
        spec_open: &mut bool,
        fence: &mut Fence,
        stream: &StreamId,
        live: &Arc<TaskLive>,
        first: Subscription,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        // The stream's inputs (`hub::splice`): interruptions, resumes and switches are
        // the task's source events.
        let mut splice = first.splice_status();
        let mut splice_seen = splice.borrow_and_update().clone();
        let mut splice_open = true;
        // The task's own reconnect window: the stream is kept at least that long for
        // it (an ask), and its sessions end when it passes, whatever the app's is.
        let own_window = spec_rx
            .borrow()
            .reconnect_window_ms
            .map(Duration::from_millis);
        let _ask = own_window.map(|w| first.ask_window(w));
        let mut window_ends: Option<tokio::time::Instant> = None;
        let mut first = Some(first);
        // address → (its destination and tracks, its cancel token)
        let mut running: HashMap<String, (Wanted, CancellationToken)> = HashMap::new();
        let mut loops: tokio::task::JoinSet<SessionEnd> = tokio::task::JoinSet::new();
        let end = 'outer: loop {
            let spec = spec_rx.borrow_and_update().clone();
            live.set_destinations(&spec);
            let wanted: Vec<(String, Wanted)> = spec
                .destinations()
                .iter()
                .map(|d| (d.address(), (Arc::clone(d), spec.selector_for(d))))
                .collect();
            running.retain(|address, (w, c)| {
                let keep = wanted.iter().any(|(a, ww)| a == address && ww == w);
                if !keep {
                    tracing::info!(dest = %w.0, "destination removed; its session stops");
                    c.cancel();
                }
                keep
            });
            for (address, (dest, selector)) in wanted {
                if running.contains_key(&address) {
                    continue;
                }
                let Some(sub) = first
                    .take()
                    .or_else(|| self.settings.hub.subscribe(stream, self.settings.queue))
                else {
                    break 'outer SessionEnd::SourceEnded;
                };
                let c = cancel.child_token();
                let counters = live.begin_session(&address);
                let lp = Box::new(reconnect::Loop {
                    settings: Arc::clone(&self.settings),
                    stream: stream.clone(),
                    dest: Arc::clone(&dest),
                    tracks: Tracks::Select(selector.clone()),
                    report: Report::Task {
                        live: live.clone(),
                        address: address.clone(),
                    },
                    counters,
                    cancel: c.clone(),
                });
                // In the task's span: the push span inside names the destination, and one
                // more span per destination is memory per destination.
                loops.spawn(lp.run(Some(sub)).in_current_span());
                running.insert(address, ((dest, selector), c));
            }
            tokio::select! {
                _ = cancel.cancelled() => break SessionEnd::Cancelled,
                // A fenced worker runs no push (see `lease`).
                _ = fence.raised() => break SessionEnd::Cancelled,
                r = spec_rx.changed(), if *spec_open => {
                    if r.is_err() {
                        *spec_open = false;
                    }
                }
                r = splice.changed(), if splice_open => {
                    match r {
                        Ok(()) => {
                            let now = splice.borrow_and_update().clone();
                            report_source_events(live, &splice_seen, &now);
                            // The task's window, else the app's (the stream may be
                            // kept longer for another task's ask).
                            let window = own_window.unwrap_or(now.app_window);
                            window_ends = match now.active {
                                None => Some(
                                    window_ends
                                        .unwrap_or_else(|| tokio::time::Instant::now() + window),
                                ),
                                Some(_) => None,
                            };
                            splice_seen = now;
                        }
                        Err(_) => splice_open = false,
                    }
                }
                () = sleep_until_some(window_ends) => {
                    tracing::info!("the task's reconnect window passed: its sessions end");
                    break SessionEnd::SourceEnded;
                }
                Some(r) = loops.join_next() => {
                    if let Ok(SessionEnd::SourceEnded) = r {
                        break SessionEnd::SourceEnded;
                    }
                }
            }
        };
        for (_, c) in running.values() {
            c.cancel();
        }
        while loops.join_next().await.is_some() {}
        end
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reports what changed in a stream's inputs as the task's source events.
fn report_source_events(live: &TaskLive, before: &SpliceStatus, now: &SpliceStatus) {
    let input = now.active.map(Role::as_str);
    if now.interruptions > before.interruptions {
        live.source_event(SourceEventKind::SourceInterrupted, None);
    }
    if now.resumes > before.resumes {
        live.source_event(SourceEventKind::SourceResumed, input);
    }
    if now.switches > before.switches {
        live.source_event(SourceEventKind::InputSwitched, input);
    }
}

/// A destination of a task as its loop runs it: the destination and its tracks.
type Wanted = (Arc<Destination>, pushcast_proto::model::StreamSelector);

/// True when `b` is `a` changed in place: same task, same source stream.
fn same_source(a: &TaskSpec, b: &TaskSpec) -> bool {
    (&a.vhost, &a.app, &a.id, &a.stream.name) == (&b.vhost, &b.app, &b.id, &b.stream.name)
}

fn task_key(spec: &TaskSpec) -> TaskKey {
    (spec.vhost.clone(), spec.app.clone(), spec.id.clone())
}

/// A hub subscription is what push sessions read (task destinations and forwards alike).
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

#[cfg(test)]
mod tests {
    //! How assignments are applied: twice, out of order, updated in place or moved.
    #![allow(clippy::unwrap_used)]

    use pushcast_proto::model::{Protocol, StreamSelector};
    use pushcast_retry::BackoffConfig;

    use super::*;
    use crate::hub::{Hub, QueueLimits};
    use crate::lease::Fence;
    use crate::push::PushConfig;

    struct Setup {
        runner: Arc<Runner>,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            pushcast_store::embedded::EmbeddedStore::open(&dir.path().join("store")).unwrap(),
        );
        let runner = Arc::new(Runner {
            settings: Arc::new(Settings {
                hub: Hub::default(),
                push: PushConfig::default(),
                queue: QueueLimits::default(),
                backoff: BackoffConfig::default(),
                fence: Fence::down(),
                stall_after: Duration::ZERO,
            }),
            store,
            live: LiveTasks::default(),
            status: StatusWriter::detached().0,
            node_id: "w1".into(),
            fence: Fence::down(),
        });
        Setup {
            runner,
            shutdown: CancellationToken::new(),
            _dir: dir,
        }
    }

    fn assignment(key: &str, stream: &str, source: SourceRef, generation: u64) -> Assignment {
        let d = Destination::parse(Protocol::Rtmp, "rtmp://h/live", key, vec![]).unwrap();
        let selector = StreamSelector {
            name: stream.into(),
            ..Default::default()
        };
        let spec = TaskSpec::new("t".into(), "v".into(), "a".into(), selector, 0, vec![d]).unwrap();
        Assignment {
            spec,
            source,
            generation,
        }
    }

    const KEY: &str = "assign/w1/v/a/t";

    #[tokio::test]
    async fn the_same_assignment_twice_or_an_older_one_changes_nothing() {
        let s = setup();
        let mut a = Assigned::new(&s.runner, &s.shutdown);
        assert!(a.put(KEY.into(), assignment("k", "cam", SourceRef::Local, 2)));
        let token = a.running[KEY].cancel.clone();
        assert!(
            !a.put(KEY.into(), assignment("k", "cam", SourceRef::Local, 2)),
            "twice"
        );
        assert!(
            !a.put(KEY.into(), assignment("k2", "cam", SourceRef::Local, 1)),
            "older"
        );
        assert_eq!(a.running.len(), 1);
        assert!(!token.is_cancelled(), "the running task was left alone");
        assert_eq!(a.running[KEY].spec.borrow().first().stream_key(), "k");
    }

    #[tokio::test]
    async fn a_newer_generation_of_the_same_source_updates_in_place() {
        let s = setup();
        let mut a = Assigned::new(&s.runner, &s.shutdown);
        assert!(a.put(KEY.into(), assignment("k", "cam", SourceRef::Local, 1)));
        let token = a.running[KEY].cancel.clone();
        assert!(a.put(KEY.into(), assignment("k2", "cam", SourceRef::Local, 2)));
        assert!(
            !token.is_cancelled(),
            "updated in place (updatePush), not restarted"
        );
        assert_eq!(a.running[KEY].generation, 2);
        assert_eq!(a.running[KEY].spec.borrow().first().stream_key(), "k2");
    }

    #[tokio::test]
    async fn a_new_stream_restarts_a_new_source_does_not_and_removal_or_a_full_set_stops() {
        let s = setup();
        let mut a = Assigned::new(&s.runner, &s.shutdown);
        assert!(a.put(KEY.into(), assignment("k", "cam", SourceRef::Local, 1)));
        let first = a.running[KEY].cancel.clone();
        let forwarded = SourceRef::Forwarded {
            from_worker: "w2".into(),
        };
        assert!(a.put(KEY.into(), assignment("k", "cam", forwarded, 2)));
        assert!(
            !first.is_cancelled(),
            "a new source of the same stream keeps the task (and its connections)"
        );
        let second = a.running[KEY].cancel.clone();
        assert!(a.put(KEY.into(), assignment("k", "other", SourceRef::Local, 3)));
        assert!(second.is_cancelled(), "a new stream restarts the task");
        let third = a.running[KEY].cancel.clone();
        // A full set without it stops it; deleting what is not there changes nothing.
        assert_eq!(a.replace_all(HashMap::new()), 1);
        assert!(third.is_cancelled());
        assert!(!a.delete(KEY));
    }

    #[tokio::test]
    async fn a_full_set_from_the_leader_replaces_everything() {
        let s = setup();
        let mut a = Assigned::new(&s.runner, &s.shutdown);
        let value =
            |gen_| serde_json::to_vec(&assignment("k", "cam", SourceRef::Local, gen_)).unwrap();
        let update = |key: &str, assignment: Vec<u8>| pushcast_proto::v1::AssignmentUpdate {
            key: key.into(),
            assignment,
        };
        let full = ApplyAssignmentsRequest {
            updates: vec![
                update(KEY, value(1)),
                update("assign/w1/v/a/bad", b"not json".to_vec()),
            ],
            full: true,
        };
        assert_eq!(a.apply(full.clone()), 1, "the undecodable one is left out");
        assert_eq!(a.apply(full), 0, "applied twice: a no-op");
        let drift = ApplyAssignmentsRequest {
            updates: vec![update(KEY, vec![])],
            full: false,
        };
        assert_eq!(a.apply(drift), 1, "an empty assignment removes");
        assert!(a.running.is_empty());
    }
}
