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
