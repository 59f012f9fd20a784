//! Errors of the TS muxer, typed so the caller can tell "this stream can never be muxed"
//! (an unsupported codec: put the task in `error` with a clear lastError) from "this one
//! frame was broken" (a malformed tag: skip it, count it, keep going).

use std::fmt;

/// A video codec as the source named it, for error messages an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// Legacy FLV `CodecID` (low nibble of the first tag byte).
    Flv(u8),
    /// Enhanced RTMP FourCC (`hvc1`, `av01`, `vp09`, ...).
    FourCc([u8; 4]),
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VideoCodec::Flv(id) => {
                let name = match id {
                    2 => "Sorenson H.263",
                    3 => "Screen Video",
                    4 => "On2 VP6",
                    5 => "On2 VP6 with alpha",
                    6 => "Screen Video v2",
                    7 => "H.264/AVC",
                    12 => "HEVC (non-standard FLV id)",
                    _ => "unknown",
                };
                write!(f, "{name} (FLV codec id {id})")
            }
            VideoCodec::FourCc(cc) => {
                let name = match &cc {
                    b"hvc1" => "HEVC",
                    b"av01" => "AV1",
                    b"vp09" => "VP9",
                    b"avc1" => "H.264/AVC in enhanced-RTMP framing",
                    _ => "unknown",
                };
                write!(f, "{name} (enhanced RTMP FourCC '{}')", fourcc(cc))
            }
        }
    }
}

/// An audio codec as the source named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// Legacy FLV `SoundFormat` (high nibble of the first tag byte).
    Flv(u8),
    /// Enhanced RTMP (v2) audio FourCC (`Opus`, `fLaC`, `ac-3`, ...).
    FourCc([u8; 4]),
}

impl fmt::Display for AudioCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AudioCodec::Flv(id) => {
                let name = match id {
                    0 => "Linear PCM (platform endian)",
                    1 => "ADPCM",
                    2 => "MP3",
                    3 => "Linear PCM (little endian)",
                    4 => "Nellymoser 16 kHz mono",
                    5 => "Nellymoser 8 kHz mono",
                    6 => "Nellymoser",
                    7 => "G.711 A-law",
                    8 => "G.711 mu-law",
                    10 => "AAC",
                    11 => "Speex",
                    14 => "MP3 8 kHz",
                    15 => "device-specific sound",
                    _ => "unknown",
                };
                write!(f, "{name} (FLV sound format {id})")
            }
            AudioCodec::FourCc(cc) => {
                let name = match &cc {
                    b"Opus" => "Opus",
                    b"fLaC" => "FLAC",
                    b"ac-3" => "AC-3",
                    b"ec-3" => "E-AC-3",
                    b".mp3" => "MP3",
                    b"mp4a" => "AAC in enhanced-RTMP framing",
                    _ => "unknown",
                };
                write!(f, "{name} (enhanced RTMP FourCC '{}')", fourcc(cc))
            }
        }
    }
}

/// Printable FourCC: bytes outside ASCII graphic range are shown as `?` so a hostile
/// source cannot put control characters into logs or lastError.
fn fourcc(cc: [u8; 4]) -> String {
    cc.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// Why a frame could not be muxed.
///
/// [`MuxError::is_unsupported`] errors are permanent for the stream (the same codec comes
/// again with every frame); the others concern one frame or one sequence header, leave
/// the muxer consistent (nothing of the failed frame was written) and the caller may
/// skip the frame and continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("unsupported video codec for MPEG-TS output: {0}; only H.264/AVC is supported")]
    UnsupportedVideoCodec(VideoCodec),
    #[error("unsupported audio codec for MPEG-TS output: {0}; only AAC is supported")]
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
            e.to_string().contains("HEVC (enhanced RTMP FourCC 'hvc1')"),
            "{e}"
        );
        let e = MuxError::UnsupportedAudioCodec(AudioCodec::Flv(2));
        assert!(e.to_string().contains("MP3 (FLV sound format 2)"), "{e}");
        let e = MuxError::UnsupportedAudioCodec(AudioCodec::FourCc([b'O', 0, 0x1b, b's']));
        assert!(e.to_string().contains("'O??s'"), "{e}");
        assert!(!MuxError::MalformedVideoFrame("x").is_unsupported());
    }
}
