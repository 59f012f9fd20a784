//! Stream keys end to end: the real standalone binary issues keys over REST and gRPC, its
//! RTMP ingest accepts only a valid key, regeneration is refused while live, a revoked
//! key stops working, and keys never reach the logs in full.

use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::publish;
use pushcast_testkit::wait_for;
use serde_json::{Value, json};

const TOKEN: &str = "keys";

async fn key(node: &Node, body: Value) -> (u16, Value) {
    let r = node.action("streamKey", body).await;
    (r.status, r.json)
}

async fn wait_live(node: &Node, live: bool) {
    wait_for(
        &format!("stream live={live}"),
        Duration::from_secs(20),
        || async {
            let (_, j) = key(node, json!({"stream": "cam"})).await;
            (j["response"]["live"] == live).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_valid_key_publishes_and_regeneration_follows_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let ingest = node.rtmp.clone().unwrap();

    // Issue, then the same key again; over gRPC too.
    let (status, j) = key(&node, json!({"stream": "cam"})).await;
    assert_eq!(status, 200, "{j}");
    let issued = j["response"].clone();
    let k1 = issued["streamKey"].as_str().unwrap().to_string();
    assert!(k1.len() >= 22, "at least 128 bits: {k1}");
    assert_eq!(issued["stream"], "cam");
    assert_eq!(issued["rtmpUrl"], format!("rtmp://{ingest}/app"));
    assert_eq!(issued["streamUrl"], format!("rtmp://{ingest}/app/{k1}"));
    assert_eq!(issued["live"], false);
    let (_, again) = key(&node, json!({"stream": "cam"})).await;
    assert_eq!(again["response"]["streamKey"], k1.as_str());
    let (_, other) = key(&node, json!({"stream": "cam2"})).await;
    assert_ne!(other["response"]["streamKey"], k1.as_str());
    let (status, j) = key(&node, json!({})).await;
    assert_eq!(
        (status, j["message"].as_str().unwrap()),
        (400, "[HTTP] There is no required parameter [ stream] (400)")
    );

    let channel = crate::grpc_channel(&node).await;
    let mut grpc =
        pushcast_proto::v1::stream_key_service_client::StreamKeyServiceClient::new(channel);
    let mut req = tonic::Request::new(pushcast_proto::v1::GetStreamKeyRequest {
        vhost: "default".into(),
        app: "app".into(),
        stream: "cam".into(),
        regenerate: false,
    });
    req.metadata_mut()
        .insert("authorization", node.auth_header().parse().unwrap());
    assert_eq!(
        grpc.get_stream_key(req)
            .await
            .unwrap()
            .into_inner()
            .stream_key,
        k1
    );

    // A wrong key: ffmpeg is refused, nothing goes live, the refusal is logged.
    let mut wrong = publish(
        &format!("rtmp://{ingest}/app/not-a-key"),
        dir.path(),
        "wrong",
        0,
    );
    let st = wrong
        .wait_exit(Duration::from_secs(15))
        .expect("refused publisher exits");
    assert!(!st.success());
    assert!(
        node.proc
            .output()
            .iter()
            .any(|l| l.contains("publish refused") && l.contains("AuthencationFailed"))
    );
    assert_eq!(
        key(&node, json!({"stream": "cam"})).await.1["response"]["live"],
        false
    );
    // The stream name is not a key either (the app does not publish openly).
    let mut by_name = publish(&format!("rtmp://{ingest}/app/cam"), dir.path(), "byname", 0);
    assert!(
        !by_name
            .wait_exit(Duration::from_secs(15))
            .expect("exits")
            .success()
    );

    // The right key: live.
    let mut good = publish(issued["streamUrl"].as_str().unwrap(), dir.path(), "good", 0);
    wait_live(&node, true).await;
    // Regenerate while live: refused with the seed's message.
    let (status, j) = key(&node, json!({"stream": "cam", "regenerate": true})).await;
    assert_eq!(status, 409);
    assert_eq!(
        j["message"],
        "[HTTP] Can not generate stream key, live stream in process (409)"
    );
    assert!(
        good.wait_exit(Duration::from_secs(20))
            .expect("publisher ends")
            .success()
    );
    wait_live(&node, false).await;

    // Regenerate after the end: a new key; the old one is refused, the new one works.
    let (status, j) = key(&node, json!({"stream": "cam", "regenerate": true})).await;
    assert_eq!(status, 200);
    let k2 = j["response"]["streamKey"].as_str().unwrap().to_string();
    assert_ne!(k1, k2);
    let mut old = publish(&format!("rtmp://{ingest}/app/{k1}"), dir.path(), "old", 0);
    assert!(
        !old.wait_exit(Duration::from_secs(15))
            .expect("exits")
            .success()
    );
    let mut new = publish(&format!("rtmp://{ingest}/app/{k2}"), dir.path(), "new", 3);
    wait_live(&node, true).await;

    // Revoke with disconnect: the live publish is closed, the key is gone.
    let r = node
        .action(
            "deleteStreamKey",
            json!({"stream": "cam", "disconnect": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // 3 loops of 4 s would run 16 s: it ends now because it was disconnected.
    new.wait_exit(Duration::from_secs(10))
        .expect("the publisher is disconnected");
    let r = node
        .action("deleteStreamKey", json!({"stream": "cam"}))
        .await;
    assert_eq!(r.status, 404, "revoked: {}", r.text);
    // (`:streamKey` issues a fresh key, so liveness is checked after the 404.)
    wait_live(&node, false).await;

    // Keys never appear in full in the logs.
    for k in [&k1, &k2] {
        let leaked: Vec<String> = node
            .proc
            .output()
            .into_iter()
            .filter(|l| l.contains(k.as_str()))
            .collect();
        assert!(leaked.is_empty(), "key in logs: {leaked:?}");
    }
}
