//! Child processes that are always cleaned up: a [`Guard`] kills its process on drop
//! (SIGTERM, then SIGKILL), so a failing test leaves no nginx or ffmpeg behind.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Which Debian package provides a tool, for the "missing binary" message.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "ffmpeg" | "ffprobe" => "ffmpeg",
        "nginx" => "nginx libnginx-mod-rtmp",
        "stunnel" | "stunnel4" => "stunnel4",
        _ => "(unknown package)",
    }
}

/// Panics with a clear message when `tool` cannot be run.
pub fn missing(tool: &str, e: &std::io::Error) -> ! {
    panic!(
        "cannot run `{tool}` ({e}): this test needs it installed \
         (Debian: apt-get install -y --no-install-recommends {})",
        package_of(tool)
    )
}

/// Runs a tool to completion, failing the test with a clear message when it is missing.
pub fn run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| missing(tool, &e))
}

/// A running child process, killed when dropped.
pub struct Guard {
    pub name: String,
    child: Option<Child>,
}

impl Guard {
    /// Starts `tool` with stdout and stderr appended to `log` (for diagnostics).
    pub fn spawn(tool: &str, args: &[&str], log: &Path) -> Guard {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| missing(tool, &e));
        Guard {
            name: tool.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &self.pid().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stops the process: SIGTERM, a second SIGTERM after a moment (ffmpeg blocked on
    /// input ignores the first), SIGKILL if it is still there after `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Some(s);
        }
        self.signal("TERM");
        if let Some(s) = self.wait_exit(Duration::from_millis(300)) {
            return Some(s);
        }
        self.signal("TERM");
        if let Some(s) = self.wait_exit(limit) {
            return Some(s);
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            return c.wait().ok();
        }
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            self.terminate(Duration::from_secs(2));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
