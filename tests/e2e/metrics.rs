//! Prometheus `/metrics` of the real `pushcast-controller` and `pushcast-worker` binaries
//! during a push: both expositions are valid (as `promtool check metrics` says) and the
//! push counters move.

use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess as Etcd;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::process::Proc;
use pushcast_testkit::wait_for;
use serde_json::json;

const TOKEN: &str = "metrics";

async fn scrape(addr: &str) -> String {
    pushcast_testkit::http::get_text(&format!("http://{addr}/metrics")).await
}

use pushcast_testkit::http::metric as value;

fn promtool_check(what: &str, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool is not installed: scripts/deps.sh test installs Debian's prometheus package",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 3 is lint only (e.g. a missing help text), 1 an unparsable exposition: both fail.
    assert_eq!(
        out.status.code(),
        Some(0),
        "promtool check metrics ({what}): {said}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_of_both_binaries_parse_and_push_counters_move() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut controller = Node::start(
        "pushcast-controller",
        "c0",
        vec![
            format!("--etcd-endpoints={}", etcd.endpoint()),
            format!("--access-token={TOKEN}"),
            "--node-id=c0".into(),
            "--rest-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--metrics-addr=127.0.0.1:0".into(),
            format!("--data-dir={}", dir.path().join("c0").display()),
        ],
        TOKEN,
    )
    .await;
    let controller_metrics = controller
        .proc
        .wait_for_field("metrics listening", "addr")
        .await;
    controller.open_publish("app").await;
    let mut worker = Proc::worker(
        &etcd.endpoint(),
        "w0",
        &dir.path().join("w0"),
        &["--metrics-addr=127.0.0.1:0".into()],
    )
    .await;
    let worker_metrics = worker.wait_for_field("metrics listening", "addr").await;
    let rtmp = worker.wait_for_field("RTMP ingest listening", "addr").await;

    let nginx = Nginx::start();
    let r = controller
        .action(
            "startPush",
            json!({"id": "m", "stream": {"name": "cam"}, "protocol": "rtmp",
                                    "url": nginx.rtmp_url(), "streamKey": "m"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut publisher =
        pushcast_testkit::ffmpeg::publish(&format!("rtmp://{rtmp}/app/cam"), dir.path(), "p", 1);

    let first = wait_for(
        "push bytes in the worker's /metrics",
        Duration::from_secs(20),
        || async {
            let t = scrape(&worker_metrics).await;
            (value(&t, "pushcast_push_sent_bytes_total").unwrap_or(0.0) > 0.0).then_some(t)
        },
    )
    .await;
    let bytes1 = value(&first, "pushcast_push_sent_bytes_total").unwrap();
    let worker_text = wait_for("push bytes growing", Duration::from_secs(20), || async {
        let t = scrape(&worker_metrics).await;
        (value(&t, "pushcast_push_sent_bytes_total").unwrap_or(0.0) > bytes1).then_some(t)
    })
    .await;
    assert_eq!(value(&worker_text, "pushcast_ingest_streams"), Some(1.0));
    assert!(value(&worker_text, "pushcast_ingest_publishes_total").is_some());
    promtool_check("worker", &worker_text);

    let controller_text = scrape(&controller_metrics).await;
    assert_eq!(value(&controller_text, "pushcast_leader"), Some(1.0));
    assert!(value(&controller_text, "pushcast_scheduler_passes_total").unwrap_or(0.0) >= 1.0);
    assert!(value(&controller_text, "pushcast_scheduler_placed_tasks").is_some());
    promtool_check("controller", &controller_text);
    assert!(
        publisher
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );
}
