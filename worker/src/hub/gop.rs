//! The GOP cache of one live stream: what a new subscriber needs to start decodable at
//! once (metadata, sequence headers, the frames since the last keyframe).

use std::collections::VecDeque;

use bytes::Bytes;

use pushcast_media::{Frame, FrameKind, PacketType};

/// Bounds of a stream's GOP cache.
///
/// A stream whose keyframes are rare (or absent) would otherwise grow the cache without
/// limit; past a bound the cache drops its GOP and waits for the next keyframe (new
/// subscribers then start at that keyframe instead of at once). Audio-only streams have no
/// keyframes: every AAC frame decodes on its own, so the cache keeps a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopLimits {
    /// Frames kept (audio and data frames inside the GOP count too).
    pub max_frames: usize,
    /// Payload bytes kept.
    pub max_bytes: usize,
    /// For audio-only streams: how much recent audio to keep, by timestamp.
    pub audio_window_ms: u32,
}

impl Default for GopLimits {
    /// 1800 frames / 12 MiB holds a 10 s GOP of 30 fps video with 48 kHz AAC at ~9 Mbit/s;
    /// both stay below [`QueueLimits::default`](super::QueueLimits) so that, by default, a
    /// whole cached GOP fits into a new subscriber's queue.
    fn default() -> Self {
        GopLimits {
            max_frames: 1800,
            max_bytes: 12 * 1024 * 1024,
            audio_window_ms: 1000,
        }
    }
}

/// A video frame a decoder can start from: a keyframe that carries coded frames (a
/// sequence header also has frame type 1, and so may an end of sequence), legacy or
/// Enhanced RTMP, of the stream's first video track.
pub(crate) fn is_video_keyframe(frame: &Frame) -> bool {
    frame.kind == FrameKind::Video
        && frame
            .tag()
            .is_some_and(|t| t.is_keyframe() && t.packet == PacketType::CodedFrames && t.track == 0)
}

/// Which configuration a config frame is: one slot per kind, track and packet type, so
/// each track's sequence header (and an audio track's channel layout) is kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConfigSlot {
    kind: FrameKind,
    track: u8,
    packet: PacketType,
}

/// The slot of a configuration frame (`None` for anything else).
pub(crate) fn config_slot(frame: &Frame) -> Option<ConfigSlot> {
    let tag = frame.tag()?;
    tag.is_config().then_some(ConfigSlot {
        kind: tag.kind,
        track: tag.track,
        packet: tag.packet,
    })
}

/// Whether a data frame is the stream's `onMetaData` (AMF0 string `onMetaData` first, or
/// still wrapped in `@setDataFrame`). Other data frames (cue points, captions) are timed
/// events that travel in the GOP like media.
pub(crate) fn is_metadata(frame: &Frame) -> bool {
    const ON_META_DATA: &[u8] = b"\x02\x00\x0aonMetaData";
    const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";
    if frame.kind != FrameKind::Data {
        return false;
    }
    let p = &frame.payload[..];
    p.starts_with(ON_META_DATA)
        || p.strip_prefix(SET_DATA_FRAME)
            .is_some_and(|rest| rest.starts_with(ON_META_DATA))
}

/// A copy of `frame` (sharing its payload) stamped with `timestamp_ms`. Replayed metadata
/// and headers carry the timestamp of the frame they precede, so a session that rebases
/// timestamps on its first frame sees a monotonic start instead of a jump from 0.
pub(crate) fn retimed(frame: &Frame, timestamp_ms: u32) -> Frame {
    Frame {
        timestamp_ms,
        ..frame.clone()
    }
}

/// The latest codec configuration and metadata of a stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Headers {
    pub metadata: Option<Frame>,
    /// The latest configuration frame of each slot, in order of first arrival (video
    /// before audio as the encoder sent them). A handful at most.
    pub configs: Vec<(ConfigSlot, Frame)>,
}

impl Headers {
    /// Keeps `frame` as its slot's configuration; whether it differs from the one held.
    fn set(&mut self, slot: ConfigSlot, frame: &Frame) -> bool {
        match self.configs.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, held)) => {
                let changed = held.payload != frame.payload;
                *held = frame.clone();
                changed
            }
            None => {
                self.configs.push((slot, frame.clone()));
                true
            }
        }
    }
}

/// Per live stream; mutated only under the source's lock.
#[derive(Debug)]
pub(crate) struct GopCache {
    limits: GopLimits,
    /// Latest metadata and sequence headers.
    latest: Headers,
    /// Sequence headers in effect when the cached GOP's keyframe arrived. Header changes
    /// after that point are inside `frames`, in order.
    gop_start: Headers,
    /// Whether a video frame was ever seen: decides GOP mode vs audio window mode.
    has_video: bool,
    /// Video mode: every frame since the last keyframe (keyframe first), header changes
    /// and non-metadata data frames included. Audio mode: the recent window.
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Video mode: `frames` starts at a keyframe. False before the first keyframe and
    /// after an overflow, until the next keyframe.
    valid: bool,
    /// Times the cache outgrew its limits and dropped its GOP.
    overflows: u64,
}

impl GopCache {
    pub fn new(limits: GopLimits) -> Self {
        GopCache {
            limits,
            latest: Headers::default(),
            gop_start: Headers::default(),
            has_video: false,
            frames: VecDeque::new(),
            bytes: 0,
            valid: false,
            overflows: 0,
        }
    }

    pub fn latest(&self) -> &Headers {
        &self.latest
    }

    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Where a subscriber that lost frames may resume: a video keyframe, or in an
    /// audio-only stream any audio frame (each AAC frame decodes on its own).
    pub fn is_sync_point(&self, frame: &Frame) -> bool {
        if self.has_video {
            is_video_keyframe(frame)
        } else {
            frame.kind == FrameKind::Audio && !frame.is_sequence_header()
        }
    }

    /// Records a frame of the stream (called before it is fanned out).
    pub fn push(&mut self, frame: &Frame) {
        match frame.kind {
            FrameKind::Data if is_metadata(frame) => {
                // Replayed first to every new subscriber; not part of the GOP.
                self.latest.metadata = Some(frame.clone());
            }
            FrameKind::Data => self.append(frame),
            FrameKind::Video => {
                if !self.has_video {
                    // The audio window is no place to start a video stream from.
                    self.has_video = true;
                    self.clear();
                    self.valid = false;
                }
                if let Some(slot) = config_slot(frame) {
                    self.latest.set(slot, frame);
                    self.append(frame);
                } else if is_video_keyframe(frame) {
                    self.clear();
                    self.gop_start = self.latest.clone();
                    self.valid = true;
                    self.append(frame);
                } else {
                    self.append(frame);
                }
            }
            FrameKind::Audio => {
                if let Some(slot) = config_slot(frame) {
                    let changed = self.latest.set(slot, frame);
                    if self.has_video {
                        self.append(frame);
                    } else if changed {
                        // Audio-only: the window was encoded with the old configuration,
                        // and the new header goes out in front of any snapshot anyway.
                        self.clear();
                    }
                } else {
                    self.append(frame);
                }
            }
        }
    }

    fn append(&mut self, frame: &Frame) {
        if self.has_video && !self.valid {
            return; // Nothing decodable to add to until the next keyframe.
        }
        self.frames.push_back(frame.clone());
        self.bytes += frame.payload.len();
        if self.has_video {
            if self.frames.len() > self.limits.max_frames || self.bytes > self.limits.max_bytes {
                // Trimming the front would lose the keyframe: drop the whole GOP.
                self.overflows += 1;
                tracing::warn!(
                    frames = self.frames.len(),
                    bytes = self.bytes,
                    max_frames = self.limits.max_frames,
                    max_bytes = self.limits.max_bytes,
                    "GOP cache full (keyframes too rare): new pushes wait for the next keyframe"
                );
                self.clear();
                self.valid = false;
            }
        } else {
            let newest = frame.timestamp_ms;
            while let Some(front) = self.frames.front() {
                // wrapping_sub: also drops frames "from the future" after a timestamp reset.
                let too_old = newest.wrapping_sub(front.timestamp_ms) > self.limits.audio_window_ms;
                let too_many = self.frames.len() > self.limits.max_frames
                    || self.bytes > self.limits.max_bytes;
                if !(too_old || too_many) {
                    break;
                }
                if let Some(old) = self.frames.pop_front() {
                    self.bytes -= old.payload.len();
                }
            }
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// Starts over for a spliced input (`splice`): no cached frames until its first
    /// keyframe; its headers replace the current ones when it brings them (a standby's
    /// warm cache), else the stream's are kept until the input sends its own.
    pub fn restart(&mut self, headers: Option<Headers>) {
        self.clear();
        self.valid = false;
        if let Some(h) = headers {
            self.latest = h;
        }
    }

    /// Drops everything (the stream ended; subscriptions may outlive it briefly).
    pub fn release(&mut self) {
        self.clear();
        self.valid = false;
        self.latest = Headers::default();
        self.gop_start = Headers::default();
    }

    /// What a new subscriber receives first: metadata and headers (stamped with the
    /// first cached frame's timestamp), then the cached frames. `None` when there is no
    /// decodable start yet (the subscriber then waits for the next sync point).
    pub fn snapshot(&self) -> Option<(Vec<Frame>, usize)> {
        let first = self.frames.front()?;
        if self.has_video && !self.valid {
            return None;
        }
        let headers = if self.has_video {
            &self.gop_start
        } else {
            &self.latest
        };
        let ts = first.timestamp_ms;
        let mut out = Vec::with_capacity(self.frames.len() + 1 + headers.configs.len());
        out.extend(self.latest.metadata.iter().map(|f| retimed(f, ts)));
        out.extend(headers.configs.iter().map(|(_, f)| retimed(f, ts)));
        out.extend(self.frames.iter().cloned());
        let bytes = out.iter().map(|f| f.payload.len()).sum();
        Some((out, bytes))
    }
}

/// Whether `sent` (what a subscriber last got) differs from `current`.
pub(crate) fn differs(sent: Option<&Bytes>, current: Option<&Frame>) -> bool {
    match (sent, current) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(s), Some(c)) => *s != c.payload,
    }
}
