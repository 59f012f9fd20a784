//! ffmpeg as a receiving destination: it reads a URL and copies the stream to a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proc::Guard;

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
