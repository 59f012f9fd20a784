//! The scheduler: level-triggered reconciliation of desired state (tasks) with actual
//! state (workers, live streams, assignments), run by the elected leader only.
//!
//! Every pass reads the whole picture from the store, asks the pure [`placement::place`]
//! where each task should run, and writes only the differences: assignments
//! (`assign/{worker}/...`, each with a generation, guarded by the worker's registration
//! so a dead worker is never assigned to) and relays (`relay/{from}/{to}/...`). Workers
//! follow their own prefix. Passes run on every relevant store change (debounced) and on
//! a timer, so a missed event is corrected by the next pass.

pub mod placement;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{Assignment, LiveStream, Relay, TaskSpec, WorkerInfo};
use pushcast_proto::v1;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, StoreError, Txn};
use tokio::sync::watch;

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

/// One reconciliation pass.
pub async fn pass(store: &dyn Store) -> Result<PassStats, StoreError> {
    let tasks = store.list(keys::TASKS).await?;
    let workers = store.list(keys::WORKERS).await?;
    let streams = store.list(keys::STREAMS).await?;
    let assigned = store.list(keys::ASSIGNMENTS).await?;
    let relays_now = store.list(keys::RELAYS).await?;

    let mut view = View::default();
    for kv in &tasks.kvs {
        if let Ok(spec) = serde_json::from_slice::<TaskSpec>(&kv.value) {
            view.tasks.push(spec);
        }
    }
    for kv in &workers.kvs {
        if let Ok(w) = serde_json::from_slice::<WorkerInfo>(&kv.value) {
            view.workers.insert(w.node_id.clone(), w);
        }
    }
    for kv in &streams.kvs {
        if let Ok(s) = serde_json::from_slice::<LiveStream>(&kv.value) {
            view.streams.insert((s.vhost, s.app, s.stream), s.worker);
        }
    }
    // Current assignments: task → (store key, worker, assignment).
    let mut current: BTreeMap<Key, (String, String, Assignment)> = BTreeMap::new();
    for kv in &assigned.kvs {
        let Ok(a) = serde_json::from_slice::<Assignment>(&kv.value) else {
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
        current.insert(key, (kv.key.clone(), worker, a));
    }

    let plan = placement::place(&view);
    let mut stats = PassStats {
        placed: plan.len(),
        workers: view
            .workers
            .iter()
            .map(|(w, i)| (w.clone(), i.grpc_addr.clone()))
            .collect(),
        ..PassStats::default()
    };
    let update = |key: &str, value: Vec<u8>| v1::AssignmentUpdate {
        key: key.to_string(),
        assignment: value,
    };
    let specs: BTreeMap<Key, &TaskSpec> = view
        .tasks
        .iter()
        .map(|t| ((t.vhost.clone(), t.app.clone(), t.id.clone()), t))
        .collect();

    // Assignments to write.
    for (key, p) in &plan {
        let Some(spec) = specs.get(key) else { continue };
        let (old_key, generation) = match current.get(key) {
            Some((k, w, a)) if *w == p.worker && a.source == p.source && a.spec == **spec => {
                // Unchanged, but part of the worker's whole set (a new leader sends it).
                if let Ok(v) = serde_json::to_vec(a) {
                    stats.full.entry(w.clone()).or_default().push(update(k, v));
                }
                continue;
            }
            Some((k, w, a)) => (Some((k.clone(), w.clone())), a.generation + 1),
            None => (None, 1),
        };
        let assignment = Assignment {
            spec: (*spec).clone(),
            source: p.source.clone(),
            generation,
        };
        let Ok(value) = serde_json::to_vec(&assignment) else {
            continue;
        };
        let new_key = keys::assignment(&p.worker, &key.0, &key.1, &key.2);
        let put = update(&new_key, value.clone());
        let mut txn = Txn::new()
            .when(Compare::Present(keys::worker(&p.worker)))
            .when(Compare::Present(keys::task(&key.0, &key.1, &key.2)))
            .and_then(Op::put(new_key.clone(), value));
        let mut removed = None;
        if let Some((old, old_worker)) = old_key
            && old != new_key
        {
            txn = txn.and_then(Op::delete(old.clone()));
            removed = Some((old_worker, update(&old, vec![])));
        }
        if store.txn(txn).await?.succeeded {
            // A short span in the task's own trace: where the scheduler put it.
            if let Some(tp) = &spec.trace_parent {
                let span =
                    tracing::info_span!("schedule", task = %key.2, worker = %p.worker, generation);
                pushcast_runtime::logging::set_parent(
                    &span,
                    &HashMap::from([("traceparent".to_string(), tp.clone())]),
                );
                span.in_scope(|| tracing::debug!("assigned"));
            }
            stats.changes += 1;
            stats
                .full
                .entry(p.worker.clone())
                .or_default()
                .push(put.clone());
            stats.drift.entry(p.worker.clone()).or_default().push(put);
            if let Some((w, u)) = removed {
                stats.drift.entry(w).or_default().push(u);
            }
        }
    }
    // Assignments to remove: tasks gone, unplaceable, or on a dead worker.
    for (key, (store_key, worker, _)) in &current {
        if !plan.contains_key(key) {
            store.delete(store_key).await?;
            stats.changes += 1;
            stats
                .drift
                .entry(worker.clone())
                .or_default()
                .push(update(store_key, vec![]));
        }
    }

    // Relays.
    let wanted = placement::relays(&view, &plan);
    let mut have: BTreeSet<String> = relays_now.kvs.iter().map(|kv| kv.key.clone()).collect();
    for (from, to, (v, a, s)) in &wanted {
        let k = keys::relay(from, to, v, a, s);
        if have.remove(&k) {
            continue;
        }
        let Some(target) = view.workers.get(to) else {
            continue;
        };
        let relay = Relay {
            vhost: v.clone(),
            app: a.clone(),
            stream: s.clone(),
            to_worker: to.clone(),
            to_rtmp_addr: target.rtmp_addr.clone(),
        };
        let Ok(value) = serde_json::to_vec(&relay) else {
            continue;
        };
        let txn = Txn::new()
            .when(Compare::Present(keys::worker(from)))
            .and_then(Op::put(k, value));
        if store.txn(txn).await?.succeeded {
            stats.changes += 1;
        }
    }
    for stale in have {
        store.delete(&stale).await?;
        stats.changes += 1;
    }
    Ok(stats)
}
