//! The worker's lease in the store: its registration and its live streams hang off it, so
//! they vanish by themselves when the worker dies.
//!
//! The lease is renewed every third of its TTL. When renewal finds it gone (the store
//! expired it, e.g. after a long partition), a new lease is granted and published on a
//! watch channel so owners of leased keys can write them again.

use std::sync::Arc;
use std::time::Duration;

use pushcast_runtime::CancellationToken;
use pushcast_store::{LeaseId, Store, StoreError};
use tokio::sync::watch;

/// A kept-alive lease.
#[derive(Clone)]
pub struct Lease {
    rx: watch::Receiver<LeaseId>,
}

impl Lease {
    /// Grants a lease and keeps it alive until `shutdown`, then revokes it.
    pub async fn keep(
        store: Arc<dyn Store>,
        ttl: Duration,
        shutdown: CancellationToken,
    ) -> Result<Lease, StoreError> {
        let id = store.grant_lease(ttl).await?;
        let (tx, rx) = watch::channel(id);
        tokio::spawn(renew(store, ttl, tx, shutdown));
        Ok(Lease { rx })
    }

    /// The current lease id.
    pub fn id(&self) -> LeaseId {
        *self.rx.borrow()
    }

    /// A receiver that sees every new lease id.
    pub fn subscribe(&self) -> watch::Receiver<LeaseId> {
        self.rx.clone()
    }
}

async fn renew(
    store: Arc<dyn Store>,
    ttl: Duration,
    tx: watch::Sender<LeaseId>,
    shutdown: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        let id = *tx.borrow();
        match store.keep_alive(id).await {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                tracing::warn!(lease = id, "lease expired; granting a new one");
                match store.grant_lease(ttl).await {
                    Ok(new) => {
                        let _ = tx.send(new);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot grant a new lease"),
                }
            }
            Err(e) => tracing::warn!(lease = id, error = %e, "cannot renew the lease"),
        }
    }
    let id = *tx.borrow();
    if let Err(e) = store.revoke_lease(id).await {
        tracing::debug!(error = %e, "lease not revoked at shutdown");
    }
}
