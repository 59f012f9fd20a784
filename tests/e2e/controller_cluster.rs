//! Controllers on a shared real etcd: persistence across kill -9, the create race,
//! etcd going away and coming back.

use std::time::{Duration, Instant};

use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess as Etcd;
use pushcast_testkit::wait_for;
use serde_json::json;

const TOKEN: &str = "cluster-token";

fn push(id: &str, n: usize) -> serde_json::Value {
    json!({"id": id, "stream": {"name": format!("s{n}")}, "protocol": "rtmp",
           "url": "rtmp://127.0.0.1/live", "streamKey": format!("key-{id}")})
}

async fn create_and_list(node: &Node, n: usize) -> serde_json::Value {
    for i in 0..n {
        let r = node.action("startPush", push(&format!("t{i}"), i)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let list = node.action("pushes", json!({})).await.json["response"].clone();
    assert_eq!(list.as_array().unwrap().len(), n);
    list
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_survive_controller_kill9() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::controller(&etcd.endpoint(), TOKEN, "c1", dir.path()).await;
    let before = create_and_list(&node, 5).await;
    node.restart().await;
    let after = node.action("pushes", json!({})).await.json["response"].clone();
    assert_eq!(before, after, "tasks unchanged, createdTime included");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_survive_standalone_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::standalone(dir.path(), TOKEN).await;
    let before = create_and_list(&node, 5).await;
    node.restart().await;
    let after = node.action("pushes", json!({})).await.json["response"].clone();
    assert_eq!(before, after, "tasks unchanged, createdTime included");
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_token_is_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        format!("--data-dir={}", dir.path().display()),
        "--rest-addr=127.0.0.1:0".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--rtmp-addr=127.0.0.1:0".into(),
    ];
    let mut node = Node::start("pushcast", "standalone", args, "").await;
    let token = node.proc.wait_for_line("access token:").await;
    assert!(token.len() >= 32, "{token}");
    node.token = token.clone();
    assert_eq!(node.action("pushes", json!({})).await.status, 200);
    node.restart().await;
    let again = node.proc.wait_for_line("access token:").await;
    assert_eq!(token, again);
    assert_eq!(node.action("pushes", json!({})).await.status, 200);
    // The token is printed for the operator but never written to the logs in full.
    let logged = node
        .proc
        .output()
        .iter()
        .filter(|l| l.contains(&token) && !l.contains("access token:") && !l.contains("curl"))
        .count();
    assert_eq!(logged, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_of_one_id_on_two_controllers_one_wins() {
    let etcd = Etcd::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::controller(&etcd.endpoint(), TOKEN, "c1", d1.path()).await;
    let b = Node::controller(&etcd.endpoint(), TOKEN, "c2", d2.path()).await;
    let calls = (0..50).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        // Distinct destinations, so only the id can collide.
        let body = json!({"id": "same", "stream": {"name": "s"}, "protocol": "rtmp",
                          "url": "rtmp://127.0.0.1/live", "streamKey": format!("k{i}")});
        node.action("startPush", body)
    });
    let replies = futures::future::join_all(calls).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let dup = replies
        .iter()
        .filter(|r| r.status == 400 && r.json["message"] == "[HTTP] Duplicate ID (400)")
        .count();
    assert_eq!((ok, dup), (1, 49), "exactly one create wins");
    let list = b.action("pushes", json!({})).await.json["response"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_down_answers_503_then_recovers() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::controller(&etcd.endpoint(), TOKEN, "c1", dir.path()).await;
    assert_eq!(
        node.action("startPush", push("before", 0)).await.status,
        200
    );

    etcd.stop();
    for action in ["pushes", "startPush"] {
        let t0 = Instant::now();
        let r = node.action(action, push("during", 1)).await;
        let took = t0.elapsed();
        assert_eq!(r.status, 503, "{action}: {}", r.text);
        let m = r.json["message"].as_str().unwrap();
        assert!(
            m.starts_with("[HTTP] State store is unavailable") && m.ends_with("(503)"),
            "{m}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{action} answered after {took:?}"
        );
        println!("{action} with etcd down answered 503 in {took:?}");
    }

    etcd.restart();
    let t0 = Instant::now();
    let list = wait_for(
        "the API to recover after etcd restarts",
        Duration::from_secs(30),
        || async {
            let r = node.action("pushes", json!({})).await;
            (r.status == 200).then_some(r.json)
        },
    )
    .await;
    println!("API recovered {:?} after etcd came back", t0.elapsed());
    assert_eq!(list["response"].as_array().unwrap().len(), 1);
    assert_eq!(list["response"][0]["id"], "before");
    assert_eq!(node.action("startPush", push("after", 2)).await.status, 200);
}

/// The ids `node` lists, sorted.
async fn ids(node: &Node) -> Vec<String> {
    let r = node.action("pushes", json!({})).await;
    let mut ids: Vec<String> = r.json["response"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits until `node` lists exactly the ids `want` (sorted).
async fn lists_exactly(node: &Node, want: &[String], what: &str) {
    wait_for(what, Duration::from_secs(20), || async move {
        (ids(node).await == want).then_some(())
    })
    .await;
}

/// A controller's informer whose watch broke while tasks changed (its connection to
/// etcd cut; tasks created and removed meanwhile, etcd's history compacted past it) lists
/// again and ends up listing exactly the tasks: none lost, no ghost of a removed one.
/// Then, frozen (SIGSTOP) while many tasks change and etcd compacts, it catches up too.
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_behind_a_compaction_and_a_broken_watch_lists_exactly_the_tasks() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let cut = pushcast_testkit::cluster::EtcdCut::start(&etcd.endpoint());
    let c0 = Node::controller(&etcd.endpoint(), TOKEN, "c0", &dir.path().join("c0")).await;
    let c1 = Node::controller(&cut.endpoint(), TOKEN, "c1", &dir.path().join("c1")).await;
    let mut expected: Vec<String> = Vec::new();
    for i in 0..10 {
        let id = format!("t{i}");
        assert_eq!(c0.action("startPush", push(&id, i)).await.status, 200);
        expected.push(id);
    }
    expected.sort();
    // A consistent read: what c0 wrote a moment ago, c1 lists.
    assert_eq!(ids(&c1).await, expected);

    cut.cut();
    for i in 0..5 {
        let r = c0.action("stopPush", json!({"id": format!("t{i}")})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    expected.retain(|id| id.as_str() >= "t5");
    for i in 0..5 {
        let id = format!("u{i}");
        assert_eq!(c0.action("startPush", push(&id, i)).await.status, 200);
        expected.push(id);
    }
    expected.sort();
    etcd.compact();
    cut.restore();
    lists_exactly(
        &c1,
        &expected,
        "c1 lists exactly the tasks after its watch broke",
    )
    .await;

    c1.proc.signal("STOP");
    for i in 5..10 {
        let r = c0.action("stopPush", json!({"id": format!("t{i}")})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    expected.retain(|id| !id.starts_with('t'));
    for i in 0..300 {
        let id = format!("v{i:03}");
        assert_eq!(c0.action("startPush", push(&id, i)).await.status, 200);
        expected.push(id);
    }
    expected.sort();
    etcd.compact();
    c1.proc.signal("CONT");
    lists_exactly(
        &c1,
        &expected,
        "the frozen controller lists exactly the tasks",
    )
    .await;
}
