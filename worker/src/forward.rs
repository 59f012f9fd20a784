//! Forwards: when the worker that ingests a stream is full, the scheduler places some of
//! its tasks on other workers, and the ingest worker pushes the stream to each of them
//! over RTMP (`relay/{from}/{to}/...` in the store), into their internal `_relay`
//! application. The receiving worker's hub then has the stream live, and its tasks run as
//! if it had been published there. Forward publishes carry the cluster's forward token,
//! so nobody else can inject a stream through `_relay`. A forward runs in the same
//! reconnect loop as a task's destination (`reconnect`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use pushcast_proto::destination::Destination;
use pushcast_proto::keys;
use pushcast_proto::model::{FORWARD_APP, Forward, Protocol};
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, StoreError, Txn, WatchEvent, decoded};
use rand::RngCore;
use tracing::Instrument;

use crate::hub::StreamId;
use crate::lease::Fence;
use crate::push::{SessionCounters, SessionEnd};
use crate::reconnect::{self, Report, Settings, Tracks};

/// The store key of the forward token (named as in earlier versions).
const TOKEN_KEY: &str = "secrets/relay-token";

/// The cluster's forward token: created once (first writer wins), read by every worker.
pub async fn cluster_token(store: &dyn Store) -> Result<String, StoreError> {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let fresh = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let txn = Txn::new()
        .when(Compare::Absent(TOKEN_KEY.to_string()))
        .and_then(Op::put(TOKEN_KEY, fresh.into_bytes()));
    store.txn(txn).await?;
    let kv = store
        .get(TOKEN_KEY)
        .await?
        .ok_or_else(|| StoreError::Internal("the forward token vanished".into()))?;
    String::from_utf8(kv.value)
        .map_err(|_| StoreError::Internal("the forward token is not text".into()))
}

/// The `_relay` stream name of a forwarded stream: its three parts escaped and joined
/// by `~`.
pub fn forward_stream_name(vhost: &str, app: &str, stream: &str) -> String {
    let part = |s: &str| keys::escape(s).replace('~', "%7E");
    format!("{}~{}~{}", part(vhost), part(app), part(stream))
}

/// The inverse of [`forward_stream_name`].
pub fn parse_forward_stream_name(name: &str) -> Option<StreamId> {
    let mut parts = name.split('~');
    let (v, a, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let part = |s: &str| keys::unescape(&s.replace("%7E", "~"));
    Some(StreamId::new(part(v), part(a), part(s)))
}

/// Runs the forwards this worker sends.
#[derive(Clone)]
pub struct Forwards {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub node_id: String,
    pub token: String,
    pub fence: Fence,
}

impl Forwards {
    pub async fn run(self, shutdown: CancellationToken) {
        let prefix = keys::forwards_of(&self.node_id);
        let mut running: HashMap<String, (Forward, CancellationToken)> = HashMap::new();
        while !shutdown.is_cancelled() {
            let listing = match self.store.list(&prefix).await {
                Ok(l) => l,
                Err(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let seen: HashMap<String, Forward> = listing
                .kvs
                .iter()
                .filter_map(|kv| Some((kv.key.clone(), decoded(&kv.key, &kv.value, "forward")?)))
                .collect();
            running.retain(|k, (r, c)| {
                let keep = seen.get(k) == Some(r);
                if !keep {
                    c.cancel();
                }
                keep
            });
            for (k, r) in seen {
                running.entry(k).or_insert_with(|| {
                    let c = shutdown.child_token();
                    self.spawn(r.clone(), c.clone());
                    (r, c)
                });
            }
            let Ok(mut events) = self.store.watch(&prefix, listing.revision + 1).await else {
                continue;
            };
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = events.next() => ev,
                };
                match ev {
                    Some(Ok(WatchEvent::Put(kv))) => {
                        let Some(r) = decoded::<Forward>(&kv.key, &kv.value, "forward") else {
                            continue;
                        };
                        if running.get(&kv.key).is_some_and(|(cur, _)| *cur == r) {
                            continue;
                        }
                        if let Some((_, c)) = running.remove(&kv.key) {
                            c.cancel();
                        }
                        let c = shutdown.child_token();
                        self.spawn(r.clone(), c.clone());
                        running.insert(kv.key, (r, c));
                    }
                    Some(Ok(WatchEvent::Delete { key, .. })) => {
                        if let Some((_, c)) = running.remove(&key) {
                            c.cancel();
                        }
                    }
                    _ => break,
                }
            }
        }
        for (_, c) in running.values() {
            c.cancel();
        }
    }

    fn spawn(&self, forward: Forward, cancel: CancellationToken) {
        let span =
            tracing::info_span!("forward", to = %forward.to_worker, stream = %forward.stream);
        tokio::spawn(self.clone().forward(forward, cancel).instrument(span));
    }

    /// Pushes one stream to one worker for as long as the forward exists.
    async fn forward(self, forward: Forward, cancel: CancellationToken) {
        let stream = StreamId::new(
            forward.vhost.clone(),
            forward.app.clone(),
            forward.stream.clone(),
        );
        let name = forward_stream_name(&forward.vhost, &forward.app, &forward.stream);
        let url = format!("rtmp://{}/{FORWARD_APP}", forward.to_rtmp_addr);
        let key = format!("{name}?token={}", self.token);
        let dest = match Destination::parse(Protocol::Rtmp, &url, &key, Vec::new()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, addr = %forward.to_rtmp_addr, "cannot forward to this worker address");
                return;
            }
        };
        let mut fence = self.fence.clone();
        loop {
            // A fenced worker pushes nothing (see `lease`).
            if !fence.lifted(&cancel).await {
                return;
            }
            let sub = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = fence.raised() => continue,
                s = self.settings.hub.subscribe_when_live(&stream, self.settings.queue) => s,
            };
            let attempts = cancel.child_token();
            let lp = Box::new(reconnect::Loop {
                settings: Arc::clone(&self.settings),
                stream: stream.clone(),
                dest: Arc::clone(&dest),
                tracks: Tracks::All,
                report: Report::Forward,
                counters: SessionCounters::new(),
                cancel: attempts.clone(),
            });
            let mut run = std::pin::pin!(lp.run(Some(sub)));
            let end = tokio::select! {
                end = &mut run => end,
                _ = fence.raised() => {
                    attempts.cancel();
                    run.await
                }
            };
            if end == SessionEnd::Cancelled && cancel.is_cancelled() {
                return;
            }
        }
    }
}

/// How forwards retry: sooner and capped lower than a task's destination, since the
/// other end is a worker of ours.
pub fn retry_policy() -> pushcast_retry::BackoffConfig {
    pushcast_retry::BackoffConfig::new(Duration::from_millis(250), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_names_round_trip() {
        let name = forward_stream_name("default", "a~b", "s/1");
        assert!(!name.contains('/'));
        assert_eq!(
            parse_forward_stream_name(&name),
            Some(StreamId::new("default", "a~b", "s/1"))
        );
        assert_eq!(parse_forward_stream_name("a~b"), None);
    }
}
