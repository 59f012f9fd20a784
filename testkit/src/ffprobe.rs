//! What ffprobe and ffmpeg say about a file.

use std::path::Path;

use serde_json::Value;

use crate::proc::run;

/// One stream as ffprobe sees it, with decoded frame and packet counts.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub index: u64,
    pub codec: String,
    /// `video` / `audio` / `data`.
    pub kind: String,
    pub profile: Option<String>,
    /// Video only.
    pub width: Option<u64>,
    pub height: Option<u64>,
    /// Audio only, in Hz.
    pub sample_rate: Option<u64>,
    pub frames: usize,
    pub packets: usize,
}

/// `ffprobe -count_frames -count_packets -show_streams` of `path`. Fails the test if
/// ffprobe fails or prints errors.
pub fn probe(path: &Path) -> Vec<StreamInfo> {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_streams",
            "-count_frames",
            "-count_packets",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe failed or reported errors on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let count = |s: &Value, k: &str| {
        s[k].as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or_default()
    };
    v["streams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| StreamInfo {
            index: s["index"].as_u64().unwrap_or_default(),
            codec: s["codec_name"].as_str().unwrap_or_default().to_owned(),
            kind: s["codec_type"].as_str().unwrap_or_default().to_owned(),
            profile: s["profile"].as_str().map(str::to_owned),
            width: s["width"].as_u64(),
            height: s["height"].as_u64(),
            sample_rate: s["sample_rate"].as_str().and_then(|r| r.parse().ok()),
            frames: count(s, "nb_read_frames"),
            packets: count(s, "nb_read_packets"),
        })
        .collect()
}

/// The stream with codec `codec`, failing the test if there is none.
pub fn stream<'a>(streams: &'a [StreamInfo], codec: &str) -> &'a StreamInfo {
    streams
        .iter()
        .find(|s| s.codec == codec)
        .unwrap_or_else(|| panic!("no {codec} stream in {streams:#?}"))
}

/// A packet: stream index, pts and dts (None if unset), keyframe flag.
#[derive(Debug, Clone, Copy)]
pub struct PacketInfo {
    pub stream: u64,
    pub pts: Option<i64>,
    pub dts: Option<i64>,
    pub key: bool,
}

/// The packets of `path` in file order.
pub fn packets(path: &Path) -> Vec<PacketInfo> {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,pts,dts,flags",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    v["packets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| PacketInfo {
            stream: p["stream_index"].as_u64().unwrap_or_default(),
            pts: p["pts"].as_i64(),
            dts: p["dts"].as_i64(),
            key: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
        })
        .collect()
}

/// Whatever `ffmpeg -v error -i F -f null -` prints: empty for a clean decode.
pub fn decode_errors(path: &Path) -> String {
    let out = run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-f",
            "null",
            "-",
        ],
    );
    let mut s = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        s.push_str(&format!("\n(ffmpeg exited with {})", out.status));
    }
    s
}
