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
use pushcast_store::{Store, WatchEvent, decoded};
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
            if let Some(a) = decoded::<AppConfig>(&kv.key, &kv.value, "app") {
                st.apps.insert((a.vhost.clone(), a.name.clone()), a);
            }
        }
        for kv in &tasks.kvs {
            if let Some(t) = decoded::<TaskSpec>(&kv.key, &kv.value, "task") {
                st.tasks.insert(kv.key.clone(), t);
            }
        }
        for kv in &statuses.kvs {
            if let Some(s) = decoded::<TaskStatus>(&kv.key, &kv.value, "status") {
                st.statuses.insert(kv.key.clone(), s);
            }
        }
        let from = apps.revision.max(tasks.revision).max(statuses.revision) + 1;
        let Ok(mut events) = store.watch("", from).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        while let Some(Ok(ev)) = events.next().await {
            for (task, kind, status) in on_event(&mut st, ev) {
                send(&st, dispatcher, &task, kind, &status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What to send for one store change: folds it into the known state and returns the
/// task events it makes (a pure decision; the caller sends them).
fn on_event(st: &mut State, ev: WatchEvent) -> Vec<(TaskSpec, TaskEventKind, TaskStatus)> {
    let key = ev.key().to_string();
    let mut out = Vec::new();
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
        match ev {
            WatchEvent::Put(kv) => {
                let Some(t) = decoded::<TaskSpec>(&kv.key, &kv.value, "task") else {
                    return out;
                };
                if st.tasks.insert(key, t.clone()).is_none() {
                    out.push((t, TaskEventKind::Created, TaskStatus::default()));
                }
            }
            WatchEvent::Delete { .. } => {
                if let Some(t) = st.tasks.remove(&key) {
                    let skey = keys::status(&t.vhost, &t.app, &t.id);
                    let mut gone = st.statuses.remove(&skey).unwrap_or_default();
                    gone.state = TaskState::Stopped;
                    out.push((t, TaskEventKind::Removed, gone));
                }
            }
        }
    } else if key.starts_with("status/") {
        let WatchEvent::Put(kv) = ev else { return out };
        let Some(new) = decoded::<TaskStatus>(&kv.key, &kv.value, "status") else {
            return out;
        };
        let old_state = st.statuses.get(&key).map(|s| s.state);
        st.statuses.insert(key.clone(), new.clone());
        if old_state == Some(new.state) {
            return out;
        }
        let kind = match new.state {
            TaskState::Started => TaskEventKind::Started,
            TaskState::Error => TaskEventKind::Error,
            TaskState::Stopped => TaskEventKind::Stopped,
            TaskState::Ready | TaskState::Stopping => return out,
        };
        let Some((v, a, id)) = keys::parse_task_key(&key) else {
            return out;
        };
        if let Some(t) = st.tasks.get(&keys::task(&v, &a, &id)).cloned() {
            out.push((t, kind, new));
        }
    }
    out
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

    fn kinds(events: Vec<(TaskSpec, TaskEventKind, TaskStatus)>) -> Vec<TaskEventKind> {
        events.into_iter().map(|(_, k, _)| k).collect()
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
            on_event(&mut st, put(&task, &spec())).is_empty(),
            "an update is no creation"
        );
        assert!(on_event(&mut st, put(&stat, &status(TaskState::Ready))).is_empty());
        for (state, kind) in [
            (TaskState::Started, TaskEventKind::Started),
            (TaskState::Error, TaskEventKind::Error),
            (TaskState::Stopped, TaskEventKind::Stopped),
        ] {
            assert_eq!(kinds(on_event(&mut st, put(&stat, &status(state)))), [kind]);
            assert!(
                on_event(&mut st, put(&stat, &status(state))).is_empty(),
                "a checkpoint in the same state is no event"
            );
        }
        let removed = on_event(
            &mut st,
            WatchEvent::Delete {
                key: task.clone(),
                mod_revision: 2,
            },
        );
        assert_eq!(removed.len(), 1);
        let (_, kind, last) = &removed[0];
        assert_eq!(
            (*kind, last.state, last.sent_bytes),
            (TaskEventKind::Removed, TaskState::Stopped, 5)
        );
    }

    #[test]
    fn statuses_of_unknown_tasks_and_broken_values_make_nothing() {
        let mut st = State::default();
        let stat = keys::status("v", "a", "nobody");
        assert!(on_event(&mut st, put(&stat, &status(TaskState::Started))).is_empty());
        let broken = WatchEvent::Put(KeyValue {
            key: keys::task("v", "a", "t"),
            value: b"{".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        });
        assert!(on_event(&mut st, broken).is_empty());
        assert!(st.tasks.is_empty());
    }
}
