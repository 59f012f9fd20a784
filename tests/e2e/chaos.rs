//! The chaos soak: a whole cluster (three etcd members, two controllers, three workers),
//! ten encoders that reconnect like OBS (each attempt to the next live worker, as behind
//! a load balancer), fifty tasks to an nginx-rtmp destination and a webhook receiver,
//! put through random faults for a given time — worker `kill -9` and restart, controller
//! `kill -9` and restart, a worker frozen (SIGSTOP) then thawed, a worker cut from etcd
//! then restored, an etcd member killed then restarted — while it checks, all the time:
//!
//! - no destination ever had two publishers (nginx-rtmp's `already publishing`);
//! - after each fault, every task is back to `started` with bytes moving within
//!   [`RECOVERY_BOUND`] (recovery per fault kind: p50, p99, max);
//! - the API lists exactly the fifty tasks, ids unique, whenever it answers 200, and never
//!   answers a 5xx other than 503;
//! - status callbacks: every task's `created` arrived, and its last event is the state
//!   it ends in (`started`), each event id with one body;
//! - no encoder was ever refused (`ExistStreamName`): one that reconnects after its
//!   worker died is admitted at its first attempt.
//!
//! It prints a report and fails on any violation. `CHAOS_SECONDS` (default 120: the run
//! in `scripts/test.sh`) and `CHAOS_SEED` set the length and the faults;
//! `scripts/chaos.sh --minutes 30` is the long run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushcast_testkit::cluster::{Cluster, EtcdCut, Publisher, WorkerOpts};
use pushcast_testkit::etcd::EtcdProcess;
use pushcast_testkit::receiver::Receiver;
use serde_json::{Value, json};

/// Streams, and tasks per stream.
const STREAMS: usize = 10;
const TASKS_PER_STREAM: usize = 5;

/// How long every task may take to be pushing again after a fault ends.
const RECOVERY_BOUND: Duration = Duration::from_secs(45);

/// A small deterministic generator (xorshift64*), so a seed replays a run's faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    WorkerKill,
    ControllerKill,
    WorkerFreeze,
    WorkerCut,
    EtcdMemberKill,
}

/// What the API poller saw.
#[derive(Default)]
struct ApiWatch {
    calls: u64,
    unavailable: u64,
    violations: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_soak() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026);
    let mut rng = Rng(seed.max(1));
    // One cluster at a time (with the tests of `cluster`): their timings stay honest.
    let _serial = crate::cluster::SERIAL.lock().await;
    let mut c = Cluster::start_members(EtcdProcess::cluster(3)).await;
    c.add_controller().await;
    c.add_controller().await;
    // Every worker reaches etcd through a proxy that can cut it off (to the first member,
    // which the soak never kills: a member kill is a quorum fault, not a partition).
    let mut cuts: HashMap<usize, EtcdCut> = HashMap::new();
    for _ in 0..3 {
        add_worker(&mut c, &mut cuts).await;
    }
    c.wait_for_leader(Duration::from_secs(15)).await;
    let rx = Receiver::start().await;
    let r = c
        .api()
        .call(
            "PATCH",
            "/v1/vhosts/default/apps/app",
            Some(
                &json!({"callbacks": {"status": [{"url": rx.url("/status"), "secret": "s"}]}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut ids = Vec::new();
    for s in 0..STREAMS {
        for t in 0..TASKS_PER_STREAM {
            let id = format!("s{s}t{t}");
            c.start_push(0, &id, &format!("s{s}"), &format!("key-{id}"))
                .await;
            ids.push(id);
        }
    }
    let urls = Arc::new(Mutex::new(live_urls(&c)));
    let publishers: Vec<Publisher> = (0..STREAMS)
        .map(|s| {
            let per_stream = Arc::new(Mutex::new(Vec::new()));
            *per_stream.lock().unwrap() = stream_urls(&urls.lock().unwrap(), s);
            Publisher::rotating(per_stream, &c.path().join(format!("enc-s{s}.log")))
        })
        .collect();
    let t_all = Instant::now();
    all_flowing(&c, &ids, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the soak never started: {e}\n{}", c.logs_tail(40)));
    println!(
        "chaos: {} tasks pushing after {:?}",
        ids.len(),
        t_all.elapsed()
    );

    let api_watch = Arc::new(Mutex::new(ApiWatch::default()));
    let stop_polling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let endpoints = Arc::new(Mutex::new(api_endpoints(&c)));
    let poller = {
        let (watch, stop, expected) = (api_watch.clone(), stop_polling.clone(), ids.clone());
        tokio::spawn(poll_api(endpoints.clone(), expected, watch, stop))
    };

    let mut recoveries: BTreeMap<Fault, Vec<Duration>> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let kinds = [
        Fault::WorkerKill,
        Fault::ControllerKill,
        Fault::WorkerFreeze,
        Fault::WorkerCut,
        Fault::EtcdMemberKill,
    ];
    // Every kind once per round, in a random order: a short run meets them all.
    let mut round: Vec<Fault> = Vec::new();
    while Instant::now() < deadline {
        if round.is_empty() {
            round = kinds.to_vec();
            for i in (1..round.len()).rev() {
                round.swap(i, rng.below(i + 1));
            }
        }
        let fault = round.pop().unwrap();
        let live: Vec<usize> = (0..c.workers.len())
            .filter(|&i| c.workers[i].alive)
            .collect();
        let victim = live[rng.below(live.len())];
        let hold = Duration::from_millis(2_000 + rng.below(6_000) as u64);
        println!("chaos: {fault:?} (worker w{victim} where it applies, {hold:?})");
        match fault {
            // Kills: recovery counts from the kill (the cluster must recover without the
            // dead process); it is restarted after the hold.
            Fault::WorkerKill => {
                let t = Instant::now();
                c.kill9_worker(victim);
                *urls.lock().unwrap() = live_urls(&c);
                refresh(&publishers, &urls);
                recovered(&c, &ids, fault, t, &mut recoveries, &mut violations).await;
                tokio::time::sleep(hold.saturating_sub(t.elapsed())).await;
                add_worker(&mut c, &mut cuts).await;
            }
            Fault::ControllerKill => {
                let alive: Vec<usize> = (0..c.controllers.len())
                    .filter(|&i| c.controller_alive(i))
                    .collect();
                let i = alive[rng.below(alive.len())];
                let t = Instant::now();
                c.kill9_controller(i);
                *endpoints.lock().unwrap() = api_endpoints(&c);
                recovered(&c, &ids, fault, t, &mut recoveries, &mut violations).await;
                tokio::time::sleep(hold.saturating_sub(t.elapsed())).await;
                c.add_controller().await;
            }
            Fault::WorkerFreeze => {
                c.pause_worker(victim);
                tokio::time::sleep(hold).await;
                c.resume_worker(victim);
            }
            Fault::WorkerCut => {
                let cut = &cuts[&victim];
                cut.cut();
                tokio::time::sleep(hold).await;
                cut.restore();
            }
            Fault::EtcdMemberKill => {
                let m = rng.below(c.etcd_members.len());
                c.etcd_members[m].stop();
                tokio::time::sleep(hold).await;
                c.etcd_members[m].start_again();
                if let Err(e) = c.etcd_members[m].wait_healthy() {
                    violations.push(format!("etcd member did not come back: {e}"));
                }
            }
        }
        *urls.lock().unwrap() = live_urls(&c);
        refresh(&publishers, &urls);
        *endpoints.lock().unwrap() = api_endpoints(&c);
        // The others: recovery counts from the fault's end (thawed, restored, member
        // back); after a kill, from the restart of the replacement.
        match fault {
            Fault::WorkerKill | Fault::ControllerKill => {
                if let Err(e) = all_flowing(&c, &ids, RECOVERY_BOUND).await {
                    violations.push(format!(
                        "{fault:?}: not every task pushing after the restart: {e}"
                    ));
                }
            }
            _ => {
                let t = Instant::now();
                recovered(&c, &ids, fault, t, &mut recoveries, &mut violations).await;
            }
        }
        let doubled = c.double_publishes();
        if !doubled.is_empty() {
            violations.push(format!(
                "{fault:?}: two publishers on a destination: {doubled:?}"
            ));
        }
        // Settle between faults.
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(2_000) as u64)).await;
    }
    stop_polling.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = poller.await;

    // Status callbacks: what each task's receiver saw, once the outbox has drained.
    let events = settle_events(&rx, &ids, Duration::from_secs(60)).await;
    for id in &ids {
        let seen = events.get(id).cloned().unwrap_or_default();
        if seen.first().map(String::as_str) != Some("created") {
            violations.push(format!("task {id}: no created event first: {seen:?}"));
        }
        if seen.last().map(String::as_str) != Some("started") {
            violations.push(format!(
                "task {id}: last event {:?}, state started",
                seen.last()
            ));
        }
    }
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    for r in rx.accepted() {
        if let Some(id) = r.header("x-event-id") {
            let body = bodies
                .entry(id.to_string())
                .or_insert_with(|| r.body.to_vec());
            if *body != r.body.to_vec() {
                violations.push(format!("event {id} delivered with two bodies"));
            }
        } else {
            violations.push("a status callback without X-Event-Id".into());
        }
    }
    let api = std::mem::take(&mut *api_watch.lock().unwrap());
    violations.extend(api.violations);
    // An encoder that reconnects after its worker died is admitted at its first attempt
    // (the dead worker's stream is decided, not refused); none was ever refused.
    let attempts: u32 = publishers.iter().map(Publisher::attempts).sum();
    for (s, p) in publishers.iter().enumerate() {
        let refused: Vec<String> = p
            .log_text()
            .lines()
            .filter(|l| l.contains("ExistStreamName"))
            .map(str::to_string)
            .collect();
        if !refused.is_empty() {
            violations.push(format!(
                "encoder s{s} refused {} times: {refused:?}",
                refused.len()
            ));
        }
    }
    drop(publishers);

    println!("chaos report (seed {seed}, {seconds} s):");
    for (fault, times) in &recoveries {
        let mut t = times.clone();
        t.sort();
        let pick = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        let from = match fault {
            Fault::WorkerKill | Fault::ControllerKill => "the kill",
            _ => "the fault's end",
        };
        println!(
            "  {fault:?}: {} faults, every task pushing again after {from}: p50 {:?} p99 {:?} max {:?}",
            t.len(),
            pick(0.5),
            pick(0.99),
            t[t.len() - 1]
        );
    }
    println!(
        "  API: {} calls polled, {} answered 503; status events delivered: {} ({} distinct); \
         encoder attempts: {attempts}, none refused",
        api.calls,
        api.unavailable,
        rx.accepted().len(),
        bodies.len()
    );
    println!("  violations: {}", violations.len());
    for v in &violations {
        println!("    {v}");
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
}

/// Waits until every task pushes; records how long since `since`, or a violation.
async fn recovered(
    c: &Cluster,
    ids: &[String],
    fault: Fault,
    since: Instant,
    recoveries: &mut BTreeMap<Fault, Vec<Duration>>,
    violations: &mut Vec<String>,
) {
    match all_flowing(c, ids, RECOVERY_BOUND).await {
        Ok(()) => recoveries.entry(fault).or_default().push(since.elapsed()),
        Err(e) => violations.push(format!(
            "{fault:?}: not every task pushing {RECOVERY_BOUND:?} after the fault: {e}"
        )),
    }
}

/// Starts a worker behind its own cut-off proxy.
async fn add_worker(c: &mut Cluster, cuts: &mut HashMap<usize, EtcdCut>) {
    let cut = EtcdCut::start(&c.etcd.endpoint());
    let i = c
        .add_worker(WorkerOpts {
            etcd: Some(cut.endpoint()),
            ..WorkerOpts::default()
        })
        .await;
    cuts.insert(i, cut);
}

/// The REST base and Authorization header of every live controller.
fn api_endpoints(c: &Cluster) -> Vec<(String, String)> {
    (0..c.controllers.len())
        .filter(|&i| c.controller_alive(i))
        .map(|i| {
            (
                c.controllers[i].rest.clone(),
                c.controllers[i].auth_header(),
            )
        })
        .collect()
}

/// The ingest base URLs (`rtmp://host:port/app/`) of the live workers.
fn live_urls(c: &Cluster) -> Vec<String> {
    c.workers
        .iter()
        .filter(|w| w.alive)
        .map(|w| w.ingest_url(""))
        .collect()
}

/// Stream `s`'s publish URLs, starting at a different worker for each stream.
fn stream_urls(bases: &[String], s: usize) -> Vec<String> {
    (0..bases.len())
        .map(|i| format!("{}s{s}", bases[(s + i) % bases.len()]))
        .collect()
}

/// Points every publisher's next attempts at the live workers.
fn refresh(publishers: &[Publisher], urls: &Arc<Mutex<Vec<String>>>) {
    let bases = urls.lock().unwrap().clone();
    for (s, p) in publishers.iter().enumerate() {
        *p.urls.lock().unwrap() = stream_urls(&bases, s);
    }
}

/// Waits until every task of `ids` is started with its bytes moving, as a live
/// controller shows them; why not, at the deadline.
async fn all_flowing(c: &Cluster, ids: &[String], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut before: HashMap<String, u64> = HashMap::new();
    loop {
        let r = c.api().action("pushes", json!({})).await;
        if r.status == 200 {
            let tasks: HashMap<String, Value> = r.json["response"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| Some((t["id"].as_str()?.to_string(), t.clone())))
                        .collect()
                })
                .unwrap_or_default();
            let mut waiting = Vec::new();
            for id in ids {
                let t = tasks.get(id);
                let sent = t.and_then(|t| t["sentBytes"].as_u64()).unwrap_or(0);
                let started = t.is_some_and(|t| t["state"] == "started");
                let moved = before.get(id).is_some_and(|b| sent > *b);
                if !(started && moved) {
                    waiting.push(format!(
                        "{id}: {} {sent}",
                        t.map(|t| t["state"].to_string()).unwrap_or("absent".into())
                    ));
                }
                before.insert(id.clone(), sent);
            }
            if waiting.is_empty() {
                return Ok(());
            }
            let why = format!(
                "{} not yet: {}",
                waiting.len(),
                waiting
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if Instant::now() > deadline {
                return Err(why);
            }
        } else if Instant::now() > deadline {
            return Err(format!("API answered {}", r.status));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls `:pushes` on every controller every 500 ms: a 5xx other than 503 is a
/// violation; a 200 must list exactly `expected`, ids unique.
async fn poll_api(
    controllers: Arc<Mutex<Vec<(String, String)>>>,
    expected: Vec<String>,
    watch: Arc<Mutex<ApiWatch>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let http = pushcast_testkit::http::client(Duration::from_secs(5));
    let want: HashSet<&String> = expected.iter().collect();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let now = controllers.lock().unwrap().clone();
        for (base, auth) in &now {
            let r = http
                .post(format!("{base}/v1/vhosts/default/apps/app:pushes"))
                .header("Authorization", auth)
                .body("{}")
                .send()
                .await;
            // A killed controller does not answer at all: that is not the API's answer.
            let Ok(r) = r else { continue };
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let mut w = watch.lock().unwrap();
            w.calls += 1;
            match status {
                200 => {
                    let got: Vec<String> = body["response"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|t| t["id"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    let unique: HashSet<&String> = got.iter().collect();
                    if unique.len() != got.len() || unique != want {
                        w.violations.push(format!(
                            "the API listed {} tasks ({} distinct), expected {}",
                            got.len(),
                            unique.len(),
                            want.len()
                        ));
                    }
                }
                503 => w.unavailable += 1,
                s if s >= 500 => w.violations.push(format!("the API answered {s}: {body}")),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The events each task's receiver got (deduplicated by event id, in the order they
/// arrived), once nothing new has arrived for a while.
async fn settle_events(
    rx: &Receiver,
    ids: &[String],
    limit: Duration,
) -> HashMap<String, Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut last_count = usize::MAX;
    loop {
        let n = rx.accepted().len();
        let events = events_by_task(rx);
        let done = ids
            .iter()
            .all(|id| events.get(id).and_then(|e| e.last()).map(String::as_str) == Some("started"));
        if (done && n == last_count) || Instant::now() > deadline {
            return events;
        }
        last_count = n;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn events_by_task(rx: &Receiver) -> HashMap<String, Vec<String>> {
    let mut seen = HashSet::new();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in rx.accepted() {
        let id = r.header("x-event-id").unwrap_or_default().to_string();
        if !seen.insert(id) {
            continue;
        }
        let v = r.json();
        if let (Some(task), Some(event)) = (v["taskId"].as_str(), v["event"].as_str()) {
            out.entry(task.to_string())
                .or_default()
                .push(event.to_string());
        }
    }
    out
}
