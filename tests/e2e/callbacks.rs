//! Publish callbacks (both formats), the authorization callback and task status
//! callbacks, end to end: the real standalone binary, real ffmpeg publishers and a real
//! HTTP receiver started by the test.

use std::collections::HashSet;
use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::publish;
use pushcast_testkit::http::{get_text, metric};
use pushcast_testkit::net::free_tcp_port;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::pki::make_pki;
use pushcast_testkit::receiver::{Plan, Receiver, always};
use serde_json::{Value, json};

const TOKEN: &str = "callbacks";

async fn set_callbacks(node: &Node, callbacks: Value) {
    let r = node
        .call(
            "PATCH",
            "/v1/vhosts/default/apps/app",
            Some(&json!({"openPublish": true, "callbacks": callbacks}).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Secrets are write-only.
    for s in r.json["response"]["callbacks"]["status"]
        .as_array()
        .unwrap()
    {
        assert_eq!(s["secret"], "***");
    }
}

fn form(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn field<'a>(pairs: &'a [(String, String)], k: &str) -> &'a str {
    pairs
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("<absent>")
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_callbacks_in_both_formats_for_normal_and_abrupt_ends() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let rx = Receiver::start().await;
    set_callbacks(
        &node,
        json!({"publish": [{"url": rx.url("/new"), "format": "new"}, {"url": rx.url("/old"), "format": "old"}]}),
    )
    .await;
    let ingest = node.rtmp.clone().unwrap();

    // A normal end: the file ends, ffmpeg unpublishes.
    let mut p = publish(
        &format!("rtmp://{ingest}/app/cam?param1=123456&param2=11"),
        dir.path(),
        "normal",
        0,
    );
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
    let got = rx.wait_accepted(4, Duration::from_secs(15)).await;
    let by = |path: &str, n: usize| got.iter().filter(|r| r.uri == path).nth(n).unwrap().clone();
    let start = by("/new", 0);
    assert_eq!(start.header("content-type"), Some("application/json"));
    let s = start.json();
    assert_eq!(s["Version"], "1.0");
    assert_eq!(s["App"], "app");
    assert_eq!(s["Stream"], "cam");
    assert_eq!(s["NotifyType"], "PubStart");
    assert!(
        s["PubStartUnixTime"].is_string(),
        "a string (the seed's quirk): {s}"
    );
    assert_eq!(s["ClientIp"], "127.0.0.1");
    assert!(s["ClientPort"].is_number());
    assert!(s["Node"].is_string());
    assert_eq!(s["PubParam"], json!({"param1": "123456", "param2": "11"}));
    let end = by("/new", 1).json();
    assert_eq!(end["NotifyType"], "PubEnd");
    assert!(
        end["PubEndUnixTime"].is_number(),
        "a number (the seed's quirk): {end}"
    );
    assert!(end["PubEndMessage"].is_string());
    let old_start = by("/old", 0);
    assert_eq!(
        old_start.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let f = form(old_start.body_str());
    assert_eq!(field(&f, "app"), "app");
    assert_eq!(field(&f, "name"), "cam");
    assert_eq!(field(&f, "call"), "user_publish");
    assert!(field(&f, "tcurl").starts_with("rtmp://"));
    let vdoid = field(&f, "vdoid").to_string();
    let f_end = form(by("/old", 1).body_str());
    assert_eq!(field(&f_end, "call"), "user_publish_done");
    assert_eq!(field(&f_end, "close_mode"), "1", "normal end");
    assert_eq!(
        field(&f_end, "vdoid"),
        vdoid,
        "one publish session, one vdoid"
    );

    // An abrupt end: kill -9 the encoder.
    let p = publish(&format!("rtmp://{ingest}/app/cam"), dir.path(), "abrupt", 5);
    rx.wait_accepted(6, Duration::from_secs(15)).await;
    p.signal("KILL");
    let got = rx.wait_accepted(8, Duration::from_secs(15)).await;
    let last_old = got.iter().filter(|r| r.uri == "/old").last().unwrap();
    let f = form(last_old.body_str());
    assert_eq!(field(&f, "call"), "user_publish_done");
    assert_eq!(field(&f, "close_mode"), "2", "abnormal end");
    assert_ne!(field(&f, "vdoid"), vdoid);
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_callback_refusing_or_timing_out_refuses_the_publish() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let ingest = node.rtmp.clone().unwrap();
    for (tag, plan) in [
        ("forbidden", Plan::status(403)),
        ("slow", Plan::status(200).delayed(Duration::from_secs(5))),
    ] {
        let rx = Receiver::start_with(always(plan)).await;
        set_callbacks(
            &node,
            json!({"authorize": {"url": rx.url("/auth"), "timeoutMs": 500}}),
        )
        .await;
        let mut p = publish(&format!("rtmp://{ingest}/app/cam"), dir.path(), tag, 0);
        let st = p
            .wait_exit(Duration::from_secs(15))
            .expect("refused publisher exits");
        assert!(!st.success(), "{tag}: refused");
        assert_eq!(rx.requests().len(), 1, "{tag}: asked once");
    }
    // Accepting: the publish goes through.
    let rx = Receiver::start().await;
    set_callbacks(&node, json!({"authorize": {"url": rx.url("/auth")}})).await;
    let mut p = publish(&format!("rtmp://{ingest}/app/cam"), dir.path(), "ok", 0);
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
    assert_eq!(rx.requests()[0].json()["NotifyType"], "PubStart");
}

#[tokio::test(flavor = "multi_thread")]
async fn task_status_callbacks_arrive_in_order_and_signed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let nginx = Nginx::start();
    let rx = Receiver::start().await;
    set_callbacks(
        &node,
        json!({"status": [{"url": rx.url("/status"), "secret": "s3cret"}]}),
    )
    .await;
    let r = node
        .action(
            "startPush",
            json!({"id": "t1", "stream": {"name": "cam"}, "protocol": "rtmp",
                                    "url": nginx.rtmp_url(), "streamKey": "k"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let ingest = node.rtmp.clone().unwrap();
    let mut p = publish(&format!("rtmp://{ingest}/app/cam"), dir.path(), "status", 0);
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
    rx.wait_accepted(3, Duration::from_secs(15)).await;
    assert_eq!(
        node.action("stopPush", json!({"id": "t1"})).await.status,
        200
    );
    let got = rx.wait_accepted(4, Duration::from_secs(15)).await;
    let events: Vec<String> = got
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["created", "started", "stopped", "removed"]);
    let mut last_seq = 0;
    for r in &got {
        let sig = r.header("x-signature").expect("signed");
        assert!(
            pushcast_webhooks::verify(&r.body, b"s3cret", sig),
            "valid signature"
        );
        assert!(!pushcast_webhooks::verify(&r.body, b"other", sig));
        let seq = r.json()["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "seq increases");
        last_seq = seq;
        assert_eq!(r.json()["taskId"], "t1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_receiver_gets_the_callback_later_and_a_slow_one_delays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let flaky = Receiver::start_with(pushcast_testkit::receiver::fail_first(2)).await;
    let slow =
        Receiver::start_with(always(Plan::status(200).delayed(Duration::from_secs(10)))).await;
    set_callbacks(
        &node,
        json!({"publish": [{"url": flaky.url("/flaky"), "format": "new"}, {"url": slow.url("/slow"), "format": "new"}]}),
    )
    .await;
    let ingest = node.rtmp.clone().unwrap();
    let t0 = std::time::Instant::now();
    let mut p = publish(&format!("rtmp://{ingest}/app/cam"), dir.path(), "p", 0);
    node.proc
        .wait_logged(&["publish started"], Duration::from_secs(10))
        .await;
    let went_live = t0.elapsed();
    println!("publish live after {went_live:?} with a 10 s slow callback receiver");
    assert!(
        went_live < Duration::from_secs(5),
        "the slow receiver did not delay the publish"
    );
    // The flaky receiver answered 500 twice, then accepted the retried PubStart.
    let got = flaky.wait_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].json()["NotifyType"], "PubStart");
    assert!(flaky.requests().len() >= 3);
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
}

/// Callbacks are never lost: with no controller running at all, a running task stops
/// (its encoder leaves) and starts again (it comes back) on its worker; when a controller
/// comes back it derives those status events from the store's history and delivers
/// them, in order, after the ones sent before, and the PubEnd and PubStart the worker
/// recorded meanwhile go out too. Every event carries an `X-Event-Id` (for status events
/// equal to the body's `eventId`), the same when it is retried (the receiver fails the
/// first request), so receivers can deduplicate.
#[tokio::test(flavor = "multi_thread")]
async fn status_events_while_no_controller_runs_are_delivered_later() {
    use pushcast_testkit::cluster::{Cluster, Publisher, WorkerOpts};
    let mut c = Cluster::start(pushcast_testkit::etcd::EtcdProcess::start()).await;
    c.add_controller().await;
    c.add_worker(WorkerOpts::default()).await;
    c.wait_for_leader(Duration::from_secs(15)).await;
    let rx = Receiver::start_with(pushcast_testkit::receiver::fail_first(1)).await;
    let pubs = Receiver::start().await;
    set_callbacks(
        &c.controllers[0],
        json!({"status": [{"url": rx.url("/status"), "secret": "s"}],
               "publish": [{"url": pubs.url("/pub"), "format": "new"}]}),
    )
    .await;
    let key = ["evkey".to_string()];
    c.start_push(0, "t1", "ev", &key[0]).await;
    let mut p = Publisher::start(&c.workers[0].ingest_url("ev"), &c.path().join("p1.log"));
    c.wait_started_on(0, &["t1".to_string()], Some("w0"), Duration::from_secs(30))
        .await;
    rx.wait_accepted(2, Duration::from_secs(15)).await;

    // No controller at all: the task stops and starts again on the worker meanwhile.
    c.kill9_controller(0);
    p.stop();
    c.wait_recordings_stop(&key, Duration::from_millis(500), Duration::from_secs(10))
        .await;
    let _p2 = Publisher::start(&c.workers[0].ingest_url("ev"), &c.path().join("p2.log"));
    c.wait_recordings_grow(&key, Duration::from_secs(20)).await;
    assert_eq!(rx.accepted().len(), 2, "nobody sent anything meanwhile");
    assert_eq!(
        pubs.accepted().len(),
        1,
        "only the first PubStart, before the kill"
    );

    // A controller again: what happened is delivered.
    c.add_controller().await;
    // At least once: an event the killed controller had delivered but not yet deleted is
    // sent again under its id; a receiver keeps the first of each id.
    let distinct = |log: &[pushcast_testkit::receiver::Recorded]| {
        let mut seen = HashSet::new();
        log.iter()
            .filter(|r| r.ok())
            .filter(|r| seen.insert(r.header("x-event-id").unwrap_or("").to_string()))
            .cloned()
            .collect::<Vec<_>>()
    };
    rx.wait_until(Duration::from_secs(30), "4 distinct status events", |log| {
        distinct(log).len() >= 4
    })
    .await;
    let got = distinct(&rx.requests());
    let events: Vec<String> = got
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        events,
        ["created", "started", "stopped", "started"],
        "{got:#?}"
    );
    let mut ids = Vec::new();
    for r in &got {
        let id = r.header("x-event-id").expect("X-Event-Id").to_string();
        assert_eq!(r.json()["eventId"], id.as_str(), "header and body agree");
        assert!(pushcast_webhooks::verify(
            &r.body,
            b"s",
            r.header("x-signature").unwrap()
        ));
        ids.push(id);
    }
    // The request the receiver failed was the first event, under the same id.
    let all = rx.requests();
    assert!(!all[0].ok());
    assert_eq!(all[0].header("x-event-id"), Some(ids[0].as_str()));

    // The publish callbacks recorded while no controller ran: the first session's end,
    // the second one's start.
    pubs.wait_until(
        Duration::from_secs(30),
        "3 distinct publish events",
        |log| distinct(log).len() >= 3,
    )
    .await;
    let got = distinct(&pubs.requests());
    let kinds: Vec<&str> = got
        .iter()
        .map(|r| r.json()["NotifyType"].as_str().unwrap_or("?").to_string())
        .map(|k| {
            if k == "PubStart" {
                "PubStart"
            } else if k == "PubEnd" {
                "PubEnd"
            } else {
                "?"
            }
        })
        .collect();
    assert_eq!(kinds, ["PubStart", "PubEnd", "PubStart"], "{got:#?}");
    let ids: HashSet<&str> = got.iter().filter_map(|r| r.header("x-event-id")).collect();
    assert_eq!(ids.len(), 3, "an id per publish event");
}

/// https receivers: a private CA given with --webhook-ca-file is trusted for every kind of
/// callback (authorization from the worker, publish and signed status events from the
/// controller's outbox); a receiver whose certificate another CA signed is refused at
/// the handshake, and the refusals are counted by reason.
#[tokio::test(flavor = "multi_thread")]
async fn https_receivers_with_a_private_ca_get_every_callback_and_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "hooks");
    let other = make_pki(dir.path(), "other");
    let metrics_port = free_tcp_port();
    let node = Node::standalone_with(
        dir.path(),
        TOKEN,
        &[
            format!("--webhook-ca-file={}", pki.ca_pem.display()),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        ],
    )
    .await;
    let rx = Receiver::start_https(&pki, always(Plan::OK)).await;
    let stranger = Receiver::start_https(&other, always(Plan::OK)).await;
    assert!(rx.url("/").starts_with("https://"));
    set_callbacks(
        &node,
        json!({
            "authorize": {"url": rx.url("/auth")},
            "publish": [{"url": rx.url("/new"), "format": "new"},
                        {"url": rx.url("/old"), "format": "old"},
                        {"url": stranger.url("/new"), "format": "new"}],
            "status": [{"url": rx.url("/status"), "secret": "s3cret"},
                       {"url": stranger.url("/status"), "secret": "s3cret"}],
        }),
    )
    .await;
    let nginx = Nginx::start();
    let r = node
        .action(
            "startPush",
            json!({"id": "t1", "stream": {"name": "cam"}, "protocol": "rtmp",
                   "url": nginx.rtmp_url(), "streamKey": "k"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ingest = node.rtmp.clone().unwrap();
    let mut p = publish(&format!("rtmp://{ingest}/app/cam"), dir.path(), "https", 0);
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());

    let count = |got: &[pushcast_testkit::receiver::Recorded], path: &str| {
        got.iter().filter(|r| r.uri == path).count()
    };
    let got = rx
        .wait_until(Duration::from_secs(20), "every kind of callback", |got| {
            count(got, "/auth") == 1
                && count(got, "/new") == 2
                && count(got, "/old") == 2
                && got
                    .iter()
                    .any(|r| r.uri == "/status" && r.json()["event"] == "started")
        })
        .await;
    let first = |path: &str| got.iter().position(|r| r.uri == path);
    assert!(
        first("/auth") < first("/new"),
        "the publish was authorized first"
    );
    let new: Vec<Value> = got
        .iter()
        .filter(|r| r.uri == "/new")
        .map(|r| r.json())
        .collect();
    assert_eq!(new[0]["NotifyType"], "PubStart");
    assert_eq!(new[1]["NotifyType"], "PubEnd");
    let old: Vec<_> = got
        .iter()
        .filter(|r| r.uri == "/old")
        .map(|r| form(r.body_str()))
        .collect();
    assert_eq!(field(&old[0], "call"), "user_publish");
    assert_eq!(field(&old[1], "call"), "user_publish_done");
    for r in got.iter().filter(|r| r.uri == "/status") {
        let sig = r.header("x-signature").expect("signed");
        assert!(pushcast_webhooks::verify(&r.body, b"s3cret", sig));
    }

    // The stranger's certificate is refused by every attempt, and counted.
    let scrape = format!("http://127.0.0.1:{metrics_port}/metrics");
    pushcast_testkit::wait_for(
        "publish and status attempts to the stranger counted as certificate_unknown_issuer",
        Duration::from_secs(20),
        || async {
            let text = get_text(&scrape).await;
            let key =
                r#"pushcast_callback_attempt_failures_total{reason="certificate_unknown_issuer"}"#;
            metric(&text, key).filter(|n| *n >= 2.0)
        },
    )
    .await;
    stranger
        .wait_refused_handshakes(2, Duration::from_secs(5))
        .await;
    assert!(
        stranger.requests().is_empty(),
        "nothing reached the stranger"
    );
}
