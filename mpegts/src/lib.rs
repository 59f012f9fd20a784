//! MPEG-TS muxing of FLV-style frames (H.264 + AAC), sans I/O.
//!
//! Push sessions to MPEG-TS destinations (UDP, TCP, SRT) turn the frames of a live stream
//! ([`Frame`]: FLV tag bodies as they arrived over RTMP) into a transport stream:
//!
//! ```text
//! Frame ──▶ TsMuxer::push ──▶ 188-byte packets ──▶ TsPacer ──▶ 1316-byte datagrams
//! ```
//!
//! - [`TsMuxer`] converts and packetizes: H.264 to Annex-B with an AUD first and SPS/PPS
//!   in front of each IDR, AAC to ADTS, PAT/PMT at the start, before each keyframe and
//!   every `psi_interval`, PCR on the video PID (audio PID without video) at least every
//!   `pcr_interval`, continuity counters per PID, random access indicator on keyframes.
//!   Timestamps: DTS = (t + delay) × 90, PTS = (t + CTS + delay) × 90 where t is ms since
//!   the session's first frame, PCR = DTS − delay; so the output starts at PCR 0 and
//!   stays monotonic across the 32-bit ms wrap of RTMP; 33-bit wrap only on the wire.
//! - [`TsPacer`] tells a datagram sender when each 1316-byte datagram is due so the
//!   stream leaves in real time, spread over frame intervals rather than in bursts.
//!
//! Usage (the I/O is the caller's):
//!
//! ```
//! use pushcast_media::Frame;
//! use pushcast_mpegts::{MuxError, Pace, PacerConfig, TsMuxer, TsPacer, TsTracks};
//!
//! fn on_frame(
//!     mux: &mut TsMuxer,
//!     pacer: &mut TsPacer,
//!     buf: &mut Vec<u8>,
//!     frame: &Frame,
//! ) -> Result<(), MuxError> {
//!     let before = buf.len();
//!     match mux.push(frame, buf) {
//!         Ok(()) => {}
//!         // The stream can never be muxed: fail the task with this message.
//!         Err(e) if e.is_unsupported() => return Err(e),
//!         // One broken frame: nothing of it was written; skip it.
//!         Err(_) => {}
//!     }
//!     if let Some(clock) = mux.clock_90k() {
//!         pacer.muxed(clock, buf.len() - before);
//!     }
//!     // Then, in the sender: loop { match pacer.poll(Instant::now()) {
//!     //   Pace::Send(n) => send buf[..n] and drain it, Pace::Wait(d) => sleep d,
//!     //   Pace::Idle => wait for the next frame } }
//!     Ok(())
//! }
//! let mut mux = TsMuxer::new(TsTracks { video: true, audio: true });
//! let mut pacer = TsPacer::new(PacerConfig::default());
//! # let _ = (&mut mux, &mut pacer, on_frame);
//! ```
//!
//! Frames that cannot be used yet are dropped and counted in [`TsMuxStats`], not errors:
//! frames before their sequence header, video before the first keyframe, frames of a
//! track the caller did not select, `onMetaData`.
#![forbid(unsafe_code)]

mod aac;
mod avc;
pub mod demux;
mod error;
mod hevc;
mod pacer;
mod packet;

pub use demux::{DemuxStats, TsDemuxer};
pub use error::MuxError;
pub use pacer::{Pace, PacerConfig, TsPacer};
pub use packet::TS_PACKET_SIZE;
pub use pushcast_media::{AudioCodec, VideoCodec};

use pushcast_media::codec::{FLV_AUDIO_AAC, FLV_VIDEO_AVC};
use pushcast_media::{Frame, FrameKind, PacketType, Rebaser};

use aac::AacConfig;
use avc::AvcConfig;
use packet::{AUDIO_PID, AUDIO_STREAM_ID, Counters, PesSpec, Program, VIDEO_PID, VIDEO_STREAM_ID};

/// TS packets per datagram: 7 × 188 = 1316 bytes, the largest whole number of packets
/// that fits a 1500-byte Ethernet MTU with IP/UDP (and RTP) headers; the universal
/// convention for TS over UDP and SRT.
pub const PACKETS_PER_DATAGRAM: usize = 7;
/// Size of one datagram of TS.
pub const DATAGRAM_SIZE: usize = PACKETS_PER_DATAGRAM * TS_PACKET_SIZE;

/// Which tracks the output carries; the PMT lists exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsTracks {
    pub video: bool,
    pub audio: bool,
}

/// Muxer settings. [`TsMuxerConfig::new`] gives the defaults for given tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsMuxerConfig {
    pub tracks: TsTracks,
    /// How far DTS runs ahead of PCR, in ms: the receiver's buffer. Also absorbs
    /// audio/video interleaving skew in the input (a frame later than this is sent with a
    /// DTS already in the past of the PCR; one earlier than the session start is dropped).
    pub pcr_delay_ms: u32,
    /// Longest PCR gap, in ms, as long as frames keep coming (H.222.0 allows 100 ms; we
    /// aim lower). A PCR is also put on every video keyframe.
    pub pcr_interval_ms: u32,
    /// PAT/PMT repetition, in ms; they are also written before every video keyframe.
    pub psi_interval_ms: u32,
}

impl TsMuxerConfig {
    pub fn new(tracks: TsTracks) -> Self {
        TsMuxerConfig {
            tracks,
            pcr_delay_ms: 500,
            pcr_interval_ms: 40,
            psi_interval_ms: 100,
        }
    }
}

/// Counters of what the muxer did with its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TsMuxStats {
    /// Video access units written.
    pub video_frames: u64,
    /// AAC frames written.
    pub audio_frames: u64,
    /// TS packets written.
    pub packets: u64,
    /// Frames before their track's sequence header (nothing to decode them with).
    pub dropped_before_config: u64,
    /// Video frames before the first keyframe (a decoder could not start on them).
    pub dropped_before_keyframe: u64,
    /// Frames whose presentation time would fall before the session start (a negative
    /// composition offset larger than the PCR delay).
    pub dropped_late: u64,
    /// Frames with no media in them (empty tags, AVC end of sequence, no NAL units).
    pub dropped_empty: u64,
    /// Frames of tracks not selected at construction, and data (AMF) frames.
    pub ignored: u64,
    /// Input timestamp jumps bridged to keep the output timeline continuous.
    pub timestamp_discontinuities: u64,
}

/// Mutable output state, snapshotted so that a failed push leaves no trace.
#[derive(Debug, Clone, Copy, Default)]
struct OutputState {
    cc: Counters,
    /// Mux clock (PCR timeline), unwrapped 90 kHz ticks.
    clock: Option<u64>,
    last_pcr: Option<u64>,
    last_psi: Option<u64>,
}

/// The FLV → MPEG-TS muxer of one push session. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TsMuxer {
    config: TsMuxerConfig,
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    /// Opus: the channel count from its `OpusHead` (1 or 2).
    opus_channels: Option<u8>,
    /// Output time: zero at the first media frame, monotonic per track.
    timeline: Rebaser,
    state: OutputState,
    seen_keyframe: bool,
    /// Reused elementary stream buffer (Annex-B access unit or ADTS frame).
    es: Vec<u8>,
    stats: TsMuxStats,
}

/// Track a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Video,
    Audio,
}

/// ms → 90 kHz ticks, for non-negative times only.
fn ms_to_ticks(ms: i64) -> Option<u64> {
    u64::try_from(ms).ok()?.checked_mul(90)
}

impl TsMuxer {
    /// A muxer with default settings for `tracks`.
    pub fn new(tracks: TsTracks) -> Self {
        Self::with_config(TsMuxerConfig::new(tracks))
    }

    pub fn with_config(config: TsMuxerConfig) -> Self {
        TsMuxer {
            config,
            avc: None,
            aac: None,
            opus_channels: None,
            timeline: Rebaser::default(),
            state: OutputState::default(),
            seen_keyframe: false,
            es: Vec::new(),
            stats: TsMuxStats::default(),
        }
    }

    pub fn config(&self) -> &TsMuxerConfig {
        &self.config
    }

    pub fn stats(&self) -> TsMuxStats {
        TsMuxStats {
            timestamp_discontinuities: self.timeline.discontinuities(),
            ..self.stats
        }
    }

    /// The mux clock: the PCR timeline position (90 kHz ticks, unwrapped, monotonic,
    /// starting at 0) of the packets the last productive [`push`](Self::push) wrote.
    /// `None` before any output. This is what [`TsPacer::muxed`] wants.
    pub fn clock_90k(&self) -> Option<u64> {
        self.state.clock
    }

    /// Muxes one frame, appending whole 188-byte packets to `out` (possibly none).
    ///
    /// On error nothing is appended and the muxer state (counters, clock, codec config)
    /// is as before the call, so the caller may skip the frame and go on.
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), MuxError> {
        let start = out.len();
        let saved = self.state;
        let result = match frame.kind {
            FrameKind::Video if self.config.tracks.video => self.push_video(frame, out),
            FrameKind::Audio if self.config.tracks.audio => self.push_audio(frame, out),
            _ => {
                self.stats.ignored += 1;
                Ok(())
            }
        };
        match result {
            Ok(()) => {
                let packets = (out.len() - start) / TS_PACKET_SIZE;
                self.stats.packets += packets as u64;
            }
            Err(_) => {
                out.truncate(start);
                self.state = saved;
            }
        }
        result
    }

    fn push_video(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), MuxError> {
        let p = &frame.payload;
        match VideoCodec::of_tag(p) {
            Some(VideoCodec::Flv(FLV_VIDEO_AVC)) => {}
            Some(VideoCodec::FourCc(cc)) if &cc == b"hvc1" => return self.push_hevc(frame, out),
            Some(codec) => return Err(MuxError::UnsupportedVideoCodec(codec)),
            None => {
                self.stats.dropped_empty += 1;
                return Ok(());
            }
        }
        if p.len() < 5 {
            return Err(MuxError::MalformedVideoFrame(
                "AVC tag shorter than 5 bytes",
            ));
        }
        match p[1] {
            0 => {
                self.avc = Some(avc::parse_avc_config(&p.slice(5..))?);
                return Ok(());
            }
            1 => {}
            2 => {
                // End of sequence: nothing for the TS.
                self.stats.dropped_empty += 1;
                return Ok(());
            }
            _ => return Err(MuxError::MalformedVideoFrame("unknown AVCPacketType")),
        }
        self.write_nal_frame(frame, 5, out)
    }

    /// HEVC in Enhanced RTMP framing (`hvc1`): the `hvcC` record from the sequence start,
    /// coded frames to Annex-B (stream type 0x24).
    fn push_hevc(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), MuxError> {
        let tag = frame.tag().ok_or(MuxError::MalformedVideoFrame(
            "HEVC tag shorter than its header",
        ))?;
        match tag.packet {
            PacketType::SequenceStart => {
                let record = frame
                    .payload
                    .slice(tag.data_offset.min(frame.payload.len())..);
                self.avc = Some(hevc::parse_hevc_config(&record)?);
                Ok(())
            }
            PacketType::CodedFrames => self.write_nal_frame(frame, tag.data_offset, out),
            // End of sequence, colour metadata, several tracks: nothing for the TS.
            _ => {
                self.stats.dropped_empty += 1;
                Ok(())
            }
        }
    }

    /// An H.264 or HEVC access unit whose length-prefixed NAL units start at `offset`.
    fn write_nal_frame(
        &mut self,
        frame: &Frame,
        offset: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        let Some(config) = &self.avc else {
            self.stats.dropped_before_config += 1;
            return Ok(());
        };
        let sample = frame.payload.get(offset..).unwrap_or_default();
        self.es.clear();
        let au = avc::to_annexb(config, sample, frame.is_keyframe(), &mut self.es)?;
        if au.nal_units == 0 {
            self.stats.dropped_empty += 1;
            return Ok(());
        }
        let random_access = frame.is_keyframe() || au.idr;
        if !self.seen_keyframe {
            if !random_access {
                self.stats.dropped_before_keyframe += 1;
                return Ok(());
            }
            self.seen_keyframe = true;
        }
        let t = self.timeline.map(frame);
        let delay = i64::from(self.config.pcr_delay_ms);
        let dts = ms_to_ticks(t.saturating_add(delay));
        let pts = ms_to_ticks(
            t.saturating_add(delay)
                .saturating_add(i64::from(frame.composition_offset_ms())),
        );
        let (Some(dts), Some(pts)) = (dts, pts) else {
            self.stats.dropped_late += 1;
            return Ok(());
        };
        self.write_frame(Track::Video, dts, pts, random_access, out)?;
        self.stats.video_frames += 1;
        Ok(())
    }

    fn push_audio(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), MuxError> {
        let p = &frame.payload;
        match AudioCodec::of_tag(p) {
            Some(AudioCodec::Flv(FLV_AUDIO_AAC)) => {}
            Some(AudioCodec::FourCc(cc)) if &cc == b"Opus" => return self.push_opus(frame, out),
            Some(codec) => return Err(MuxError::UnsupportedAudioCodec(codec)),
            None => {
                self.stats.dropped_empty += 1;
                return Ok(());
            }
        }
        match p.get(1) {
            None => {
                return Err(MuxError::MalformedAudioFrame(
                    "AAC tag shorter than 2 bytes",
                ));
            }
            Some(0) => {
                self.aac = Some(aac::parse_asc(&p[2..])?);
                return Ok(());
            }
            Some(1) => {}
            Some(_) => return Err(MuxError::MalformedAudioFrame("unknown AACPacketType")),
        }
        let Some(config) = &self.aac else {
            self.stats.dropped_before_config += 1;
            return Ok(());
        };
        let raw = &p[2..];
        if raw.is_empty() {
            self.stats.dropped_empty += 1;
            return Ok(());
        }
        let header = aac::adts_header(config, raw.len())?;
        self.es.clear();
        self.es.extend_from_slice(&header);
        self.es.extend_from_slice(raw);
        self.write_audio(frame, out)
    }

    /// Writes the audio PES in `self.es` at `frame`'s time.
    fn write_audio(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), MuxError> {
        let t = self.timeline.map(frame);
        let Some(pts) = ms_to_ticks(t.saturating_add(i64::from(self.config.pcr_delay_ms))) else {
            self.stats.dropped_late += 1;
            return Ok(());
        };
        // Every AAC and Opus frame is a random access point; flag it when audio is all
        // there is, so receivers joining an audio-only stream find an entry point.
        let random_access = !self.config.tracks.video;
        self.write_frame(Track::Audio, pts, pts, random_access, out)?;
        self.stats.audio_frames += 1;
        Ok(())
    }

    /// Opus in Enhanced RTMP framing, as the Opus encapsulation for MPEG-TS describes
    /// (opus-codec.org, "Opus in MPEG-TS"): private stream 1,
    /// stream type 0x06 with a registration descriptor `Opus` and an extension
    /// descriptor giving the channel configuration; each packet prefixed by its control
    /// header (0x7FE0 and its size in 0xFF-chained bytes). Mono and stereo.
    fn push_opus(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), MuxError> {
        let tag = frame.tag().ok_or(MuxError::MalformedAudioFrame(
            "Opus tag shorter than its header",
        ))?;
        let data = frame.payload.get(tag.data_offset..).unwrap_or_default();
        match tag.packet {
            PacketType::SequenceStart => {
                // OpusHead: magic, version, channel count, ...
                if !data.starts_with(b"OpusHead") || data.len() < 10 {
                    return Err(MuxError::MalformedAudioFrame(
                        "Opus sequence start without OpusHead",
                    ));
                }
                let channels = data[9];
                if !(1..=2).contains(&channels) {
                    return Err(MuxError::UnsupportedAudioCodec(AudioCodec::FourCc(
                        *b"Opus",
                    )));
                }
                self.opus_channels = Some(channels);
                return Ok(());
            }
            PacketType::CodedFrames => {}
            _ => {
                self.stats.dropped_empty += 1;
                return Ok(());
            }
        }
        if self.opus_channels.is_none() {
            self.stats.dropped_before_config += 1;
            return Ok(());
        }
        if data.is_empty() {
            self.stats.dropped_empty += 1;
            return Ok(());
        }
        self.es.clear();
        self.es.extend_from_slice(&[0x7F, 0xE0]);
        let mut size = data.len();
        while size >= 255 {
            self.es.push(0xFF);
            size -= 255;
        }
        self.es.push(u8::try_from(size).unwrap_or(0));
        self.es.extend_from_slice(data);
        self.write_audio(frame, out)
    }

    /// Writes PSI and PCR as due, then the PES of `self.es`.
    fn write_frame(
        &mut self,
        track: Track,
        dts: u64,
        pts: u64,
        random_access: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), MuxError> {
        let delay = u64::from(self.config.pcr_delay_ms) * 90;
        let st = &mut self.state;
        // The clock follows the frames' DTS minus the delay and never goes back: a frame
        // of a lagging track gets the clock of its predecessor.
        let clock = st.clock.unwrap_or(0).max(dts.saturating_sub(delay));
        st.clock = Some(clock);
        let since = |last: Option<u64>| last.map(|t| clock - t.min(clock));
        let video_key = track == Track::Video && random_access;

        let program = Program {
            video: self.config.tracks.video,
            audio: self.config.tracks.audio,
            hevc: self
                .avc
                .as_ref()
                .is_some_and(|c| c.syntax == avc::NalSyntax::Hevc),
            opus_channels: self.opus_channels,
        };
        let psi_interval = u64::from(self.config.psi_interval_ms) * 90;
        if video_key || since(st.last_psi).is_none_or(|d| d >= psi_interval) {
            packet::write_psi(out, &mut st.cc, program)?;
            st.last_psi = Some(clock);
        }

        let (pid, stream_id) = match track {
            Track::Video => (VIDEO_PID, VIDEO_STREAM_ID),
            // Opus travels as private stream 1.
            Track::Audio if program.opus_channels.is_some() => (AUDIO_PID, 0xBD),
            Track::Audio => (AUDIO_PID, AUDIO_STREAM_ID),
        };
        let pcr_interval = u64::from(self.config.pcr_interval_ms) * 90;
        let pcr_due = video_key || since(st.last_pcr).is_none_or(|d| d >= pcr_interval);
        let mut pes_pcr = None;
        if pcr_due {
            st.last_pcr = Some(clock);
            if pid == program.pcr_pid() {
                pes_pcr = Some(clock);
            } else {
                packet::write_pcr_only(out, &mut st.cc, program.pcr_pid(), clock)?;
            }
        }
        packet::write_pes(
            out,
            &mut st.cc,
            &PesSpec {
                pid,
                stream_id,
                pts,
                dts,
                pcr: pes_pcr,
                random_access,
                data: &self.es,
            },
        )
    }
}

#[cfg(test)]
mod tests;
