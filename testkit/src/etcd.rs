//! A real etcd server for integration tests: started on free 127.0.0.1 ports in a
//! temporary data directory, killed when dropped.
//!
//! The binary is `$ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on `PATH`. A missing
//! binary is a test failure with a clear message, never a silent pass.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::TestPki;

/// How long etcd may take to become healthy (it usually takes 0.1–0.6 s).
const HEALTH_DEADLINE: Duration = Duration::from_secs(15);

/// TLS files of a TLS etcd: its server pair, the CA, and a client pair for etcdctl.
#[derive(Clone)]
struct EtcdTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A running etcd process. Killed (SIGKILL) and its directory removed on drop.
pub struct EtcdProcess {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// `/health` and `/metrics` in plain HTTP, whatever the client port speaks.
    metrics_port: u16,
    /// Client TLS (`--cert-file`, `--client-cert-auth`, ...) when started with a PKI.
    tls: Option<EtcdTls>,
    child: Option<Child>,
    /// `--name`, and `--initial-cluster` (every member's `name=peer URL`).
    name: String,
    initial_cluster: Option<String>,
}

impl EtcdProcess {
    /// Starts etcd on free ports and waits until `/health` says it is healthy.
    /// Panics (fails the test) if the binary is missing or etcd does not come up.
    pub fn start() -> EtcdProcess {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS only (https://) with `pki`'s server
    /// certificate, requiring a client certificate `pki`'s CA signed
    /// (`--client-cert-auth --trusted-ca-file`).
    pub fn start_tls(pki: &TestPki) -> EtcdProcess {
        Self::start_with(Some(EtcdTls {
            ca: pki.ca_pem.clone(),
            cert: pki.server_cert_pem.clone(),
            key: pki.server_key_pem.clone(),
            client_cert: pki.client_cert_pem.clone(),
            client_key: pki.client_key_pem.clone(),
        }))
    }

    fn start_with(tls: Option<EtcdTls>) -> EtcdProcess {
        let bin = etcd_binary();
        let mut last_error = String::new();
        // Free ports are found by binding port 0 and releasing it; another process may
        // grab one in between, so a failed start is retried with new ports.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("etcd-test-")
                .tempdir()
                .expect("cannot create a temporary directory for etcd");
            let mut etcd = EtcdProcess {
                bin: bin.clone(),
                dir,
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                tls: tls.clone(),
                child: None,
                name: "n0".into(),
                initial_cluster: None,
            };
            match etcd.spawn_and_wait() {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    /// Starts an etcd cluster of `n` members (`n0`, `n1`, …) on free ports and waits
    /// until every member is healthy (a member is healthy only once a quorum has elected
    /// a leader, so all are spawned before any is waited for).
    pub fn cluster(n: usize) -> Vec<EtcdProcess> {
        let bin = etcd_binary();
        let mut last_error = String::new();
        for _ in 0..3 {
            let mut members: Vec<EtcdProcess> = (0..n)
                .map(|i| EtcdProcess {
                    bin: bin.clone(),
                    dir: tempfile::Builder::new()
                        .prefix("etcd-test-")
                        .tempdir()
                        .expect("cannot create a temporary directory for etcd"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    metrics_port: free_port(),
                    tls: None,
                    child: None,
                    name: format!("n{i}"),
                    initial_cluster: None,
                })
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            let spawned: Result<(), String> = members.iter_mut().try_for_each(|m| {
                m.initial_cluster = Some(initial.clone());
                m.spawn()
            });
            let healthy =
                spawned.and_then(|()| members.iter_mut().try_for_each(|m| m.wait_healthy()));
            match healthy {
                Ok(()) => return members,
                Err(e) => last_error = e,
            }
        }
        panic!("the etcd cluster did not start: {last_error}");
    }

    /// The client URLs of `members`, comma-separated (pushcast's `--etcd-endpoints`).
    pub fn endpoints(members: &[EtcdProcess]) -> String {
        members
            .iter()
            .map(EtcdProcess::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the process runs (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts a stopped member again, without waiting: it is healthy only once a quorum
    /// is back (see [`EtcdProcess::wait_healthy`]).
    pub fn start_again(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("etcd did not start again: {e}");
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:41234` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Runs `etcdctl` (API v3) against this member (with the client certificate when
    /// TLS is on) and returns its output, or its error output.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(etcdctl_binary());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=5s");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("cannot run etcdctl: {e}"))?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!(
                "etcdctl {args:?}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            ))
        }
    }

    /// Turns etcd's auth on with a `root` user (password `root_password`) and a user
    /// `user` (password `password`, or none: a certificate's CN) allowed to read and
    /// write everything under `prefix`.
    pub fn enable_auth(
        &self,
        root_password: &str,
        user: &str,
        password: Option<&str>,
        prefix: &str,
    ) {
        let run = |args: &[&str]| {
            self.etcdctl(args).unwrap_or_else(|e| panic!("{e}"));
        };
        run(&["user", "add", &format!("root:{root_password}")]);
        match password {
            Some(pw) => run(&["user", "add", &format!("{user}:{pw}")]),
            None => run(&["user", "add", user, "--no-password"]),
        }
        run(&["role", "add", "pushcast-rw"]);
        run(&[
            "role",
            "grant-permission",
            "pushcast-rw",
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
        run(&["user", "grant-role", user, "pushcast-rw"]);
        run(&["auth", "enable"]);
    }

    /// The etcd process id (for measurements); panics when it is stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is not running").id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills etcd (SIGKILL: the harshest stop; etcd recovers from its WAL on restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a paused (SIGSTOPped) process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing answers, like a hung
    /// server or a black-holed network. Undo with [`EtcdProcess::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws etcd after [`EtcdProcess::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("etcd is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Starts etcd again on the same ports and data directory; waits until healthy.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("etcd did not restart: {e}");
        }
    }

    /// Compacts etcd's history up to its current revision (physically: every older
    /// revision is gone when this returns), over etcd's JSON gateway; returns the revision.
    /// A watch that has not delivered everything up to it is cancelled as compacted.
    pub fn compact(&self) -> i64 {
        // A range read of any key answers with the current revision in its header.
        let range = http(
            self.client_port,
            "POST",
            "/v3/kv/range",
            r#"{"key":"AA=="}"#,
        )
        .expect("etcd range over the JSON gateway");
        let revision: i64 = range
            .split("\"revision\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in etcd's answer: {range}"));
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        let answer = http(self.client_port, "POST", "/v3/kv/compaction", &body)
            .expect("etcd compaction over the JSON gateway");
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "etcd compaction failed: {answer}"
        );
        revision
    }

    /// Reads a gauge or counter from etcd's `/metrics` (first sample of that name).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.metrics_port, "/metrics").ok()?;
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (metric, value) = l.rsplit_once(' ')?;
            let metric = metric.split('{').next()?;
            (metric == name).then(|| value.parse().ok()).flatten()
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.spawn()?;
        self.wait_healthy()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot create etcd log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone etcd log handle: {e}"))?;
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={peer}", self.name));
        let child = Command::new(&self.bin)
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cert-file={}", t.cert.display()),
                    format!("--key-file={}", t.key.display()),
                    format!("--trusted-ca-file={}", t.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .arg("--logger=zap")
            // Short raft timers: etcd's minimum lease TTL is 1.5 election timeouts
            // rounded up to seconds, so this grants a 1 s TTL as 1 s (default: 2 s).
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/health` says healthy (a leader is known); kills it on failure.
    pub fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTH_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd exited with {status}; log:\n{}",
                    self.log_tail()
                ));
            }
            if let Ok(body) = http_get(self.metrics_port, "/health")
                && body.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "etcd not healthy within {HEALTH_DEADLINE:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "ETCD_BIN={} does not exist", bin.display());
        return bin;
    }
    let default = Path::new("/usr/bin/etcd");
    if default.is_file() {
        return default.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("etcd");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "etcd binary not found (looked at $ETCD_BIN, /usr/bin/etcd and PATH): the etcd tests \
         need a real etcd; install it (Debian: apt-get install etcd-server) or set ETCD_BIN"
    );
}

fn etcdctl_binary() -> PathBuf {
    let bin = etcd_binary().with_file_name("etcdctl");
    if bin.is_file() {
        bin
    } else {
        PathBuf::from("etcdctl")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

/// A minimal HTTP/1.0 GET (keeps this helper free of HTTP client dependencies).
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    http(port, "GET", path, "")
}

/// One HTTP/1.0 request to etcd; the whole response, headers included.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(
        format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
