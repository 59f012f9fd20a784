//! The one table of codec identities and names.
//!
//! A frame names its codec in its first byte(s): legacy FLV puts a `CodecID` in the low
//! nibble of a video tag's first byte and a `SoundFormat` in the high nibble of an audio
//! tag's; Enhanced RTMP sets a flag there instead (video: the `IsExHeader` bit; audio:
//! `SoundFormat` 9) and names the codec with a FourCC in the next four bytes. Error
//! messages, track rules and logs all take their names from here.

use std::fmt;

/// FLV `CodecID` of H.264/AVC.
pub const FLV_VIDEO_AVC: u8 = 7;
/// FLV `SoundFormat` of AAC.
pub const FLV_AUDIO_AAC: u8 = 10;
/// FLV `SoundFormat` 9: Enhanced RTMP's `ExHeader` (a FourCC follows).
pub const FLV_AUDIO_EX_HEADER: u8 = 9;
/// Enhanced RTMP's `IsExHeader` bit in the first byte of a video tag.
pub const VIDEO_EX_HEADER_BIT: u8 = 0x80;

/// A video codec as the source named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// Legacy FLV `CodecID` (low nibble of the first tag byte).
    Flv(u8),
    /// Enhanced RTMP FourCC (`hvc1`, `av01`, `vp09`, `avc1`).
    FourCc([u8; 4]),
}

/// An audio codec as the source named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    /// Legacy FLV `SoundFormat` (high nibble of the first tag byte).
    Flv(u8),
    /// Enhanced RTMP audio FourCC (`Opus`, `fLaC`, `ac-3`, `ec-3`, `.mp3`, `mp4a`).
    FourCc([u8; 4]),
}

impl VideoCodec {
    /// The codec named by the first bytes of a video tag; `None` for an empty tag.
    pub fn of_tag(payload: &[u8]) -> Option<VideoCodec> {
        let first = *payload.first()?;
        if first & VIDEO_EX_HEADER_BIT != 0
            && let Some(cc) = fourcc_at(payload)
        {
            return Some(VideoCodec::FourCc(cc));
        }
        Some(VideoCodec::Flv(first & 0x0f))
    }

    /// The codec's common name, if it is one we know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            VideoCodec::Flv(id) => match id {
                1 => "JPEG",
                2 => "Sorenson H.263",
                3 => "Screen Video",
                4 => "On2 VP6",
                5 => "On2 VP6 with alpha",
                6 => "Screen Video v2",
                FLV_VIDEO_AVC => "H.264",
                12 => "HEVC (non-standard FLV id 12)",
                _ => return None,
            },
            VideoCodec::FourCc(cc) => match &cc {
                b"hvc1" => "HEVC",
                b"av01" => "AV1",
                b"vp09" => "VP9",
                b"avc1" => "H.264 in Enhanced RTMP framing",
                _ => return None,
            },
        })
    }

    /// The name with the id the source used, for messages an operator acts on:
    /// `On2 VP6 (FLV codec id 4)`, `HEVC (Enhanced RTMP FourCC 'hvc1')`.
    pub fn with_id(self) -> impl fmt::Display {
        WithId(self.name(), self.id())
    }

    fn id(self) -> Id {
        match self {
            VideoCodec::Flv(id) => Id::Flv("FLV codec id", id),
            VideoCodec::FourCc(cc) => Id::FourCc(cc),
        }
    }
}

impl AudioCodec {
    /// The codec named by the first bytes of an audio tag; `None` for an empty tag.
    pub fn of_tag(payload: &[u8]) -> Option<AudioCodec> {
        let format = *payload.first()? >> 4;
        if format == FLV_AUDIO_EX_HEADER
            && let Some(cc) = fourcc_at(payload)
        {
            return Some(AudioCodec::FourCc(cc));
        }
        Some(AudioCodec::Flv(format))
    }

    /// The codec's common name, if it is one we know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            AudioCodec::Flv(format) => match format {
                0 => "Linear PCM (platform endian)",
                1 => "ADPCM",
                2 => "MP3",
                3 => "Linear PCM (little endian)",
                4 => "Nellymoser 16 kHz mono",
                5 => "Nellymoser 8 kHz mono",
                6 => "Nellymoser",
                7 => "G.711 A-law",
                8 => "G.711 mu-law",
                FLV_AUDIO_AAC => "AAC",
                11 => "Speex",
                14 => "MP3 8 kHz",
                15 => "Device-specific sound",
                _ => return None,
            },
            AudioCodec::FourCc(cc) => match &cc {
                b"Opus" => "Opus",
                b"fLaC" => "FLAC",
                b"ac-3" => "AC-3",
                b"ec-3" => "E-AC-3",
                b".mp3" => "MP3",
                b"mp4a" => "AAC in Enhanced RTMP framing",
                _ => return None,
            },
        })
    }

    /// The name with the id the source used: `MP3 (FLV sound format 2)`.
    pub fn with_id(self) -> impl fmt::Display {
        WithId(self.name(), self.id())
    }

    fn id(self) -> Id {
        match self {
            AudioCodec::Flv(format) => Id::Flv("FLV sound format", format),
            AudioCodec::FourCc(cc) => Id::FourCc(cc),
        }
    }
}

/// The plain name: `H.264`, or `unknown video codec 15` when the id is not in the table.
impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.id()) {
            (Some(name), _) => f.write_str(name),
            (None, Id::Flv(_, id)) => write!(f, "unknown video codec {id}"),
            (None, Id::FourCc(cc)) => write!(f, "unknown video codec '{}'", printable(cc)),
        }
    }
}

/// The plain name: `AAC`, or `unknown audio format 13` when the id is not in the table.
impl fmt::Display for AudioCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.id()) {
            (Some(name), _) => f.write_str(name),
            (None, Id::Flv(_, id)) => write!(f, "unknown audio format {id}"),
            (None, Id::FourCc(cc)) => write!(f, "unknown audio codec '{}'", printable(cc)),
        }
    }
}

/// The FourCC of an Enhanced RTMP tag: bytes 1..5.
fn fourcc_at(payload: &[u8]) -> Option<[u8; 4]> {
    payload.get(1..5).and_then(|b| <[u8; 4]>::try_from(b).ok())
}

#[derive(Clone, Copy)]
enum Id {
    Flv(&'static str, u8),
    FourCc([u8; 4]),
}

struct WithId(Option<&'static str>, Id);

impl fmt::Display for WithId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0.unwrap_or("unknown");
        match self.1 {
            Id::Flv(what, id) => write!(f, "{name} ({what} {id})"),
            Id::FourCc(cc) => write!(f, "{name} (Enhanced RTMP FourCC '{}')", printable(cc)),
        }
    }
}

/// A FourCC for logs and `lastError`: bytes outside printable ASCII become `?`, so a
/// hostile source cannot put control characters there.
pub fn printable(cc: [u8; 4]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_ids() {
        assert_eq!(VideoCodec::Flv(4).to_string(), "On2 VP6");
        assert_eq!(
            VideoCodec::Flv(4).with_id().to_string(),
            "On2 VP6 (FLV codec id 4)"
        );
        assert_eq!(VideoCodec::Flv(15).to_string(), "unknown video codec 15");
        assert_eq!(
            VideoCodec::FourCc(*b"hvc1").with_id().to_string(),
            "HEVC (Enhanced RTMP FourCC 'hvc1')"
        );
        assert_eq!(
            AudioCodec::Flv(2).with_id().to_string(),
            "MP3 (FLV sound format 2)"
        );
        assert_eq!(AudioCodec::Flv(13).to_string(), "unknown audio format 13");
        let hostile = AudioCodec::FourCc([b'O', 0, 0x1b, b's']);
        assert_eq!(hostile.to_string(), "unknown audio codec 'O??s'");
        assert!(hostile.with_id().to_string().contains("'O??s'"));
    }

    /// The names are the contract of `lastError` and the refusal messages: every FLV id
    /// and every FourCC we know, and nothing else.
    #[test]
    fn the_name_table() {
        let video: Vec<_> = (0..16).map(|id| VideoCodec::Flv(id).name()).collect();
        assert_eq!(
            video,
            [
                None,
                Some("JPEG"),
                Some("Sorenson H.263"),
                Some("Screen Video"),
                Some("On2 VP6"),
                Some("On2 VP6 with alpha"),
                Some("Screen Video v2"),
                Some("H.264"),
                None,
                None,
                None,
                None,
                Some("HEVC (non-standard FLV id 12)"),
                None,
                None,
                None,
            ]
        );
        let audio: Vec<_> = (0..16).map(|id| AudioCodec::Flv(id).name()).collect();
        assert_eq!(
            audio,
            [
                Some("Linear PCM (platform endian)"),
                Some("ADPCM"),
                Some("MP3"),
                Some("Linear PCM (little endian)"),
                Some("Nellymoser 16 kHz mono"),
                Some("Nellymoser 8 kHz mono"),
                Some("Nellymoser"),
                Some("G.711 A-law"),
                Some("G.711 mu-law"),
                None,
                Some("AAC"),
                Some("Speex"),
                None,
                None,
                Some("MP3 8 kHz"),
                Some("Device-specific sound"),
            ]
        );
        let video_cc = |cc: &[u8; 4]| VideoCodec::FourCc(*cc).name();
        assert_eq!(
            [b"hvc1", b"av01", b"vp09", b"avc1", b"hev1"].map(video_cc),
            [
                Some("HEVC"),
                Some("AV1"),
                Some("VP9"),
                Some("H.264 in Enhanced RTMP framing"),
                None
            ]
        );
        let audio_cc = |cc: &[u8; 4]| AudioCodec::FourCc(*cc).name();
        assert_eq!(
            [
                b"Opus", b"fLaC", b"ac-3", b"ec-3", b".mp3", b"mp4a", b"opus"
            ]
            .map(audio_cc),
            [
                Some("Opus"),
                Some("FLAC"),
                Some("AC-3"),
                Some("E-AC-3"),
                Some("MP3"),
                Some("AAC in Enhanced RTMP framing"),
                None
            ]
        );
    }

    #[test]
    fn codecs_of_tags() {
        assert_eq!(VideoCodec::of_tag(&[0x17, 0]), Some(VideoCodec::Flv(7)));
        // A legacy tag long enough to hold a FourCC is still legacy: only the ExHeader
        // bit says otherwise (an AVC sequence header: 0x17 0x00 then the CTS).
        assert_eq!(
            VideoCodec::of_tag(&[0x17, 0, 0, 0, 0, 1]),
            Some(VideoCodec::Flv(7))
        );
        assert_eq!(
            VideoCodec::of_tag(&[0x80, 0, 0, 0, 0]),
            Some(VideoCodec::FourCc([0; 4]))
        );
        assert_eq!(
            VideoCodec::of_tag(&[0x90, b'h', b'v', b'c', b'1']),
            Some(VideoCodec::FourCc(*b"hvc1"))
        );
        assert_eq!(VideoCodec::of_tag(&[]), None);
        assert_eq!(AudioCodec::of_tag(&[0xaf, 1]), Some(AudioCodec::Flv(10)));
        assert_eq!(
            AudioCodec::of_tag(&[0x90, b'O', b'p', b'u', b's']),
            Some(AudioCodec::FourCc(*b"Opus"))
        );
        // An ExHeader too short to hold its FourCC names the FLV format.
        assert_eq!(AudioCodec::of_tag(&[0x90, b'O']), Some(AudioCodec::Flv(9)));
    }
}
