//! Prometheus `/metrics` of the real binaries during a push: the exposition is valid (as
//! `promtool check metrics` says) and the push counters move.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::api::Node;
use support::peers::media::test_media;
use support::peers::nginx::Nginx;
use support::peers::proc::Guard;
use support::wait_for;

const TOKEN: &str = "metrics";

async fn scrape(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample of `name` (with any labels) in an exposition.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn promtool_check(text: &str) {
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
    // promtool exits 3 for lint warnings only (e.g. a counter without `_total`); an
    // unparsable exposition is exit 1.
    assert!(
        out.status.code() == Some(0),
        "promtool check metrics: {said}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_push_counters_move() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        format!("--data-dir={}", dir.path().display()),
        format!("--access-token={TOKEN}"),
        "--rest-addr=127.0.0.1:0".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--rtmp-addr=127.0.0.1:0".into(),
        "--metrics-addr=127.0.0.1:0".into(),
    ];
    let mut node = Node::start("pushcast", "standalone", args, TOKEN).await;
    let metrics = node.proc.wait_for_field("metrics listening", "addr").await;
    node.open_publish("app").await;
    let nginx = Nginx::start();
    let r = node
        .action(
            "startPush",
            json!({"id": "m", "stream": {"name": "cam"}, "protocol": "rtmp",
                                    "url": nginx.rtmp_url(), "streamKey": "m"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let url = node.ingest_url("app", "cam");
    let mut publisher = Guard::spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-stream_loop",
            "1",
            "-i",
            test_media().flv.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "flv",
            &url,
        ],
        &dir.path().join("publish.log"),
    );
    let first = wait_for(
        "push bytes in /metrics",
        Duration::from_secs(20),
        || async {
            let t = scrape(&metrics).await;
            (value(&t, "pushcast_push_sent_bytes_total").unwrap_or(0.0) > 0.0).then_some(t)
        },
    )
    .await;
    let bytes1 = value(&first, "pushcast_push_sent_bytes_total").unwrap();
    let second = wait_for("push bytes growing", Duration::from_secs(20), || async {
        let t = scrape(&metrics).await;
        (value(&t, "pushcast_push_sent_bytes_total").unwrap_or(0.0) > bytes1).then_some(t)
    })
    .await;
    for name in [
        "pushcast_ingest_streams",
        "pushcast_ingest_publishes_total",
        "pushcast_scheduler_passes_total",
        "pushcast_leader",
    ] {
        assert!(value(&second, name).is_some(), "{name} in:\n{second}");
    }
    assert_eq!(value(&second, "pushcast_ingest_streams"), Some(1.0));
    promtool_check(&second);
    assert!(
        publisher
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );
}
