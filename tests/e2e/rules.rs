//! Auto-push rules (issue 18) end to end: a rule `cam*` with two destinations, two real
//! encoders, nginx-rtmp recording what arrives; the rule edited live; a hand-made task
//! on a rule's destination refused; a restart that creates nothing twice.

use std::path::Path;
use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::publish_file;
use pushcast_testkit::media::test_media;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::proc::Guard;
use pushcast_testkit::wait_for;
use serde_json::{Value, json};

const TOKEN: &str = "rules";

fn rule(nginx: &Nginx, keys: &[&str]) -> Value {
    json!({"rules": [{"name": "yt", "stream": "cam*", "destinations": keys.iter().map(|k| json!({
        "protocol": "rtmp", "url": nginx.rtmp_url(), "streamKey": k})).collect::<Vec<_>>()}]})
}

async fn patch_app(node: &Node, body: Value) -> Value {
    let r = node
        .call(
            "PATCH",
            "/v1/vhosts/default/apps/app",
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

fn encoder(node: &Node, name: &str, dir: &Path) -> Guard {
    publish_file(
        &test_media().flv,
        &node.ingest_url("app", name),
        -1,
        &dir.join(format!("{name}.log")),
    )
}

async fn tasks(node: &Node) -> Vec<Value> {
    let r = node.action("pushes", json!({})).await;
    r.json["response"].as_array().cloned().unwrap_or_default()
}

/// nginx's publish sessions for `key`.
fn sessions(nginx: &Nginx, key: &str) -> usize {
    nginx
        .error_log()
        .lines()
        .filter(|l| l.contains(&format!("publish: name='{key}'")))
        .count()
}

async fn recording_grows(nginx: &Nginx, key: &str) {
    let path = nginx.recording(key);
    let first = wait_for(
        &format!("{key} recorded"),
        Duration::from_secs(30),
        || async {
            std::fs::metadata(&path)
                .ok()
                .map(|m| m.len())
                .filter(|n| *n > 0)
        },
    )
    .await;
    wait_for(
        &format!("{key} growing"),
        Duration::from_secs(30),
        || async {
            let now = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            (now > first).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_pushes_every_matching_stream_follows_edits_and_makes_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let nginx = Nginx::start();
    let app = patch_app(
        &node,
        rule(&nginx, &["${SourceStream}-a", "${SourceStream}-b"]),
    )
    .await;
    assert_eq!(app["response"]["rules"][0]["stream"], "cam*", "{app}");

    let (_cam1, _cam2) = (
        encoder(&node, "cam1", dir.path()),
        encoder(&node, "cam2", dir.path()),
    );
    let _other = encoder(&node, "other", dir.path());
    for key in ["cam1-a", "cam1-b", "cam2-a", "cam2-b"] {
        recording_grows(&nginx, key).await;
    }
    let list = tasks(&node).await;
    let ids: Vec<&str> = list.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.contains(&"rule.yt.cam1") && ids.contains(&"rule.yt.cam2"),
        "{ids:?}"
    );
    assert!(list.iter().all(|t| t["rule"] == "yt"), "{list:?}");

    // A hand-made task on a rule's destination is refused by the uniqueness rule.
    let r = node
        .action(
            "startPush",
            json!({"id": "mine", "stream": {"name": "other"}, "protocol": "rtmp",
                   "url": nginx.rtmp_url(), "streamKey": "cam1-a"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);

    // Edited live: a third destination; the two others keep their sessions.
    patch_app(
        &node,
        rule(
            &nginx,
            &[
                "${SourceStream}-a",
                "${SourceStream}-b",
                "${SourceStream}-c",
            ],
        ),
    )
    .await;
    for key in ["cam1-c", "cam2-c"] {
        recording_grows(&nginx, key).await;
    }
    for key in ["cam1-a", "cam1-b", "cam2-a", "cam2-b"] {
        assert_eq!(
            sessions(&nginx, key),
            1,
            "{key} reconnected: {}",
            nginx.error_log()
        );
    }
    let t = node.task("rule.yt.cam1").await;
    assert_eq!(t["destinations"].as_array().map(Vec::len), Some(3), "{t}");

    // A restart derives the same tasks: nothing twice.
    node.restart().await;
    let _again = encoder(&node, "cam1", dir.path());
    wait_for("cam1 pushed again", Duration::from_secs(30), || async {
        (sessions(&nginx, "cam1-a") == 2).then_some(())
    })
    .await;
    assert_eq!(tasks(&node).await.len(), 2);

    // The rule removed: its tasks go.
    patch_app(&node, json!({"rules": []})).await;
    wait_for(
        "the rule's tasks removed",
        Duration::from_secs(15),
        || async { tasks(&node).await.is_empty().then_some(()) },
    )
    .await;
}

/// A rule written in the config file works as one made through the API.
#[tokio::test(flavor = "multi_thread")]
async fn a_rule_from_the_config_file_pushes_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start();
    let config = dir.path().join("pushcast.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[vhosts.default]
apps = ["app"]
[[vhosts.default.rules]]
app = "app"
name = "file"
stream = "*"
destinations = [{{ protocol = "rtmp", url = "{}", streamKey = "${{AppName}}-${{SourceStream}}" }}]
"#,
            nginx.rtmp_url()
        ),
    )
    .unwrap();
    let node = Node::standalone_with(
        dir.path(),
        TOKEN,
        &[format!("--config={}", config.display())],
    )
    .await;
    node.open_publish("app").await;
    let _encoder = encoder(&node, "cam9", dir.path());
    recording_grows(&nginx, "app-cam9").await;
    assert_eq!(node.task("rule.file.cam9").await["rule"], "file");
}

/// The leader that made a rule's tasks dies: the new leader derives the same tasks and
/// makes none twice; a stream published after the change gets its task from it.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_derives_the_same_rule_tasks() {
    use pushcast_testkit::cluster::{Cluster, WorkerOpts};
    use pushcast_testkit::etcd::EtcdProcess;
    let _serial = crate::cluster::SERIAL.lock().await;
    let mut c = Cluster::start(EtcdProcess::start()).await;
    c.add_controller().await;
    c.add_controller().await;
    c.add_worker(WorkerOpts::default()).await;
    let leader = c.wait_for_leader(Duration::from_secs(15)).await;
    let survivor = 1 - leader;
    let nginx = Nginx::start();
    patch_app(
        &c.controllers[survivor],
        rule(&nginx, &["${SourceStream}-a"]),
    )
    .await;
    let media = &test_media().flv;
    let dir = c.path().to_path_buf();
    let log = |n: &str| dir.join(format!("{n}.log"));
    let _cam1 = publish_file(media, &c.workers[0].ingest_url("cam1"), -1, &log("cam1"));
    recording_grows(&nginx, "cam1-a").await;

    c.kill9_controller(leader);
    let new = c
        .wait_for_leader(Duration::from_secs(c.leader_ttl_secs + 10))
        .await;
    assert_eq!(new, survivor);
    let _cam2 = publish_file(media, &c.workers[0].ingest_url("cam2"), -1, &log("cam2"));
    recording_grows(&nginx, "cam2-a").await;
    // An observation window of a few of the new leader's passes (one a second) over both
    // streams: still one task each.
    let node = &c.controllers[survivor];
    for _ in 0..3 {
        let ids: Vec<String> = tasks(node)
            .await
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(ids, ["rule.yt.cam1", "rule.yt.cam2"], "{ids:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(sessions(&nginx, "cam1-a"), 1, "cam1's push was left alone");
    c.assert_no_double_publish();
}
