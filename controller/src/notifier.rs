//! Task status callbacks: created / started / error / stopped / removed events of push
//! tasks, POSTed as signed JSON to their app's status URLs.
//!
//! The leader sends them (one sender in the cluster, so no duplicates), derived from the
//! store: task specs appearing and disappearing, and status keys changing state (workers
//! write those only on state changes). Delivery is at least once, retried, in order per
//! task (see `pushcast-webhooks`). Events that happen while no controller leads are not
//! replayed: a new leader starts from the current state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pushcast_proto::keys;
use pushcast_proto::model::{AppConfig, TaskSpec, TaskState, TaskStatus};
use pushcast_runtime::CancellationToken;
use pushcast_store::{Store, WatchEvent};
use pushcast_webhooks::{
    Dispatcher, Payload, Target, TaskCounters, TaskEventKind, TaskStatusEvent,
};
use tokio::sync::watch;

/// Runs while this controller leads, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let dispatcher = match Dispatcher::new(Default::default()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "status callbacks disabled: cannot start the dispatcher");
            return;
        }
    };
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
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lost => {}
            _ = follow(store.as_ref(), &dispatcher) => {}
            _ = export => {}
        }
    }
}

#[derive(Default)]
struct State {
    apps: HashMap<(String, String), AppConfig>,
    tasks: HashMap<String, TaskSpec>,
    statuses: HashMap<String, TaskStatus>,
}

/// Follows the store and sends events; returns when the watch breaks (to start over).
async fn follow(store: &dyn Store, dispatcher: &Dispatcher) {
    loop {
        let mut st = State::default();
        let listed = async {
            let apps = store.list("apps/").await?;
            let tasks = store.list(keys::TASKS).await?;
            let statuses = store.list("status/").await?;
            Ok::<_, pushcast_store::StoreError>((apps, tasks, statuses))
        };
        let (apps, tasks, statuses) = match listed.await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "status callbacks: cannot read the store; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for kv in &apps.kvs {
            if let Ok(a) = serde_json::from_slice::<AppConfig>(&kv.value) {
                st.apps.insert((a.vhost.clone(), a.name.clone()), a);
            }
        }
        for kv in &tasks.kvs {
            if let Ok(t) = serde_json::from_slice::<TaskSpec>(&kv.value) {
                st.tasks.insert(kv.key.clone(), t);
            }
        }
        for kv in &statuses.kvs {
            if let Ok(s) = serde_json::from_slice::<TaskStatus>(&kv.value) {
                st.statuses.insert(kv.key.clone(), s);
            }
        }
        let from = apps.revision.max(tasks.revision).max(statuses.revision) + 1;
        let Ok(mut events) = store.watch("", from).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while let Some(Ok(ev)) = events.next().await {
            on_event(&mut st, ev, dispatcher);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn on_event(st: &mut State, ev: WatchEvent, dispatcher: &Dispatcher) {
    let key = ev.key().to_string();
    if key.starts_with("apps/") {
        match ev {
            WatchEvent::Put(kv) => {
                if let Ok(a) = serde_json::from_slice::<AppConfig>(&kv.value) {
                    st.apps.insert((a.vhost.clone(), a.name.clone()), a);
                }
            }
            WatchEvent::Delete { .. } => st.apps.retain(|(v, a), _| keys::app(v, a) != key),
        }
    } else if key.starts_with(keys::TASKS) {
        match ev {
            WatchEvent::Put(kv) => {
                let Ok(t) = serde_json::from_slice::<TaskSpec>(&kv.value) else {
                    return;
                };
                if st.tasks.insert(key, t.clone()).is_none() {
                    send(
                        st,
                        dispatcher,
                        &t,
                        TaskEventKind::Created,
                        &TaskStatus::default(),
                    );
                }
            }
            WatchEvent::Delete { .. } => {
                if let Some(t) = st.tasks.remove(&key) {
                    let skey = keys::status(&t.vhost, &t.app, &t.id);
                    let last = st.statuses.remove(&skey).unwrap_or_default();
                    let mut gone = last.clone();
                    gone.state = TaskState::Stopped;
                    send(st, dispatcher, &t, TaskEventKind::Removed, &gone);
                }
            }
        }
    } else if key.starts_with("status/") {
        let WatchEvent::Put(kv) = ev else { return };
        let Ok(new) = serde_json::from_slice::<TaskStatus>(&kv.value) else {
            return;
        };
        let old_state = st.statuses.get(&key).map(|s| s.state);
        st.statuses.insert(key.clone(), new.clone());
        if old_state == Some(new.state) {
            return;
        }
        let kind = match new.state {
            TaskState::Started => TaskEventKind::Started,
            TaskState::Error => TaskEventKind::Error,
            TaskState::Stopped => TaskEventKind::Stopped,
            TaskState::Ready | TaskState::Stopping => return,
        };
        let Some((v, a, id)) = keys::parse_task_key(&key) else {
            return;
        };
        if let Some(t) = st.tasks.get(&keys::task(&v, &a, &id)).cloned() {
            send(st, dispatcher, &t, kind, &new);
        }
    }
}

fn send(
    st: &State,
    dispatcher: &Dispatcher,
    t: &TaskSpec,
    kind: TaskEventKind,
    status: &TaskStatus,
) {
    let Some(app) = st.apps.get(&(t.vhost.clone(), t.app.clone())) else {
        return;
    };
    if app.callbacks.status.is_empty() {
        return;
    }
    let mut ev = TaskStatusEvent::new(kind, &t.id, &t.vhost, &t.app, status.state.as_str())
        .with_counters(TaskCounters {
            sent_bytes: status.sent_bytes,
            total_sent_bytes: status.total_sent_bytes,
            sequence: status.sequence,
        });
    if kind == TaskEventKind::Error
        && let Some(reason) = &status.last_error
    {
        ev = ev.with_reason(reason.clone());
    }
    for cb in &app.callbacks.status {
        match Target::new(&cb.url) {
            Ok(target) => {
                let target = if cb.secret.is_empty() {
                    target
                } else {
                    target.with_secret(cb.secret.clone())
                };
                dispatcher.send(&target, Payload::status(&ev));
            }
            Err(e) => tracing::warn!(error = %e, "bad status callback URL"),
        }
    }
}
