//! The scheduler: level-triggered reconciliation of desired state (tasks) with actual
//! state (workers, live streams, assignments), run by the elected leader only.
//!
//! A pass is a pure plan, a pure diff and a thin loop around them: it reads the whole
//! picture from the store ([`read`]), asks [`placement::place`] where each task should
//! run, asks [`diff::diff`] what that changes, and writes only those changes
//! ([`apply`]): assignments (`assign/{worker}/...`, each with a generation, guarded by
//! the worker's registration so a dead worker is never assigned to) and forwards
//! (`relay/{from}/{to}/...`). Workers follow their own prefix. Passes run on every
//! relevant store change (debounced) and on a timer, so a missed event is corrected by
//! the next pass. A stored value that does not decode is logged with its key and counted
//! (`pushcast_store_decode_errors_total`), never skipped silently.

pub mod diff;
pub mod placement;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{Assignment, LiveStream, TaskSpec, WorkerInfo};
use pushcast_proto::v1;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, StoreError, Txn};
use tokio::sync::watch;

use diff::{Change, Current, Diff, Stored};
use placement::{Key, Placement, View};

use crate::worker_clients::WorkerClients;

/// How often a pass runs without any store event.
const PERIOD: Duration = Duration::from_secs(2);

/// Runs passes while this controller is the leader, until `shutdown`.
pub async fn run(
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
            _ = lead(store.clone(), clients.clone()) => {}
        }
    }
}

/// The control loop of a leader: pass on changes and on a timer.
async fn lead(store: Arc<dyn Store>, clients: WorkerClients) {
    // Workers told their full set, by node id → WorkerService address.
    let mut told: HashMap<String, String> = HashMap::new();
    loop {
        let mut events = match store.watch("", 0).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "scheduler cannot watch the store; passes on the timer only");
                None
            }
        };
        let mut timer = tokio::time::interval(PERIOD);
        loop {
            let t0 = Instant::now();
            match pass(store.as_ref()).await {
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
                        tracing::debug!(took_ms, "scheduler pass: nothing to do");
                    }
                    notify(&clients, &mut told, stats).await;
                }
                Err(e) => tracing::warn!(error = %e, "scheduler pass failed; retrying"),
            }
            // Wait for a relevant change (then let a burst settle) or the timer.
            let broke = match events.as_mut() {
                Some(ev) => {
                    tokio::select! {
                        _ = timer.tick() => false,
                        e = next_relevant(ev) => !e,
                    }
                }
                None => {
                    timer.tick().await;
                    false
                }
            };
            if broke {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits for a store change that matters to placement; false when the watch broke.
async fn next_relevant(events: &mut pushcast_store::WatchStream) -> bool {
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                let k = ev.key();
                if [keys::TASKS, keys::WORKERS, keys::STREAMS, keys::ASSIGNMENTS]
                    .iter()
                    .any(|p| k.starts_with(p))
                {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
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

/// One reconciliation pass: read, plan, diff, apply.
pub async fn pass(store: &dyn Store) -> Result<PassStats, StoreError> {
    let (view, current) = read(store).await?;
    let plan = placement::place(&view);
    let forwards = placement::forwards(&view, &plan);
    let tasks: BTreeMap<Key, &TaskSpec> = view
        .tasks
        .iter()
        .map(|t| ((t.vhost.clone(), t.app.clone(), t.id.clone()), t))
        .collect();
    let changes = diff::diff(&tasks, &view.workers, &current, &plan, &forwards);
    let stats = PassStats {
        placed: plan.len(),
        workers: view
            .workers
            .iter()
            .map(|(w, i)| (w.clone(), i.grpc_addr.clone()))
            .collect(),
        ..PassStats::default()
    };
    apply(store, changes, stats).await
}

/// [`pushcast_store::decoded`] of a listed value.
fn decoded<T: serde::de::DeserializeOwned>(
    kv: &pushcast_store::KeyValue,
    kind: &'static str,
) -> Option<T> {
    pushcast_store::decoded(&kv.key, &kv.value, kind)
}

/// The whole picture: what placement needs, and the assignments and forwards stored.
pub async fn read(store: &dyn Store) -> Result<(View, Current), StoreError> {
    let tasks = store.list(keys::TASKS).await?;
    let workers = store.list(keys::WORKERS).await?;
    let streams = store.list(keys::STREAMS).await?;
    let assigned = store.list(keys::ASSIGNMENTS).await?;
    let forwards = store.list(keys::FORWARDS).await?;

    let mut view = View {
        tasks: tasks
            .kvs
            .iter()
            .filter_map(|kv| decoded(kv, "task"))
            .collect(),
        ..View::default()
    };
    for w in workers
        .kvs
        .iter()
        .filter_map(|kv| decoded::<WorkerInfo>(kv, "worker"))
    {
        view.workers.insert(w.node_id.clone(), w);
    }
    for s in streams
        .kvs
        .iter()
        .filter_map(|kv| decoded::<LiveStream>(kv, "stream"))
    {
        view.streams.insert((s.vhost, s.app, s.stream), s.worker);
    }
    let mut current = Current::default();
    for kv in &assigned.kvs {
        let Some(a) = decoded::<Assignment>(kv, "assignment") else {
            continue;
        };
        let worker = kv
            .key
            .strip_prefix(keys::ASSIGNMENTS)
            .and_then(|r| r.split('/').next())
            .map(keys::unescape)
            .unwrap_or_default();
        let key = (a.spec.vhost.clone(), a.spec.app.clone(), a.spec.id.clone());
        view.current.insert(
            key.clone(),
            Placement {
                worker: worker.clone(),
                source: a.source.clone(),
            },
        );
        current.assignments.insert(
            key,
            Stored {
                key: kv.key.clone(),
                worker,
                assignment: a,
            },
        );
    }
    current.forwards = forwards.kvs.iter().map(|kv| kv.key.clone()).collect();
    Ok((view, current))
}

/// Writes the changes of a pass, each guarded as it must be, and records what each
/// worker must be told.
async fn apply(
    store: &dyn Store,
    d: Diff<'_>,
    mut stats: PassStats,
) -> Result<PassStats, StoreError> {
    let update = |key: &str, value: Vec<u8>| v1::AssignmentUpdate {
        key: key.to_string(),
        assignment: value,
    };
    for s in d.unchanged {
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
                if !store.txn(txn).await?.succeeded {
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
                store.delete(&key).await?;
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
                if store.txn(txn).await?.succeeded {
                    stats.changes += 1;
                }
            }
            Change::RemoveForward { key } => {
                store.delete(&key).await?;
                stats.changes += 1;
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    //! A pass on the embedded store in a temp dir: read, plan, diff, apply.
    #![allow(clippy::unwrap_used)]

    use pushcast_proto::destination::Destination;
    use pushcast_proto::model::{Protocol, StreamSelector};

    use super::*;

    struct Setup {
        store: Arc<dyn Store>,
        _dir: tempfile::TempDir,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = pushcast_store::embedded::EmbeddedStore::open(&dir.path().join("s")).unwrap();
        Setup {
            store: Arc::new(store),
            _dir: dir,
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
        let first = pass(store).await.unwrap();
        assert_eq!((first.changes, first.placed), (1, 1));
        assert_eq!(first.drift["w1"].len(), 1);
        let stored = store
            .get(&keys::assignment("w1", "v", "a", "t1"))
            .await
            .unwrap();
        let a: Assignment = serde_json::from_slice(&stored.unwrap().value).unwrap();
        assert_eq!(a.generation, 1);
        let again = pass(store).await.unwrap();
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
        let gone = pass(store).await.unwrap();
        assert_eq!(gone.changes, 1);
        assert!(gone.drift["w1"][0].assignment.is_empty(), "a removal");
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
        let (view, _) = read(store).await.unwrap();
        assert_eq!(
            view.tasks.len(),
            1,
            "the broken task is left out, not the others"
        );
        assert_eq!(pass(store).await.unwrap().placed, 1);
    }

    #[tokio::test]
    async fn no_assignment_to_a_worker_that_is_gone() {
        let s = setup();
        let store = s.store.as_ref();
        task(store, "t1").await;
        let (view, current) = read(store).await.unwrap();
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
        let stats = apply(store, d, PassStats::default()).await.unwrap();
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
