//! The tasks this worker holds right now, with their live status: what `WorkerService`
//! answers and what the status writer checkpoints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pushcast_proto::model::{TaskState, TaskStatus};
use pushcast_proto::time;

use crate::push::SessionCounters;

/// Identity of a task: (vhost, app, id).
pub type TaskKey = (String, String, String);

/// One task's live state. `status.total_*` hold ended sessions only; the current session
/// is added when a snapshot is taken, so counters never need a write per frame.
#[derive(Debug)]
pub struct TaskLive {
    pub key: TaskKey,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    status: TaskStatus,
    session: Option<Session>,
}

#[derive(Debug)]
struct Session {
    counters: Arc<SessionCounters>,
    started: Instant,
}

impl TaskLive {
    pub fn new(key: TaskKey, worker: &str, previous: Option<TaskStatus>) -> TaskLive {
        let mut status = previous.unwrap_or_default();
        status.worker = Some(worker.to_string());
        status.state = TaskState::Ready;
        status.sent_bytes = 0;
        status.sent_time_ms = 0;
        TaskLive {
            key,
            inner: Mutex::new(Inner {
                status,
                session: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the plain data inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status as the API should show it now.
    pub fn snapshot(&self) -> TaskStatus {
        let inner = self.lock();
        let mut st = inner.status.clone();
        if let Some(s) = &inner.session {
            st.sent_bytes = s.counters.sent_bytes();
            st.sent_time_ms = s.started.elapsed().as_millis() as u64;
            st.total_sent_bytes += st.sent_bytes;
            st.total_sent_time_ms += st.sent_time_ms;
        }
        st
    }

    /// A session begins (the source is live and the first connection is attempted).
    pub fn begin_session(&self) -> Arc<SessionCounters> {
        let counters = SessionCounters::new();
        let mut inner = self.lock();
        inner.status.sent_bytes = 0;
        inner.status.sent_time_ms = 0;
        inner.session = Some(Session {
            counters: counters.clone(),
            started: Instant::now(),
        });
        counters
    }

    /// The connection is up and sending.
    pub fn started(&self) {
        let mut inner = self.lock();
        inner.status.state = TaskState::Started;
        inner.status.last_error = None;
        inner.status.start_ms = Some(time::now_ms());
    }

    /// A connection failed; the session goes on (retrying).
    pub fn failed(&self, error: &str) {
        let mut inner = self.lock();
        inner.status.state = TaskState::Error;
        inner.status.last_error = Some(error.to_string());
    }

    pub fn set_state(&self, state: TaskState) {
        self.lock().status.state = state;
    }

    /// The session ended (source ended or stop): counters move into the totals.
    pub fn end_session(&self, state: TaskState) {
        let mut inner = self.lock();
        if let Some(s) = inner.session.take() {
            let bytes = s.counters.sent_bytes();
            let ms = s.started.elapsed().as_millis() as u64;
            let st = &mut inner.status;
            st.sent_bytes = bytes;
            st.sent_time_ms = ms;
            st.total_sent_bytes += bytes;
            st.total_sent_time_ms += ms;
            st.sequence += 1;
            st.finish_ms = Some(time::now_ms());
        }
        inner.status.state = state;
    }
}

/// Every task this worker holds.
#[derive(Debug, Clone, Default)]
pub struct LiveTasks {
    tasks: Arc<Mutex<HashMap<TaskKey, Arc<TaskLive>>>>,
}

impl LiveTasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskKey, Arc<TaskLive>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, live: Arc<TaskLive>) {
        self.lock().insert(live.key.clone(), live);
    }

    pub fn remove(&self, key: &TaskKey) -> Option<Arc<TaskLive>> {
        self.lock().remove(key)
    }

    /// Removes `live` only if it is still the registered one for its key (a replaced
    /// runner must not remove its successor's entry).
    pub fn remove_if_same(&self, live: &Arc<TaskLive>) {
        let mut map = self.lock();
        if map.get(&live.key).is_some_and(|cur| Arc::ptr_eq(cur, live)) {
            map.remove(&live.key);
        }
    }

    pub fn get(&self, key: &TaskKey) -> Option<Arc<TaskLive>> {
        self.lock().get(key).cloned()
    }

    pub fn all(&self) -> Vec<Arc<TaskLive>> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn totals_include_the_current_session_and_survive_its_end() {
        let key = ("default".to_string(), "app".to_string(), "t".to_string());
        let live = TaskLive::new(key, "w1", None);
        let c = live.begin_session();
        c.sent_bytes.fetch_add(100, Ordering::Relaxed);
        live.started();
        let s = live.snapshot();
        assert_eq!(
            (s.state, s.sent_bytes, s.total_sent_bytes),
            (TaskState::Started, 100, 100)
        );
        live.end_session(TaskState::Stopped);
        let c = live.begin_session();
        c.sent_bytes.fetch_add(50, Ordering::Relaxed);
        let s = live.snapshot();
        assert_eq!((s.sent_bytes, s.total_sent_bytes, s.sequence), (50, 150, 1));
        assert_eq!(s.worker.as_deref(), Some("w1"));
    }
}
