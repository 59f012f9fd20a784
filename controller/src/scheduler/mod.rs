//! The scheduler: level-triggered reconciliation of desired state (tasks) with actual
//! state (workers, live streams, assignments), run by the elected leader only.
//!
//! A pass is a pure plan, a pure diff and a thin loop around them: it takes its view of
//! the cluster from the informer's picture ([`view_of`]: the tasks of live streams and
//! the assigned ones, never the reserved rest), asks [`placement::place`] where each task
//! should run, asks [`diff::diff`] what that changes, and writes only those changes
//! ([`apply`]): assignments (`assign/{worker}/...`, each with a generation, guarded by
//! the worker's registration so a dead worker is never assigned to) and forwards
//! (`relay/{from}/{to}/...`). Workers follow their own prefix. Passes run on every
//! change the informer sees that matters to placement and on a timer (a resync from the
//! picture, not from the store), so a write that failed is retried by the next pass. A
//! stored value that does not decode is logged with its key and counted
//! (`pushcast_store_decode_errors_total`) by the informer, never skipped silently.

pub mod diff;
pub mod placement;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushcast_proto::keys;
use pushcast_proto::model::TaskSpec;
use pushcast_proto::v1;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, StoreError, Txn};
use tokio::sync::watch;

use diff::{Change, Current, Diff, Stored};
use placement::{Key, Placement, View};

use crate::informer::{Informer, Picture};
use crate::worker_clients::WorkerClients;

/// How often a pass runs without any store event.
const PERIOD: Duration = Duration::from_secs(2);

/// Runs passes while this controller is the leader, until `shutdown`.
pub async fn run(
    informer: Arc<Informer>,
    store: Arc<dyn Store>,
    clients: WorkerClients,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        // Wait to be the leader.
        while !*leader.borrow() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leader.changed() => if r.is_err() { return },
            }
        }
        tracing::info!("leader: scheduling");
        let lost = async {
            while *leader.borrow() {
                if leader.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lost => tracing::info!("no longer the leader: scheduling stops"),
            _ = lead(&informer, store.as_ref(), &clients) => {}
        }
    }
}

/// The control loop of a leader: a pass whenever the informer sees a change that matters
/// to placement, and a resync from the informer's picture on a timer. A change that
/// arrives during a pass makes one more pass: bursts coalesce without a debounce delay.
async fn lead(informer: &Informer, store: &dyn Store, clients: &WorkerClients) {
    // Workers told their full set, by node id → WorkerService address.
    let mut told: HashMap<String, String> = HashMap::new();
    let mut changes = informer.placement_changes();
    let mut timer = tokio::time::interval(PERIOD);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        changes.borrow_and_update();
        let t0 = Instant::now();
        match pass(informer, store, &told).await {
            Ok(stats) => {
                let took_ms = t0.elapsed().as_millis() as u64;
                metrics::counter!("pushcast_scheduler_passes_total").increment(1);
                metrics::histogram!("pushcast_scheduler_pass_duration_seconds")
                    .record(t0.elapsed().as_secs_f64());
                metrics::gauge!("pushcast_scheduler_placed_tasks").set(stats.placed as f64);
                if stats.changes > 0 {
                    tracing::info!(
                        changes = stats.changes,
                        placed = stats.placed,
                        took_ms,
                        "scheduler pass"
                    );
                } else {
                    tracing::trace!(took_ms, "scheduler pass: nothing to do");
                }
                notify(clients, &mut told, stats).await;
            }
            Err(e) => tracing::warn!(error = %e, "scheduler pass failed; retrying"),
        }
        tokio::select! {
            _ = timer.tick() => {}
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

#[derive(Debug, Default)]
pub struct PassStats {
    pub placed: usize,
    pub changes: usize,
    /// Registered workers: node id → WorkerService address.
    pub workers: BTreeMap<String, String>,
    /// What changed, per worker (a removal has an empty assignment).
    pub drift: BTreeMap<String, Vec<v1::AssignmentUpdate>>,
    /// Every worker's whole set after the pass.
    pub full: BTreeMap<String, Vec<v1::AssignmentUpdate>>,
}

/// Tells the workers over gRPC: the drift to those already told, the full set to the
/// others (new, or restarted on another address). Best effort: a worker also follows its
/// assignments in the store, so a failed call only costs latency.
async fn notify(clients: &WorkerClients, told: &mut HashMap<String, String>, mut stats: PassStats) {
    told.retain(|w, addr| stats.workers.get(w) == Some(addr));
    let calls = stats.workers.iter().filter_map(|(worker, addr)| {
        let (updates, full) = if told.contains_key(worker) {
            (stats.drift.remove(worker)?, false)
        } else {
            (stats.full.remove(worker).unwrap_or_default(), true)
        };
        let mut client = clients.client(addr)?;
        let worker = worker.clone();
        let addr = addr.clone();
        Some(async move {
            let r = client
                .apply_assignments(v1::ApplyAssignmentsRequest { updates, full })
                .await;
            (worker, addr, full, r)
        })
    });
    for (worker, addr, full, r) in futures::future::join_all(calls).await {
        match r {
            Ok(_) => {
                if full {
                    told.insert(worker, addr);
                }
            }
            Err(e) => {
                tracing::debug!(worker, error = %e, "worker not told over gRPC (it follows the store)");
                told.remove(&worker);
            }
        }
    }
}

/// One reconciliation pass: view, plan, diff, apply. Works from the informer's picture;
/// after writing, waits (briefly) until the picture holds its own writes, so the next
/// pass never plans from a picture older than this one's changes.
/// `told` are the workers already told their whole set (node id → address): the others
/// get it in [`PassStats::full`].
pub async fn pass(
    informer: &Informer,
    store: &dyn Store,
    told: &HashMap<String, String>,
) -> Result<PassStats, StoreError> {
    let (view, current) = view_of(&informer.read());
    let plan = placement::place(&view);
    let forwards = placement::forwards(&view, &plan);
    let tasks: BTreeMap<Key, &TaskSpec> = view
        .tasks
        .iter()
        .map(|t| ((t.vhost.clone(), t.app.clone(), t.id.clone()), t))
        .collect();
    let changes = diff::diff(&tasks, &view.workers, &current, &plan, &forwards);
    let workers: BTreeMap<String, String> = view
        .workers
        .iter()
        .map(|(w, i)| (w.clone(), i.grpc_addr.clone()))
        .collect();
    let untold = workers
        .iter()
        .filter(|(w, addr)| told.get(*w) != Some(*addr))
        .map(|(w, _)| w.clone())
        .collect();
    let stats = PassStats {
        placed: plan.len(),
        workers,
        ..PassStats::default()
    };
    let (stats, written) = apply(store, changes, stats, &untold).await?;
    if written > 0 {
        informer.reach(written, OWN_WRITES_WAIT).await;
    }
    Ok(stats)
}

/// How long a pass waits for the informer to hold its own writes.
const OWN_WRITES_WAIT: Duration = Duration::from_secs(2);

/// What placement needs, and the assignments and forwards stored, from the informer's
/// picture: only the tasks that can be placed (their stream is live) or are assigned, so
/// a pass costs O(live tasks), whatever the number of reserved ones.
pub fn view_of(picture: &Picture) -> (View, Current) {
    let mut view = View {
        tasks: picture
            .placeable()
            .into_iter()
            .filter_map(|k| picture.tasks.get(k))
            .map(|t| TaskSpec::clone(t))
            .collect(),
        ..View::default()
    };
    for w in picture.workers.values() {
        view.workers.insert(w.node_id.clone(), w.clone());
    }
    for s in picture.streams.values() {
        let key = (s.vhost.clone(), s.app.clone(), s.stream.clone());
        if let Some(from) = &s.resumed_from {
            view.resumed_from.insert(key.clone(), from.clone());
        }
        view.streams.insert(key, s.worker.clone());
    }
    let mut current = Current::default();
    for (key, a) in &picture.assignments {
        let worker = key
            .strip_prefix(keys::ASSIGNMENTS)
            .and_then(|r| r.split('/').next())
            .map(keys::unescape)
            .unwrap_or_default();
        let task = (a.spec.vhost.clone(), a.spec.app.clone(), a.spec.id.clone());
        view.current.insert(
            task.clone(),
            Placement {
                worker: worker.clone(),
                source: a.source.clone(),
            },
        );
        current.assignments.insert(
            task,
            Stored {
                key: key.clone(),
                worker,
                assignment: a.clone(),
            },
        );
    }
    current.forwards = picture.forwards.clone();
    (view, current)
}

/// Writes the changes of a pass, each guarded as it must be, and records what each
/// worker must be told.
async fn apply(
    store: &dyn Store,
    d: Diff<'_>,
    mut stats: PassStats,
    untold: &BTreeSet<String>,
) -> Result<(PassStats, i64), StoreError> {
    // The highest revision written.
    let mut written = 0;
    let update = |key: &str, value: Vec<u8>| v1::AssignmentUpdate {
        key: key.to_string(),
        assignment: value,
    };
    for s in d
        .unchanged
        .into_iter()
        .filter(|s| untold.contains(&s.worker))
    {
        // Unchanged, but part of the worker's whole set (a new leader sends it).
        if let Ok(v) = serde_json::to_vec(&s.assignment) {
            stats
                .full
                .entry(s.worker.clone())
                .or_default()
                .push(update(&s.key, v));
        }
    }
    for change in d.changes {
        match change {
            Change::Assign {
                key,
                worker,
                assignment,
                replaces,
            } => {
                let Ok(value) = serde_json::to_vec(&assignment) else {
                    continue;
                };
                let spec = &assignment.spec;
                let mut txn = Txn::new()
                    .when(Compare::Present(keys::worker(&worker)))
                    .when(Compare::Present(keys::task(
                        &spec.vhost,
                        &spec.app,
                        &spec.id,
                    )))
                    .and_then(Op::put(key.clone(), value.clone()));
                if let Some((old, _)) = &replaces {
                    txn = txn.and_then(Op::delete(old.clone()));
                }
                let r = store.txn(txn).await?;
                written = written.max(r.revision);
                if !r.succeeded {
                    continue;
                }
                // A short span in the task's own trace: where the scheduler put it.
                if let Some(tp) = &spec.trace_parent {
                    let generation = assignment.generation;
                    let span = tracing::info_span!("schedule", task = %spec.id, worker = %worker, generation);
                    pushcast_runtime::logging::set_parent(
                        &span,
                        &HashMap::from([("traceparent".to_string(), tp.clone())]),
                    );
                    span.in_scope(|| tracing::debug!("assigned"));
                }
                stats.changes += 1;
                let put = update(&key, value);
                stats
                    .full
                    .entry(worker.clone())
                    .or_default()
                    .push(put.clone());
                stats.drift.entry(worker).or_default().push(put);
                if let Some((old, old_worker)) = replaces {
                    stats
                        .drift
                        .entry(old_worker)
                        .or_default()
                        .push(update(&old, vec![]));
                }
            }
            Change::Unassign { key, worker } => {
                let r = store
                    .txn(Txn::new().and_then(Op::delete(key.clone())))
                    .await?;
                written = written.max(r.revision);
                stats.changes += 1;
                stats
                    .drift
                    .entry(worker)
                    .or_default()
                    .push(update(&key, vec![]));
            }
            Change::AddForward { key, from, forward } => {
                let Ok(value) = serde_json::to_vec(&forward) else {
                    continue;
                };
                let txn = Txn::new()
                    .when(Compare::Present(keys::worker(&from)))
                    .and_then(Op::put(key, value));
                let r = store.txn(txn).await?;
                written = written.max(r.revision);
                if r.succeeded {
                    stats.changes += 1;
                }
            }
            Change::RemoveForward { key } => {
                let r = store.txn(Txn::new().and_then(Op::delete(key))).await?;
                written = written.max(r.revision);
                stats.changes += 1;
            }
        }
    }
    Ok((stats, written))
}

#[cfg(test)]
mod tests {
    //! A pass on the embedded store in a temp dir, through a running informer: view,
    //! plan, diff, apply.
    #![allow(clippy::unwrap_used)]

    use pushcast_proto::destination::Destination;
    use pushcast_proto::model::{Assignment, LiveStream, Protocol, StreamSelector, WorkerInfo};

    use super::*;

    struct Setup {
        store: Arc<dyn Store>,
        informer: Arc<Informer>,
        _stop: tokio_util::sync::DropGuard,
        _dir: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(pushcast_store::embedded::EmbeddedStore::open(&dir.path().join("s")).unwrap());
        let informer = Informer::new(store.clone());
        let stop = CancellationToken::new();
        tokio::spawn(informer.clone().run(stop.clone()));
        Setup {
            store,
            informer,
            _stop: stop.drop_guard(),
            _dir: dir,
        }
    }

    impl Setup {
        /// A pass once the informer holds everything written so far.
        async fn pass(&self) -> PassStats {
            drop(self.informer.consistent().await.unwrap());
            pass(&self.informer, self.store.as_ref(), &HashMap::new())
                .await
                .unwrap()
        }

        async fn view(&self) -> (View, Current) {
            view_of(&self.informer.consistent().await.unwrap())
        }
    }

    async fn put<T: serde::Serialize>(store: &dyn Store, key: &str, value: &T) {
        store
            .put(key, serde_json::to_vec(value).unwrap(), 0)
            .await
            .unwrap();
    }

    async fn task(store: &dyn Store, id: &str) {
        let d = Destination::parse(Protocol::Rtmp, "rtmp://h/live", id, vec![]).unwrap();
        let selector = StreamSelector {
            name: "cam".into(),
            ..Default::default()
        };
        let spec = TaskSpec::new(id.into(), "v".into(), "a".into(), selector, 0, vec![d]).unwrap();
        put(store, &keys::task("v", "a", id), &spec).await;
    }

    async fn worker(store: &dyn Store, name: &str) {
        let info = WorkerInfo {
            node_id: name.into(),
            grpc_addr: format!("{name}:9100"),
            rtmp_addr: format!("{name}:1935"),
            rtmps_addr: None,
            max_sessions: 0,
            draining: false,
        };
        put(store, &keys::worker(name), &info).await;
    }

    async fn live_on(store: &dyn Store, name: &str) {
        let live = LiveStream {
            vhost: "v".into(),
            app: "a".into(),
            stream: "cam".into(),
            worker: name.into(),
            tracks: vec![],
            since_ms: 0,
            interrupted_ms: None,
            resumed_from: None,
            input: None,
            inputs: 0,
            client: None,
            software: None,
        };
        put(store, &keys::stream("v", "a", "cam"), &live).await;
    }

    #[tokio::test]
    async fn a_pass_assigns_once_then_has_nothing_to_do_then_unassigns() {
        let s = setup();
        let store = s.store.as_ref();
        worker(store, "w1").await;
        task(store, "t1").await;
        live_on(store, "w1").await;
        let first = s.pass().await;
        assert_eq!((first.changes, first.placed), (1, 1));
        assert_eq!(first.drift["w1"].len(), 1);
        let stored = store
            .get(&keys::assignment("w1", "v", "a", "t1"))
            .await
            .unwrap();
        let a: Assignment = serde_json::from_slice(&stored.unwrap().value).unwrap();
        assert_eq!(a.generation, 1);
        let again = s.pass().await;
        assert_eq!(
            again.changes, 0,
            "level-triggered: nothing changed, nothing written"
        );
        assert_eq!(
            again.full["w1"].len(),
            1,
            "but still the worker's whole set"
        );
        store.delete(&keys::task("v", "a", "t1")).await.unwrap();
        let gone = s.pass().await;
        assert_eq!(gone.changes, 1);
        assert!(gone.drift["w1"][0].assignment.is_empty(), "a removal");
    }

    #[tokio::test]
    async fn the_pass_right_after_a_pass_sees_its_writes_and_repeats_none() {
        let s = setup();
        let store = s.store.as_ref();
        worker(store, "w1").await;
        task(store, "t1").await;
        task(store, "t2").await;
        live_on(store, "w1").await;
        assert_eq!(s.pass().await.changes, 2);
        // No wait for the informer here: the pass itself waited for its own writes.
        let next = pass(&s.informer, store, &HashMap::new()).await.unwrap();
        assert_eq!(next.changes, 0, "{:?}", next.drift);
        let a: Assignment = serde_json::from_slice(
            &store
                .get(&keys::assignment("w1", "v", "a", "t1"))
                .await
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap();
        assert_eq!(a.generation, 1, "assigned once, not twice");
    }

    #[tokio::test]
    async fn an_undecodable_value_is_left_out_and_the_rest_scheduled() {
        let s = setup();
        let store = s.store.as_ref();
        worker(store, "w1").await;
        task(store, "t1").await;
        store
            .put(&keys::task("v", "a", "broken"), b"{not json".to_vec(), 0)
            .await
            .unwrap();
        live_on(store, "w1").await;
        let (view, _) = s.view().await;
        assert_eq!(
            view.tasks.len(),
            1,
            "the broken task is left out, not the others"
        );
        assert_eq!(s.pass().await.placed, 1);
    }

    #[tokio::test]
    async fn no_assignment_to_a_worker_that_is_gone() {
        let s = setup();
        let store = s.store.as_ref();
        task(store, "t1").await;
        live_on(store, "dead").await;
        let (view, current) = s.view().await;
        let plan = diff::Plan::from([(
            ("v".to_string(), "a".to_string(), "t1".to_string()),
            Placement {
                worker: "dead".into(),
                source: pushcast_proto::model::SourceRef::Local,
            },
        )]);
        let tasks = view
            .tasks
            .iter()
            .map(|t| ((t.vhost.clone(), t.app.clone(), t.id.clone()), t))
            .collect();
        let d = diff::diff(&tasks, &view.workers, &current, &plan, &Default::default());
        assert_eq!(d.changes.len(), 1);
        let untold = BTreeSet::new();
        let (stats, _) = apply(store, d, PassStats::default(), &untold)
            .await
            .unwrap();
        assert_eq!(
            stats.changes, 0,
            "the worker's registration guards the write"
        );
        let stored = store
            .get(&keys::assignment("dead", "v", "a", "t1"))
            .await
            .unwrap();
        assert!(stored.is_none());
    }
}
