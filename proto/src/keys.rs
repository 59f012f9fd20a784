//! The layout of pushcast's keys in the state store (see DESIGN.md, "State in etcd").
//!
//! Names from the API are escaped so that a `/` in an id can never reach into another
//! key's prefix.

use sha2::{Digest, Sha256};

/// Escapes `%` and `/` in one key segment.
pub fn escape(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2F")
}

/// Reverses [`escape`].
pub fn unescape(segment: &str) -> String {
    segment.replace("%2F", "/").replace("%25", "%")
}

/// Virtual hosts' records (their host names): `vhosts/{name}`.
pub const VHOSTS: &str = "vhosts/";

pub fn vhost(name: &str) -> String {
    format!("{VHOSTS}{}", escape(name))
}

pub fn app(vhost: &str, app: &str) -> String {
    format!("apps/{}/{}", escape(vhost), escape(app))
}

pub fn apps_of(vhost: &str) -> String {
    format!("apps/{}/", escape(vhost))
}

pub fn task(vhost: &str, app: &str, id: &str) -> String {
    format!("{}{}", tasks_of(vhost, app), escape(id))
}

pub fn tasks_of(vhost: &str, app: &str) -> String {
    format!("tasks/{}/{}/", escape(vhost), escape(app))
}

pub fn status(vhost: &str, app: &str, id: &str) -> String {
    format!("{}{}", statuses_of(vhost, app), escape(id))
}

pub fn statuses_of(vhost: &str, app: &str) -> String {
    format!("status/{}/{}/", escape(vhost), escape(app))
}

/// The uniqueness index of a destination: one key per destination (url + destination
/// stream key),
/// whose value names the task that holds it. Hashed so that secrets in stream keys do
/// not appear in key names.
pub fn destination(destination: &str) -> String {
    let digest = Sha256::digest(destination.as_bytes());
    format!("dests/{}", hex::encode(digest))
}

/// A live source stream, under the lease of the worker that ingests it.
pub fn stream(vhost: &str, app: &str, stream: &str) -> String {
    format!(
        "streams/{}/{}/{}",
        escape(vhost),
        escape(app),
        escape(stream)
    )
}

/// Prefix of every live stream.
pub const STREAMS: &str = "streams/";

/// A worker's registration, under its lease.
pub fn worker(node_id: &str) -> String {
    format!("workers/{}", escape(node_id))
}

/// Prefix of every worker registration.
pub const WORKERS: &str = "workers/";

/// A task assigned to a worker.
pub fn assignment(worker: &str, vhost: &str, app: &str, id: &str) -> String {
    format!(
        "{}{}/{}/{}",
        assignments_of(worker),
        escape(vhost),
        escape(app),
        escape(id)
    )
}

/// Prefix of the assignments of one worker.
pub fn assignments_of(worker: &str) -> String {
    format!("assign/{}/", escape(worker))
}

/// Prefix of every assignment.
pub const ASSIGNMENTS: &str = "assign/";

/// A forward of a stream from its ingest worker to another worker. (Stored under
/// `relay/`, the word of earlier versions: a rolling upgrade keeps working.)
pub fn forward(from: &str, to: &str, vhost: &str, app: &str, stream: &str) -> String {
    format!(
        "{}{}/{}/{}/{}",
        forwards_of(from),
        escape(to),
        escape(vhost),
        escape(app),
        escape(stream)
    )
}

/// Prefix of the forwards a worker sends.
pub fn forwards_of(from: &str) -> String {
    format!("{FORWARDS}{}/", escape(from))
}

/// Prefix of every forward.
pub const FORWARDS: &str = "relay/";

/// The publish-key record of a stream (a nonce the key is derived from, never the key).
pub fn publish_key(vhost: &str, app: &str, stream: &str) -> String {
    format!(
        "keys/{}/{}/streams/{}",
        escape(vhost),
        escape(app),
        escape(stream)
    )
}

/// The lookup entry of a publish key: by the SHA-256 of the key, the stream it opens.
pub fn publish_key_lookup(vhost: &str, app: &str, key_hash_hex: &str) -> String {
    format!(
        "keys/{}/{}/lookup/{}",
        escape(vhost),
        escape(app),
        key_hash_hex
    )
}

/// The secret publish keys are derived from.
pub const STREAM_KEY_SECRET: &str = "secrets/stream-key-secret";

/// The controllers' election key.
pub const LEADER: &str = "leader";

/// Prefix of every task spec.
pub const TASKS: &str = "tasks/";

/// The access token generated at first start when none is configured.
pub const ACCESS_TOKEN: &str = "secrets/access-token";

/// Prefix of the callback outbox: status events waiting for a receiver's 2xx.
pub const OUTBOX: &str = "outbox/";

/// An outbox entry: the event at `place` among those derived from the store change at
/// `revision`, for the app's `receiver`-th status callback (zero-padded, so keys sort in
/// the order the events happened).
pub fn outbox_entry(revision: i64, place: usize, receiver: usize) -> String {
    format!("{OUTBOX}{revision:020}-{place:08}-{receiver:04}")
}

/// An outbox entry of a publish session (`vdoid`): its start (`step` 0, at its start
/// time) or end (1, at its end time), for the `n`-th publish callback of its app. Sorts
/// after every status entry and, within a stream, in time order: a session's end before
/// the next session's start.
pub fn outbox_publish(time_ms: u64, vdoid: &str, step: u8, n: usize) -> String {
    format!("{OUTBOX}p-{time_ms:016}-{}-{step}-{n:04}", escape(vdoid))
}

/// The store revision up to which status events have been derived into the outbox.
pub const NOTIFIER_CURSOR: &str = "notifier/cursor";

/// Prefix of what the event deriver knows of each task (exists; its last state).
pub const NOTIFIER_SEEN: &str = "notifier/seen/";

/// What the event deriver knows of the task whose task key is `task_key`.
pub fn notifier_seen(task_key: &str) -> String {
    format!(
        "{NOTIFIER_SEEN}{}",
        task_key.strip_prefix(TASKS).unwrap_or(task_key)
    )
}

/// The task key of a [`notifier_seen`] key.
pub fn task_of_seen(seen_key: &str) -> Option<String> {
    seen_key
        .strip_prefix(NOTIFIER_SEEN)
        .map(|rest| format!("{TASKS}{rest}"))
}

/// Splits a task or status key into (vhost, app, id).
pub fn parse_task_key(key: &str) -> Option<(String, String, String)> {
    let rest = key
        .strip_prefix("tasks/")
        .or_else(|| key.strip_prefix("status/"))?;
    let mut parts = rest.splitn(3, '/');
    let (v, a, i) = (parts.next()?, parts.next()?, parts.next()?);
    Some((unescape(v), unescape(a), unescape(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_slashes_stay_in_their_app() {
        let k = task("default", "app", "a/b%2F");
        assert_eq!(k, "tasks/default/app/a%2Fb%252F");
        assert!(k.starts_with(&tasks_of("default", "app")));
        assert_eq!(
            parse_task_key(&k),
            Some(("default".into(), "app".into(), "a/b%2F".into()))
        );
    }

    #[test]
    fn destination_keys_hide_the_stream_key() {
        let k = destination("rtmp://a/live/secret");
        assert!(!k.contains("secret"));
        assert_eq!(k, destination("rtmp://a/live/secret"));
    }
}
