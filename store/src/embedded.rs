//! Embedded store (redb on local disk) for the single-process mode.
//!
//! Why it looks like this:
//! - **One redb write transaction per store write**, each bumping a persisted revision
//!   counter by one (only when it changes something, as etcd does), so revisions,
//!   `create_revision`/`mod_revision` and watch resumption behave exactly like etcd's.
//! - **All writes go through one lock** that covers the redb commit, the lease bookkeeping
//!   and the publication of watch events, so write order == revision order == event order.
//!   The commit fsyncs, so every write (and every read, which may hit the disk) runs on
//!   a thread of the store's own instead of an async worker thread (see [`Threads`]).
//! - **Watches read from one in-memory history** of the last N events rather than from
//!   per-watcher queues: a watcher keeps only "the next revision I need" and a
//!   `tokio::sync::watch` receiver that wakes it. Replay and live delivery are the same
//!   code path, so nothing can fall between them, a slow watcher costs no memory, and a
//!   watcher that falls behind the history gets [`StoreError::Compacted`] and ends instead
//!   of silently skipping events. A dropped stream frees everything it held.
//! - **Leases live in memory**: they belong to the process that holds them, which is this
//!   process. On open every key still attached to a lease is deleted (its holder is gone).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, oneshot, watch};

use crate::{
    Compare, KeyValue, LeaseId, Listing, Op, Result, Store, StoreError, Txn, TxnResult, WatchEvent,
    WatchStream,
};

/// Key → encoded record (see [`encode_record`]).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Store metadata; holds the revision counter under [`REVISION_KEY`].
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// create_revision, mod_revision, lease: three little-endian i64 before the value.
const RECORD_HEADER: usize = 24;
/// Upper bound of history entries a watcher copies per lock acquisition, so that a
/// watcher catching up does not hold the history lock for long.
const WATCH_BATCH: usize = 1024;

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Number of most recent watch events kept in memory for watches that start at an
    /// earlier revision and for watchers that fall behind. Older revisions answer
    /// [`StoreError::Compacted`].
    pub watch_history: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            watch_history: 10_000,
        }
    }
}

/// The embedded store: redb on local disk, leases and watch history in memory.
///
/// Cheap to clone (an `Arc` inside). The database file is closed when the last clone
/// (and any in-flight operation) is gone; open watch streams do not keep it open.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("revision", &self.inner.revision.load(Ordering::SeqCst))
            .finish()
    }
}

struct Inner {
    path: PathBuf,
    db: Database,
    /// Serializes writers: held across the redb commit, the lease bookkeeping and the
    /// history push, which is what makes revision order and event order the same.
    write_lock: Mutex<()>,
    /// Last committed revision (mirror of the persisted counter, for `revision()`).
    revision: AtomicI64,
    leases: Mutex<Leases>,
    history: Arc<Mutex<History>>,
    /// Carries the last published revision; wakes watchers. Dropped with the store, which
    /// ends the watch streams.
    notify_tx: watch::Sender<i64>,
    /// Wakes the lease expiry task (new lease, store dropped).
    expiry_wake: Arc<Notify>,
    threads: Threads,
}

/// A unit of redb work for a store thread.
type Job = Box<dyn FnOnce() + Send>;

/// The store's two threads: one runs the writes (serialized by `write_lock` anyway),
/// one the reads, so that a read never waits behind a commit's fsync.
///
/// Not tokio's blocking pool: that one starts a thread per concurrent call, and each new
/// thread gets a malloc arena of its own that outlives it. A burst of API calls (200
/// startPush in a row, in the fan-out benchmark) left six such arenas behind, a few
/// hundred KiB each, for the life of the process. The threads end with the store.
struct Threads {
    reads: mpsc::Sender<Job>,
    writes: mpsc::Sender<Job>,
}

impl Threads {
    fn start() -> Result<Threads> {
        Ok(Threads {
            reads: spawn_thread("pushcast-store-r")?,
            writes: spawn_thread("pushcast-store-w")?,
        })
    }
}

fn spawn_thread(name: &str) -> Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Ends when the store (the last sender) is gone.
            for job in rx {
                // A job that panics must not take the thread, and the store, with it: its
                // caller gets an error from the dropped reply.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })
        .map_err(|e| StoreError::Internal(format!("cannot start a store thread: {e}")))?;
    Ok(tx)
}

/// Runs `f` on the thread behind `jobs` and waits for its answer.
async fn run_on<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    jobs.send(Box::new(move || {
        let _ = tx.send(f());
    }))
    .map_err(|_| StoreError::Internal("the embedded store's thread has stopped".into()))?;
    rx.await
        .map_err(|_| StoreError::Internal("embedded store task failed".into()))?
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the expiry task notice that the store is gone and exit.
        self.expiry_wake.notify_one();
    }
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Leases {
    next_id: LeaseId,
    map: HashMap<LeaseId, Lease>,
}

struct History {
    /// (revision, event), in revision order.
    events: VecDeque<(i64, WatchEvent)>,
    capacity: usize,
    /// Highest revision some of whose events are no longer kept; watches must start after it.
    compacted: i64,
}

/// A decoded record.
struct Record {
    create_revision: i64,
    mod_revision: i64,
    lease: LeaseId,
    value: Vec<u8>,
}

impl Record {
    fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

fn encode_record(create_revision: i64, mod_revision: i64, lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + value.len());
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_record(key: &str, raw: &[u8]) -> Result<Record> {
    let field = |i: usize| -> Result<i64> {
        raw.get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| StoreError::Internal(format!("corrupt record for key {key:?}")))
    };
    Ok(Record {
        create_revision: field(0)?,
        mod_revision: field(1)?,
        lease: field(2)?,
        value: raw.get(RECORD_HEADER..).unwrap_or_default().to_vec(),
    })
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("embedded store: {e}"))
}

/// Locks a mutex, recovering from poisoning: the data under our mutexes stays consistent
/// across a panic (the database is the source of truth; the rest is updated after commit).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// etcd grants TTLs in whole seconds; round up the same way so both stores agree.
fn ttl_seconds(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

/// Rejects a branch that writes a key twice or puts a key it also deletes, as etcd does
/// ("duplicate key given in txn request"), so the two stores refuse the same txns.
fn check_duplicate_keys(ops: &[Op]) -> Result<()> {
    let mut puts = HashSet::new();
    for op in ops {
        if let Op::Put { key, .. } = op {
            let covered = ops.iter().any(|d| match d {
                Op::Delete(k) => k == key,
                Op::DeletePrefix(p) => key.starts_with(p.as_str()),
                Op::Put { .. } => false,
            });
            if covered || !puts.insert(key.as_str()) {
                return Err(StoreError::Internal(format!(
                    "duplicate key given in txn request: {key:?}"
                )));
            }
        }
    }
    Ok(())
}

/// What one write did.
struct Applied {
    succeeded: bool,
    revision: i64,
    deleted: usize,
}

/// A change to the lease → keys index, applied after the commit.
enum LeaseChange {
    Detach(LeaseId, String),
    Attach(LeaseId, String),
}

impl EmbeddedStore {
    /// Opens (or creates) the store in the database file `path`, creating parent
    /// directories. Must be called inside a tokio runtime (a background task expires leases).
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::open`] with explicit tuning.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Internal("the embedded store must be opened inside a tokio runtime".into())
        })?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Internal(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Internal(format!(
                "{} is already open (by this or another process)",
                path.display()
            )),
            e => StoreError::Internal(format!("cannot open {}: {e}", path.display())),
        })?;

        let (revision, dropped) = Self::recover(&db)?;
        if dropped > 0 {
            tracing::info!(
                path = %path.display(),
                dropped,
                revision,
                "deleted keys held by leases of a previous run"
            );
        }

        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(1);
        // Lease ids differ from one run to the next, so an id from a previous run is
        // not mistaken for a new lease.
        let next_id = i64::try_from(seed & 0x0FFF_FFFF_FFFF_FFFF)
            .unwrap_or(1)
            .max(1);

        let (notify_tx, _) = watch::channel(revision);
        let expiry_wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            db,
            write_lock: Mutex::new(()),
            revision: AtomicI64::new(revision),
            leases: Mutex::new(Leases {
                next_id,
                map: HashMap::new(),
            }),
            history: Arc::new(Mutex::new(History {
                events: VecDeque::new(),
                capacity: options.watch_history.max(1),
                // Events of earlier runs are not kept.
                compacted: revision,
            })),
            notify_tx,
            expiry_wake: expiry_wake.clone(),
            threads: Threads::start()?,
        });
        runtime.spawn(expiry_task(Arc::downgrade(&inner), expiry_wake));
        Ok(EmbeddedStore { inner })
    }

    /// Number of watch streams currently open (for metrics, and to check that dropped
    /// streams are released).
    pub fn open_watches(&self) -> usize {
        self.inner.notify_tx.receiver_count()
    }

    /// Creates the tables, reads the revision and deletes keys attached to leases
    /// (which died with the previous process), in one write transaction / revision.
    fn recover(db: &Database) -> Result<(i64, usize)> {
        let wtx = db.begin_write().map_err(db_err)?;
        let (revision, dropped) = {
            let mut kv = wtx.open_table(KV).map_err(db_err)?;
            let mut meta = wtx.open_table(META).map_err(db_err)?;
            let mut revision = meta
                .get(REVISION_KEY)
                .map_err(db_err)?
                .map(|g| g.value())
                .unwrap_or(0);
            let mut leased = Vec::new();
            for entry in kv.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let key = k.value().to_string();
                if decode_record(&key, v.value())?.lease != 0 {
                    leased.push(key);
                }
            }
            if !leased.is_empty() {
                revision += 1;
                for key in &leased {
                    kv.remove(key.as_str()).map_err(db_err)?;
                }
            }
            meta.insert(REVISION_KEY, revision).map_err(db_err)?;
            (revision, leased.len())
        };
        wtx.commit().map_err(db_err)?;
        Ok((revision, dropped))
    }

    /// Runs `f` on the store's read thread (redb reads may touch the disk).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        run_on(&self.inner.threads.reads, move || f(&inner)).await
    }

    /// Runs `f` on the store's write thread (commits fsync).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        run_on(&self.inner.threads.writes, move || f(&inner)).await
    }
}

impl Inner {
    /// Applies a transaction: the single write path of the store.
    fn apply(&self, txn: &Txn) -> Result<Applied> {
        check_duplicate_keys(&txn.success)?;
        check_duplicate_keys(&txn.failure)?;
        let _writer = lock(&self.write_lock);
        self.apply_locked(txn)
    }

    /// [`Inner::apply`] for a caller that holds the write lock.
    fn apply_locked(&self, txn: &Txn) -> Result<Applied> {
        let wtx = self.db.begin_write().map_err(db_err)?;
        let current;
        let succeeded;
        let mut events = Vec::new();
        let mut lease_changes = Vec::new();
        let mut deleted = 0;
        {
            let mut kv = wtx.open_table(KV).map_err(db_err)?;
            let mut meta = wtx.open_table(META).map_err(db_err)?;
            current = meta
                .get(REVISION_KEY)
                .map_err(db_err)?
                .map(|g| g.value())
                .unwrap_or(0);
            let next = current + 1;

            let get = |kv: &redb::Table<&str, &[u8]>, key: &str| -> Result<Option<Record>> {
                match kv.get(key).map_err(db_err)? {
                    Some(raw) => Ok(Some(decode_record(key, raw.value())?)),
                    None => Ok(None),
                }
            };

            let mut holds = true;
            for c in &txn.compares {
                let ok = match c {
                    Compare::Absent(k) => get(&kv, k)?.is_none(),
                    Compare::Present(k) => get(&kv, k)?.is_some(),
                    Compare::ModRevision(k, rev) => {
                        get(&kv, k)?.map_or(0, |r| r.mod_revision) == *rev
                    }
                    Compare::Value(k, v) => get(&kv, k)?.is_some_and(|r| &r.value == v),
                };
                if !ok {
                    holds = false;
                    break;
                }
            }
            succeeded = holds;
            let ops = if holds { &txn.success } else { &txn.failure };

            // As etcd: a put naming an unknown lease fails the whole transaction.
            {
                let leases = lock(&self.leases);
                for op in ops {
                    if let Op::Put { lease, .. } = op
                        && *lease != 0
                        && !leases.map.contains_key(lease)
                    {
                        return Err(StoreError::LeaseNotFound(*lease));
                    }
                }
            }

            for op in ops {
                match op {
                    Op::Put { key, value, lease } => {
                        let old = get(&kv, key)?;
                        let create_revision = old.as_ref().map_or(next, |r| r.create_revision);
                        let old_lease = old.as_ref().map_or(0, |r| r.lease);
                        kv.insert(
                            key.as_str(),
                            encode_record(create_revision, next, *lease, value).as_slice(),
                        )
                        .map_err(db_err)?;
                        if old_lease != *lease {
                            if old_lease != 0 {
                                lease_changes.push(LeaseChange::Detach(old_lease, key.clone()));
                            }
                            if *lease != 0 {
                                lease_changes.push(LeaseChange::Attach(*lease, key.clone()));
                            }
                        }
                        events.push(WatchEvent::Put(KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision,
                            mod_revision: next,
                            lease: *lease,
                        }));
                    }
                    Op::Delete(key) => delete_key(
                        &mut kv,
                        key,
                        next,
                        &mut events,
                        &mut lease_changes,
                        &mut deleted,
                    )?,
                    Op::DeletePrefix(prefix) => {
                        let mut keys = Vec::new();
                        for entry in kv.range(prefix.as_str()..).map_err(db_err)? {
                            let (k, _) = entry.map_err(db_err)?;
                            let k = k.value();
                            if !k.starts_with(prefix.as_str()) {
                                break;
                            }
                            keys.push(k.to_string());
                        }
                        for key in keys {
                            delete_key(
                                &mut kv,
                                &key,
                                next,
                                &mut events,
                                &mut lease_changes,
                                &mut deleted,
                            )?;
                        }
                    }
                }
            }
            if !events.is_empty() {
                meta.insert(REVISION_KEY, next).map_err(db_err)?;
            }
        }

        if events.is_empty() {
            // Nothing changed: like etcd, no new revision.
            wtx.abort().map_err(db_err)?;
            return Ok(Applied {
                succeeded,
                revision: current,
                deleted,
            });
        }
        wtx.commit().map_err(db_err)?;
        let revision = current + 1;
        self.revision.store(revision, Ordering::SeqCst);

        {
            let mut leases = lock(&self.leases);
            for change in lease_changes {
                match change {
                    LeaseChange::Detach(id, key) => {
                        if let Some(l) = leases.map.get_mut(&id) {
                            l.keys.remove(&key);
                        }
                    }
                    LeaseChange::Attach(id, key) => {
                        if let Some(l) = leases.map.get_mut(&id) {
                            l.keys.insert(key);
                        }
                    }
                }
            }
        }
        self.publish(revision, events);
        Ok(Applied {
            succeeded,
            revision,
            deleted,
        })
    }

    /// Appends one revision's events to the history and wakes the watchers. Called with
    /// the write lock held, so revisions arrive in order.
    fn publish(&self, revision: i64, events: Vec<WatchEvent>) {
        {
            let mut h = lock(&self.history);
            h.events.extend(events.into_iter().map(|e| (revision, e)));
            while h.events.len() > h.capacity {
                if let Some((rev, _)) = h.events.pop_front() {
                    h.compacted = h.compacted.max(rev);
                }
            }
        }
        self.notify_tx.send_replace(revision);
    }

    /// Deletes a lease and its keys in one revision. With `only_if_expired`, leaves a
    /// lease alone that was renewed meanwhile. Returns whether the lease existed.
    fn drop_lease(&self, id: LeaseId, only_if_expired: bool) -> Result<bool> {
        // The write lock keeps puts from attaching keys between reading the key set and
        // removing the lease.
        let _writer = lock(&self.write_lock);
        let keys: Vec<String> = {
            let leases = lock(&self.leases);
            match leases.map.get(&id) {
                None => return Ok(false),
                Some(l) if only_if_expired && l.deadline > Instant::now() => return Ok(true),
                Some(l) => l.keys.iter().cloned().collect(),
            }
        };
        if !keys.is_empty() {
            let txn = Txn {
                compares: Vec::new(),
                success: keys.into_iter().map(Op::Delete).collect(),
                failure: Vec::new(),
            };
            if let Err(e) = self.apply_locked(&txn) {
                // Retry later rather than spin on a failing disk.
                if let Some(l) = lock(&self.leases).map.get_mut(&id) {
                    l.deadline = l.deadline.max(Instant::now() + Duration::from_secs(1));
                }
                return Err(e);
            }
        }
        // Removed only after the deletes committed: if the commit failed, the expiry task
        // tries again.
        lock(&self.leases).map.remove(&id);
        Ok(true)
    }
}

/// Deletes one key inside a write transaction, recording its event and lease detachment.
fn delete_key(
    kv: &mut redb::Table<&str, &[u8]>,
    key: &str,
    revision: i64,
    events: &mut Vec<WatchEvent>,
    lease_changes: &mut Vec<LeaseChange>,
    deleted: &mut usize,
) -> Result<()> {
    let old = match kv.remove(key).map_err(db_err)? {
        Some(raw) => decode_record(key, raw.value())?,
        None => return Ok(()),
    };
    if old.lease != 0 {
        lease_changes.push(LeaseChange::Detach(old.lease, key.to_string()));
    }
    events.push(WatchEvent::Delete {
        key: key.to_string(),
        mod_revision: revision,
    });
    *deleted += 1;
    Ok(())
}

/// Expires leases: sleeps until the earliest deadline (or until a lease is granted or the
/// store is dropped), then revokes what is due. Holds only a weak reference in between,
/// so the store can close.
async fn expiry_task(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let leases = lock(&inner.leases);
            leases.map.values().map(|l| l.deadline).min()
        };
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until.into()) => {}
            _ = wake.notified() => {}
        }
        let Some(store) = inner.upgrade() else { return };
        let due: Vec<LeaseId> = {
            let now = Instant::now();
            let leases = lock(&store.leases);
            leases
                .map
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id)
                .collect()
        };
        if due.is_empty() {
            continue;
        }
        let writes = store.threads.writes.clone();
        let result = run_on(&writes, move || {
            for id in due {
                match store.drop_lease(id, true) {
                    Ok(_) => tracing::debug!(lease = id, "lease expired"),
                    Err(e) => tracing::warn!(lease = id, error = %e, "cannot expire lease"),
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "lease expiry task failed");
        }
    }
}

impl Inner {
    fn read_kv(&self, key: &str) -> Result<Option<KeyValue>> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let kv = rtx.open_table(KV).map_err(db_err)?;
        match kv.get(key).map_err(db_err)? {
            Some(raw) => Ok(Some(
                decode_record(key, raw.value())?.into_kv(key.to_string()),
            )),
            None => Ok(None),
        }
    }

    /// Keys under `prefix` and the revision of the same snapshot.
    fn read_prefix(&self, prefix: &str) -> Result<Listing> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let kv = rtx.open_table(KV).map_err(db_err)?;
        let meta = rtx.open_table(META).map_err(db_err)?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(db_err)?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut kvs = Vec::new();
        for entry in kv.range(prefix..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            kvs.push(decode_record(key, v.value())?.into_kv(key.to_string()));
        }
        Ok(Listing { kvs, revision })
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |inner| inner.read_kv(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let prefix = prefix.to_string();
        self.read(move |inner| inner.read_prefix(&prefix)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<i64> {
        let txn = Txn::new().and_then(Op::put_with_lease(key, value, lease));
        Ok(self.write(move |inner| inner.apply(&txn)).await?.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let txn = Txn::new().and_then(Op::delete(key));
        Ok(self.write(move |inner| inner.apply(&txn)).await?.deleted > 0)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let applied = self.write(move |inner| inner.apply(&txn)).await?;
        Ok(TxnResult {
            succeeded: applied.succeeded,
            revision: applied.revision,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let history = self.inner.history.clone();
        // Subscribe first: anything published from here on wakes the watcher, and the
        // history holds everything published before, so nothing falls in between.
        let rx = self.inner.notify_tx.subscribe();
        let next = if from_revision > 0 {
            from_revision
        } else {
            // "From now on": after the last published revision. Writes that returned
            // before this call are published (publication precedes their return).
            *rx.borrow() + 1
        };
        let watcher = Watcher {
            history,
            rx,
            prefix: prefix.to_string(),
            next,
            buf: VecDeque::new(),
            closed: false,
            done: false,
        };
        Ok(crate::watch_stream(watcher))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl = Duration::from_secs(ttl_seconds(ttl));
        let id = {
            let mut leases = lock(&self.inner.leases);
            let id = leases.next_id;
            leases.next_id = leases.next_id.checked_add(1).unwrap_or(1);
            leases.map.insert(
                id,
                Lease {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                },
            );
            id
        };
        self.inner.expiry_wake.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut leases = lock(&self.inner.leases);
        let now = Instant::now();
        match leases.map.get_mut(&lease) {
            // Past its deadline it is as good as gone (the expiry task is about to delete
            // its keys); etcd answers the same.
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        if self
            .write(move |inner| inner.drop_lease(lease, false))
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease))
        }
    }

    async fn quorum_lost(&self) -> bool {
        // In the process itself: there is nothing to lose.
        false
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<Duration>> {
        let leases = lock(&self.inner.leases);
        let now = Instant::now();
        Ok(leases
            .map
            .get(&lease)
            .filter(|l| l.deadline > now)
            .map(|l| l.deadline - now))
    }

    async fn revision(&self) -> Result<i64> {
        Ok(self.inner.revision.load(Ordering::SeqCst))
    }
}

/// State of one watch stream. Holds the history and a receiver, not the store: a
/// forgotten stream does not keep the database open, and dropping it frees everything.
struct Watcher {
    history: Arc<Mutex<History>>,
    rx: watch::Receiver<i64>,
    prefix: String,
    /// First revision not yet copied out of the history.
    next: i64,
    buf: VecDeque<WatchEvent>,
    /// The store was dropped: deliver what is left, then end with an error.
    closed: bool,
    done: bool,
}

impl crate::Watcher for Watcher {
    async fn next_item(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buf.pop_front() {
                return Some(Ok(event));
            }
            // Mark the current notification as seen *before* reading the history: a
            // publication after the read then wakes `changed()` below.
            self.rx.borrow_and_update();
            match self.fill() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(true) => continue,
                Ok(false) => {}
            }
            if self.closed {
                self.done = true;
                return Some(Err(StoreError::Unavailable(
                    "the embedded store was closed".into(),
                )));
            }
            if self.rx.changed().await.is_err() {
                self.closed = true;
            }
        }
    }
}

impl Watcher {
    /// Copies the next events under the prefix from the history into `buf`. Returns
    /// whether it advanced; [`StoreError::Compacted`] if the history no longer holds
    /// `next` (the watcher started too early or fell too far behind).
    fn fill(&mut self) -> Result<bool> {
        let h = lock(&self.history);
        if self.next <= h.compacted {
            return Err(StoreError::Compacted(h.compacted));
        }
        let start = h.events.partition_point(|(rev, _)| *rev < self.next);
        let mut last = None;
        for (scanned, (rev, event)) in h.events.range(start..).enumerate() {
            // Stop at a revision boundary once the batch is full.
            if scanned >= WATCH_BATCH && last != Some(*rev) {
                break;
            }
            last = Some(*rev);
            if event.key().starts_with(self.prefix.as_str()) {
                self.buf.push_back(event.clone());
            }
        }
        match last {
            Some(rev) => {
                self.next = rev + 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
