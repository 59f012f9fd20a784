//! Fresh counters for the API: the store holds only slow checkpoints of a task's status,
//! so before answering, the controller asks the workers that hold the tasks
//! (`WorkerService.GetTaskStatus`) and shows what they say. A worker that does not answer
//! in time leaves the checkpoint in place: the API never waits long on a sick worker.

use std::collections::HashMap;
use std::sync::Arc;

use pushcast_proto::model::{Task, TaskState, TaskStatus};
use pushcast_proto::v1;

use crate::informer::Informer;
use crate::worker_clients::{WORKER_DEADLINE, WorkerClients};

#[derive(Clone)]
pub struct LiveStatus {
    /// Where the workers' addresses come from.
    informer: Arc<Informer>,
    clients: WorkerClients,
}

impl LiveStatus {
    pub fn new(informer: Arc<Informer>, clients: WorkerClients) -> LiveStatus {
        LiveStatus { informer, clients }
    }

    /// Replaces the checkpointed status of `tasks` with their workers' live status.
    pub async fn refresh(&self, tasks: &mut [Task]) {
        let mut by_worker: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if let Some(w) = &t.status.worker {
                by_worker.entry(w.clone()).or_default().push(i);
            }
        }
        let calls = by_worker.into_iter().map(|(worker, idx)| {
            let refs: Vec<v1::TaskRef> = idx
                .iter()
                .map(|&i| v1::TaskRef {
                    vhost: tasks[i].spec.vhost.clone(),
                    app: tasks[i].spec.app.clone(),
                    id: tasks[i].spec.id.clone(),
                })
                .collect();
            async move { (self.ask(&worker, refs).await, worker, idx) }
        });
        for (answer, worker, idx) in futures::future::join_all(calls).await {
            let Some(answer) = answer else {
                // The worker is gone (its lease expired): nobody pushes these tasks now.
                for i in idx {
                    let st = &mut tasks[i].status;
                    if matches!(st.state, TaskState::Started | TaskState::Error) {
                        st.state = TaskState::Ready;
                        st.last_error = Some(format!(
                            "worker {worker} is gone; waiting to be rescheduled"
                        ));
                    }
                }
                continue;
            };
            let by_ref: HashMap<(&str, &str, &str), usize> = idx
                .iter()
                .map(|&i| {
                    let t = &tasks[i].spec;
                    ((t.vhost.as_str(), t.app.as_str(), t.id.as_str()), i)
                })
                .collect();
            let mut found = Vec::with_capacity(answer.len());
            for live in &answer {
                let Some(r) = &live.task else { continue };
                let at = (r.vhost.as_str(), r.app.as_str(), r.id.as_str());
                if let Some(&i) = by_ref.get(&at) {
                    found.push((i, TaskStatus::from_live_proto(live)));
                }
            }
            for (i, status) in found {
                tasks[i].status = status;
            }
        }
    }

    /// The health of the streams live on `workers` (each asked once, in parallel; a
    /// worker that does not answer in time gives none), by (vhost, app, stream).
    pub async fn stream_health(
        &self,
        workers: &[String],
    ) -> HashMap<(String, String, String), v1::StreamHealth> {
        let calls = workers.iter().map(|worker| async move {
            let addr = self.informer.read().worker(worker)?.grpc_addr.clone();
            let mut client = self.clients.client(&addr)?;
            let call = client.list_streams(v1::ListStreamsRequest {});
            match tokio::time::timeout(WORKER_DEADLINE, call).await {
                Ok(Ok(resp)) => Some(resp.into_inner().streams),
                _ => None,
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| ((h.vhost.clone(), h.app.clone(), h.stream.clone()), h))
            .collect()
    }

    /// The worker's live statuses of `refs`; `None` when the worker is not registered.
    async fn ask(&self, worker: &str, refs: Vec<v1::TaskRef>) -> Option<Vec<v1::LiveTaskStatus>> {
        let addr = self.informer.read().worker(worker)?.grpc_addr.clone();
        let Some(mut client) = self.clients.client(&addr) else {
            return Some(vec![]);
        };
        let call = client.get_task_status(v1::GetTaskStatusRequest { tasks: refs });
        Some(match tokio::time::timeout(WORKER_DEADLINE, call).await {
            Ok(Ok(resp)) => resp.into_inner().tasks,
            Ok(Err(e)) => {
                tracing::debug!(worker, error = %e, "worker did not give live status");
                vec![]
            }
            Err(_) => {
                tracing::debug!(worker, "worker live status timed out");
                vec![]
            }
        })
    }
}
