//! gRPC clients of the workers (`WorkerService`), one lazily connected channel per worker
//! address, shared by the API (live counters) and the scheduler (assignment updates).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushcast_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long a call to a worker may take: the API never waits long on a sick worker.
pub const WORKER_DEADLINE: Duration = Duration::from_millis(500);

#[derive(Clone, Default)]
pub struct WorkerClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// TLS toward the workers (`https://`); `None`: plain h2c.
    tls: Option<ClientTlsConfig>,
}

impl WorkerClients {
    /// Clients that call workers over TLS when `tls` is given.
    pub fn with_tls(tls: Option<ClientTlsConfig>) -> WorkerClients {
        WorkerClients {
            channels: Default::default(),
            tls,
        }
    }

    /// A client of the worker at `addr` (`host:port`); `None` if the address is invalid.
    pub fn client(&self, addr: &str) -> Option<WorkerServiceClient<Channel>> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(addr) {
            return Some(WorkerServiceClient::new(c.clone()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .ok()?
            .connect_timeout(WORKER_DEADLINE)
            .timeout(WORKER_DEADLINE);
        if let Some(tls) = &self.tls {
            endpoint = match endpoint.tls_config(tls.clone()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot set up TLS toward the worker");
                    return None;
                }
            };
        }
        let channel = endpoint.connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Some(WorkerServiceClient::new(channel))
    }
}
