//! Track selection: which tracks of a source stream a push sends (pure rules, no I/O).
//!
//! The rules are the spec's ("Tracks" in `rest-push-api.md`):
//! - An RTMP ingest has at most two tracks, named like OME's bypass outputs:
//!   [`VIDEO_TRACK_NAME`] (id [`VIDEO_TRACK_ID`]) and [`AUDIO_TRACK_NAME`]
//!   (id [`AUDIO_TRACK_ID`]). AMF data (`onMetaData`) has no track of its own: it travels
//!   with whatever is selected.
//! - Enhanced RTMP multitrack tracks n ≥ 1 are `bypass_video_n` / `bypass_audio_n`, ids
//!   101 / 102 + 10·n ([`track_id_and_name`]).
//! - With no selection: the first video and the first audio track, for every protocol
//!   (OME documents this for rtmp but never implemented it; for mpegts/srt the spec says
//!   all tracks, which was the same for a legacy RTMP source, and our muxer writes one
//!   video and one audio PID).
//! - With a selection (`trackIds` and/or `variantNames`): a track is kept when its id or
//!   its name is listed. Entries that match nothing are ignored as long as something
//!   matches (a client may list the names of several deployments).
//! - A selection that matches nothing, or a kept track whose codec the protocol cannot
//!   carry, is a [`TrackError`] whose message is meant for the task's `lastError`; the
//!   session goes to `error` instead of sending a stream the destination cannot decode.
//!
//! What each protocol carries: RTMP carries H.264/AAC and the legacy FLV codecs (the FLV
//! spec's video codec ids 2–7 and sound formats except the reserved ones); our MPEG-TS
//! muxer (mpegts and srt) carries H.264 and AAC only.

use std::fmt;

use pushcast_proto::model::{Protocol, StreamSelector};

use pushcast_media::codec::{FLV_AUDIO_AAC, FLV_VIDEO_AVC};
use pushcast_media::{
    AudioCodec, Codec, Frame, FrameKind, PacketType, VideoCodec, normalize, normalized_codec,
};

/// Id of the video track of an RTMP ingest.
pub const VIDEO_TRACK_ID: i64 = 101;
/// Name (variant name) of the video track of an RTMP ingest.
pub const VIDEO_TRACK_NAME: &str = "bypass_video";
/// Id of the audio track of an RTMP ingest.
pub const AUDIO_TRACK_ID: i64 = 102;
/// Name (variant name) of the audio track of an RTMP ingest.
pub const AUDIO_TRACK_NAME: &str = "bypass_audio";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

/// The codec of a track, as the source names it (names come from the one codec table,
/// [`pushcast_media::codec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackCodec {
    Video(VideoCodec),
    Audio(AudioCodec),
}

impl TrackCodec {
    pub fn kind(self) -> TrackKind {
        match self {
            TrackCodec::Video(_) => TrackKind::Video,
            TrackCodec::Audio(_) => TrackKind::Audio,
        }
    }

    /// Whether a push over `protocol` can carry this codec.
    pub fn carried_by(self, protocol: Protocol) -> bool {
        match protocol {
            // The legacy FLV codecs an RTMP destination can be handed as they came in.
            // Reserved/undefined ids (and the non-standard HEVC id 12) are refused: a
            // destination would drop or misparse them.
            // Enhanced RTMP codecs we can name (HEVC, AV1, VP9, Opus, FLAC, AC-3, E-AC-3,
            // MP3) go out in E-RTMP framing, as OBS sends them: a destination that
            // refuses them says so (its answer becomes `lastError`).
            Protocol::Rtmp => match self {
                TrackCodec::Video(VideoCodec::Flv(id)) => (2..=FLV_VIDEO_AVC).contains(&id),
                TrackCodec::Audio(AudioCodec::Flv(format)) => {
                    matches!(format, 0..=8 | FLV_AUDIO_AAC | 11 | 14)
                }
                TrackCodec::Video(c @ VideoCodec::FourCc(_)) => c.name().is_some(),
                TrackCodec::Audio(c @ AudioCodec::FourCc(_)) => c.name().is_some(),
            },
            // Our MPEG-TS muxer writes H.264 and HEVC (Annex-B), AAC (ADTS) and Opus.
            Protocol::Mpegts | Protocol::Srt => match self {
                TrackCodec::Video(VideoCodec::Flv(FLV_VIDEO_AVC))
                | TrackCodec::Audio(AudioCodec::Flv(FLV_AUDIO_AAC)) => true,
                TrackCodec::Video(VideoCodec::FourCc(cc)) => &cc == b"hvc1",
                TrackCodec::Audio(AudioCodec::FourCc(cc)) => &cc == b"Opus",
                _ => false,
            },
        }
    }
}

impl fmt::Display for TrackCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackCodec::Video(c) => c.fmt(f),
            TrackCodec::Audio(c) => c.fmt(f),
        }
    }
}

/// One track of a source stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceTrack {
    pub id: i64,
    pub name: String,
    /// Its Enhanced RTMP track number (0: the legacy / first track).
    pub track: u8,
    pub codec: TrackCodec,
}

impl SourceTrack {
    pub fn kind(&self) -> TrackKind {
        self.codec.kind()
    }
}

impl fmt::Display for SourceTrack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {}, {})", self.name, self.id, self.codec)
    }
}

/// A track as the hub saw it: its kind, its Enhanced RTMP track number (0 for legacy
/// and plain E-RTMP tags) and the codec of its latest frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeenTrack {
    pub kind: FrameKind,
    pub track: u8,
    pub codec: Codec,
}

/// The id and name of track `n` of a kind: track 0 is OME's `bypass_video` (101) /
/// `bypass_audio` (102); Enhanced RTMP multitrack track n is `bypass_video_n` /
/// `bypass_audio_n`, id 101 / 102 + 10·n.
pub fn track_id_and_name(kind: TrackKind, n: u8) -> (i64, String) {
    let (id, name) = match kind {
        TrackKind::Video => (VIDEO_TRACK_ID, VIDEO_TRACK_NAME),
        TrackKind::Audio => (AUDIO_TRACK_ID, AUDIO_TRACK_NAME),
    };
    if n == 0 {
        (id, name.to_string())
    } else {
        (id + 10 * i64::from(n), format!("{name}_{n}"))
    }
}

/// The tracks of a stream given what the hub saw, video first then audio (as OME lists
/// them), each kind in order of arrival. Codecs are named as a push sends them (AAC and
/// H.264 in Enhanced RTMP framing go out as legacy AAC and H.264).
pub fn source_tracks(seen: &[SeenTrack]) -> Vec<SourceTrack> {
    let of = |kind: FrameKind| {
        seen.iter().filter(move |t| t.kind == kind).map(|t| {
            let (codec, kind) = match normalized_codec(t.codec) {
                Codec::Video(c) => (TrackCodec::Video(c), TrackKind::Video),
                Codec::Audio(c) => (TrackCodec::Audio(c), TrackKind::Audio),
            };
            let (id, name) = track_id_and_name(kind, t.track);
            SourceTrack {
                id,
                name,
                track: t.track,
                codec,
            }
        })
    };
    of(FrameKind::Video).chain(of(FrameKind::Audio)).collect()
}

/// The tracks of a legacy RTMP ingest given its codecs (tests and tools).
pub fn rtmp_source_tracks(video_codec: Option<u8>, audio_format: Option<u8>) -> Vec<SourceTrack> {
    let video = video_codec.map(|id| SeenTrack {
        kind: FrameKind::Video,
        track: 0,
        codec: Codec::Video(VideoCodec::Flv(id)),
    });
    let audio = audio_format.map(|format| SeenTrack {
        kind: FrameKind::Audio,
        track: 0,
        codec: Codec::Audio(AudioCodec::Flv(format)),
    });
    source_tracks(&video.into_iter().chain(audio).collect::<Vec<_>>())
}

/// Which track of a kind a push sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    None,
    /// The track with this Enhanced RTMP track number (0: the legacy / first one).
    Track(u8),
    /// Every track, as it came (a forward carries the whole stream).
    All,
}

impl Pick {
    /// Whether any track of the kind is sent.
    pub fn any(self) -> bool {
        self != Pick::None
    }
}

/// Which frames a push sends: what [`select`] decided, all a push needs to filter its
/// frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackSelection {
    pub video: Pick,
    pub audio: Pick,
    /// AMF data (`onMetaData`): sent whenever any track is; only RTMP carries it.
    pub data: bool,
    /// The Enhanced RTMP FourCCs of the chosen video and audio tracks (legacy codecs:
    /// none): announced to an RTMP destination in `connect`, and checked against the
    /// codecs it says it takes.
    pub four_ccs: [Option<[u8; 4]>; 2],
}

impl TrackSelection {
    /// Everything: every track and metadata, untouched (a forward carries the whole
    /// stream).
    pub const ALL: TrackSelection = TrackSelection {
        video: Pick::All,
        audio: Pick::All,
        data: true,
        four_ccs: [None, None],
    };

    /// Whether a frame of the source belongs in this push.
    pub fn keeps(&self, frame: &Frame) -> bool {
        let pick = match frame.kind {
            FrameKind::Video => self.video,
            FrameKind::Audio => self.audio,
            FrameKind::Data => return self.data,
        };
        match pick {
            Pick::None => false,
            Pick::All => true,
            // A tag too short to parse belongs to the first track (as it always did).
            Pick::Track(n) => frame.tag().map_or(n == 0, |t| {
                t.track == n && t.packet != PacketType::ManyTracks
            }),
        }
    }

    /// The chosen tracks' E-RTMP FourCCs as strings (`hvc1`, `Opus`).
    pub fn four_cc_names(&self) -> Vec<String> {
        self.four_ccs
            .iter()
            .flatten()
            .map(|cc| String::from_utf8_lossy(cc).into_owned())
            .collect()
    }

    /// The frame as this push sends it: `None` when it is not selected; in its
    /// single-track form ([`pushcast_media::normalize`]) whenever tracks were chosen (a
    /// forward passes everything on as it came).
    pub fn outgoing(&self, frame: &Frame) -> Option<Frame> {
        if !self.keeps(frame) {
            return None;
        }
        if *self == TrackSelection::ALL || frame.kind == FrameKind::Data {
            return Some(frame.clone());
        }
        let payload = normalize(frame.kind, &frame.payload)?;
        Some(Frame {
            payload,
            ..frame.clone()
        })
    }
}

/// What a push sends: the kinds of frames, and the tracks they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub kinds: TrackSelection,
    /// The kept tracks, in source order (for status and logs).
    pub tracks: Vec<SourceTrack>,
}

/// Why a push cannot send its source; the `Display` text is written for `lastError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("the source stream has no audio or video track")]
    NoTracks,
    #[error(
        "track selection (trackIds {track_ids:?}, variantNames {variant_names:?}) matches no \
         track of the source stream; available: {available}"
    )]
    NoMatch {
        track_ids: Vec<i64>,
        variant_names: Vec<String>,
        /// The source's tracks, listed for the user (`none` when it has none).
        available: String,
    },
    #[error("{protocol} cannot carry {codec} (track {track}, id {track_id}); it carries {carries}")]
    UnsupportedCodec {
        protocol: &'static str,
        codec: TrackCodec,
        track: String,
        track_id: i64,
        carries: &'static str,
    },
    #[error(
        "{protocol} carries one video and one audio track; the selection keeps {count} {kind} tracks"
    )]
    TooManyTracks {
        protocol: &'static str,
        kind: &'static str,
        count: usize,
    },
}

/// Chooses the tracks of `source_tracks` that a push over `protocol` sends, following
/// the spec's rules (see the module docs).
pub fn select(
    protocol: Protocol,
    selector: &StreamSelector,
    source_tracks: &[SourceTrack],
) -> Result<Selection, TrackError> {
    let explicit = !selector.track_ids.is_empty() || !selector.variant_names.is_empty();
    let kept: Vec<&SourceTrack> = if explicit {
        source_tracks
            .iter()
            .filter(|t| {
                selector.track_ids.contains(&t.id) || selector.variant_names.contains(&t.name)
            })
            .collect()
    } else {
        // Every protocol carries one video and one audio track: the first of each.
        let first = |kind| source_tracks.iter().find(|t| t.kind() == kind);
        first(TrackKind::Video)
            .into_iter()
            .chain(first(TrackKind::Audio))
            .collect()
    };

    if kept.is_empty() {
        return Err(if explicit {
            TrackError::NoMatch {
                track_ids: selector.track_ids.clone(),
                variant_names: selector.variant_names.clone(),
                available: describe(source_tracks),
            }
        } else {
            TrackError::NoTracks
        });
    }

    for track in &kept {
        if !track.codec.carried_by(protocol) {
            return Err(TrackError::UnsupportedCodec {
                protocol: protocol.as_str(),
                codec: track.codec,
                track: track.name.clone(),
                track_id: track.id,
                carries: match protocol {
                    Protocol::Rtmp => {
                        "H.264, AAC, the legacy FLV codecs and the Enhanced RTMP ones (HEVC, AV1, VP9, Opus, FLAC, AC-3, E-AC-3, MP3)"
                    }
                    Protocol::Mpegts | Protocol::Srt => {
                        "H.264 or HEVC video and AAC or Opus audio only"
                    }
                },
            });
        }
    }

    let count = |kind| kept.iter().filter(|t| t.kind() == kind).count();
    let (videos, audios) = (count(TrackKind::Video), count(TrackKind::Audio));
    // One FLV stream has one video and one audio channel; our MPEG-TS muxer writes one
    // video and one audio PID.
    if videos > 1 {
        return Err(TrackError::TooManyTracks {
            protocol: protocol.as_str(),
            kind: "video",
            count: videos,
        });
    }
    if audios > 1 {
        return Err(TrackError::TooManyTracks {
            protocol: protocol.as_str(),
            kind: "audio",
            count: audios,
        });
    }
    let pick = |kind| {
        kept.iter()
            .find(|t| t.kind() == kind)
            .map_or(Pick::None, |t| Pick::Track(t.track))
    };
    let four_cc = |kind| {
        kept.iter()
            .find(|t| t.kind() == kind)
            .and_then(|t| match t.codec {
                TrackCodec::Video(VideoCodec::FourCc(cc))
                | TrackCodec::Audio(AudioCodec::FourCc(cc)) => Some(cc),
                _ => None,
            })
    };

    Ok(Selection {
        kinds: TrackSelection {
            video: pick(TrackKind::Video),
            audio: pick(TrackKind::Audio),
            data: true,
            four_ccs: [four_cc(TrackKind::Video), four_cc(TrackKind::Audio)],
        },
        tracks: kept.into_iter().cloned().collect(),
    })
}

fn describe(tracks: &[SourceTrack]) -> String {
    if tracks.is_empty() {
        return "none".to_string();
    }
    tracks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn sel(ids: &[i64], names: &[&str]) -> StreamSelector {
        StreamSelector {
            name: "s".into(),
            track_ids: ids.to_vec(),
            variant_names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn h264_aac() -> Vec<SourceTrack> {
        rtmp_source_tracks(Some(FLV_VIDEO_AVC), Some(FLV_AUDIO_AAC))
    }

    fn track(id: i64, name: &str, codec: TrackCodec) -> SourceTrack {
        SourceTrack {
            id,
            name: name.into(),
            track: 0,
            codec,
        }
    }

    #[test]
    fn rtmp_ingest_tracks_are_named_like_ome_bypass() {
        let t = h264_aac();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].id, t[0].name.as_str()), (101, "bypass_video"));
        assert_eq!((t[1].id, t[1].name.as_str()), (102, "bypass_audio"));
        assert_eq!(t[0].to_string(), "bypass_video (id 101, H.264)");
        assert_eq!(rtmp_source_tracks(None, Some(2)).len(), 1);
        assert!(rtmp_source_tracks(None, None).is_empty());
    }

    #[test]
    fn rtmp_without_selection_takes_first_video_and_first_audio() {
        let mut tracks = h264_aac();
        tracks.push(track(
            201,
            "second_video",
            TrackCodec::Video(VideoCodec::Flv(7)),
        ));
        tracks.push(track(
            202,
            "second_audio",
            TrackCodec::Audio(AudioCodec::Flv(10)),
        ));
        let s = select(Protocol::Rtmp, &sel(&[], &[]), &tracks).unwrap();
        assert!(s.kinds.video.any() && s.kinds.audio.any() && s.kinds.data);
        let ids: Vec<_> = s.tracks.iter().map(|t| t.id).collect();
        assert_eq!(ids, [101, 102]);
        // Audio-only source: just the audio.
        let audio_only = rtmp_source_tracks(None, Some(10));
        let s = select(Protocol::Rtmp, &sel(&[], &[]), &audio_only).unwrap();
        assert!(!s.kinds.video.any() && s.kinds.audio.any() && s.kinds.data);
    }

    #[test]
    fn without_selection_every_protocol_takes_the_first_video_and_audio() {
        let mut tracks = h264_aac();
        let (id, name) = track_id_and_name(TrackKind::Audio, 1);
        assert_eq!((id, name.as_str()), (112, "bypass_audio_1"));
        tracks.push(SourceTrack {
            id,
            name,
            track: 1,
            codec: TrackCodec::Audio(AudioCodec::Flv(10)),
        });
        for protocol in [Protocol::Rtmp, Protocol::Mpegts, Protocol::Srt] {
            let s = select(protocol, &sel(&[], &[]), &tracks).unwrap();
            assert_eq!(s.tracks.len(), 2);
            assert_eq!(
                (s.kinds.video, s.kinds.audio),
                (Pick::Track(0), Pick::Track(0))
            );
            // The second audio track by id or by name.
            for chosen in [
                sel(&[101, 112], &[]),
                sel(&[], &["bypass_video", "bypass_audio_1"]),
            ] {
                let s = select(protocol, &chosen, &tracks).unwrap();
                assert_eq!(
                    (s.kinds.video, s.kinds.audio),
                    (Pick::Track(0), Pick::Track(1))
                );
            }
        }
    }

    #[test]
    fn selection_keeps_a_track_by_id_or_by_name() {
        let tracks = h264_aac();
        let by_id = select(Protocol::Rtmp, &sel(&[101], &[]), &tracks).unwrap();
        assert!(by_id.kinds.video.any() && !by_id.kinds.audio.any() && by_id.kinds.data);
        let by_name = select(Protocol::Mpegts, &sel(&[], &["bypass_audio"]), &tracks).unwrap();
        assert!(!by_name.kinds.video.any() && by_name.kinds.audio.any());
        let either = select(Protocol::Rtmp, &sel(&[101], &["bypass_audio"]), &tracks).unwrap();
        assert!(either.kinds.video.any() && either.kinds.audio.any());
        // Entries that match nothing are ignored while something matches.
        let partial = select(Protocol::Rtmp, &sel(&[7, 102], &["hd"]), &tracks).unwrap();
        assert!(!partial.kinds.video.any() && partial.kinds.audio.any());
    }

    #[test]
    fn selection_that_matches_nothing_is_an_error_naming_the_choices() {
        let err = select(Protocol::Rtmp, &sel(&[1], &["hd"]), &h264_aac()).unwrap_err();
        assert!(matches!(err, TrackError::NoMatch { .. }));
        let msg = err.to_string();
        assert!(msg.contains("matches no track"), "{msg}");
        assert!(
            msg.contains("bypass_video (id 101, H.264), bypass_audio (id 102, AAC)"),
            "{msg}"
        );
        assert!(msg.contains("[1]") && msg.contains("\"hd\""), "{msg}");
        let none = select(Protocol::Rtmp, &sel(&[101], &[]), &[]).unwrap_err();
        assert!(none.to_string().ends_with("available: none"), "{none}");
    }

    #[test]
    fn no_tracks_at_all_is_an_error() {
        for protocol in [Protocol::Rtmp, Protocol::Mpegts] {
            assert_eq!(
                select(protocol, &sel(&[], &[]), &[]),
                Err(TrackError::NoTracks)
            );
        }
    }

    #[test]
    fn mpegts_carries_h264_hevc_and_aac_only() {
        let vp6 = rtmp_source_tracks(Some(4), Some(FLV_AUDIO_AAC));
        let err = select(Protocol::Mpegts, &sel(&[], &[]), &vp6).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mpegts cannot carry On2 VP6 (track bypass_video, id 101); it carries H.264 or \
             HEVC video and AAC or Opus audio only"
        );
        let hevc = vec![track(
            101,
            "bypass_video",
            TrackCodec::Video(VideoCodec::FourCc(*b"hvc1")),
        )];
        let s = select(Protocol::Srt, &sel(&[], &[]), &hevc).unwrap();
        assert_eq!(s.kinds.four_ccs, [Some(*b"hvc1"), None]);
        let av1 = vec![track(
            101,
            "bypass_video",
            TrackCodec::Video(VideoCodec::FourCc(*b"av01")),
        )];
        assert!(select(Protocol::Mpegts, &sel(&[], &[]), &av1).is_err());
        let mp3 = rtmp_source_tracks(Some(7), Some(2));
        let err = select(Protocol::Srt, &sel(&[], &[]), &mp3).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("srt cannot carry MP3 (track bypass_audio"),
            "{err}"
        );
        // Selecting around the unsupported track makes it work.
        let s = select(Protocol::Srt, &sel(&[101], &[]), &mp3).unwrap();
        assert!(s.kinds.video.any() && !s.kinds.audio.any());
    }

    #[test]
    fn rtmp_carries_legacy_flv_codecs_but_not_unknown_ones() {
        let legacy = rtmp_source_tracks(Some(2), Some(2)); // Sorenson H.263 + MP3
        assert!(select(Protocol::Rtmp, &sel(&[], &[]), &legacy).is_ok());
        for (video, audio) in [(Some(12), None), (None, Some(9)), (Some(15), Some(10))] {
            let tracks = rtmp_source_tracks(video, audio);
            let err = select(Protocol::Rtmp, &sel(&[], &[]), &tracks).unwrap_err();
            assert!(matches!(err, TrackError::UnsupportedCodec { .. }), "{err}");
            assert!(err.to_string().starts_with("rtmp cannot carry"), "{err}");
        }
        assert_eq!(
            TrackCodec::Video(VideoCodec::Flv(15)).to_string(),
            "unknown video codec 15"
        );
    }

    #[test]
    fn rtmp_cannot_take_two_tracks_of_a_kind() {
        let mut tracks = h264_aac();
        tracks.push(track(
            201,
            "second_video",
            TrackCodec::Video(VideoCodec::Flv(7)),
        ));
        let err = select(Protocol::Rtmp, &sel(&[101, 201], &[]), &tracks).unwrap_err();
        assert_eq!(
            err,
            TrackError::TooManyTracks {
                protocol: "rtmp",
                kind: "video",
                count: 2
            }
        );
        // Nor can our MPEG-TS muxer (one PID per kind).
        assert!(select(Protocol::Mpegts, &sel(&[101, 201], &[]), &tracks).is_err());
    }

    #[test]
    fn selection_filters_frames_and_data_travels_with_tracks() {
        let s = select(Protocol::Rtmp, &sel(&[102], &[]), &h264_aac()).unwrap();
        let frame = |kind| Frame {
            kind,
            timestamp_ms: 0,
            payload: Bytes::new(),
        };
        assert!(!s.kinds.keeps(&frame(FrameKind::Video)));
        assert!(s.kinds.keeps(&frame(FrameKind::Audio)));
        assert!(s.kinds.keeps(&frame(FrameKind::Data)));
    }
}
