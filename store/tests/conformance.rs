//! One behaviour suite for both stores: every test in `suite` is written once against
//! `Arc<dyn Store>` and run as `embedded::<name>` (redb in a temp dir) and `etcd::<name>`
//! (a real etcd process on free ports). Backend-specific tests (restart, outage,
//! compaction) follow at the end.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushcast_store::embedded::{EmbeddedOptions, EmbeddedStore};
use pushcast_store::etcd::EtcdStore;
use pushcast_store::{Compare, Op, Store, StoreError, Txn, WatchEvent, WatchStream};
use pushcast_testkit::etcd::EtcdProcess;

/// How long a test waits for an event that should come (generous: CI machines are slow;
/// a test that passes returns as soon as the condition holds).
const WAIT: Duration = Duration::from_secs(5);
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);
const ETCD_PREFIX: &str = "/pushcast/";

/// A store plus what must outlive it (temp dir or etcd process). Fields drop in order:
/// the store first, then the guard.
struct Harness {
    store: Arc<dyn Store>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn embedded_harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("state").join("store.redb")).unwrap();
    Harness {
        store: Arc::new(store),
        _guard: Box::new(dir),
    }
}

async fn start_etcd() -> EtcdProcess {
    tokio::task::spawn_blocking(EtcdProcess::start)
        .await
        .unwrap()
}

async fn etcd_harness() -> Harness {
    let etcd = start_etcd().await;
    let store = EtcdStore::connect(&[etcd.endpoint()], ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    Harness {
        store: Arc::new(store),
        _guard: Box::new(etcd),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::embedded_harness().await;
                    super::suite::$name(h.store.clone()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::etcd_harness().await;
                    super::suite::$name(h.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_delete,
    list_is_sorted_and_does_not_leak_siblings,
    create_if_absent_race,
    cas_by_mod_revision,
    cas_by_value_and_presence,
    txn_that_changes_nothing_keeps_the_revision,
    txn_rejects_duplicate_keys,
    delete_prefix,
    watch_delivers_puts_and_deletes_in_order,
    watch_from_earlier_revision_replays,
    list_then_watch_misses_nothing,
    lease_expiry_deletes_keys,
    keep_alive_extends_the_lease,
    revoke_deletes_at_once,
    lease_ttl_counts_down_and_ends_with_the_lease,
    keep_alive_after_expiry_is_lease_not_found,
    unknown_lease_is_lease_not_found,
    put_without_lease_detaches_the_key,
);

/// Next watch event, failing the test on error, end or timeout.
async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

/// Asserts that no event arrives for a short while.
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn put_of(event: &WatchEvent) -> (&str, &[u8], i64) {
    match event {
        WatchEvent::Put(kv) => (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
        other => panic!("expected a put, got {other:?}"),
    }
}

fn delete_of(event: &WatchEvent) -> (&str, i64) {
    match event {
        WatchEvent::Delete { key, mod_revision } => (key.as_str(), *mod_revision),
        other => panic!("expected a delete, got {other:?}"),
    }
}

mod suite {
    use super::*;

    pub async fn put_get_delete(s: Arc<dyn Store>) {
        assert_eq!(s.get("k").await.unwrap(), None);
        let r1 = s.put("k", b"v1".to_vec(), 0).await.unwrap();
        assert!(r1 > 0);
        assert_eq!(s.revision().await.unwrap(), r1);
        let kv = s.get("k").await.unwrap().unwrap();
        assert_eq!(kv.key, "k");
        assert_eq!(kv.value, b"v1");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (r1, r1, 0));

        let r2 = s.put("k", b"v2".to_vec(), 0).await.unwrap();
        assert_eq!(r2, r1 + 1, "one write, one revision");
        let kv = s.get("k").await.unwrap().unwrap();
        assert_eq!(kv.value, b"v2");
        assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));

        assert!(s.delete("k").await.unwrap());
        assert_eq!(s.get("k").await.unwrap(), None);
        assert_eq!(s.revision().await.unwrap(), r2 + 1);
        assert!(!s.delete("k").await.unwrap());
        assert_eq!(
            s.revision().await.unwrap(),
            r2 + 1,
            "deleting nothing is no revision"
        );

        // A re-created key starts a new life.
        let r4 = s.put("k", b"v3".to_vec(), 0).await.unwrap();
        let kv = s.get("k").await.unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
    }

    pub async fn list_is_sorted_and_does_not_leak_siblings(s: Arc<dyn Store>) {
        for key in [
            "tasks/a/2",
            "tasks/ab/1",
            "tasks/a/10",
            "tasks/a/1",
            "tasks/a",
            "tasks/b/1",
        ] {
            s.put(key, key.as_bytes().to_vec(), 0).await.unwrap();
        }
        let listing = s.list("tasks/a/").await.unwrap();
        let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["tasks/a/1", "tasks/a/10", "tasks/a/2"]);
        assert_eq!(listing.kvs[0].value, b"tasks/a/1");
        assert_eq!(listing.revision, s.revision().await.unwrap());

        let all = s.list("").await.unwrap();
        let keys: Vec<&str> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tasks/a",
                "tasks/a/1",
                "tasks/a/10",
                "tasks/a/2",
                "tasks/ab/1",
                "tasks/b/1"
            ]
        );
        assert!(s.list("nothing/").await.unwrap().kvs.is_empty());
    }

    pub async fn create_if_absent_race(s: Arc<dyn Store>) {
        let before = s.revision().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let txn = Txn::new()
                    .when(Compare::Absent("tasks/x".into()))
                    .and_then(Op::put("tasks/x", vec![i]));
                (i, s.txn(txn).await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (i, result) = t.await.unwrap();
            if result.succeeded {
                winners.push((i, result.revision));
            }
        }
        assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
        let (winner, revision) = winners[0];
        let kv = s.get("tasks/x").await.unwrap().unwrap();
        assert_eq!(kv.value, vec![winner]);
        assert_eq!(kv.create_revision, revision);
        assert_eq!(
            s.revision().await.unwrap(),
            before + 1,
            "losers write nothing"
        );
    }

    pub async fn cas_by_mod_revision(s: Arc<dyn Store>) {
        // ModRevision 0 means "absent".
        let created = s
            .txn(
                Txn::new()
                    .when(Compare::ModRevision("k".into(), 0))
                    .and_then(Op::put("k", "v1")),
            )
            .await
            .unwrap();
        assert!(created.succeeded);
        let r1 = s.get("k").await.unwrap().unwrap().mod_revision;
        assert_eq!(r1, created.revision);

        let swapped = s
            .txn(
                Txn::new()
                    .when(Compare::ModRevision("k".into(), r1))
                    .and_then(Op::put("k", "v2")),
            )
            .await
            .unwrap();
        assert!(swapped.succeeded);
        assert_eq!(swapped.revision, r1 + 1);

        // A stale revision fails and applies the failure branch instead.
        let stale = s
            .txn(
                Txn::new()
                    .when(Compare::ModRevision("k".into(), r1))
                    .and_then(Op::put("k", "v3"))
                    .or_else(Op::put("conflicts", "1")),
            )
            .await
            .unwrap();
        assert!(!stale.succeeded);
        assert_eq!(stale.revision, r1 + 2);
        assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v2");
        assert_eq!(s.get("conflicts").await.unwrap().unwrap().value, b"1");
    }

    pub async fn cas_by_value_and_presence(s: Arc<dyn Store>) {
        s.put("k", b"v1".to_vec(), 0).await.unwrap();
        let ok = s
            .txn(
                Txn::new()
                    .when(Compare::Value("k".into(), b"v1".to_vec()))
                    .when(Compare::Present("k".into()))
                    .when(Compare::Absent("other".into()))
                    .and_then(Op::put("k", "v2")),
            )
            .await
            .unwrap();
        assert!(ok.succeeded);
        let wrong = s
            .txn(
                Txn::new()
                    .when(Compare::Value("k".into(), b"v1".to_vec()))
                    .and_then(Op::put("k", "v3")),
            )
            .await
            .unwrap();
        assert!(!wrong.succeeded);
        assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v2");

        // A value compare on a missing key fails, even against the empty value.
        let missing = s
            .txn(
                Txn::new()
                    .when(Compare::Value("missing".into(), Vec::new()))
                    .and_then(Op::put("missing", "x")),
            )
            .await
            .unwrap();
        assert!(!missing.succeeded);
        let present = s
            .txn(
                Txn::new()
                    .when(Compare::Present("missing".into()))
                    .and_then(Op::put("missing", "x")),
            )
            .await
            .unwrap();
        assert!(!present.succeeded);
        assert_eq!(s.get("missing").await.unwrap(), None);
    }

    pub async fn txn_that_changes_nothing_keeps_the_revision(s: Arc<dyn Store>) {
        let r = s.put("k", b"v".to_vec(), 0).await.unwrap();
        let failed = s
            .txn(
                Txn::new()
                    .when(Compare::Absent("k".into()))
                    .and_then(Op::put("k", "again")),
            )
            .await
            .unwrap();
        assert!(!failed.succeeded);
        assert_eq!(failed.revision, r);
        let deletes_nothing = s
            .txn(
                Txn::new()
                    .and_then(Op::delete("nope"))
                    .and_then(Op::delete_prefix("none/")),
            )
            .await
            .unwrap();
        assert!(deletes_nothing.succeeded);
        assert_eq!(deletes_nothing.revision, r);
        assert_eq!(s.revision().await.unwrap(), r);
    }

    pub async fn txn_rejects_duplicate_keys(s: Arc<dyn Store>) {
        let twice = s
            .txn(
                Txn::new()
                    .and_then(Op::put("k", "1"))
                    .and_then(Op::put("k", "2")),
            )
            .await;
        assert!(matches!(twice, Err(StoreError::Internal(_))), "{twice:?}");
        let put_and_delete = s
            .txn(
                Txn::new()
                    .and_then(Op::delete_prefix("a/"))
                    .and_then(Op::put("a/1", "1")),
            )
            .await;
        assert!(
            matches!(put_and_delete, Err(StoreError::Internal(_))),
            "{put_and_delete:?}"
        );
        assert_eq!(s.get("k").await.unwrap(), None);
    }

    pub async fn delete_prefix(s: Arc<dyn Store>) {
        for key in ["a/1", "a/2", "a/3/x", "ab/1", "b"] {
            s.put(key, b"x".to_vec(), 0).await.unwrap();
        }
        let r = s.revision().await.unwrap();
        let mut watch = s.watch("", 0).await.unwrap();
        let result = s
            .txn(Txn::new().and_then(Op::delete_prefix("a/")))
            .await
            .unwrap();
        assert!(result.succeeded);
        assert_eq!(result.revision, r + 1, "one txn, one revision");
        let keys: Vec<String> = s
            .list("")
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["ab/1", "b"]);
        let mut deleted = Vec::new();
        for _ in 0..3 {
            let event = next_event(&mut watch).await;
            let (key, rev) = delete_of(&event);
            assert_eq!(rev, r + 1);
            deleted.push(key.to_string());
        }
        deleted.sort();
        assert_eq!(deleted, ["a/1", "a/2", "a/3/x"]);
        assert_quiet(&mut watch).await;
    }

    pub async fn watch_delivers_puts_and_deletes_in_order(s: Arc<dyn Store>) {
        let mut watch = s.watch("w/", 0).await.unwrap();
        let r1 = s.put("w/1", b"one".to_vec(), 0).await.unwrap();
        let r2 = s.put("w/2", b"two".to_vec(), 0).await.unwrap();
        s.put("wx/sibling", b"no".to_vec(), 0).await.unwrap();
        s.put("other", b"no".to_vec(), 0).await.unwrap();
        assert!(s.delete("w/1").await.unwrap());
        let r4 = s.revision().await.unwrap();
        let r5 = s.put("w/2", b"two again".to_vec(), 0).await.unwrap();

        let e = next_event(&mut watch).await;
        assert_eq!(put_of(&e), ("w/1", &b"one"[..], r1));
        let e = next_event(&mut watch).await;
        assert_eq!(put_of(&e), ("w/2", &b"two"[..], r2));
        if let WatchEvent::Put(kv) = &e {
            assert_eq!(kv.create_revision, r2);
        }
        let e = next_event(&mut watch).await;
        assert_eq!(delete_of(&e), ("w/1", r4));
        assert_eq!(e.revision(), r4);
        let e = next_event(&mut watch).await;
        assert_eq!(put_of(&e), ("w/2", &b"two again"[..], r5));
        if let WatchEvent::Put(kv) = &e {
            assert_eq!(kv.create_revision, r2, "create_revision survives updates");
        }
        assert_quiet(&mut watch).await;
    }

    pub async fn watch_from_earlier_revision_replays(s: Arc<dyn Store>) {
        let r1 = s.put("p/1", b"1".to_vec(), 0).await.unwrap();
        let r2 = s.put("p/2", b"2".to_vec(), 0).await.unwrap();
        s.delete("p/1").await.unwrap();
        let r3 = s.revision().await.unwrap();
        assert!(r1 < r2 && r2 < r3);

        let mut watch = s.watch("p/", r2).await.unwrap();
        assert_eq!(
            put_of(&next_event(&mut watch).await),
            ("p/2", &b"2"[..], r2)
        );
        assert_eq!(delete_of(&next_event(&mut watch).await), ("p/1", r3));
        // Replay continues seamlessly into live events.
        let r4 = s.put("p/3", b"3".to_vec(), 0).await.unwrap();
        assert_eq!(
            put_of(&next_event(&mut watch).await),
            ("p/3", &b"3"[..], r4)
        );
        assert_quiet(&mut watch).await;
    }

    pub async fn list_then_watch_misses_nothing(s: Arc<dyn Store>) {
        s.put("q/1", b"1".to_vec(), 0).await.unwrap();
        let listing = s.list("q/").await.unwrap();
        // Changes between the list and the watch call are not lost.
        let r2 = s.put("q/2", b"2".to_vec(), 0).await.unwrap();
        let mut watch = s.watch("q/", listing.revision + 1).await.unwrap();
        let r3 = s.put("q/3", b"3".to_vec(), 0).await.unwrap();
        assert_eq!(
            put_of(&next_event(&mut watch).await),
            ("q/2", &b"2"[..], r2)
        );
        assert_eq!(
            put_of(&next_event(&mut watch).await),
            ("q/3", &b"3"[..], r3)
        );
        assert_quiet(&mut watch).await;
    }

    pub async fn lease_expiry_deletes_keys(s: Arc<dyn Store>) {
        let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
        s.put("workers/w1", b"w1".to_vec(), lease).await.unwrap();
        s.put("streams/s1", b"s1".to_vec(), lease).await.unwrap();
        s.put("keep", b"k".to_vec(), 0).await.unwrap();
        assert_eq!(s.get("workers/w1").await.unwrap().unwrap().lease, lease);
        let mut watch = s.watch("", 0).await.unwrap();
        let started = Instant::now();

        let first = next_event(&mut watch).await;
        let second = next_event(&mut watch).await;
        let (k1, rev1) = delete_of(&first);
        let (k2, rev2) = delete_of(&second);
        let mut keys = [k1, k2];
        keys.sort();
        assert_eq!(keys, ["streams/s1", "workers/w1"]);
        assert_eq!(rev1, rev2, "a lease's keys go in one revision");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(500),
            "expired too early: {elapsed:?}"
        );
        assert_eq!(s.get("workers/w1").await.unwrap(), None);
        assert_eq!(s.get("streams/s1").await.unwrap(), None);
        assert!(s.get("keep").await.unwrap().is_some());
    }

    pub async fn keep_alive_extends_the_lease(s: Arc<dyn Store>) {
        let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
        s.put("workers/w1", b"w1".to_vec(), lease).await.unwrap();
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            s.keep_alive(lease).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            s.get("workers/w1").await.unwrap().is_some(),
            "kept alive for 2.5 s with a 1 s TTL"
        );
        // Without keep-alives it goes.
        let mut watch = s.watch("workers/", 0).await.unwrap();
        assert_eq!(delete_of(&next_event(&mut watch).await).0, "workers/w1");
    }

    pub async fn lease_ttl_counts_down_and_ends_with_the_lease(s: Arc<dyn Store>) {
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        let ttl = s.lease_ttl(lease).await.unwrap().expect("a live lease");
        // etcd rounds down to whole seconds; the embedded store is exact.
        assert!(
            ttl <= Duration::from_secs(60) && ttl >= Duration::from_secs(58),
            "{ttl:?}"
        );
        s.revoke_lease(lease).await.unwrap();
        assert_eq!(s.lease_ttl(lease).await.unwrap(), None, "revoked");
        assert_eq!(s.lease_ttl(987_654_321).await.unwrap(), None, "never was");
    }

    pub async fn revoke_deletes_at_once(s: Arc<dyn Store>) {
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        s.put("a", b"a".to_vec(), lease).await.unwrap();
        s.put("b", b"b".to_vec(), lease).await.unwrap();
        let r = s.revision().await.unwrap();
        let mut watch = s.watch("", 0).await.unwrap();
        s.revoke_lease(lease).await.unwrap();
        // Gone when revoke returns, not later.
        assert_eq!(s.get("a").await.unwrap(), None);
        assert_eq!(s.get("b").await.unwrap(), None);
        assert_eq!(s.revision().await.unwrap(), r + 1);
        assert_eq!(delete_of(&next_event(&mut watch).await).1, r + 1);
        assert_eq!(delete_of(&next_event(&mut watch).await).1, r + 1);
        assert_eq!(
            s.revoke_lease(lease).await,
            Err(StoreError::LeaseNotFound(lease))
        );
        assert_eq!(
            s.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(lease))
        );
    }

    pub async fn keep_alive_after_expiry_is_lease_not_found(s: Arc<dyn Store>) {
        let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
        s.keep_alive(lease).await.unwrap();
        s.put("k", b"v".to_vec(), lease).await.unwrap();
        let mut watch = s.watch("k", 0).await.unwrap();
        assert_eq!(delete_of(&next_event(&mut watch).await).0, "k");
        assert_eq!(
            s.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(lease))
        );
        assert_eq!(
            s.put("k", b"v".to_vec(), lease).await,
            Err(StoreError::LeaseNotFound(lease))
        );
    }

    pub async fn unknown_lease_is_lease_not_found(s: Arc<dyn Store>) {
        let unknown = 0x1234_5678;
        assert_eq!(
            s.put("k", b"v".to_vec(), unknown).await,
            Err(StoreError::LeaseNotFound(unknown))
        );
        let txn = s
            .txn(Txn::new().and_then(Op::put_with_lease("k", "v", unknown)))
            .await;
        assert_eq!(txn, Err(StoreError::LeaseNotFound(unknown)));
        assert_eq!(s.get("k").await.unwrap(), None);
        assert_eq!(
            s.keep_alive(unknown).await,
            Err(StoreError::LeaseNotFound(unknown))
        );
        assert_eq!(
            s.revoke_lease(unknown).await,
            Err(StoreError::LeaseNotFound(unknown))
        );
    }

    pub async fn put_without_lease_detaches_the_key(s: Arc<dyn Store>) {
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        s.put("moved", b"1".to_vec(), lease).await.unwrap();
        s.put("stays", b"1".to_vec(), lease).await.unwrap();
        // Rewriting without the lease detaches it, as in etcd.
        s.put("moved", b"2".to_vec(), 0).await.unwrap();
        assert_eq!(s.get("moved").await.unwrap().unwrap().lease, 0);
        s.revoke_lease(lease).await.unwrap();
        assert_eq!(s.get("moved").await.unwrap().unwrap().value, b"2");
        assert_eq!(s.get("stays").await.unwrap(), None);
    }
}

// ---------------------------------------------------------------------------------
// Embedded only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopen_keeps_keys_and_revision_and_drops_leased_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("store.redb");
    let revision = {
        let s = EmbeddedStore::open(&path).unwrap();
        s.put("tasks/1", b"t1".to_vec(), 0).await.unwrap();
        let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
        s.put("workers/w1", b"w".to_vec(), lease).await.unwrap();
        s.put("tasks/2", b"t2".to_vec(), 0).await.unwrap();
        s.revision().await.unwrap()
    };
    let s = EmbeddedStore::open(&path).unwrap();
    // Dropping the leased key is one more revision, as if the lease had expired.
    assert_eq!(s.revision().await.unwrap(), revision + 1);
    assert_eq!(s.get("workers/w1").await.unwrap(), None);
    let kv = s.get("tasks/2").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision),
        (&b"t2"[..], revision)
    );
    let keys: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["tasks/1", "tasks/2"]);
    // Revisions continue where they were.
    assert_eq!(
        s.put("tasks/3", b"t3".to_vec(), 0).await.unwrap(),
        revision + 2
    );
    // The event history of the previous run is gone: replaying it is "compacted".
    let mut watch = s.watch("", revision).await.unwrap();
    assert_eq!(
        watch.next().await,
        Some(Err(StoreError::Compacted(revision + 1)))
    );
    assert_eq!(watch.next().await, None);
    drop(s);
    // A third open on a file with nothing leased does not bump the revision.
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.revision().await.unwrap(), revision + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_second_open_of_the_same_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let _s = EmbeddedStore::open(&path).unwrap();
    let second = EmbeddedStore::open(&path);
    assert!(
        matches!(&second, Err(StoreError::Internal(m)) if m.contains("already open")),
        "{second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_slow_watcher_gets_compacted_instead_of_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open_with(
        &dir.path().join("store.redb"),
        EmbeddedOptions { watch_history: 50 },
    )
    .unwrap();
    let mut watch = s.watch("k/", 0).await.unwrap();
    let first = s.put("k/0", b"0".to_vec(), 0).await.unwrap();
    assert_eq!(put_of(&next_event(&mut watch).await).2, first);
    // Fall more than the history behind.
    let mut last = first;
    for i in 1..=100 {
        last = s.put(&format!("k/{i}"), b"x".to_vec(), 0).await.unwrap();
    }
    let item = watch.next().await;
    assert_eq!(item, Some(Err(StoreError::Compacted(last - 50))));
    assert_eq!(watch.next().await, None, "the stream ends after the error");
    // A watcher within the history replays every event.
    let mut watch = s.watch("k/", last - 49).await.unwrap();
    for rev in last - 49..=last {
        assert_eq!(next_event(&mut watch).await.revision(), rev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dropped_watch_is_released_and_store_drop_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.open_watches(), 0);
    let w1 = s.watch("a/", 0).await.unwrap();
    let mut w2 = s.watch("", 0).await.unwrap();
    assert_eq!(s.open_watches(), 2);
    drop(w1);
    assert_eq!(s.open_watches(), 1);
    s.put("x", b"1".to_vec(), 0).await.unwrap();
    // Dropping the store closes the database although a watch is open...
    drop(s);
    let reopened = EmbeddedStore::open(&path).unwrap();
    // ...and the watch delivers what was committed, then ends with an error.
    assert_eq!(put_of(&next_event(&mut w2).await).0, "x");
    assert!(matches!(
        w2.next().await,
        Some(Err(StoreError::Unavailable(_)))
    ));
    assert_eq!(w2.next().await, None);
    drop(reopened);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_open_outside_a_runtime_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let result = std::thread::spawn(move || EmbeddedStore::open(&path).map(|_| ()))
        .join()
        .unwrap();
    assert!(matches!(result, Err(StoreError::Internal(_))), "{result:?}");
}

// ---------------------------------------------------------------------------------
// etcd only.

/// Polls `f` until it returns `Some`, failing the test after `deadline`.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_answers_unavailable_and_the_same_store_recovers() {
    let mut etcd = start_etcd().await;
    let s = EtcdStore::connect(&[etcd.endpoint()], ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    s.put("tasks/1", b"t1".to_vec(), 0).await.unwrap();
    let mut watch = s.watch("", 0).await.unwrap();

    tokio::task::block_in_place(|| etcd.stop());

    // Every kind of call fails fast and says why.
    let started = Instant::now();
    let get = s.get("tasks/1").await;
    let elapsed = started.elapsed();
    assert!(matches!(&get, Err(StoreError::Unavailable(_))), "{get:?}");
    assert!(
        elapsed < ETCD_TIMEOUT + Duration::from_secs(1),
        "took {elapsed:?}"
    );
    for result in [
        s.put("tasks/2", b"t2".to_vec(), 0).await.map(|_| ()),
        s.list("tasks/").await.map(|_| ()),
        s.txn(Txn::new().and_then(Op::put("a", "b")))
            .await
            .map(|_| ()),
        s.grant_lease(Duration::from_secs(5)).await.map(|_| ()),
        s.revision().await.map(|_| ()),
        s.watch("", 0).await.map(|_| ()),
    ] {
        assert!(
            matches!(&result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert!(started.elapsed() < 7 * (ETCD_TIMEOUT + Duration::from_secs(1)));
    // The open watch ends with an error instead of hanging.
    let item = tokio::time::timeout(WAIT, watch.next()).await.unwrap();
    assert!(
        matches!(item, Some(Err(StoreError::Unavailable(_)))),
        "{item:?}"
    );
    assert_eq!(watch.next().await, None);

    tokio::task::block_in_place(|| etcd.restart());

    // Same store object, no reconnect call: it works again.
    let kv = eventually("store recovers after etcd restart", WAIT, || async {
        s.get("tasks/1").await.ok()
    })
    .await;
    assert_eq!(kv.unwrap().value, b"t1");
    let r = s.put("tasks/2", b"t2".to_vec(), 0).await.unwrap();
    let mut watch = s.watch("tasks/", r).await.unwrap();
    assert_eq!(put_of(&next_event(&mut watch).await).0, "tasks/2");
    let lease = s.grant_lease(Duration::from_secs(5)).await.unwrap();
    s.keep_alive(lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_hung_server_answers_unavailable_within_the_timeout() {
    let etcd = start_etcd().await;
    let s = EtcdStore::connect(&[etcd.endpoint()], ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    s.put("k", b"v".to_vec(), 0).await.unwrap();
    etcd.pause();
    let started = Instant::now();
    let get = s.get("k").await;
    let elapsed = started.elapsed();
    etcd.resume();
    assert!(
        matches!(&get, Err(StoreError::Unavailable(m)) if m.contains("did not answer")),
        "{get:?}"
    );
    assert!(elapsed >= ETCD_TIMEOUT, "answered too early: {elapsed:?}");
    assert!(
        elapsed < ETCD_TIMEOUT + Duration::from_secs(1),
        "took {elapsed:?}"
    );
    // The connection survived; the next call works at once.
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_connect_to_a_dead_endpoint_is_unavailable() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let result = EtcdStore::connect(
        &[format!("http://127.0.0.1:{port}")],
        ETCD_PREFIX,
        ETCD_TIMEOUT,
    )
    .await;
    assert!(
        matches!(&result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < ETCD_TIMEOUT + Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keys_live_under_the_prefix_only() {
    let etcd = start_etcd().await;
    let s = EtcdStore::connect(&[etcd.endpoint()], ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    // Neighbours of the prefix that a naive range would include.
    raw.put("/pushcast-other/tasks/1", "x", None).await.unwrap();
    raw.put("/pushcast0", "x", None).await.unwrap();
    s.put("tasks/1", b"t".to_vec(), 0).await.unwrap();
    let stored = raw.get("/pushcast/tasks/1", None).await.unwrap();
    assert_eq!(stored.kvs()[0].value(), b"t");
    let keys: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["tasks/1"]);
    let mut watch = s.watch("", 0).await.unwrap();
    raw.put("/pushcast-other/tasks/2", "x", None).await.unwrap();
    s.put("tasks/2", b"t".to_vec(), 0).await.unwrap();
    assert_eq!(put_of(&next_event(&mut watch).await).0, "tasks/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_list_reads_many_pages_at_one_revision() {
    let etcd = start_etcd().await;
    let s = EtcdStore::connect(&[etcd.endpoint()], ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    // More than one page (500 keys), written in few transactions.
    for chunk in 0..12 {
        let mut txn = Txn::new();
        for i in 0..100 {
            txn = txn.and_then(Op::put(format!("tasks/{:04}", chunk * 100 + i), "x"));
        }
        s.txn(txn).await.unwrap();
    }
    let listing = s.list("tasks/").await.unwrap();
    assert_eq!(listing.kvs.len(), 1200);
    assert!(listing.kvs.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(listing.revision, s.revision().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_from_a_compacted_revision_reports_compacted() {
    let etcd = start_etcd().await;
    let s = EtcdStore::connect(&[etcd.endpoint()], ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    let r1 = s.put("k", b"1".to_vec(), 0).await.unwrap();
    let r2 = s.put("k", b"2".to_vec(), 0).await.unwrap();
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    raw.compact(r2, None).await.unwrap();
    let mut watch = s.watch("", r1).await.unwrap();
    let item = tokio::time::timeout(WAIT, watch.next()).await.unwrap();
    assert_eq!(item, Some(Err(StoreError::Compacted(r2))));
    assert_eq!(watch.next().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_dropped_watch_is_cancelled_on_the_server() {
    let etcd = start_etcd().await;
    let s = EtcdStore::connect(&[etcd.endpoint()], ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let watchers = || {
        etcd.metric(WATCHERS)
            .unwrap_or_else(|| panic!("no {WATCHERS} metric"))
    };
    assert_eq!(watchers(), 0.0);
    let w1 = s.watch("a/", 0).await.unwrap();
    let w2 = s.watch("b/", 0).await.unwrap();
    assert_eq!(watchers(), 2.0);
    drop(w1);
    eventually("one watcher left", WAIT, || async {
        (watchers() == 1.0).then_some(())
    })
    .await;
    drop(w2);
    eventually("no watcher left", WAIT, || async {
        (watchers() == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_dead_endpoint_among_several_is_tolerated() {
    let etcd = start_etcd().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The dead member first, so that the readiness check meets it too.
    let endpoints = [format!("http://127.0.0.1:{dead}"), etcd.endpoint()];
    let s = EtcdStore::connect(&endpoints, ETCD_PREFIX, ETCD_TIMEOUT)
        .await
        .unwrap();
    for i in 0..30 {
        let key = format!("k/{i}");
        let created = s
            .txn(
                Txn::new()
                    .when(Compare::Absent(key.clone()))
                    .and_then(Op::put(key.clone(), "v")),
            )
            .await
            .unwrap();
        assert!(
            created.succeeded,
            "a connection failure must not be retried into a failed compare"
        );
        assert_eq!(s.get(&key).await.unwrap().unwrap().value, b"v");
    }
    assert_eq!(s.list("k/").await.unwrap().kvs.len(), 30);
}
