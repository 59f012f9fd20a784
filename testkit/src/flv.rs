//! A minimal FLV reader producing [`Frame`]s as an RTMP ingest would deliver them.

use bytes::Bytes;
use pushcast_media::{Frame, FrameKind};

/// Reads an FLV file's tags: 9-byte header (+ its length field), PreviousTagSize0, then
/// tags of 11-byte header (type, 24-bit size, 24-bit timestamp + 8-bit extension, 3-byte
/// stream id), body, PreviousTagSize. Panics on a file that is not FLV (test input).
pub fn read_flv(data: &[u8]) -> Vec<Frame> {
    assert!(data.len() >= 9 && &data[..3] == b"FLV", "not an FLV file");
    let header_len = u32::from_be_bytes(data[5..9].try_into().unwrap()) as usize;
    let be24 = |b: &[u8]| (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    let mut pos = header_len + 4;
    let mut frames = Vec::new();
    while pos + 11 <= data.len() {
        let tag = &data[pos..];
        let size = be24(&tag[1..4]) as usize;
        if tag.len() < 11 + size {
            break; // truncated last tag (a recording cut short)
        }
        let ts = be24(&tag[4..7]) | (u32::from(tag[7]) << 24);
        let body = Bytes::copy_from_slice(&tag[11..11 + size]);
        pos += 11 + size + 4;
        let kind = match tag[0] & 0x1F {
            8 => FrameKind::Audio,
            9 => FrameKind::Video,
            18 => FrameKind::Data,
            _ => continue,
        };
        frames.push(Frame {
            kind,
            timestamp_ms: ts,
            payload: body,
        });
    }
    frames
}

/// Reads an FLV file from disk.
pub fn read_flv_file(path: &std::path::Path) -> Vec<Frame> {
    read_flv(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Media frames of a kind: AVCPacketType / AACPacketType 1, i.e. not the sequence
/// headers and not the AVC end-of-sequence tag ffmpeg writes at the end.
pub fn media_frames(frames: &[Frame], kind: FrameKind) -> Vec<&Frame> {
    frames
        .iter()
        .filter(|f| f.kind == kind && f.payload.get(1) == Some(&1))
        .collect()
}

/// Number of media frames of a kind.
pub fn count_media(frames: &[Frame], kind: FrameKind) -> usize {
    media_frames(frames, kind).len()
}
