//! ffmpeg as a receiving destination (it reads a URL and copies the stream to a file) and
//! as an encoder publishing the test clip.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proc::Guard;

/// A running `ffmpeg -i URL -c copy -f FORMAT out`.
pub struct Receiver {
    pub out: PathBuf,
    pub log: PathBuf,
    guard: Guard,
}

impl Receiver {
    /// Starts ffmpeg reading `url` (with `input_args` before `-i`) and writing `out` as
    /// MPEG-TS.
    pub fn start(url: &str, input_args: &[&str], out: &Path) -> Receiver {
        let log = out.with_extension("log");
        let mut args: Vec<&str> = vec!["-nostdin", "-y", "-v", "error"];
        args.extend_from_slice(input_args);
        args.extend_from_slice(&["-i", url, "-c", "copy", "-f", "mpegts"]);
        args.push(out.to_str().unwrap());
        let guard = Guard::spawn("ffmpeg", &args, &log);
        Receiver {
            out: out.to_owned(),
            log,
            guard,
        }
    }

    pub fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }

    /// Waits up to `limit` for ffmpeg to end by itself (end of input), then stops it
    /// (SIGTERM twice, then SIGKILL). Returns whether it ended by itself.
    pub fn finish(&mut self, limit: Duration) -> bool {
        if self.guard.wait_exit(limit).is_some() {
            return true;
        }
        self.guard.terminate(Duration::from_secs(3));
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// ffmpeg publishing the test FLV (H.264 High + AAC) to `url` in real time (`-re`),
/// repeated `loops` more times; its output goes to `dir/{tag}.log`.
pub fn publish(url: &str, dir: &Path, tag: &str, loops: u32) -> Guard {
    let media = crate::media::test_media();
    let log = dir.join(format!("{tag}.log"));
    publish_file(&media.flv, url, i64::from(loops), &log)
}

/// ffmpeg publishing `flv` to `url` in real time (`-re -c copy`), repeated `loops` more
/// times (`-1`: until stopped), its output to `log`.
pub fn publish_file(flv: &Path, url: &str, loops: i64, log: &Path) -> Guard {
    let loops = loops.to_string();
    Guard::spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-stream_loop",
            &loops,
            "-i",
            flv.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "flv",
            url,
        ],
        log,
    )
}
