//! The tasks this worker holds right now, with their live status: what `WorkerService`
//! answers and what the status writer checkpoints.
//!
//! Every change of a task's state goes through [`TaskLive`], which hands the new status
//! to the [`StatusWriter`] itself: no caller can change a state and forget to report it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use pushcast_proto::model::{
    DestinationStatus, SourceEvent, SourceEventKind, TaskSpec, TaskState, TaskStatus,
};
use pushcast_proto::time;

use crate::hub::{StreamId, StreamInfo};
use crate::push::SessionCounters;
use crate::status::StatusWriter;

/// Identity of a task: (vhost, app, id).
pub type TaskKey = (String, String, String);

/// One task's live state, per destination (a plain task has one). Each destination's
/// `status.total_*` hold its ended sessions only; the current session is added when a
/// snapshot is taken, so counters never need a write per frame. Each change of state is
/// written to the store through its [`StatusWriter`].
pub struct TaskLive {
    pub key: TaskKey,
    /// The stream it pushes (for the watchdog: is the source live and fed?).
    stream: StreamId,
    inner: Mutex<Inner>,
    status: StatusWriter,
}

#[derive(Debug, Default)]
struct Inner {
    worker: String,
    /// In the task's order; shown as `destinations` when the task has several.
    dests: Vec<Dest>,
    multi: bool,
    /// The last stored status: where a destination added later starts its totals.
    previous: TaskStatus,
    /// The last event of the task's source (task-wide).
    source_event: Option<SourceEvent>,
}

#[derive(Debug)]
struct Dest {
    /// [`pushcast_proto::destination::Destination::address`].
    id: String,
    status: TaskStatus,
    session: Option<Session>,
    /// Since when the current connection is up.
    connected: Option<Instant>,
}

#[derive(Debug)]
struct Session {
    counters: Arc<SessionCounters>,
    started: Instant,
    /// (when, bytes, pictures) sent, once a second, the last [`SAMPLES`]: the window the
    /// rates are measured over.
    samples: VecDeque<(Instant, u64, u64)>,
    /// When the bytes last moved (or the push last was not expected to send), and how
    /// many had been sent: the stall watchdog's reference.
    moved: (Instant, u64),
    /// The stream's frame count at the last sample.
    stream_frames: u64,
}

/// Samples kept per session: five seconds of rates.
const SAMPLES: usize = 6;

impl Session {
    fn new(counters: Arc<SessionCounters>) -> Session {
        let now = Instant::now();
        Session {
            counters,
            started: now,
            samples: VecDeque::with_capacity(SAMPLES),
            moved: (now, 0),
            stream_frames: 0,
        }
    }

    /// Bits and thousandths of frames per second since the oldest sample.
    fn rates(&self, now: Instant) -> (u64, u64) {
        let Some(&(then, bytes, frames)) = self.samples.front() else {
            return (0, 0);
        };
        let ms = now.saturating_duration_since(then).as_millis() as u64;
        if ms < 500 {
            return (0, 0);
        }
        let sent = self.counters.sent_bytes().saturating_sub(bytes);
        let framed = self.counters.sent_pictures().saturating_sub(frames);
        (sent * 8 * 1000 / ms, framed * 1_000_000 / ms)
    }
}

impl Dest {
    fn new(id: String, mut status: TaskStatus) -> Dest {
        status.state = TaskState::Ready;
        status.sent_bytes = 0;
        status.sent_time_ms = 0;
        status.worker = None;
        status.destinations = Vec::new();
        Dest {
            id,
            status,
            session: None,
            connected: None,
        }
    }

    fn snapshot(&self) -> TaskStatus {
        let mut st = self.status.clone();
        if let Some(s) = &self.session {
            let now = Instant::now();
            st.sent_bytes = s.counters.sent_bytes();
            st.sent_time_ms = s.started.elapsed().as_millis() as u64;
            st.total_sent_bytes += st.sent_bytes;
            st.total_sent_time_ms += st.sent_time_ms;
            let (bps, fps_milli) = s.rates(now);
            let h = &mut st.health;
            h.bitrate_bps = bps;
            h.fps_milli = fps_milli;
            h.dropped_frames = s.counters.all_dropped_frames();
            h.connected_ms = self
                .connected
                .map_or(0, |c| now.saturating_duration_since(c).as_millis() as u64);
            h.srt = s.counters.srt().map(|(lost, retransmitted, dropped)| {
                pushcast_proto::model::SrtHealth {
                    lost_packets: lost,
                    retransmitted_packets: retransmitted,
                    dropped_packets: dropped,
                }
            });
        }
        st
    }

    fn end_session(&mut self, state: TaskState) {
        if let Some(s) = self.session.take() {
            let bytes = s.counters.sent_bytes();
            let ms = s.started.elapsed().as_millis() as u64;
            let st = &mut self.status;
            st.sent_bytes = bytes;
            st.sent_time_ms = ms;
            st.total_sent_bytes += bytes;
            st.total_sent_time_ms += ms;
            st.sequence += 1;
            st.finish_ms = Some(time::now_ms());
        }
        // Rates and the connection are the session's; reconnects, stalls and the last
        // error's time are the task's.
        let h = &mut self.status.health;
        (h.bitrate_bps, h.fps_milli, h.connected_ms) = (0, 0, 0);
        self.connected = None;
        self.status.state = state;
    }
}

impl TaskLive {
    /// A task pushing to `spec`'s destinations; totals continue from `previous`; its
    /// changes of state are written through `status`.
    pub fn new(
        key: TaskKey,
        worker: &str,
        previous: Option<TaskStatus>,
        spec: &TaskSpec,
        status: StatusWriter,
    ) -> TaskLive {
        let stream = StreamId::new(
            spec.vhost.clone(),
            spec.app.clone(),
            spec.stream.name.clone(),
        );
        let live = TaskLive {
            key,
            stream,
            inner: Mutex::new(Inner {
                worker: worker.to_string(),
                source_event: previous.as_ref().and_then(|p| p.source_event.clone()),
                previous: previous.unwrap_or_default(),
                ..Inner::default()
            }),
            status,
        };
        live.set_destinations(spec);
        live
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the plain data inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows a change of the task's destinations: the ones kept keep their status
    /// and session, new ones start from their last stored status (if any). Not a change
    /// of state by itself: the sessions that start or stop report theirs.
    pub fn set_destinations(&self, spec: &TaskSpec) {
        let list = spec.destinations();
        let mut inner = self.lock();
        let mut old = std::mem::replace(&mut inner.dests, Vec::with_capacity(list.len()));
        let single = inner.previous.destinations.is_empty();
        for d in list {
            let id = d.address();
            let dest = match old.iter().position(|o| o.id == id) {
                Some(i) => old.swap_remove(i),
                None => {
                    let seed = match inner.previous.of_destination(&id) {
                        Some(st) => st.clone(),
                        // A plain task's status is its one destination's.
                        None if single && list.len() == 1 => inner.previous.clone(),
                        None => TaskStatus::default(),
                    };
                    Dest::new(id, seed)
                }
            };
            inner.dests.push(dest);
        }
        inner.multi = spec.is_multi_destination();
    }

    /// The status as the API should show it now.
    pub fn snapshot(&self) -> TaskStatus {
        let inner = self.lock();
        let dests: Vec<(String, TaskStatus)> = inner
            .dests
            .iter()
            .map(|d| (d.id.clone(), d.snapshot()))
            .collect();
        let mut st = if inner.multi {
            let mut sum = aggregate(dests.iter().map(|(_, s)| s));
            sum.destinations = dests
                .into_iter()
                .map(|(destination, status)| DestinationStatus {
                    destination,
                    status,
                })
                .collect();
            sum
        } else {
            dests.into_iter().next().map(|(_, s)| s).unwrap_or_default()
        };
        st.worker = Some(inner.worker.clone());
        st.source_event = inner.source_event.clone();
        st
    }

    /// Applies `f` to the destination `dest`, then writes the task's status.
    fn change_dest(&self, dest: &str, f: impl FnOnce(&mut Dest)) {
        {
            let mut inner = self.lock();
            if let Some(d) = inner.dests.iter_mut().find(|d| d.id == dest) {
                f(d);
            }
        }
        self.status.write(self);
    }

    /// Applies `f` to every destination, then writes the task's status.
    fn change_all(&self, f: impl Fn(&mut Dest)) {
        for d in &mut self.lock().dests {
            f(d);
        }
        self.status.write(self);
    }

    /// A session of `dest` begins (the source is live and the first connection is
    /// attempted).
    pub fn begin_session(&self, dest: &str) -> Arc<SessionCounters> {
        let counters = SessionCounters::new();
        self.change_dest(dest, |d| {
            d.end_session(TaskState::Ready);
            d.status.sent_bytes = 0;
            d.status.sent_time_ms = 0;
            d.status.state = TaskState::Ready;
            d.session = Some(Session::new(counters.clone()));
        });
        counters
    }

    /// The connection of `dest` is up and sending.
    pub fn started(&self, dest: &str) {
        self.change_dest(dest, |d| {
            d.connected = Some(Instant::now());
            d.status.state = TaskState::Started;
            d.status.last_error = None;
            d.status.start_ms = Some(time::now_ms());
        });
    }

    /// The codecs the session of `dest` pushes (one per track it sends).
    pub fn codecs(&self, dest: &str, codecs: Vec<String>) {
        self.change_dest(dest, |d| d.status.codecs = codecs);
    }

    /// A connection of `dest` failed; its session goes on (retrying).
    pub fn failed(&self, dest: &str, error: &str) {
        self.change_dest(dest, |d| {
            d.status.state = TaskState::Error;
            d.status.last_error = Some(error.to_string());
            d.status.health.last_error_ms = Some(time::now_ms());
            d.status.health.reconnects += 1;
            d.connected = None;
        });
    }

    /// The push to `dest` was found stalled (the failure that follows says how).
    pub fn stalled(&self, dest: &str) {
        let mut inner = self.lock();
        if let Some(d) = inner.dests.iter_mut().find(|d| d.id == dest) {
            d.status.health.stalls += 1;
        }
    }

    /// Takes this second's sample of every session's counters (the rates' window), and
    /// wakes the sessions found stalled: connected (`started`), their source live and
    /// fed with new frames, and no byte sent for `stall_after` (zero: never). `fed`: the
    /// frame count of each live stream that has an input (one hub scan per tick).
    pub fn sample(&self, fed: &HashMap<StreamId, u64>, stall_after: Duration) {
        let fed = fed.get(&self.stream).copied();
        let now = Instant::now();
        let mut inner = self.lock();
        for d in &mut inner.dests {
            let started = d.status.state == TaskState::Started;
            let Some(s) = &mut d.session else { continue };
            let (bytes, frames) = (s.counters.sent_bytes(), s.counters.sent_pictures());
            if s.samples.len() == SAMPLES {
                s.samples.pop_front();
            }
            s.samples.push_back((now, bytes, frames));
            // Expected to send: connected, and the source brought new frames since
            // the last sample (a quiet source is not the push's fault).
            let fresh = fed.is_some_and(|f| f > s.stream_frames);
            s.stream_frames = fed.unwrap_or(0);
            let (since, bytes_then) = s.moved;
            if bytes != bytes_then || !started || !fresh {
                s.moved = (now, bytes);
            } else if !stall_after.is_zero() && now.saturating_duration_since(since) >= stall_after
            {
                tracing::warn!(dest = %d.id, stalled_ms = stall_after.as_millis() as u64,
                    "push stalled: no bytes sent while the source is live");
                s.counters.stall();
                s.moved = (now, bytes);
            }
        }
    }

    /// Something happened to the task's source while its sessions kept their
    /// connections (`hub::splice`): recorded with its time, written (a status callback).
    pub fn source_event(&self, kind: SourceEventKind, input: Option<&str>) {
        {
            let mut inner = self.lock();
            let count = inner.source_event.as_ref().map_or(0, |e| e.count) + 1;
            inner.source_event = Some(SourceEvent {
                kind,
                time_ms: time::now_ms(),
                count,
                input: input.map(str::to_string),
            });
        }
        tracing::info!(event = kind.as_str(), input, "source event");
        self.status.write(self);
    }

    /// Sets the state of every destination.
    pub fn set_state(&self, state: TaskState) {
        self.change_all(|d| d.status.state = state);
    }

    /// The sessions ended (source ended or stop): counters move into the totals.
    pub fn end_session(&self, state: TaskState) {
        self.change_all(|d| d.end_session(state));
    }
}

impl std::fmt::Debug for TaskLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLive")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A multi-destination task's status: the sum of its destinations'.
fn aggregate<'a>(dests: impl Iterator<Item = &'a TaskStatus>) -> TaskStatus {
    let mut sum = TaskStatus::default();
    let mut states = Vec::new();
    for d in dests {
        states.push(d.state);
        sum.sent_bytes += d.sent_bytes;
        sum.sent_time_ms = sum.sent_time_ms.max(d.sent_time_ms);
        sum.sequence = sum.sequence.max(d.sequence);
        sum.total_sent_bytes += d.total_sent_bytes;
        sum.total_sent_time_ms = sum.total_sent_time_ms.max(d.total_sent_time_ms);
        sum.start_ms = match (sum.start_ms, d.start_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        sum.finish_ms = sum.finish_ms.max(d.finish_ms);
        for codec in &d.codecs {
            if !sum.codecs.contains(codec) {
                sum.codecs.push(codec.clone());
            }
        }
        if sum.last_error.is_none() {
            sum.last_error.clone_from(&d.last_error);
        }
        // Health: what all destinations send and lose together; the frame rate and the
        // connection time of the best one; the latest error.
        let (h, dh) = (&mut sum.health, &d.health);
        h.bitrate_bps += dh.bitrate_bps;
        h.fps_milli = h.fps_milli.max(dh.fps_milli);
        h.dropped_frames += dh.dropped_frames;
        h.reconnects += dh.reconnects;
        h.stalls += dh.stalls;
        h.connected_ms = h.connected_ms.max(dh.connected_ms);
        h.last_error_ms = h.last_error_ms.max(dh.last_error_ms);
        if let Some(d) = dh.srt {
            let s = h.srt.get_or_insert_default();
            s.dropped_packets += d.dropped_packets;
            s.lost_packets += d.lost_packets;
            s.retransmitted_packets += d.retransmitted_packets;
        }
    }
    let any = |s: TaskState| states.contains(&s);
    sum.state = if any(TaskState::Started) {
        TaskState::Started
    } else if any(TaskState::Error) {
        TaskState::Error
    } else if any(TaskState::Stopping) {
        TaskState::Stopping
    } else if !states.is_empty() && states.iter().all(|s| *s == TaskState::Stopped) {
        TaskState::Stopped
    } else {
        TaskState::Ready
    };
    sum
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

    /// Samples every task's sessions (see [`TaskLive::sample`]) against `streams`, the
    /// hub's live streams now.
    pub fn sample(&self, streams: &[StreamInfo], stall_after: Duration) {
        let fed: HashMap<StreamId, u64> = streams
            .iter()
            .filter(|s| s.splice.active.is_some())
            .map(|s| (s.key.clone(), s.frames_in))
            .collect();
        for task in self.all() {
            task.sample(&fed, stall_after);
        }
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

    use pushcast_proto::destination::Destination;
    use pushcast_proto::model::Protocol;

    use super::*;

    fn spec(keys: &[&str]) -> TaskSpec {
        let mut spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "id": "t", "vhost": "default", "app": "app", "stream": {"name": "s"},
            "protocol": "rtmp", "url": "rtmp://h/live", "stream_key": "k", "created_ms": 0,
        }))
        .expect("spec");
        spec.set_destinations(
            keys.iter()
                .map(|k| Destination::parse(Protocol::Rtmp, "rtmp://h/live", k, vec![]))
                .collect::<Result<_, _>>()
                .expect("valid"),
        );
        spec
    }

    fn task(keys: &[&str]) -> TaskLive {
        let key = ("default".to_string(), "app".to_string(), "t".to_string());
        TaskLive::new(key, "w1", None, &spec(keys), StatusWriter::detached().0)
    }

    #[test]
    fn totals_include_the_current_session_and_survive_its_end() {
        let live = task(&["k"]);
        let d = "rtmp://h/live/k";
        let c = live.begin_session(d);
        c.sent_bytes.fetch_add(100, Ordering::Relaxed);
        live.started(d);
        let s = live.snapshot();
        assert_eq!(
            (s.state, s.sent_bytes, s.total_sent_bytes),
            (TaskState::Started, 100, 100)
        );
        live.end_session(TaskState::Stopped);
        let c = live.begin_session(d);
        c.sent_bytes.fetch_add(50, Ordering::Relaxed);
        let s = live.snapshot();
        assert_eq!((s.sent_bytes, s.total_sent_bytes, s.sequence), (50, 150, 1));
        assert_eq!(s.worker.as_deref(), Some("w1"));
        assert!(s.destinations.is_empty());
    }

    #[test]
    fn destinations_kept_by_an_update_keep_their_session() {
        let live = task(&["a", "b"]);
        let b = "rtmp://h/live/b";
        let c = live.begin_session(b);
        c.sent_bytes.fetch_add(70, Ordering::Relaxed);
        live.started(b);
        live.set_destinations(&spec(&["b", "c"]));
        c.sent_bytes.fetch_add(30, Ordering::Relaxed);
        let s = live.snapshot();
        assert_eq!(s.state, TaskState::Started);
        assert_eq!(s.destinations.len(), 2);
        let sb = s.of_destination(b).expect("b");
        assert_eq!((sb.sent_bytes, sb.state), (100, TaskState::Started));
        let sc = s.of_destination("rtmp://h/live/c").expect("c");
        assert_eq!((sc.sent_bytes, sc.state), (0, TaskState::Ready));
        assert_eq!(s.sent_bytes, 100);
    }

    #[test]
    fn every_change_of_state_is_written() {
        let key = ("default".to_string(), "app".to_string(), "t".to_string());
        let (writer, mut written) = StatusWriter::detached();
        let live = TaskLive::new(key, "w1", None, &spec(&["a"]), writer);
        let d = "rtmp://h/live/a";
        let mut states = || {
            let mut out = Vec::new();
            while let Ok((_, st)) = written.try_recv() {
                out.push(st.state);
            }
            out
        };
        live.set_destinations(&spec(&["a"]));
        assert!(
            states().is_empty(),
            "a change of destinations is no change of state"
        );
        live.begin_session(d);
        live.started(d);
        live.failed(d, "connection refused");
        live.end_session(TaskState::Stopped);
        live.set_state(TaskState::Ready);
        assert_eq!(
            states(),
            [
                TaskState::Ready,
                TaskState::Started,
                TaskState::Error,
                TaskState::Stopped,
                TaskState::Ready
            ]
        );
    }
}

#[cfg(test)]
mod health_tests {
    //! Rates over the sampled window, and the stall watchdog (on tokio's paused clock).
    use bytes::Bytes;
    use futures::FutureExt;
    use pushcast_media::{Frame, FrameKind};
    use pushcast_proto::destination::Destination;
    use pushcast_proto::model::Protocol;

    use super::*;
    use crate::hub::Hub;

    const DEST: &str = "rtmp://h/live/k";

    /// What the worker's tick hands every task: the fed streams' frame counts.
    fn fed(hub: &Hub) -> HashMap<StreamId, u64> {
        hub.streams()
            .into_iter()
            .filter(|s| s.splice.active.is_some())
            .map(|s| (s.key, s.frames_in))
            .collect()
    }

    fn task() -> TaskLive {
        let mut spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "id": "t", "vhost": "default", "app": "app", "stream": {"name": "s"},
            "protocol": "rtmp", "url": "rtmp://h/live", "stream_key": "k", "created_ms": 0,
        }))
        .expect("spec");
        spec.set_destinations(vec![
            Destination::parse(Protocol::Rtmp, "rtmp://h/live", "k", vec![]).expect("valid"),
        ]);
        let key = ("default".to_string(), "app".to_string(), "t".to_string());
        TaskLive::new(key, "w1", None, &spec, StatusWriter::detached().0)
    }

    fn frame(ts: u32) -> Frame {
        Frame {
            kind: FrameKind::Audio,
            timestamp_ms: ts,
            payload: Bytes::from_static(&[0xaf, 1, 0]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rates_are_measured_over_the_sampled_window() {
        let (live, hub) = (task(), Hub::default());
        let c = live.begin_session(DEST);
        live.started(DEST);
        live.sample(&fed(&hub), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(2)).await;
        c.add_sent(500_000, 100);
        c.add_pictures(60);
        let h = live.snapshot().health;
        assert_eq!((h.bitrate_bps, h.fps_milli), (2_000_000, 30_000));
        assert_eq!(h.connected_ms, 2_000);
        live.failed(DEST, "boom");
        let h = live.snapshot().health;
        assert_eq!((h.reconnects, h.connected_ms), (1, 0));
        assert!(h.last_error_ms.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_that_sends_nothing_while_its_source_is_fed_is_found_stalled() {
        let (live, hub) = (task(), Hub::default());
        let source = hub
            .publish(StreamId::new("default", "app", "s"))
            .expect("live");
        let c = live.begin_session(DEST);
        live.started(DEST);
        let stalled = c.stalled.notified();
        tokio::pin!(stalled);
        stalled.as_mut().enable();
        let after = Duration::from_secs(5);
        live.sample(&fed(&hub), after);
        for s in 1..=4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            source.publish(frame(s * 1000));
            live.sample(&fed(&hub), after);
        }
        assert!(stalled.as_mut().now_or_never().is_none(), "not yet");
        // Bytes moving keep it alive; a source that sends nothing is not the push's fault.
        c.add_sent(10, 1);
        for _ in 0..6 {
            tokio::time::advance(Duration::from_secs(1)).await;
            live.sample(&fed(&hub), after);
        }
        assert!(
            stalled.as_mut().now_or_never().is_none(),
            "the source sent nothing"
        );
        for s in 10..=16 {
            tokio::time::advance(Duration::from_secs(1)).await;
            source.publish(frame(s * 1000));
            live.sample(&fed(&hub), after);
            if stalled.as_mut().now_or_never().is_some() {
                let waited = s - 10 + 1;
                assert!(waited >= 5, "stalled after {waited} s");
                return;
            }
        }
        panic!("never found stalled");
    }
}
