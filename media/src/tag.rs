//! The header of an FLV audio or video tag, legacy or Enhanced RTMP, parsed once (pure).
//!
//! Legacy FLV: a video tag's first byte is `FrameType << 4 | CodecID`, AVC adds an
//! `AVCPacketType` and a composition time; an audio tag's first byte is
//! `SoundFormat << 4 | ...`, AAC adds an `AACPacketType`.
//!
//! Enhanced RTMP (Veovera, v2): a video tag's first byte is `1 (IsExHeader) << 7 |
//! FrameType << 4 | VideoPacketType` and a FourCC follows; an audio tag's is
//! `9 (ExHeader) << 4 | AudioPacketType`, then a FourCC. The `Multitrack` packet type
//! adds a byte (`AvMultitrackType << 4 | the real packet type`) before the FourCC and a
//! track id after it. pushcast reads one-track multitrack packets (what OBS and ffmpeg
//! send for a second audio track); packets carrying several tracks at once are named
//! as such ([`PacketType::ManyTracks`]) and not split.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{AudioCodec, FLV_AUDIO_AAC, FLV_AUDIO_EX_HEADER, FLV_VIDEO_AVC, VideoCodec};
use crate::frame::FrameKind;

/// What a tag carries, legacy packet types mapped onto Enhanced RTMP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Codec configuration (AVC/HEVC/AV1 decoder configuration record, AAC
    /// AudioSpecificConfig, OpusHead, ...): decoders need it before anything else.
    SequenceStart,
    /// Coded frames (with or without a composition time).
    CodedFrames,
    /// End of sequence.
    SequenceEnd,
    /// Video metadata (E-RTMP `colorInfo`), an AMF object in a video tag.
    Metadata,
    /// Audio channel layout (E-RTMP `MultichannelConfig`): configuration too.
    MultichannelConfig,
    /// Several tracks in one packet (E-RTMP `ManyTracks`): not split by pushcast.
    ManyTracks,
    /// A packet type pushcast does not interpret (passed on as it is).
    Other(u8),
}

/// A tag's codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Video(VideoCodec),
    Audio(AudioCodec),
}

/// The parsed header of an audio or video tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub kind: FrameKind,
    pub codec: Codec,
    /// The track: 0 for legacy tags and plain E-RTMP tags, the id of an E-RTMP
    /// one-track multitrack packet otherwise.
    pub track: u8,
    /// Video frame type (1 key, 2 inter, 3 disposable, 4 generated key, 5 command);
    /// 0 for audio.
    pub frame_type: u8,
    pub packet: PacketType,
    /// Composition time offset (PTS - DTS) in ms: AVC and HEVC coded frames.
    pub composition_ms: i32,
    /// Whether the tag uses the Enhanced RTMP header.
    pub enhanced: bool,
    /// Whether it is an E-RTMP multitrack packet.
    pub multitrack: bool,
    /// Where the codec's data starts in the payload.
    pub data_offset: usize,
}

impl Tag {
    /// A video keyframe (frame type 1), configuration records included.
    pub fn is_keyframe(&self) -> bool {
        self.kind == FrameKind::Video && self.frame_type == 1
    }

    /// Codec configuration a decoder needs before the frames: sequence headers, and the
    /// audio channel layout.
    pub fn is_config(&self) -> bool {
        matches!(
            self.packet,
            PacketType::SequenceStart | PacketType::MultichannelConfig
        )
    }
}

/// Parses the header of a tag of `kind` (`None` for data tags, and for tags too short to
/// hold their header).
pub fn parse(kind: FrameKind, payload: &[u8]) -> Option<Tag> {
    match kind {
        FrameKind::Video => parse_video(payload),
        FrameKind::Audio => parse_audio(payload),
        FrameKind::Data => None,
    }
}

const VIDEO_MULTITRACK: u8 = 6;
const AUDIO_MULTITRACK: u8 = 5;
/// `AvMultitrackType::OneTrack`.
const ONE_TRACK: u8 = 0;

fn parse_video(p: &[u8]) -> Option<Tag> {
    let first = *p.first()?;
    if first & crate::codec::VIDEO_EX_HEADER_BIT == 0 {
        let id = first & 0x0f;
        let mut tag = Tag {
            kind: FrameKind::Video,
            codec: Codec::Video(VideoCodec::Flv(id)),
            track: 0,
            frame_type: first >> 4,
            packet: PacketType::CodedFrames,
            composition_ms: 0,
            enhanced: false,
            multitrack: false,
            data_offset: 1,
        };
        if id == FLV_VIDEO_AVC {
            tag.packet = match *p.get(1)? {
                0 => PacketType::SequenceStart,
                1 => PacketType::CodedFrames,
                2 => PacketType::SequenceEnd,
                other => PacketType::Other(other),
            };
            tag.composition_ms = si24(p.get(2..5)?);
            tag.data_offset = 5;
        }
        return Some(tag);
    }
    let frame_type = (first >> 4) & 0x07;
    let (packet_type, cc, track, multitrack, mut offset) = match ex_header(p, VIDEO_MULTITRACK)? {
        ExHeader::ManyTracks(cc) => {
            let codec = Codec::Video(VideoCodec::FourCc(cc));
            return Some(many_tracks(FrameKind::Video, codec, frame_type));
        }
        ExHeader::One {
            packet_type,
            cc,
            track,
            multitrack,
            offset,
        } => (packet_type, cc, track, multitrack, offset),
    };
    let mut composition_ms = 0;
    let packet = match packet_type {
        0 => PacketType::SequenceStart,
        1 => {
            // AVC and HEVC carry a composition time with CodedFrames (not with
            // CodedFramesX, 3); AV1 and VP9 have none.
            if matches!(&cc, b"avc1" | b"hvc1") {
                composition_ms = si24(p.get(offset..offset + 3)?);
                offset += 3;
            }
            PacketType::CodedFrames
        }
        2 => PacketType::SequenceEnd,
        3 => PacketType::CodedFrames,
        4 => PacketType::Metadata,
        other => PacketType::Other(other),
    };
    Some(Tag {
        kind: FrameKind::Video,
        codec: Codec::Video(VideoCodec::FourCc(cc)),
        track,
        frame_type,
        packet,
        composition_ms,
        enhanced: true,
        multitrack,
        data_offset: offset,
    })
}

fn parse_audio(p: &[u8]) -> Option<Tag> {
    let first = *p.first()?;
    let format = first >> 4;
    if format != FLV_AUDIO_EX_HEADER || p.len() < 5 {
        let mut tag = Tag {
            kind: FrameKind::Audio,
            codec: Codec::Audio(AudioCodec::Flv(format)),
            track: 0,
            frame_type: 0,
            packet: PacketType::CodedFrames,
            composition_ms: 0,
            enhanced: false,
            multitrack: false,
            data_offset: 1,
        };
        if format == FLV_AUDIO_AAC {
            tag.packet = match *p.get(1)? {
                0 => PacketType::SequenceStart,
                1 => PacketType::CodedFrames,
                other => PacketType::Other(other),
            };
            tag.data_offset = 2;
        }
        return Some(tag);
    }
    let (packet_type, cc, track, multitrack, offset) = match ex_header(p, AUDIO_MULTITRACK)? {
        ExHeader::ManyTracks(cc) => {
            let codec = Codec::Audio(AudioCodec::FourCc(cc));
            return Some(many_tracks(FrameKind::Audio, codec, 0));
        }
        ExHeader::One {
            packet_type,
            cc,
            track,
            multitrack,
            offset,
        } => (packet_type, cc, track, multitrack, offset),
    };
    let packet = match packet_type {
        0 => PacketType::SequenceStart,
        1 => PacketType::CodedFrames,
        2 => PacketType::SequenceEnd,
        4 => PacketType::MultichannelConfig,
        other => PacketType::Other(other),
    };
    Some(Tag {
        kind: FrameKind::Audio,
        codec: Codec::Audio(AudioCodec::FourCc(cc)),
        track,
        frame_type: 0,
        packet,
        composition_ms: 0,
        enhanced: true,
        multitrack,
        data_offset: offset,
    })
}

/// What follows an Enhanced RTMP tag's first byte, the same for audio and video: the
/// multitrack byte when the packet type is `multitrack_type`, the FourCC, the track id.
enum ExHeader {
    /// Several tracks in the packet (the FourCC, or `????` when each track has its own).
    ManyTracks([u8; 4]),
    One {
        /// The real packet type (inside the multitrack byte for a multitrack packet).
        packet_type: u8,
        cc: [u8; 4],
        track: u8,
        multitrack: bool,
        /// Where what follows the header starts.
        offset: usize,
    },
}

fn ex_header(p: &[u8], multitrack_type: u8) -> Option<ExHeader> {
    let packet_type = *p.first()? & 0x0f;
    if packet_type != multitrack_type {
        return Some(ExHeader::One {
            packet_type,
            cc: fourcc(p, 1)?,
            track: 0,
            multitrack: false,
            offset: 5,
        });
    }
    let mt = *p.get(1)?;
    if mt >> 4 != ONE_TRACK {
        return Some(ExHeader::ManyTracks(fourcc(p, 2).unwrap_or(*b"????")));
    }
    let packet_type = mt & 0x0f;
    if packet_type == multitrack_type {
        // Multitrack inside multitrack: malformed.
        return None;
    }
    Some(ExHeader::One {
        packet_type,
        cc: fourcc(p, 2)?,
        track: *p.get(6)?,
        multitrack: true,
        offset: 7,
    })
}

fn many_tracks(kind: FrameKind, codec: Codec, frame_type: u8) -> Tag {
    Tag {
        kind,
        codec,
        track: 0,
        frame_type,
        packet: PacketType::ManyTracks,
        composition_ms: 0,
        enhanced: true,
        multitrack: true,
        data_offset: 0,
    }
}

fn fourcc(p: &[u8], at: usize) -> Option<[u8; 4]> {
    p.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok())
}

/// A signed 24-bit big-endian number.
fn si24(b: &[u8]) -> i32 {
    match b {
        [a, b, c, ..] => i32::from_be_bytes([*a, *b, *c, 0]) >> 8,
        _ => 0,
    }
}

/// The tag in its most widely understood single-track form, for destinations (and our
/// MPEG-TS muxer) that know one track per kind: a one-track multitrack packet loses its
/// multitrack wrapping, and AAC (`mp4a`) and H.264 (`avc1`) in Enhanced RTMP framing
/// become legacy AAC and AVC tags, which every RTMP server reads. Other codecs stay
/// Enhanced RTMP; legacy tags are returned as they are. `None` for what a legacy stream
/// has no place for (an AAC track's channel-layout packet, H.264 colour metadata: the
/// configuration records already say it) and for several tracks in one packet.
pub fn normalize(kind: FrameKind, payload: &Bytes) -> Option<Bytes> {
    let first = *payload.first()?;
    let Some(tag) = parse(kind, payload) else {
        // Too short for an E-RTMP header, or malformed: not ours to judge.
        return Some(payload.clone());
    };
    if !tag.enhanced {
        return Some(payload.clone());
    }
    if tag.packet == PacketType::ManyTracks {
        return None;
    }
    let data = payload.get(tag.data_offset..)?;
    let mut out = BytesMut::with_capacity(payload.len());
    match tag.codec {
        Codec::Audio(AudioCodec::FourCc(cc)) if &cc == b"mp4a" => {
            let packet = match tag.packet {
                PacketType::SequenceStart => 0,
                PacketType::CodedFrames => 1,
                _ => return None,
            };
            out.put_slice(&[0xaf, packet]);
        }
        Codec::Video(VideoCodec::FourCc(cc)) if &cc == b"avc1" => {
            let packet = match tag.packet {
                PacketType::SequenceStart => 0,
                PacketType::CodedFrames => 1,
                PacketType::SequenceEnd => 2,
                _ => return None,
            };
            out.put_u8((tag.frame_type << 4) | FLV_VIDEO_AVC);
            out.put_u8(packet);
            out.put_slice(&tag.composition_ms.to_be_bytes()[1..]);
        }
        _ if !tag.multitrack => return Some(payload.clone()),
        Codec::Video(VideoCodec::FourCc(cc)) => {
            // Multitrack layout: [first][mt][fourcc][track][rest...]; `rest` keeps the
            // composition time where the packet type has one.
            let inner = payload.get(1)? & 0x0f;
            out.put_u8((first & 0xf0) | inner);
            out.put_slice(&cc);
            out.put_slice(payload.get(7..)?);
            return Some(out.freeze());
        }
        Codec::Audio(AudioCodec::FourCc(cc)) => {
            let inner = payload.get(1)? & 0x0f;
            out.put_u8((FLV_AUDIO_EX_HEADER << 4) | inner);
            out.put_slice(&cc);
            out.put_slice(payload.get(7..)?);
            return Some(out.freeze());
        }
        _ => return Some(payload.clone()),
    }
    out.put_slice(data);
    Some(out.freeze())
}

/// An Enhanced RTMP packet carrying several tracks (`ManyTracks`, or
/// `ManyTracksManyCodecs`) split into one one-track multitrack packet per track, so that
/// every track travels, is cached and is chosen on its own. Any other tag is returned as
/// it is (one element). A malformed packet gives what could be read of it.
pub fn split_tracks(kind: FrameKind, payload: &Bytes) -> Vec<Bytes> {
    let Some(tag) = parse(kind, payload) else {
        return vec![payload.clone()];
    };
    if tag.packet != PacketType::ManyTracks {
        return vec![payload.clone()];
    }
    let (Some(&first), Some(&mt)) = (payload.first(), payload.get(1)) else {
        return Vec::new();
    };
    let inner = mt & 0x0f;
    let nested = match kind {
        FrameKind::Video => VIDEO_MULTITRACK,
        _ => AUDIO_MULTITRACK,
    };
    if inner == nested {
        // Multitrack inside multitrack: malformed.
        return Vec::new();
    }
    let many_codecs = mt >> 4 == 2;
    let mut pos = 2;
    let mut shared = [0u8; 4];
    if !many_codecs {
        let Some(cc) = fourcc(payload, pos) else {
            return Vec::new();
        };
        shared = cc;
        pos += 4;
    }
    let mut out = Vec::new();
    // At most 256 tracks (8-bit ids); each one's bytes are sliced, not copied twice.
    while pos < payload.len() && out.len() < 256 {
        let cc = if many_codecs {
            let Some(cc) = fourcc(payload, pos) else {
                break;
            };
            pos += 4;
            cc
        } else {
            shared
        };
        let (Some(&track), Some(size)) = (
            payload.get(pos),
            payload
                .get(pos + 1..pos + 4)
                .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])),
        ) else {
            break;
        };
        pos += 4;
        let Some(data) = payload.get(pos..pos + size) else {
            break;
        };
        pos += size;
        let mut one = BytesMut::with_capacity(7 + size);
        one.put_u8(first);
        one.put_u8(inner); // OneTrack << 4 | the packet type
        one.put_slice(&cc);
        one.put_u8(track);
        one.put_slice(data);
        out.push(one.freeze());
    }
    out
}

/// The codec a tag has once [`normalize`]d: AAC and H.264 in Enhanced RTMP framing are
/// legacy AAC and H.264.
pub fn normalized_codec(codec: Codec) -> Codec {
    match codec {
        Codec::Audio(AudioCodec::FourCc(cc)) if &cc == b"mp4a" => {
            Codec::Audio(AudioCodec::Flv(FLV_AUDIO_AAC))
        }
        Codec::Video(VideoCodec::FourCc(cc)) if &cc == b"avc1" => {
            Codec::Video(VideoCodec::Flv(FLV_VIDEO_AVC))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Tag headers as ffmpeg 9 writes them (the first bytes of real tags).
    #[test]
    fn parses_the_tags_ffmpeg_9_sends() {
        // HEVC sequence start (keyframe), coded keyframe with CTS 67, inter CodedFramesX.
        let seq = parse(FrameKind::Video, &hex("906876633101016000")).unwrap();
        assert_eq!(seq.codec, Codec::Video(VideoCodec::FourCc(*b"hvc1")));
        assert!(seq.is_keyframe() && seq.is_config());
        assert_eq!(seq.data_offset, 5);
        let key = parse(FrameKind::Video, &hex("9168766331000043000012")).unwrap();
        assert!(key.is_keyframe() && !key.is_config());
        assert_eq!(
            (key.packet, key.composition_ms, key.data_offset),
            (PacketType::CodedFrames, 67, 8)
        );
        let inter = parse(FrameKind::Video, &hex("a368766331000001de")).unwrap();
        assert_eq!(
            (inter.frame_type, inter.packet, inter.data_offset),
            (2, PacketType::CodedFrames, 5)
        );
        let meta = parse(FrameKind::Video, &hex("d468766331020009")).unwrap();
        assert_eq!((meta.frame_type, meta.packet), (5, PacketType::Metadata));
        // A second AAC track: one-track multitrack, track 1.
        let asc = parse(FrameKind::Audio, &hex("95006d70346101118856e500")).unwrap();
        assert_eq!(asc.codec, Codec::Audio(AudioCodec::FourCc(*b"mp4a")));
        assert_eq!(
            (asc.track, asc.packet, asc.data_offset),
            (1, PacketType::SequenceStart, 7)
        );
        let layout = parse(FrameKind::Audio, &hex("95046d70346101010100000004")).unwrap();
        assert_eq!(layout.packet, PacketType::MultichannelConfig);
        // Opus, plain E-RTMP.
        let opus = parse(FrameKind::Audio, &hex("914f707573f872")).unwrap();
        assert_eq!((opus.track, opus.packet), (0, PacketType::CodedFrames));
        // Legacy AVC and AAC.
        let avc = parse(FrameKind::Video, &hex("1701000043")).unwrap();
        assert_eq!(
            (avc.frame_type, avc.composition_ms, avc.enhanced),
            (1, 67, false)
        );
        let aac = parse(FrameKind::Audio, &hex("af00")).unwrap();
        assert!(aac.is_config() && !aac.enhanced);
        // Too short for the header.
        assert_eq!(parse(FrameKind::Video, &hex("9068")), None);
        assert_eq!(parse(FrameKind::Video, &hex("17")), None);
        assert_eq!(parse(FrameKind::Data, &hex("02")), None);
        // Several tracks in one packet: named, not split.
        let many = parse(FrameKind::Audio, &hex("95104f707573")).unwrap();
        assert_eq!(many.packet, PacketType::ManyTracks);
    }

    #[test]
    fn packets_of_several_tracks_are_split_one_per_track() {
        let b = |s: &str| Bytes::from(hex(s));
        // Audio ManyTracks, Opus: track 1 (2 bytes), track 2 (1 byte).
        let packet = b("95114f70757301000002aabb02000001cc");
        assert_eq!(
            split_tracks(FrameKind::Audio, &packet),
            [b("95014f70757301aabb"), b("95014f70757302cc")]
        );
        // Video ManyTracksManyCodecs: an hvc1 track and an av01 track.
        let packet = b("a621687663310100000500000000116176303102000001ee");
        let parts = split_tracks(FrameKind::Video, &packet);
        assert_eq!(parts.len(), 2, "{parts:?}");
        let tag = parse(FrameKind::Video, &parts[0]).unwrap();
        assert_eq!(
            (tag.track, tag.packet, tag.composition_ms),
            (1, PacketType::CodedFrames, 0)
        );
        let tag = parse(FrameKind::Video, &parts[1]).unwrap();
        assert_eq!(
            (tag.track, tag.codec),
            (2, Codec::Video(VideoCodec::FourCc(*b"av01")))
        );
        // A size past the end: what was whole is kept.
        let cut = b("95114f70757301000002aabb02000009cc");
        assert_eq!(
            split_tracks(FrameKind::Audio, &cut),
            [b("95014f70757301aabb")]
        );
        // Anything else: as it is.
        let one = b("95014f70757301aabb");
        assert_eq!(
            split_tracks(FrameKind::Audio, &one),
            std::slice::from_ref(&one)
        );
    }

    #[test]
    fn a_second_track_becomes_a_single_track_tag() {
        let b = |s: &str| Bytes::from(hex(s));
        // AAC track 1 → legacy AAC.
        assert_eq!(
            normalize(FrameKind::Audio, &b("95006d70346101118856e500")).unwrap(),
            b("af00118856e500")
        );
        assert_eq!(
            normalize(FrameKind::Audio, &b("95016d70346101dc00")).unwrap(),
            b("af01dc00")
        );
        assert_eq!(normalize(FrameKind::Audio, &b("95046d703461010101")), None);
        // Plain E-RTMP AAC and H.264 → legacy; the CTS moves to the AVC header.
        assert_eq!(
            normalize(FrameKind::Audio, &b("916d7034611234")).unwrap(),
            b("af011234")
        );
        assert_eq!(
            normalize(FrameKind::Video, &b("916176633100004300aa")).unwrap(),
            b("170100004300aa")
        );
        assert_eq!(
            normalize(FrameKind::Video, &b("a3617663315566")).unwrap(),
            b("27010000005566")
        );
        // Opus track 1 → plain E-RTMP Opus.
        assert_eq!(
            normalize(FrameKind::Audio, &b("95014f70757301f872")).unwrap(),
            b("914f707573f872")
        );
        // Video track 2, inter CodedFramesX.
        assert_eq!(
            normalize(FrameKind::Video, &b("a6036876633102aabb")).unwrap(),
            b("a368766331aabb")
        );
        // Several tracks in one packet: no single-track form.
        assert_eq!(normalize(FrameKind::Audio, &b("95104f707573")), None);
        // Anything else unchanged.
        for (kind, same) in [
            (FrameKind::Audio, "af01dc00"),
            (FrameKind::Audio, "914f707573f872"),
            (FrameKind::Video, "1701000043"),
            (FrameKind::Video, "916876633100004300aa"),
        ] {
            let v = b(same);
            assert_eq!(normalize(kind, &v).unwrap(), v);
        }
        assert_eq!(
            normalized_codec(Codec::Audio(AudioCodec::FourCc(*b"mp4a"))),
            Codec::Audio(AudioCodec::Flv(FLV_AUDIO_AAC))
        );
    }
}
