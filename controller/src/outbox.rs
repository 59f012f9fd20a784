//! The callback outbox: events kept in the store until a receiver accepts them.
//!
//! The status event deriver ([`crate::notifier`]) writes one entry per (event, receiver)
//! in the same transaction that moves its cursor past the store change the event comes
//! from, so an event is recorded exactly when the change is accounted for: a controller
//! that dies in between leaves both undone, and the next leader derives the event again.
//! The worker that ingests writes PubStart with the stream's registration and PubEnd with
//! its removal, in the same transactions. The
//! leader delivers the entries ([`deliver`]): per receiver and task one at a time, in the
//! order they happened (the head of each lane; the next once it is acknowledged), each
//! with its `X-Event-Id` (and `eventId` in the body), the same on every retry and after a
//! failover, so receivers can deduplicate. An entry is deleted when its receiver answers
//! 2xx; a receiver that keeps failing gets the head of its lane again every
//! [`RETRY_AFTER`] after the dispatcher's own retries gave up.
//!
//! **Bounded**: at most [`MAX_ENTRIES`] entries; beyond, the oldest are dropped and
//! counted (`pushcast_callbacks_outbox_dropped_total{reason="full"}`), so a dead
//! receiver cannot fill etcd. An entry whose receiver is no longer among its app's status
//! callbacks is dropped too (`reason="receiver removed"`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{AppConfig, OutboxEntry, OutboxKind};
use pushcast_store::{Compare, Op, Store, Txn, WatchEvent, decoded};
use pushcast_webhooks::{Class, Dispatcher, Payload, Target};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most entries kept.
pub const MAX_ENTRIES: usize = 10_000;

/// How long a lane whose head the dispatcher gave up on waits before it is sent again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One event for one receiver, as stored.
pub type Entry = OutboxEntry;

fn lane_of(e: &Entry) -> Lane {
    (e.url.clone(), e.order.clone())
}

/// Events of one order (a task, a publish session) to one receiver: (url, order).
type Lane = (String, String);

/// The leader's guard on every outbox write: only the leader writes.
pub fn leading(node_id: &str) -> Compare {
    Compare::Value(keys::LEADER.to_string(), node_id.as_bytes().to_vec())
}

/// What the deliverer holds: every entry by key, the lanes in order, and their state.
#[derive(Default)]
struct Book {
    entries: BTreeMap<String, Entry>,
    lanes: HashMap<Lane, VecDeque<String>>,
    /// Lanes whose head is with the dispatcher, and that head's key.
    busy: HashMap<Lane, String>,
    /// Lanes waiting to send their head again, and when.
    waiting: HashMap<Lane, Instant>,
}

impl Book {
    fn add(&mut self, key: String, entry: Entry) {
        if self.entries.contains_key(&key) {
            return;
        }
        let lane = self.lanes.entry(lane_of(&entry)).or_default();
        // Keys sort in event order; a watch delivers them in that order too.
        let at = lane.partition_point(|k| *k < key);
        lane.insert(at, key.clone());
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        let lane = lane_of(&entry);
        if let Some(keys) = self.lanes.get_mut(&lane) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.lanes.remove(&lane);
            }
        }
        Some(entry)
    }

    /// Lanes that can send their head now.
    fn ready(&self, now: Instant) -> Vec<Lane> {
        self.lanes
            .keys()
            .filter(|l| !self.busy.contains_key(*l))
            .filter(|l| self.waiting.get(*l).is_none_or(|t| *t <= now))
            .cloned()
            .collect()
    }

    fn next_wake(&self) -> Option<Instant> {
        self.waiting.values().min().copied()
    }

    /// The oldest keys beyond `max`.
    fn overflow(&self, max: usize) -> Vec<String> {
        let extra = self.entries.len().saturating_sub(max);
        self.entries.keys().take(extra).cloned().collect()
    }
}

/// Delivers the outbox while this controller leads (the caller stops it when it no
/// longer does). Returns when the store cannot be followed (the caller starts again).
pub async fn deliver(store: &dyn Store, node_id: &str, dispatcher: &Dispatcher) {
    loop {
        let listing = match store.list(keys::OUTBOX).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "callback outbox: cannot read the store; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut book = Book::default();
        for kv in listing.kvs {
            if let Some(e) = decoded::<Entry>(&kv.key, &kv.value, "outbox entry") {
                book.add(kv.key, e);
            }
        }
        let Ok(mut events) = store.watch(keys::OUTBOX, listing.revision + 1).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, bool)>();
        loop {
            drop_overflow(store, node_id, &mut book).await;
            for lane in book.ready(Instant::now()) {
                send_head(store, node_id, dispatcher, &mut book, lane, &done_tx).await;
            }
            metrics::gauge!("pushcast_callbacks_outbox_entries").set(book.entries.len() as f64);
            let wake = book.next_wake();
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(WatchEvent::Put(kv))) => {
                        if let Some(e) = decoded::<Entry>(&kv.key, &kv.value, "outbox entry") {
                            book.add(kv.key, e);
                        }
                    }
                    Some(Ok(WatchEvent::Delete { key, .. })) => {
                        book.remove(&key);
                    }
                    // The watch broke: read everything again (what is in flight is
                    // acknowledged by key, so nothing is lost or sent twice for that).
                    _ => break,
                },
                Some((key, delivered)) = done_rx.recv() => {
                    acknowledge(store, node_id, &mut book, key, delivered).await;
                }
                _ = sleep_until_some(wake) => {
                    let now = Instant::now();
                    book.waiting.retain(|_, t| *t > now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands the head of `lane` to the dispatcher (dropping heads whose receiver is gone).
async fn send_head(
    store: &dyn Store,
    node_id: &str,
    dispatcher: &Dispatcher,
    book: &mut Book,
    lane: Lane,
    done: &mpsc::UnboundedSender<(String, bool)>,
) {
    loop {
        let Some(key) = book.lanes.get(&lane).and_then(|l| l.front()).cloned() else {
            return;
        };
        let Some(entry) = book.entries.get(&key).cloned() else {
            book.remove(&key);
            continue;
        };
        let secret = match receiver_secret(store, &entry).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                tracing::info!(event = %entry.event_id, what = %entry.what,
                    "callback dropped: its receiver is no longer one of the app's");
                metrics::counter!("pushcast_callbacks_outbox_dropped_total", "reason" => "receiver removed")
                    .increment(1);
                remove(store, node_id, book, &key).await;
                continue;
            }
            // The store cannot say now: try again later.
            Err(()) => {
                book.waiting.insert(lane, Instant::now() + RETRY_AFTER);
                return;
            }
        };
        let target = match Target::new(&entry.url) {
            Ok(t) if secret.is_empty() => t,
            Ok(t) => t.with_secret(secret),
            Err(e) => {
                tracing::warn!(error = %e, "callback dropped: bad receiver URL");
                remove(store, node_id, book, &key).await;
                continue;
            }
        };
        let tx = done.clone();
        let acked = key.clone();
        let payload = Payload::encoded(
            match entry.kind {
                OutboxKind::Status => Class::Status,
                OutboxKind::Publish => Class::Publish,
            },
            &entry.content_type,
            entry.body.into_bytes(),
            entry.event_id.as_str(),
            entry.order.as_str(),
        )
        .on_done(move |delivered| {
            let _ = tx.send((acked.clone(), delivered));
        });
        book.busy.insert(lane, key);
        dispatcher.send(&target, payload);
        return;
    }
}

/// The secret of the entry's receiver among its app's callbacks of its kind now (`""`
/// for none: publish callbacks are not signed); `None` when the app or the receiver is
/// gone.
async fn receiver_secret(store: &dyn Store, entry: &Entry) -> Result<Option<String>, ()> {
    let key = keys::app(&entry.vhost, &entry.app);
    let kv = store.get(&key).await.map_err(|_| ())?;
    let app = kv.and_then(|kv| decoded::<AppConfig>(&kv.key, &kv.value, "app"));
    Ok(app.and_then(|a| match entry.kind {
        OutboxKind::Status => a
            .callbacks
            .status
            .into_iter()
            .find(|s| s.url == entry.url)
            .map(|s| s.secret),
        OutboxKind::Publish => a
            .callbacks
            .publish
            .iter()
            .any(|p| p.url == entry.url)
            .then(String::new),
    }))
}

/// A dispatcher's answer about `key`: delivered entries are deleted; the lane of one it
/// gave up on waits [`RETRY_AFTER`] and sends it again.
async fn acknowledge(
    store: &dyn Store,
    node_id: &str,
    book: &mut Book,
    key: String,
    delivered: bool,
) {
    // By the busy lane, not the entry: an entry dropped meanwhile still frees its lane.
    let Some(lane) = book
        .busy
        .iter()
        .find(|(_, k)| **k == key)
        .map(|(l, _)| l.clone())
    else {
        return;
    };
    book.busy.remove(&lane);
    if delivered {
        metrics::counter!("pushcast_callbacks_outbox_delivered_total").increment(1);
        remove(store, node_id, book, &key).await;
    } else {
        book.waiting.insert(lane, Instant::now() + RETRY_AFTER);
    }
}

/// Deletes an entry (as the leader) and forgets it.
async fn remove(store: &dyn Store, node_id: &str, book: &mut Book, key: &str) {
    let txn = Txn::new()
        .when(leading(node_id))
        .and_then(Op::delete(key.to_string()));
    if let Err(e) = store.txn(txn).await {
        tracing::warn!(error = %e, "callback outbox: cannot delete a delivered entry (it may be sent again)");
    }
    book.remove(key);
}

/// Drops the oldest entries beyond [`MAX_ENTRIES`].
async fn drop_overflow(store: &dyn Store, node_id: &str, book: &mut Book) {
    let extra = book.overflow(MAX_ENTRIES);
    if extra.is_empty() {
        return;
    }
    tracing::warn!(
        dropped = extra.len(),
        max = MAX_ENTRIES,
        "callback outbox full: dropping the oldest status events"
    );
    metrics::counter!("pushcast_callbacks_outbox_dropped_total", "reason" => "full")
        .increment(extra.len() as u64);
    for chunk in extra.chunks(64) {
        let txn = chunk
            .iter()
            .fold(Txn::new().when(leading(node_id)), |t, k| {
                t.and_then(Op::delete(k.clone()))
            });
        let _ = store.txn(txn).await;
    }
    for k in &extra {
        // A lane whose head is in flight keeps it busy until the dispatcher answers.
        book.remove(k);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(url: &str, task: &str) -> Entry {
        Entry {
            kind: OutboxKind::Status,
            vhost: "v".into(),
            app: "a".into(),
            url: url.into(),
            order: task.into(),
            event_id: "1-0".into(),
            what: "started".into(),
            content_type: "application/json".into(),
            body: "{}".into(),
        }
    }

    #[test]
    fn lanes_keep_event_order_and_only_heads_go() {
        let mut b = Book::default();
        b.add("outbox/2".into(), entry("u", "t1"));
        b.add("outbox/1".into(), entry("u", "t1"));
        b.add("outbox/3".into(), entry("u", "t2"));
        b.add("outbox/4".into(), entry("w", "t1"));
        let lane: Lane = ("u".into(), "t1".into());
        assert_eq!(
            b.lanes[&lane].iter().collect::<Vec<_>>(),
            ["outbox/1", "outbox/2"]
        );
        let now = Instant::now();
        assert_eq!(b.ready(now).len(), 3, "one head per (receiver, task)");
        b.busy.insert(lane.clone(), "outbox/1".into());
        assert_eq!(b.ready(now).len(), 2);
        b.busy.remove(&lane);
        b.waiting.insert(lane.clone(), now + RETRY_AFTER);
        assert_eq!(b.ready(now).len(), 2, "a failing lane waits");
        assert_eq!(b.ready(now + RETRY_AFTER).len(), 3);
        b.remove("outbox/1");
        assert_eq!(b.lanes[&lane].front().unwrap(), "outbox/2");
        assert_eq!(b.overflow(2), ["outbox/2"], "the oldest beyond the bound");
    }
}
