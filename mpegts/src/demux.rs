//! MPEG-TS to FLV-style frames, sans I/O: what an SRT ingest receives (H.264 + AAC from a
//! hardware encoder, vMix, OBS or ffmpeg) turned into the [`Frame`]s every push takes.
//!
//! ```text
//! 188-byte packets ──▶ PAT/PMT (which PID is what) ──▶ PES per PID ──▶ Frame
//! ```
//!
//! - H.264 (stream type 0x1B): the Annex-B access unit becomes length-prefixed NAL units
//!   (AUDs and in-band SPS/PPS dropped); a sequence header (`avcC` built from the SPS and
//!   PPS) goes out before the first frame and whenever they change. Keyframes are the
//!   access units with an IDR slice.
//! - HEVC (0x24): the same, into Enhanced RTMP `hvc1` frames; the sequence start carries
//!   an `hvcC` built from the VPS/SPS/PPS (profile, tier and level from the SPS). Keyframes
//!   are the access units with an IRAP picture.
//! - AAC in ADTS (0x0F): each ADTS frame becomes a raw AAC frame; an AudioSpecificConfig
//!   from the ADTS header goes out first and whenever it changes.
//! - Opus (private data with an `Opus` registration descriptor): each packet (behind its
//!   control header) becomes an E-RTMP `Opus` frame, after an `OpusHead`.
//! - Timestamps: milliseconds from the first DTS (any PID), the 33-bit wrap unfolded;
//!   composition time = PTS − DTS.
//! - The start is held back until every stream the PMT lists has its configuration (at
//!   most [`START_HOLD_MS`] of media): then configurations go first. A TS interleaves
//!   audio after the video it accompanies, and a push that saw a keyframe before any
//!   audio configuration would choose a video-only stream.
//!
//! Anything else (other stream types, malformed packets, PES of an unknown PID) is
//! skipped and counted in [`DemuxStats`]; nothing here can fail or grow without bound: a
//! PES larger than [`MAX_PES`] is dropped.

use bytes::{BufMut, Bytes, BytesMut};

use pushcast_media::{Frame, FrameKind};

use super::packet::TS_PACKET_SIZE;

/// Largest PES reassembled (a 4K keyframe is a few MB).
pub const MAX_PES: usize = 8 * 1024 * 1024;

/// How much media the start may be held back waiting for every stream's configuration.
pub const START_HOLD_MS: u32 = 1000;
/// ... and at most this many frames (and [`MAX_PES`] bytes), whatever the timestamps.
pub const START_HOLD_FRAMES: usize = 300;

const STREAM_TYPE_H264: u8 = 0x1B;
const STREAM_TYPE_HEVC: u8 = 0x24;
/// Not a TS stream type: private data (0x06) with an `Opus` registration descriptor,
/// told apart in the PMT.
const STREAM_TYPE_OPUS: u8 = 0xF6;
const STREAM_TYPE_ADTS_AAC: u8 = 0x0F;
/// 2^33: the PTS/DTS modulus.
const WRAP: i64 = 1 << 33;

/// What the demuxer skipped, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemuxStats {
    pub packets: u64,
    /// Not starting with 0x47, or too short.
    pub bad_packets: u64,
    /// PES of stream types we do not turn into frames (HEVC, MP3, private data, ...).
    pub unsupported: u64,
    /// Access units before the first SPS/PPS, malformed ADTS or PES headers, oversized PES.
    pub dropped: u64,
    pub video_frames: u64,
    pub audio_frames: u64,
}

#[derive(Debug)]
struct PesBuffer {
    stream_type: u8,
    data: BytesMut,
    /// The PES header was read and the payload is being collected.
    started: bool,
    /// PES_packet_length's payload size, when given (0 = until the next start).
    expected: Option<usize>,
}

/// The demuxer of one TS stream.
#[derive(Debug, Default)]
pub struct TsDemuxer {
    pmt_pid: Option<u16>,
    /// Elementary PIDs and their PES being collected.
    streams: Vec<(u16, PesBuffer)>,
    /// PIDs of streams we do not turn into frames: their PES starts are counted.
    ignored: Vec<u16>,
    /// (first DTS, last unfolded DTS): the time base.
    clock: Option<(i64, i64)>,
    avc_config: Option<(Bytes, Bytes)>,
    sent_avc: Option<Bytes>,
    /// HEVC: the latest VPS, SPS and PPS, and the `hvcC` last sent.
    hevc_config: [Option<Bytes>; 3],
    sent_hvcc: Option<Bytes>,
    sent_asc: Option<[u8; 2]>,
    /// Opus: the `OpusHead` was sent, and the channel count the PMT gives (1 or 2).
    sent_opus_head: bool,
    opus_channels: u8,
    /// Frames of the start, until every stream is configured (see the module docs).
    held: Vec<Frame>,
    started: bool,
    stats: DemuxStats,
}

impl TsDemuxer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> DemuxStats {
        self.stats
    }

    /// Feeds TS bytes (whole packets; a datagram holds seven) and appends the frames
    /// completed by them to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        if self.started {
            for packet in data.chunks(TS_PACKET_SIZE) {
                self.packet(packet, out);
            }
            return;
        }
        let mut held = std::mem::take(&mut self.held);
        for packet in data.chunks(TS_PACKET_SIZE) {
            self.packet(packet, &mut held);
        }
        self.held = held;
        // Bounded by media time, and by count and size whatever the timestamps say.
        let bytes: usize = self.held.iter().map(|f| f.payload.len()).sum();
        if self.configured()
            || self.held_ms() >= START_HOLD_MS
            || self.held.len() >= START_HOLD_FRAMES
            || bytes >= MAX_PES
        {
            self.release(out);
        }
    }

    /// Flushes what is held and the PES still being collected (the source ended).
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        let mut rest = Vec::new();
        for i in 0..self.streams.len() {
            self.complete(i, &mut rest);
        }
        self.held.append(&mut rest);
        self.release(out);
    }

    /// Every supported stream of the PMT has sent its configuration.
    fn configured(&self) -> bool {
        !self.streams.is_empty()
            && self.streams.iter().all(|(_, s)| match s.stream_type {
                STREAM_TYPE_H264 => self.sent_avc.is_some(),
                STREAM_TYPE_HEVC => self.sent_hvcc.is_some(),
                STREAM_TYPE_ADTS_AAC => self.sent_asc.is_some(),
                STREAM_TYPE_OPUS => self.sent_opus_head,
                _ => true,
            })
    }

    fn held_ms(&self) -> u32 {
        let times = self.held.iter().map(|f| f.timestamp_ms);
        match (times.clone().min(), times.max()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        }
    }

    /// Sends what was held: configurations first (stamped with the first media frame's
    /// time), then the rest in order.
    fn release(&mut self, out: &mut Vec<Frame>) {
        self.started = true;
        let held = std::mem::take(&mut self.held);
        let start = held
            .iter()
            .find(|f| !f.is_sequence_header())
            .map(|f| f.timestamp_ms);
        let (configs, media): (Vec<Frame>, Vec<Frame>) =
            held.into_iter().partition(Frame::is_sequence_header);
        out.extend(configs.into_iter().map(|f| Frame {
            timestamp_ms: start.unwrap_or(f.timestamp_ms),
            ..f
        }));
        out.extend(media);
    }

    fn packet(&mut self, p: &[u8], out: &mut Vec<Frame>) {
        self.stats.packets += 1;
        if p.len() != TS_PACKET_SIZE || p[0] != 0x47 {
            self.stats.bad_packets += 1;
            return;
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        let afc = (p[3] >> 4) & 0x03;
        let mut offset = 4;
        if afc & 0x02 != 0 {
            offset += 1 + usize::from(p[4]);
        }
        if afc & 0x01 == 0 || offset >= p.len() {
            return;
        }
        let payload = &p[offset..];
        if pid == 0 {
            if pusi {
                self.pat(payload);
            }
        } else if Some(pid) == self.pmt_pid {
            if pusi {
                self.pmt(payload);
            }
        } else if self.ignored.contains(&pid) {
            if pusi {
                self.stats.unsupported += 1;
            }
        } else if let Some(i) = self.streams.iter().position(|(s, _)| *s == pid) {
            if pusi {
                self.complete(i, out);
                let pes = &mut self.streams[i].1;
                pes.data.clear();
                pes.started = true;
                pes.expected = None;
            }
            let pes = &mut self.streams[i].1;
            if !pes.started {
                return;
            }
            if pes.data.len() + payload.len() > MAX_PES {
                self.stats.dropped += 1;
                pes.data.clear();
                pes.started = false;
                return;
            }
            pes.data.put_slice(payload);
            // A PES with a length is complete when it is all here.
            if pes.expected.is_none() && pes.data.len() >= 6 {
                let len = usize::from(u16::from_be_bytes([pes.data[4], pes.data[5]]));
                pes.expected = Some(if len == 0 { usize::MAX } else { len + 6 });
            }
            if pes.expected.is_some_and(|e| pes.data.len() >= e) {
                self.complete(i, out);
            }
        }
    }

    /// The PAT's first program's PMT PID.
    fn pat(&mut self, payload: &[u8]) {
        let Some(section) = section(payload) else {
            return;
        };
        // After the 8-byte section header: (program_number, PID) pairs, then the CRC.
        let entries = section
            .get(8..section.len().saturating_sub(4))
            .unwrap_or_default();
        for e in entries.chunks_exact(4) {
            let program = u16::from_be_bytes([e[0], e[1]]);
            if program != 0 {
                self.pmt_pid = Some((u16::from(e[2] & 0x1F) << 8) | u16::from(e[3]));
                return;
            }
        }
    }

    /// The PMT: elementary PIDs and their stream types.
    fn pmt(&mut self, payload: &[u8]) {
        let Some(section) = section(payload) else {
            return;
        };
        let Some(info_len) = section
            .get(10..12)
            .map(|b| usize::from(u16::from_be_bytes([b[0] & 0x0F, b[1]])))
        else {
            return;
        };
        let end = section.len().saturating_sub(4);
        let mut pos = 12 + info_len;
        while pos + 5 <= end {
            let stream_type = section[pos];
            let pid = (u16::from(section[pos + 1] & 0x1F) << 8) | u16::from(section[pos + 2]);
            let es_len = usize::from(u16::from_be_bytes([
                section[pos + 3] & 0x0F,
                section[pos + 4],
            ]));
            let descriptors = section
                .get(pos + 5..(pos + 5 + es_len).min(end))
                .unwrap_or_default();
            pos += 5 + es_len;
            // Opus: private data (0x06) registered as 'Opus'; our own stream type for it.
            let stream_type = if stream_type == 0x06 && registered_as(descriptors, b"Opus") {
                self.opus_channels = opus_channels(descriptors);
                STREAM_TYPE_OPUS
            } else {
                stream_type
            };
            let supported = matches!(
                stream_type,
                STREAM_TYPE_H264 | STREAM_TYPE_HEVC | STREAM_TYPE_ADTS_AAC | STREAM_TYPE_OPUS
            );
            if !supported {
                if !self.ignored.contains(&pid) && self.ignored.len() < 16 {
                    self.ignored.push(pid);
                }
                continue;
            }
            // At most four streams are collected (a video, audio tracks): what one
            // publisher can make us hold is bounded (4 × MAX_PES).
            if !self.streams.iter().any(|(p, _)| *p == pid) && self.streams.len() < 4 {
                self.streams.push((
                    pid,
                    PesBuffer {
                        stream_type,
                        data: BytesMut::new(),
                        started: false,
                        expected: None,
                    },
                ));
            }
        }
    }

    /// Turns the PES collected for stream `i` into frames.
    fn complete(&mut self, i: usize, out: &mut Vec<Frame>) {
        let pes = &mut self.streams[i].1;
        if !pes.started || pes.data.is_empty() {
            return;
        }
        pes.started = false;
        let data = std::mem::take(&mut pes.data).freeze();
        let stream_type = pes.stream_type;
        let Some((pts, dts, body)) = pes_body(&data) else {
            self.stats.dropped += 1;
            return;
        };
        let (Some(pts), Some(dts)) = (pts, dts.or(pts)) else {
            self.stats.dropped += 1;
            return;
        };
        let dts_ms = self.ms(dts);
        let cts_ms = i32::try_from(((pts - dts).rem_euclid(WRAP)) / 90).unwrap_or(0);
        match stream_type {
            STREAM_TYPE_H264 => self.h264(&body, dts_ms, cts_ms, out),
            STREAM_TYPE_HEVC => self.hevc(&body, dts_ms, cts_ms, out),
            STREAM_TYPE_ADTS_AAC => self.adts(&body, dts_ms, out),
            STREAM_TYPE_OPUS => self.opus(&body, dts_ms, out),
            _ => self.stats.unsupported += 1,
        }
    }

    /// Milliseconds since the first DTS, unfolding the 33-bit wrap.
    fn ms(&mut self, ts: i64) -> u32 {
        let unfolded = match self.clock {
            None => {
                self.clock = Some((ts, ts));
                ts
            }
            Some((first, last)) => {
                let base = last - last.rem_euclid(WRAP);
                let mut t = base + ts;
                // The closest of the three candidates to the last one.
                if t - last > WRAP / 2 {
                    t -= WRAP;
                } else if last - t > WRAP / 2 {
                    t += WRAP;
                }
                self.clock = Some((first, t.max(last - WRAP / 2)));
                t
            }
        };
        let first = self.clock.map_or(unfolded, |(f, _)| f);
        u32::try_from((unfolded - first).max(0) / 90).unwrap_or(u32::MAX)
    }

    fn h264(&mut self, au: &Bytes, dts_ms: u32, cts_ms: i32, out: &mut Vec<Frame>) {
        let nals: Vec<Bytes> = annexb_nal_units(au);
        let nal_type = |nal: &Bytes| nal.first().map(|h| h & 0x1F);
        let (mut sps, mut pps, mut idr) = (None, None, false);
        for nal in &nals {
            match nal_type(nal) {
                Some(5) => idr = true,
                Some(7) => sps = Some(nal.clone()),
                Some(8) => pps = Some(nal.clone()),
                _ => {}
            }
        }
        if let (Some(s), Some(p)) = (sps, pps) {
            self.avc_config = Some((s, p));
        }
        let Some((sps, pps)) = &self.avc_config else {
            self.stats.dropped += 1;
            return;
        };
        let record = avc_record(sps, pps);
        send_config(&mut self.sent_avc, &[0x17, 0, 0, 0, 0], record, dts_ms, out);
        let cts = cts_ms.to_be_bytes();
        let header = [if idr { 0x17 } else { 0x27 }, 1, cts[1], cts[2], cts[3]];
        // AUDs and parameter sets: the FLV stream carries them out of band.
        let keep = |nal: &Bytes| !matches!(nal_type(nal), Some(7..=9) | None);
        self.push_video(nal_frame(&header, &nals, keep), dts_ms, out);
    }

    fn hevc(&mut self, au: &Bytes, dts_ms: u32, cts_ms: i32, out: &mut Vec<Frame>) {
        let nals = annexb_nal_units(au);
        let nal_type = |nal: &Bytes| nal.first().map(|h| (h >> 1) & 0x3F);
        let mut irap = false;
        for nal in &nals {
            match nal_type(nal) {
                Some(t @ 32..=34) => self.hevc_config[usize::from(t - 32)] = Some(nal.clone()),
                Some(16..=23) => irap = true,
                _ => {}
            }
        }
        let [Some(vps), Some(sps), Some(pps)] = &self.hevc_config else {
            self.stats.dropped += 1;
            return;
        };
        let record = hvcc_record(vps, sps, pps);
        // E-RTMP, keyframe, SequenceStart.
        send_config(&mut self.sent_hvcc, b"\x90hvc1", record, dts_ms, out);
        // E-RTMP, key or inter frame, CodedFrames (with a composition time).
        let cts = cts_ms.to_be_bytes();
        let header = [
            if irap { 0x91 } else { 0xA1 },
            b'h',
            b'v',
            b'c',
            b'1',
            cts[1],
            cts[2],
            cts[3],
        ];
        // Parameter sets and AUDs: out of band in FLV.
        let keep = |nal: &Bytes| !matches!(nal_type(nal), Some(32..=35) | None);
        self.push_video(nal_frame(&header, &nals, keep), dts_ms, out);
    }

    /// A video frame made by [`nal_frame`] (none: nothing to decode in the unit).
    fn push_video(&mut self, payload: Option<Bytes>, dts_ms: u32, out: &mut Vec<Frame>) {
        if let Some(payload) = payload {
            out.push(Frame {
                kind: FrameKind::Video,
                timestamp_ms: dts_ms,
                payload,
            });
            self.stats.video_frames += 1;
        }
    }

    /// Opus in TS: each packet behind a control header (0x7FE0 + flags, optional trim
    /// fields, its size in 0xFF-chained bytes); 20 ms per packet assumed for the times of
    /// the packets after the PES's first.
    fn opus(&mut self, mut data: &[u8], pts_ms: u32, out: &mut Vec<Frame>) {
        if !self.sent_opus_head {
            // OpusHead: version 1, the channels, pre-skip 0, 48 kHz, gain 0, family 0.
            let mut head = BytesMut::with_capacity(24);
            head.put_u8(0x90); // E-RTMP audio, SequenceStart
            head.put_slice(b"Opus");
            head.put_slice(b"OpusHead");
            head.put_slice(&[1, self.opus_channels.clamp(1, 2), 0, 0]);
            head.put_u32_le(48_000);
            head.put_slice(&[0, 0, 0]);
            out.push(Frame {
                kind: FrameKind::Audio,
                timestamp_ms: pts_ms,
                payload: head.freeze(),
            });
            self.sent_opus_head = true;
        }
        let mut index: u32 = 0;
        while data.len() >= 3 {
            if data[0] != 0x7F || data[1] & 0xE0 != 0xE0 {
                self.stats.dropped += 1;
                return;
            }
            let flags = data[1];
            let mut pos = 2;
            let mut size = 0usize;
            loop {
                let Some(&b) = data.get(pos) else {
                    self.stats.dropped += 1;
                    return;
                };
                pos += 1;
                size += usize::from(b);
                if b != 0xFF {
                    break;
                }
            }
            // start_trim / end_trim (2 bytes each), control extension (length-prefixed).
            if flags & 0x10 != 0 {
                pos += 2;
            }
            if flags & 0x08 != 0 {
                pos += 2;
            }
            if flags & 0x04 != 0 {
                pos += 1 + usize::from(data.get(pos).copied().unwrap_or(0));
            }
            let Some(packet) = data.get(pos..pos + size) else {
                self.stats.dropped += 1;
                return;
            };
            let mut frame = BytesMut::with_capacity(5 + size);
            frame.put_u8(0x91); // E-RTMP audio, CodedFrames
            frame.put_slice(b"Opus");
            frame.put_slice(packet);
            out.push(Frame {
                kind: FrameKind::Audio,
                timestamp_ms: pts_ms.wrapping_add(index * 20),
                payload: frame.freeze(),
            });
            self.stats.audio_frames += 1;
            index += 1;
            data = &data[pos + size..];
        }
    }

    fn adts(&mut self, mut data: &[u8], pts_ms: u32, out: &mut Vec<Frame>) {
        let mut index: u64 = 0;
        while data.len() >= 7 {
            if data[0] != 0xFF || data[1] & 0xF0 != 0xF0 {
                self.stats.dropped += 1;
                return;
            }
            let protection_absent = data[1] & 0x01 != 0;
            let profile = (data[2] >> 6) & 0x03;
            let sf_index = (data[2] >> 2) & 0x0F;
            let channels = ((data[2] & 0x01) << 2) | (data[3] >> 6);
            let frame_len = (usize::from(data[3] & 0x03) << 11)
                | (usize::from(data[4]) << 3)
                | usize::from(data[5] >> 5);
            let header_len = if protection_absent { 7 } else { 9 };
            let Some(rate) = SAMPLE_RATES.get(usize::from(sf_index)).copied() else {
                self.stats.dropped += 1;
                return;
            };
            if frame_len < header_len || frame_len > data.len() {
                self.stats.dropped += 1;
                return;
            }
            let object_type = profile + 1;
            let asc = [
                (object_type << 3) | (sf_index >> 1),
                ((sf_index & 1) << 7) | (channels << 3),
            ];
            if self.sent_asc != Some(asc) {
                out.push(Frame {
                    kind: FrameKind::Audio,
                    timestamp_ms: pts_ms,
                    payload: Bytes::copy_from_slice(&[0xAF, 0, asc[0], asc[1]]),
                });
                self.sent_asc = Some(asc);
            }
            let mut frame = BytesMut::with_capacity(2 + frame_len - header_len);
            frame.put_slice(&[0xAF, 1]);
            frame.put_slice(&data[header_len..frame_len]);
            // Each ADTS frame holds 1024 samples.
            let offset_ms = u32::try_from(index * 1024 * 1000 / u64::from(rate)).unwrap_or(0);
            out.push(Frame {
                kind: FrameKind::Audio,
                timestamp_ms: pts_ms.wrapping_add(offset_ms),
                payload: frame.freeze(),
            });
            self.stats.audio_frames += 1;
            index += 1;
            data = &data[frame_len..];
        }
    }
}

const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// Sends a decoder configuration record behind its tag `header` when it differs from the
/// one last sent (`sent`).
fn send_config(
    sent: &mut Option<Bytes>,
    header: &[u8],
    record: Bytes,
    dts_ms: u32,
    out: &mut Vec<Frame>,
) {
    if sent.as_ref() == Some(&record) {
        return;
    }
    let mut payload = BytesMut::with_capacity(header.len() + record.len());
    payload.put_slice(header);
    payload.put_slice(&record);
    out.push(Frame {
        kind: FrameKind::Video,
        timestamp_ms: dts_ms,
        payload: payload.freeze(),
    });
    *sent = Some(record);
}

/// A video tag: `header`, then the NAL units `keep` accepts with 4-byte lengths; `None`
/// when it accepts none.
fn nal_frame(header: &[u8], nals: &[Bytes], keep: impl Fn(&Bytes) -> bool) -> Option<Bytes> {
    let size: usize = nals.iter().map(|n| n.len() + 4).sum();
    let mut frame = BytesMut::with_capacity(header.len() + size);
    frame.put_slice(header);
    let mut units = 0;
    for nal in nals.iter().filter(|n| keep(n)) {
        frame.put_u32(u32::try_from(nal.len()).unwrap_or(u32::MAX));
        frame.put_slice(nal);
        units += 1;
    }
    (units > 0).then(|| frame.freeze())
}

/// Whether an elementary stream's descriptors hold a registration descriptor (tag 5) for
/// `format`.
fn registered_as(mut descriptors: &[u8], format: &[u8; 4]) -> bool {
    while let [tag, len, rest @ ..] = descriptors {
        let len = usize::from(*len);
        let Some(body) = rest.get(..len) else {
            return false;
        };
        if *tag == 0x05 && body.get(..4) == Some(&format[..]) {
            return true;
        }
        descriptors = &rest[len..];
    }
    false
}

/// The channel count of an Opus stream from its DVB extension descriptor (tag 0x7F,
/// extension 0x80, channel_config_code 1 or 2); stereo when absent.
fn opus_channels(mut descriptors: &[u8]) -> u8 {
    while let [tag, len, rest @ ..] = descriptors {
        let len = usize::from(*len);
        let Some(body) = rest.get(..len) else {
            break;
        };
        if *tag == 0x7F && body.first() == Some(&0x80) {
            return match body.get(1) {
                Some(1) => 1,
                _ => 2,
            };
        }
        descriptors = &rest[len..];
    }
    2
}

/// The section after a PSI payload's pointer field, up to its section_length.
fn section(payload: &[u8]) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let s = payload.get(1 + pointer..)?;
    let len = usize::from(u16::from_be_bytes([*s.get(1)? & 0x0F, *s.get(2)?]));
    s.get(..3 + len)
}

/// PTS, DTS (90 kHz) and the payload of a PES packet.
fn pes_body(data: &Bytes) -> Option<(Option<i64>, Option<i64>, Bytes)> {
    if data.get(..3)? != [0, 0, 1] {
        return None;
    }
    let flags = *data.get(7)?;
    let header_len = usize::from(*data.get(8)?);
    let start = 9 + header_len;
    let ts = |at: usize| -> Option<i64> {
        let b = data.get(at..at + 5)?;
        Some(
            (i64::from(b[0] >> 1 & 0x07) << 30)
                | (i64::from(b[1]) << 22)
                | (i64::from(b[2] >> 1) << 15)
                | (i64::from(b[3]) << 7)
                | i64::from(b[4] >> 1),
        )
    };
    let pts = if flags & 0x80 != 0 { ts(9) } else { None };
    let dts = if flags & 0xC0 == 0xC0 { ts(14) } else { None };
    let end = match usize::from(u16::from_be_bytes([*data.get(4)?, *data.get(5)?])) {
        0 => data.len(),
        len => (6 + len).min(data.len()),
    };
    if start > end {
        return None;
    }
    Some((pts, dts, data.slice(start..end)))
}

/// The NAL units of an Annex-B byte stream (start codes of 3 or 4 bytes).
fn annexb_nal_units(data: &Bytes) -> Vec<Bytes> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (n, &s) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(data.len(), |next| next - 3);
        // Trailing zero bytes belong to the next start code (00 00 00 01).
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            out.push(data.slice(s..end));
        }
    }
    out
}

/// An HEVCDecoderConfigurationRecord (`hvcC`, ISO/IEC 14496-15 §8.3.3.1) for one VPS, SPS
/// and PPS, 4-byte NAL lengths. The general profile, tier, compatibility and constraint
/// flags and level come from the SPS's profile_tier_level (its first bytes, emulation
/// prevention removed); chroma format and bit depths are given as 4:2:0 8-bit, which
/// decoders take from the SPS itself anyway.
fn hvcc_record(vps: &Bytes, sps: &Bytes, pps: &Bytes) -> Bytes {
    // RBSP of the SPS after its 2-byte NAL header: byte 0 holds vps id, sub-layers and
    // nesting; the 12 bytes after it are the general profile_tier_level.
    let mut rbsp = Vec::with_capacity(16);
    let mut zeros = 0;
    for &b in sps.iter().skip(2).take(24) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut ptl = [0u8; 12];
    for (i, b) in rbsp.iter().skip(1).take(12).enumerate() {
        ptl[i] = *b;
    }
    let sub_layers = rbsp.first().map_or(1, |b| ((b >> 1) & 0x07) + 1);
    let nesting = rbsp.first().map_or(1, |b| b & 0x01);
    let mut r = BytesMut::with_capacity(23 + 15 + vps.len() + sps.len() + pps.len());
    r.put_u8(1);
    r.put_slice(&ptl);
    r.put_slice(&[0xF0, 0x00, 0xFC, 0xFD, 0xF8, 0xF8, 0x00, 0x00]);
    r.put_u8((sub_layers << 3) | (nesting << 2) | 0x03);
    r.put_u8(3);
    for (t, nal) in [(32u8, vps), (33, sps), (34, pps)] {
        r.put_u8(0x80 | t);
        r.put_u16(1);
        r.put_u16(u16::try_from(nal.len()).unwrap_or(u16::MAX));
        r.put_slice(&nal[..nal.len().min(usize::from(u16::MAX))]);
    }
    r.freeze()
}

/// An AVCDecoderConfigurationRecord for one SPS and one PPS (4-byte NAL lengths).
fn avc_record(sps: &Bytes, pps: &Bytes) -> Bytes {
    let mut r = BytesMut::with_capacity(11 + sps.len() + pps.len());
    let profile = |i: usize| sps.get(i).copied().unwrap_or(0);
    r.put_slice(&[1, profile(1), profile(2), profile(3), 0xFF, 0xE1]);
    r.put_u16(u16::try_from(sps.len()).unwrap_or(u16::MAX));
    r.put_slice(&sps[..sps.len().min(usize::from(u16::MAX))]);
    r.put_u8(1);
    r.put_u16(u16::try_from(pps.len()).unwrap_or(u16::MAX));
    r.put_slice(&pps[..pps.len().min(usize::from(u16::MAX))]);
    r.freeze()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{TsMuxer, TsTracks};

    /// Our own muxer's output comes back as the frames that went in: codecs,
    /// keyframes, timestamps (to the ms) and NAL units.
    #[test]
    fn the_muxers_output_demuxes_to_its_input() {
        let (frames, _) = crate::tests::stream(2, true, true, 30, 0);
        let mut mux = TsMuxer::new(TsTracks {
            video: true,
            audio: true,
        });
        let mut ts = Vec::new();
        for f in &frames {
            mux.push(f, &mut ts).unwrap();
        }
        let mut demux = TsDemuxer::new();
        let mut got = Vec::new();
        demux.push(&ts, &mut got);
        demux.finish(&mut got);
        let stats = demux.stats();
        let media = |kind| {
            frames
                .iter()
                .filter(|f| f.kind == kind && !f.is_sequence_header())
                .count() as u64
        };
        assert_eq!(stats.video_frames, media(FrameKind::Video), "{stats:?}");
        assert_eq!(stats.audio_frames, media(FrameKind::Audio), "{stats:?}");
        assert_eq!(stats.bad_packets + stats.dropped + stats.unsupported, 0);
        // Both configurations come first, though the TS carries audio after video.
        assert!(got[0].is_sequence_header() && got[1].is_sequence_header());
        assert_ne!(got[0].kind, got[1].kind);
        let keys_in = frames
            .iter()
            .filter(|f| f.is_keyframe() && !f.is_sequence_header())
            .count();
        let keys_out = got
            .iter()
            .filter(|f| f.is_keyframe() && !f.is_sequence_header())
            .count();
        assert_eq!(keys_in, keys_out);
        // Video timestamps, rebased to the first: the same steps.
        let times = |fs: &[Frame]| -> Vec<u32> {
            let v: Vec<u32> = fs
                .iter()
                .filter(|f| f.kind == FrameKind::Video && !f.is_sequence_header())
                .map(|f| f.timestamp_ms)
                .collect();
            v.iter().map(|t| t - v[0]).collect()
        };
        assert_eq!(times(&got), times(&frames));
    }

    /// Opus from our own muxer (private stream, 'Opus' registration) comes back as
    /// E-RTMP Opus frames after an OpusHead with the channel count.
    #[test]
    fn opus_demuxes_to_enhanced_rtmp_opus() {
        let mut mux = TsMuxer::new(TsTracks {
            video: false,
            audio: true,
        });
        let mut ts = Vec::new();
        let mut head = b"\x90OpusOpusHead\x01".to_vec();
        head.extend_from_slice(&[1, 0, 0, 0x80, 0xbb, 0, 0, 0, 0, 0]);
        let frame = |ts: u32, payload: Vec<u8>| Frame {
            kind: FrameKind::Audio,
            timestamp_ms: ts,
            payload: Bytes::from(payload),
        };
        mux.push(&frame(0, head), &mut ts).unwrap();
        for i in 0..10u32 {
            let mut p = b"\x91Opus".to_vec();
            p.extend(std::iter::repeat_n(i as u8, 300));
            mux.push(&frame(i * 20, p), &mut ts).unwrap();
        }
        let mut demux = TsDemuxer::new();
        let mut got = Vec::new();
        demux.push(&ts, &mut got);
        demux.finish(&mut got);
        assert!(
            got[0].payload.starts_with(b"\x90OpusOpusHead\x01\x01"),
            "mono: {:?}",
            got[0]
        );
        assert_eq!(got.len(), 11);
        for (i, f) in got[1..].iter().enumerate() {
            assert_eq!(&f.payload[..5], b"\x91Opus");
            assert_eq!(f.payload.len(), 5 + 300, "{i}");
            assert_eq!(f.payload[5], i as u8);
        }
    }

    /// A stream whose audio never gets configured and whose clock stands still is held
    /// back for a bounded number of frames only.
    #[test]
    fn the_held_start_is_bounded_whatever_the_timestamps() {
        let (frames, _) = crate::tests::stream(2, true, true, 30, 0);
        let mut mux = TsMuxer::new(TsTracks {
            video: true,
            audio: true,
        });
        let mut ts = Vec::new();
        // Video only, every frame at the same time; the PMT lists audio too.
        for f in frames.iter().filter(|f| f.kind == FrameKind::Video) {
            let still = Frame {
                timestamp_ms: 0,
                ..f.clone()
            };
            let _ = mux.push(&still, &mut ts);
        }
        let mut demux = TsDemuxer::new();
        let mut out = Vec::new();
        for _ in 0..10 {
            demux.push(&ts, &mut out);
        }
        assert!(
            demux.held.len() < START_HOLD_FRAMES,
            "held {}",
            demux.held.len()
        );
        assert!(!out.is_empty(), "released once the bound was reached");
    }

    #[test]
    fn garbage_is_skipped_and_counted() {
        let mut demux = TsDemuxer::new();
        let mut out = Vec::new();
        demux.push(&[0u8; 188 * 3], &mut out);
        demux.push(&[0x47; 100], &mut out);
        assert!(out.is_empty());
        assert_eq!(demux.stats().bad_packets, 4);
    }

    #[test]
    fn timestamps_unfold_the_33_bit_wrap() {
        let mut d = TsDemuxer::new();
        assert_eq!(d.ms(WRAP - 90_000), 0);
        assert_eq!(d.ms(WRAP - 45_000), 500);
        assert_eq!(d.ms(45_000), 1500);
        assert_eq!(d.ms(90_000), 2000);
    }
}
