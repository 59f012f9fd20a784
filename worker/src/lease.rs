//! The worker's lease in the store: its registration and its live streams hang off it, so
//! they vanish by themselves when the worker dies.
//!
//! The lease is renewed every third of its TTL. **Fencing**: when no renewal has
//! succeeded for two thirds of the TTL, the worker is *fenced* — it must stop every push
//! session at once — because the store may expire the lease soon and the scheduler will
//! then give the worker's tasks to another worker; stopping first means two workers never
//! push the same destination at the same moment. When renewal finds the lease gone, a new
//! lease is granted and published, so owners of leased keys can write them again; the
//! fence lifts once a renewal (or a new lease) succeeds.

use std::sync::Arc;
use std::time::Duration;

use pushcast_runtime::CancellationToken;
use pushcast_store::{LeaseId, Store, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

/// A kept-alive lease.
#[derive(Clone)]
pub struct Lease {
    rx: watch::Receiver<LeaseId>,
    fenced: watch::Receiver<bool>,
    /// The renewal task; it revokes the lease at shutdown (see [`Lease::stopped`]).
    task: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
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
        let (fence_tx, fenced) = watch::channel(false);
        let task = tokio::spawn(renew(store, ttl, tx, fence_tx, shutdown));
        Ok(Lease {
            rx,
            fenced,
            task: std::sync::Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    /// Resolves once the renewal task has ended, i.e. after shutdown, when the lease has
    /// been revoked (its streams vanish at once instead of after a TTL). Await it before
    /// the process exits.
    pub async fn stopped(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// The current lease id.
    pub fn id(&self) -> LeaseId {
        *self.rx.borrow()
    }

    /// A receiver that sees every new lease id.
    pub fn subscribe(&self) -> watch::Receiver<LeaseId> {
        self.rx.clone()
    }

    /// The worker's fence: up while no push may run.
    pub fn fence(&self) -> Fence {
        Fence(self.fenced.clone())
    }
}

/// The fence as the pushes see it: while it is up (the lease could not be renewed in
/// time), no push may run; everything that pushes waits on it the same way.
#[derive(Clone)]
pub struct Fence(watch::Receiver<bool>);

impl Fence {
    /// A fence that stays down (tests, and processes without a lease).
    pub fn down() -> Fence {
        let (tx, rx) = watch::channel(false);
        // The sender is dropped: the fence can never go up.
        drop(tx);
        Fence(rx)
    }

    /// Whether the fence is up now.
    pub fn is_up(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the fence is down; false if `cancel` fired first.
    pub async fn lifted(&mut self, cancel: &CancellationToken) -> bool {
        while *self.0.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                r = self.0.changed() => if r.is_err() { return false },
            }
        }
        !cancel.is_cancelled()
    }

    /// Resolves when the fence goes up (never, if it can no longer change).
    pub async fn raised(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn renew(
    store: Arc<dyn Store>,
    ttl: Duration,
    tx: watch::Sender<LeaseId>,
    fence: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(200));
    let fence_after = ttl * 2 / 3;
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        let id = *tx.borrow();
        // The renewal may hang while the store is unreachable: never past the fence time.
        let deadline = (last_ok + fence_after).max(Instant::now() + Duration::from_millis(100));
        match tokio::time::timeout_at(deadline, store.keep_alive(id)).await {
            Ok(Ok(())) => last_ok = Instant::now(),
            Ok(Err(StoreError::LeaseNotFound(_))) => {
                tracing::warn!(lease = id, "lease expired; granting a new one");
                set_fence(&fence, true);
                match store.grant_lease(ttl).await {
                    Ok(new) => {
                        last_ok = Instant::now();
                        let _ = tx.send(new);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot grant a new lease"),
                }
            }
            Ok(Err(e)) => tracing::warn!(lease = id, error = %e, "cannot renew the lease"),
            Err(_) => tracing::warn!(lease = id, "renewing the lease timed out"),
        }
        set_fence(&fence, last_ok.elapsed() >= fence_after);
    }
    let id = *tx.borrow();
    if let Err(e) = store.revoke_lease(id).await {
        tracing::debug!(error = %e, "lease not revoked at shutdown");
    }
}

fn set_fence(fence: &watch::Sender<bool>, on: bool) {
    if *fence.borrow() != on {
        if on {
            tracing::warn!(
                "FENCED: the lease could not be renewed in time; stopping every push session"
            );
        } else {
            tracing::info!("fence lifted: the lease is renewed");
        }
        let _ = fence.send(on);
    }
}
