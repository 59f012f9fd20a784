//! Delivery against a real HTTP receiver: bytes and content types, retries, ordering,
//! signatures, the queue bound.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use pushcast_testkit::net::free_tcp_port as free_port;
use pushcast_testkit::receiver::{Plan, Receiver, always, eventually, fail_first, timed};
use pushcast_webhooks::{
    CloseMode, Dispatcher, DispatcherConfig, Format, Payload, PublishEnd, PublishEvent,
    RetryPolicy, SendOutcome, Target, TaskCounters, TaskEventKind, TaskStatusEvent, publish,
};

const WAIT: Duration = Duration::from_secs(10);

/// Production shapes, test-sized waits.
fn config() -> DispatcherConfig {
    DispatcherConfig {
        timeout: Duration::from_secs(2),
        publish_retry: RetryPolicy {
            max_attempts: 5,
            max_age: Duration::from_secs(30),
            backoff: pushcast_retry::BackoffConfig::new(
                Duration::from_millis(40),
                Duration::from_millis(300),
            ),
        },
        status_retry: RetryPolicy {
            max_attempts: 100,
            max_age: Duration::from_secs(60),
            backoff: pushcast_retry::BackoffConfig::new(
                Duration::from_millis(40),
                Duration::from_millis(300),
            ),
        },
        ..DispatcherConfig::default()
    }
}

fn publish_event(vdoid: &str) -> PublishEvent {
    PublishEvent {
        app: "live".into(),
        vhost: "default".into(),
        domain: "ingest.example.com".into(),
        stream: "test".into(),
        client: "1.2.3.4:51234".parse().unwrap(),
        node: "worker-1".into(),
        params: vec![
            ("param1".into(), "123456".into()),
            ("param2".into(), "11".into()),
        ],
        tc_url: "rtmp://ingest.example.com/live".into(),
        flashver: Some("FMLE/3.0 (compatible; FMSc/1.0)".into()),
        swfurl: None,
        vdoid: vdoid.into(),
        start_ms: 1_456_800_010_000,
    }
}

fn end() -> PublishEnd {
    PublishEnd {
        time_ms: 1_456_800_070_000,
        message: "connection reset".into(),
        mode: CloseMode::Abnormal,
    }
}

fn status_event(task: &str, kind: TaskEventKind, state: &str) -> TaskStatusEvent {
    TaskStatusEvent::new(kind, task, "default", "live", state)
}

#[tokio::test]
async fn publish_callbacks_arrive_in_both_formats_byte_for_byte() {
    let rx = Receiver::start().await;
    let d = Dispatcher::new(config()).unwrap();
    let new = Target::new(&rx.url("/new?token=abc")).unwrap();
    let old = Target::new(&rx.url("/old")).unwrap();
    let ev = publish_event("42");
    d.send(&new, Payload::publish_start(&ev, Format::New));
    d.send(&old, Payload::publish_start(&ev, Format::Old));
    d.send(&new, Payload::publish_end(&ev, &end(), Format::New));
    d.send(&old, Payload::publish_end(&ev, &end(), Format::Old));
    let got = rx.wait_accepted(4, WAIT).await;
    assert!(d.flush(WAIT).await);

    let by_path = |p: &str| -> Vec<_> { got.iter().filter(|r| r.uri == p).cloned().collect() };
    let new_got = by_path("/new?token=abc");
    let old_got = by_path("/old");
    assert_eq!((new_got.len(), old_got.len()), (2, 2), "{got:#?}");
    for r in &got {
        assert_eq!(r.method, "POST");
        assert!(r.header("x-signature").is_none(), "unsigned target");
        assert!(
            r.header("user-agent")
                .unwrap()
                .starts_with("pushcast-webhooks/")
        );
    }
    // New format: JSON, start before end (same publish session).
    for r in &new_got {
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(
        new_got[0].body_str(),
        r#"{"Version":"1.0","App":"live","Pubdomain":"ingest.example.com","Stream":"test","PubStartUnixTime":"1456800010000","NotifyType":"PubStart","ClientIp":"1.2.3.4","ClientPort":51234,"Node":"worker-1","PubParam":{"param1":"123456","param2":"11"}}"#
    );
    assert_eq!(
        new_got[1].body_str(),
        r#"{"Version":"1.0","App":"live","Pubdomain":"ingest.example.com","Stream":"test","PubEndUnixTime":1456800070000,"NotifyType":"PubEnd","ClientIp":"1.2.3.4","ClientPort":51234,"Node":"worker-1","PubEndMessage":"connection reset","PubParam":{"param1":"123456","param2":"11"}}"#
    );
    // Old format: form.
    for r in &old_got {
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
    }
    assert_eq!(
        old_got[0].body_str(),
        "app=live&name=test&swfurl=nil&flashver=FMLE%2F3.0+%28compatible%3B+FMSc%2F1.0%29&tcurl=rtmp%3A%2F%2Fingest.example.com%2Flive&call=user_publish&vdoid=42"
    );
    assert_eq!(
        old_got[1].body_str(),
        "app=live&name=test&swfurl=nil&flashver=FMLE%2F3.0+%28compatible%3B+FMSc%2F1.0%29&tcurl=rtmp%3A%2F%2Fingest.example.com%2Flive&call=user_publish_done&close_mode=2&vdoid=42"
    );
    assert_eq!(
        old_got[1].body.as_ref(),
        publish::end_form(&ev, &end()).as_slice()
    );
    let s = d.stats();
    assert_eq!((s.delivered, s.failed, s.retried, s.dropped), (4, 0, 0, 0));
    assert_eq!((s.queued, s.in_flight), (0, 0));
}

#[tokio::test]
async fn a_receiver_answering_500_twice_gets_the_callback_on_the_third_try() {
    let rx = Receiver::start_with(fail_first(2)).await;
    let d = Dispatcher::new(config()).unwrap();
    let t = Target::new(&rx.url("/cb")).unwrap();
    let ev = publish_event("7");
    assert_eq!(
        d.send(&t, Payload::publish_start(&ev, Format::New)),
        SendOutcome::Queued
    );
    rx.wait_accepted(1, WAIT).await;
    assert!(d.flush(WAIT).await);
    let all = rx.requests();
    assert_eq!(
        all.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    assert!(
        all.iter().all(|r| r.body == all[0].body),
        "same body each try"
    );
    // Backed off between tries.
    assert!(all[1].arrived - all[0].arrived >= Duration::from_millis(20));
    let s = d.stats();
    assert_eq!((s.delivered, s.failed, s.retried), (1, 0, 2));
}

#[tokio::test]
async fn a_receiver_that_is_not_listening_yet_gets_the_callback_later() {
    let port = free_port();
    let d = Dispatcher::new(config()).unwrap();
    let t = Target::new(&format!("http://127.0.0.1:{port}/status"))
        .unwrap()
        .with_secret("s");
    let ev = status_event("t1", TaskEventKind::Created, "ready");
    d.send(&t, Payload::status(&ev));
    // Connection refused meanwhile: retried.
    eventually(WAIT, "a few refused tries", || d.stats().retried >= 2).await;
    assert_eq!(d.stats().delivered, 0);
    let rx = Receiver::bind(
        format!("127.0.0.1:{port}").parse().unwrap(),
        always(Plan::OK),
    )
    .await;
    let got = rx.wait_accepted(1, WAIT).await;
    assert_eq!(got[0].body.as_ref(), ev.to_json().as_slice());
    assert!(d.flush(WAIT).await);
    let s = d.stats();
    assert_eq!((s.delivered, s.failed), (1, 0));
    assert!(s.retried >= 2);
}

#[tokio::test]
async fn publish_callbacks_give_up_after_five_tries_and_count_it() {
    let rx = Receiver::start_with(always(Plan::status(503))).await;
    let d = Dispatcher::new(config()).unwrap();
    let t = Target::new(&rx.url("/cb")).unwrap();
    d.send(&t, Payload::publish_start(&publish_event("1"), Format::Old));
    assert!(d.flush(WAIT).await);
    assert_eq!(rx.requests().len(), 5);
    let s = d.stats();
    assert_eq!((s.delivered, s.failed, s.retried), (0, 1, 4));
}

#[tokio::test]
async fn status_callbacks_retry_until_their_max_age() {
    let rx = Receiver::start_with(always(Plan::status(500))).await;
    let mut cfg = config();
    cfg.status_retry = RetryPolicy {
        max_attempts: 1000,
        max_age: Duration::from_millis(600),
        backoff: pushcast_retry::BackoffConfig::new(
            Duration::from_millis(20),
            Duration::from_millis(40),
        ),
    };
    let d = Dispatcher::new(cfg).unwrap();
    let t = Target::new(&rx.url("/cb")).unwrap();
    let start = std::time::Instant::now();
    d.send(
        &t,
        Payload::status(&status_event("t", TaskEventKind::Started, "started")),
    );
    assert!(d.flush(WAIT).await);
    let took = start.elapsed();
    let tries = rx.requests().len();
    // Many more than a publish callback's 5, stopped by age, not by count.
    assert!(tries > 10 && tries < 1000, "{tries} tries");
    // Stopped by age (600 ms), not after the 1000 attempts (20-40 ms apart: 30 s).
    assert!(took <= Duration::from_secs(2), "{took:?}");
    let s = d.stats();
    assert_eq!((s.delivered, s.failed), (0, 1));
    assert_eq!(s.retried as usize, tries - 1);
}

#[tokio::test]
async fn send_returns_at_once_even_when_the_receiver_is_slow() {
    // Slow, but within the 2 s request timeout.
    let rx = Receiver::start_with(always(Plan::OK.delayed(Duration::from_secs(1)))).await;
    let d = Dispatcher::new(config()).unwrap();
    let t = Target::new(&rx.url("/slow")).unwrap();
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    for i in 0..20 {
        let payload = Payload::publish_start(&publish_event(&i.to_string()), Format::New);
        let (outcome, took) = timed(|| d.send(&t, payload));
        assert_eq!(outcome, SendOutcome::Queued);
        worst = worst.max(took);
        total += took;
        tokio::task::yield_now().await;
    }
    eprintln!("send(): mean {:?}, worst {:?}", total / 20, worst);
    // A send that waited for the receiver would take its 1 s.
    assert!(worst < Duration::from_millis(200), "worst send() {worst:?}");
    // They are on the wire, in parallel (different sessions), not queued behind each other.
    rx.wait_until(WAIT, "20 arrivals", |log| log.len() == 20)
        .await;
    assert_eq!(d.stats().in_flight, 20);
    let t0 = std::time::Instant::now();
    assert!(d.flush(WAIT).await);
    // In parallel: about the receiver's 1 s, not 20 of them in a row.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let s = d.stats();
    assert_eq!((s.delivered, s.retried), (20, 0));
}

/// Task "slow": every request takes 150 ms and its first event is refused once. Task
/// "fast": answered at once. Slow's events must arrive one at a time, in order (the
/// refused one retried before the next starts); fast's must not wait for slow's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_of_one_task_arrive_in_order_while_other_tasks_flow() {
    let rx = Receiver::start_with(Arc::new(|req, log| {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        if body["taskId"] != "slow" {
            return Plan::OK;
        }
        let first_try = !log.iter().any(|r| r.body == req.body);
        let status = if body["event"] == "created" && first_try {
            500
        } else {
            200
        };
        Plan::status(status).delayed(Duration::from_millis(150))
    }))
    .await;
    let d = Dispatcher::new(config()).unwrap();
    let t = Target::new(&rx.url("/status")).unwrap().with_secret("k");
    let sequence = [
        (TaskEventKind::Created, "ready"),
        (TaskEventKind::Started, "started"),
        (TaskEventKind::Error, "error"),
        (TaskEventKind::Stopped, "stopped"),
        (TaskEventKind::Removed, "removed"),
    ];
    let mut sent_slow = Vec::new();
    let mut sent_fast = Vec::new();
    for (kind, state) in sequence {
        for (task, sent) in [("slow", &mut sent_slow), ("fast", &mut sent_fast)] {
            let mut ev = status_event(task, kind, state).with_counters(TaskCounters {
                sent_bytes: 1,
                total_sent_bytes: 2,
                sequence: 3,
            });
            if kind == TaskEventKind::Error {
                ev = ev.with_reason("connection refused");
            }
            d.send(&t, Payload::status(&ev));
            sent.push(ev.seq);
        }
    }
    rx.wait_accepted(10, WAIT).await;
    assert!(d.flush(WAIT).await);
    let all = rx.requests();
    let of = |task: &str| -> Vec<_> {
        all.iter()
            .filter(|r| r.json()["taskId"] == task)
            .cloned()
            .collect()
    };
    let slow = of("slow");
    let fast = of("fast");
    // Slow: the refused first event, its retry, then the rest, in order, never overlapping.
    assert_eq!(slow.len(), 6, "{slow:#?}");
    assert_eq!(slow[0].status, 500);
    assert_eq!(slow[0].body, slow[1].body);
    let slow_seqs: Vec<u64> = slow[1..]
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(slow_seqs, sent_slow);
    let slow_events: Vec<String> = slow[1..]
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        slow_events,
        ["created", "started", "error", "stopped", "removed"]
    );
    for pair in slow.windows(2) {
        assert!(
            pair[1].arrived >= pair[0].answered.unwrap(),
            "one in flight at a time per task"
        );
    }
    // Fast: in order too, and all done while slow was still on its first event.
    let fast_seqs: Vec<u64> = fast
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(fast_seqs, sent_fast);
    assert!(fast.iter().all(|r| r.ok()));
    let fast_done = fast.iter().map(|r| r.answered.unwrap()).max().unwrap();
    assert!(
        fast_done < slow[1].arrived,
        "fast's events did not wait for slow's"
    );
    // Bodies as made, error with its reason.
    assert_eq!(slow[3].json()["reason"], "connection refused");
    assert_eq!(
        slow[3].json()["counters"],
        serde_json::json!({"sentBytes": 1, "totalsentBytes": 2, "sequence": 3})
    );
    let s = d.stats();
    assert_eq!((s.delivered, s.failed, s.retried), (10, 0, 1));
}

#[tokio::test]
async fn a_publish_end_waits_for_its_start() {
    // The start is refused once; the end, sent right after, must still arrive after it.
    let rx = Receiver::start_with(fail_first(1)).await;
    let d = Dispatcher::new(config()).unwrap();
    let t = Target::new(&rx.url("/cb")).unwrap();
    let ev = publish_event("99");
    d.send(&t, Payload::publish_start(&ev, Format::New));
    d.send(&t, Payload::publish_end(&ev, &end(), Format::New));
    rx.wait_accepted(2, WAIT).await;
    let types: Vec<(u16, String)> = rx
        .requests()
        .iter()
        .map(|r| {
            (
                r.status,
                r.json()["NotifyType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            (500, "PubStart".to_string()),
            (200, "PubStart".to_string()),
            (200, "PubEnd".to_string())
        ]
    );
}

type HmacSha256 = Hmac<sha2::Sha256>;

#[tokio::test]
async fn the_signature_verifies_with_the_secret_and_not_with_another() {
    let rx = Receiver::start().await;
    let d = Dispatcher::new(config()).unwrap();
    let signed = Target::new(&rx.url("/signed"))
        .unwrap()
        .with_secret("s3cret");
    let unsigned = Target::new(&rx.url("/unsigned")).unwrap();
    let ev =
        status_event("t9", TaskEventKind::Error, "error").with_reason("HTTP 403 from destination");
    d.send_all([&signed, &unsigned], &Payload::status(&ev));
    let got = rx.wait_accepted(2, WAIT).await;
    let signed_req = got.iter().find(|r| r.uri == "/signed").unwrap();
    let unsigned_req = got.iter().find(|r| r.uri == "/unsigned").unwrap();
    assert!(unsigned_req.header("x-signature").is_none());
    assert_eq!(signed_req.header("content-type"), Some("application/json"));

    let header = signed_req.header("x-signature").unwrap();
    let hex_sig = header.strip_prefix("sha256=").unwrap();
    assert_eq!(hex_sig.len(), 64);
    // Checked independently of the crate's own helper...
    let check = |secret: &[u8]| {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(&signed_req.body);
        mac.verify_slice(&hex::decode(hex_sig).unwrap()).is_ok()
    };
    assert!(check(b"s3cret"));
    assert!(!check(b"other"));
    // ...and with it.
    assert!(pushcast_webhooks::verify(
        &signed_req.body,
        b"s3cret",
        header
    ));
    assert!(!pushcast_webhooks::verify(
        &signed_req.body,
        b"other",
        header
    ));
    let mut tampered = signed_req.body.to_vec();
    tampered[2] ^= 1;
    assert!(!pushcast_webhooks::verify(&tampered, b"s3cret", header));
}

/// A current-thread runtime: the lanes cannot start before the test awaits, so the
/// six sends all meet a full queue of waiting payloads.
#[tokio::test]
async fn a_full_queue_drops_the_oldest_waiting_payload_and_counts_it() {
    let rx = Receiver::start().await;
    let d = Dispatcher::new(DispatcherConfig {
        queue_capacity: 3,
        ..config()
    })
    .unwrap();
    let t = Target::new(&rx.url("/status")).unwrap();
    let events: Vec<_> = (0..6)
        .map(|i| {
            status_event("t", TaskEventKind::Started, "started").with_counters(TaskCounters {
                sent_bytes: i,
                ..TaskCounters::default()
            })
        })
        .collect();
    let outcomes: Vec<_> = events
        .iter()
        .map(|ev| d.send(&t, Payload::status(ev)))
        .collect();
    use SendOutcome::*;
    assert_eq!(
        outcomes,
        [
            Queued,
            Queued,
            Queued,
            QueuedDroppedOldest,
            QueuedDroppedOldest,
            QueuedDroppedOldest
        ]
    );
    let s = d.stats();
    assert_eq!((s.dropped, s.queued), (3, 3));
    assert!(d.flush(WAIT).await);
    let got: Vec<u64> = rx
        .requests()
        .iter()
        .map(|r| r.json()["counters"]["sentBytes"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [3, 4, 5], "the newest three, in order");
    let s = d.stats();
    assert_eq!((s.delivered, s.dropped, s.failed), (3, 3, 0));
}

#[tokio::test]
async fn a_queue_full_of_deliveries_in_progress_drops_the_new_payload() {
    let rx = Receiver::start_with(always(Plan::OK.delayed(Duration::from_millis(500)))).await;
    let d = Dispatcher::new(DispatcherConfig {
        queue_capacity: 2,
        ..config()
    })
    .unwrap();
    let t = Target::new(&rx.url("/cb")).unwrap();
    for i in 0..2 {
        let p = Payload::publish_start(&publish_event(&i.to_string()), Format::New);
        assert_eq!(d.send(&t, p), SendOutcome::Queued);
    }
    rx.wait_until(WAIT, "2 arrivals", |log| log.len() == 2)
        .await;
    assert_eq!(d.stats().in_flight, 2);
    let third = Payload::publish_start(&publish_event("2"), Format::New);
    assert_eq!(d.send(&t, third), SendOutcome::Dropped);
    assert!(d.flush(WAIT).await);
    let s = d.stats();
    assert_eq!((s.delivered, s.dropped), (2, 1));
    assert_eq!(rx.requests().len(), 2);
    // Room again once they are done.
    let fourth = Payload::publish_start(&publish_event("3"), Format::New);
    assert_eq!(d.send(&t, fourth), SendOutcome::Queued);
    assert!(d.flush(WAIT).await);
    assert_eq!(d.stats().delivered, 3);
}

#[tokio::test]
async fn send_works_from_a_thread_outside_the_runtime() {
    let rx = Receiver::start().await;
    let d = Dispatcher::new(config()).unwrap();
    let t = Target::new(&rx.url("/cb")).unwrap();
    let (d2, t2) = (d.clone(), t.clone());
    std::thread::spawn(move || {
        d2.send(
            &t2,
            Payload::publish_start(&publish_event("5"), Format::Old),
        )
    })
    .join()
    .unwrap();
    rx.wait_accepted(1, WAIT).await;
    assert!(d.flush(WAIT).await);
}
