//! Domain types shared by the controller and the workers, stored as JSON in the state store.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::destination::{Destination, DestinationSpec};

use crate::{time, v1};

/// Destination protocol of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rtmp,
    Mpegts,
    Srt,
}

impl Protocol {
    /// Parses the API's protocol word (already trimmed and lowercased by the caller).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "rtmp" => Some(Protocol::Rtmp),
            "mpegts" => Some(Protocol::Mpegts),
            "srt" => Some(Protocol::Srt),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
            Protocol::Mpegts => "mpegts",
            Protocol::Srt => "srt",
        }
    }

    /// URL schemes this protocol can push to.
    pub fn schemes(self) -> &'static [&'static str] {
        match self {
            Protocol::Rtmp => &["rtmp", "rtmps"],
            Protocol::Mpegts => &["udp", "tcp"],
            Protocol::Srt => &["srt"],
        }
    }
}

/// The source stream of a task and the tracks to take from it, as requested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSelector {
    pub name: String,
    #[serde(default)]
    pub track_ids: Vec<i64>,
    #[serde(default)]
    pub variant_names: Vec<String>,
}

/// What a push task is: written once by the API (and changed only by explicit updates).
///
/// Stored as JSON in the layout it has always had: the first destination's
/// `protocol`/`url`/`stream_key` at the top (what OME clients see), and a `destinations`
/// list only for a multi-destination task (or a lone destination with tracks of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub id: String,
    pub vhost: String,
    pub app: String,
    pub stream: StreamSelector,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// W3C trace context (`traceparent`) of the API call that created the task, so its
    /// scheduling and pushes join that trace across processes.
    pub trace_parent: Option<String>,
    /// Source continuity of this task: how long its pushes wait, connected, for the
    /// source to come back (0: they stop when it ends). The stream is kept as long as
    /// its app's window or the longest of its tasks' asks. `None`: the app's window.
    pub reconnect_window_ms: Option<u64>,
    /// The auto-push rule that made this task (`None`: made by hand).
    pub rule: Option<String>,
    /// Every destination, the first one first; never empty.
    destinations: Vec<Arc<Destination>>,
}

impl TaskSpec {
    /// A task pushing `stream` to `destinations` (`None` when there are none).
    pub fn new(
        id: String,
        vhost: String,
        app: String,
        stream: StreamSelector,
        created_ms: i64,
        destinations: Vec<Arc<Destination>>,
    ) -> Option<TaskSpec> {
        (!destinations.is_empty()).then_some(TaskSpec {
            id,
            vhost,
            app,
            stream,
            created_ms,
            trace_parent: None,
            reconnect_window_ms: None,
            rule: None,
            destinations,
        })
    }

    /// Every destination of the task, the first one first.
    pub fn destinations(&self) -> &[Arc<Destination>] {
        &self.destinations
    }

    /// The first destination: what the task's own `protocol`/`url`/`streamKey` show.
    pub fn first(&self) -> &Destination {
        // Never empty by construction (`new`, `set_destinations`, decoding).
        &self.destinations[0]
    }

    /// Replaces the destinations; an empty list changes nothing.
    pub fn set_destinations(&mut self, list: Vec<Arc<Destination>>) {
        if !list.is_empty() {
            self.destinations = list;
        }
    }

    /// True when the task shows its `destinations` (more than one).
    pub fn is_multi_destination(&self) -> bool {
        self.destinations.len() > 1
    }

    /// The tracks a push to `d` takes: the destination's own `variantNames` when it has
    /// some, the task's selection otherwise.
    pub fn selector_for(&self, d: &Destination) -> StreamSelector {
        let mut selector = self.stream.clone();
        if !d.variant_names().is_empty() {
            selector.variant_names = d.variant_names().to_vec();
        }
        selector
    }
}

/// The stored layout of a [`TaskSpec`] (field order included).
#[derive(Serialize)]
struct StoredSpecRef<'a> {
    id: &'a str,
    vhost: &'a str,
    app: &'a str,
    stream: &'a StreamSelector,
    protocol: Protocol,
    url: &'a str,
    stream_key: &'a str,
    created_ms: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    destinations: Vec<&'a DestinationSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_parent: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: &'a Option<String>,
}

#[derive(Deserialize)]
struct StoredSpec {
    id: String,
    vhost: String,
    app: String,
    stream: StreamSelector,
    protocol: Protocol,
    url: String,
    /// Empty when none was given (and always for mpegts/srt).
    #[serde(default)]
    stream_key: String,
    created_ms: i64,
    /// Empty for a plain single-destination task (as stored before multi-destination
    /// tasks existed).
    #[serde(default)]
    destinations: Vec<DestinationSpec>,
    #[serde(default)]
    trace_parent: Option<String>,
    #[serde(default)]
    reconnect_window_ms: Option<u64>,
    #[serde(default)]
    rule: Option<String>,
}

impl Serialize for TaskSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let first = self.first();
        // A lone destination without tracks of its own is stored as a plain task.
        let destinations = if self.destinations.len() == 1 && first.variant_names().is_empty() {
            Vec::new()
        } else {
            self.destinations.iter().map(|d| d.spec()).collect()
        };
        StoredSpecRef {
            id: &self.id,
            vhost: &self.vhost,
            app: &self.app,
            stream: &self.stream,
            protocol: first.protocol(),
            url: first.url(),
            stream_key: first.stream_key(),
            created_ms: self.created_ms,
            destinations,
            trace_parent: &self.trace_parent,
            reconnect_window_ms: self.reconnect_window_ms,
            rule: &self.rule,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TaskSpec, D::Error> {
        let s = StoredSpec::deserialize(d)?;
        let destinations = if s.destinations.is_empty() {
            vec![DestinationSpec {
                protocol: s.protocol,
                url: s.url,
                stream_key: s.stream_key,
                variant_names: Vec::new(),
            }]
        } else {
            s.destinations
        };
        Ok(TaskSpec {
            id: s.id,
            vhost: s.vhost,
            app: s.app,
            stream: s.stream,
            created_ms: s.created_ms,
            trace_parent: s.trace_parent,
            reconnect_window_ms: s.reconnect_window_ms,
            rule: s.rule,
            destinations: destinations
                .into_iter()
                .map(|d| Arc::new(Destination::new(d)))
                .collect(),
        })
    }
}

/// State of a push task, in the seed's vocabulary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    Ready,
    Started,
    Stopping,
    Stopped,
    Error,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Ready => "ready",
            TaskState::Started => "started",
            TaskState::Stopping => "stopping",
            TaskState::Stopped => "stopped",
            TaskState::Error => "error",
        }
    }

    fn to_proto(self) -> v1::TaskState {
        match self {
            TaskState::Ready => v1::TaskState::Ready,
            TaskState::Started => v1::TaskState::Started,
            TaskState::Stopping => v1::TaskState::Stopping,
            TaskState::Stopped => v1::TaskState::Stopped,
            TaskState::Error => v1::TaskState::Error,
        }
    }
}

/// What a push task is doing: state, counters and times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Current session: payload bytes and milliseconds since it started.
    pub sent_bytes: u64,
    pub sent_time_ms: u64,
    /// Sessions that have ended.
    pub sequence: u64,
    pub total_sent_bytes: u64,
    pub total_sent_time_ms: u64,
    pub start_ms: Option<i64>,
    pub finish_ms: Option<i64>,
    pub last_error: Option<String>,
    pub worker: Option<String>,
    /// The codecs the current (or last) session pushes, one per track it sends
    /// (`HEVC`, `AAC`, ...): what a destination receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<String>,
    /// The last thing that happened to the task's source while it pushed (source
    /// continuity); task-wide, unset on destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_event: Option<SourceEvent>,
    /// How the push is doing (rates over the last seconds, drops, reconnects, stalls).
    #[serde(default, skip_serializing_if = "Health::is_empty")]
    pub health: Health,
    /// Multi-destination tasks: the status of each destination (its `worker` and
    /// `destinations` unused); the fields above then sum them up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationStatus>,
}

/// How a push is doing, beyond byte totals: what an operator needs to tell a push that
/// sends from one that only looks green.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Bits per second sent over the last 5 s (0 when not sending).
    #[serde(default)]
    pub bitrate_bps: u64,
    /// Frames per second sent over the last 5 s, in thousandths.
    #[serde(default)]
    pub fps_milli: u64,
    /// Frames dropped for this push in its current session (its queue overflowed while
    /// the destination was slow, or the session could not send them).
    #[serde(default)]
    pub dropped_frames: u64,
    /// Failed connections that were tried again, over the task's life.
    #[serde(default)]
    pub reconnects: u64,
    /// Times the push was found stalled (no bytes moving while its source was live),
    /// over the task's life.
    #[serde(default)]
    pub stalls: u64,
    /// How long the current connection has been up (0 when not connected).
    #[serde(default)]
    pub connected_ms: u64,
    /// When `lastError` happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_ms: Option<i64>,
    /// SRT destinations: what SRT measures of the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srt: Option<SrtHealth>,
}

/// What SRT counts of a destination's connection (srt-tokio's statistics; its round
/// trip time is not among what they fill in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrtHealth {
    /// Packets the receiver reported lost, retransmitted, and dropped as too late to
    /// send, over the connection.
    pub lost_packets: u64,
    pub retransmitted_packets: u64,
    pub dropped_packets: u64,
}

impl Health {
    pub fn is_empty(&self) -> bool {
        *self == Health::default()
    }

    /// Frames per second with two decimals, as the REST API shows it.
    pub fn fps(&self) -> f64 {
        (self.fps_milli as f64 / 10.0).round() / 100.0
    }

    pub fn to_proto(&self) -> v1::PushHealth {
        v1::PushHealth {
            bitrate_bps: self.bitrate_bps,
            fps: self.fps(),
            dropped_frames: self.dropped_frames,
            reconnects: self.reconnects,
            stalls: self.stalls,
            connected_ms: self.connected_ms,
            last_error_time: self.last_error_ms.map(time::to_timestamp),
            srt_lost_packets: self.srt.map(|s| s.lost_packets),
            srt_retransmitted_packets: self.srt.map(|s| s.retransmitted_packets),
            srt_dropped_packets: self.srt.map(|s| s.dropped_packets),
        }
    }

    pub fn from_proto(p: &v1::PushHealth) -> Health {
        Health {
            bitrate_bps: p.bitrate_bps,
            fps_milli: (p.fps * 1000.0).round().max(0.0) as u64,
            dropped_frames: p.dropped_frames,
            reconnects: p.reconnects,
            stalls: p.stalls,
            connected_ms: p.connected_ms,
            last_error_ms: p.last_error_time.as_ref().map(time::from_timestamp),
            srt: p.srt_lost_packets.map(|lost| SrtHealth {
                lost_packets: lost,
                retransmitted_packets: p.srt_retransmitted_packets.unwrap_or(0),
                dropped_packets: p.srt_dropped_packets.unwrap_or(0),
            }),
        }
    }
}

/// What happened to a task's source while its pushes kept their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SourceEventKind {
    /// The publisher went away; the pushes wait within the reconnect window.
    SourceInterrupted,
    /// A publisher continued the stream within the window.
    SourceResumed,
    /// The stream changed inputs (primary ↔ backup).
    InputSwitched,
}

impl SourceEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceEventKind::SourceInterrupted => "sourceInterrupted",
            SourceEventKind::SourceResumed => "sourceResumed",
            SourceEventKind::InputSwitched => "inputSwitched",
        }
    }

    pub fn parse(s: &str) -> Option<SourceEventKind> {
        [
            SourceEventKind::SourceInterrupted,
            SourceEventKind::SourceResumed,
            SourceEventKind::InputSwitched,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A task's last source event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEvent {
    pub kind: SourceEventKind,
    pub time_ms: i64,
    /// Source events of the task so far (on this worker's watch): tells two events of
    /// one kind apart.
    pub count: u64,
    /// `primary` / `backup` after the event; `None` while interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

impl SourceEvent {
    pub fn to_proto(&self) -> v1::SourceEvent {
        v1::SourceEvent {
            kind: self.kind.as_str().to_string(),
            time: Some(time::to_timestamp(self.time_ms)),
            count: self.count,
            input: self.input.clone().unwrap_or_default(),
        }
    }

    pub fn from_proto(p: &v1::SourceEvent) -> Option<SourceEvent> {
        Some(SourceEvent {
            kind: SourceEventKind::parse(&p.kind)?,
            time_ms: p.time.as_ref().map(time::from_timestamp).unwrap_or(0),
            count: p.count,
            input: (!p.input.is_empty()).then(|| p.input.clone()),
        })
    }

    /// As the REST task object shows it: `{"count":1,"input":"backup","time":"…","type":"inputSwitched"}`.
    fn to_ome(&self) -> OmeSourceEvent<'_> {
        OmeSourceEvent {
            count: self.count,
            input: self.input.as_deref(),
            time: time::format_ms(Some(self.time_ms)),
            kind: self.kind.as_str(),
        }
    }
}

#[derive(Debug, Serialize)]
struct OmeSourceEvent<'a> {
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a str>,
    time: String,
    #[serde(rename = "type")]
    kind: &'a str,
}

/// The status of one destination of a multi-destination task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStatus {
    /// [`Destination::address`] of the destination it belongs to.
    pub destination: String,
    pub status: TaskStatus,
}

impl TaskStatus {
    /// The status of the destination `d` (by [`Destination::address`]).
    pub fn of_destination(&self, d: &str) -> Option<&TaskStatus> {
        self.destinations
            .iter()
            .find(|s| s.destination == d)
            .map(|s| &s.status)
    }
}

/// The OME task object ([`Task::to_ome`]). Fields in sorted order (see there).
#[derive(Debug, Serialize)]
pub struct OmeTask<'a> {
    app: &'a str,
    /// Ours (additive, each only when not zero): the push's health.
    #[serde(skip_serializing_if = "is_zero")]
    bitrate: u64,
    /// Ours (additive): the codecs being pushed.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    codecs: &'a [String],
    #[serde(rename = "connectedTime", skip_serializing_if = "is_zero")]
    connected_time: u64,
    #[serde(rename = "createdTime")]
    created_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    destinations: Option<Vec<OmeDestination<'a>>>,
    #[serde(rename = "droppedFrames", skip_serializing_if = "is_zero")]
    dropped_frames: u64,
    #[serde(rename = "droppedPackets", skip_serializing_if = "Option::is_none")]
    dropped_packets: Option<u64>,
    #[serde(rename = "finishTime")]
    finish_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fps: Option<f64>,
    id: &'a str,
    #[serde(rename = "lastError", skip_serializing_if = "Option::is_none")]
    last_error: Option<&'a str>,
    #[serde(rename = "lastErrorTime", skip_serializing_if = "Option::is_none")]
    last_error_time: Option<String>,
    #[serde(rename = "lostPackets", skip_serializing_if = "Option::is_none")]
    lost_packets: Option<u64>,
    protocol: &'a str,
    /// Ours (additive): the task's own reconnect window, when it has one.
    #[serde(rename = "reconnectWindowMs", skip_serializing_if = "Option::is_none")]
    reconnect_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    reconnects: u64,
    #[serde(
        rename = "retransmittedPackets",
        skip_serializing_if = "Option::is_none"
    )]
    retransmitted_packets: Option<u64>,
    /// Ours (additive): the auto-push rule that made the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(rename = "sentBytes")]
    sent_bytes: u64,
    #[serde(rename = "sentTime")]
    sent_time: u64,
    sequence: u64,
    /// Ours (additive): the last event of the task's source.
    #[serde(rename = "sourceEvent", skip_serializing_if = "Option::is_none")]
    source_event: Option<OmeSourceEvent<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    stalls: u64,
    #[serde(rename = "startTime")]
    start_time: String,
    state: &'a str,
    stream: OmeStream<'a>,
    #[serde(rename = "streamKey", skip_serializing_if = "Option::is_none")]
    stream_key: Option<&'a str>,
    #[serde(rename = "totalsentBytes")]
    total_sent_bytes: u64,
    #[serde(rename = "totalsentTime")]
    total_sent_time: u64,
    url: &'a str,
    vhost: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct OmeStream<'a> {
    name: &'a str,
    #[serde(rename = "trackIds")]
    track_ids: &'a [i64],
    #[serde(rename = "variantNames")]
    variant_names: &'a [String],
}

/// One destination of a multi-destination task in the OME task object.
#[derive(Debug, Serialize)]
struct OmeDestination<'a> {
    #[serde(skip_serializing_if = "is_zero")]
    bitrate: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    codecs: Vec<String>,
    #[serde(rename = "connectedTime", skip_serializing_if = "is_zero")]
    connected_time: u64,
    #[serde(rename = "droppedFrames", skip_serializing_if = "is_zero")]
    dropped_frames: u64,
    #[serde(rename = "droppedPackets", skip_serializing_if = "Option::is_none")]
    dropped_packets: Option<u64>,
    #[serde(rename = "finishTime")]
    finish_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fps: Option<f64>,
    #[serde(rename = "lastError", skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(rename = "lastErrorTime", skip_serializing_if = "Option::is_none")]
    last_error_time: Option<String>,
    #[serde(rename = "lostPackets", skip_serializing_if = "Option::is_none")]
    lost_packets: Option<u64>,
    protocol: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    reconnects: u64,
    #[serde(
        rename = "retransmittedPackets",
        skip_serializing_if = "Option::is_none"
    )]
    retransmitted_packets: Option<u64>,
    #[serde(rename = "sentBytes")]
    sent_bytes: u64,
    #[serde(rename = "sentTime")]
    sent_time: u64,
    sequence: u64,
    #[serde(skip_serializing_if = "is_zero")]
    stalls: u64,
    #[serde(rename = "startTime")]
    start_time: String,
    state: &'a str,
    #[serde(rename = "streamKey", skip_serializing_if = "Option::is_none")]
    stream_key: Option<&'a str>,
    #[serde(rename = "totalsentBytes")]
    total_sent_bytes: u64,
    #[serde(rename = "totalsentTime")]
    total_sent_time: u64,
    url: &'a str,
    #[serde(rename = "variantNames", skip_serializing_if = "Option::is_none")]
    variant_names: Option<&'a [String]>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub spec: TaskSpec,
    pub status: TaskStatus,
}

impl Task {
    /// The OME task object. Field names are OME's (`totalsentBytes` included); a
    /// `serde_json::Map` keeps keys sorted, as OME emits them.
    pub fn to_ome_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_ome()).unwrap_or(serde_json::Value::Null)
    }

    /// The OME task object as a serializable view: written straight to bytes it gives the
    /// same bytes as [`Task::to_ome_json`] (its fields are declared in the sorted order a
    /// `serde_json::Map` emits; `ome_bytes_equal_the_sorted_json` checks it), without a
    /// map and two dozen allocations per task — what a listing of 10,000 tasks spent most
    /// of its time on.
    pub fn to_ome(&self) -> OmeTask<'_> {
        let (spec, st) = (&self.spec, &self.status);
        let first = spec.first();
        let destinations = spec.is_multi_destination().then(|| {
            spec.destinations()
                .iter()
                .map(|d| {
                    let none = TaskStatus::default();
                    let ds = st.of_destination(&d.address()).unwrap_or(&none);
                    let h = &ds.health;
                    OmeDestination {
                        bitrate: h.bitrate_bps,
                        codecs: ds.codecs.clone(),
                        connected_time: h.connected_ms,
                        dropped_frames: h.dropped_frames,
                        dropped_packets: h.srt.map(|s| s.dropped_packets),
                        finish_time: time::format_ms(ds.finish_ms),
                        fps: (h.fps_milli > 0).then(|| h.fps()),
                        last_error: ds.last_error.clone(),
                        last_error_time: h.last_error_ms.map(|ms| time::format_ms(Some(ms))),
                        lost_packets: h.srt.map(|s| s.lost_packets),
                        protocol: d.protocol().as_str(),
                        reconnects: h.reconnects,
                        retransmitted_packets: h.srt.map(|s| s.retransmitted_packets),
                        sent_bytes: ds.sent_bytes,
                        sent_time: ds.sent_time_ms,
                        sequence: ds.sequence,
                        stalls: h.stalls,
                        start_time: time::format_ms(ds.start_ms),
                        state: ds.state.as_str(),
                        stream_key: Some(d.stream_key()).filter(|k| !k.is_empty()),
                        total_sent_bytes: ds.total_sent_bytes,
                        total_sent_time: ds.total_sent_time_ms,
                        url: d.url(),
                        variant_names: Some(d.variant_names()).filter(|v| !v.is_empty()),
                    }
                })
                .collect()
        });
        let h = &st.health;
        OmeTask {
            app: &spec.app,
            bitrate: h.bitrate_bps,
            codecs: &st.codecs,
            connected_time: h.connected_ms,
            created_time: time::format_ms(Some(spec.created_ms)),
            destinations,
            dropped_frames: h.dropped_frames,
            dropped_packets: h.srt.map(|s| s.dropped_packets),
            finish_time: time::format_ms(st.finish_ms),
            fps: (h.fps_milli > 0).then(|| h.fps()),
            id: &spec.id,
            last_error: st.last_error.as_deref(),
            last_error_time: h.last_error_ms.map(|ms| time::format_ms(Some(ms))),
            lost_packets: h.srt.map(|s| s.lost_packets),
            protocol: first.protocol().as_str(),
            reconnect_window_ms: spec.reconnect_window_ms,
            reconnects: h.reconnects,
            retransmitted_packets: h.srt.map(|s| s.retransmitted_packets),
            rule: spec.rule.as_deref(),
            sent_bytes: st.sent_bytes,
            sent_time: st.sent_time_ms,
            sequence: st.sequence,
            source_event: st.source_event.as_ref().map(SourceEvent::to_ome),
            stalls: h.stalls,
            start_time: time::format_ms(st.start_ms),
            state: st.state.as_str(),
            stream: OmeStream {
                name: &spec.stream.name,
                track_ids: &spec.stream.track_ids,
                variant_names: &spec.stream.variant_names,
            },
            stream_key: Some(first.stream_key()).filter(|k| !k.is_empty()),
            total_sent_bytes: st.total_sent_bytes,
            total_sent_time: st.total_sent_time_ms,
            url: first.url(),
            vhost: &spec.vhost,
            worker: st.worker.as_deref(),
        }
    }

    pub fn to_proto(&self) -> v1::PushTask {
        let (spec, st) = (&self.spec, &self.status);
        v1::PushTask {
            id: spec.id.clone(),
            vhost: spec.vhost.clone(),
            app: spec.app.clone(),
            stream: Some(v1::StreamSelector {
                name: spec.stream.name.clone(),
                track_ids: spec.stream.track_ids.clone(),
                variant_names: spec.stream.variant_names.clone(),
            }),
            state: st.state.to_proto() as i32,
            protocol: spec.first().protocol().as_str().to_string(),
            url: spec.first().url().to_string(),
            stream_key: spec.first().stream_key().to_string(),
            sent_bytes: st.sent_bytes,
            sent_time_ms: st.sent_time_ms,
            sequence: st.sequence,
            total_sent_bytes: st.total_sent_bytes,
            total_sent_time_ms: st.total_sent_time_ms,
            created_time: Some(time::to_timestamp(spec.created_ms)),
            start_time: st.start_ms.map(time::to_timestamp),
            finish_time: st.finish_ms.map(time::to_timestamp),
            last_error: st.last_error.clone().unwrap_or_default(),
            worker: st.worker.clone().unwrap_or_default(),
            codecs: st.codecs.clone(),
            source_event: st.source_event.as_ref().map(SourceEvent::to_proto),
            reconnect_window_ms: spec.reconnect_window_ms,
            health: Some(st.health.to_proto()),
            rule: spec.rule.clone().unwrap_or_default(),
            destinations: if spec.is_multi_destination() {
                spec.destinations()
                    .iter()
                    .map(|d| {
                        let none = TaskStatus::default();
                        let ds = st.of_destination(&d.address()).unwrap_or(&none);
                        v1::PushDestination {
                            protocol: d.protocol().as_str().to_string(),
                            url: d.url().to_string(),
                            stream_key: d.stream_key().to_string(),
                            variant_names: d.variant_names().to_vec(),
                            state: ds.state.to_proto() as i32,
                            sent_bytes: ds.sent_bytes,
                            sent_time_ms: ds.sent_time_ms,
                            sequence: ds.sequence,
                            total_sent_bytes: ds.total_sent_bytes,
                            total_sent_time_ms: ds.total_sent_time_ms,
                            start_time: ds.start_ms.map(time::to_timestamp),
                            finish_time: ds.finish_ms.map(time::to_timestamp),
                            last_error: ds.last_error.clone().unwrap_or_default(),
                            codecs: ds.codecs.clone(),
                            health: Some(ds.health.to_proto()),
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// An application of a virtual host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConfig {
    pub vhost: String,
    pub name: String,
    /// Stream name = key when true (off by default).
    #[serde(default)]
    pub open_publish: bool,
    #[serde(default)]
    pub callbacks: Callbacks,
    /// The passphrase SRT publishers of this app must use, in place of the ingest's
    /// `--srt-passphrase` (write-only: answers show `***`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srt_passphrase: Option<String>,
    /// Source continuity: a stream outlives its publisher for this long, and a publish
    /// within it continues the pushes on their open connections (0: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reconnect_window_ms: u64,
    /// A backup publisher takes over when the active one sends nothing for this long
    /// (default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_stall_ms: Option<u64>,
    /// A returning primary takes over from the backup at its keyframe (default true);
    /// false: the backup stays until it ends or stalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_back_to_primary: Option<bool>,
    /// Auto-push rules: matching live streams get their tasks (`rules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::rules::PushRule>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A rule as the REST API shows it (OME's field names).
fn rule_json(r: &crate::rules::PushRule) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "stream": r.stream,
        "destinations": r.destinations.iter().map(|d| {
            let mut v = serde_json::json!({
                "protocol": d.protocol.as_str(), "url": d.url, "streamKey": d.stream_key,
            });
            if !d.variant_names.is_empty() {
                v["variantNames"] = d.variant_names.clone().into();
            }
            v
        }).collect::<Vec<_>>(),
        "trackIds": r.track_ids,
        "variantNames": r.variant_names,
    })
}

/// Where an app's events are sent (`spec/ingest-keys-callbacks.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callbacks {
    /// PubStart / PubEnd notifications.
    #[serde(default)]
    pub publish: Vec<PublishCallback>,
    /// Asked before a publish is accepted (fail closed).
    #[serde(default)]
    pub authorize: Option<AuthorizeCallback>,
    /// Push task events, signed.
    #[serde(default)]
    pub status: Vec<StatusCallback>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishCallback {
    pub url: String,
    /// `new` (JSON) or `old` (form).
    #[serde(default = "default_format")]
    pub format: String,
}

fn default_format() -> String {
    "new".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeCallback {
    pub url: String,
    #[serde(default = "default_authorize_timeout")]
    pub timeout_ms: u64,
}

fn default_authorize_timeout() -> u64 {
    2000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCallback {
    pub url: String,
    /// HMAC-SHA256 key of the `X-Signature` header; write-only in the API.
    #[serde(default)]
    pub secret: String,
}

impl Callbacks {
    /// From the API's JSON (`{"publish":[{url,format}], "authorize":{url,timeoutMs},
    /// "status":[{url,secret}]}`); unknown fields are ignored.
    pub fn from_ome_json(v: &serde_json::Value) -> Result<Callbacks, String> {
        let str_of =
            |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let list = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_array())
                .cloned()
                .unwrap_or_default()
        };
        let mut out = Callbacks::default();
        for p in list("publish") {
            let url = str_of(&p, "url").ok_or("callbacks.publish[].url is required")?;
            let format = str_of(&p, "format").unwrap_or_else(default_format);
            if format != "new" && format != "old" {
                return Err(format!(
                    "callbacks.publish[].format must be \"new\" or \"old\", not \"{format}\""
                ));
            }
            out.publish.push(PublishCallback { url, format });
        }
        if let Some(a) = v.get("authorize").filter(|a| a.is_object()) {
            out.authorize = Some(AuthorizeCallback {
                url: str_of(a, "url").ok_or("callbacks.authorize.url is required")?,
                timeout_ms: a
                    .get("timeoutMs")
                    .and_then(|x| x.as_u64())
                    .unwrap_or_else(default_authorize_timeout),
            });
        }
        for st in list("status") {
            out.status.push(StatusCallback {
                url: str_of(&st, "url").ok_or("callbacks.status[].url is required")?,
                secret: str_of(&st, "secret").unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// As the API shows it: secrets replaced by `***`.
    pub fn to_ome_json(&self) -> serde_json::Value {
        serde_json::json!({
            "publish": self.publish.iter().map(|p| serde_json::json!({"url": p.url, "format": p.format})).collect::<Vec<_>>(),
            "authorize": self.authorize.as_ref().map(|a| serde_json::json!({"url": a.url, "timeoutMs": a.timeout_ms})),
            "status": self.status.iter().map(|s| serde_json::json!({"url": s.url, "secret": "***"})).collect::<Vec<_>>(),
        })
    }
}

impl AppConfig {
    /// An app with every setting at its default (closed publishing, no callbacks, no
    /// continuity, no rules).
    pub fn new(vhost: impl Into<String>, name: impl Into<String>) -> AppConfig {
        AppConfig {
            vhost: vhost.into(),
            name: name.into(),
            open_publish: false,
            callbacks: Callbacks::default(),
            srt_passphrase: None,
            reconnect_window_ms: 0,
            input_stall_ms: None,
            switch_back_to_primary: None,
            rules: Vec::new(),
        }
    }

    pub fn to_proto(&self) -> v1::App {
        v1::App {
            vhost: self.vhost.clone(),
            name: self.name.clone(),
            open_publish: self.open_publish,
            reconnect_window_ms: self.reconnect_window_ms,
            input_stall_ms: self.input_stall_ms,
            switch_back_to_primary: self.switch_back_to_primary,
            rules: self
                .rules
                .iter()
                .map(|r| v1::PushRule {
                    name: r.name.clone(),
                    stream: r.stream.clone(),
                    destinations: r
                        .destinations
                        .iter()
                        .map(|d| v1::Destination {
                            protocol: d.protocol.as_str().to_string(),
                            url: d.url.clone(),
                            stream_key: d.stream_key.clone(),
                            variant_names: d.variant_names.clone(),
                        })
                        .collect(),
                    track_ids: r.track_ids.clone(),
                    variant_names: r.variant_names.clone(),
                })
                .collect(),
        }
    }

    pub fn to_ome_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": self.name,
            "openPublish": self.open_publish,
            "callbacks": self.callbacks.to_ome_json(),
        });
        // Added, and only when set: other apps' answers are unchanged.
        if let Some(obj) = v.as_object_mut() {
            if self.srt_passphrase.is_some() {
                obj.insert("srtPassphrase".into(), "***".into());
            }
            if self.reconnect_window_ms > 0 {
                obj.insert("reconnectWindowMs".into(), self.reconnect_window_ms.into());
            }
            if let Some(ms) = self.input_stall_ms {
                obj.insert("inputStallMs".into(), ms.into());
            }
            if let Some(b) = self.switch_back_to_primary {
                obj.insert("switchBackToPrimary".into(), b.into());
            }
            if !self.rules.is_empty() {
                let rules: Vec<serde_json::Value> = self.rules.iter().map(rule_json).collect();
                obj.insert("rules".into(), rules.into());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(protocol: Protocol, url: &str, key: &str, variants: &[&str]) -> Arc<Destination> {
        Arc::new(Destination::new(DestinationSpec {
            protocol,
            url: url.into(),
            stream_key: key.into(),
            variant_names: variants.iter().map(|v| v.to_string()).collect(),
        }))
    }

    fn spec(protocol: Protocol, key: &str) -> TaskSpec {
        let stream = StreamSelector {
            name: "s".into(),
            ..Default::default()
        };
        let d = dest(protocol, "rtmp://h/live", key, &[]);
        TaskSpec::new(
            "t1".into(),
            "default".into(),
            "app".into(),
            stream,
            0,
            vec![d],
        )
        .expect("one destination")
    }

    #[test]
    fn ome_object_omits_empty_stream_key_and_sorts_keys() {
        let t = Task {
            spec: spec(Protocol::Rtmp, ""),
            status: TaskStatus::default(),
        };
        let v = t.to_ome_json();
        assert!(v.get("streamKey").is_none());
        let text = serde_json::to_string(&v).expect("serializes");
        assert!(text.starts_with("{\"app\":"), "{text}");
        assert_eq!(v["state"], "ready");
        assert_eq!(v["startTime"], time::NEVER);
    }

    #[test]
    fn a_forwarded_source_keeps_its_stored_name() {
        // Workers of the previous version read and write assignments with this layout.
        let stored = r#"{"kind":"relay","from_worker":"w1"}"#;
        let source: SourceRef = serde_json::from_str(stored).expect("decodes");
        assert_eq!(
            source,
            SourceRef::Forwarded {
                from_worker: "w1".into()
            }
        );
        assert_eq!(serde_json::to_string(&source).expect("encodes"), stored);
        let local = serde_json::to_string(&SourceRef::Local).expect("encodes");
        assert_eq!(local, r#"{"kind":"local"}"#);
    }

    #[test]
    fn a_task_without_destinations_is_no_task() {
        let stream = StreamSelector::default();
        assert!(TaskSpec::new("t".into(), "v".into(), "a".into(), stream, 0, vec![]).is_none());
        let mut s = spec(Protocol::Rtmp, "k");
        s.set_destinations(vec![]);
        assert_eq!(s.destinations().len(), 1, "an empty list changes nothing");
    }

    #[test]
    fn stored_single_destination_specs_still_decode_and_look_the_same() {
        let old = r#"{"id":"t1","vhost":"default","app":"app","stream":{"name":"s"},
            "protocol":"rtmp","url":"rtmp://h/live","stream_key":"k","created_ms":0}"#;
        let s: TaskSpec = serde_json::from_str(old).expect("decodes");
        assert_eq!(s, spec(Protocol::Rtmp, "k"));
        assert_eq!(s.destinations().len(), 1);
        let text = serde_json::to_string(&s).expect("encodes");
        assert!(!text.contains("destinations"), "{text}");
        // Byte for byte the layout plain tasks have always been stored in.
        assert_eq!(
            text,
            r#"{"id":"t1","vhost":"default","app":"app","stream":{"name":"s","track_ids":[],"variant_names":[]},"protocol":"rtmp","url":"rtmp://h/live","stream_key":"k","created_ms":0}"#
        );
        let t = Task {
            spec: s,
            status: TaskStatus::default(),
        };
        assert!(t.to_ome_json().get("destinations").is_none());
        assert!(t.to_proto().destinations.is_empty());
    }

    /// The OME object written straight from [`OmeTask`] (declared field order) is byte for
    /// byte what the sorted map gives, for every optional field present and absent.
    #[test]
    fn ome_bytes_equal_the_sorted_json() {
        let single = Task {
            spec: spec(Protocol::Rtmp, "key"),
            status: TaskStatus::default(),
        };
        let mut busy = Task {
            spec: spec(Protocol::Rtmp, ""),
            status: TaskStatus {
                state: TaskState::Error,
                sent_bytes: 1,
                sent_time_ms: 2,
                sequence: 3,
                total_sent_bytes: 4,
                total_sent_time_ms: 5,
                start_ms: Some(1_700_000_000_000),
                finish_ms: Some(1_700_000_001_000),
                last_error: Some("refused \"quoted\"".into()),
                worker: Some("w1".into()),
                codecs: vec!["HEVC".into(), "AAC".into()],
                source_event: Some(SourceEvent {
                    kind: SourceEventKind::InputSwitched,
                    time_ms: 1_700_000_000_500,
                    count: 2,
                    input: Some("backup".into()),
                }),
                health: Health {
                    bitrate_bps: 3_200_000,
                    fps_milli: 29_970,
                    dropped_frames: 6,
                    reconnects: 2,
                    stalls: 1,
                    connected_ms: 12_000,
                    last_error_ms: Some(1_700_000_000_200),
                    srt: Some(SrtHealth {
                        lost_packets: 3,
                        retransmitted_packets: 4,
                        dropped_packets: 1,
                    }),
                },
                destinations: vec![],
            },
        };
        busy.spec.stream.track_ids = vec![1, 2];
        busy.spec.stream.variant_names = vec!["v".into()];
        let mut multi = single.clone();
        let mut list = multi.spec.destinations().to_vec();
        list.push(dest(
            Protocol::Mpegts,
            "udp://1.2.3.4:5",
            "",
            &["bypass_video"],
        ));
        multi.spec.set_destinations(list);
        multi.status.destinations = vec![DestinationStatus {
            destination: "udp://1.2.3.4:5".into(),
            status: busy.status.clone(),
        }];
        for t in [single, busy, multi] {
            let direct = serde_json::to_string(&t.to_ome()).expect("encodes");
            let sorted = serde_json::to_string(&t.to_ome_json()).expect("encodes");
            assert_eq!(direct, sorted);
        }
    }

    #[test]
    fn multi_destination_task_lists_each_destination_with_its_status() {
        let mut s = spec(Protocol::Rtmp, "a");
        let mut list = s.destinations().to_vec();
        list.push(dest(
            Protocol::Mpegts,
            "udp://1.2.3.4:5",
            "",
            &["bypass_video"],
        ));
        s.set_destinations(list);
        let round: TaskSpec =
            serde_json::from_slice(&serde_json::to_vec(&s).expect("encodes")).expect("decodes");
        assert_eq!(round, s);
        assert_eq!(
            s.selector_for(&s.destinations()[1]).variant_names,
            ["bypass_video"]
        );
        assert!(s.selector_for(s.first()).variant_names.is_empty());
        let status = TaskStatus {
            state: TaskState::Started,
            destinations: vec![DestinationStatus {
                destination: "udp://1.2.3.4:5".into(),
                status: TaskStatus {
                    state: TaskState::Error,
                    sent_bytes: 7,
                    last_error: Some("connection refused".into()),
                    ..Default::default()
                },
            }],
            ..Default::default()
        };
        let t = Task { spec: s, status };
        let v = t.to_ome_json();
        assert_eq!(
            (&v["url"], &v["streamKey"]),
            (&serde_json::json!("rtmp://h/live"), &serde_json::json!("a"))
        );
        let d = v["destinations"].as_array().expect("destinations");
        assert_eq!(d.len(), 2);
        assert_eq!(
            (&d[0]["state"], &d[0]["streamKey"]),
            (&serde_json::json!("ready"), &serde_json::json!("a"))
        );
        assert_eq!(d[1]["state"], "error");
        assert_eq!(d[1]["sentBytes"], 7);
        assert_eq!(d[1]["lastError"], "connection refused");
        assert_eq!(d[1]["variantNames"][0], "bypass_video");
        assert!(d[1].get("streamKey").is_none());
        let p = t.to_proto();
        assert_eq!(p.destinations.len(), 2);
        assert_eq!(p.destinations[1].sent_bytes, 7);
        // The live status round-trips through WorkerService with its destinations.
        let back = TaskStatus::from_live_proto(&t.status.to_live_proto("default", "app", "t1"));
        assert_eq!(back, t.status);
    }
}

impl TaskStatus {
    /// For `WorkerService`: the live status of a task a worker holds.
    pub fn to_live_proto(&self, vhost: &str, app: &str, id: &str) -> v1::LiveTaskStatus {
        v1::LiveTaskStatus {
            task: Some(v1::TaskRef {
                vhost: vhost.to_string(),
                app: app.to_string(),
                id: id.to_string(),
            }),
            state: self.state.to_proto() as i32,
            sent_bytes: self.sent_bytes,
            sent_time_ms: self.sent_time_ms,
            sequence: self.sequence,
            total_sent_bytes: self.total_sent_bytes,
            total_sent_time_ms: self.total_sent_time_ms,
            start_time_ms: self.start_ms.unwrap_or(0),
            finish_time_ms: self.finish_ms.unwrap_or(0),
            last_error: self.last_error.clone().unwrap_or_default(),
            worker: self.worker.clone().unwrap_or_default(),
            codecs: self.codecs.clone(),
            source_event: self.source_event.as_ref().map(SourceEvent::to_proto),
            health: Some(self.health.to_proto()),
            destinations: self
                .destinations
                .iter()
                .map(|d| v1::LiveDestinationStatus {
                    destination: d.destination.clone(),
                    status: Some(d.status.to_live_proto(vhost, app, id)),
                })
                .collect(),
        }
    }

    /// The inverse of [`TaskStatus::to_live_proto`].
    pub fn from_live_proto(p: &v1::LiveTaskStatus) -> TaskStatus {
        let state = match v1::TaskState::try_from(p.state) {
            Ok(v1::TaskState::Started) => TaskState::Started,
            Ok(v1::TaskState::Stopping) => TaskState::Stopping,
            Ok(v1::TaskState::Stopped) => TaskState::Stopped,
            Ok(v1::TaskState::Error) => TaskState::Error,
            _ => TaskState::Ready,
        };
        let opt = |ms: i64| (ms != 0).then_some(ms);
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        TaskStatus {
            state,
            sent_bytes: p.sent_bytes,
            sent_time_ms: p.sent_time_ms,
            sequence: p.sequence,
            total_sent_bytes: p.total_sent_bytes,
            total_sent_time_ms: p.total_sent_time_ms,
            start_ms: opt(p.start_time_ms),
            finish_ms: opt(p.finish_time_ms),
            last_error: text(&p.last_error),
            worker: text(&p.worker),
            codecs: p.codecs.clone(),
            source_event: p.source_event.as_ref().and_then(SourceEvent::from_proto),
            health: p
                .health
                .as_ref()
                .map(Health::from_proto)
                .unwrap_or_default(),
            destinations: p
                .destinations
                .iter()
                .map(|d| DestinationStatus {
                    destination: d.destination.clone(),
                    status: d
                        .status
                        .as_ref()
                        .map(TaskStatus::from_live_proto)
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A callback waiting in the store's outbox (`outbox/…`) for its receiver's 2xx: one
/// event for one receiver. Status events are written by the leader, publish events
/// (PubStart/PubEnd) by the worker that ingests, each in the transaction of the change it
/// reports; the leader delivers them all (`controller/src/outbox.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    #[serde(default)]
    pub kind: OutboxKind,
    pub vhost: String,
    pub app: String,
    /// The receiver.
    pub url: String,
    /// Entries with the same order go to one receiver one at a time, in key order (a
    /// task's events; a publish session's start and end).
    pub order: String,
    /// `X-Event-Id`: the same on every retry and after a failover.
    pub event_id: String,
    /// The event's name (`started`, `PubStart`, …), for logs.
    pub what: String,
    /// `application/json` or `application/x-www-form-urlencoded`.
    #[serde(default = "json_type")]
    pub content_type: String,
    /// The body, as it is sent (a status event is signed at sending, with the
    /// receiver's secret).
    pub body: String,
}

fn json_type() -> String {
    "application/json".to_string()
}

/// Which callbacks of an app an [`OutboxEntry`] belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxKind {
    /// A task status event (`callbacks.status`, signed).
    #[default]
    Status,
    /// PubStart / PubEnd (`callbacks.publish`).
    Publish,
}

/// A live source stream, as the worker that ingests it records it in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStream {
    pub vhost: String,
    pub app: String,
    pub stream: String,
    /// Node id of the worker that ingests it.
    pub worker: String,
    /// e.g. `["bypass_video:h264", "bypass_audio:aac"]`
    #[serde(default)]
    pub tracks: Vec<String>,
    pub since_ms: i64,
    /// Set while its publisher is gone and the stream waits within its app's reconnect
    /// window: a publish of it, on any worker, continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_ms: Option<i64>,
    /// The worker whose interrupted stream this publish continued (on another worker):
    /// that worker's pushes stay there, fed over a forward, so destinations see no
    /// republish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// The input feeding it: `primary` or `backup` (`?backup=1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Inputs connected: 2 with a standby.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub inputs: u32,
    /// The encoder's address (`ip:port`) and software (RTMP `flashVer`), as it
    /// published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl LiveStream {
    /// As `GET /v1/vhosts/{vhost}/apps/{app}/streams` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.stream,
            "worker": self.worker,
            "since": time::format_ms(Some(self.since_ms)),
            "tracks": self.tracks,
            "input": self.input,
            "inputs": self.inputs,
            "interrupted": self.interrupted_ms.map(|ms| time::format_ms(Some(ms))),
            "resumedFrom": self.resumed_from,
            "client": self.client,
            "software": self.software,
        })
    }
}

/// A worker, as it registers itself in the store under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub node_id: String,
    /// `host:port` of its WorkerService.
    pub grpc_addr: String,
    /// `host:port` of its RTMP ingest.
    pub rtmp_addr: String,
    /// `host:port` of its RTMPS ingest, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmps_addr: Option<String>,
    /// Most push sessions it runs at once (0 = no limit).
    #[serde(default)]
    pub max_sessions: u32,
    /// Shutting down: takes no new work (its live streams finish here).
    #[serde(default)]
    pub draining: bool,
}

/// Where a worker gets the source stream of an assigned task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum SourceRef {
    /// The stream is ingested on this worker.
    Local,
    /// The ingest worker forwards the stream to this one over an internal RTMP hop
    /// (the ingest worker was full). Stored as `relay`, the word of earlier versions.
    #[serde(rename = "relay")]
    Forwarded { from_worker: String },
}

/// A task placed on a worker by the scheduler (`assign/{worker}/{vhost}/{app}/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub spec: TaskSpec,
    pub source: SourceRef,
    /// Bumped whenever the assignment of this task changes; applying the same generation
    /// twice is a no-op.
    pub generation: u64,
}

/// A stream forwarded from its ingest worker to another worker over RTMP
/// (`relay/{from_worker}/{to_worker}/{vhost}/{app}/{stream}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub vhost: String,
    pub app: String,
    pub stream: String,
    pub to_worker: String,
    /// `host:port` of the receiving worker's RTMP ingest.
    pub to_rtmp_addr: String,
}

/// The internal RTMP application forwards publish to; its stream names are
/// `{vhost}~{app}~{stream}` (each part escaped), never registered as cluster streams.
/// (Named `_relay` since earlier versions: workers of both versions must agree on it.)
pub const FORWARD_APP: &str = "_relay";
