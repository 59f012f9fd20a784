//! Writes the status of the tasks this worker holds to the store: at once on a state
//! change, and as a slow checkpoint of the counters otherwise, so the write volume is
//! O(state changes), never O(tasks × time). Live counters are served by `WorkerService`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pushcast_proto::keys;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, Txn};
use tokio::sync::mpsc;

use crate::live::{LiveTasks, TaskKey};

/// How often running tasks' counters are checkpointed to the store.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// Handle to ask for a task's status to be written.
#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::UnboundedSender<TaskKey>,
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

    /// Writes the task's current status soon (changes queued meanwhile are merged).
    pub fn changed(&self, key: &TaskKey) {
        let _ = self.tx.send(key.clone());
    }
}

async fn run(
    store: Arc<dyn Store>,
    live: LiveTasks,
    mut rx: mpsc::UnboundedReceiver<TaskKey>,
    shutdown: CancellationToken,
) {
    let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
    checkpoint.tick().await;
    loop {
        let mut due: HashSet<TaskKey> = HashSet::new();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            k = rx.recv() => match k {
                Some(k) => { due.insert(k); }
                None => return,
            },
            _ = checkpoint.tick() => {
                due.extend(live.all().iter().map(|t| t.key.clone()));
            }
        }
        while let Ok(k) = rx.try_recv() {
            due.insert(k);
        }
        for key in due {
            let Some(task) = live.get(&key) else { continue };
            write(store.as_ref(), &key, &task.snapshot()).await;
        }
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
