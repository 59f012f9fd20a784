//! Runs push tasks on this worker.
//!
//! Placement rule: a task runs on the worker where its source stream is live (no extra
//! hop). Every worker therefore watches the task specs in the store and keeps, per task,
//! a runner that waits for the stream in its local [`Hub`]; since a stream is live on one
//! worker only (its `streams/` key is created atomically), exactly one worker pushes.
//!
//! A runner's life: wait for the stream (`ready`) → session: connect (`ready`) → sending
//! (`started`) → on failure `error` + backoff + reconnect from the GOP cache → the source
//! ends (`stopped`, `sequence`+1) → `ready` again, waiting for the next publish.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{TaskSpec, TaskState};
use pushcast_runtime::CancellationToken;
use pushcast_store::{Store, WatchEvent};
use tracing::Instrument;

use crate::backoff::{Backoff, BackoffConfig};
use crate::hub::{Hub, QueueLimits, StreamKey, Subscription, TryRecvError};
use crate::live::{LiveTasks, TaskKey, TaskLive};
use crate::media::Frame;
use crate::push::{self, FrameSource, PushConfig, SessionEnd, SessionEvent, TrackSelection};
use crate::status::StatusWriter;
use crate::tracks;

/// What every runner shares.
#[derive(Clone)]
pub struct Runner {
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    pub live: LiveTasks,
    pub status: StatusWriter,
    pub push: PushConfig,
    pub backoff: BackoffConfig,
    pub queue: QueueLimits,
    pub node_id: String,
}

struct Running {
    spec: TaskSpec,
    cancel: CancellationToken,
}

impl Runner {
    /// Follows the task specs in the store until `shutdown`: list, then watch from the
    /// listing's revision; on a broken watch, list again and reconcile.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut running: HashMap<TaskKey, Running> = HashMap::new();
        while !shutdown.is_cancelled() {
            let listing = match self.store.list(keys::TASKS).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list tasks; sessions keep running, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut seen = HashMap::new();
            for kv in &listing.kvs {
                if let Ok(spec) = serde_json::from_slice::<TaskSpec>(&kv.value) {
                    seen.insert(task_key(&spec), spec);
                }
            }
            running.retain(|k, r| {
                let keep = seen.get(k).is_some_and(|s| *s == r.spec);
                if !keep {
                    r.cancel.cancel();
                }
                keep
            });
            for (k, spec) in seen {
                if let std::collections::hash_map::Entry::Vacant(e) = running.entry(k) {
                    e.insert(self.spawn(spec, &shutdown));
                }
            }
            let mut events = match self.store.watch(keys::TASKS, listing.revision + 1).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch tasks; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = events.next() => ev,
                };
                match ev {
                    Some(Ok(WatchEvent::Put(kv))) => {
                        let Ok(spec) = serde_json::from_slice::<TaskSpec>(&kv.value) else {
                            continue;
                        };
                        let k = task_key(&spec);
                        if running.get(&k).is_some_and(|r| r.spec == spec) {
                            continue;
                        }
                        if let Some(old) = running.remove(&k) {
                            old.cancel.cancel();
                        }
                        running.insert(k, self.spawn(spec, &shutdown));
                    }
                    Some(Ok(WatchEvent::Delete { key, .. })) => {
                        if let Some(k) = keys::parse_task_key(&key)
                            && let Some(r) = running.remove(&k)
                        {
                            r.cancel.cancel();
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "task watch broke; listing again");
                        break;
                    }
                    None => break,
                }
            }
        }
        for r in running.values() {
            r.cancel.cancel();
        }
    }

    fn spawn(&self, spec: TaskSpec, shutdown: &CancellationToken) -> Running {
        let cancel = shutdown.child_token();
        let span =
            tracing::info_span!("task", id = %spec.id, app = %spec.app, stream = %spec.stream.name);
        tokio::spawn(
            self.clone()
                .task(spec.clone(), cancel.clone())
                .instrument(span),
        );
        Running { spec, cancel }
    }

    /// One task's whole life on this worker.
    async fn task(self, spec: TaskSpec, cancel: CancellationToken) {
        let key = task_key(&spec);
        let stream = StreamKey::new(
            spec.vhost.clone(),
            spec.app.clone(),
            spec.stream.name.clone(),
        );
        let live = Arc::new(TaskLive::new(key.clone(), &self.node_id, None));
        loop {
            let sub = tokio::select! {
                _ = cancel.cancelled() => break,
                s = self.hub.subscribe_when_live(&stream, self.queue) => s,
            };
            // The stream is live here: this worker holds the task now.
            self.live.insert(live.clone());
            let end = self.session(&spec, &stream, &live, sub, &cancel).await;
            live.end_session(TaskState::Stopped);
            self.status.changed(&key);
            if end == SessionEnd::Cancelled {
                break;
            }
            live.set_state(TaskState::Ready);
            self.status.changed(&key);
        }
        self.live.remove(&key);
    }

    /// One source session: connect, push, reconnect with backoff, until the source ends
    /// or the task is cancelled.
    async fn session(
        &self,
        spec: &TaskSpec,
        stream: &StreamKey,
        live: &Arc<TaskLive>,
        first: Subscription,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        let counters = live.begin_session();
        live.set_state(TaskState::Ready);
        self.status.changed(&live.key);
        let mut backoff = Backoff::new(self.backoff);
        let mut next = Some(first);
        loop {
            let Some(mut sub) = next
                .take()
                .or_else(|| self.hub.subscribe(stream, self.queue))
            else {
                return SessionEnd::SourceEnded;
            };
            // Tracks are known once a decodable start (headers + keyframe) is queued; a
            // reserved task wakes at publish time, before any frame.
            let info = tokio::select! {
                _ = cancel.cancelled() => return SessionEnd::Cancelled,
                i = sub.ready() => match i {
                    Some(i) => i,
                    None => return SessionEnd::SourceEnded,
                },
            };
            let selection = match tracks::select(spec.protocol, &spec.stream, &info.tracks()) {
                Ok(s) => TrackSelection {
                    video: s.video,
                    audio: s.audio,
                    data: s.data,
                },
                Err(e) => {
                    // Nothing to do until the stream changes: report and wait for its end.
                    live.failed(&e.to_string());
                    self.status.changed(&live.key);
                    return wait_end(sub, cancel).await;
                }
            };
            let mut source = SubscriptionSource(sub);
            let mut cfg = self.push.clone();
            cfg.shutdown = cancel.child_token();
            let started = Instant::now();
            let status = self.status.clone();
            let task_live = live.clone();
            let result = push::run_session(spec, selection, &mut source, &counters, &cfg, |ev| {
                if let SessionEvent::Connected { .. } = ev {
                    task_live.started();
                    status.changed(&task_live.key);
                }
            })
            .await;
            match result {
                Ok(end) => return end,
                Err(e) => {
                    tracing::warn!(error = %e, "push failed; retrying");
                    live.failed(&e.to_string());
                    self.status.changed(&live.key);
                    backoff.record_success(started.elapsed());
                    let delay = backoff.next_delay_for(if e.is_transient() {
                        crate::backoff::Retryable::Yes
                    } else {
                        crate::backoff::Retryable::Rejected
                    });
                    // Keep following the stream while waiting, so its end is noticed.
                    let sub = source.0;
                    tokio::select! {
                        _ = cancel.cancelled() => return SessionEnd::Cancelled,
                        end = wait_end(sub, cancel) => return end,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Waits until the stream behind `sub` ends (or the task is cancelled), discarding frames.
async fn wait_end(mut sub: Subscription, cancel: &CancellationToken) -> SessionEnd {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            f = sub.recv() => if f.is_none() { return SessionEnd::SourceEnded },
        }
    }
}

fn task_key(spec: &TaskSpec) -> TaskKey {
    (spec.vhost.clone(), spec.app.clone(), spec.id.clone())
}

/// The hub's subscription as a push session's frame source.
struct SubscriptionSource(Subscription);

#[async_trait::async_trait]
impl FrameSource for SubscriptionSource {
    async fn next_frame(&mut self) -> Option<Frame> {
        self.0.recv().await
    }

    fn try_next_frame(&mut self) -> Option<Option<Frame>> {
        match self.0.try_recv() {
            Ok(f) => Some(Some(f)),
            Err(TryRecvError::Empty) => None,
            Err(_) => Some(None),
        }
    }
}
