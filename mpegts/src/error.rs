//! Errors of the TS muxer, typed so the caller can tell "this stream can never be muxed"
//! (an unsupported codec: put the task in `error` with a clear lastError) from "this one
//! frame was broken" (a malformed tag: skip it, count it, keep going).

use pushcast_media::{AudioCodec, VideoCodec};

/// Why a frame could not be muxed.
///
/// [`MuxError::is_unsupported`] errors are permanent for the stream (the same codec comes
/// again with every frame); the others concern one frame or one sequence header, leave
/// the muxer consistent (nothing of the failed frame was written) and the caller may
/// skip the frame and continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error(
        "unsupported video codec for MPEG-TS output: {}; only H.264/AVC is supported",
        .0.with_id()
    )]
    UnsupportedVideoCodec(VideoCodec),
    #[error(
        "unsupported audio codec for MPEG-TS output: {}; only AAC is supported",
        .0.with_id()
    )]
    UnsupportedAudioCodec(AudioCodec),
    /// AAC, but in a configuration ADTS cannot describe (object type, explicit rate, PCE).
    #[error("unsupported AAC configuration for MPEG-TS (ADTS) output: {0}")]
    UnsupportedAacConfig(String),
    #[error("malformed AVC sequence header: {0}")]
    MalformedAvcConfig(&'static str),
    #[error("malformed H.264 frame: {0}")]
    MalformedVideoFrame(&'static str),
    #[error("malformed AAC AudioSpecificConfig: {0}")]
    MalformedAacConfig(&'static str),
    #[error("malformed AAC frame: {0}")]
    MalformedAudioFrame(&'static str),
    /// The packet writer refused a packet: a bug in the muxer, not in the input.
    #[error("MPEG-TS packetizer failed: {0}")]
    Packetizer(String),
}

impl MuxError {
    /// The stream's codec (or codec configuration) cannot be carried in MPEG-TS by this
    /// muxer: retrying will not help, the task should go to `error` with this message.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            MuxError::UnsupportedVideoCodec(_)
                | MuxError::UnsupportedAudioCodec(_)
                | MuxError::UnsupportedAacConfig(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_codec() {
        let e = MuxError::UnsupportedVideoCodec(VideoCodec::Flv(4));
        assert!(e.is_unsupported());
        assert!(e.to_string().contains("On2 VP6 (FLV codec id 4)"), "{e}");
        let e = MuxError::UnsupportedVideoCodec(VideoCodec::FourCc(*b"hvc1"));
        assert!(
            e.to_string().contains("HEVC (Enhanced RTMP FourCC 'hvc1')"),
            "{e}"
        );
        let e = MuxError::UnsupportedAudioCodec(AudioCodec::Flv(2));
        assert!(e.to_string().contains("MP3 (FLV sound format 2)"), "{e}");
        let e = MuxError::UnsupportedAudioCodec(AudioCodec::FourCc([b'O', 0, 0x1b, b's']));
        assert!(e.to_string().contains("'O??s'"), "{e}");
        assert!(!MuxError::MalformedVideoFrame("x").is_unsupported());
    }
}
