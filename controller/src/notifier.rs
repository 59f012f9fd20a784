//! Task status callbacks: created / started / error / stopped / removed events of push
//! tasks, POSTed as signed JSON to their app's status URLs — never lost.
//!
//! The leader derives them from the store's history: task specs appearing and
//! disappearing, and status keys changing state (workers write those on state changes).
//! It keeps a **cursor** (the revision it has accounted for) and what it knows of each
//! task (**seen**: the task exists, its last state) in the store, and records every event
//! in the outbox ([`crate::outbox`]) in the same transaction that moves the cursor. A new
//! leader (or the same one after a restart) goes on from the cursor: etcd replays every
//! change since, so the events that happened while no controller led are derived then,
//! in order. Only when the history since the cursor is gone (compacted) does it compare
//! the current state with what it had seen, and send what differs (counted in
//! `pushcast_status_events_history_lost_total`). Delivery is the outbox's: at least
//! once, in order per task and receiver, with a stable event id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use pushcast_proto::keys;
use pushcast_proto::model::{
    AppConfig, OutboxKind, SourceEventKind, TaskSpec, TaskState, TaskStatus,
};
use pushcast_runtime::CancellationToken;
use pushcast_store::{Listing, Op, Store, StoreError, Txn, WatchEvent, decoded};
use pushcast_webhooks::{Dispatcher, TaskCounters, TaskEventKind, TaskStatusEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::outbox::{self, Entry};

/// How often the cursor is written when only changes that make no event went by (so a
/// new leader does not replay them all).
const CURSOR_EVERY: Duration = Duration::from_secs(2);

/// Runs while this controller leads, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    node_id: String,
    dispatcher: Dispatcher,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leader.changed() => if r.is_err() { return },
            }
        }
        let lost = async {
            while *leader.borrow() {
                if leader.changed().await.is_err() {
                    return;
                }
            }
        };
        let export = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                dispatcher.stats().record_metrics();
            }
        };
        let derive = async {
            loop {
                if let Err(e) = follow(store.as_ref(), &node_id).await {
                    tracing::warn!(error = %e, "status callbacks: cannot follow the store; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let deliver = async {
            loop {
                outbox::deliver(store.as_ref(), &node_id, &dispatcher).await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lost => {}
            _ = derive => {}
            _ = deliver => {}
            _ = export => {}
        }
    }
}

/// What the deriver knows of a task, kept in the store (`notifier/seen/…`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    /// The last status state seen (`None`: no status yet).
    state: Option<TaskState>,
    /// The count of the last source event seen (`TaskStatus::source_event`).
    #[serde(default, skip_serializing_if = "is_zero")]
    source_events: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A change to what is seen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SeenChange {
    Put(String, Seen),
    Delete(String),
}

impl SeenChange {
    /// As a transaction holds it: the task, and what is seen now (`None`: forgotten).
    fn into_pair(self) -> (String, Option<Seen>) {
        match self {
            SeenChange::Put(task, seen) => (task, Some(seen)),
            SeenChange::Delete(task) => (task, None),
        }
    }
}

/// One task event, before it is written for each receiver.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    vhost: String,
    app: String,
    id: String,
    kind: TaskEventKind,
    status: TaskStatus,
}

/// The deriver's state: apps (for their receivers), statuses (for the counters of a
/// `removed` event) and what is seen of each task, by task key.
#[derive(Default)]
struct State {
    apps: HashMap<(String, String), AppConfig>,
    statuses: HashMap<String, TaskStatus>,
    seen: HashMap<String, Seen>,
}

/// Derives events from the cursor on, until the watch breaks (`Ok`) or the store fails.
async fn follow(store: &dyn Store, node_id: &str) -> Result<(), StoreError> {
    let mut st = State::default();
    let apps = store.list("apps/").await?;
    for kv in &apps.kvs {
        if let Some(a) = decoded::<AppConfig>(&kv.key, &kv.value, "app") {
            st.apps.insert((a.vhost.clone(), a.name.clone()), a);
        }
    }
    st.statuses = statuses_of(&store.list("status/").await?);
    for kv in store.list(keys::NOTIFIER_SEEN).await?.kvs {
        if let (Some(task), Some(seen)) = (
            keys::task_of_seen(&kv.key),
            decoded::<Seen>(&kv.key, &kv.value, "seen"),
        ) {
            st.seen.insert(task, seen);
        }
    }
    let cursor = match store.get(keys::NOTIFIER_CURSOR).await? {
        Some(kv) => String::from_utf8_lossy(&kv.value)
            .parse::<i64>()
            .unwrap_or(0),
        None => 0,
    };
    let mut cursor = if cursor == 0 {
        // The first leader ever: events from now on.
        catch_up(store, node_id, &mut st, false).await?
    } else {
        cursor
    };
    loop {
        let mut events = store.watch("", cursor + 1).await?;
        // A change that matters went by without a write: the cursor is written once
        // things are quiet (its own writes and the outbox's do not count, or it would
        // write itself forever).
        let mut dirty = false;
        loop {
            let ev = match tokio::time::timeout(CURSOR_EVERY, events.next()).await {
                Ok(Some(Ok(ev))) => ev,
                Ok(Some(Err(StoreError::Compacted(_)))) => {
                    tracing::warn!(
                        cursor,
                        "status callbacks: the history since the cursor is gone; sending what changed"
                    );
                    cursor = catch_up(store, node_id, &mut st, true).await?;
                    break;
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Ok(()),
                Err(_) => {
                    if dirty {
                        write(store, node_id, Piece::at(cursor), &st).await?;
                        dirty = false;
                    }
                    continue;
                }
            };
            // This change and whatever else has already arrived: one transaction per
            // burst. A revision is never split between two (its events are numbered in
            // it, and the cursor moves past it once all are written), unless it alone
            // has more writes than a transaction takes.
            let mut batch = Batch::at(cursor);
            let mut next = Some(ev);
            let mut broken = None;
            while let Some(ev) = next.take() {
                let revision = ev.revision();
                if revision != batch.revision && batch.ops(&st) >= SOFT_OPS {
                    let done = batch.revision;
                    write(store, node_id, batch.take(done), &st).await?;
                    cursor = done;
                    dirty = false;
                }
                dirty |= matters(ev.key());
                let (made, changes) = on_event(&mut st, ev);
                batch.add(revision, made, changes);
                if batch.ops(&st) >= HARD_OPS {
                    // In pieces: the cursor stays before this revision until its last.
                    write(store, node_id, batch.take(revision - 1), &st).await?;
                }
                next = match events.next().now_or_never() {
                    Some(Some(Ok(ev))) => Some(ev),
                    Some(Some(Err(e))) => {
                        broken = Some(e);
                        None
                    }
                    Some(None) => {
                        broken = Some(StoreError::Unavailable("the watch ended".into()));
                        None
                    }
                    None => None,
                };
            }
            // Every event that had arrived is in: the last revision is complete.
            let done = batch.revision;
            let piece = batch.take(done);
            cursor = cursor.max(done);
            if piece.has_writes() {
                write(store, node_id, piece, &st).await?;
                dirty = false;
            }
            match broken {
                Some(StoreError::Compacted(_)) => {
                    cursor = catch_up(store, node_id, &mut st, true).await?;
                    break;
                }
                Some(e) => return Err(e),
                None => {}
            }
        }
    }
}

/// A burst is written once it has this many writes (at a revision's end).
const SOFT_OPS: usize = 64;
/// A revision alone with this many writes is written in pieces (etcd takes at most 128
/// operations a transaction).
const HARD_OPS: usize = 110;

/// Whether a change at `key` is one the deriver follows (not its own bookkeeping).
fn matters(key: &str) -> bool {
    key.starts_with("apps/") || key.starts_with(keys::TASKS) || key.starts_with("status/")
}

/// Changes on their way to a transaction: events with the revision of their change and
/// their place among its events, the last change to what is seen of each task.
#[derive(Debug, Default)]
struct Batch {
    /// The last revision added, and how many of its events are numbered (carried over
    /// when a revision is written in pieces).
    revision: i64,
    numbered: usize,
    made: Vec<(i64, usize, Event)>,
    /// The last change of each task (a transaction may name a key once).
    changes: BTreeMap<String, Option<Seen>>,
}

/// What one transaction records: a piece of a batch, and the cursor after it.
#[derive(Debug, Default)]
struct Piece {
    cursor: i64,
    made: Vec<(i64, usize, Event)>,
    changes: BTreeMap<String, Option<Seen>>,
}

impl Piece {
    fn at(cursor: i64) -> Piece {
        Piece {
            cursor,
            ..Piece::default()
        }
    }

    fn has_writes(&self) -> bool {
        !self.made.is_empty() || !self.changes.is_empty()
    }
}

impl Batch {
    fn at(cursor: i64) -> Batch {
        Batch {
            revision: cursor,
            ..Batch::default()
        }
    }

    fn add(&mut self, revision: i64, made: Vec<Event>, changes: Vec<SeenChange>) {
        if revision != self.revision {
            self.revision = revision;
            self.numbered = 0;
        }
        let first = self.numbered;
        self.numbered += made.len();
        self.made.extend(
            made.into_iter()
                .enumerate()
                .map(|(n, e)| (revision, first + n, e)),
        );
        self.changes
            .extend(changes.into_iter().map(SeenChange::into_pair));
    }

    /// The writes it would make: an entry per event and receiver, one per task seen.
    fn ops(&self, st: &State) -> usize {
        let entries: usize = self.made.iter().map(|(_, _, e)| receivers(st, e)).sum();
        entries + self.changes.len()
    }

    /// What is gathered, to be written with `cursor`; the numbering goes on.
    fn take(&mut self, cursor: i64) -> Piece {
        Piece {
            cursor,
            made: std::mem::take(&mut self.made),
            changes: std::mem::take(&mut self.changes),
        }
    }
}

/// How many status receivers an event's app has.
fn receivers(st: &State, e: &Event) -> usize {
    st.apps
        .get(&(e.vhost.clone(), e.app.clone()))
        .map_or(0, |a| a.callbacks.status.len())
}

/// The statuses of a listing, by key (those that do not decode are left out, counted).
fn statuses_of(listing: &Listing) -> HashMap<String, TaskStatus> {
    listing
        .kvs
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), decoded(&kv.key, &kv.value, "status")?)))
        .collect()
}

/// Compares the current tasks and statuses with what was seen, records the events that
/// make up the difference (`counted`: as events the history could not give), and
/// returns the revision read.
async fn catch_up(
    store: &dyn Store,
    node_id: &str,
    st: &mut State,
    counted: bool,
) -> Result<i64, StoreError> {
    let tasks = store.list(keys::TASKS).await?;
    let statuses = store.list("status/").await?;
    let revision = tasks.revision.max(statuses.revision);
    st.statuses = statuses_of(&statuses);
    let present: Vec<String> = tasks.kvs.iter().map(|kv| kv.key.clone()).collect();
    let (made, changes) = difference(st, &present, counted);
    if counted {
        metrics::counter!("pushcast_status_events_history_lost_total").increment(made.len() as u64);
    }
    // In pieces: a transaction has a bounded number of operations. The events are
    // numbered across the pieces: they all come from the one revision read.
    let mut made = made.into_iter().enumerate();
    let mut changes = changes.into_iter();
    loop {
        let mut piece = Piece::at(revision);
        piece
            .made
            .extend(made.by_ref().take(8).map(|(n, e)| (revision, n, e)));
        piece
            .changes
            .extend(changes.by_ref().take(32).map(SeenChange::into_pair));
        let last = !piece.has_writes();
        write(store, node_id, piece, st).await?;
        if last {
            break;
        }
    }
    Ok(revision)
}

/// The events that take what is seen to `present` (the task keys now) and the current
/// statuses: `created` for new tasks (`counted`: with their state's event), the state's
/// event where it changed, `removed` for tasks gone.
fn difference(st: &mut State, present: &[String], counted: bool) -> (Vec<Event>, Vec<SeenChange>) {
    let mut made = Vec::new();
    let mut changes = Vec::new();
    for task in present {
        let Some((v, a, id)) = keys::parse_task_key(task) else {
            continue;
        };
        let status = st.statuses.get(&keys::status(&v, &a, &id)).cloned();
        let now = Seen {
            state: status.as_ref().map(|s| s.state),
            source_events: status
                .as_ref()
                .and_then(|s| s.source_event.as_ref())
                .map_or(0, |e| e.count),
        };
        let before = st.seen.get(task).copied();
        if before == Some(now) {
            continue;
        }
        if counted {
            if before.is_none() {
                made.push(created(&v, &a, &id));
            }
            let source_changed = before.is_some_and(|b| b.source_events != now.source_events);
            if let Some(status) = &status
                && source_changed
                && let Some(e) = &status.source_event
            {
                made.push(event(&v, &a, &id, source_kind(e.kind), status.clone()));
            }
            let state_changed = before.is_none_or(|b| b.state != now.state);
            if let (Some(kind), Some(status), true) =
                (now.state.and_then(kind_of), status, state_changed)
            {
                made.push(event(&v, &a, &id, kind, status));
            }
        }
        st.seen.insert(task.clone(), now);
        changes.push(SeenChange::Put(task.clone(), now));
    }
    let present: HashSet<&String> = present.iter().collect();
    let gone: Vec<String> = st
        .seen
        .keys()
        .filter(|t| !present.contains(t))
        .cloned()
        .collect();
    for task in gone {
        st.seen.remove(&task);
        if counted && let Some((v, a, id)) = keys::parse_task_key(&task) {
            let last = TaskStatus {
                state: TaskState::Stopped,
                ..TaskStatus::default()
            };
            made.push(event(&v, &a, &id, TaskEventKind::Removed, last));
        }
        changes.push(SeenChange::Delete(task));
    }
    (made, changes)
}

/// The `created` event of a task (no status yet).
fn created(v: &str, a: &str, id: &str) -> Event {
    event(v, a, id, TaskEventKind::Created, TaskStatus::default())
}

fn event(v: &str, a: &str, id: &str, kind: TaskEventKind, status: TaskStatus) -> Event {
    Event {
        vhost: v.to_string(),
        app: a.to_string(),
        id: id.to_string(),
        kind,
        status,
    }
}

/// The event of a source event.
fn source_kind(kind: SourceEventKind) -> TaskEventKind {
    match kind {
        SourceEventKind::SourceInterrupted => TaskEventKind::SourceInterrupted,
        SourceEventKind::SourceResumed => TaskEventKind::SourceResumed,
        SourceEventKind::InputSwitched => TaskEventKind::InputSwitched,
    }
}

/// The event a status state makes (none for `ready` and `stopping`).
fn kind_of(state: TaskState) -> Option<TaskEventKind> {
    match state {
        TaskState::Started => Some(TaskEventKind::Started),
        TaskState::Error => Some(TaskEventKind::Error),
        TaskState::Stopped => Some(TaskEventKind::Stopped),
        TaskState::Ready | TaskState::Stopping => None,
    }
}

/// Records a batch (one outbox entry per event and receiver), the seen changes and the
/// cursor, in one transaction guarded by leadership.
async fn write(
    store: &dyn Store,
    node_id: &str,
    batch: Piece,
    st: &State,
) -> Result<(), StoreError> {
    let mut txn = Txn::new().when(outbox::leading(node_id));
    let mut n = 0;
    for (revision, place, ev) in &batch.made {
        let entries = entries_of(st, ev, *revision, *place);
        n += entries.len();
        for (receiver, e) in entries.iter().enumerate() {
            if let Ok(v) = serde_json::to_vec(e) {
                txn = txn.and_then(Op::put(keys::outbox_entry(*revision, *place, receiver), v));
            }
        }
    }
    for (task, seen) in batch.changes {
        txn = match seen.map(|s| serde_json::to_vec(&s)) {
            Some(Ok(v)) => txn.and_then(Op::put(keys::notifier_seen(&task), v)),
            Some(Err(_)) => txn,
            None => txn.and_then(Op::delete(keys::notifier_seen(&task))),
        };
    }
    txn = txn.and_then(Op::put(keys::NOTIFIER_CURSOR, batch.cursor.to_string()));
    let r = store.txn(txn).await?;
    if !r.succeeded {
        return Err(StoreError::Unavailable(
            "no longer the leader: the events are another controller's now".into(),
        ));
    }
    if n > 0 {
        metrics::counter!("pushcast_status_events_total").increment(n as u64);
    }
    Ok(())
}

/// The outbox entries of one event: one per status receiver of its app. The event id is
/// the store revision of the change it comes from and its place among that change's
/// events: the same whoever derives it.
fn entries_of(st: &State, ev: &Event, revision: i64, n: usize) -> Vec<Entry> {
    let Some(app) = st.apps.get(&(ev.vhost.clone(), ev.app.clone())) else {
        return Vec::new();
    };
    let event_id = format!("{revision}-{n}");
    let mut body = TaskStatusEvent::new(
        ev.kind,
        &ev.id,
        &ev.vhost,
        &ev.app,
        ev.status.state.as_str(),
    )
    .with_counters(TaskCounters {
        sent_bytes: ev.status.sent_bytes,
        total_sent_bytes: ev.status.total_sent_bytes,
        sequence: ev.status.sequence,
    })
    .with_event_id(event_id.clone());
    if ev.kind == TaskEventKind::Error
        && let Some(reason) = &ev.status.last_error
    {
        body = body.with_reason(reason.clone());
    }
    if let (
        TaskEventKind::SourceInterrupted
        | TaskEventKind::SourceResumed
        | TaskEventKind::InputSwitched,
        Some(e),
    ) = (ev.kind, &ev.status.source_event)
    {
        body = body.with_source(e.input.clone(), e.time_ms.max(0) as u64);
    }
    let json = String::from_utf8(body.to_json()).unwrap_or_default();
    let task = keys::task(&ev.vhost, &ev.app, &ev.id);
    app.callbacks
        .status
        .iter()
        .map(|cb| Entry {
            kind: OutboxKind::Status,
            vhost: ev.vhost.clone(),
            app: ev.app.clone(),
            url: cb.url.clone(),
            // The dispatcher's order key of a task's status events.
            order: format!("task\u{0}{task}"),
            event_id: event_id.clone(),
            what: ev.kind.as_str().to_string(),
            content_type: pushcast_webhooks::JSON.to_string(),
            body: json.clone(),
        })
        .collect()
}

/// What to record for one store change: folds it into the state and returns the task
/// events it makes and the changes to what is seen (a pure decision).
fn on_event(st: &mut State, ev: WatchEvent) -> (Vec<Event>, Vec<SeenChange>) {
    let key = ev.key().to_string();
    let mut made = Vec::new();
    let mut changes = Vec::new();
    if key.starts_with("apps/") {
        match ev {
            WatchEvent::Put(kv) => {
                if let Some(a) = decoded::<AppConfig>(&kv.key, &kv.value, "app") {
                    st.apps.insert((a.vhost.clone(), a.name.clone()), a);
                }
            }
            WatchEvent::Delete { .. } => st.apps.retain(|(v, a), _| keys::app(v, a) != key),
        }
    } else if key.starts_with(keys::TASKS) {
        let Some((v, a, id)) = keys::parse_task_key(&key) else {
            return (made, changes);
        };
        match ev {
            WatchEvent::Put(kv) => {
                if decoded::<TaskSpec>(&kv.key, &kv.value, "task").is_none() {
                    return (made, changes);
                }
                if !st.seen.contains_key(&key) {
                    st.seen.insert(key.clone(), Seen::default());
                    changes.push(SeenChange::Put(key, Seen::default()));
                    made.push(created(&v, &a, &id));
                }
            }
            WatchEvent::Delete { .. } => {
                if st.seen.remove(&key).is_some() {
                    let skey = keys::status(&v, &a, &id);
                    let mut gone = st.statuses.remove(&skey).unwrap_or_default();
                    gone.state = TaskState::Stopped;
                    changes.push(SeenChange::Delete(key));
                    made.push(event(&v, &a, &id, TaskEventKind::Removed, gone));
                }
            }
        }
    } else if key.starts_with("status/") {
        let WatchEvent::Put(kv) = ev else {
            st.statuses.remove(&key);
            return (made, changes);
        };
        let Some(new) = decoded::<TaskStatus>(&kv.key, &kv.value, "status") else {
            return (made, changes);
        };
        st.statuses.insert(key.clone(), new.clone());
        let Some((v, a, id)) = keys::parse_task_key(&key) else {
            return (made, changes);
        };
        let task = keys::task(&v, &a, &id);
        let Some(seen) = st.seen.get_mut(&task) else {
            return (made, changes);
        };
        let source_events = new.source_event.as_ref().map_or(0, |e| e.count);
        let state_changed = seen.state != Some(new.state);
        let source_changed = seen.source_events != source_events;
        if !state_changed && !source_changed {
            return (made, changes);
        }
        seen.state = Some(new.state);
        seen.source_events = source_events;
        changes.push(SeenChange::Put(task, *seen));
        // A new count means a new source event (a count that went back is a task
        // restarted elsewhere with an older status: nothing new happened).
        if source_changed && let Some(e) = &new.source_event {
            made.push(event(&v, &a, &id, source_kind(e.kind), new.clone()));
        }
        if let (Some(kind), true) = (kind_of(new.state), state_changed) {
            made.push(event(&v, &a, &id, kind, new));
        }
    }
    (made, changes)
}

#[cfg(test)]
mod tests {
    //! Which store changes make which task events.
    #![allow(clippy::unwrap_used)]

    use pushcast_store::KeyValue;

    use super::*;

    fn put<T: serde::Serialize>(key: &str, value: &T) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key: key.into(),
            value: serde_json::to_vec(value).unwrap(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        })
    }

    fn spec() -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "id": "t", "vhost": "v", "app": "a", "stream": {"name": "s"},
            "protocol": "rtmp", "url": "rtmp://h/live", "stream_key": "k", "created_ms": 0,
        }))
        .unwrap()
    }

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state,
            sent_bytes: 5,
            ..Default::default()
        }
    }

    fn kinds((events, _): (Vec<Event>, Vec<SeenChange>)) -> Vec<TaskEventKind> {
        events.into_iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_task_makes_created_then_state_changes_then_removed() {
        let mut st = State::default();
        let (task, stat) = (keys::task("v", "a", "t"), keys::status("v", "a", "t"));
        assert_eq!(
            kinds(on_event(&mut st, put(&task, &spec()))),
            [TaskEventKind::Created]
        );
        assert!(
            kinds(on_event(&mut st, put(&task, &spec()))).is_empty(),
            "an update is no creation"
        );
        assert!(kinds(on_event(&mut st, put(&stat, &status(TaskState::Ready)))).is_empty());
        for (state, kind) in [
            (TaskState::Started, TaskEventKind::Started),
            (TaskState::Error, TaskEventKind::Error),
            (TaskState::Stopped, TaskEventKind::Stopped),
        ] {
            assert_eq!(kinds(on_event(&mut st, put(&stat, &status(state)))), [kind]);
            assert_eq!(
                on_event(&mut st, put(&stat, &status(state))),
                (vec![], vec![]),
                "a checkpoint in the same state is no event, and no write"
            );
        }
        let (removed, changes) = on_event(
            &mut st,
            WatchEvent::Delete {
                key: task.clone(),
                mod_revision: 2,
            },
        );
        assert_eq!(removed.len(), 1);
        let e = &removed[0];
        assert_eq!(
            (e.kind, e.status.state, e.status.sent_bytes),
            (TaskEventKind::Removed, TaskState::Stopped, 5)
        );
        assert_eq!(changes, [SeenChange::Delete(task)]);
    }

    #[test]
    fn source_events_make_their_own_events_without_repeating_the_state() {
        use pushcast_proto::model::{SourceEvent, SourceEventKind};
        let mut st = State::default();
        let task = keys::task("v", "a", "t");
        let stat = keys::status("v", "a", "t");
        on_event(&mut st, put(&task, &spec()));
        assert_eq!(
            kinds(on_event(&mut st, put(&stat, &status(TaskState::Started)))),
            [TaskEventKind::Started]
        );
        let with = |kind, count| TaskStatus {
            source_event: Some(SourceEvent {
                kind,
                time_ms: 5,
                count,
                input: None,
            }),
            ..status(TaskState::Started)
        };
        let interrupted = with(SourceEventKind::SourceInterrupted, 1);
        assert_eq!(
            kinds(on_event(&mut st, put(&stat, &interrupted))),
            [TaskEventKind::SourceInterrupted],
            "started throughout: no second started event"
        );
        assert!(kinds(on_event(&mut st, put(&stat, &interrupted))).is_empty());
        assert_eq!(
            kinds(on_event(
                &mut st,
                put(&stat, &with(SourceEventKind::SourceResumed, 2))
            )),
            [TaskEventKind::SourceResumed]
        );
    }

    #[test]
    fn statuses_of_unknown_tasks_and_broken_values_make_nothing() {
        let mut st = State::default();
        let stat = keys::status("v", "a", "nobody");
        assert!(kinds(on_event(&mut st, put(&stat, &status(TaskState::Started)))).is_empty());
        let broken = WatchEvent::Put(KeyValue {
            key: keys::task("v", "a", "t"),
            value: b"{".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        });
        assert!(kinds(on_event(&mut st, broken)).is_empty());
        assert!(st.seen.is_empty());
    }

    #[test]
    fn a_batch_names_each_task_once_with_its_last_change() {
        let t = keys::task("v", "a", "t");
        let seen = |state| Seen {
            state: Some(state),
            source_events: 0,
        };
        let mut b = Batch::at(1);
        b.add(
            2,
            vec![],
            vec![SeenChange::Put(t.clone(), seen(TaskState::Stopped))],
        );
        b.add(
            3,
            vec![],
            vec![SeenChange::Put(t.clone(), seen(TaskState::Started))],
        );
        assert_eq!(
            b.changes.len(),
            1,
            "etcd refuses a key twice in a transaction"
        );
        assert_eq!(b.changes[&t], Some(seen(TaskState::Started)));
        assert_eq!(b.revision, 3);
    }

    #[test]
    fn a_revision_written_in_pieces_keeps_numbering_its_events() {
        let e = || event("v", "a", "t", TaskEventKind::Started, TaskStatus::default());
        let mut b = Batch::at(1);
        b.add(5, vec![e(), e()], vec![]);
        let first = b.take(4);
        assert_eq!(
            first.cursor, 4,
            "the cursor stays before an unfinished revision"
        );
        b.add(5, vec![e()], vec![]);
        let second = b.take(5);
        let places: Vec<(i64, usize)> = first
            .made
            .iter()
            .chain(&second.made)
            .map(|(r, n, _)| (*r, *n))
            .collect();
        assert_eq!(places, [(5, 0), (5, 1), (5, 2)], "one id per event");
        b.add(6, vec![e()], vec![]);
        assert_eq!(b.take(6).made[0].1, 0, "a new revision numbers from 0");
    }
}
