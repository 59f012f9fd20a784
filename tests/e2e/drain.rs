//! Graceful drain: SIGTERM on a node with a live publisher refuses new publishes, lets
//! the live one (and its pushes) go on until it ends or the grace runs out, then exits 0.

use std::time::{Duration, Instant};

use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::publish;
use pushcast_testkit::nginx::Nginx;
use serde_json::json;

const TOKEN: &str = "drain";

async fn node(dir: &std::path::Path, grace_secs: u64) -> Node {
    let args = vec![
        format!("--data-dir={}", dir.display()),
        format!("--access-token={TOKEN}"),
        "--rest-addr=127.0.0.1:0".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--rtmp-addr=127.0.0.1:0".into(),
        format!("--drain-grace-secs={grace_secs}"),
    ];
    let node = Node::start("pushcast", "standalone", args, TOKEN).await;
    node.open_publish("app").await;
    node
}

fn size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_live_publish_finish_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node(dir.path(), 60).await;
    let nginx = Nginx::start();
    let r = node
        .action(
            "startPush",
            json!({"id": "d", "stream": {"name": "cam"}, "protocol": "rtmp",
                                    "url": nginx.rtmp_url(), "streamKey": "d"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut live = publish(&node.ingest_url("app", "cam"), dir.path(), "live", 1);
    pushcast_testkit::wait_for("the push to start", Duration::from_secs(20), || async {
        (node.task("d").await["state"] == "started").then_some(())
    })
    .await;

    node.proc.signal("TERM");
    node.proc.wait_for_field("draining", "grace_secs").await;
    // No new publish is accepted.
    let mut refused = publish(&node.ingest_url("app", "other"), dir.path(), "new", 0);
    assert!(
        !refused
            .wait_exit(Duration::from_secs(10))
            .expect("refused")
            .success()
    );
    // The live one goes on, and so does its push.
    let rec = nginx.recording("d");
    let before = size(&rec);
    pushcast_testkit::wait_for(
        "the recording to grow during the drain",
        Duration::from_secs(10),
        || async { (size(&rec) > before).then_some(()) },
    )
    .await;
    assert!(
        live.try_status().is_none(),
        "the live publisher is still going"
    );
    assert!(
        live.wait_exit(Duration::from_secs(20)).unwrap().success(),
        "it ran to its end"
    );
    let code = node.proc.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "exits 0 once the live publish ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_grace_bounds_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node(dir.path(), 2).await;
    let mut live = publish(&node.ingest_url("app", "cam"), dir.path(), "long", 20);
    node.proc
        .wait_logged(&["publish started"], Duration::from_secs(10))
        .await;
    let t0 = Instant::now();
    node.proc.signal("TERM");
    let code = node.proc.wait_exit(Duration::from_secs(15)).await;
    let took = t0.elapsed();
    println!("stopped {took:?} after SIGTERM with a 2 s grace");
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let _ = live.terminate(Duration::from_secs(3));
}
