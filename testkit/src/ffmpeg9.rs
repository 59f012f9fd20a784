//! A static ffmpeg 9 (Enhanced RTMP: HEVC, AV1, Opus, multitrack FLV), for what Debian's
//! ffmpeg 5.1 cannot do: encode E-RTMP sources, receive E-RTMP pushes, decode them.
//! `scripts/deps.sh test` installs it at `~/.cache/pushcast-ffmpeg9/ffmpeg` (from the PyPI
//! wheel imageio-ffmpeg); `PUSHCAST_FFMPEG9` overrides the path. A missing binary fails
//! the test with that instruction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::net::{free_tcp_port, wait_listening};
use crate::proc::Guard;

/// The ffmpeg 9 binary.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("PUSHCAST_FFMPEG9")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/pushcast-ffmpeg9/ffmpeg"))
        })
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "ffmpeg 9 not found at {} (Enhanced RTMP tests): run scripts/deps.sh test, or set \
         PUSHCAST_FFMPEG9",
        path.display()
    );
    path
}

fn bin() -> String {
    binary().to_string_lossy().into_owned()
}

/// Encodes a test clip with ffmpeg 9 into `dir/{name}.flv`: `inputs` are lavfi sources
/// (e.g. `testsrc2=size=320x240:rate=30`), `args` the codec options between the inputs
/// and the output (maps, codecs).
pub fn make_clip(dir: &Path, name: &str, seconds: u32, inputs: &[&str], args: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.flv"));
    let mut all: Vec<String> = vec!["-nostdin".into(), "-v".into(), "error".into(), "-y".into()];
    for input in inputs {
        all.extend([
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            (*input).to_string(),
        ]);
    }
    all.extend(["-t".into(), seconds.to_string()]);
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["-f".into(), "flv".into(), out.display().to_string()]);
    let result = Command::new(bin())
        .args(&all)
        .output()
        .expect("run ffmpeg 9");
    assert!(
        result.status.success(),
        "ffmpeg 9 could not make {name}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// ffmpeg 9 publishing `flv` to `url` in real time, every stream copied (`-map 0`), its
/// output in `log`.
pub fn publish(flv: &Path, url: &str, log: &Path) -> Guard {
    Guard::spawn(
        &bin(),
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-i",
            flv.to_str().unwrap(),
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "flv",
            url,
        ],
        log,
    )
}

/// ffmpeg 9 as an Enhanced RTMP destination: `-listen 1`, every stream copied into an
/// FLV file (one publish per listener).
pub struct Receiver {
    pub port: u16,
    pub out: PathBuf,
    guard: Guard,
}

impl Receiver {
    pub fn start(out: &Path) -> Receiver {
        let port = free_tcp_port();
        let url = format!("rtmp://127.0.0.1:{port}/live/rec");
        let log = out.with_extension("log");
        let mut guard = Guard::spawn(
            &bin(),
            &[
                "-nostdin",
                "-y",
                "-v",
                "error",
                "-listen",
                "1",
                "-i",
                &url,
                "-map",
                "0",
                "-c",
                "copy",
                "-f",
                "flv",
                out.to_str().unwrap(),
            ],
            &log,
        );
        wait_listening(port, &mut guard, Duration::from_secs(10));
        Receiver {
            port,
            out: out.to_owned(),
            guard,
        }
    }

    /// `rtmp://127.0.0.1:PORT/live` (a task's url; use stream key `rec`).
    pub fn rtmp_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live", self.port)
    }

    /// Waits up to `limit` for the publish to end and ffmpeg to finish the file.
    pub fn finish(&mut self, limit: Duration) -> PathBuf {
        if self.guard.wait_exit(limit).is_none() {
            self.guard.terminate(Duration::from_secs(3));
        }
        self.out.clone()
    }
}

/// What ffmpeg 9 makes of a file when it decodes all of it.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Codec name of each stream, by index (`hevc`, `aac`, `opus`, `av1`, ...).
    pub codecs: Vec<String>,
    /// Audio sample rate of each audio stream, by index.
    pub sample_rates: BTreeMap<usize, u64>,
    /// Decoded frames of each stream, by index.
    pub frames: BTreeMap<usize, usize>,
    /// What the decoders complained about (`-v error`); empty when clean.
    pub errors: String,
}

/// Decodes every stream of `path` with ffmpeg 9 (`-f framemd5`: one line per decoded
/// frame) and reads the stream list from its banner.
pub fn decode(path: &Path) -> Decoded {
    let out = Command::new(bin())
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0", "-f", "framemd5", "-"])
        .output()
        .expect("run ffmpeg 9");
    let mut frames = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(Ok(index)) = line.split(',').next().map(|s| s.trim().parse::<usize>()) {
            *frames.entry(index).or_insert(0) += 1;
        }
    }
    let errors = String::from_utf8_lossy(&out.stderr).into_owned();
    // The stream list: `ffmpeg -i` (no output) prints it and fails; that is expected.
    let info = Command::new(bin())
        .args(["-nostdin", "-hide_banner", "-i"])
        .arg(path)
        .output()
        .expect("run ffmpeg 9");
    let mut codecs = Vec::new();
    let mut sample_rates = BTreeMap::new();
    for line in String::from_utf8_lossy(&info.stderr).lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("Stream #0:") else {
            continue;
        };
        let kind_at = rest.find(": Video: ").or_else(|| rest.find(": Audio: "));
        let Some(at) = kind_at else { continue };
        let desc = &rest[at + 9..];
        let codec = desc.split([' ', ',']).next().unwrap_or("").to_string();
        if rest[at..].starts_with(": Audio: ")
            && let Some(hz) = desc
                .split(", ")
                .find_map(|p| p.strip_suffix(" Hz").and_then(|n| n.parse::<u64>().ok()))
        {
            sample_rates.insert(codecs.len(), hz);
        }
        codecs.push(codec);
    }
    Decoded {
        codecs,
        sample_rates,
        frames,
        errors,
    }
}
