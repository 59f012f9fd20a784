//! The worker's lease in the store: its registration and its live streams hang off it, so
//! they vanish by themselves when the worker dies.
//!
//! The lease is renewed every third of its TTL. **Fencing**: when no renewal has
//! succeeded for two thirds of the TTL, the worker is *fenced* — it must stop every push
//! session at once — because the store may expire the lease soon and the scheduler will
//! then give the worker's tasks to another worker; stopping first means two workers never
//! push the same destination at the same moment. When renewal finds the lease gone, a new
//! lease is granted and published, so owners of leased keys can write them again.
//!
//! The fence is a **deadline**, not only a flag: each renewal moves "pushes may run until"
//! to two thirds of the TTL after it, and [`Fence::is_up`] compares it with the clock.
//! A process that was frozen (SIGSTOP, a stalled VM) wakes up with every timer overdue
//! and its tasks run in any order; whatever checks the fence first sees it up, before
//! the renewal task has even run. **After a lost lease** the fence stays up for one more
//! TTL: by then the worker has seen where the cluster moved its tasks (its watches
//! deliver the changes at once), so it does not restart a push that is now another
//! worker's.
//!
//! **Without a quorum** (etcd members down, the remaining ones without a leader), no
//! lease can expire and a new leader renews them all: a failed renewal while the store
//! proves it has no quorum ([`Store::quorum_lost`]) counts as a renewal, so running
//! pushes keep going through an etcd outage. A partition (members that do not answer)
//! proves nothing, and fences.

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
    fenced: watch::Receiver<FenceState>,
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
        let (fence_tx, fenced) = watch::channel(FenceState {
            valid_until: Instant::now() + ttl * 2 / 3,
            held_until: None,
        });
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

/// What the renewal task last decided: pushes may run until `valid_until` (two thirds
/// of the TTL after the last renewal), and not before `held_until` (a TTL after a lost
/// lease was replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FenceState {
    valid_until: Instant,
    held_until: Option<Instant>,
}

impl FenceState {
    fn up_at(&self, now: Instant) -> bool {
        now >= self.valid_until || self.held_until.is_some_and(|h| now < h)
    }

    /// When, with no further news, the fence changes next (`None`: never).
    fn next_change(&self, now: Instant) -> Option<Instant> {
        match self.held_until {
            Some(h) if now < h => Some(h),
            _ if now < self.valid_until => Some(self.valid_until),
            _ => None,
        }
    }
}

/// The fence as the pushes see it: while it is up (the lease could not be renewed in
/// time, or was lost a moment ago), no push may run; everything that pushes waits on it
/// the same way, and checks [`Fence::is_up`] before it connects.
#[derive(Clone)]
pub struct Fence(watch::Receiver<FenceState>);

impl Fence {
    /// A fence that stays down (tests, and processes without a lease).
    pub fn down() -> Fence {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, rx) = watch::channel(FenceState {
            valid_until: far,
            held_until: None,
        });
        // The sender is dropped: the fence can never go up.
        drop(tx);
        Fence(rx)
    }

    /// Whether the fence is up now (by the clock: see the module's doc).
    pub fn is_up(&self) -> bool {
        self.0.borrow().up_at(Instant::now())
    }

    /// Waits until the fence is down; false if `cancel` fired first.
    pub async fn lifted(&mut self, cancel: &CancellationToken) -> bool {
        loop {
            let state = *self.0.borrow_and_update();
            let now = Instant::now();
            if !state.up_at(now) {
                return !cancel.is_cancelled();
            }
            // Up by the clock until a renewal moves the deadline; up by a hold until the
            // hold ends.
            let wake = state.held_until.filter(|h| now < *h);
            tokio::select! {
                _ = cancel.cancelled() => return false,
                r = self.0.changed() => if r.is_err() && wake.is_none() { return false },
                _ = sleep_until_some(wake) => {}
            }
        }
    }

    /// Resolves when the fence goes up (never, if it can no longer change).
    pub async fn raised(&mut self) {
        let mut open = true;
        loop {
            let state = *self.0.borrow_and_update();
            let now = Instant::now();
            if state.up_at(now) {
                return;
            }
            tokio::select! {
                r = self.0.changed(), if open => if r.is_err() { open = false },
                _ = sleep_until_some(state.next_change(now)) => {}
            }
        }
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn renew(
    store: Arc<dyn Store>,
    ttl: Duration,
    tx: watch::Sender<LeaseId>,
    fence: watch::Sender<FenceState>,
    shutdown: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(200));
    let fence_after = ttl * 2 / 3;
    let mut last_ok = Instant::now();
    let mut held_until = None;
    let mut was_up = false;
    let mut quorum_gone = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        let id = *tx.borrow();
        // The renewal may hang while the store is unreachable: never past the fence time.
        let deadline = (last_ok + fence_after).max(Instant::now() + Duration::from_millis(100));
        match tokio::time::timeout_at(deadline, store.keep_alive(id)).await {
            Ok(Ok(())) => {
                last_ok = Instant::now();
                if std::mem::take(&mut quorum_gone) {
                    tracing::info!("the store has a quorum again; the lease is renewed");
                }
            }
            Ok(Err(StoreError::LeaseNotFound(_))) => {
                tracing::warn!(lease = id, "lease expired; granting a new one");
                // The cluster may have moved this worker's tasks: no push for a TTL.
                held_until = Some(Instant::now() + ttl);
                publish_fence(&fence, last_ok + fence_after, held_until, &mut was_up);
                match store.grant_lease(ttl).await {
                    Ok(new) => {
                        last_ok = Instant::now();
                        let _ = tx.send(new);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot grant a new lease"),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = id, error = %e, "cannot renew the lease");
                no_quorum(&*store, &mut last_ok, &mut quorum_gone).await;
            }
            Err(_) => {
                tracing::warn!(lease = id, "renewing the lease timed out");
                no_quorum(&*store, &mut last_ok, &mut quorum_gone).await;
            }
        }
        publish_fence(&fence, last_ok + fence_after, held_until, &mut was_up);
    }
    let id = *tx.borrow();
    if let Err(e) = store.revoke_lease(id).await {
        tracing::debug!(error = %e, "lease not revoked at shutdown");
    }
}

/// A renewal failed: when the store proves it has no quorum, no lease can expire (and a
/// new leader gives every lease its whole TTL again), so the worker is as safe as after
/// a renewal and its pushes keep going; otherwise (a partition, a member that does not
/// answer) nothing changes and the fence goes up on time.
async fn no_quorum(store: &dyn Store, last_ok: &mut Instant, quorum_gone: &mut bool) {
    if store.quorum_lost().await {
        if !std::mem::replace(quorum_gone, true) {
            tracing::warn!(
                "the store has no quorum: no lease can expire; push sessions keep going"
            );
        }
        *last_ok = Instant::now();
    }
}

/// Publishes the fence's deadlines, and logs when it goes up or down (as seen by the
/// renewal task; the fence itself reads the clock).
fn publish_fence(
    fence: &watch::Sender<FenceState>,
    valid_until: Instant,
    held_until: Option<Instant>,
    was_up: &mut bool,
) {
    let state = FenceState {
        valid_until,
        held_until,
    };
    if *fence.borrow() != state {
        let _ = fence.send(state);
    }
    let up = state.up_at(Instant::now());
    if up != *was_up {
        if up {
            tracing::warn!(
                "FENCED: the lease could not be renewed in time; stopping every push session"
            );
        } else {
            tracing::info!("fence lifted: the lease is renewed");
        }
        *was_up = up;
    }
}

#[cfg(test)]
mod tests {
    //! The fence's timing, on tokio's paused clock: the store is a fake whose lease calls
    //! succeed, fail or hang on demand.
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use pushcast_store::{KeyValue, Listing, Txn, TxnResult, WatchStream};

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Renewal {
        Ok,
        Unavailable,
        Hang,
        Lost,
    }

    /// Only leases: every renewal answers as `renewal` says.
    struct Leases {
        renewal: Mutex<Renewal>,
        granted: Mutex<Vec<LeaseId>>,
        revoked: Mutex<Vec<LeaseId>>,
        quorum_lost: Mutex<bool>,
    }

    impl Leases {
        fn new() -> Arc<Leases> {
            Arc::new(Leases {
                renewal: Mutex::new(Renewal::Ok),
                granted: Mutex::new(Vec::new()),
                revoked: Mutex::new(Vec::new()),
                quorum_lost: Mutex::new(false),
            })
        }
        fn set(&self, r: Renewal) {
            *self.renewal.lock().unwrap() = r;
        }
    }

    fn not_here<T>() -> pushcast_store::Result<T> {
        Err(StoreError::Internal("not in this fake".into()))
    }

    #[async_trait::async_trait]
    impl Store for Leases {
        async fn get(&self, _: &str) -> pushcast_store::Result<Option<KeyValue>> {
            not_here()
        }
        async fn list(&self, _: &str) -> pushcast_store::Result<Listing> {
            not_here()
        }
        async fn put(&self, _: &str, _: Vec<u8>, _: LeaseId) -> pushcast_store::Result<i64> {
            not_here()
        }
        async fn delete(&self, _: &str) -> pushcast_store::Result<bool> {
            not_here()
        }
        async fn txn(&self, _: Txn) -> pushcast_store::Result<TxnResult> {
            not_here()
        }
        async fn watch(&self, _: &str, _: i64) -> pushcast_store::Result<WatchStream> {
            not_here()
        }
        async fn grant_lease(&self, _: Duration) -> pushcast_store::Result<LeaseId> {
            let mut g = self.granted.lock().unwrap();
            let id = g.len() as LeaseId + 1;
            g.push(id);
            if *self.renewal.lock().unwrap() == Renewal::Lost {
                *self.renewal.lock().unwrap() = Renewal::Ok;
            }
            Ok(id)
        }
        async fn keep_alive(&self, lease: LeaseId) -> pushcast_store::Result<()> {
            let r = *self.renewal.lock().unwrap();
            match r {
                Renewal::Ok => Ok(()),
                Renewal::Unavailable => Err(StoreError::Unavailable("cut off".into())),
                Renewal::Hang => std::future::pending().await,
                Renewal::Lost => Err(StoreError::LeaseNotFound(lease)),
            }
        }
        async fn revoke_lease(&self, lease: LeaseId) -> pushcast_store::Result<()> {
            self.revoked.lock().unwrap().push(lease);
            Ok(())
        }
        async fn lease_ttl(&self, _: LeaseId) -> pushcast_store::Result<Option<Duration>> {
            not_here()
        }
        async fn quorum_lost(&self) -> bool {
            *self.quorum_lost.lock().unwrap()
        }
        async fn revision(&self) -> pushcast_store::Result<i64> {
            not_here()
        }
    }

    const TTL: Duration = Duration::from_secs(3);

    /// How long after `since` the fence goes up (or `None` within `limit`).
    async fn fenced_after(fence: &mut Fence, since: Instant, limit: Duration) -> Option<Duration> {
        tokio::time::timeout(limit, fence.raised()).await.ok()?;
        Some(since.elapsed())
    }

    /// A lease kept on `store` with the TTL of these tests, and its fence.
    async fn kept(store: &Arc<Leases>) -> (Lease, Fence) {
        let lease = Lease::keep(store.clone(), TTL, CancellationToken::new())
            .await
            .unwrap();
        let fence = lease.fence();
        (lease, fence)
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_leases_never_fence() {
        let store = Leases::new();
        let (lease, mut fence) = kept(&store).await;
        assert!(
            fenced_after(&mut fence, Instant::now(), TTL * 10)
                .await
                .is_none()
        );
        assert_eq!(lease.id(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_fence_at_two_thirds_of_the_ttl_and_lift_when_they_succeed() {
        let store = Leases::new();
        let (_lease, mut fence) = kept(&store).await;
        // Renewals every TTL/3 (1 s); the last one that succeeds is at 3 s.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let last_ok = Instant::now() - Duration::from_millis(500);
        store.set(Renewal::Unavailable);
        let after = fenced_after(&mut fence, last_ok, TTL * 2)
            .await
            .expect("fenced");
        assert_eq!(
            after,
            TTL * 2 / 3,
            "fenced two thirds of the TTL after the last renewal"
        );
        assert!(fence.is_up());
        // Before the lease could expire (the TTL after the last renewal), nothing pushes.
        assert!(after < TTL);
        store.set(Renewal::Ok);
        assert!(fence.lifted(&CancellationToken::new()).await);
        assert!(!fence.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_renewal_fences_on_time_too() {
        let store = Leases::new();
        let (_lease, mut fence) = kept(&store).await;
        let t0 = Instant::now();
        store.set(Renewal::Hang);
        // The first renewal (at 1 s) hangs; it must not hold the fence back past 2 s.
        let after = fenced_after(&mut fence, t0, TTL * 2).await.expect("fenced");
        assert_eq!(after, TTL * 2 / 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_fences_at_once_and_is_replaced() {
        let store = Leases::new();
        let (lease, mut fence) = kept(&store).await;
        let mut ids = lease.subscribe();
        let t0 = Instant::now();
        store.set(Renewal::Lost);
        ids.changed().await.unwrap();
        assert_eq!(*ids.borrow(), 2, "a new lease, published");
        assert_eq!(t0.elapsed(), TTL / 3, "found at the first renewal");
        // Up at once, and held for a TTL (the cluster may have moved the tasks), though
        // the new lease renews.
        assert!(fence.is_up());
        let t1 = Instant::now();
        assert!(fence.lifted(&CancellationToken::new()).await);
        assert_eq!(t1.elapsed(), TTL, "held for a TTL after the loss");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_quorum_the_fence_stays_down() {
        let store = Leases::new();
        let (_lease, mut fence) = kept(&store).await;
        *store.quorum_lost.lock().unwrap() = true;
        store.set(Renewal::Unavailable);
        assert!(
            fenced_after(&mut fence, Instant::now(), TTL * 10)
                .await
                .is_none(),
            "a store without a quorum expires no lease"
        );
        // A partition (the store cannot tell) fences as before.
        *store.quorum_lost.lock().unwrap() = false;
        let t0 = Instant::now();
        let after = fenced_after(&mut fence, t0, TTL * 2).await.expect("fenced");
        assert!(after <= TTL * 2 / 3, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_process_sees_the_fence_up_before_any_task_runs() {
        // The renewal task's last word: pushes may run for 2 more seconds.
        let (tx, rx) = watch::channel(FenceState {
            valid_until: Instant::now() + Duration::from_secs(2),
            held_until: None,
        });
        let fence = Fence(rx);
        assert!(!fence.is_up());
        // Frozen for 3 s: no task ran, nothing was sent; the clock alone raises it.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(fence.is_up());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_revokes_the_lease() {
        let store = Leases::new();
        let stop = CancellationToken::new();
        let lease = Lease::keep(store.clone(), TTL, stop.clone()).await.unwrap();
        stop.cancel();
        lease.stopped().await;
        assert_eq!(*store.revoked.lock().unwrap(), vec![1]);
    }
}
