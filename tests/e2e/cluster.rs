//! The distributed cluster end to end: real etcd, `pushcast-controller` and
//! `pushcast-worker` processes, ffmpeg encoders and an nginx-rtmp destination, put
//! through the failures of DESIGN.md "Scheduling and failure": a worker killed, the
//! leader killed, a worker cut off etcd (fencing), etcd restarted, and the steady-state
//! write volume. Every test ends by checking that no destination ever had two publishers
//! at once (nginx-rtmp logs `already publishing` when it refuses a second one).
//!
//! The tests take turns (one cluster at a time), so their timings are not skewed by each
//! other. Measured times are printed (`cargo test --test cluster -- --nocapture`).

use std::time::{Duration, Instant};

use pushcast_testkit::cluster::{Cluster, EtcdCut, Publisher, WorkerOpts};
use pushcast_testkit::etcd::EtcdProcess as Etcd;
use pushcast_testkit::wait_for;
use serde_json::json;

/// One cluster at a time (the chaos soak takes it too).
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `--lease-ttl-secs` of the workers in the failure tests.
const WORKER_TTL: u64 = 3;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One controller, two workers with the default lease, `n` tasks of `stream` pushing
/// from w0, where an encoder that reconnects (OBS-like) publishes it.
async fn pushing_from_w0(stream: &str, n: usize) -> (Cluster, Vec<String>, Vec<String>, Publisher) {
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    c.add_worker(WorkerOpts::default()).await;
    c.add_worker(WorkerOpts::default()).await;
    c.wait_for_leader(secs(15)).await;
    let (ids, keys) = names(stream, n);
    for i in 0..n {
        c.start_push(0, &ids[i], stream, &keys[i]).await;
    }
    let first = Publisher::start(&c.workers[0].ingest_url(stream), &c.path().join("p1.log"));
    c.wait_started_on(0, &ids, Some("w0"), secs(30)).await;
    (c, ids, keys, first)
}

/// An ffmpeg that publishes `stream` to worker `w` once, looping the test media `loops`
/// more times (-1: until stopped), and does not retry.
fn encoder_once(
    c: &Cluster,
    w: usize,
    stream: &str,
    loops: i64,
    log: &std::path::Path,
) -> pushcast_testkit::proc::Guard {
    pushcast_testkit::ffmpeg::publish_file(
        &pushcast_testkit::media::test_media().flv,
        &c.workers[w].ingest_url(stream),
        loops,
        log,
    )
}

/// Task ids `{prefix}{i}` and their stream keys `{prefix}key{i}`.
fn names(prefix: &str, n: usize) -> (Vec<String>, Vec<String>) {
    (
        (0..n).map(|i| format!("{prefix}{i}")).collect(),
        (0..n).map(|i| format!("{prefix}key{i}")).collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_tasks_from_three_workers_all_push() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    c.add_controller().await;
    for _ in 0..3 {
        c.add_worker(WorkerOpts::default()).await;
    }
    c.wait_for_leader(secs(15)).await;

    // 10 tasks per stream, created alternately on both controllers.
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for s in 0..3 {
        let (i, k) = names(&format!("s{s}t"), 10);
        for n in 0..10 {
            c.start_push(n % 2, &i[n], &format!("s{s}"), &k[n]).await;
        }
        ids.extend(i);
        keys.extend(k);
    }
    let t0 = Instant::now();
    let _publishers: Vec<Publisher> = (0..3)
        .map(|s| {
            let url = c.workers[s].ingest_url(&format!("s{s}"));
            Publisher::start(&url, &c.path().join(format!("publish-s{s}.log")))
        })
        .collect();
    let on_c0 = c.wait_started_on(0, &ids, None, secs(30)).await;
    println!(
        "MEASURED 30 tasks on 3 workers: publish to all started {:?}",
        t0.elapsed()
    );
    // Each task runs where its stream is live.
    for (id, t) in &on_c0 {
        let s = &id[1..2];
        assert_eq!(t["worker"], format!("w{s}"), "task {id}: {t}");
    }
    // Both replicas show all 30, and the counters move (live from the workers).
    let on_c1 = c.wait_started_on(1, &ids, None, secs(10)).await;
    c.wait_counters_move(0, &ids, &on_c0, secs(10)).await;
    c.wait_counters_move(1, &ids, &on_c1, secs(10)).await;
    // Every destination receives.
    c.wait_recordings_grow(&keys, secs(10)).await;
    c.assert_no_double_publish();
}

/// kill -9 of the ingest worker, the encoder reconnecting at once to another worker,
/// default settings (5 s lease): the encoder is admitted at its first attempt — an
/// ffmpeg that does not retry — because the dead worker (nothing listens on its port
/// any more) has its lease revoked instead of waited out; the tasks push again from the
/// new worker, and no destination ever has two publishers.
#[tokio::test(flavor = "multi_thread")]
async fn worker_kill9_the_reconnecting_encoder_is_admitted_at_once() {
    let _serial = SERIAL.lock().await;
    let (mut c, ids, keys, mut first) = pushing_from_w0("cam", 5).await;
    let ttl = secs(WorkerOpts::default().lease_ttl_secs);
    c.wait_recordings_grow(&keys, secs(10)).await;

    let t_kill = Instant::now();
    c.kill9_worker(0);
    first.stop();
    // What the destination has from the dead worker, once nginx has closed it.
    c.wait_recordings_stop(&keys, Duration::from_millis(300), secs(10))
        .await;
    let before: Vec<u64> = keys.iter().map(|k| c.recording_size(k)).collect();
    // The encoder reconnects once, to the other worker, while the dead one's stream is
    // still registered under its unexpired lease.
    let reconnect = t_kill.elapsed();
    assert!(
        reconnect < ttl,
        "the lease must still be live: {reconnect:?}"
    );
    let log = c.path().join("p2.log");
    let mut second = encoder_once(&c, 1, "cam", -1, &log);
    let took = c.wait_recordings_change(&keys, &before, secs(30)).await;
    println!(
        "MEASURED worker kill -9, encoder reconnecting at once to another worker: bytes at \
         the destination {took:?} after the reconnect ({:?} after the kill; lease TTL {ttl:?})",
        t_kill.elapsed()
    );
    assert!(
        second.try_status().is_none(),
        "the encoder was admitted: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        !c.log_lines("w1", "revoking its lease").is_empty(),
        "w1 revoked the dead worker's lease"
    );
    // Waiting the lease out would take at least what was left of the TTL.
    assert!(
        reconnect + took < ttl,
        "pushing again {took:?} after the reconnect: the lease was waited out"
    );
    c.wait_started_on(0, &ids, Some("w1"), secs(30)).await;
    c.assert_no_double_publish();
}

/// A frozen ingest worker (SIGSTOP: its kernel still accepts connections, nothing
/// answers) cannot be told from a partitioned one: an encoder publishing its stream to
/// another worker is held — not refused — until the frozen worker's lease expires, then
/// admitted; while the worker answered, the same publish was refused. When the frozen
/// worker wakes up it finds its lease gone, fences, and ends its stale publisher: no
/// destination ever has two publishers.
#[tokio::test(flavor = "multi_thread")]
async fn frozen_worker_the_publish_is_held_until_its_lease_expires() {
    let _serial = SERIAL.lock().await;
    let (c, ids, keys, mut first) = pushing_from_w0("frz", 3).await;
    let ttl = secs(WorkerOpts::default().lease_ttl_secs);

    // w0 answers: the stream really is live there.
    let dup_log = c.path().join("dup.log");
    let mut dup = encoder_once(&c, 1, "frz", 0, &dup_log);
    assert!(
        dup.wait_exit(secs(10)).is_some(),
        "the duplicate is refused"
    );
    let dup_said = std::fs::read_to_string(&dup_log).unwrap_or_default();
    assert!(dup_said.contains("ExistStreamName"), "{dup_said}");

    c.pause_worker(0);
    let t_pause = Instant::now();
    first.stop();
    c.wait_recordings_stop(&keys, Duration::from_millis(300), secs(10))
        .await;
    let before: Vec<u64> = keys.iter().map(|k| c.recording_size(k)).collect();
    let log = c.path().join("p2.log");
    let t_publish = Instant::now();
    let mut second = encoder_once(&c, 1, "frz", -1, &log);
    let took = c.wait_recordings_change(&keys, &before, secs(30)).await;
    println!(
        "MEASURED frozen ingest worker: the new publish held, bytes at the destination \
         {took:?} after it ({:?} after the freeze; lease TTL {ttl:?})",
        t_pause.elapsed()
    );
    assert!(
        second.try_status().is_none(),
        "held, then admitted: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!c.log_lines("w1", "holding the publish").is_empty());
    assert!(
        c.log_lines("w1", "revoking its lease").is_empty(),
        "never revoked"
    );
    // Held until the lease expired: not before what was left of it could have run out
    // (renewed every TTL/3, so at least 2/3 of the TTL was left at the freeze).
    assert!(
        t_publish.elapsed() >= ttl * 2 / 3 - (t_publish - t_pause),
        "admitted after {:?}, before the frozen worker's lease could expire",
        t_publish.elapsed()
    );
    c.wait_started_on(0, &ids, Some("w1"), secs(30)).await;

    c.resume_worker(0);
    wait_for("w0 to end its stale publisher", secs(15), || async {
        (!c.log_lines("w0", "fenced").is_empty()).then_some(())
    })
    .await;
    c.wait_recordings_grow(&keys, secs(10)).await;
    c.assert_no_double_publish();
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill9_new_leader_within_ttl_and_gap_requests_succeed() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    c.add_controller().await;
    c.add_worker(WorkerOpts::default()).await;
    let leader = c.wait_for_leader(secs(15)).await;
    let survivor = 1 - leader;
    let ttl = secs(c.leader_ttl_secs);

    let _publisher = Publisher::start(&c.workers[0].ingest_url("cam"), &c.path().join("p.log"));
    c.start_push(survivor, "before", "cam", "before").await;
    c.wait_started_on(survivor, &["before".to_string()], Some("w0"), secs(30))
        .await;

    let t_kill = Instant::now();
    c.kill9_controller(leader);
    // During the gap (the dead leader's key lives until its lease expires) the surviving
    // replica still serves the API.
    let r = c.controllers[survivor]
        .action("startPush", c.push_body("during", "cam", "during"))
        .await;
    assert_eq!(r.status, 200, "startPush during the gap: {}", r.text);
    let answered = t_kill.elapsed();
    assert!(answered < secs(2), "startPush in the gap took {answered:?}");
    let new = c.wait_for_leader(ttl + secs(10)).await;
    let election = t_kill.elapsed();
    assert!(
        answered < election,
        "the request was meant to land in the gap, before the new election"
    );
    assert_eq!(new, survivor);
    let both = ["before".to_string(), "during".to_string()];
    c.wait_started_on(survivor, &both, Some("w0"), secs(20))
        .await;
    let started = t_kill.elapsed();
    println!(
        "MEASURED leader kill -9: startPush in the gap answered 200 after {answered:?}; new \
         leader after {election:?} (leader TTL {ttl:?}); the gap's task pushing {started:?} \
         after the kill"
    );
    // The dead leader's key goes when its lease expires: at most the TTL after the kill,
    // plus etcd's expiry sweep (every 500 ms); the survivor may then take a moment more.
    assert!(
        election <= ttl + secs(1),
        "new leader after {election:?}, lease TTL {ttl:?}"
    );
    c.assert_no_double_publish();
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_cut_from_etcd_fences_before_its_lease_expires() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    let cut = EtcdCut::start(&c.etcd.endpoint());
    let w_cut = c
        .add_worker(WorkerOpts {
            lease_ttl_secs: WORKER_TTL,
            etcd: Some(cut.endpoint()),
            ..WorkerOpts::default()
        })
        .await;
    let w_ok = c
        .add_worker(WorkerOpts {
            lease_ttl_secs: WORKER_TTL,
            ..WorkerOpts::default()
        })
        .await;
    c.wait_for_leader(secs(15)).await;

    let (ids, keys) = names("cam", 5);
    for n in 0..5 {
        c.start_push(0, &ids[n], "cam", &keys[n]).await;
    }
    let mut first = Publisher::start(
        &c.workers[w_cut].ingest_url("cam"),
        &c.path().join("p1.log"),
    );
    c.wait_started_on(0, &ids, Some("w0"), secs(30)).await;
    c.wait_recordings_grow(&keys, secs(10)).await;

    // w0 loses etcd (the others keep it): it must stop pushing before its lease can
    // expire, i.e. within the TTL of the cut.
    let t_cut = Instant::now();
    cut.cut();
    let last = c
        .wait_recordings_stop(&keys, secs(1), secs(WORKER_TTL + 6))
        .await;
    let fence = last
        .iter()
        .flatten()
        .max()
        .map(|t| t.duration_since(t_cut))
        .unwrap_or_default();
    println!(
        "MEASURED worker cut from etcd to its sessions stopped (fenced): {fence:?} (lease TTL \
         {WORKER_TTL} s)"
    );
    for l in c.log_lines("w0", "fenc") {
        println!("  w0: {l}");
    }
    assert!(
        c.workers[w_cut].proc.is_running(),
        "the cut worker stays up"
    );
    assert!(
        fence < secs(WORKER_TTL),
        "w0 pushed for {fence:?} after losing etcd; its lease TTL is {WORKER_TTL} s\n{}",
        c.logs_tail(40)
    );

    // The encoder moves to the other worker (a backup server in OBS); the tasks follow.
    first.stop();
    let _second = Publisher::start(&c.workers[w_ok].ingest_url("cam"), &c.path().join("p2.log"));
    let moved = c.wait_started_on(0, &ids, Some("w1"), secs(30)).await;
    let moved_after = t_cut.elapsed();
    println!("MEASURED cut to the tasks pushing from w1: {moved_after:?}");
    // The stream is free once w0's lease expires; the encoder retries every 250 ms.
    assert!(
        moved_after < secs(WORKER_TTL + 4),
        "the tasks pushed from w1 only {moved_after:?} after the cut"
    );
    c.wait_recordings_grow(&keys, secs(10)).await;

    // The partition heals: w0 rejoins and must not push the tasks again.
    cut.restore();
    wait_for("w0 registered again", secs(20), || async {
        c.etcd_get("workers/w0").await.map(|_| ())
    })
    .await;
    // An observation window: a stale session on w0 would show as a second publisher.
    tokio::time::sleep(secs(2)).await;
    c.wait_counters_move(0, &ids, &moved, secs(10)).await;
    c.wait_started_on(0, &ids, Some("w1"), secs(5)).await;
    c.assert_no_double_publish();
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restart_sessions_keep_pushing_and_the_cluster_converges() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    c.add_controller().await;
    // A lease long enough that a short etcd outage is not a lost lease.
    let opts = WorkerOpts {
        lease_ttl_secs: 10,
        ..WorkerOpts::default()
    };
    c.add_worker(opts.clone()).await;
    c.add_worker(opts).await;
    c.wait_for_leader(secs(15)).await;

    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for s in 0..2 {
        let (i, k) = names(&format!("s{s}t"), 4);
        for n in 0..4 {
            c.start_push(s, &i[n], &format!("s{s}"), &k[n]).await;
        }
        ids.extend(i);
        keys.extend(k);
    }
    let _publishers: Vec<Publisher> = (0..2)
        .map(|s| {
            let url = c.workers[s].ingest_url(&format!("s{s}"));
            Publisher::start(&url, &c.path().join(format!("publish-s{s}.log")))
        })
        .collect();
    let before = c.wait_started_on(0, &ids, None, secs(30)).await;
    c.wait_recordings_grow(&keys, secs(10)).await;

    // etcd goes away: the API says so, the sessions keep pushing.
    const OUTAGE: Duration = Duration::from_secs(2);
    let t_stop = Instant::now();
    c.etcd.stop();
    let r = c.controllers[0].action("pushes", json!({})).await;
    assert_eq!(r.status, 503, "API with etcd down: {}", r.text);
    let mut rounds = 0;
    while t_stop.elapsed() < OUTAGE {
        c.wait_recordings_grow(&keys, Duration::from_millis(1500))
            .await;
        rounds += 1;
    }
    c.etcd.restart();
    let outage = t_stop.elapsed();
    c.wait_recordings_grow(&keys, secs(5)).await;

    // The cluster converges: every task started where it was, counters moving, on both
    // replicas.
    let t_back = Instant::now();
    let after = c.wait_started_on(0, &ids, None, secs(30)).await;
    let back = t_back.elapsed();
    println!(
        "MEASURED etcd outage {outage:?} ({rounds} rounds of all recordings growing during it); \
         API and all tasks started {back:?} after etcd was back"
    );
    assert!(
        back < secs(5),
        "the API showed every task started only {back:?} after etcd came back"
    );
    for id in &ids {
        assert_eq!(
            after[id]["worker"], before[id]["worker"],
            "task {id} moved: {}",
            after[id]
        );
    }
    let on_c1 = c.wait_started_on(1, &ids, None, secs(10)).await;
    c.wait_counters_move(1, &ids, &on_c1, secs(10)).await;
    c.wait_for_leader(secs(15)).await;
    c.assert_no_double_publish();
}

#[tokio::test(flavor = "multi_thread")]
async fn steady_state_etcd_writes_are_bounded() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    c.add_worker(WorkerOpts::default()).await;
    c.wait_for_leader(secs(15)).await;

    const TASKS: usize = 100;
    let (ids, keys) = names("t", TASKS);
    for n in 0..TASKS {
        c.start_push(0, &ids[n], "cam", &keys[n]).await;
    }
    let t0 = Instant::now();
    let _publisher = Publisher::start(&c.workers[0].ingest_url("cam"), &c.path().join("p.log"));
    c.wait_started_on(0, &ids, Some("w0"), secs(40)).await;
    println!(
        "MEASURED {TASKS} tasks: publish to all started {:?}",
        t0.elapsed()
    );
    c.wait_recordings_grow(&keys, secs(10)).await;

    // A steady observation window.
    const WINDOW: Duration = Duration::from_secs(30);
    let rev0 = c.etcd_revision().await;
    tokio::time::sleep(WINDOW).await;
    let rev1 = c.etcd_revision().await;
    let grew = rev1 - rev0;
    println!(
        "MEASURED etcd revision over {WINDOW:?} of {TASKS} steady tasks: {rev0} -> {rev1} \
         (+{grew}); tasks x seconds would be {}",
        TASKS as u64 * WINDOW.as_secs()
    );
    let writes = c.etcd_writes_since(rev0).await;
    println!("  keys written in the window, by kind: {writes:?}");
    c.wait_started_on(0, &ids, Some("w0"), secs(10)).await;
    // Status checkpoints every 30 s, 50 tasks per transaction: one or two checkpoints in
    // the window, two transactions each.
    let bound = 2 * TASKS.div_ceil(50) as u64;
    assert!(
        grew <= bound,
        "etcd revision grew by {grew} (more than {bound}) in {WINDOW:?} of steady state \
         ({TASKS} tasks); keys written, by kind: {writes:?}"
    );
    c.assert_no_double_publish();
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_sigterm_hands_leadership_over_at_once() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    c.add_controller().await;
    let leader = c.wait_for_leader(secs(15)).await;
    let ttl = secs(c.leader_ttl_secs);
    let t0 = Instant::now();
    c.controllers[leader].proc.signal("TERM");
    let new = wait_for("another leader", ttl + secs(5), || async {
        c.leader().await.filter(|n| *n != leader)
    })
    .await;
    let took = t0.elapsed();
    println!("MEASURED leader SIGTERM to new leader: {took:?} (leader TTL {ttl:?})");
    assert_eq!(new, 1 - leader);
    assert!(
        took < ttl,
        "handed over at once (revoked lease), not after the TTL: {took:?}"
    );
    let code = c.controllers[leader].proc.wait_exit(secs(10)).await;
    assert_eq!(code, Some(0), "the old leader exits cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_ingest_worker_overflows_to_another_worker_over_a_relay() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Etcd::start()).await;
    c.add_controller().await;
    c.add_worker(WorkerOpts {
        max_sessions: 1,
        ..WorkerOpts::default()
    })
    .await;
    c.add_worker(WorkerOpts::default()).await;
    c.wait_for_leader(secs(15)).await;
    let _publisher = Publisher::start(&c.workers[0].ingest_url("hot"), &c.path().join("hot.log"));
    c.start_push(0, "a", "hot", "ka").await;
    c.start_push(0, "b", "hot", "kb").await;
    let ids = ["a".to_string(), "b".to_string()];
    let tasks = c.wait_started_on(0, &ids, None, secs(30)).await;
    let mut workers: Vec<String> = tasks
        .values()
        .map(|t| t["worker"].as_str().unwrap_or_default().to_string())
        .collect();
    workers.sort();
    assert_eq!(
        workers,
        ["w0", "w1"],
        "one push stays on the full ingest worker, one overflows"
    );
    // Both destinations receive the stream, the relayed one included.
    c.wait_recordings_grow(&["ka".to_string(), "kb".to_string()], secs(15))
        .await;
    assert!(
        c.workers[0]
            .proc
            .output()
            .iter()
            .any(|l| l.contains("forward{to=w1")),
        "w0 forwards the stream to w1"
    );
    c.assert_no_double_publish();
}

/// The positive control of `assert_no_double_publish`, which every test above ends with:
/// two publishers on one destination at once do show in nginx-rtmp's log. Two standalone
/// nodes (separate stores, so nothing stops them) push one stream key to the cluster's
/// destination; the detector must see it.
#[tokio::test(flavor = "multi_thread")]
async fn the_double_publish_detector_sees_two_publishers() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(Etcd::start()).await;
    assert!(c.double_publishes().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let mut publishers = Vec::new();
    for n in ["a", "b"] {
        let node = pushcast_testkit::api::Node::standalone(&dir.path().join(n), "double").await;
        node.open_publish("app").await;
        let r = node
            .action(
                "startPush",
                json!({"id": "dup", "stream": {"name": "cam"}, "protocol": "rtmp",
                       "url": c.nginx.rtmp_url(), "streamKey": "samekey"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let url = node.ingest_url("app", "cam");
        publishers.push((
            node,
            Publisher::start(&url, &dir.path().join(format!("{n}.log"))),
        ));
    }
    let lines = wait_for("nginx to refuse the second publisher", secs(20), || async {
        let lines = c.double_publishes();
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    println!("detector: {}", lines[0]);
}

/// A three-member etcd. One member killed: the service goes on (a new task is accepted
/// and starts, the running ones keep pushing). A second one killed: no quorum — a write
/// answers 503 within the request deadline, and the running pushes keep going for three
/// lease TTLs (without a leader no lease can expire, and the worker can prove there is
/// none: it does not fence). The members return: everything converges, the task refused
/// meanwhile is accepted and starts.
#[tokio::test(flavor = "multi_thread")]
async fn three_member_etcd_one_down_goes_on_two_down_is_503_and_pushes_keep_going() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_members(Etcd::cluster(3)).await;
    c.add_controller().await;
    let opts = WorkerOpts::default();
    let ttl = secs(opts.lease_ttl_secs);
    c.add_worker(opts).await;
    c.wait_for_leader(secs(15)).await;

    let (ids, keys) = names("q", 5);
    for n in 0..3 {
        c.start_push(0, &ids[n], "q", &keys[n]).await;
    }
    let _publisher = Publisher::start(&c.workers[0].ingest_url("q"), &c.path().join("p.log"));
    c.wait_started_on(0, &ids[..3], Some("w0"), secs(30)).await;

    // One member of three down: the service goes on. (If it was etcd's leader, the two
    // others elect one first; meanwhile etcd says "leader changed" and the API answers
    // 503, try again — what a client does.)
    c.etcd_members[1].stop();
    let body = c.push_body(&ids[3], "q", &keys[3]);
    let t = Instant::now();
    wait_for(
        "startPush accepted by two members of three",
        secs(15),
        || async {
            let r = c.controllers[0].action("startPush", body.clone()).await;
            assert!(r.status == 200 || r.status == 503, "{}", r.text);
            (r.status == 200).then_some(())
        },
    )
    .await;
    println!(
        "MEASURED one etcd member down: startPush accepted after {:?}",
        t.elapsed()
    );
    c.wait_started_on(0, &ids[..4], Some("w0"), secs(30)).await;

    // Two down: no quorum.
    c.etcd_members[0].stop();
    let t_lost = Instant::now();
    let t = Instant::now();
    let r = c.controllers[0]
        .action("startPush", c.push_body(&ids[4], "q", &keys[4]))
        .await;
    let answered = t.elapsed();
    assert_eq!(r.status, 503, "a write without a quorum: {}", r.text);
    println!("MEASURED etcd without a quorum: startPush answered 503 in {answered:?}");
    assert!(answered < secs(4), "the request deadline: {answered:?}");
    let mut rounds = 0;
    while t_lost.elapsed() < ttl * 3 {
        c.wait_recordings_grow(&keys[..4], secs(2)).await;
        rounds += 1;
    }
    assert!(
        c.log_lines("w0", "FENCED").is_empty(),
        "the worker fenced without a quorum"
    );
    assert!(!c.log_lines("w0", "has no quorum").is_empty());
    println!(
        "MEASURED etcd without a quorum for {:?}: {rounds} rounds of every recording growing",
        t_lost.elapsed()
    );

    // The members return: the cluster converges.
    c.etcd_members[0].start_again();
    c.etcd_members[1].start_again();
    for m in &mut c.etcd_members {
        m.wait_healthy().unwrap();
    }
    let t_back = Instant::now();
    let body = c.push_body(&ids[4], "q", &keys[4]);
    wait_for(
        "startPush accepted with the quorum back",
        secs(30),
        || async {
            let r = c.controllers[0].action("startPush", body.clone()).await;
            (r.status == 200).then_some(())
        },
    )
    .await;
    c.wait_started_on(0, &ids, Some("w0"), secs(30)).await;
    println!(
        "MEASURED quorum back to all five tasks started: {:?}",
        t_back.elapsed()
    );
    c.wait_recordings_grow(&keys, secs(10)).await;
    c.assert_no_double_publish();
}
