//! Leader election among controllers through a lease-guarded key: every replica serves
//! the API, only the leader schedules.
//!
//! A candidate creates `leader` (if absent) attached to its own lease and keeps the lease
//! alive. A leader that cannot renew steps down *before* its lease can expire (at two
//! thirds of the TTL since the last renewal), so two leaders never schedule at once. On
//! shutdown the leader revokes its lease: the next replica takes over at once instead of
//! after a TTL.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, Txn, WatchEvent};
use tokio::sync::watch;

/// Starts campaigning; the receiver says whether this node leads right now. Await the
/// handle at shutdown: the leader revokes its lease on the way out (immediate handover),
/// and the process must not exit before that call is done.
pub fn campaign(
    store: Arc<dyn Store>,
    node_id: String,
    ttl: Duration,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            let lost_at = match try_lead(store.as_ref(), &node_id, ttl, &tx, &shutdown).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: store error");
                    None
                }
            };
            let _ = tx.send(false);
            metrics::gauge!("pushcast_leader").set(0.0);
            // Another node leads: try again as soon as its key goes (its lease expired or
            // was revoked), or after a TTL anyway.
            let wait_for_vacancy = async {
                match lost_at {
                    Some(rev) => match store.watch(keys::LEADER, rev + 1).await {
                        Ok(mut events) => {
                            while let Some(Ok(ev)) = events.next().await {
                                if matches!(ev, WatchEvent::Delete { .. }) {
                                    return;
                                }
                            }
                        }
                        Err(_) => tokio::time::sleep(ttl / 4).await,
                    },
                    None => tokio::time::sleep(ttl / 4).await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait_for_vacancy => {}
                _ = tokio::time::sleep(ttl) => {}
            }
        }
    });
    (rx, handle)
}

/// Campaigns once. `Some(revision)`: another node leads (seen at that revision); `None`:
/// this node led and no longer does.
async fn try_lead(
    store: &dyn Store,
    node_id: &str,
    ttl: Duration,
    tx: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<Option<i64>, pushcast_store::StoreError> {
    let lease = store.grant_lease(ttl).await?;
    let txn = Txn::new()
        .when(Compare::Absent(keys::LEADER.to_string()))
        .and_then(Op::put_with_lease(
            keys::LEADER,
            node_id.as_bytes().to_vec(),
            lease,
        ));
    let r = store.txn(txn).await?;
    if !r.succeeded {
        let _ = store.revoke_lease(lease).await;
        return Ok(Some(r.revision));
    }
    tracing::info!(node = node_id, "elected leader");
    metrics::gauge!("pushcast_leader").set(1.0);
    let _ = tx.send(true);
    let period = ttl / 4;
    let step_down_after = ttl * 2 / 3;
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Hand over at once.
                let _ = tx.send(false);
                let _ = store.revoke_lease(lease).await;
                tracing::info!(node = node_id, "leadership released at shutdown");
                return Ok(None);
            }
            _ = tokio::time::sleep(period) => {}
        }
        match tokio::time::timeout(period, store.keep_alive(lease)).await {
            Ok(Ok(())) => last_ok = Instant::now(),
            Ok(Err(pushcast_store::StoreError::LeaseNotFound(_))) => {
                tracing::warn!(node = node_id, "leader lease lost");
                return Ok(None);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
            Err(_) => tracing::warn!("renewing the leader lease timed out"),
        }
        if last_ok.elapsed() >= step_down_after {
            tracing::warn!(
                node = node_id,
                "stepping down: the leader lease could not be renewed in time"
            );
            let _ = tx.send(false);
            let _ = store.revoke_lease(lease).await;
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Elections on the embedded store in a temp dir.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(pushcast_store::embedded::EmbeddedStore::open(&dir.path().join("s")).unwrap())
    }

    /// Waits up to 10 s for `f` to hold.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_clean_shutdown_hands_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let ttl = Duration::from_secs(30);
        let (a_stop, b_stop) = (CancellationToken::new(), CancellationToken::new());
        let (a, a_task) = campaign(store.clone(), "a".into(), ttl, a_stop.clone());
        let (b, b_task) = campaign(store.clone(), "b".into(), ttl, b_stop.clone());
        eventually("a leader", || *a.borrow() || *b.borrow()).await;
        // Give the other candidate time to (wrongly) win too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(*a.borrow() != *b.borrow(), "exactly one leader");
        let (leader_stop, leader_task, other) = if *a.borrow() {
            (a_stop, a_task, b.clone())
        } else {
            (b_stop, b_task, a.clone())
        };
        let t0 = Instant::now();
        leader_stop.cancel();
        leader_task.await.unwrap();
        eventually("the other to lead", || *other.borrow()).await;
        assert!(
            t0.elapsed() < ttl / 4,
            "handed over at once (the lease is revoked), not after the TTL: {:?}",
            t0.elapsed()
        );
        let key = store.get(keys::LEADER).await.unwrap().unwrap();
        assert!(key.lease != 0, "the leader key lives on the leader's lease");
    }

    #[tokio::test]
    async fn a_leader_that_loses_its_lease_steps_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let ttl = Duration::from_secs(2);
        let (leading, _task) = campaign(store.clone(), "a".into(), ttl, CancellationToken::new());
        eventually("leading", || *leading.borrow()).await;
        let key = store.get(keys::LEADER).await.unwrap().unwrap();
        // The lease is gone (as when etcd expired it while the leader was away).
        store.revoke_lease(key.lease).await.unwrap();
        eventually("stepped down", || !*leading.borrow()).await;
        // And it campaigns again: the key is free, so it leads again.
        eventually("leading again", || *leading.borrow()).await;
    }
}
