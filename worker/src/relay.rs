//! Relays: when the worker that ingests a stream is full, the scheduler places some of its
//! tasks on other workers, and the ingest worker pushes the stream to each of them over
//! RTMP (`relay/{from}/{to}/...`), into their internal `_relay` application. The
//! receiving worker's hub then has the stream live, and its tasks run as if it had been
//! published there. Relay publishes carry the cluster's relay token, so nobody else can
//! inject a stream through `_relay`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{Protocol, RELAY_APP, Relay, StreamSelector, TaskSpec};
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, StoreError, Txn, WatchEvent};
use rand::RngCore;
use tokio::sync::watch;
use tracing::Instrument;

use crate::hub::{Hub, QueueLimits, StreamKey};
use crate::push::{self, PushConfig, SessionCounters, SessionEnd, TrackSelection};
use pushcast_retry::{Backoff, BackoffConfig, RetryClass};

/// The store key of the relay token.
const TOKEN_KEY: &str = "secrets/relay-token";

/// The cluster's relay token: created once (first writer wins), read by every worker.
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
        .ok_or_else(|| StoreError::Internal("the relay token vanished".into()))?;
    String::from_utf8(kv.value)
        .map_err(|_| StoreError::Internal("the relay token is not text".into()))
}

/// The `_relay` stream name of a stream: its three parts escaped and joined by `~`.
pub fn relay_stream_name(vhost: &str, app: &str, stream: &str) -> String {
    let part = |s: &str| keys::escape(s).replace('~', "%7E");
    format!("{}~{}~{}", part(vhost), part(app), part(stream))
}

/// The inverse of [`relay_stream_name`].
pub fn parse_relay_stream_name(name: &str) -> Option<StreamKey> {
    let mut parts = name.split('~');
    let (v, a, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let part = |s: &str| keys::unescape(&s.replace("%7E", "~"));
    Some(StreamKey::new(part(v), part(a), part(s)))
}

/// Runs the relays this worker sends.
#[derive(Clone)]
pub struct Relays {
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    pub node_id: String,
    pub push: PushConfig,
    pub token: String,
    pub fence: watch::Receiver<bool>,
}

impl Relays {
    pub async fn run(self, shutdown: CancellationToken) {
        let prefix = keys::relays_of(&self.node_id);
        let mut running: HashMap<String, (Relay, CancellationToken)> = HashMap::new();
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
            let seen: HashMap<String, Relay> = listing
                .kvs
                .iter()
                .filter_map(|kv| Some((kv.key.clone(), serde_json::from_slice(&kv.value).ok()?)))
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
                        let Ok(r) = serde_json::from_slice::<Relay>(&kv.value) else {
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

    fn spawn(&self, relay: Relay, cancel: CancellationToken) {
        let span = tracing::info_span!("relay", to = %relay.to_worker, stream = %relay.stream);
        tokio::spawn(self.clone().relay(relay, cancel).instrument(span));
    }

    /// Pushes one stream to one worker for as long as the relay exists.
    async fn relay(self, relay: Relay, cancel: CancellationToken) {
        let key = StreamKey::new(relay.vhost.clone(), relay.app.clone(), relay.stream.clone());
        let spec = TaskSpec {
            id: format!("relay:{}:{}", relay.to_worker, relay.stream),
            vhost: relay.vhost.clone(),
            app: relay.app.clone(),
            stream: StreamSelector {
                name: relay.stream.clone(),
                ..Default::default()
            },
            protocol: Protocol::Rtmp,
            url: format!("rtmp://{}/{RELAY_APP}", relay.to_rtmp_addr),
            stream_key: format!(
                "{}?token={}",
                relay_stream_name(&relay.vhost, &relay.app, &relay.stream),
                self.token
            ),
            created_ms: 0,
            trace_parent: None,
            destinations: Vec::new(),
        };
        let mut backoff = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
            ..BackoffConfig::default()
        });
        let mut fence = self.fence.clone();
        while !cancel.is_cancelled() {
            if *fence.borrow_and_update() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = fence.changed() => continue,
                }
            }
            let sub = tokio::select! {
                _ = cancel.cancelled() => return,
                s = self.hub.subscribe_when_live(&key, QueueLimits::default()) => s,
            };
            let mut source = sub;
            let mut cfg = self.push.clone();
            cfg.shutdown = cancel.child_token();
            let counters = SessionCounters::new();
            let started = std::time::Instant::now();
            match push::run_session(
                &spec,
                TrackSelection::ALL,
                &mut source,
                &counters,
                &cfg,
                |_| {},
            )
            .await
            {
                Ok(SessionEnd::Cancelled) => return,
                Ok(SessionEnd::SourceEnded) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, "relay failed; retrying");
                    backoff.record_run(started.elapsed());
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay_for(RetryClass::Transient)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_names_round_trip() {
        let name = relay_stream_name("default", "a~b", "s/1");
        assert!(!name.contains('/'));
        assert_eq!(
            parse_relay_stream_name(&name),
            Some(StreamKey::new("default", "a~b", "s/1"))
        );
        assert_eq!(parse_relay_stream_name("a~b"), None);
    }
}
