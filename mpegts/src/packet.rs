//! Packet writing: PAT, PMT, PES split over 188-byte TS packets, PCR-only packets.
//!
//! The bytes of each packet are produced by the `mpeg2ts` crate (headers, PSI with CRC,
//! PES header with PTS/DTS, adaptation field with PCR and stuffing); this module decides
//! what goes into which packet: how much PES data fits next to the headers, continuity
//! counters, where the PCR and the random access indicator go.

use mpeg2ts::es::{StreamId, StreamType};
use mpeg2ts::pes::PesHeader;
use mpeg2ts::time::{ClockReference, Timestamp};
use mpeg2ts::ts::payload::{Bytes as TsBytes, Pat, Pes, Pmt};
use mpeg2ts::ts::{
    AdaptationField, ContinuityCounter, Descriptor, EsInfo, Pid, ProgramAssociation,
    TransportScramblingControl, TsHeader, TsPacket, TsPacketWriter, TsPayload, VersionNumber,
    WriteTsPacket,
};

use super::error::MuxError;

/// MPEG-TS PTS/DTS/PCR-base modulus: 33 bits of 90 kHz ticks (~26.5 hours). The muxer
/// keeps time on a 64-bit line that never wraps; only a value written to a packet does.
pub(crate) const WRAP_33: u64 = 1 << 33;

/// Reduces a 90 kHz tick count to the 33 bits a PTS/DTS/PCR base holds.
pub(crate) fn wrap33(ticks: u64) -> u64 {
    ticks & (WRAP_33 - 1)
}

/// Size of one TS packet.
pub const TS_PACKET_SIZE: usize = 188;
/// Payload room of a TS packet after its 4-byte header.
const PACKET_PAYLOAD: usize = TS_PACKET_SIZE - 4;

pub(crate) const PAT_PID: u16 = 0;
/// PIDs as ffmpeg's mpegts muxer assigns them, so captures look familiar.
pub(crate) const PMT_PID: u16 = 0x1000;
pub(crate) const VIDEO_PID: u16 = 0x100;
pub(crate) const AUDIO_PID: u16 = 0x101;
pub(crate) const VIDEO_STREAM_ID: u8 = 0xE0;
pub(crate) const AUDIO_STREAM_ID: u8 = 0xC0;
const PROGRAM_NUMBER: u16 = 1;
const TRANSPORT_STREAM_ID: u16 = 1;

/// Continuity counters, one per PID. Each holds the value the *next* packet with payload
/// on that PID will carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub pat: u8,
    pub pmt: u8,
    pub video: u8,
    pub audio: u8,
}

impl Counters {
    fn slot(&mut self, pid: u16) -> &mut u8 {
        match pid {
            PAT_PID => &mut self.pat,
            PMT_PID => &mut self.pmt,
            VIDEO_PID => &mut self.video,
            _ => &mut self.audio,
        }
    }

    /// Takes the counter for a packet with payload (which advances it, mod 16).
    fn take(&mut self, pid: u16) -> u8 {
        let slot = self.slot(pid);
        let value = *slot;
        *slot = (value + 1) & 0x0F;
        value
    }

    /// The counter of the last packet with payload: what a packet without payload
    /// (adaptation field only) repeats, since such packets do not advance it.
    fn current(&mut self, pid: u16) -> u8 {
        self.slot(pid).wrapping_sub(1) & 0x0F
    }
}

fn packetizer<E: std::fmt::Display>(e: E) -> MuxError {
    MuxError::Packetizer(e.to_string())
}

fn mpeg2ts_err(e: mpeg2ts::Error) -> MuxError {
    MuxError::Packetizer(e.reason)
}

fn header(pid: u16, cc: u8) -> Result<TsHeader, MuxError> {
    Ok(TsHeader {
        transport_error_indicator: false,
        transport_priority: false,
        pid: Pid::new(pid).map_err(mpeg2ts_err)?,
        transport_scrambling_control: TransportScramblingControl::NotScrambled,
        continuity_counter: ContinuityCounter::from_u8(cc).map_err(mpeg2ts_err)?,
    })
}

/// A 33-bit PTS/DTS from unwrapped 90 kHz ticks.
fn timestamp(ticks: u64) -> Result<Timestamp, MuxError> {
    Timestamp::new(wrap33(ticks)).map_err(mpeg2ts_err)
}

/// A PCR (27 MHz, base × 300 + extension 0) from unwrapped 90 kHz ticks.
fn pcr(ticks: u64) -> Result<ClockReference, MuxError> {
    ClockReference::new(wrap33(ticks) * 300).map_err(mpeg2ts_err)
}

/// Serializes one packet and checks it came out as exactly 188 bytes.
fn write_packet(out: &mut Vec<u8>, packet: &TsPacket) -> Result<(), MuxError> {
    let start = out.len();
    let written = TsPacketWriter::new(&mut *out)
        .write_ts_packet(packet)
        .map_err(mpeg2ts_err)
        .and_then(|()| match out.len() - start {
            TS_PACKET_SIZE => Ok(()),
            n => Err(packetizer(format_args!("wrote a {n}-byte packet"))),
        });
    if let Err(e) = written {
        out.truncate(start);
        return Err(e);
    }
    if packet
        .adaptation_field
        .as_ref()
        .is_some_and(|af| af.pcr.is_some())
    {
        // mpeg2ts writes the 6 reserved bits between PCR base and extension as 0; H.222.0
        // reserves them as 1s. They sit in byte 10 (4 header + length + flags + 4 base).
        if let Some(b) = out.get_mut(start + 10) {
            *b |= 0x7E;
        }
    }
    Ok(())
}

/// Which elementary streams the PMT lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Program {
    pub video: bool,
    pub audio: bool,
    /// The video is HEVC (stream type 0x24), else H.264 (0x1B).
    pub hevc: bool,
    /// The audio is Opus with this many channels (stream type 0x06 with its
    /// descriptors), else AAC in ADTS (0x0F).
    pub opus_channels: Option<u8>,
}

impl Program {
    /// PCR rides on the video PID when there is video (its frames are the bigger, more
    /// regular carrier), else on audio.
    pub(crate) fn pcr_pid(&self) -> u16 {
        if self.video { VIDEO_PID } else { AUDIO_PID }
    }
}

/// Writes a PAT and the PMT of `program`.
pub(crate) fn write_psi(
    out: &mut Vec<u8>,
    cc: &mut Counters,
    program: Program,
) -> Result<(), MuxError> {
    let pat = Pat {
        transport_stream_id: TRANSPORT_STREAM_ID,
        version_number: VersionNumber::new(),
        table: vec![ProgramAssociation {
            program_num: PROGRAM_NUMBER,
            program_map_pid: Pid::new(PMT_PID).map_err(mpeg2ts_err)?,
        }],
    };
    write_packet(
        out,
        &TsPacket {
            header: header(PAT_PID, cc.take(PAT_PID))?,
            adaptation_field: None,
            payload: Some(TsPayload::Pat(pat)),
        },
    )?;
    let mut es_info = Vec::with_capacity(2);
    if program.video {
        es_info.push(EsInfo {
            stream_type: if program.hevc {
                StreamType::H265
            } else {
                StreamType::H264
            },
            elementary_pid: Pid::new(VIDEO_PID).map_err(mpeg2ts_err)?,
            descriptors: Vec::new(),
        });
    }
    if program.audio {
        es_info.push(match program.opus_channels {
            Some(channels) => EsInfo {
                stream_type: StreamType::Mpeg2PacketizedData,
                elementary_pid: Pid::new(AUDIO_PID).map_err(mpeg2ts_err)?,
                descriptors: vec![
                    // registration_descriptor: format_identifier 'Opus'.
                    Descriptor {
                        tag: 0x05,
                        data: b"Opus".to_vec(),
                    },
                    // DVB extension descriptor, Opus audio: channel_config_code.
                    Descriptor {
                        tag: 0x7F,
                        data: vec![0x80, channels],
                    },
                ],
            },
            None => EsInfo {
                stream_type: StreamType::AdtsAac,
                elementary_pid: Pid::new(AUDIO_PID).map_err(mpeg2ts_err)?,
                descriptors: Vec::new(),
            },
        });
    }
    let pmt = Pmt {
        program_num: PROGRAM_NUMBER,
        pcr_pid: Some(Pid::new(program.pcr_pid()).map_err(mpeg2ts_err)?),
        version_number: VersionNumber::new(),
        program_info: Vec::new(),
        es_info,
    };
    write_packet(
        out,
        &TsPacket {
            header: header(PMT_PID, cc.take(PMT_PID))?,
            adaptation_field: None,
            payload: Some(TsPayload::Pmt(pmt)),
        },
    )
}

fn adaptation_field(
    pcr_ticks: Option<u64>,
    random_access: bool,
) -> Result<AdaptationField, MuxError> {
    Ok(AdaptationField {
        discontinuity_indicator: false,
        random_access_indicator: random_access,
        es_priority_indicator: false,
        pcr: pcr_ticks.map(pcr).transpose()?,
        opcr: None,
        splice_countdown: None,
        transport_private_data: Vec::new(),
        extension: None,
    })
}

/// Writes a packet on `pid` that carries only a PCR (adaptation field, no payload): the
/// way to keep PCRs frequent when the PCR PID has no frame to carry one.
pub(crate) fn write_pcr_only(
    out: &mut Vec<u8>,
    cc: &mut Counters,
    pid: u16,
    pcr_ticks: u64,
) -> Result<(), MuxError> {
    write_packet(
        out,
        &TsPacket {
            header: header(pid, cc.current(pid))?,
            adaptation_field: Some(adaptation_field(Some(pcr_ticks), false)?),
            payload: None,
        },
    )
}

/// One PES to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PesSpec<'a> {
    pub pid: u16,
    pub stream_id: u8,
    /// Unwrapped 90 kHz ticks.
    pub pts: u64,
    /// Written only when it differs from `pts` (H.222.0 forbids DTS == PTS being sent).
    pub dts: u64,
    /// PCR (unwrapped 90 kHz ticks) for the first packet's adaptation field.
    pub pcr: Option<u64>,
    pub random_access: bool,
    pub data: &'a [u8],
}

/// Writes a PES packet split over as many TS packets as it needs. The first packet holds
/// the adaptation field (PCR, random access indicator) and the PES header; the last one
/// is padded with adaptation-field stuffing (done by mpeg2ts for short payloads).
pub(crate) fn write_pes(
    out: &mut Vec<u8>,
    cc: &mut Counters,
    spec: &PesSpec<'_>,
) -> Result<(), MuxError> {
    let dts = (spec.dts != spec.pts).then_some(spec.dts);
    let pes_header = PesHeader {
        stream_id: StreamId::new(spec.stream_id),
        priority: false,
        data_alignment_indicator: true,
        copyright: false,
        original_or_copy: false,
        pts: Some(timestamp(spec.pts)?),
        dts: dts.map(timestamp).transpose()?,
        escr: None,
    };
    // flags + header length + PTS (+ DTS): the part PES_packet_length counts.
    let optional_len = 3 + 5 + if dts.is_some() { 5 } else { 0 };
    // PES_packet_length 0 ("unbounded") is allowed for video only; audio PES (one ADTS
    // frame, at most 8 KiB) always fits 16 bits.
    let pes_packet_len = u16::try_from(optional_len + spec.data.len()).unwrap_or(0);
    let af = if spec.pcr.is_some() || spec.random_access {
        Some(adaptation_field(spec.pcr, spec.random_access)?)
    } else {
        None
    };
    // length + flags (+ 6-byte PCR): what mpeg2ts writes before any stuffing.
    let af_len = match &af {
        Some(af) if af.pcr.is_some() => 8,
        Some(_) => 2,
        None => 0,
    };
    let first_room = PACKET_PAYLOAD - af_len - (6 + optional_len);
    let (first, mut rest) = spec.data.split_at(first_room.min(spec.data.len()));
    write_packet(
        out,
        &TsPacket {
            header: header(spec.pid, cc.take(spec.pid))?,
            adaptation_field: af,
            payload: Some(TsPayload::PesStart(Pes {
                header: pes_header,
                pes_packet_len,
                data: TsBytes::new(first).map_err(mpeg2ts_err)?,
            })),
        },
    )?;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(PACKET_PAYLOAD.min(rest.len()));
        write_packet(
            out,
            &TsPacket {
                header: header(spec.pid, cc.take(spec.pid))?,
                adaptation_field: None,
                payload: Some(TsPayload::PesContinuation(
                    TsBytes::new(chunk).map_err(mpeg2ts_err)?,
                )),
            },
        )?;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wrap33_masks() {
        assert_eq!(wrap33(WRAP_33 + 5), 5);
        assert_eq!(wrap33(WRAP_33 - 1), WRAP_33 - 1);
    }

    fn spec(data: &[u8], pcr: Option<u64>, random_access: bool) -> PesSpec<'_> {
        PesSpec {
            pid: VIDEO_PID,
            stream_id: VIDEO_STREAM_ID,
            pts: 0x1_2345_6789,
            dts: 0x1_2345_0000,
            pcr,
            random_access,
            data,
        }
    }

    /// Bytes of a 33-bit PTS/DTS field per H.222.0 2.4.3.7, computed by hand.
    fn ts_field(prefix: u8, t: u64) -> [u8; 5] {
        [
            (prefix << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1,
            (t >> 22) as u8,
            (((t >> 15) as u8 & 0x7F) << 1) | 1,
            (t >> 7) as u8,
            ((t as u8 & 0x7F) << 1) | 1,
        ]
    }

    #[test]
    fn pes_header_timestamps_are_encoded_per_spec() {
        let mut out = Vec::new();
        let mut cc = Counters::default();
        write_pes(&mut out, &mut cc, &spec(&[0xAB; 10], None, false)).unwrap();
        assert_eq!(out.len(), 188);
        // 4 header + stuffing AF; the PES starts at 188 - (19 + 10).
        let pes = &out[188 - 29..];
        assert_eq!(&pes[..4], &[0, 0, 1, VIDEO_STREAM_ID]);
        assert_eq!(u16::from_be_bytes([pes[4], pes[5]]), 13 + 10);
        assert_eq!(pes[6], 0x84, "marker bits + data_alignment_indicator");
        assert_eq!(pes[7], 0xC0, "PTS and DTS present");
        assert_eq!(pes[8], 10);
        assert_eq!(pes[9..14], ts_field(0b0011, 0x1_2345_6789));
        assert_eq!(pes[14..19], ts_field(0b0001, 0x1_2345_0000));
        assert_eq!(&pes[19..], &[0xAB; 10]);
        assert_eq!(out[1] & 0x40, 0x40, "payload_unit_start_indicator");
    }

    #[test]
    fn pts_only_when_dts_equals_pts_and_33_bit_wrap() {
        let mut out = Vec::new();
        let mut cc = Counters::default();
        let t = (1u64 << 33) + 90_000; // one second past the wrap
        let mut s = spec(&[1, 2, 3], None, false);
        s.pts = t;
        s.dts = t;
        write_pes(&mut out, &mut cc, &s).unwrap();
        let pes = &out[188 - (14 + 3)..];
        assert_eq!(pes[7], 0x80, "PTS only");
        assert_eq!(pes[9..14], ts_field(0b0010, 90_000));
    }

    #[test]
    fn pes_split_fills_packets_and_stuffs_the_last() {
        for len in [1usize, 100, 165, 166, 167, 349, 350, 351, 10_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            let mut cc = Counters::default();
            write_pes(&mut out, &mut cc, &spec(&data, Some(1234), true)).unwrap();
            assert_eq!(out.len() % 188, 0);
            // Reassemble the payload by hand: skip header + adaptation field.
            let mut got = Vec::new();
            for (i, p) in out.chunks(188).enumerate() {
                assert_eq!(p[0], 0x47);
                assert_eq!(p[3] & 0x0F, i as u8 & 0x0F, "continuity counter");
                let afc = (p[3] >> 4) & 0x03;
                let mut pos = 4;
                if afc & 0x02 != 0 {
                    pos += 1 + usize::from(p[4]);
                }
                assert!(afc & 0x01 != 0, "every packet of a PES has payload");
                if i == 0 {
                    assert_eq!(p[5] & 0x40, 0x40, "random access indicator");
                    assert_eq!(p[5] & 0x10, 0x10, "PCR flag");
                    pos += 19;
                }
                got.extend_from_slice(&p[pos..]);
            }
            assert_eq!(got, data, "len {len}");
            // The first packet is full when data is large enough: 184 - 8 - 19 = 157.
            let expect_packets = if len <= 157 {
                1
            } else {
                1 + (len - 157).div_ceil(184)
            };
            assert_eq!(out.len() / 188, expect_packets, "len {len}");
            assert_eq!(cc.video, (expect_packets % 16) as u8);
        }
    }

    #[test]
    fn pcr_bytes_and_reserved_bits() {
        let mut out = Vec::new();
        let mut cc = Counters::default();
        let ticks = (1u64 << 33) + 0x1_0000_0001; // wraps to 0x1_0000_0001
        write_pcr_only(&mut out, &mut cc, VIDEO_PID, ticks).unwrap();
        assert_eq!(out.len(), 188);
        assert_eq!(out[3] >> 4, 0b10, "adaptation field only");
        assert_eq!(
            out[3] & 0x0F,
            15,
            "no payload yet: repeats the last counter"
        );
        assert_eq!(cc.video, 0, "not advanced");
        assert_eq!(out[4], 183);
        assert_eq!(out[5], 0x10);
        let base = 0x1_0000_0001u64;
        let want = (base << 15) | (0x3F << 9); // extension 0, reserved bits set
        assert_eq!(&out[6..12], &want.to_be_bytes()[2..]);
        assert!(out[12..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn psi_lists_present_tracks_only() {
        for (video, audio, want_types) in [
            (true, true, vec![0x1B, 0x0F]),
            (true, false, vec![0x1B]),
            (false, true, vec![0x0F]),
        ] {
            let mut out = Vec::new();
            let mut cc = Counters::default();
            let program = Program {
                video,
                audio,
                hevc: false,
                opus_channels: None,
            };
            write_psi(&mut out, &mut cc, program).unwrap();
            assert_eq!(out.len(), 376);
            let packet = &out[188..];
            assert_eq!(u16::from_be_bytes([packet[1], packet[2]]) & 0x1FFF, PMT_PID);
            // mpeg2ts pads short payloads with adaptation-field stuffing in front.
            assert_eq!(packet[3] >> 4, 0b11);
            let pmt = &packet[4 + 1 + usize::from(packet[4])..];
            // pointer 0, table_id 2, section length, ..., PCR PID at offset 9.
            assert_eq!(&pmt[..2], &[0, 2]);
            let pcr_pid = u16::from_be_bytes([pmt[9], pmt[10]]) & 0x1FFF;
            assert_eq!(pcr_pid, program.pcr_pid());
            let section_len = usize::from(u16::from_be_bytes([pmt[2], pmt[3]]) & 0x3FF);
            assert_eq!(pmt.len(), 4 + section_len, "section fills the packet");
            let es = &pmt[13..4 + section_len - 4];
            let types: Vec<u8> = es.chunks(5).map(|e| e[0]).collect();
            assert_eq!(types, want_types);
            assert_eq!(cc.pat, 1);
            assert_eq!(cc.pmt, 1);
        }
    }
}
