//! Task status callbacks (spec "Task status callbacks (seed 004)"): push-task events as
//! JSON, signed with `X-Signature: sha256=<hex HMAC-SHA256(body, secret)>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The signature header of status callbacks.
pub const SIGNATURE_HEADER: &str = "X-Signature";

/// The header naming an event, the same on every retry and after a failover: receivers
/// deduplicate by it (delivery is at least once). Also in the body as `eventId`.
pub const EVENT_ID_HEADER: &str = "X-Event-Id";

/// What happened to a push task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskEventKind {
    Created,
    Started,
    /// With a `reason`.
    Error,
    Stopped,
    Removed,
    /// The task's source lost its publisher; its pushes wait, connected, within the
    /// reconnect window (with `input` unset).
    #[serde(rename = "sourceInterrupted")]
    SourceInterrupted,
    /// A publisher continued the source within the window (`input`: which).
    #[serde(rename = "sourceResumed")]
    SourceResumed,
    /// The source changed inputs (`input`: the one feeding it now).
    #[serde(rename = "inputSwitched")]
    InputSwitched,
}

impl TaskEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskEventKind::Created => "created",
            TaskEventKind::Started => "started",
            TaskEventKind::Error => "error",
            TaskEventKind::Stopped => "stopped",
            TaskEventKind::Removed => "removed",
            TaskEventKind::SourceInterrupted => "sourceInterrupted",
            TaskEventKind::SourceResumed => "sourceResumed",
            TaskEventKind::InputSwitched => "inputSwitched",
        }
    }
}

/// The task counters, named as in the task object (rest-push-api.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounters {
    /// Media payload bytes of the current session.
    #[serde(rename = "sentBytes")]
    pub sent_bytes: u64,
    /// All sessions of the task, current included.
    #[serde(rename = "totalsentBytes")]
    pub total_sent_bytes: u64,
    /// Number of sessions that have ended.
    pub sequence: u64,
}

/// One status event. Body (compact JSON, this field order):
/// `{"event":"error","seq":1700000000000123,"taskId":"t1","vhost":"default","app":"live",
///   "state":"error","reason":"connection refused","destination":"rtmp://a/b",
///   "counters":{"sentBytes":0,"totalsentBytes":0,"sequence":0},"time":1700000000000}`
/// (`reason` only on `error`, `destination` only when the event is about one destination
/// of a multi-destination task; never a stream key).
///
/// `seq` increases with every event this process makes ([`next_seq`]), so for one task it
/// is strictly increasing: receivers order by it and drop duplicates by `(taskId, seq)`
/// (delivery is at least once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusEvent {
    pub event: TaskEventKind,
    pub seq: u64,
    #[serde(rename = "taskId")]
    pub task_id: String,
    pub vhost: String,
    pub app: String,
    /// The task state after the event (`ready`, `started`, `stopping`, `stopped`, `error`;
    /// `removed` for a removed task).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub counters: TaskCounters,
    /// Unix ms.
    pub time: u64,
    /// The event's id, stable across retries and failovers (also the `X-Event-Id`
    /// header): receivers deduplicate by it.
    #[serde(rename = "eventId", default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Source events: the input feeding the source after it (`primary`, `backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Source events: when it happened at the worker (Unix ms; `time` is when the
    /// event was derived).
    #[serde(
        rename = "sourceTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_time: Option<u64>,
}

impl TaskStatusEvent {
    /// An event stamped now: `seq` from [`next_seq`], `time` = now (Unix ms), zero
    /// counters, no reason/destination.
    pub fn new(
        event: TaskEventKind,
        task_id: impl Into<String>,
        vhost: impl Into<String>,
        app: impl Into<String>,
        state: impl Into<String>,
    ) -> Self {
        TaskStatusEvent {
            event,
            seq: next_seq(),
            task_id: task_id.into(),
            vhost: vhost.into(),
            app: app.into(),
            state: state.into(),
            reason: None,
            destination: None,
            counters: TaskCounters::default(),
            time: unix_ms(),
            event_id: None,
            input: None,
            source_time: None,
        }
    }

    pub fn with_event_id(mut self, id: impl Into<String>) -> Self {
        self.event_id = Some(id.into());
        self
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn with_destination(mut self, destination: impl Into<String>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// A source event's input and time.
    pub fn with_source(mut self, input: Option<String>, time_ms: u64) -> Self {
        self.input = input;
        self.source_time = Some(time_ms);
        self
    }

    pub fn with_counters(mut self, counters: TaskCounters) -> Self {
        self.counters = counters;
        self
    }

    /// The body as sent.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and a unit enum: cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The key that orders delivery: events with the same key go out one at a time, in order.
    pub fn order_key(&self) -> String {
        format!(
            "task\u{0}{}\u{0}{}\u{0}{}",
            self.vhost, self.app, self.task_id
        )
    }
}

/// Now, Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

static LAST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The next event sequence number: `max(previous + 1, now in Unix µs)`. Strictly
/// increasing within the process (so per task), and across restarts of a node as long as
/// its clock does not go back by more than the time between the events.
pub fn next_seq() -> u64 {
    let now = unix_us();
    let mut prev = LAST_SEQ.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST_SEQ.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The `X-Signature` value for `body`: `sha256=<lower-case hex HMAC-SHA256(body, secret)>`.
pub fn sign(body: &[u8], secret: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Signature` value against `body` and `secret` (constant-time compare).
/// For receivers and tests.
pub fn verify(body: &[u8], secret: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn event_bytes() {
        let ev = TaskStatusEvent {
            event: TaskEventKind::Error,
            seq: 7,
            task_id: "t1".into(),
            vhost: "default".into(),
            app: "live".into(),
            state: "error".into(),
            reason: Some("connection refused".into()),
            destination: None,
            counters: TaskCounters {
                sent_bytes: 10,
                total_sent_bytes: 30,
                sequence: 2,
            },
            time: 1_700_000_000_000,
            event_id: None,
            input: None,
            source_time: None,
        };
        assert_eq!(
            String::from_utf8(ev.to_json()).unwrap(),
            r#"{"event":"error","seq":7,"taskId":"t1","vhost":"default","app":"live","state":"error","reason":"connection refused","counters":{"sentBytes":10,"totalsentBytes":30,"sequence":2},"time":1700000000000}"#
        );
        // The event id comes last (an added field).
        assert!(
            String::from_utf8(ev.clone().with_event_id("42-0").to_json())
                .unwrap()
                .ends_with(r#""time":1700000000000,"eventId":"42-0"}"#)
        );
        let started = TaskStatusEvent {
            event: TaskEventKind::Started,
            reason: None,
            destination: Some("rtmp://a.example/app".into()),
            state: "started".into(),
            ..ev
        };
        assert_eq!(
            String::from_utf8(started.to_json()).unwrap(),
            r#"{"event":"started","seq":7,"taskId":"t1","vhost":"default","app":"live","state":"started","destination":"rtmp://a.example/app","counters":{"sentBytes":10,"totalsentBytes":30,"sequence":2},"time":1700000000000}"#
        );
        let back: TaskStatusEvent = serde_json::from_slice(&started.to_json()).unwrap();
        assert_eq!(back, started);
    }

    #[test]
    fn all_kinds_serialize_lowercase() {
        for (kind, name) in [
            (TaskEventKind::Created, "created"),
            (TaskEventKind::Started, "started"),
            (TaskEventKind::Error, "error"),
            (TaskEventKind::Stopped, "stopped"),
            (TaskEventKind::Removed, "removed"),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(kind.as_str(), name);
        }
    }

    #[test]
    fn seq_strictly_increases_and_tracks_time() {
        let mut prev = 0;
        for _ in 0..10_000 {
            let s = next_seq();
            assert!(s > prev);
            prev = s;
        }
        assert!(prev >= 1_600_000_000_000_000, "µs since the epoch: {prev}");
        let a = TaskStatusEvent::new(TaskEventKind::Created, "t", "v", "a", "ready");
        let b = TaskStatusEvent::new(TaskEventKind::Removed, "t", "v", "a", "removed");
        assert!(b.seq > a.seq);
        assert!(a.time > 1_600_000_000_000);
    }

    #[test]
    fn signature() {
        // RFC 4231 test case 2.
        let sig = sign(b"what do ya want for nothing?", b"Jefe");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"what do ya want for nothing?", b"Jefe", &sig));
        assert!(!verify(b"what do ya want for nothing!", b"Jefe", &sig));
        assert!(!verify(b"what do ya want for nothing?", b"jefe", &sig));
        assert!(!verify(b"x", b"Jefe", "sha256=zz"));
        assert!(!verify(b"x", b"Jefe", "md5=00"));
    }
}
