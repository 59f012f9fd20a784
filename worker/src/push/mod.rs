//! Push attempts: one connection to one destination, the unit a session is made of.
//!
//! An attempt ([`run_attempt`]) takes frames from a [`FrameSource`] (the hub's
//! subscription in production, an FLV file in tests), connects to a [`Destination`]
//! (parsed by the API, never here), sends until the source ends or the connection fails,
//! and keeps the session's [`SessionCounters`] up to date for the status the worker
//! reports. Attempting again after a failure (backoff) and task states are the reconnect
//! loop's business (`reconnect`).
//!
//! ```text
//!            ┌ rtmp://, rtmps:// ─ ClientConnection (sans-IO) ─ TCP [+ TLS] ─ coalesced writev
//! source ──▶ ┤ udp://             ─ TsMuxer ─ TsPacer ─ 1316-byte datagrams
//! (frames)   ├ tcp://             ─ TsMuxer ─ plain byte stream
//!            └ srt://             ─ TsMuxer ─ TsPacer ─ srt-tokio caller
//! ```
//!
//! What the caller sees:
//! - [`SessionEvent::Connected`] once the destination accepts media (RTMP: after
//!   `NetStream.Publish.Start`): the task goes to `started`.
//! - `Ok(`[`SessionEnd::SourceEnded`]`)` when the source ends (the RTMP publish is closed
//!   politely with `FCUnpublish`/`deleteStream`), `Ok(`[`SessionEnd::Cancelled`]`)` when
//!   its cancellation token fires (stopPush, fencing, drain): the attempt stops within
//!   milliseconds, sending `FCUnpublish`/`deleteStream` when it can do so at once.
//! - `Err(`[`PushError`]`)` otherwise, classified ([`PushError::kind`]) so a rejected
//!   stream key is reported as such and not hammered.
//!
//! Output timestamps start at 0 for each session and stay monotonic (the one rebaser,
//! [`pushcast_media::Rebaser`]):
//! sequence headers and metadata first at 0, then the first media frame (the hub's cached
//! keyframe) at 0.
//!
//! Cost per destination: frames are refcounted, RTMP chunking is done once per frame
//! into a segment list whose large pieces are slices of the frame, and a session writes
//! at most once per [`PushConfig::write_interval`] (100 ms; the first frame after a pause
//! at once), with every frame that is ready by then in one vectored write (bounded by
//! [`PushConfig::max_batch_frames`] / [`PushConfig::max_batch_bytes`]). While it gathers,
//! a session sleeps on a timer shared with every other session of the process instead of
//! being woken by each frame: wake-ups, not bytes, are what a destination costs.
//! Measured (`worker/tests/push/bench.rs`, release, 50 RTMP destinations of a 3.2 Mb/s 720p30
//! stream on one nginx-rtmp): 0.22–0.26 CPU-ms per stream-second per destination,
//! against 0.21 for nginx-rtmp's own `push`; writing every frame at once costs ~1.5.

mod error;
mod net;
mod rtmp;
mod srt;
mod tls;
mod ts;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use pushcast_proto::destination::{Destination, Target};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use pushcast_media::Frame;

pub use crate::tracks::{Pick, TrackSelection};
pub use error::{PushError, PushErrorKind};
pub use tls::{
    TlsSetupError, client_config as tls_client_config,
    default_client_config as default_tls_client_config,
};

/// Where a session reads its frames from.
///
/// Both methods must be *cancel-safe*: a session waits for the next frame in a `select!`
/// together with its socket and its cancellation token, and drops the pending call when
/// another branch wins; no frame may be lost by that (a tokio `mpsc`/`broadcast`
/// receiver is fine).
#[async_trait::async_trait]
pub trait FrameSource: Send {
    /// The next frame; `None` when the source stream has ended.
    async fn next_frame(&mut self) -> Option<Frame>;

    /// A frame that is ready now, without waiting: `Some(Some(frame))`, `Some(None)` if
    /// the source has ended, `None` if nothing is ready yet. Sessions call it after each
    /// awaited frame to put everything that is already queued into one write. The default
    /// polls [`next_frame`](Self::next_frame) once; a hub subscription can answer with a
    /// `try_recv` instead.
    fn try_next_frame(&mut self) -> Option<Option<Frame>> {
        self.next_frame().now_or_never()
    }
}

/// Live counters of one session, shared with the worker's status reporting.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Woken by the worker's watchdog when the push is found stalled (see
    /// `live::LiveTasks::sample`): the reconnect loop ends the attempt.
    pub(crate) stalled: tokio::sync::Notify,
    /// The current attempt's hub queue (its drops), and the drops of earlier attempts.
    queue: std::sync::Mutex<Option<crate::hub::DropCounter>>,
    earlier_queue_drops: AtomicU64,
    /// Media payload bytes written to the destination: the FLV tag bodies for RTMP, the
    /// TS bytes for mpegts/srt.
    pub sent_bytes: AtomicU64,
    /// Frames written (for MPEG-TS: frames muxed into the output).
    pub sent_frames: AtomicU64,
    /// Frames the session dropped (e.g. unselected tracks are not counted, drops are).
    pub dropped_frames: AtomicU64,
    /// Video pictures among the frames sent (not sequence headers): the frame rate.
    pub sent_pictures: AtomicU64,
    /// SRT destinations: the last statistics (packets lost, retransmitted, dropped);
    /// `srt_seen` once any came.
    srt_seen: std::sync::atomic::AtomicBool,
    srt_lost: AtomicU64,
    srt_retransmitted: AtomicU64,
    srt_dropped: AtomicU64,
}

impl SessionCounters {
    pub fn new() -> Arc<SessionCounters> {
        Arc::new(SessionCounters::default())
    }
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }
    pub fn sent_frames(&self) -> u64 {
        self.sent_frames.load(Ordering::Relaxed)
    }
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.load(Ordering::Relaxed)
    }
    pub fn sent_pictures(&self) -> u64 {
        self.sent_pictures.load(Ordering::Relaxed)
    }
    pub(crate) fn add_pictures(&self, n: u64) {
        if n > 0 {
            self.sent_pictures.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Frames dropped for this session: by the session, and by the hub when its queue
    /// overflowed (the destination too slow), over its attempts.
    pub fn all_dropped_frames(&self) -> u64 {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |q| q.dropped_frames());
        self.dropped_frames() + self.earlier_queue_drops.load(Ordering::Relaxed) + queue
    }

    /// The attempt that starts reads from this hub queue.
    pub(crate) fn follow_queue(&self, queue: crate::hub::DropCounter) {
        let mut current = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.replace(queue) {
            self.earlier_queue_drops
                .fetch_add(old.dropped_frames(), Ordering::Relaxed);
        }
    }

    /// SRT's statistics of the connection.
    pub(crate) fn set_srt(&self, lost: u64, retransmitted: u64, dropped: u64) {
        self.srt_lost.store(lost, Ordering::Relaxed);
        self.srt_retransmitted
            .store(retransmitted, Ordering::Relaxed);
        self.srt_dropped.store(dropped, Ordering::Relaxed);
        self.srt_seen.store(true, Ordering::Relaxed);
    }

    /// (packets lost, retransmitted, dropped) of an SRT destination.
    pub fn srt(&self) -> Option<(u64, u64, u64)> {
        self.srt_seen.load(Ordering::Relaxed).then(|| {
            (
                self.srt_lost.load(Ordering::Relaxed),
                self.srt_retransmitted.load(Ordering::Relaxed),
                self.srt_dropped.load(Ordering::Relaxed),
            )
        })
    }

    /// The watchdog found the push stalled.
    pub(crate) fn stall(&self) {
        self.stalled.notify_waiters();
    }
    pub(crate) fn add_sent(&self, bytes: u64, frames: u64) {
        if bytes > 0 {
            self.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
            metrics::counter!("pushcast_push_sent_bytes_total").increment(bytes);
        }
        if frames > 0 {
            self.sent_frames.fetch_add(frames, Ordering::Relaxed);
        }
    }
    pub(crate) fn add_dropped(&self, frames: u64) {
        self.dropped_frames.fetch_add(frames, Ordering::Relaxed);
        metrics::counter!("pushcast_push_dropped_frames_total").increment(frames);
    }
}

/// Settings of push sessions. Cheap to clone (the TLS config is shared).
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Limit for reaching the destination: DNS + TCP connect, and again for the TLS +
    /// RTMP handshakes up to `NetStream.Publish.Start` (or the SRT handshake). OME: 5 s.
    pub connect_timeout: Duration,
    /// A write that makes no progress for this long fails the session: the destination
    /// stopped reading. OME: 2 s.
    pub send_timeout: Duration,
    /// RTMP chunk size we send with. 4096 is what OBS sends and every ingest accepts;
    /// larger chunks save chunk headers and iovecs, but measured no CPU difference at
    /// 3 Mb/s (`tests/push_bench.rs`: 4 KiB and 64 KiB both ~0.22 CPU-ms per
    /// stream-second per destination), so compatibility wins.
    pub rtmp_chunk_size: u32,
    /// TLS client configuration for `rtmps://` (see [`tls_client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// After a write, frames are left to gather for this long before the next one, so
    /// that one wake-up and one write carry several frames (audio comes ~47 times a
    /// second, video 30). Wake-ups, not bytes, dominate the CPU cost of a destination:
    /// measured with 50 RTMP destinations at 3.2 Mb/s (`tests/push_bench.rs`), a write
    /// per frame costs ~1.5 CPU-ms per stream-second per destination, 40 ms ~0.58,
    /// 100 ms ~0.22 (nginx-rtmp's push: 0.21). Destinations buffer seconds, so up to
    /// 100 ms of added latency (50 ms on average) is invisible to viewers. Zero writes
    /// every frame as soon as it arrives. The first frame after a pause goes out at
    /// once. Applies to RTMP and TS over TCP; UDP/SRT are paced by the TS clock.
    pub write_interval: Duration,
    /// At most this many frames are coalesced into one write.
    pub max_batch_frames: usize,
    /// At most about this many bytes are coalesced into one write.
    pub max_batch_bytes: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            connect_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(2),
            rtmp_chunk_size: 4096,
            tls: default_tls_client_config(),
            write_interval: Duration::from_millis(100),
            max_batch_frames: 256,
            max_batch_bytes: 1 << 20,
        }
    }
}

/// What a running attempt tells its caller while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The destination accepts media (RTMP: publish started; TCP/SRT: connected; UDP:
    /// socket ready). The task is `started` from now on.
    Connected { peer: Option<SocketAddr> },
    /// An informational RTMP status from the destination (e.g.
    /// `NetStream.Publish.Idle`), for logs.
    Status { code: String, description: String },
}

/// How an attempt (and so its session) ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The source stream ended; everything was sent and the publish closed.
    SourceEnded,
    /// The session's cancellation token fired.
    Cancelled,
}

/// Everything a protocol driver needs, bundled to keep signatures short.
pub(crate) struct Ctx<'a> {
    pub tracks: TrackSelection,
    pub source: &'a mut dyn FrameSource,
    pub counters: &'a SessionCounters,
    pub cfg: &'a PushConfig,
    /// Fires to stop the session (stopPush, fencing, shutdown).
    pub cancel: &'a CancellationToken,
    pub events: &'a mut (dyn FnMut(SessionEvent) + Send),
}

/// Runs one push attempt to `dest`: connect, send the frames of `source` that `tracks`
/// keeps, until the source ends, `cancel` fires or the destination fails. See the
/// [module docs](self) for what is reported how.
///
/// The future is `Send`; run it in its own task per destination. It never blocks forever:
/// every network wait is bounded by the connect or send timeout, or by cancellation.
pub async fn run_attempt(
    dest: &Destination,
    tracks: TrackSelection,
    source: &mut dyn FrameSource,
    counters: &SessionCounters,
    cfg: &PushConfig,
    cancel: &CancellationToken,
    mut events: impl FnMut(SessionEvent) + Send,
) -> Result<SessionEnd, PushError> {
    let target = match dest.target() {
        Ok(t) => t,
        Err(e) => {
            // Only a task stored before the API refused such a destination gets here.
            tracing::warn!(error = %e, url = %dest.url(), "push destination is invalid");
            return Err(PushError::InvalidDestination(e.to_string()));
        }
    };
    let span = tracing::info_span!("push", dest = %dest);
    async move {
        if !tracks.video.any() && !tracks.audio.any() {
            return Err(PushError::Unsupported(
                "the track selection keeps neither video nor audio: nothing to push".into(),
            ));
        }
        let mut ctx = Ctx {
            tracks,
            source,
            counters,
            cfg,
            cancel,
            events: &mut events,
        };
        tracing::debug!("push attempt starting");
        // Each protocol's future is boxed: an attempt then holds only its own protocol's
        // state, instead of an enum as large as the largest of them (SRT's is ~8 KiB,
        // RTMP's a third of that). Per destination, that is most of the memory.
        let result = match target {
            Target::Rtmp(target) => Box::pin(rtmp::run(target, &mut ctx)).await,
            Target::Udp { host, port } => Box::pin(ts::run_udp(host, *port, &mut ctx)).await,
            Target::Tcp { host, port } => Box::pin(ts::run_tcp(host, *port, &mut ctx)).await,
            Target::Srt {
                host,
                port,
                options,
            } => Box::pin(ts::run_srt(host, *port, options, &mut ctx)).await,
        };
        match &result {
            Ok(end) => tracing::info!(
                ?end,
                sent_bytes = counters.sent_bytes(),
                sent_frames = counters.sent_frames(),
                "push attempt ended"
            ),
            Err(e) => tracing::info!(
                error = %e,
                kind = e.kind().as_str(),
                sent_bytes = counters.sent_bytes(),
                "push attempt failed"
            ),
        }
        result
    }
    .instrument(span)
    .await
}

/// Whether a frame is a video picture (a coded frame, not a sequence header).
pub(crate) fn is_picture(frame: &Frame) -> bool {
    frame.kind == pushcast_media::FrameKind::Video && !frame.is_sequence_header()
}

/// A source that has ended: for tests that build an attempt without running it.
#[cfg(test)]
pub(crate) struct NoFrames;

#[cfg(test)]
#[async_trait::async_trait]
impl FrameSource for NoFrames {
    async fn next_frame(&mut self) -> Option<Frame> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination keeps its attempt future for as long as it pushes, so its size is
    /// memory per destination. The protocol futures are boxed: only the one in use is
    /// allocated, and the common part stays small however large SRT's grows (~8 KiB).
    #[test]
    fn the_common_attempt_future_is_small() {
        use pushcast_proto::model::Protocol;
        let dest = Destination::parse(Protocol::Rtmp, "rtmp://h/live", "k", vec![]).expect("valid");
        let (counters, cfg) = (SessionCounters::default(), PushConfig::default());
        let (cancel, mut source) = (CancellationToken::new(), NoFrames);
        let tracks = TrackSelection::ALL;
        let attempt = run_attempt(&dest, tracks, &mut source, &counters, &cfg, &cancel, |_| {});
        let size = std::mem::size_of_val(&attempt);
        assert!(size <= 1024, "the attempt future takes {size} bytes");
    }
}
