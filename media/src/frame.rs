//! Media frames as they travel from ingest to the push sessions.
//!
//! A frame is parsed once at ingest and shared by every session as refcounted [`Bytes`]:
//! fanning out to N destinations clones N pointers, never the payload.

use bytes::Bytes;

use crate::tag::{self, Tag};

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Video,
    Audio,
    /// AMF data (`onMetaData` and friends), as in an FLV script tag.
    Data,
}

/// One media frame, in FLV terms: `payload` is the body of an FLV tag / RTMP message of
/// type 8 (audio), 9 (video) or 18 (data), starting with the FLV codec header byte(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// Decode timestamp in milliseconds, as on the RTMP message (32-bit, may wrap).
    pub timestamp_ms: u32,
    pub payload: Bytes,
}

impl Frame {
    /// The parsed tag header (legacy or Enhanced RTMP); `None` for data frames and for
    /// tags too short to hold one.
    pub fn tag(&self) -> Option<Tag> {
        tag::parse(self.kind, &self.payload)
    }

    /// Video codec id of a legacy FLV video tag (7 = AVC/H.264), if this is a video frame.
    /// Enhanced RTMP tags name their codec with a FourCC: see [`Frame::tag`].
    pub fn video_codec(&self) -> Option<u8> {
        match self.kind {
            FrameKind::Video => self.payload.first().map(|b| b & 0x0f),
            _ => None,
        }
    }

    /// Audio format of a legacy FLV audio tag (10 = AAC; 9 = Enhanced RTMP), if this is an
    /// audio frame.
    pub fn audio_format(&self) -> Option<u8> {
        match self.kind {
            FrameKind::Audio => self.payload.first().map(|b| b >> 4),
            _ => None,
        }
    }

    /// A video keyframe (frame type 1), legacy or Enhanced RTMP.
    pub fn is_keyframe(&self) -> bool {
        self.kind == FrameKind::Video && self.tag().is_some_and(|t| t.is_keyframe())
    }

    /// A codec configuration record (AVC/HEVC/AV1 sequence header, AAC
    /// AudioSpecificConfig, OpusHead, an E-RTMP channel layout), of any track. Decoders
    /// need it before any other frame.
    pub fn is_sequence_header(&self) -> bool {
        self.tag().is_some_and(|t| t.is_config())
    }

    /// Composition time offset (PTS - DTS) in milliseconds, signed 24-bit: AVC and HEVC
    /// coded frames; 0 otherwise.
    pub fn composition_offset_ms(&self) -> i32 {
        self.tag().map_or(0, |t| t.composition_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(bytes: &[u8]) -> Frame {
        Frame {
            kind: FrameKind::Video,
            timestamp_ms: 0,
            payload: Bytes::copy_from_slice(bytes),
        }
    }

    #[test]
    fn classifies_flv_video_headers() {
        let seq = video(&[0x17, 0, 0, 0, 0, 1]);
        assert!(seq.is_keyframe() && seq.is_sequence_header());
        let inter = video(&[0x27, 1, 0xff, 0xff, 0xfe]);
        assert!(!inter.is_keyframe() && !inter.is_sequence_header());
        assert_eq!(inter.composition_offset_ms(), -2);
        assert_eq!(video(&[0x17, 1, 0, 0, 40]).composition_offset_ms(), 40);
        // Big-endian, all three bytes, the largest positive and negative values.
        assert_eq!(video(&[0x17, 1, 1, 2, 3]).composition_offset_ms(), 0x010203);
        assert_eq!(
            video(&[0x17, 1, 0x7f, 0xff, 0xff]).composition_offset_ms(),
            0x7fffff
        );
        assert_eq!(
            video(&[0x17, 1, 0x80, 0, 0]).composition_offset_ms(),
            -0x800000
        );
        // Only AVC carries one.
        assert_eq!(video(&[0x12, 1, 0, 0, 40]).composition_offset_ms(), 0);
        assert_eq!(video(&[]).composition_offset_ms(), 0);
    }

    #[test]
    fn classifies_aac() {
        let asc = Frame {
            kind: FrameKind::Audio,
            timestamp_ms: 0,
            payload: Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
        };
        assert!(asc.is_sequence_header());
        assert_eq!(asc.audio_format(), Some(10));
    }
}
