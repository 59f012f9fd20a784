//! Writes the status of the tasks this worker holds to the store: at once on a state
//! change, and as a slow checkpoint of the counters otherwise, so the write volume is
//! O(state changes), never O(tasks × time). Live counters are served by `WorkerService`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pushcast_proto::keys;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, Txn};
use tokio::sync::mpsc;

use pushcast_proto::model::TaskStatus;

use crate::live::{LiveTasks, TaskKey, TaskLive};

/// How often running tasks' counters are checkpointed to the store.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// Handle to ask for a task's status to be written.
#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::UnboundedSender<(TaskKey, TaskStatus)>,
}

impl StatusWriter {
    /// Starts the writer task.
    pub fn start(
        store: Arc<dyn Store>,
        live: LiveTasks,
        shutdown: CancellationToken,
    ) -> StatusWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, live, rx, shutdown));
        StatusWriter { tx }
    }

    /// Writes the task's status as it is now, soon (a later change of the same task
    /// queued meanwhile supersedes it). The snapshot is taken here, so the last state of
    /// a task that goes away right after is still written. [`TaskLive`] calls it on each
    /// change of state.
    pub fn write(&self, task: &TaskLive) {
        let _ = self.tx.send((task.key.clone(), task.snapshot()));
    }

    /// A writer whose statuses go to the returned receiver instead of a store (tests).
    #[cfg(test)]
    pub(crate) fn detached() -> (StatusWriter, mpsc::UnboundedReceiver<(TaskKey, TaskStatus)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (StatusWriter { tx }, rx)
    }
}

async fn run(
    store: Arc<dyn Store>,
    live: LiveTasks,
    mut rx: mpsc::UnboundedReceiver<(TaskKey, TaskStatus)>,
    shutdown: CancellationToken,
) {
    let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
    checkpoint.tick().await;
    loop {
        let mut queued: Vec<(TaskKey, TaskStatus)> = Vec::new();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m {
                Some(m) => queued.push(m),
                None => return,
            },
            _ = checkpoint.tick() => {
                queued.extend(live.all().iter().map(|t| (t.key.clone(), t.snapshot())));
            }
        }
        while let Ok(m) = rx.try_recv() {
            queued.push(m);
        }
        for round in rounds(queued) {
            for batch in round.chunks(BATCH) {
                write_batch(store.as_ref(), batch).await;
            }
        }
    }
}

/// Groups queued statuses into rounds written one after the other. Within a round a
/// task's later status supersedes its earlier one (counters move on), but a change of
/// *state* never hides the state before it: `stopped` then `ready` when a stream ends are
/// both written, in order (status callbacks and `WatchPushes` see each state), and a
/// round never writes one key twice (a transaction may not).
fn rounds(queued: Vec<(TaskKey, TaskStatus)>) -> Vec<Vec<(TaskKey, TaskStatus)>> {
    let mut rounds: Vec<Vec<(TaskKey, TaskStatus)>> = vec![Vec::new()];
    // Where each task is in the last round.
    let mut index: HashMap<TaskKey, usize> = HashMap::new();
    for (key, status) in queued {
        if let Some(&i) = index.get(&key) {
            let last = rounds.len() - 1;
            if rounds[last][i].1.state == status.state {
                rounds[last][i].1 = status;
                continue;
            }
            rounds.push(Vec::new());
            index.clear();
        }
        let last = rounds.len() - 1;
        index.insert(key.clone(), rounds[last].len());
        rounds[last].push((key, status));
    }
    rounds.retain(|r| !r.is_empty());
    rounds
}

/// Statuses written in one transaction: one store revision per batch, not per task
/// (etcd allows 128 operations per transaction; each status is a compare and a put).
const BATCH: usize = 50;

async fn write_batch(store: &dyn Store, batch: &[(TaskKey, TaskStatus)]) {
    if batch.len() > 1 {
        let mut txn = Txn::new();
        for ((v, a, i), status) in batch {
            let Ok(value) = serde_json::to_vec(status) else {
                continue;
            };
            txn = txn
                .when(Compare::Present(keys::task(v, a, i)))
                .and_then(Op::put(keys::status(v, a, i), value));
        }
        match store.txn(txn).await {
            Ok(r) if r.succeeded => return,
            // A task of the batch was removed meanwhile: write one by one.
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot checkpoint task statuses (kept in memory, retried later)");
                return;
            }
        }
    }
    for (key, status) in batch {
        write(store, key, status).await;
    }
}

async fn write(store: &dyn Store, key: &TaskKey, status: &pushcast_proto::model::TaskStatus) {
    let (v, a, i) = key;
    let Ok(value) = serde_json::to_vec(status) else {
        return;
    };
    // Only while the task exists: a status must never resurrect a stopped task.
    let txn = Txn::new()
        .when(Compare::Present(keys::task(v, a, i)))
        .and_then(Op::put(keys::status(v, a, i), value));
    if let Err(e) = store.txn(txn).await {
        tracing::warn!(task = %i, error = %e, "cannot write task status (kept in memory, retried at the next change or checkpoint)");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use pushcast_proto::model::TaskState;

    use super::*;

    fn st(state: TaskState, sent_bytes: u64) -> TaskStatus {
        TaskStatus {
            state,
            sent_bytes,
            ..Default::default()
        }
    }

    fn key(id: &str) -> TaskKey {
        ("v".into(), "a".into(), id.into())
    }

    #[test]
    fn counters_supersede_but_a_change_of_state_is_written_after_the_state_before() {
        use TaskState::*;
        let queued = vec![
            (key("t1"), st(Started, 1)),
            (key("t2"), st(Started, 5)),
            (key("t1"), st(Started, 2)),
            (key("t1"), st(Stopped, 3)),
            (key("t1"), st(Ready, 3)),
            (key("t2"), st(Started, 6)),
        ];
        let r = rounds(queued);
        let states: Vec<Vec<(&str, TaskState, u64)>> = r
            .iter()
            .map(|round| {
                round
                    .iter()
                    .map(|((_, _, id), s)| (id.as_str(), s.state, s.sent_bytes))
                    .collect()
            })
            .collect();
        assert_eq!(
            states,
            vec![
                vec![("t1", Started, 2), ("t2", Started, 5)],
                vec![("t1", Stopped, 3)],
                vec![("t1", Ready, 3), ("t2", Started, 6)],
            ]
        );
        assert!(rounds(Vec::new()).is_empty());
    }
}
