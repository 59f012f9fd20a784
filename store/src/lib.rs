//! The state store: the one source of truth of a pushcast cluster.
//!
//! [`Store`] is what the controller and the workers need of etcd, and no more: keys and
//! values, create-if-absent and compare-and-swap transactions, prefix reads, ordered
//! prefix watches and leases. Two implementations keep the same semantics:
//! [`etcd::EtcdStore`] for distributed mode and [`embedded::EmbeddedStore`] (redb on local
//! disk) for the single-process default. `tests/conformance.rs` runs one suite against both.
//!
//! Keys are plain strings relative to the store's prefix (e.g. `tasks/default/app/t1`);
//! each implementation adds its own prefix.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

pub mod embedded;
pub mod etcd;

/// A lease id. Keys attached to a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

/// A stored key and its value, with etcd's revision bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (as it exists now).
    pub create_revision: i64,
    /// Revision of the last change to the key.
    pub mod_revision: i64,
    /// Lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Present(String),
    /// The key's `mod_revision` equals this (0 means absent, as in etcd).
    ModRevision(String, i64),
    /// The key exists and holds exactly this value.
    Value(String, Vec<u8>),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        /// 0 for no lease.
        lease: LeaseId,
    },
    Delete(String),
    /// Deletes every key under a prefix.
    DeletePrefix(String),
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete(key.into())
    }
    pub fn delete_prefix(prefix: impl Into<String>) -> Op {
        Op::DeletePrefix(prefix.into())
    }
}

/// A transaction: if every compare holds, apply `success`, else apply `failure`; atomically.
///
/// As in etcd, a branch may not write the same key twice (nor put a key it also deletes);
/// such a transaction is refused with [`StoreError::Internal`]. A transaction whose applied
/// branch changes nothing does not create a revision. etcd also limits a transaction to
/// 128 operations by default (`--max-txn-ops`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }
    pub fn when(mut self, c: Compare) -> Txn {
        self.compares.push(c);
        self
    }
    pub fn and_then(mut self, op: Op) -> Txn {
        self.success.push(op);
        self
    }
    pub fn or_else(mut self, op: Op) -> Txn {
        self.failure.push(op);
        self
    }
}

/// Outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (and `success` was applied).
    pub succeeded: bool,
    /// Store revision after the transaction.
    pub revision: i64,
}

/// A range read: the keys found and the store revision they were read at, so a watch can
/// continue from `revision + 1` without missing or repeating a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed (its new value).
    Put(KeyValue),
    /// A key was deleted (explicitly or by lease expiry); `mod_revision` is the deletion's.
    Delete { key: String, mod_revision: i64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Events of a prefix watch, in revision order. The stream ends with an error when the
/// watch breaks (e.g. [`StoreError::Compacted`] or [`StoreError::Unavailable`]); the caller
/// re-lists and watches again.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = std::result::Result<WatchEvent, StoreError>> + Send>>;

/// A store's watcher: yields the events of one watch, one at a time, `None` at its end.
trait Watcher: Send + 'static {
    fn next_item(
        &mut self,
    ) -> impl std::future::Future<Output = Option<std::result::Result<WatchEvent, StoreError>>> + Send;
}

/// A [`WatchStream`] over a store's [`Watcher`].
fn watch_stream<W: Watcher>(watcher: W) -> WatchStream {
    Box::pin(futures::stream::unfold(watcher, |mut w| async move {
        let item = w.next_item().await?;
        Some((item, w))
    }))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (or did not answer within the request timeout).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for a revision that is no longer kept.
    #[error("revision {0} has been compacted")]
    Compacted(i64),
    /// The lease does not exist (expired or revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error("state store error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Decodes a JSON value read from the store. One that does not decode is logged with its
/// key, counted (`pushcast_store_decode_errors_total`, by `kind`) and left out: never
/// skipped silently, never a reason to stop reading the others.
pub fn decoded<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
    kind: &'static str,
) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key, kind, error = %e, "stored value does not decode; left out");
            metrics::counter!("pushcast_store_decode_errors_total", "kind" => kind).increment(1);
            None
        }
    }
}

/// What pushcast needs of its state store. Both implementations give the same answers.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key under `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Listing>;
    /// Writes a key (unconditionally); returns the new revision.
    /// [`StoreError::LeaseNotFound`] if `lease` (non-zero) does not exist.
    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<i64>;
    /// Deletes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Applies a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;
    /// Watches every change under `prefix` with revision >= `from_revision`
    /// (0 = from now on), in revision order, none skipped.
    ///
    /// When this returns, the watch is established: every change committed afterwards is
    /// delivered. A `from_revision` that is no longer kept is reported as the stream's
    /// first (and last) item, [`StoreError::Compacted`], by both implementations; the
    /// call itself fails only when the store cannot be reached. Dropping the stream
    /// cancels the watch.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream>;
    /// Creates a lease that expires `ttl` after its last keep-alive. The TTL is rounded
    /// up to whole seconds (etcd's unit; etcd may also raise it to its minimum TTL).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews a lease; [`StoreError::LeaseNotFound`] when it has already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Revokes a lease, deleting its keys at once (in one revision).
    /// [`StoreError::LeaseNotFound`] if it does not exist, as in etcd.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// How long a lease has left before it expires; `None` when it is gone. etcd counts
    /// in whole seconds (rounded down), the embedded store exactly. Used to tell whether
    /// a lease's holder renewed it between two looks.
    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>>;
    /// Whether the store can prove that it has no quorum now, so that no lease can expire
    /// (etcd expires leases only through a leader, and a new leader gives every lease its
    /// whole TTL again): too many members refuse connections (no process) or answer that
    /// they have no leader for the rest to elect one. False when it cannot be told — a
    /// member that does not answer might be in a majority that has a leader.
    async fn quorum_lost(&self) -> bool;
    /// Current revision of the store.
    async fn revision(&self) -> Result<i64>;
}
