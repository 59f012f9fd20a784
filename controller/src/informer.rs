//! The informer: the controller's watch-fed, in-memory picture of the store (the
//! Kubernetes shared-informer pattern).
//!
//! It lists what the controller needs (tasks, their status, workers, live streams,
//! assignments, forwards) once at start, then follows one watch, and lists again only
//! when the watch breaks (a compaction, a lost connection). The scheduler's passes and the
//! API's reads work from it, so a controller at rest reads nothing from the store and
//! decodes nothing: its cost is O(changes), not O(tasks).
//!
//! Values are kept decoded (a task costs its spec and status once, shared by `Arc`), with
//! one index: the tasks of each stream, so a pass looks only at the tasks whose stream is
//! live or that are assigned — a reserved task costs nothing until its stream goes live.
//!
//! Reads that must see every write acknowledged before them (the API: a task created a
//! moment ago is listed, on any controller) ask the store for its revision — one
//! count-only request — and wait until the picture has reached it
//! ([`Informer::consistent`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{Assignment, LiveStream, TaskSpec, TaskStatus, WorkerInfo};
use pushcast_runtime::CancellationToken;
use pushcast_store::{KeyValue, Store, StoreError, WatchEvent, decoded};
use tokio::sync::watch;

/// (vhost, app, stream) of a stream; (vhost, app, id) of a task.
pub type Key = (String, String, String);

/// Prefix of the task status keys (`status/{vhost}/{app}/{id}`).
const STATUSES: &str = "status/";

/// The prefixes the informer follows.
const PREFIXES: [&str; 6] = [
    keys::TASKS,
    STATUSES,
    keys::WORKERS,
    keys::STREAMS,
    keys::ASSIGNMENTS,
    keys::FORWARDS,
];

/// How long a consistent read waits for the picture to reach the store's revision. The
/// watch delivers a change within a millisecond or two; a revision that never arrives
/// means writes outside pushcast's keys (a shared etcd), and the picture is then current.
const CONSISTENT_WAIT: Duration = Duration::from_millis(200);

/// How long a consistent read waits for the informer to list again when its watch is
/// down (the store was unreachable a moment ago) before it answers "unavailable".
const RELIST_WAIT: Duration = Duration::from_secs(5);

/// What the controller knows of the store (up to the revision [`Informer::reach`]
/// waits for).
#[derive(Debug, Default)]
pub struct Picture {
    /// Task specs by task key (`tasks/{vhost}/{app}/{id}`), in key order.
    pub tasks: BTreeMap<String, Arc<TaskSpec>>,
    /// Task statuses by *task* key.
    pub statuses: HashMap<String, Arc<TaskStatus>>,
    /// The task keys of each stream (vhost, app, stream name).
    pub by_stream: HashMap<Key, BTreeSet<String>>,
    /// Worker registrations by store key.
    pub workers: BTreeMap<String, WorkerInfo>,
    /// Live streams by store key.
    pub streams: BTreeMap<String, LiveStream>,
    /// Assignments by store key (`assign/{worker}/...`).
    pub assignments: BTreeMap<String, Assignment>,
    /// Store keys of the forwards.
    pub forwards: BTreeSet<String>,
}

impl Picture {
    /// Folds one stored value (or its deletion, `value = None`) into the picture.
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        if key.starts_with(keys::TASKS) {
            if let Some(old) = self.tasks.remove(key) {
                self.unindex(key, &old);
            }
            if let Some(t) = value.and_then(|v| decoded::<TaskSpec>(key, v, "task")) {
                self.by_stream
                    .entry(stream_of(&t))
                    .or_default()
                    .insert(key.to_string());
                self.tasks.insert(key.to_string(), Arc::new(t));
            }
        } else if let Some(rest) = key.strip_prefix(STATUSES) {
            let task = format!("{}{rest}", keys::TASKS);
            match value.and_then(|v| decoded::<TaskStatus>(key, v, "status")) {
                Some(s) => self.statuses.insert(task, Arc::new(s)),
                None => self.statuses.remove(&task),
            };
        } else if key.starts_with(keys::WORKERS) {
            upsert(&mut self.workers, key, value, "worker");
        } else if key.starts_with(keys::STREAMS) {
            upsert(&mut self.streams, key, value, "stream");
        } else if key.starts_with(keys::ASSIGNMENTS) {
            upsert(&mut self.assignments, key, value, "assignment");
        } else if key.starts_with(keys::FORWARDS) {
            match value {
                Some(_) => self.forwards.insert(key.to_string()),
                None => self.forwards.remove(key),
            };
        }
    }

    fn unindex(&mut self, key: &str, old: &TaskSpec) {
        let stream = stream_of(old);
        if let Some(set) = self.by_stream.get_mut(&stream) {
            set.remove(key);
            if set.is_empty() {
                self.by_stream.remove(&stream);
            }
        }
    }

    /// The tasks of an app (all of them with `id = None`), in key order, with their status.
    pub fn tasks_of<'a>(
        &'a self,
        vhost: &str,
        app: &str,
    ) -> impl Iterator<Item = (&'a Arc<TaskSpec>, Option<&'a Arc<TaskStatus>>)> + 'a {
        let prefix = keys::tasks_of(vhost, app);
        self.tasks
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(k, t)| (t, self.statuses.get(k)))
    }

    /// One task with its status.
    pub fn task(
        &self,
        vhost: &str,
        app: &str,
        id: &str,
    ) -> Option<(&Arc<TaskSpec>, Option<&Arc<TaskStatus>>)> {
        let key = keys::task(vhost, app, id);
        let t = self.tasks.get(&key)?;
        Some((t, self.statuses.get(&key)))
    }

    /// A registered worker by node id.
    pub fn worker(&self, node_id: &str) -> Option<&WorkerInfo> {
        self.workers.get(&keys::worker(node_id))
    }

    /// The keys of the tasks that matter to placement: those whose stream is live, and
    /// those assigned (to be kept, moved or removed). Reserved tasks are not among them.
    pub fn placeable(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        for s in self.streams.values() {
            let stream = (s.vhost.clone(), s.app.clone(), s.stream.clone());
            if let Some(tasks) = self.by_stream.get(&stream) {
                out.extend(tasks.iter().map(String::as_str));
            }
        }
        for a in self.assignments.values() {
            let key = keys::task(&a.spec.vhost, &a.spec.app, &a.spec.id);
            if let Some((k, _)) = self.tasks.get_key_value(&key) {
                out.insert(k.as_str());
            }
        }
        out
    }
}

fn stream_of(t: &TaskSpec) -> Key {
    (t.vhost.clone(), t.app.clone(), t.stream.name.clone())
}

fn upsert<T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<String, T>,
    key: &str,
    value: Option<&[u8]>,
    kind: &'static str,
) {
    match value.and_then(|v| decoded::<T>(key, v, kind)) {
        Some(v) => map.insert(key.to_string(), v),
        None => map.remove(key),
    };
}

/// The watch-fed picture and its followers' signals.
pub struct Informer {
    store: Arc<dyn Store>,
    picture: RwLock<Picture>,
    /// The revision the picture has reached.
    reached: watch::Sender<i64>,
    /// Bumped on every change that matters to placement (tasks, workers, streams,
    /// assignments, forwards) and on every (re-)list.
    placement: watch::Sender<u64>,
    /// How many times the store was listed (1 + the re-lists).
    lists: AtomicU64,
    /// Whether the watch is up: the picture follows the store.
    live: AtomicBool,
    /// Cuts the wait before listing again short (a reader needs the picture now).
    hurry: tokio::sync::Notify,
}

impl Informer {
    pub fn new(store: Arc<dyn Store>) -> Arc<Informer> {
        Arc::new(Informer {
            store,
            picture: RwLock::new(Picture::default()),
            reached: watch::channel(0).0,
            placement: watch::channel(0).0,
            lists: AtomicU64::new(0),
            live: AtomicBool::new(false),
            hurry: tokio::sync::Notify::new(),
        })
    }

    /// How many times the store was listed: 1, plus one per broken watch.
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }

    /// The picture as it is now (possibly a few milliseconds behind the store). Held
    /// briefly: the watch waits while it is held.
    pub fn read(&self) -> RwLockReadGuard<'_, Picture> {
        self.picture.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the picture holds every write the store had acknowledged when this was
    /// called, then returns it. With the watch up, a revision not reached within
    /// [`CONSISTENT_WAIT`] can only come from writes outside pushcast's keys: the picture
    /// is served (and counted). With the watch down (the store was out of reach a moment
    /// ago), the informer is made to list again at once and waited for, up to
    /// [`RELIST_WAIT`]; past that the read is refused as unavailable rather than
    /// answered from a picture that may miss writes.
    pub async fn consistent(&self) -> Result<RwLockReadGuard<'_, Picture>, StoreError> {
        let revision = self.store.revision().await?;
        if !self.reach(revision, CONSISTENT_WAIT).await {
            if self.live.load(Ordering::Acquire) {
                metrics::counter!("pushcast_informer_lagging_reads_total").increment(1);
                tracing::debug!(
                    revision,
                    "informer did not reach the store's revision in time"
                );
            } else {
                self.hurry.notify_one();
                if !self.reach(revision, RELIST_WAIT).await {
                    return Err(StoreError::Unavailable(
                        "the controller is still reading the store again".into(),
                    ));
                }
            }
        }
        Ok(self.read())
    }

    /// Waits until the picture has reached `revision`, at most `within`; whether it did.
    pub async fn reach(&self, revision: i64, within: Duration) -> bool {
        let mut rx = self.reached.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|r| *r >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Changes whenever something placement depends on changed.
    pub fn placement_changes(&self) -> watch::Receiver<u64> {
        self.placement.subscribe()
    }

    /// Lists, then follows the store until `shutdown`; lists again whenever the watch
    /// breaks.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = pushcast_retry::Backoff::new(pushcast_retry::BackoffConfig::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ));
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.follow(&mut backoff) => r,
            };
            self.live.store(false, Ordering::Release);
            let reason = match &outcome {
                StoreError::Compacted(_) => "compacted",
                StoreError::Unavailable(_) => "unavailable",
                _ => "error",
            };
            metrics::counter!("pushcast_informer_relists_total", "reason" => reason).increment(1);
            let delay = backoff.next_delay();
            tracing::warn!(error = %outcome, ?delay, "informer: watch broke; listing again");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.hurry.notified() => {}
            }
        }
    }

    /// One list and the watch after it; returns why the watch ended.
    async fn follow(&self, backoff: &mut pushcast_retry::Backoff) -> StoreError {
        let mut listings = Vec::with_capacity(PREFIXES.len());
        for prefix in PREFIXES {
            match self.store.list(prefix).await {
                Ok(l) => listings.push((prefix, l)),
                Err(e) => return e,
            }
        }
        // Each prefix was listed at its own revision: watch from the oldest, and skip the
        // events a listing already holds.
        let from = listings.iter().map(|(_, l)| l.revision).min().unwrap_or(0);
        let mut events = match self.store.watch("", from + 1).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        let listed: Vec<(&str, i64)> = listings.iter().map(|(p, l)| (*p, l.revision)).collect();
        let mut fresh = Picture::default();
        for (_, l) in &listings {
            for KeyValue { key, value, .. } in &l.kvs {
                fresh.apply(key, Some(value));
            }
        }
        drop(listings);
        // Complete up to the *oldest* listing only: a prefix listed earlier may miss a
        // write the others hold, until its event arrives (a read that trusted the newest
        // listing's revision once answered without a task created a moment before).
        *self.picture.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.reached.send_replace(from);
        self.placement.send_modify(|g| *g += 1);
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.live.store(true, Ordering::Release);
        backoff.reset();
        let (tasks, n) = {
            let p = self.read();
            (p.tasks.len(), self.lists.load(Ordering::Relaxed))
        };
        if n > 1 {
            tracing::info!(revision = from, tasks, "informer listed again");
        } else {
            tracing::debug!(revision = from, tasks, "informer listed");
        }

        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => return e,
            };
            let revision = ev.revision();
            let key = ev.key();
            let already = listed
                .iter()
                .any(|(p, r)| key.starts_with(p) && revision <= *r);
            let mut placement = false;
            if !already && PREFIXES.iter().any(|p| key.starts_with(p)) {
                let value = match &ev {
                    WatchEvent::Put(kv) => Some(kv.value.as_slice()),
                    WatchEvent::Delete { .. } => None,
                };
                self.picture
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(key, value);
                placement = !key.starts_with(STATUSES);
            }
            self.reached.send_if_modified(|r| {
                let moved = revision > *r;
                *r = (*r).max(revision);
                moved
            });
            if placement {
                self.placement.send_modify(|g| *g += 1);
            }
        }
        StoreError::Unavailable("the watch ended".into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use pushcast_proto::destination::Destination;
    use pushcast_proto::model::{Protocol, StreamSelector};

    use super::*;

    fn spec(id: &str, stream: &str) -> TaskSpec {
        let d = Destination::parse(Protocol::Rtmp, "rtmp://h/live", id, vec![]).unwrap();
        let selector = StreamSelector {
            name: stream.into(),
            ..Default::default()
        };
        TaskSpec::new(id.into(), "v".into(), "a".into(), selector, 0, vec![d]).unwrap()
    }

    fn put(p: &mut Picture, t: &TaskSpec) {
        p.apply(
            &keys::task(&t.vhost, &t.app, &t.id),
            Some(&serde_json::to_vec(t).unwrap()),
        );
    }

    #[test]
    fn a_task_moves_between_streams_in_the_index_and_leaves_it_when_deleted() {
        let mut p = Picture::default();
        put(&mut p, &spec("t1", "cam"));
        put(&mut p, &spec("t2", "cam"));
        let cam = ("v".to_string(), "a".to_string(), "cam".to_string());
        let other = ("v".to_string(), "a".to_string(), "other".to_string());
        assert_eq!(p.by_stream[&cam].len(), 2);
        put(&mut p, &spec("t1", "other"));
        assert_eq!(p.by_stream[&cam].len(), 1);
        assert_eq!(p.by_stream[&other].len(), 1);
        p.apply(&keys::task("v", "a", "t1"), None);
        p.apply(&keys::task("v", "a", "t2"), None);
        assert!(p.by_stream.is_empty(), "{:?}", p.by_stream);
        assert!(p.tasks.is_empty());
    }

    #[test]
    fn a_status_joins_its_task_and_an_undecodable_value_removes_the_old_one() {
        let mut p = Picture::default();
        put(&mut p, &spec("t1", "cam"));
        let st = TaskStatus {
            sequence: 3,
            ..Default::default()
        };
        p.apply(
            &keys::status("v", "a", "t1"),
            Some(&serde_json::to_vec(&st).unwrap()),
        );
        let (_, status) = p.task("v", "a", "t1").unwrap();
        assert_eq!(status.unwrap().sequence, 3);
        p.apply(&keys::status("v", "a", "t1"), Some(b"{broken"));
        assert!(p.task("v", "a", "t1").unwrap().1.is_none());
    }

    #[test]
    fn only_tasks_of_live_streams_and_assigned_tasks_are_placeable() {
        let mut p = Picture::default();
        put(&mut p, &spec("reserved", "idle"));
        put(&mut p, &spec("live", "cam"));
        put(&mut p, &spec("assigned", "gone"));
        let live = LiveStream {
            vhost: "v".into(),
            app: "a".into(),
            stream: "cam".into(),
            worker: "w1".into(),
            tracks: vec![],
            since_ms: 0,
            interrupted_ms: None,
            resumed_from: None,
            input: None,
            inputs: 0,
            client: None,
            software: None,
        };
        p.apply(
            &keys::stream("v", "a", "cam"),
            Some(&serde_json::to_vec(&live).unwrap()),
        );
        let a = Assignment {
            spec: spec("assigned", "gone"),
            source: pushcast_proto::model::SourceRef::Local,
            generation: 1,
        };
        p.apply(
            &keys::assignment("w1", "v", "a", "assigned"),
            Some(&serde_json::to_vec(&a).unwrap()),
        );
        let keys: Vec<&str> = p.placeable().into_iter().collect();
        assert_eq!(keys, ["tasks/v/a/assigned", "tasks/v/a/live"]);
    }

    /// A watch that falls behind the store's history (here 4 events) breaks with
    /// `Compacted`; the informer lists again and ends with every change, the ones made
    /// while it was behind included.
    #[tokio::test]
    async fn a_watch_that_falls_behind_the_history_lists_again_and_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let options = pushcast_store::embedded::EmbeddedOptions { watch_history: 4 };
        let store: Arc<dyn Store> = Arc::new(
            pushcast_store::embedded::EmbeddedStore::open_with(&dir.path().join("s"), options)
                .unwrap(),
        );
        let informer = Informer::new(store.clone());
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        tokio::spawn(informer.clone().run(stop));
        async fn write(store: &dyn Store, id: &str) {
            let t = spec(id, "cam");
            store
                .put(
                    &keys::task("v", "a", id),
                    serde_json::to_vec(&t).unwrap(),
                    0,
                )
                .await
                .unwrap();
        }
        for i in 0..3 {
            write(store.as_ref(), &format!("t{i:02}")).await;
        }
        assert_eq!(informer.consistent().await.unwrap().tasks.len(), 3);
        assert_eq!(informer.lists(), 1);
        // Written from another thread while this one (the only thread of this runtime,
        // the informer's too) is blocked: the watch falls 38 events behind a history of 4.
        let other = store.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for i in 3..40 {
                    write(other.as_ref(), &format!("t{i:02}")).await;
                }
                other.delete(&keys::task("v", "a", "t00")).await.unwrap();
            });
        })
        .join()
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<String> = informer
                .consistent()
                .await
                .unwrap()
                .tasks
                .values()
                .map(|t| t.id.clone())
                .collect();
            let want: Vec<String> = (1..40).map(|i| format!("t{i:02}")).collect();
            if ids == want {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{ids:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(informer.lists() >= 2, "it listed again");
        let p = informer.read();
        let cam = ("v".to_string(), "a".to_string(), "cam".to_string());
        assert_eq!(p.by_stream[&cam].len(), 39, "the index was rebuilt too");
    }

    #[test]
    fn tasks_of_an_app_stop_at_its_prefix() {
        let mut p = Picture::default();
        put(&mut p, &spec("t1", "cam"));
        let mut other = spec("t9", "cam");
        other.app = "a2".into();
        put(&mut p, &other);
        let ids: Vec<&str> = p.tasks_of("v", "a").map(|(t, _)| t.id.as_str()).collect();
        assert_eq!(ids, ["t1"]);
    }
}
