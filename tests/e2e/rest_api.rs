//! The REST contract of `spec/rest-push-api.md`, checked over HTTP against the real
//! controller binary on a real etcd, and against the standalone binary.

use pushcast_testkit::api::{Node, Reply};
use pushcast_testkit::etcd::EtcdProcess as Etcd;
use serde_json::{Value, json};

const TOKEN: &str = "ome-access-token";

#[tokio::test(flavor = "multi_thread")]
async fn contract_on_controller_with_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::controller(&etcd.endpoint(), TOKEN, "c1", dir.path()).await;
    check_contract(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_on_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    check_contract(&node).await;
}

fn is_ome_time(s: &str) -> bool {
    s.len() == "2023-03-15T23:02:34.371+09:00".len()
        && chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f%:z").is_ok()
}

/// The answer is byte for byte OME's form of its JSON: keys sorted, compact, integers
/// as integers (what `serde_json` writes from a parsed value).
fn assert_ome_bytes(r: &Reply) {
    assert!(!r.json.is_null(), "not JSON: {}", r.text);
    assert_eq!(r.text, r.json.to_string(), "not OME's byte form");
}

async fn expect_error(node: &Node, action: &str, body: &str, status: u16, message: &str) {
    let r = node
        .post(&format!("/v1/vhosts/default/apps/app:{action}"), body)
        .await;
    assert_eq!(r.status, status, "{action} {body}: {}", r.text);
    let want = format!(
        r#"{{"message":{},"statusCode":{status}}}"#,
        Value::from(message)
    );
    assert_eq!(r.text, want, "{action} {body}");
}

async fn check_contract(node: &Node) {
    check_auth(node).await;
    check_routing_and_bodies(node).await;
    check_start_push_validation(node).await;
    check_task_lifecycle(node).await;
    check_apps(node).await;
}

async fn check_auth(node: &Node) {
    let path = "/v1/vhosts/default/apps/app:pushes";
    let cases: [(Option<&str>, &str); 5] = [
        (
            None,
            "[HTTP] Authorization header is required to call API (401)",
        ),
        (Some("Basic"), "[HTTP] Invalid authorization header (401)"),
        (
            Some("Bearer abc"),
            "[HTTP] Not supported credential type: Bearer (401)",
        ),
        (
            Some("Basic !!notbase64!!"),
            "[HTTP] Invalid credential format (401)",
        ),
        (Some("Basic d3Jvbmc="), "[HTTP] Invalid credential (401)"),
    ];
    for (header, message) in cases {
        let r = node.raw("POST", path, Some("{}"), header).await;
        assert_eq!(r.status, 401, "{header:?}");
        let want = format!(r#"{{"message":{},"statusCode":401}}"#, Value::from(message));
        assert_eq!(r.text, want, "{header:?}");
        assert_eq!(
            r.headers.get("www-authenticate").unwrap(),
            "Basic realm=\"pushcast\""
        );
    }
    // Auth runs before routing: an unknown path without credentials is 401, not 404.
    let r = node.raw("GET", "/nowhere", None, None).await;
    assert_eq!(r.status, 401);
    // CORS preflight needs no credentials.
    let r = node.raw("OPTIONS", path, None, None).await;
    assert_eq!(r.status, 204);
    // The right token works, with the contract's content type.
    let r = node
        .raw("POST", path, Some("{}"), Some(&node.auth_header()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/json;charset=UTF-8"
    );
}

async fn check_routing_and_bodies(node: &Node) {
    let not_found = json!({"statusCode": 404, "message": "[HTTP] Controller not found (404)"});
    for (method, path) in [
        ("POST", "/v1/vhosts/default/apps/app:nosuchAction"),
        ("PUT", "/v1/vhosts/default/apps/app:startPush"),
        ("GET", "/v1/vhosts/default/apps/app:startPush"),
        ("GET", "/v2/whatever"),
    ] {
        let r = node.call(method, path, Some("{}")).await;
        assert_eq!((r.status, &r.json), (404, &not_found), "{method} {path}");
    }
    // Not JSON: the parser's message, framed.
    let r = node
        .post("/v1/vhosts/default/apps/app:pushes", "{not json")
        .await;
    assert_eq!(r.status, 400);
    let m = r.json["message"].as_str().unwrap();
    assert!(
        m.starts_with("[HTTP] [JSON] ") && m.ends_with(" (400)"),
        "{m}"
    );
    // Not an object.
    for body in ["[]", "\"text\"", "42"] {
        let r = node
            .post("/v1/vhosts/default/apps/app:startPush", body)
            .await;
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json["message"]
                .as_str()
                .unwrap()
                .starts_with("[HTTP] [JSON] ")
        );
    }
    // The body is checked before the vhost.
    let r = node.post("/v1/vhosts/nope/apps/app:pushes", "{oops").await;
    assert_eq!(r.status, 400);
    // Unknown vhost, then unknown app.
    let r = node.post("/v1/vhosts/nope/apps/app:pushes", "{}").await;
    assert_eq!(
        r.json,
        json!({"statusCode": 404, "message": "[HTTP] Could not find the virtual host: [nope] (404)"})
    );
    let r = node
        .post("/v1/vhosts/default/apps/nope:startPush", "{}")
        .await;
    assert_eq!(
        r.json,
        json!({"statusCode": 404, "message": "[HTTP] Could not find the application: [default/nope] (404)"})
    );
    // Empty body = {}.
    let r = node
        .call("POST", "/v1/vhosts/default/apps/app:pushes", None)
        .await;
    assert_eq!(
        r.json,
        json!({"statusCode": 200, "message": "OK", "response": []})
    );
    // Oversized body: 413, and the server is still there.
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(100 * 1024));
    let r = node
        .post("/v1/vhosts/default/apps/app:startPush", &big)
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.json["statusCode"], 413);
    let r = node
        .call("GET", "/v1/vhosts/default/apps/app:pushes", None)
        .await;
    assert_eq!(r.status, 200);
}

async fn check_start_push_validation(node: &Node) {
    let sp = "startPush";
    expect_error(
        node,
        sp,
        r#"{"id":"a","stream":{"name":"s"},"protocol":"hls","url":"rtmp://h/a"}"#,
        400,
        "[HTTP] Could not find protocol 'hls': [default/app] (400)",
    )
    .await;
    expect_error(
        node,
        sp,
        r#"{"stream":{"name":"s"},"url":"rtmp://h/a"}"#,
        400,
        "[HTTP] Could not find protocol '': [default/app] (400)",
    )
    .await;
    expect_error(
        node,
        sp,
        r#"{"protocol":" RTMP "}"#,
        400,
        "[HTTP] There is no required parameter [ id stream.name url] (400)",
    )
    .await;
    // Non-string and empty values count as missing.
    expect_error(
        node,
        sp,
        r#"{"id":7,"stream":{"name":""},"protocol":"rtmp","url":"rtmp://h/a"}"#,
        400,
        "[HTTP] There is no required parameter [ id stream.name] (400)",
    )
    .await;
    expect_error(
        node,
        sp,
        r#"{"id":"a","stream":{"name":"s"},"protocol":"rtmp","url":"   "}"#,
        400,
        "[HTTP] There is no required parameter [ url] (400)",
    )
    .await;
    expect_error(
        node,
        sp,
        r#"{"id":"a","stream":{"name":"s"},"protocol":"rtmp","url":"no scheme here"}"#,
        400,
        "[HTTP] Could not parse url (400)",
    )
    .await;
    expect_error(
        node,
        sp,
        r#"{"id":"a","stream":{"name":"s"},"protocol":"mpegts","url":"rtmp://h/a"}"#,
        400,
        "[HTTP] Unsupported protocol (400)",
    )
    .await;
    expect_error(
        node,
        sp,
        r#"{"id":"a","stream":{"name":"s"},"protocol":"rtmp","url":"srt://h:9000"}"#,
        400,
        "[HTTP] Unsupported protocol (400)",
    )
    .await;
    expect_error(
        node,
        sp,
        r#"{"id":"a","stream":{"name":"s"},"protocol":"srt","url":"srt://h:9000?mode=listener"}"#,
        400,
        "[HTTP] Unsupported connection mode (400)",
    )
    .await;
}

async fn check_task_lifecycle(node: &Node) {
    let r = node
        .action(
            "startPush",
            json!({"id": "yt", "stream": {"name": "cam1", "tracks": [101, 102]},
                   "protocol": " RTMP ", "url": "  rtmp://a.rtmp.youtube.com/live2//  ",
                   "streamKey": "abcd-efgh"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_ome_bytes(&r);
    assert!(
        r.text
            .starts_with("{\"message\":\"OK\",\"response\":{\"app\":\"app\","),
        "keys sorted: {}",
        r.text
    );
    let t = &r.json["response"];
    assert!(t.is_object(), "the response is an object, not an array");
    assert_eq!(t["id"], "yt");
    assert_eq!(t["vhost"], "default");
    assert_eq!(t["app"], "app");
    assert_eq!(t["state"], "ready");
    assert_eq!(t["protocol"], "rtmp");
    assert_eq!(t["url"], "rtmp://a.rtmp.youtube.com/live2");
    assert_eq!(t["streamKey"], "abcd-efgh");
    assert_eq!(
        t["stream"],
        json!({"name": "cam1", "trackIds": [101, 102], "variantNames": []})
    );
    for k in [
        "sentBytes",
        "sentTime",
        "sequence",
        "totalsentBytes",
        "totalsentTime",
    ] {
        assert_eq!(t[k], 0, "{k}");
    }
    assert!(
        is_ome_time(t["createdTime"].as_str().unwrap()),
        "{}",
        t["createdTime"]
    );
    assert_eq!(t["startTime"], "1970-01-01T00:00:00.000+00:00");
    assert_eq!(t["finishTime"], "1970-01-01T00:00:00.000+00:00");
    let created = t.clone();

    // Same id again: OME's 400.
    expect_error(
        node,
        "startPush",
        r#"{"id":"yt","stream":{"name":"x"},"protocol":"rtmp","url":"rtmp://other/live","streamKey":"k"}"#,
        400,
        "[HTTP] Duplicate ID (400)",
    )
    .await;
    // Same destination under another id: 409 naming the holder.
    expect_error(
        node,
        "startPush",
        r#"{"id":"yt2","stream":{"name":"x"},"protocol":"rtmp","url":"rtmp://a.rtmp.youtube.com/live2/","streamKey":"abcd-efgh"}"#,
        409,
        "[HTTP] Destination already in use by push 'yt' (409)",
    )
    .await;

    // mpegts: no stream key in the object, even when one was sent; variantNames kept.
    let r = node
        .action(
            "startPush",
            json!({"id": "ts", "stream": {"name": "cam1", "variantNames": ["bypass_video"]},
                   "protocol": "mpegts", "url": "udp://127.0.0.1:5000", "streamKey": "ignored"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["response"].get("streamKey").is_none(), "{}", r.text);
    assert_eq!(
        r.json["response"]["stream"]["variantNames"],
        json!(["bypass_video"])
    );

    // Listing: POST {} and GET agree; the id filter is exact.
    let all = node.action("pushes", json!({})).await;
    assert_ome_bytes(&all);
    assert_eq!(all.status, 200);
    let list = all.json["response"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0], created, "listing shows the task as created");
    let got = node
        .call("GET", "/v1/vhosts/default/apps/app:pushes", None)
        .await;
    assert_eq!(got.json, all.json);
    let one = node.action("pushes", json!({"id": "ts"})).await;
    assert_ome_bytes(&one);
    assert_eq!(one.json["response"].as_array().unwrap().len(), 1);
    assert_eq!(one.json["response"][0]["id"], "ts");
    let none = node.action("pushes", json!({"id": "t"})).await;
    assert_eq!(
        none.json,
        json!({"statusCode": 200, "message": "OK", "response": []})
    );

    // stopPush errors, then success.
    expect_error(
        node,
        "stopPush",
        "{}",
        400,
        "[HTTP] There is no required parameter [ id] (400)",
    )
    .await;
    expect_error(
        node,
        "stopPush",
        r#"{"id":"nope"}"#,
        404,
        "[HTTP] Could not find id 'nope': [default/app] (404)",
    )
    .await;
    let r = node.action("stopPush", json!({"id": "yt"})).await;
    assert_ome_bytes(&r);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["response"]["id"], "yt");
    assert_eq!(r.json["response"]["state"], "stopped");
    // The id and the destination are free at once (OME #1555 fixed).
    let r = node
        .action(
            "startPush",
            json!({"id": "yt", "stream": {"name": "cam1"}, "protocol": "rtmp",
                   "url": "rtmp://a.rtmp.youtube.com/live2", "streamKey": "abcd-efgh"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_ne!(r.json["response"]["createdTime"], Value::Null);
}

async fn check_apps(node: &Node) {
    let r = node.call("GET", "/v1/vhosts/default/apps", None).await;
    assert_eq!(r.json["response"], json!(["app"]));
    let r = node
        .post(
            "/v1/vhosts/default/apps",
            r#"{"name":"live","openPublish":true}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["response"]["name"], "live");
    assert_eq!(r.json["response"]["openPublish"], true);
    assert_eq!(
        r.json["response"]["callbacks"],
        json!({"publish": [], "authorize": null, "status": []})
    );
    let r = node
        .post("/v1/vhosts/default/apps", r#"{"name":"live"}"#)
        .await;
    assert_eq!(r.status, 409);
    let r = node
        .post("/v1/vhosts/nope/apps", r#"{"name":"live"}"#)
        .await;
    assert_eq!(r.status, 404);
    let r = node
        .call(
            "PATCH",
            "/v1/vhosts/default/apps/live",
            Some(r#"{"openPublish":false}"#),
        )
        .await;
    assert_eq!(r.json["response"]["openPublish"], false);
    let r = node
        .post(
            "/v1/vhosts/default/apps/live:startPush",
            r#"{"id":"a","stream":{"name":"s"},"protocol":"srt","url":"srt://127.0.0.1:9999"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = node
        .call("DELETE", "/v1/vhosts/default/apps/live", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = node.post("/v1/vhosts/default/apps/live:pushes", "{}").await;
    assert_eq!(r.status, 404);
    // Its task's destination was released with it.
    let r = node
        .post("/v1/vhosts/default/apps", r#"{"name":"live"}"#)
        .await;
    assert_eq!(r.status, 200);
    let r = node
        .post(
            "/v1/vhosts/default/apps/live:startPush",
            r#"{"id":"b","stream":{"name":"s"},"protocol":"srt","url":"srt://127.0.0.1:9999"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}
