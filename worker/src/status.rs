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
        let mut due: HashMap<TaskKey, TaskStatus> = HashMap::new();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m {
                Some((k, st)) => { due.insert(k, st); }
                None => return,
            },
            _ = checkpoint.tick() => {
                due.extend(live.all().iter().map(|t| (t.key.clone(), t.snapshot())));
            }
        }
        while let Ok((k, st)) = rx.try_recv() {
            due.insert(k, st);
        }
        let due: Vec<(TaskKey, TaskStatus)> = due.into_iter().collect();
        for batch in due.chunks(BATCH) {
            write_batch(store.as_ref(), batch).await;
        }
    }
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
