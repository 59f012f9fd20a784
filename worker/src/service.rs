//! `WorkerService`: what the controllers ask a worker directly.

use pushcast_proto::v1::{self, worker_service_server::WorkerService};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::hub::StreamId;
use crate::ingest::Publishers;
use crate::live::LiveTasks;

#[derive(Clone)]
pub struct WorkerApi {
    pub live: LiveTasks,
    /// To the task runner, which applies assignment updates.
    pub updates: mpsc::Sender<(v1::ApplyAssignmentsRequest, oneshot::Sender<u32>)>,
    /// Live publishes of the ingest.
    pub publishers: Publishers,
    /// The streams and their sampled rates (`ListStreams`).
    pub hub: crate::hub::Hub,
    pub rates: crate::stream_health::StreamRates,
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn get_task_status(
        &self,
        req: Request<v1::GetTaskStatusRequest>,
    ) -> Result<Response<v1::GetTaskStatusResponse>, Status> {
        let wanted = req.into_inner().tasks;
        let tasks = if wanted.is_empty() {
            self.live.all()
        } else {
            wanted
                .into_iter()
                .filter_map(|t| self.live.get(&(t.vhost, t.app, t.id)))
                .collect()
        };
        let tasks = tasks
            .iter()
            .map(|t| {
                let (v, a, i) = &t.key;
                t.snapshot().to_live_proto(v, a, i)
            })
            .collect();
        Ok(Response::new(v1::GetTaskStatusResponse { tasks }))
    }

    async fn list_streams(
        &self,
        _req: Request<v1::ListStreamsRequest>,
    ) -> Result<Response<v1::ListStreamsResponse>, Status> {
        Ok(Response::new(v1::ListStreamsResponse {
            streams: self.rates.health(&self.hub),
        }))
    }

    async fn apply_assignments(
        &self,
        req: Request<v1::ApplyAssignmentsRequest>,
    ) -> Result<Response<v1::ApplyAssignmentsResponse>, Status> {
        let (tx, rx) = oneshot::channel();
        self.updates
            .send((req.into_inner(), tx))
            .await
            .map_err(|_| Status::unavailable("the worker is shutting down"))?;
        let changed = rx
            .await
            .map_err(|_| Status::unavailable("the worker is shutting down"))?;
        Ok(Response::new(v1::ApplyAssignmentsResponse { changed }))
    }

    async fn disconnect_stream(
        &self,
        req: Request<v1::DisconnectStreamRequest>,
    ) -> Result<Response<v1::DisconnectStreamResponse>, Status> {
        let r = req.into_inner();
        let disconnected = self
            .publishers
            .disconnect(&StreamId::new(r.vhost, r.app, r.stream));
        Ok(Response::new(v1::DisconnectStreamResponse { disconnected }))
    }
}

#[cfg(test)]
mod tests {
    //! `WorkerService` in process.
    #![allow(clippy::unwrap_used)]

    use pushcast_proto::model::TaskSpec;

    use super::*;
    use crate::live::TaskLive;
    use crate::status::StatusWriter;

    fn api() -> (
        WorkerApi,
        mpsc::Receiver<(v1::ApplyAssignmentsRequest, oneshot::Sender<u32>)>,
    ) {
        let (updates, rx) = mpsc::channel(4);
        let api = WorkerApi {
            live: LiveTasks::default(),
            updates,
            publishers: Publishers::default(),
            hub: crate::hub::Hub::default(),
            rates: Default::default(),
        };
        (api, rx)
    }

    #[tokio::test]
    async fn live_status_of_all_tasks_or_the_ones_asked_for() {
        let (api, _rx) = api();
        for id in ["t1", "t2"] {
            let spec: TaskSpec = serde_json::from_value(serde_json::json!({
                "id": id, "vhost": "v", "app": "a", "stream": {"name": "s"},
                "protocol": "rtmp", "url": "rtmp://h/live", "stream_key": id, "created_ms": 0,
            }))
            .unwrap();
            let key = ("v".to_string(), "a".to_string(), id.to_string());
            let live = TaskLive::new(key, "w1", None, &spec, StatusWriter::detached().0);
            api.live.insert(std::sync::Arc::new(live));
        }
        let all = api
            .get_task_status(Request::new(v1::GetTaskStatusRequest { tasks: vec![] }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.tasks.len(), 2);
        let one = v1::TaskRef {
            vhost: "v".into(),
            app: "a".into(),
            id: "t2".into(),
        };
        let missing = v1::TaskRef {
            id: "nope".into(),
            ..one.clone()
        };
        let some = api
            .get_task_status(Request::new(v1::GetTaskStatusRequest {
                tasks: vec![one, missing],
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(some.tasks.len(), 1);
        assert_eq!(some.tasks[0].task.as_ref().unwrap().id, "t2");
        assert_eq!(some.tasks[0].worker, "w1");
    }

    #[tokio::test]
    async fn assignments_go_to_the_runner_and_its_answer_comes_back() {
        let (api, mut rx) = api();
        let runner = tokio::spawn(async move {
            let (req, reply) = rx.recv().await.unwrap();
            reply.send(req.updates.len() as u32 + 40).unwrap();
        });
        let req = v1::ApplyAssignmentsRequest {
            updates: vec![v1::AssignmentUpdate::default(); 2],
            full: true,
        };
        let r = api.apply_assignments(Request::new(req)).await.unwrap();
        assert_eq!(r.into_inner().changed, 42);
        runner.await.unwrap();
        // The runner is gone (shutting down): unavailable, not a hang.
        let err = api
            .apply_assignments(Request::new(v1::ApplyAssignmentsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn disconnecting_a_stream_that_is_not_live_here_says_so() {
        let (api, _rx) = api();
        let r = api
            .disconnect_stream(Request::new(v1::DisconnectStreamRequest {
                vhost: "v".into(),
                app: "a".into(),
                stream: "s".into(),
            }))
            .await
            .unwrap();
        assert!(!r.into_inner().disconnected);
    }
}
