//! gRPC clients of the workers (`WorkerService`), one lazily connected channel per worker
//! address, shared by the API (live counters) and the scheduler (assignment updates).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushcast_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::{Channel, Endpoint};

/// How long a call to a worker may take: the API never waits long on a sick worker.
pub const WORKER_DEADLINE: Duration = Duration::from_millis(500);

#[derive(Clone, Default)]
pub struct WorkerClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl WorkerClients {
    /// A client of the worker at `addr` (`host:port`); `None` if the address is invalid.
    pub fn client(&self, addr: &str) -> Option<WorkerServiceClient<Channel>> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(addr) {
            return Some(WorkerServiceClient::new(c.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(WORKER_DEADLINE)
            .timeout(WORKER_DEADLINE);
        let channel = endpoint.connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Some(WorkerServiceClient::new(channel))
    }
}
