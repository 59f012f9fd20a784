//! One push session's view of a live stream: a bounded queue fed by the source, and the
//! drop-to-keyframe policy applied when it is full.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;

use super::gop::{self, ConfigSlot, GopCache};
use super::queue::{self, Receiver, Sender, TryRecv};
use super::{SourceShared, SpliceStatus, StreamId, StreamInfo};
use pushcast_media::Frame;

/// Bounds of one subscription's queue. Both apply; a frame (or a resume bundle) that would
/// pass either is not queued. One exception keeps a subscriber from starving forever: a
/// single frame (or a resume bundle: headers + keyframe) is always accepted into an empty
/// queue, even if it alone is larger than `max_bytes`.
///
/// Queued frames share their payloads with the source and every other subscriber, so
/// `max_bytes` bounds what this subscriber can keep alive, not what it copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    /// Larger than [`GopLimits::default`](super::GopLimits) so that a whole cached GOP
    /// (plus metadata and headers) fits: a new push starts at once.
    fn default() -> Self {
        QueueLimits {
            max_frames: 2048,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Counters of one subscription, for the session's status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Frames and payload bytes the session has taken out of the queue.
    pub received_frames: u64,
    pub received_bytes: u64,
    /// Frames and payload bytes the hub dropped because the queue was full.
    pub dropped_frames: u64,
    pub dropped_bytes: u64,
    /// Times the subscriber fell behind and was skipped forward to a keyframe.
    pub skips: u64,
    /// In the queue right now.
    pub queued_frames: usize,
    pub queued_bytes: usize,
    /// Currently dropping until the next keyframe.
    pub skipping: bool,
}

/// State shared by the source (producer side) and the [`Subscription`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    queued_frames: AtomicUsize,
    queued_bytes: AtomicUsize,
    received_frames: AtomicU64,
    received_bytes: AtomicU64,
    dropped_frames: AtomicU64,
    dropped_bytes: AtomicU64,
    skips: AtomicU64,
    skipping: AtomicBool,
}

/// How a subscriber stands with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every frame is queued while it fits.
    Live,
    /// Frames are dropped until the next sync point. `counted`: the drops are losses (the
    /// queue overflowed); false while a new subscriber waits for its first keyframe, since
    /// it never had those frames to lose.
    Skipping { counted: bool },
}

/// The source's handle on one subscriber.
#[derive(Debug)]
pub(crate) struct Subscriber {
    tx: Sender<Frame>,
    counters: Arc<Counters>,
    limits: QueueLimits,
    mode: Mode,
    /// Metadata and headers this subscriber last got, to re-send them on resume only when
    /// they changed while it was skipping.
    sent_metadata: Option<Bytes>,
    sent_configs: Vec<(ConfigSlot, Bytes)>,
}

/// What [`Subscriber::offer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Kept,
    /// The subscription was dropped: remove this subscriber.
    Gone,
}

impl Subscriber {
    /// A subscriber primed from the cache: the snapshot when it fits, else waiting for the
    /// next sync point. Returns the receiving half for the [`Subscription`].
    pub fn new(
        limits: QueueLimits,
        gop: &GopCache,
    ) -> (Subscriber, Receiver<Frame>, Arc<Counters>) {
        let (tx, rx) = queue::channel();
        let counters = Arc::new(Counters::default());
        let mut sub = Subscriber {
            tx,
            counters: Arc::clone(&counters),
            limits,
            mode: Mode::Skipping { counted: false },
            sent_metadata: None,
            sent_configs: Vec::new(),
        };
        match gop.snapshot() {
            Some((frames, bytes)) if sub.fits(frames.len(), bytes, false) => {
                for frame in frames {
                    sub.enqueue(frame);
                }
                sub.mode = Mode::Live;
            }
            Some((frames, bytes)) => {
                // The cached GOP is larger than this queue: start at the next keyframe,
                // and say so in the stats.
                tracing::debug!(
                    frames = frames.len(),
                    bytes,
                    "cached GOP larger than the subscription queue; starting at the next keyframe"
                );
                sub.count_drop(frames.len() as u64, bytes as u64);
                sub.counters.skips.fetch_add(1, Ordering::Relaxed);
                sub.set_mode(Mode::Skipping { counted: true });
            }
            None => sub.set_mode(Mode::Skipping { counted: false }),
        }
        (sub, rx, counters)
    }

    /// Whether the [`Subscription`] was dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Offers one live frame. Never blocks: the frame is queued, or dropped by policy.
    pub fn offer(&mut self, frame: &Frame, sync_point: bool, gop: &GopCache) -> Offer {
        if self.tx.is_closed() {
            return Offer::Gone;
        }
        let len = frame.payload.len();
        match self.mode {
            Mode::Live => {
                if self.fits(1, len, true) {
                    return self.enqueue(frame.clone());
                }
                tracing::debug!(
                    queued_frames = self.counters.queued_frames.load(Ordering::Relaxed),
                    queued_bytes = self.counters.queued_bytes.load(Ordering::Relaxed),
                    "subscription queue full: dropping to the next keyframe"
                );
                self.counters.skips.fetch_add(1, Ordering::Relaxed);
                self.set_mode(Mode::Skipping { counted: true });
                self.count_drop(1, len as u64);
                Offer::Kept
            }
            Mode::Skipping { counted } => {
                if sync_point {
                    let bundle = self.resume_bundle(frame, gop);
                    let bytes = bundle.iter().map(|f| f.payload.len()).sum();
                    if self.fits(bundle.len(), bytes, true) {
                        if counted {
                            tracing::debug!("subscription resumes at a keyframe");
                        }
                        self.set_mode(Mode::Live);
                        for f in bundle {
                            if self.enqueue(f) == Offer::Gone {
                                return Offer::Gone;
                            }
                        }
                        return Offer::Kept;
                    }
                }
                if counted {
                    self.count_drop(1, len as u64);
                }
                Offer::Kept
            }
        }
    }

    /// Another input is spliced in: wait for its first sync point, then resume with the
    /// headers that differ from the ones this subscriber had (nothing is lost: the
    /// frames it skips never came).
    pub fn splice(&mut self) {
        if self.mode == Mode::Live {
            self.set_mode(Mode::Skipping { counted: false });
        }
    }

    /// Metadata and headers that changed since this subscriber last got them (stamped
    /// with the keyframe's timestamp), then the keyframe.
    fn resume_bundle(&self, frame: &Frame, gop: &GopCache) -> Vec<Frame> {
        let latest = gop.latest();
        let mut bundle = Vec::with_capacity(2 + latest.configs.len());
        if let Some(f) = &latest.metadata
            && gop::differs(self.sent_metadata.as_ref(), Some(f))
        {
            bundle.push(gop::retimed(f, frame.timestamp_ms));
        }
        for (slot, f) in &latest.configs {
            let sent = self
                .sent_configs
                .iter()
                .find(|(s, _)| s == slot)
                .map(|(_, b)| b);
            if gop::differs(sent, Some(f)) {
                bundle.push(gop::retimed(f, frame.timestamp_ms));
            }
        }
        bundle.push(frame.clone());
        bundle
    }

    fn fits(&self, frames: usize, bytes: usize, allow_when_empty: bool) -> bool {
        let queued = self.counters.queued_frames.load(Ordering::Relaxed);
        if allow_when_empty && queued == 0 {
            return true;
        }
        let queued_bytes = self.counters.queued_bytes.load(Ordering::Relaxed);
        queued.saturating_add(frames) <= self.limits.max_frames
            && queued_bytes.saturating_add(bytes) <= self.limits.max_bytes
    }

    fn enqueue(&mut self, frame: Frame) -> Offer {
        if let Some(slot) = gop::config_slot(&frame) {
            match self.sent_configs.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, sent)) => *sent = frame.payload.clone(),
                None => self.sent_configs.push((slot, frame.payload.clone())),
            }
        } else if gop::is_metadata(&frame) {
            self.sent_metadata = Some(frame.payload.clone());
        }
        let len = frame.payload.len();
        // Count before sending, so the receiver's decrement never runs first.
        self.counters.queued_frames.fetch_add(1, Ordering::Relaxed);
        self.counters.queued_bytes.fetch_add(len, Ordering::Relaxed);
        match self.tx.send(frame) {
            Ok(()) => Offer::Kept,
            Err(_) => Offer::Gone,
        }
    }

    fn count_drop(&self, frames: u64, bytes: u64) {
        self.counters
            .dropped_frames
            .fetch_add(frames, Ordering::Relaxed);
        metrics::counter!("pushcast_hub_dropped_frames_total").increment(frames);
        self.counters
            .dropped_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.counters
            .skipping
            .store(matches!(mode, Mode::Skipping { .. }), Ordering::Relaxed);
    }
}

/// Frames the hub dropped for one subscription (its queue overflowed).
#[derive(Debug, Clone)]
pub struct DropCounter(Arc<Counters>);

impl DropCounter {
    pub fn dropped_frames(&self) -> u64 {
        self.0.dropped_frames.load(Ordering::Relaxed)
    }
}

/// Why [`Subscription::try_recv`] returned no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    #[error("no frame queued yet")]
    Empty,
    #[error("the source stream ended")]
    Ended,
}

/// A push session's subscription to a live stream.
///
/// Yields metadata, sequence headers and the cached GOP first, then live frames, in
/// order; `None` once the source has ended and the queue is drained. Dropping it
/// unsubscribes (the source forgets it on its next frame).
#[derive(Debug)]
pub struct Subscription {
    pub(crate) key: StreamId,
    pub(crate) rx: Receiver<Frame>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) source: Arc<SourceShared>,
    /// A frame taken out of the queue by [`Subscription::ready`], handed out next.
    pub(crate) peeked: Option<Frame>,
}

impl Subscription {
    pub fn key(&self) -> &StreamId {
        &self.key
    }

    /// Waits until this subscription has a decodable start queued (the cached GOP, or
    /// headers + the first keyframe of a stream that just went live), without consuming
    /// it, and returns the stream's info at that point; `None` if the stream ended first.
    ///
    /// Call it before choosing tracks with [`crate::tracks::select`]: right after a
    /// stream goes live no frame has arrived yet and [`StreamInfo::tracks`] is empty. Once
    /// a keyframe is queued, the sequence headers that precede it (sent first by OBS and
    /// ffmpeg) have been seen, so both tracks are known; a track whose first frame comes
    /// later than the first keyframe is not. Cancel-safe.
    pub async fn ready(&mut self) -> Option<StreamInfo> {
        if self.peeked.is_none() {
            let frame = self.rx.recv().await?;
            self.taken(&frame);
            self.peeked = Some(frame);
        }
        Some(self.source.info())
    }

    /// The next frame; `None` when the stream has ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Frame> {
        if let Some(frame) = self.peeked.take() {
            return Some(frame);
        }
        let frame = self.rx.recv().await?;
        self.taken(&frame);
        Some(frame)
    }

    /// Waits for at least one frame, then moves up to `limit` queued frames into `buf`
    /// (one wake-up for a burst: lets the session coalesce them into one write). Returns
    /// how many were added; 0 means the stream has ended (or `limit` is 0). Cancel-safe.
    pub async fn recv_many(&mut self, buf: &mut Vec<Frame>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        if let Some(frame) = self.peeked.take() {
            buf.push(frame);
            let mut n = 1;
            while n < limit {
                match self.rx.try_recv() {
                    Ok(frame) => {
                        self.taken(&frame);
                        buf.push(frame);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            return n;
        }
        let start = buf.len();
        let n = self.rx.recv_many(buf, limit).await;
        for frame in buf.get(start..).unwrap_or_default() {
            self.taken(frame);
        }
        n
    }

    /// A queued frame if there is one, without waiting.
    pub fn try_recv(&mut self) -> Result<Frame, TryRecvError> {
        if let Some(frame) = self.peeked.take() {
            return Ok(frame);
        }
        match self.rx.try_recv() {
            Ok(frame) => {
                self.taken(&frame);
                Ok(frame)
            }
            Err(TryRecv::Empty) => Err(TryRecvError::Empty),
            Err(TryRecv::Closed) => Err(TryRecvError::Ended),
        }
    }

    pub fn stats(&self) -> SubscriptionStats {
        let c = &self.counters;
        SubscriptionStats {
            received_frames: c.received_frames.load(Ordering::Relaxed),
            received_bytes: c.received_bytes.load(Ordering::Relaxed),
            dropped_frames: c.dropped_frames.load(Ordering::Relaxed),
            dropped_bytes: c.dropped_bytes.load(Ordering::Relaxed),
            skips: c.skips.load(Ordering::Relaxed),
            queued_frames: c.queued_frames.load(Ordering::Relaxed),
            queued_bytes: c.queued_bytes.load(Ordering::Relaxed),
            skipping: c.skipping.load(Ordering::Relaxed),
        }
    }

    /// The stream's current info (tracks for [`crate::tracks::select`], counters).
    pub fn stream_info(&self) -> StreamInfo {
        self.source.info()
    }

    /// A handle on this subscription's drop count, for the session's health.
    pub fn drop_counter(&self) -> DropCounter {
        DropCounter(Arc::clone(&self.counters))
    }

    /// The stream's inputs as they change (interrupted, resumed, switched).
    pub fn splice_status(&self) -> tokio::sync::watch::Receiver<SpliceStatus> {
        self.source.splice.subscribe()
    }

    /// Asks that the stream outlive its last input by `window` (a task's own reconnect
    /// window), for as long as the returned ask is held.
    pub fn ask_window(&self, window: std::time::Duration) -> super::WindowAsk {
        self.source.ask_window(window)
    }

    fn taken(&self, frame: &Frame) {
        let len = frame.payload.len();
        let c = &self.counters;
        c.queued_frames.fetch_sub(1, Ordering::Relaxed);
        c.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        c.received_frames.fetch_add(1, Ordering::Relaxed);
        c.received_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}
