//! Muxer tests that read the output back with an independent, hand-written TS parser
//! (and with mpeg2ts's reader as a second opinion).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use mpeg2ts::pes::{PesPacketReader, ReadPesPacket};
use mpeg2ts::ts::TsPacketReader;

use super::avc::tests::record;
use super::packet::WRAP_33;
use super::*;
use pushcast_media::{Frame, FrameKind};

const SPS: &[u8] = &[0x67, 0x64, 0x00, 0x1F, 0xAC];
const PPS: &[u8] = &[0x68, 0xEE, 0x3C, 0x80];
const DELAY: u64 = 500 * 90;

// ---------- input builders ----------

fn frame(kind: FrameKind, ts: u32, payload: Vec<u8>) -> Frame {
    Frame {
        kind,
        timestamp_ms: ts,
        payload: Bytes::from(payload),
    }
}

fn avc_seq(ts: u32) -> Frame {
    let mut p = vec![0x17, 0, 0, 0, 0];
    p.extend_from_slice(&record(4));
    frame(FrameKind::Video, ts, p)
}

fn avc_frame(ts: u32, cts: i32, key: bool, nal: &[u8]) -> Frame {
    let c = cts.to_be_bytes();
    let mut p = vec![if key { 0x17 } else { 0x27 }, 1, c[1], c[2], c[3]];
    p.extend_from_slice(&(nal.len() as u32).to_be_bytes());
    p.extend_from_slice(nal);
    frame(FrameKind::Video, ts, p)
}

fn aac_seq(ts: u32) -> Frame {
    frame(FrameKind::Audio, ts, vec![0xAF, 0, 0x12, 0x10])
}

fn aac_frame(ts: u32, raw: &[u8]) -> Frame {
    let mut p = vec![0xAF, 1];
    p.extend_from_slice(raw);
    frame(FrameKind::Audio, ts, p)
}

/// A NAL unit of `len` bytes with a recognizable body.
fn nal(key: bool, len: usize, seed: u8) -> Vec<u8> {
    let mut n = vec![if key { 0x65 } else { 0x41 }];
    n.extend((1..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    n
}

/// What the muxer should put in the PES for a video frame.
fn expected_video_es(key: bool, nal: &[u8]) -> Vec<u8> {
    let mut es = vec![0, 0, 0, 1, 0x09, 0xF0];
    if key {
        for ps in [SPS, PPS] {
            es.extend_from_slice(&[0, 0, 0, 1]);
            es.extend_from_slice(ps);
        }
    }
    es.extend_from_slice(&[0, 0, 0, 1]);
    es.extend_from_slice(nal);
    es
}

pub(crate) struct Expect {
    video: Vec<(u64, u64, bool, Vec<u8>)>, // dts, pts, key, es
    audio: Vec<(u64, Vec<u8>)>,            // pts, es
}

/// A synthetic live stream: 30 fps video with a keyframe every `gop` frames and a CTS
/// pattern like B-frames produce, AAC at 44.1 kHz, interleaved by timestamp as an RTMP
/// ingest delivers them, starting at `start` (ms, may wrap).
pub(crate) fn stream(
    secs: u32,
    video: bool,
    audio: bool,
    gop: u32,
    start: u32,
) -> (Vec<Frame>, Expect) {
    let mut timed: Vec<(u64, u8, Frame)> = Vec::new();
    let mut exp = Expect {
        video: Vec::new(),
        audio: Vec::new(),
    };
    if video {
        timed.push((0, 0, avc_seq(start)));
        for i in 0..secs * 30 {
            let ms = u64::from(i) * 1000 / 30;
            let key = i % gop == 0;
            let cts = if key {
                0
            } else {
                [66, 0, 33][(i % 3) as usize]
            };
            let n = nal(
                key,
                if key {
                    6000
                } else {
                    700 + (i as usize % 5) * 150
                },
                i as u8,
            );
            let ts = start.wrapping_add(ms as u32);
            timed.push((ms, 1, avc_frame(ts, cts, key, &n)));
            let dts = ms * 90 + DELAY;
            exp.video
                .push((dts, dts + cts as u64 * 90, key, expected_video_es(key, &n)));
        }
    }
    if audio {
        timed.push((0, 0, aac_seq(start)));
        let mut j = 0u64;
        while j * 1024 * 1000 / 44_100 < u64::from(secs) * 1000 {
            let ms = j * 1024 * 1000 / 44_100;
            let raw: Vec<u8> = (0..300 + (j % 7) as usize * 20)
                .map(|k| (k as u8) ^ (j as u8))
                .collect();
            timed.push((ms, 2, aac_frame(start.wrapping_add(ms as u32), &raw)));
            let mut es = aac::adts_header(&aac::parse_asc(&[0x12, 0x10]).unwrap(), raw.len())
                .unwrap()
                .to_vec();
            es.extend_from_slice(&raw);
            exp.audio.push((ms * 90 + DELAY, es));
            j += 1;
        }
    }
    timed.sort_by_key(|(ms, order, _)| (*ms, *order));
    (timed.into_iter().map(|(_, _, f)| f).collect(), exp)
}

fn mux_all(mux: &mut TsMuxer, frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        mux.push(f, &mut out).unwrap();
    }
    out
}

// ---------- an independent TS reader ----------

#[derive(Debug)]
struct Pkt {
    pid: u16,
    pusi: bool,
    cc: u8,
    has_payload: bool,
    rai: bool,
    /// PCR base (90 kHz) if present.
    pcr: Option<u64>,
    payload: Vec<u8>,
}

fn parse(ts: &[u8]) -> Vec<Pkt> {
    assert_eq!(ts.len() % 188, 0, "whole packets only");
    ts.chunks(188)
        .map(|p| {
            assert_eq!(p[0], 0x47, "sync byte");
            let pid = u16::from_be_bytes([p[1], p[2]]) & 0x1FFF;
            let afc = (p[3] >> 4) & 3;
            assert_ne!(afc, 0, "reserved adaptation_field_control");
            let mut pos = 4;
            let (mut rai, mut pcr) = (false, None);
            if afc & 2 != 0 {
                let len = usize::from(p[4]);
                if len > 0 {
                    rai = p[5] & 0x40 != 0;
                    if p[5] & 0x10 != 0 {
                        let b = &p[6..12];
                        let base = (u64::from(b[0]) << 25)
                            | (u64::from(b[1]) << 17)
                            | (u64::from(b[2]) << 9)
                            | (u64::from(b[3]) << 1)
                            | u64::from(b[4] >> 7);
                        assert_eq!(b[4] & 0x7E, 0x7E, "PCR reserved bits");
                        assert_eq!((u16::from(b[4] & 1) << 8) | u16::from(b[5]), 0);
                        pcr = Some(base);
                    }
                    // Stuffing after the fields is 0xFF.
                    let fields = 1 + if pcr.is_some() { 6 } else { 0 };
                    assert!(p[5 + fields..5 + len].iter().all(|&b| b == 0xFF));
                }
                pos += 1 + len;
            }
            Pkt {
                pid,
                pusi: p[1] & 0x40 != 0,
                cc: p[3] & 0x0F,
                has_payload: afc & 1 != 0,
                rai,
                pcr,
                payload: p[pos..].to_vec(),
            }
        })
        .collect()
}

fn read_ts_field(b: &[u8]) -> u64 {
    (u64::from((b[0] >> 1) & 7) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

#[derive(Debug)]
struct PesOut {
    pid: u16,
    pts: u64,
    dts: u64,
    rai: bool,
    /// Most recent PCR seen in the stream when this PES started (90 kHz base).
    pcr: Option<u64>,
    /// Data length PES_packet_length declares (None/0: unbounded).
    declared_data: Option<usize>,
    data: Vec<u8>,
}

fn pes_list(pkts: &[Pkt]) -> Vec<PesOut> {
    let mut out: Vec<PesOut> = Vec::new();
    let mut last_pcr = None;
    for p in pkts {
        if p.pcr.is_some() {
            last_pcr = p.pcr;
        }
        if p.pid == 0 || p.pid == 0x1000 || !p.has_payload {
            continue;
        }
        if p.pusi {
            let d = &p.payload;
            assert_eq!(&d[..3], &[0, 0, 1]);
            let flags = d[7];
            let hlen = usize::from(d[8]);
            let pts = read_ts_field(&d[9..14]);
            let dts = if flags & 0x40 != 0 {
                read_ts_field(&d[14..19])
            } else {
                pts
            };
            let declared = usize::from(u16::from_be_bytes([d[4], d[5]]));
            out.push(PesOut {
                pid: p.pid,
                pts,
                dts,
                rai: p.rai,
                pcr: last_pcr,
                // PES_packet_length counts from after itself: 3 + header + data.
                declared_data: declared.checked_sub(3 + hlen),
                data: d[9 + hlen..].to_vec(),
            });
        } else {
            let idx = out
                .iter()
                .rposition(|x| x.pid == p.pid)
                .expect("continuation after start");
            out[idx].data.extend_from_slice(&p.payload);
        }
    }
    for p in &out {
        if let Some(n) = p.declared_data.filter(|&n| n > 0) {
            assert_eq!(p.data.len(), n, "PES_packet_length matches the data");
        }
    }
    out
}

/// Continuity counters: +1 mod 16 per packet with payload, unchanged without.
fn check_cc(pkts: &[Pkt]) {
    let mut last: std::collections::HashMap<u16, u8> = Default::default();
    for (i, p) in pkts.iter().enumerate() {
        if let Some(&prev) = last.get(&p.pid) {
            let want = if p.has_payload {
                (prev + 1) & 0x0F
            } else {
                prev
            };
            assert_eq!(p.cc, want, "packet {i} pid {:#x}", p.pid);
        }
        last.insert(p.pid, p.cc);
    }
}

/// The stream parses with mpeg2ts's reader too, and every PES length checks out.
fn check_with_mpeg2ts(ts: &[u8]) -> usize {
    let mut reader = PesPacketReader::new(TsPacketReader::new(ts));
    let mut n = 0;
    while let Some(_pes) = reader.read_pes_packet().expect("mpeg2ts reads our PES") {
        n += 1;
    }
    n
}

// ---------- tests ----------

#[test]
fn audio_video_stream_round_trips() {
    let (frames, exp) = stream(3, true, true, 30, 0);
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let ts = mux_all(&mut mux, &frames);
    let pkts = parse(&ts);

    // PAT then PMT first, PCR on the video PID from the first frame on.
    assert_eq!((pkts[0].pid, pkts[1].pid), (0, 0x1000));
    check_cc(&pkts);
    let pes = pes_list(&pkts);
    assert_eq!(check_with_mpeg2ts(&ts), pes.len());

    let video: Vec<&PesOut> = pes.iter().filter(|p| p.pid == 0x100).collect();
    let audio: Vec<&PesOut> = pes.iter().filter(|p| p.pid == 0x101).collect();
    assert_eq!(video.len(), exp.video.len());
    assert_eq!(audio.len(), exp.audio.len());
    for (got, (dts, pts, key, es)) in video.iter().zip(&exp.video) {
        assert_eq!((got.dts, got.pts), (*dts, *pts));
        assert_eq!(got.rai, *key, "random access indicator on keyframes only");
        assert_eq!(&got.data, es);
    }
    for (got, (pts, es)) in audio.iter().zip(&exp.audio) {
        assert_eq!((got.pts, got.dts), (*pts, *pts));
        assert!(!got.rai);
        assert_eq!(&got.data, es);
    }
    // Output starts near zero: first PCR 0, first DTS = the delay.
    assert_eq!(pkts.iter().find_map(|p| p.pcr), Some(0));
    assert_eq!(video[0].dts, DELAY);
    // Every frame is decoded after it arrives: DTS ahead of the PCR by the delay.
    for p in &pes {
        let pcr = p.pcr.expect("a PCR precedes every PES");
        assert!(p.dts >= pcr + DELAY - 90 * 25, "dts {} pcr {}", p.dts, pcr);
    }

    let st = mux.stats();
    assert_eq!(st.video_frames, 90);
    assert_eq!(st.audio_frames, exp.audio.len() as u64);
    assert_eq!(st.packets as usize, pkts.len());
}

#[test]
fn pcr_spacing_and_placement() {
    for (video, audio) in [(true, true), (true, false), (false, true)] {
        let (frames, _) = stream(4, video, audio, 60, 7);
        let mut mux = TsMuxer::new(TsTracks { video, audio });
        let pkts = parse(&mux_all(&mut mux, &frames));
        let pcr_pid = if video { 0x100 } else { 0x101 };
        let pcrs: Vec<(u16, u64)> = pkts
            .iter()
            .filter_map(|p| p.pcr.map(|c| (p.pid, c)))
            .collect();
        assert!(
            pcrs.iter().all(|&(pid, _)| pid == pcr_pid),
            "PCR only on the PCR PID"
        );
        let mut gaps: Vec<u64> = pcrs.windows(2).map(|w| w[1].1 - w[0].1).collect();
        gaps.sort_unstable();
        let max_ms = gaps.last().unwrap() / 90;
        // Interval 40 ms, checked at each frame (every ≤ 33 ms): never above 73 ms.
        assert!(max_ms <= 73, "max PCR gap {max_ms} ms ({video}, {audio})");
        assert!(gaps[0] > 0, "PCR strictly increasing");
        // Last PCR within 4 s of the stream.
        assert!(pcrs.last().unwrap().1 / 90 >= 3_900);
    }
}

#[test]
fn psi_repeats_and_lists_only_present_tracks() {
    for (video, audio) in [(true, true), (true, false), (false, true)] {
        let (frames, _) = stream(2, video, audio, 15, 0);
        let mut mux = TsMuxer::new(TsTracks { video, audio });
        let pkts = parse(&mux_all(&mut mux, &frames));
        let mut psi_at = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            if p.pid == 0x1000 {
                // The PMT: stream types listed.
                let d = &p.payload[1..];
                let section_len = usize::from(u16::from_be_bytes([d[1], d[2]]) & 0x3FF);
                let es = &d[12..3 + section_len - 4];
                let types: Vec<u8> = es.chunks(5).map(|e| e[0]).collect();
                let mut want = Vec::new();
                if video {
                    want.push(0x1B);
                }
                if audio {
                    want.push(0x0F);
                }
                assert_eq!(types, want);
                assert_eq!(pkts[i - 1].pid, 0, "PAT right before PMT");
                // Time of the PSI: the DTS of the PES that follows it.
                let next = pkts[i..].iter().find(|q| q.pusi && q.pid >= 0x100).unwrap();
                psi_at.push(read_ts_field(
                    &next.payload[if next.payload[7] & 0x40 != 0 { 14 } else { 9 }..],
                ));
            }
            // A keyframe PES is preceded by PAT + PMT.
            if p.pid == 0x100 && p.pusi && p.rai {
                assert_eq!(pkts[i - 1].pid, 0x1000, "PMT before keyframe at {i}");
            }
        }
        // PSI at least every 100 ms (+ one frame interval).
        let max_gap = psi_at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(max_gap <= 90 * 134, "PSI gap {} ms", max_gap / 90);
    }
}

#[test]
fn audio_only_flags_random_access_on_audio() {
    let (frames, _) = stream(1, false, true, 30, 0);
    let mut mux = TsMuxer::new(TsTracks {
        video: false,
        audio: true,
    });
    let pkts = parse(&mux_all(&mut mux, &frames));
    let pes = pes_list(&pkts);
    assert!(!pes.is_empty());
    assert!(pes.iter().all(|p| p.pid == 0x101 && p.rai));
}

#[test]
fn input_timestamp_wrap_keeps_output_monotonic() {
    // Start 1 s before the 32-bit wrap; the stream crosses it.
    let start = u32::MAX - 999;
    let (frames, exp) = stream(3, true, true, 30, start);
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let pkts = parse(&mux_all(&mut mux, &frames));
    let pes = pes_list(&pkts);
    let video: Vec<u64> = pes
        .iter()
        .filter(|p| p.pid == 0x100)
        .map(|p| p.dts)
        .collect();
    let want: Vec<u64> = exp.video.iter().map(|v| v.0).collect();
    assert_eq!(video, want, "same DTS as a stream starting at 0");
    assert!(video.windows(2).all(|w| w[1] > w[0]));
    assert_eq!(mux.stats().timestamp_discontinuities, 0);
}

#[test]
fn output_33_bit_wrap() {
    // Audio every 9 s (under the 10 s jump threshold) for 27 hours: the 90 kHz clock
    // passes 2^33 (26.5 h) once.
    let mut mux = TsMuxer::new(TsTracks {
        video: false,
        audio: true,
    });
    let mut out = Vec::new();
    mux.push(&aac_seq(0), &mut out).unwrap();
    let n: u32 = 27 * 3600 / 9;
    for i in 0..n {
        mux.push(&aac_frame(i * 9000, &[1, 2, 3]), &mut out)
            .unwrap();
    }
    let pkts = parse(&out);
    check_cc(&pkts);
    let pes = pes_list(&pkts);
    assert_eq!(pes.len(), n as usize);
    let mut wraps = 0;
    for (i, w) in pes.windows(2).enumerate() {
        let step = (w[1].pts + WRAP_33 - w[0].pts) % WRAP_33;
        assert_eq!(step, 9 * 90_000, "step {i}");
        if w[1].pts < w[0].pts {
            wraps += 1;
        }
    }
    assert_eq!(wraps, 1);
    let pcrs: Vec<u64> = pkts.iter().filter_map(|p| p.pcr).collect();
    assert_eq!(
        pcrs.windows(2).filter(|w| w[1] < w[0]).count(),
        1,
        "PCR wraps once"
    );
    // Internally the clock did not wrap.
    assert_eq!(mux.clock_90k(), Some(u64::from(n - 1) * 9 * 90_000));
}

#[test]
fn drops_are_counted_not_errors() {
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let mut out = Vec::new();
    let p_frame = nal(false, 100, 1);
    let i_frame = nal(true, 100, 2);
    // Before any sequence header.
    mux.push(&avc_frame(0, 0, true, &i_frame), &mut out)
        .unwrap();
    mux.push(&aac_frame(0, &[1, 2, 3]), &mut out).unwrap();
    assert_eq!(mux.stats().dropped_before_config, 2);
    assert!(out.is_empty());
    assert_eq!(mux.clock_90k(), None);
    // Metadata is ignored.
    mux.push(
        &frame(FrameKind::Data, 0, b"\x02\x00\x0aonMetaData".to_vec()),
        &mut out,
    )
    .unwrap();
    assert_eq!(mux.stats().ignored, 1);
    // Config, then a P-frame before any keyframe.
    mux.push(&avc_seq(0), &mut out).unwrap();
    mux.push(&avc_frame(0, 0, false, &p_frame), &mut out)
        .unwrap();
    assert_eq!(mux.stats().dropped_before_keyframe, 1);
    assert!(out.is_empty());
    // Empty tags and end-of-sequence.
    mux.push(&frame(FrameKind::Video, 0, vec![]), &mut out)
        .unwrap();
    mux.push(
        &frame(FrameKind::Video, 0, vec![0x17, 2, 0, 0, 0]),
        &mut out,
    )
    .unwrap();
    mux.push(
        &frame(FrameKind::Video, 0, vec![0x17, 1, 0, 0, 0]),
        &mut out,
    )
    .unwrap();
    assert_eq!(mux.stats().dropped_empty, 3);
    // Now a keyframe is written.
    mux.push(&avc_frame(40, 0, true, &i_frame), &mut out)
        .unwrap();
    assert_eq!(mux.stats().video_frames, 1);
    assert!(!out.is_empty());
    // Frames of a track not selected are ignored even with a bad codec.
    let mut video_only = TsMuxer::new(TsTracks {
        video: true,
        audio: false,
    });
    video_only
        .push(&frame(FrameKind::Audio, 0, vec![0x2F, 0xFF]), &mut out)
        .unwrap();
    assert_eq!(video_only.stats().ignored, 1);
}

#[test]
fn unsupported_codecs_are_typed_errors() {
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let mut out = vec![0xAA];
    let vp6 = frame(FrameKind::Video, 0, vec![0x14, 0, 0]);
    let err = mux.push(&vp6, &mut out).unwrap_err();
    assert_eq!(err, MuxError::UnsupportedVideoCodec(VideoCodec::Flv(4)));
    let av1 = frame(FrameKind::Video, 0, b"\x90av01\x00".to_vec());
    let err = mux.push(&av1, &mut out).unwrap_err();
    assert_eq!(
        err,
        MuxError::UnsupportedVideoCodec(VideoCodec::FourCc(*b"av01"))
    );
    // HEVC is carried: a truncated configuration record is a bad frame, not a refusal.
    let hevc = frame(FrameKind::Video, 0, b"\x90hvc1\x00".to_vec());
    let err = mux.push(&hevc, &mut out).unwrap_err();
    assert!(!err.is_unsupported(), "{err}");
    let mp3 = frame(FrameKind::Audio, 0, vec![0x2F, 0xFF, 0xFB]);
    let err = mux.push(&mp3, &mut out).unwrap_err();
    assert_eq!(err, MuxError::UnsupportedAudioCodec(AudioCodec::Flv(2)));
    assert!(err.to_string().contains("MP3"));
    let flac = frame(FrameKind::Audio, 0, b"\x90fLaC".to_vec());
    assert!(mux.push(&flac, &mut out).unwrap_err().is_unsupported());
    // Opus is carried (mono and stereo); six channels are not.
    let mut head = b"\x90OpusOpusHead\x01".to_vec();
    head.push(6);
    assert!(
        mux.push(&frame(FrameKind::Audio, 0, head), &mut out)
            .unwrap_err()
            .is_unsupported()
    );
    assert_eq!(out, vec![0xAA], "output untouched");
}

#[test]
fn malformed_frames_fail_without_disturbing_the_stream() {
    let (frames, exp) = stream(1, true, true, 30, 0);
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let mut out = Vec::new();
    let bad = [
        frame(
            FrameKind::Video,
            100,
            vec![0x27, 1, 0, 0, 0, 0, 0, 0, 50, 0x41],
        ),
        frame(FrameKind::Video, 100, vec![0x17, 0, 0, 0, 0, 1, 0x64]),
        frame(FrameKind::Video, 100, vec![0x17, 9, 0, 0, 0]),
        frame(FrameKind::Video, 100, vec![0x17, 1]),
        frame(FrameKind::Audio, 100, vec![0xAF]),
        frame(FrameKind::Audio, 100, vec![0xAF, 0, 0xF9]),
        frame(FrameKind::Audio, 100, vec![0xAF, 5, 1]),
    ];
    for (i, f) in frames.iter().enumerate() {
        mux.push(f, &mut out).unwrap();
        if i > 10 && i % 7 == 0 {
            let before = out.len();
            let err = mux.push(&bad[i % bad.len()], &mut out).unwrap_err();
            assert!(!err.is_unsupported(), "{err}");
            assert_eq!(out.len(), before);
        }
    }
    let pkts = parse(&out);
    check_cc(&pkts);
    let pes = pes_list(&pkts);
    assert_eq!(pes.len(), exp.video.len() + exp.audio.len());
}

#[test]
fn datagrams_are_whole_packets() {
    assert_eq!(DATAGRAM_SIZE, 1316);
    assert_eq!(DATAGRAM_SIZE % TS_PACKET_SIZE, 0);
}

#[test]
fn muxer_feeds_the_pacer_in_real_time() {
    let (frames, _) = stream(2, true, true, 30, 0);
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let mut pacer = TsPacer::new(PacerConfig::default());
    let t0 = std::time::Instant::now();
    let mut now = std::time::Duration::ZERO;
    let mut out = Vec::new();
    let mut sent = 0usize;
    let mut last_send = std::time::Duration::ZERO;
    for f in &frames {
        let before = out.len();
        mux.push(f, &mut out).unwrap();
        if let Some(clock) = mux.clock_90k() {
            pacer.muxed(clock, out.len() - before);
        }
        loop {
            match pacer.poll(t0 + now) {
                Pace::Send(n) => {
                    assert_eq!(n, DATAGRAM_SIZE);
                    sent += n;
                    assert!(now >= last_send);
                    last_send = now;
                }
                Pace::Wait(d) => now += d,
                Pace::Idle => break,
            }
        }
    }
    pacer.finish();
    loop {
        match pacer.poll(t0 + now) {
            Pace::Send(n) => sent += n,
            Pace::Wait(d) => now += d,
            Pace::Idle => break,
        }
    }
    assert_eq!(sent, out.len());
    assert_eq!(pacer.pending(), 0);
    // Two seconds of stream took about two seconds of (virtual) time to send.
    assert!(
        last_send >= std::time::Duration::from_millis(1_900),
        "{last_send:?}"
    );
    assert_eq!(pacer.resyncs(), 0);
}

/// xorshift64*: a tiny seeded generator so the fuzz loop is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_input_never_panics() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let tracks = TsTracks {
            video: rng.below(4) != 0,
            audio: rng.below(4) != 0,
        };
        let mut mux = TsMuxer::new(tracks);
        let mut out = Vec::new();
        let mut ts = rng.next() as u32;
        for _ in 0..400 {
            let len = rng.below(64) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let kind = match rng.below(3) {
                0 => FrameKind::Video,
                1 => FrameKind::Audio,
                _ => FrameKind::Data,
            };
            // Mostly plausible headers so the deep paths get exercised.
            if rng.below(4) != 0 && !payload.is_empty() {
                payload[0] = match kind {
                    FrameKind::Video => [0x17, 0x27][rng.below(2) as usize],
                    _ => 0xAF,
                };
                if payload.len() > 1 {
                    payload[1] = rng.below(3) as u8;
                }
                if rng.below(3) == 0 && kind == FrameKind::Video && payload.get(1) == Some(&0) {
                    let mut p = vec![0x17, 0, 0, 0, 0];
                    p.extend_from_slice(&record(1 + rng.below(4) as u8));
                    payload = p;
                }
                if rng.below(3) == 0 && kind == FrameKind::Audio && payload.len() > 3 {
                    payload[1] = 0;
                    payload[2] = 0x12;
                    payload[3] = 0x10;
                }
            }
            ts = match rng.below(10) {
                0 => rng.next() as u32,
                1 => ts.wrapping_sub(rng.below(100) as u32),
                _ => ts.wrapping_add(rng.below(60) as u32),
            };
            let before = out.len();
            if mux.push(&frame(kind, ts, payload), &mut out).is_err() {
                assert_eq!(out.len(), before);
            }
        }
        let pkts = parse(&out);
        check_cc(&pkts);
    }
}
