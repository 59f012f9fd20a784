//! The pushcast binaries as child processes, with the addresses they report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::io::{BufRead, BufReader};

/// The path of a pushcast binary (`pushcast`, `pushcast-controller`,
/// `pushcast-worker`): the one Cargo built for the test or bench being run. The root
/// package owns all three binaries, so Cargo builds them, fresh, next to its end-to-end
/// tests and benchmarks (the same files as their `CARGO_BIN_EXE_*`): a test never runs a
/// stale binary, and never runs `cargo build` itself. From another package's tests, build
/// them first (`scripts/test.sh` does).
///
/// `PUSHCAST_BIN_DIR` names another directory to take them from (a benchmark of an older
/// build, side by side with this one).
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("PUSHCAST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("the test's own path");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("the test runs from target/<profile>/deps")
                .to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "binary {} not found: it is built by `cargo test -p pushcast` (or `cargo build --bins`)",
        p.display()
    );
    p
}

/// A running pushcast process. Killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub args: Vec<String>,
    envs: HashMap<String, String>,
    bin: PathBuf,
}

impl Proc {
    /// Starts `bin` with `args` and waits until it logged the listening addresses.
    pub async fn start(
        bin: &str,
        name: &str,
        args: Vec<String>,
        envs: HashMap<String, String>,
    ) -> Proc {
        let bin = binary(bin);
        Self::spawn(bin, name, args, envs).await
    }

    async fn spawn(
        bin: PathBuf,
        name: &str,
        args: Vec<String>,
        envs: HashMap<String, String>,
    ) -> Proc {
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .env("RUST_LOG", "info")
            .env_remove("PUSHCAST_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pushcast binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let tag = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if std::env::var_os("PUSHCAST_TEST_ECHO").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            lines,
            args,
            envs,
            bin,
        }
    }

    /// A `pushcast-worker` named `node_id` on etcd `etcd`, every port 0, advertising
    /// 127.0.0.1, its data under `data_dir`, with `extra` arguments after those.
    pub async fn worker(etcd: &str, node_id: &str, data_dir: &Path, extra: &[String]) -> Proc {
        Proc::worker_with_env(etcd, node_id, data_dir, extra, HashMap::new()).await
    }

    /// [`Proc::worker`] with environment variables.
    pub async fn worker_with_env(
        etcd: &str,
        node_id: &str,
        data_dir: &Path,
        extra: &[String],
        envs: HashMap<String, String>,
    ) -> Proc {
        let mut args = vec![
            format!("--etcd-endpoints={etcd}"),
            format!("--node-id={node_id}"),
            "--rtmp-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--advertise-host=127.0.0.1".into(),
            format!("--data-dir={}", data_dir.display()),
        ];
        args.extend_from_slice(extra);
        Proc::start("pushcast-worker", node_id, args, envs).await
    }

    /// Waits (up to `timeout`) until the process has logged a line containing every one
    /// of `needles`.
    pub async fn wait_logged(&self, needles: &[&str], timeout: Duration) {
        crate::wait_for(
            &format!("{} to log {needles:?}", self.name),
            timeout,
            || {
                let seen = self
                    .output()
                    .iter()
                    .any(|l| needles.iter().all(|n| l.contains(n)));
                async move { seen.then_some(()) }
            },
        )
        .await;
    }

    /// Every line the process printed so far (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle` and returns the value of `field=` on it.
    pub async fn wait_for_field(&mut self, needle: &str, field: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for line in self.output() {
                if line.contains(needle)
                    && let Some(v) = field_value(&line, field)
                {
                    return v;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before logging '{needle}':\n{}",
                    self.name,
                    self.output().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not log '{needle}':\n{}",
                    self.name,
                    self.output().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a printed line starting with `prefix` and returns the rest.
    pub async fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = self
                .output()
                .iter()
                .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            {
                return l.trim().to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not print '{prefix}':\n{}",
                    self.name,
                    self.output().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (e.g. "TERM") without waiting.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status code.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(timeout).await
    }

    /// Kills this process and starts the same binary again with the same arguments.
    pub async fn restart(&mut self) {
        self.kill9();
        let fresh = Self::spawn(
            self.bin.clone(),
            &self.name,
            self.args.clone(),
            self.envs.clone(),
        )
        .await;
        *self = fresh;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `field=value` in a tracing line (value up to the next space).
fn field_value(line: &str, field: &str) -> Option<String> {
    let pat = format!("{field}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}
