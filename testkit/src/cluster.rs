//! A whole pushcast cluster on 127.0.0.1 (quickwit style): one real etcd, controllers and
//! workers as real child processes, an nginx-rtmp destination that records what it gets,
//! OBS-like publishers, and [`EtcdCut`], a proxy that cuts one worker off etcd while the
//! rest of the cluster keeps it.
//!
//! Everything is killed when the [`Cluster`] is dropped, so a failing test leaves nothing
//! behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::api::Node;
use crate::etcd::EtcdProcess;
use crate::ffmpeg::publish_file;
use crate::media::test_media;
use crate::nginx::Nginx;
use crate::process::Proc;
use crate::wait_for;

/// The API token of every controller of a [`Cluster`].
pub const TOKEN: &str = "cluster-sandbox";

/// pushcast's key prefix in etcd (the default `--etcd-prefix`).
pub const ETCD_PREFIX: &str = "/pushcast/";

/// How a worker is started.
#[derive(Debug, Clone)]
pub struct WorkerOpts {
    /// `--max-sessions` (0 = no limit).
    pub max_sessions: u32,
    /// `--lease-ttl-secs`.
    pub lease_ttl_secs: u64,
    /// The etcd endpoint this worker uses instead of the cluster's (e.g. an [`EtcdCut`]).
    pub etcd: Option<String>,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        WorkerOpts {
            max_sessions: 0,
            lease_ttl_secs: 5,
            etcd: None,
        }
    }
}

/// A running `pushcast-worker`.
pub struct WorkerProc {
    pub proc: Proc,
    pub node_id: String,
    /// `127.0.0.1:PORT` of the RTMP ingest.
    pub rtmp: String,
    /// `127.0.0.1:PORT` of the WorkerService.
    pub grpc: String,
    pub opts: WorkerOpts,
    pub alive: bool,
}

impl WorkerProc {
    /// `rtmp://127.0.0.1:PORT/app/{stream}`: where an encoder publishes to this worker.
    pub fn ingest_url(&self, stream: &str) -> String {
        format!("rtmp://{}/app/{stream}", self.rtmp)
    }
}

/// The sandbox: etcd, controllers, workers, one nginx-rtmp destination.
pub struct Cluster {
    /// etcd (the first member, when there are several: see [`Cluster::start_members`]).
    pub etcd: EtcdProcess,
    /// The other members of a multi-member etcd (empty for one member).
    pub etcd_members: Vec<EtcdProcess>,
    pub dir: tempfile::TempDir,
    /// Indexes are stable: a killed controller stays in place (see `controller_alive`).
    pub controllers: Vec<Node>,
    controller_alive: Vec<bool>,
    /// Indexes are stable: a killed worker stays in place with `alive == false`.
    pub workers: Vec<WorkerProc>,
    /// The destination: `application live`, records every stream it receives.
    pub nginx: Nginx,
    /// `--leader-ttl-secs` of the controllers added from now on.
    pub leader_ttl_secs: u64,
    http: reqwest::Client,
}

impl Cluster {
    /// A cluster on `etcd` with no controller or worker yet, and an nginx destination.
    pub async fn start(etcd: EtcdProcess) -> Cluster {
        Cluster::start_members(vec![etcd]).await
    }

    /// A cluster on a multi-member etcd (e.g. [`EtcdProcess::cluster`]`(3)`): every
    /// controller and worker is given every member's endpoint.
    pub async fn start_members(mut members: Vec<EtcdProcess>) -> Cluster {
        let etcd = members.remove(0);
        Cluster {
            etcd,
            etcd_members: members,
            dir: tempfile::Builder::new()
                .prefix("pushcast-cluster-")
                .tempdir()
                .unwrap(),
            controllers: Vec::new(),
            controller_alive: Vec::new(),
            workers: Vec::new(),
            // A pusher that froze (SIGSTOP) is dropped after 2 s, as platforms drop a
            // stalled ingest.
            nginx: Nginx::start_with(crate::nginx::NginxOptions {
                drop_idle_publisher: Some(Duration::from_secs(2)),
                ..Default::default()
            }),
            leader_ttl_secs: 3,
            http: crate::http::client(Duration::from_secs(5)),
        }
    }

    /// Starts controller `c{N}` and returns its index.
    pub async fn add_controller(&mut self) -> usize {
        let i = self.controllers.len();
        let id = format!("c{i}");
        let data = self.dir.path().join(&id);
        std::fs::create_dir_all(&data).unwrap();
        let args = vec![
            format!("--etcd-endpoints={}", self.etcd_endpoints()),
            format!("--access-token={TOKEN}"),
            format!("--node-id={id}"),
            "--rest-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--etcd-timeout-ms=1000".into(),
            format!("--leader-ttl-secs={}", self.leader_ttl_secs),
            format!("--data-dir={}", data.display()),
        ];
        let node = Node::start("pushcast-controller", &id, args, TOKEN).await;
        if i == 0 {
            // These tests are about scheduling: publish by stream name.
            node.open_publish("app").await;
        }
        self.controllers.push(node);
        self.controller_alive.push(true);
        i
    }

    /// Starts worker `w{N}` and returns its index.
    pub async fn add_worker(&mut self, opts: WorkerOpts) -> usize {
        let i = self.workers.len();
        let id = format!("w{i}");
        let data = self.dir.path().join(&id);
        std::fs::create_dir_all(&data).unwrap();
        let etcd = opts.etcd.clone().unwrap_or_else(|| self.etcd_endpoints());
        let extra = [
            format!("--lease-ttl-secs={}", opts.lease_ttl_secs),
            format!("--max-sessions={}", opts.max_sessions),
            "--etcd-timeout-ms=1000".into(),
        ];
        let mut proc = Proc::worker(&etcd, &id, &data, &extra).await;
        let rtmp = proc.wait_for_field("RTMP ingest listening", "addr").await;
        let grpc = proc.wait_for_field("WorkerService listening", "addr").await;
        self.workers.push(WorkerProc {
            proc,
            node_id: id,
            rtmp,
            grpc,
            opts,
            alive: true,
        });
        i
    }

    /// SIGKILL of worker `i` (no lease revoke, no goodbye: like a crashed host).
    pub fn kill9_worker(&mut self, i: usize) {
        self.workers[i].proc.kill9();
        self.workers[i].alive = false;
    }

    /// Every etcd member's client URL, comma-separated.
    pub fn etcd_endpoints(&self) -> String {
        std::iter::once(&self.etcd)
            .chain(&self.etcd_members)
            .map(EtcdProcess::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGSTOP of worker `i`: a frozen process (its kernel still accepts connections on
    /// its ports; nothing answers).
    pub fn pause_worker(&self, i: usize) {
        self.workers[i].proc.signal("STOP");
    }

    /// SIGCONT of worker `i`.
    pub fn resume_worker(&self, i: usize) {
        self.workers[i].proc.signal("CONT");
    }

    /// Waits until the nginx recording of every key of `keys` differs from its size in
    /// `before` (grown, or restarted by a new publish); how long that took.
    pub async fn wait_recordings_change(
        &self,
        keys: &[String],
        before: &[u64],
        timeout: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let changed = keys.iter().zip(before).all(|(k, b)| {
                let n = self.recording_size(k);
                n > 0 && n != *b
            });
            if changed {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{} nginx recordings did not change within {timeout:?}\n{}",
                keys.len(),
                self.logs_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL of controller `i`.
    pub fn kill9_controller(&mut self, i: usize) {
        self.controllers[i].proc.kill9();
        self.controller_alive[i] = false;
    }

    pub fn controller_alive(&self, i: usize) -> bool {
        self.controller_alive[i]
    }

    /// A controller that is alive (the first one), for API calls.
    pub fn api(&self) -> &Node {
        let i = (0..self.controllers.len())
            .find(|&i| self.controller_alive[i])
            .expect("no controller is alive");
        &self.controllers[i]
    }

    /// Index of worker `node_id`.
    pub fn worker_index(&self, node_id: &str) -> Option<usize> {
        self.workers.iter().position(|w| w.node_id == node_id)
    }

    // ---- etcd, read directly through its JSON gateway ---------------------------------

    /// `POST /v3/kv/range` for `key` (full etcd key); `None` when etcd does not answer.
    async fn etcd_range(&self, key: &[u8], prefix: bool) -> Option<Value> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut body = json!({ "key": b64.encode(key) });
        if prefix {
            body["range_end"] = json!(b64.encode(prefix_end(key)));
        }
        let r = self
            .http
            .post(format!("{}/v3/kv/range", self.etcd.endpoint()))
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()
    }

    /// The value of pushcast key `key` (relative to the prefix), if set.
    pub async fn etcd_get(&self, key: &str) -> Option<String> {
        let full = format!("{ETCD_PREFIX}{key}");
        let v = self.etcd_range(full.as_bytes(), false).await?;
        let value = v["kvs"][0]["value"].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The pushcast keys (relative to the prefix) under `prefix`.
    pub async fn etcd_keys(&self, prefix: &str) -> Option<Vec<String>> {
        let full = format!("{ETCD_PREFIX}{prefix}");
        let v = self.etcd_range(full.as_bytes(), true).await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Some(
            v["kvs"]
                .as_array()
                .map(|kvs| {
                    kvs.iter()
                        .filter_map(|kv| b64.decode(kv["key"].as_str()?).ok())
                        .map(|k| String::from_utf8_lossy(&k[ETCD_PREFIX.len()..]).into_owned())
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// etcd's current revision (`header.revision` of a range read).
    pub async fn etcd_revision(&self) -> u64 {
        let v = self
            .etcd_range(&[0], false)
            .await
            .expect("etcd answers a range read");
        let rev = &v["header"]["revision"];
        rev.as_u64()
            .or_else(|| rev.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("no revision in {v}"))
    }

    /// The pushcast keys written (created or modified) after `revision` that still
    /// exist, counted by their first path segment (`status`, `assign`, ...), with each
    /// key's version, to tell which writes made the revision grow.
    pub async fn etcd_writes_since(&self, revision: u64) -> Vec<(String, usize)> {
        let v = self
            .etcd_range(ETCD_PREFIX.as_bytes(), true)
            .await
            .expect("etcd answers a range read");
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
        for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
            let num = |f: &str| {
                kv[f]
                    .as_u64()
                    .or_else(|| kv[f].as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(0)
            };
            if num("mod_revision") <= revision {
                continue;
            }
            let key = b64.decode(kv["key"].as_str().unwrap_or_default()).unwrap();
            let key = String::from_utf8_lossy(&key[ETCD_PREFIX.len()..]).into_owned();
            let kind = key.split('/').next().unwrap_or_default().to_string();
            *by_kind.entry(kind).or_default() += 1;
        }
        by_kind.into_iter().collect()
    }

    /// The node id in the leader key, if any.
    pub async fn leader_node(&self) -> Option<String> {
        self.etcd_get("leader").await
    }

    /// The controller that leads now: named by the leader key and alive.
    pub async fn leader(&self) -> Option<usize> {
        let node = self.leader_node().await?;
        (0..self.controllers.len())
            .find(|&i| self.controller_alive[i] && self.controllers[i].proc.name == node)
    }

    /// Waits for a live leader and returns its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> usize {
        wait_for("a leader among the live controllers", timeout, || {
            self.leader()
        })
        .await
    }

    // ---- tasks through the API ---------------------------------------------------------

    /// `startPush` of `id` pushing `stream` to the nginx destination under `key`, on
    /// controller `ctrl`; panics unless 200.
    pub async fn start_push(&self, ctrl: usize, id: &str, stream: &str, key: &str) {
        let r = self.controllers[ctrl]
            .action("startPush", self.push_body(id, stream, key))
            .await;
        assert_eq!(r.status, 200, "startPush {id} on c{ctrl}: {}", r.text);
    }

    /// The body of a `startPush` to the nginx destination.
    pub fn push_body(&self, id: &str, stream: &str, key: &str) -> Value {
        json!({"id": id, "stream": {"name": stream}, "protocol": "rtmp",
               "url": self.nginx.rtmp_url(), "streamKey": key})
    }

    /// Every task of `default/app` as controller `ctrl` shows it, by id; `None` unless the
    /// API answers 200.
    pub async fn tasks_on(&self, ctrl: usize) -> Option<HashMap<String, Value>> {
        let r = self.controllers[ctrl].action("pushes", json!({})).await;
        if r.status != 200 {
            return None;
        }
        Some(
            r.json["response"]
                .as_array()?
                .iter()
                .map(|t| (t["id"].as_str().unwrap_or_default().to_string(), t.clone()))
                .collect(),
        )
    }

    /// Waits until controller `ctrl` shows every task of `ids` started, with bytes sent,
    /// and (when given) held by `worker`; returns the tasks.
    pub async fn wait_started_on(
        &self,
        ctrl: usize,
        ids: &[String],
        worker: Option<&str>,
        timeout: Duration,
    ) -> HashMap<String, Value> {
        let what = format!(
            "c{ctrl} to show {} tasks started and sending{}",
            ids.len(),
            worker.map(|w| format!(" on {w}")).unwrap_or_default()
        );
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(all) = self.tasks_on(ctrl).await {
                let bad: Vec<String> = ids
                    .iter()
                    .filter(|id| !all.get(*id).is_some_and(|t| task_flowing(t, worker)))
                    .map(|id| match all.get(id) {
                        Some(t) => format!(
                            "{id}: state={} sentBytes={} worker={}",
                            t["state"], t["sentBytes"], t["worker"]
                        ),
                        None => format!("{id}: absent"),
                    })
                    .collect();
                if bad.is_empty() {
                    return all;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; {} not yet:\n{}\n{}",
                        bad.len(),
                        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n"),
                        self.logs_tail(40)
                    );
                }
            } else if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}: the API does not answer");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `n` tasks show as started with bytes sent (on any live controller).
    pub async fn wait_for_tasks_started(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(&format!("{n} tasks started"), timeout, || async {
            let all = self.api().action("pushes", json!({})).await;
            let list = all.json["response"].as_array()?.clone();
            let started: Vec<Value> = list.into_iter().filter(|t| task_flowing(t, None)).collect();
            (started.len() >= n).then_some(started)
        })
        .await
    }

    /// Waits until controller `ctrl` shows the `sentBytes` of every task of `ids` above
    /// its value in `before` (a counter that moves: read live from the worker).
    pub async fn wait_counters_move(
        &self,
        ctrl: usize,
        ids: &[String],
        before: &HashMap<String, Value>,
        timeout: Duration,
    ) {
        wait_for(
            &format!("c{ctrl}: sentBytes of {} tasks growing", ids.len()),
            timeout,
            || async {
                let now = self.tasks_on(ctrl).await?;
                ids.iter()
                    .all(|id| {
                        let b = before[id]["sentBytes"].as_u64().unwrap_or(0);
                        let n = now.get(id).and_then(|t| t["sentBytes"].as_u64());
                        n.is_some_and(|n| n > b)
                    })
                    .then_some(())
            },
        )
        .await
    }

    // ---- the destination ---------------------------------------------------------------

    /// Size of nginx's recording of stream key `key` (0 when absent).
    pub fn recording_size(&self, key: &str) -> u64 {
        std::fs::metadata(self.nginx.recording(key))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Waits until the recording of every key of `keys` changed size (grew, or was
    /// restarted by a new publish) since now.
    pub async fn wait_recordings_grow(&self, keys: &[String], timeout: Duration) {
        let before: Vec<u64> = keys.iter().map(|k| self.recording_size(k)).collect();
        wait_for(
            &format!("{} nginx recordings growing", keys.len()),
            timeout,
            || async {
                keys.iter()
                    .zip(&before)
                    .all(|(k, b)| {
                        let n = self.recording_size(k);
                        n > 0 && n != *b
                    })
                    .then_some(())
            },
        )
        .await
    }

    /// Watches the recordings of `keys` until none has changed for `quiet`; returns when
    /// each last changed (`None`: never changed while watched). Panics when they still
    /// change after `timeout`.
    pub async fn wait_recordings_stop(
        &self,
        keys: &[String],
        quiet: Duration,
        timeout: Duration,
    ) -> Vec<Option<Instant>> {
        let start = Instant::now();
        let mut sizes: Vec<u64> = keys.iter().map(|k| self.recording_size(k)).collect();
        let mut changed: Vec<Option<Instant>> = vec![None; keys.len()];
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let now = Instant::now();
            for (i, k) in keys.iter().enumerate() {
                let s = self.recording_size(k);
                if s != sizes[i] {
                    sizes[i] = s;
                    changed[i] = Some(now);
                }
            }
            let last = changed.iter().flatten().max().copied().unwrap_or(start);
            if now.duration_since(last) >= quiet {
                return changed;
            }
            if now.duration_since(start) > timeout {
                let growing: Vec<&String> = keys
                    .iter()
                    .zip(&changed)
                    .filter(|(_, c)| c.is_some_and(|c| now.duration_since(c) < quiet))
                    .map(|(k, _)| k)
                    .collect();
                panic!(
                    "recordings still growing {timeout:?} after watching began: {growing:?}\n{}",
                    self.logs_tail(40)
                );
            }
        }
    }

    /// Lines of nginx's error log saying a second publisher was refused on a stream.
    pub fn double_publishes(&self) -> Vec<String> {
        self.nginx
            .error_log()
            .lines()
            .filter(|l| l.contains("already publishing"))
            .map(str::to_string)
            .collect()
    }

    /// No destination ever had two publishers at once.
    pub fn assert_no_double_publish(&self) {
        let lines = self.double_publishes();
        assert!(
            lines.is_empty(),
            "a destination had two publishers at once ({} refusals in nginx's log):\n{}\n{}",
            lines.len(),
            lines
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            self.logs_tail(40)
        );
    }

    // ---- diagnostics -------------------------------------------------------------------

    /// The last `n` lines of every pushcast process, for failure messages.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        let procs = self
            .controllers
            .iter()
            .map(|c| &c.proc)
            .chain(self.workers.iter().map(|w| &w.proc));
        for p in procs {
            let lines = p.output();
            out.push_str(&format!("---- {} (last {n} lines) ----\n", p.name));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The log lines of process `name` (controller or worker) containing `needle`
    /// (case-insensitive).
    pub fn log_lines(&self, name: &str, needle: &str) -> Vec<String> {
        let needle = needle.to_lowercase();
        let procs = self
            .controllers
            .iter()
            .map(|c| &c.proc)
            .chain(self.workers.iter().map(|w| &w.proc));
        procs
            .filter(|p| p.name == name)
            .flat_map(|p| p.output())
            .filter(|l| l.to_lowercase().contains(&needle))
            .collect()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The task is started, has sent bytes and (when given) is held by `worker`.
pub fn task_flowing(t: &Value, worker: Option<&str>) -> bool {
    t["state"] == "started"
        && t["sentBytes"].as_u64().unwrap_or(0) > 0
        && worker.is_none_or(|w| t["worker"] == w)
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

// ---- publishers ----------------------------------------------------------------------

/// An encoder publishing the test media in a loop, in real time, to `url`, and
/// reconnecting (after a short pause) whenever its connection ends or is refused, as OBS
/// does. Stopped when dropped.
pub struct Publisher {
    pub url: String,
    /// Where its attempts go, in turn (see [`Publisher::rotating`]).
    pub urls: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// How many times ffmpeg was started.
    pub attempts: Arc<Mutex<u32>>,
    pub log: PathBuf,
}

impl Publisher {
    pub fn start(url: &str, log: &Path) -> Publisher {
        Publisher::rotating(Arc::new(Mutex::new(vec![url.to_string()])), log)
    }

    /// Like [`Publisher::start`], each attempt to the next of `urls` (read at the time of
    /// the attempt): an encoder behind a load balancer whose workers come and go.
    pub fn rotating(urls: Arc<Mutex<Vec<String>>>, log: &Path) -> Publisher {
        let media = test_media().flv.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(0));
        let first = urls.lock().unwrap().first().cloned().unwrap_or_default();
        let thread = {
            let (stop, attempts, log, urls) =
                (stop.clone(), attempts.clone(), log.to_owned(), urls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        *a += 1;
                        *a as usize
                    };
                    let url = {
                        let u = urls.lock().unwrap();
                        if u.is_empty() {
                            String::new()
                        } else {
                            u[(n - 1) % u.len()].clone()
                        }
                    };
                    let mut g = publish_file(&media, &url, -1, &log);
                    while !stop.load(Ordering::SeqCst) && g.try_status().is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if stop.load(Ordering::SeqCst) {
                        g.terminate(Duration::from_secs(2));
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        Publisher {
            url: first,
            urls,
            stop,
            thread: Some(thread),
            attempts,
            log: log.to_owned(),
        }
    }

    /// Stops publishing (the connection ends) and waits for ffmpeg to be gone.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn attempts(&self) -> u32 {
        *self.attempts.lock().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- EtcdCut -------------------------------------------------------------------------

/// A TCP proxy in the test process between one worker and etcd. [`EtcdCut::cut`] drops
/// every connection and refuses new ones (accepted and closed at once), so that worker
/// loses etcd while the rest of the cluster keeps it; [`EtcdCut::restore`] lets
/// connections through again. Runs on its own runtime, so a test body that blocks
/// cannot stall it.
pub struct EtcdCut {
    addr: SocketAddr,
    state: Arc<CutState>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Default)]
struct CutState {
    cut: AtomicBool,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl EtcdCut {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> EtcdCut {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("etcd endpoint is http://IP:PORT");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-cut")
            .enable_all()
            .build()
            .unwrap();
        // Bound here (std), so the caller may be inside another runtime.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(CutState::default());
        let st = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if st.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut conns = st.conns.lock().unwrap();
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
                // A cut that raced with this accept: drop it too.
                if st.cut.load(Ordering::SeqCst) {
                    task.abort();
                }
            }
        });
        EtcdCut {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// The endpoint to give the worker: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for h in self.state.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for EtcdCut {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
