#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;

use super::*;
use pushcast_media::{AudioCodec, Codec, Frame, FrameKind, VideoCodec};

fn key(stream: &str) -> StreamId {
    StreamId::new("default", "app", stream)
}

fn frame(kind: FrameKind, ts: u32, payload: Vec<u8>) -> Frame {
    Frame {
        kind,
        timestamp_ms: ts,
        payload: Bytes::from(payload),
    }
}

fn metadata(ts: u32, tag: u8) -> Frame {
    let mut p = b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00".to_vec();
    p.push(tag);
    frame(FrameKind::Data, ts, p)
}

fn cue(ts: u32) -> Frame {
    frame(FrameKind::Data, ts, b"\x02\x00\x0aonCuePoint".to_vec())
}

/// AVC sequence header; `tag` tells versions apart.
fn vsh(ts: u32, tag: u8) -> Frame {
    frame(FrameKind::Video, ts, vec![0x17, 0, 0, 0, 0, 1, tag])
}

fn keyframe(ts: u32, n: u8) -> Frame {
    frame(FrameKind::Video, ts, vec![0x17, 1, 0, 0, 0, n])
}

fn inter(ts: u32, n: u8) -> Frame {
    frame(FrameKind::Video, ts, vec![0x27, 1, 0, 0, 0, n])
}

fn ash(ts: u32, tag: u8) -> Frame {
    frame(FrameKind::Audio, ts, vec![0xaf, 0, 0x12, tag])
}

fn aac(ts: u32, n: u8) -> Frame {
    frame(FrameKind::Audio, ts, vec![0xaf, 1, n])
}

fn drain(sub: &mut Subscription) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(f) = sub.try_recv() {
        out.push(f);
    }
    out
}

/// The usual stream start: metadata, headers, then GOP 0 (keyframe at ts 0).
fn start_frames() -> Vec<Frame> {
    vec![
        metadata(0, 1),
        vsh(0, 1),
        ash(0, 1),
        keyframe(0, 0),
        aac(10, 0),
        inter(33, 1),
    ]
}

fn start(source: &Source) {
    for f in start_frames() {
        source.publish(f);
    }
}

#[tokio::test]
async fn late_subscriber_gets_metadata_headers_and_gop_from_keyframe() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    // GOP 1 starts at ts 100.
    source.publish(keyframe(100, 10));
    source.publish(aac(110, 1));
    source.publish(cue(120));
    source.publish(inter(133, 11));

    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let got = drain(&mut sub);
    let want = vec![
        // Replayed prelude, stamped with the keyframe's timestamp.
        metadata(100, 1),
        vsh(100, 1),
        ash(100, 1),
        keyframe(100, 10),
        aac(110, 1),
        cue(120),
        inter(133, 11),
    ];
    assert_eq!(got, want);

    // Then live frames, in order.
    source.publish(inter(166, 12));
    source.publish(aac(130, 2));
    assert_eq!(sub.recv().await.unwrap(), inter(166, 12));
    assert_eq!(sub.recv().await.unwrap(), aac(130, 2));
    assert_eq!(sub.stats().received_frames, 9);
    assert_eq!(sub.stats().dropped_frames, 0);
}

#[tokio::test]
async fn early_subscriber_starts_at_first_keyframe_and_frames_arrive_in_order() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    // Subscribed before anything was published: waits for the first keyframe.
    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    source.publish(metadata(0, 1));
    source.publish(vsh(0, 1));
    source.publish(inter(0, 99)); // undecodable before a keyframe: not sent
    source.publish(ash(5, 1));
    source.publish(keyframe(40, 0));
    let mut expected = vec![metadata(40, 1), vsh(40, 1), ash(40, 1), keyframe(40, 0)];
    for i in 1..200u8 {
        let ts = 40 + u32::from(i) * 10;
        let f = if i % 3 == 0 { aac(ts, i) } else { inter(ts, i) };
        source.publish(f.clone());
        expected.push(f);
    }
    drop(source);
    let mut got = Vec::new();
    while let Some(f) = sub.recv().await {
        got.push(f);
    }
    assert_eq!(got, expected);
    // Waiting for the first keyframe is not a loss.
    let stats = sub.stats();
    assert_eq!((stats.dropped_frames, stats.skips), (0, 0));
}

#[tokio::test]
async fn stalled_subscriber_is_bounded_and_resumes_at_a_keyframe() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    let mut fast = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let limits = QueueLimits {
        max_frames: 8,
        max_bytes: 1 << 20,
    };
    let mut slow = hub.subscribe(&key("s"), limits).unwrap();
    let primed = 6; // metadata, vsh, ash, keyframe, aac, inter
    assert_eq!(slow.stats().queued_frames, primed);

    let mut published = Vec::new();
    // Three GOPs of 30 frames; the slow one never reads, the fast one reads as it goes.
    let mut fast_got = drain(&mut fast);
    for gop in 1..=3u32 {
        for i in 0..30u32 {
            let ts = gop * 1000 + i * 10;
            let f = if i == 0 {
                keyframe(ts, gop as u8)
            } else {
                inter(ts, i as u8)
            };
            source.publish(f.clone());
            published.push(f);
            fast_got.extend(drain(&mut fast));
            let s = slow.stats();
            assert!(s.queued_frames <= limits.max_frames, "{s:?}");
        }
    }
    // The fast one got every frame, in order, after its own snapshot.
    assert_eq!(&fast_got[primed..], &published[..]);
    assert_eq!(fast.stats().dropped_frames, 0);

    // The slow one kept a prefix (decodable), then skipped.
    let s = slow.stats();
    assert!(s.skipping);
    assert_eq!(s.skips, 1);
    assert_eq!(s.queued_frames, 8);
    assert_eq!(s.dropped_frames, 90 - 2);
    let prefix = drain(&mut slow);
    assert_eq!(prefix.len(), 8);
    assert_eq!(prefix[6], published[0]);
    assert_eq!(prefix[7], published[1]);

    // It reads again: nothing until the next keyframe, then the keyframe (headers did
    // not change, so none are re-sent), then live frames.
    source.publish(inter(3300, 40));
    assert!(drain(&mut slow).is_empty());
    source.publish(keyframe(4000, 4));
    source.publish(inter(4010, 41));
    assert_eq!(drain(&mut slow), vec![keyframe(4000, 4), inter(4010, 41)]);
    let s = slow.stats();
    assert!(!s.skipping);
    assert_eq!((s.skips, s.dropped_frames), (1, 89));
    assert!(s.dropped_bytes > 0);
}

#[tokio::test]
async fn resume_resends_headers_that_changed_while_skipping() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    let limits = QueueLimits {
        max_frames: 7,
        max_bytes: 1 << 20,
    };
    let mut slow = hub.subscribe(&key("s"), limits).unwrap();
    source.publish(inter(66, 2)); // fills the queue (7)
    source.publish(inter(100, 3)); // dropped: skipping
    // Encoder restarted its codecs while we were skipping.
    source.publish(metadata(200, 2));
    source.publish(vsh(200, 2));
    source.publish(ash(200, 2));
    source.publish(keyframe(200, 20)); // does not fit yet: queue still full
    assert_eq!(drain(&mut slow).len(), 7);
    source.publish(inter(233, 21)); // not a keyframe: still dropped
    source.publish(keyframe(300, 30));
    assert_eq!(
        drain(&mut slow),
        vec![
            metadata(300, 2),
            vsh(300, 2),
            ash(300, 2),
            keyframe(300, 30)
        ]
    );
    // inter 100, metadata, vsh, ash, keyframe 200 (no room yet), inter 233.
    assert_eq!(slow.stats().dropped_frames, 6);
}

#[tokio::test]
async fn sequence_header_changes_are_forwarded_in_order() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    let mut live = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    drain(&mut live);
    source.publish(inter(66, 2));
    source.publish(vsh(70, 2));
    source.publish(ash(70, 2));
    source.publish(keyframe(70, 3));
    source.publish(aac(80, 3));
    assert_eq!(
        drain(&mut live),
        vec![
            inter(66, 2),
            vsh(70, 2),
            ash(70, 2),
            keyframe(70, 3),
            aac(80, 3)
        ]
    );
    // A late subscriber starts with the new headers.
    let mut late = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    assert_eq!(
        drain(&mut late),
        vec![
            metadata(70, 1),
            vsh(70, 2),
            ash(70, 2),
            keyframe(70, 3),
            aac(80, 3)
        ]
    );
}

#[tokio::test]
async fn header_change_inside_a_gop_replays_in_order() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    // Audio config changes mid-GOP: frames before it used the old one.
    source.publish(aac(40, 1));
    source.publish(ash(50, 2));
    source.publish(aac(60, 2));
    let mut late = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    assert_eq!(
        drain(&mut late),
        vec![
            metadata(0, 1),
            vsh(0, 1),
            ash(0, 1),
            keyframe(0, 0),
            aac(10, 0),
            inter(33, 1),
            aac(40, 1),
            ash(50, 2),
            aac(60, 2),
        ]
    );
}

#[tokio::test]
async fn source_end_reaches_subscribers_after_their_queue() {
    let hub = Hub::default();
    let mut events = hub.events();
    let source = hub.publish(key("s")).unwrap();
    assert_eq!(events.recv().await.unwrap(), StreamEvent::Live(key("s")));
    start(&source);
    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    source.end();
    assert_eq!(events.recv().await.unwrap(), StreamEvent::Ended(key("s")));
    // Queued frames are still delivered, then the end.
    let mut n = 0;
    while sub.recv().await.is_some() {
        n += 1;
    }
    assert_eq!(n, 6);
    assert_eq!(sub.try_recv(), Err(TryRecvError::Ended));
    assert!(!hub.is_live(&key("s")));
    assert!(hub.subscribe(&key("s"), QueueLimits::default()).is_none());
    assert!(hub.info(&key("s")).is_none());
    // The name is free again.
    let again = hub.publish(key("s")).unwrap();
    assert!(hub.is_live(again.key()));
}

#[tokio::test]
async fn dropping_the_source_ends_the_stream() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let reader = tokio::spawn(async move { sub.recv().await });
    tokio::task::yield_now().await;
    drop(source);
    let got = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, None);
}

#[tokio::test]
async fn second_publisher_is_refused_and_the_live_one_untouched() {
    let hub = Hub::default();
    let first = hub.publish(key("s")).unwrap();
    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let err = hub.publish(key("s")).unwrap_err();
    assert_eq!(err, HubError::ExistStreamName(key("s")));
    assert!(err.to_string().starts_with("ExistStreamName"));
    // Another stream name is fine.
    let _other = hub.publish(key("t")).unwrap();
    // The live one still works.
    first.publish(keyframe(0, 1));
    assert_eq!(sub.recv().await.unwrap(), keyframe(0, 1));
    assert_eq!(hub.info(&key("s")).unwrap().subscribers, 1);
}

#[tokio::test]
async fn gop_cache_is_bounded_for_streams_without_keyframes() {
    let limits = GopLimits {
        max_frames: 50,
        max_bytes: 1000,
        audio_window_ms: 1000,
    };
    let hub = Hub::new(HubConfig { gop: limits });
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    // A keyframe, then a long stretch without one: frames count bound.
    for i in 0..10_000u32 {
        source.publish(inter(100 + i, (i % 200) as u8));
        let info = source.info();
        assert!(info.gop_frames <= 50 && info.gop_bytes <= 1000, "{info:?}");
    }
    let info = source.info();
    assert!(info.gop_overflows >= 1);
    // A new subscriber cannot start mid-GOP: it waits for the next keyframe.
    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    assert!(drain(&mut sub).is_empty());
    source.publish(keyframe(20_000, 7));
    assert_eq!(
        drain(&mut sub),
        vec![
            metadata(20_000, 1),
            vsh(20_000, 1),
            ash(20_000, 1),
            keyframe(20_000, 7)
        ]
    );

    // Byte bound: few, large frames.
    let big = hub.publish(key("big")).unwrap();
    big.publish(keyframe(0, 1));
    for i in 0..100u32 {
        big.publish(frame(FrameKind::Video, i, vec![0x27; 300]));
        assert!(big.info().gop_bytes <= 1000);
    }
}

#[tokio::test]
async fn audio_only_streams_keep_a_bounded_recent_window() {
    let hub = Hub::default();
    let source = hub.publish(key("radio")).unwrap();
    source.publish(metadata(0, 1));
    source.publish(ash(0, 1));
    for i in 0..500u32 {
        source.publish(aac(i * 23, (i % 250) as u8));
    }
    let info = source.info();
    // ~1 s of 23 ms frames.
    assert!((40..=45).contains(&info.gop_frames), "{info:?}");
    assert_eq!(info.tracks().len(), 1);
    let mut sub = hub
        .subscribe(&key("radio"), QueueLimits::default())
        .unwrap();
    let got = drain(&mut sub);
    let first_ts = got[2].timestamp_ms;
    assert_eq!(got[0], metadata(first_ts, 1));
    assert_eq!(got[1], ash(first_ts, 1));
    assert!(got[2..].iter().all(|f| f.kind == FrameKind::Audio));
    assert_eq!(got.last().unwrap(), &aac(499 * 23, (499 % 250) as u8));

    // A stalled audio-only subscriber resumes on the next audio frame.
    let mut slow = hub
        .subscribe(
            &key("radio"),
            QueueLimits {
                max_frames: got.len(),
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
    source.publish(aac(20_000, 1)); // full: dropped
    assert!(slow.stats().skipping);
    drain(&mut slow);
    source.publish(aac(20_023, 2));
    assert_eq!(drain(&mut slow), vec![aac(20_023, 2)]);
    assert_eq!(slow.stats().skips, 1);
}

#[tokio::test]
async fn payloads_are_shared_not_copied() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    let mut a = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let mut b = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let live = keyframe(100, 5);
    let ptr = live.payload.as_ptr();
    source.publish(live);
    let (fa, fb) = (drain(&mut a), drain(&mut b));
    assert_eq!(fa.len(), fb.len());
    for (x, y) in fa.iter().zip(&fb) {
        // Cached GOP and replayed headers too: the same buffers.
        assert_eq!(x.payload.as_ptr(), y.payload.as_ptr());
    }
    assert_eq!(fa.last().unwrap().payload.as_ptr(), ptr);
}

#[tokio::test]
async fn reserved_subscriber_starts_when_the_stream_goes_live() {
    let hub = Hub::default();
    let waiting = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut sub = hub
                .subscribe_when_live(&key("s"), QueueLimits::default())
                .await;
            sub.recv().await
        })
    };
    // Another stream's events do not satisfy the wait.
    let other = hub.publish(key("other")).unwrap();
    tokio::task::yield_now().await;
    drop(other);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished());
    let source = hub.publish(key("s")).unwrap();
    // Wait until the waiter has subscribed, then publish a keyframe.
    for _ in 0..500 {
        if source.info().subscribers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    source.publish(keyframe(0, 1));
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(keyframe(0, 1)));
}

#[tokio::test]
async fn dropped_subscriptions_are_forgotten() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    let a = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let _b = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    assert_eq!(source.info().subscribers, 2);
    drop(a);
    assert_eq!(source.info().subscribers, 1);
    source.publish(keyframe(0, 1));
    assert_eq!(source.info().subscribers, 1);
}

#[tokio::test]
async fn stream_info_reports_tracks_and_counters() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    let info = hub.info(&key("s")).unwrap();
    let codecs: Vec<_> = info
        .tracks_seen
        .iter()
        .map(|t| (t.kind, t.track, t.codec))
        .collect();
    assert_eq!(
        codecs,
        [
            (FrameKind::Video, 0, Codec::Video(VideoCodec::Flv(7))),
            (FrameKind::Audio, 0, Codec::Audio(AudioCodec::Flv(10)))
        ]
    );
    assert!(info.has_metadata);
    assert_eq!(info.frames_in, 6);
    let start_bytes: usize = start_frames().iter().map(|f| f.payload.len()).sum();
    assert_eq!(info.bytes_in, start_bytes as u64);
    let names: Vec<_> = info.tracks().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["bypass_video", "bypass_audio"]);
    assert!(info.since <= SystemTime::now());
    assert_eq!(hub.streams().len(), 1);
    let sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    assert_eq!(sub.stream_info().frames_in, 6);
}

#[tokio::test]
async fn a_frame_larger_than_the_queue_still_gets_through() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    let mut sub = hub
        .subscribe(
            &key("s"),
            QueueLimits {
                max_frames: 4,
                max_bytes: 16,
            },
        )
        .unwrap();
    let mut huge = vec![0x17, 1, 0, 0, 0];
    huge.resize(1000, 0);
    source.publish(frame(FrameKind::Video, 0, huge.clone()));
    assert_eq!(drain(&mut sub).len(), 1);
    source.publish(frame(FrameKind::Video, 33, huge));
    assert_eq!(drain(&mut sub).len(), 1);
    assert_eq!(sub.stats().dropped_frames, 0);
}

#[tokio::test]
async fn gop_larger_than_a_new_queue_starts_at_next_keyframe_and_says_so() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    let mut sub = hub
        .subscribe(
            &key("s"),
            QueueLimits {
                max_frames: 3,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
    let s = sub.stats();
    assert!(s.skipping);
    assert_eq!((s.skips, s.dropped_frames), (1, 6));
    source.publish(keyframe(100, 1));
    assert_eq!(
        drain(&mut sub),
        vec![metadata(100, 1), vsh(100, 1), ash(100, 1), keyframe(100, 1)]
    );
}

#[tokio::test]
async fn recv_many_takes_a_burst() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    start(&source);
    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    let mut buf = Vec::new();
    assert_eq!(sub.recv_many(&mut buf, 100).await, 6);
    assert_eq!(sub.stats().queued_frames, 0);
    assert_eq!(sub.stats().received_frames, 6);
    drop(source);
    assert_eq!(sub.recv_many(&mut buf, 100).await, 0);
}

#[test]
fn keyframe_and_metadata_classification() {
    assert!(gop::is_video_keyframe(&keyframe(0, 1)));
    assert!(!gop::is_video_keyframe(&vsh(0, 1)));
    assert!(!gop::is_video_keyframe(&inter(0, 1)));
    // AVC end of sequence has frame type 1 too.
    assert!(!gop::is_video_keyframe(&frame(
        FrameKind::Video,
        0,
        vec![0x17, 2, 0, 0, 0]
    )));
    // Legacy codec keyframe (VP6).
    assert!(gop::is_video_keyframe(&frame(
        FrameKind::Video,
        0,
        vec![0x14, 0]
    )));
    assert!(gop::is_metadata(&metadata(0, 1)));
    let mut wrapped = b"\x02\x00\x0d@setDataFrame".to_vec();
    wrapped.extend_from_slice(&metadata(0, 1).payload);
    assert!(gop::is_metadata(&frame(FrameKind::Data, 0, wrapped)));
    assert!(!gop::is_metadata(&cue(0)));
    assert!(!gop::is_metadata(&frame(FrameKind::Data, 0, vec![])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_fast_ones_get_everything_slow_one_stays_bounded() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    let limits = QueueLimits {
        max_frames: 64,
        max_bytes: 1 << 20,
    };
    // "Fast" readers get a queue larger than the whole test, so that whatever the
    // scheduling on a loaded machine, they never overflow.
    let roomy = QueueLimits {
        max_frames: 1 << 20,
        max_bytes: 1 << 30,
    };
    let fast: Vec<_> = (0..3)
        .map(|_| {
            let mut sub = hub.subscribe(&key("s"), roomy).unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(f) = sub.recv().await {
                    got.push(f.timestamp_ms);
                }
                (got, sub.stats())
            })
        })
        .collect();
    let mut slow = hub.subscribe(&key("s"), limits).unwrap();
    let slow_reader = tokio::spawn(async move {
        let mut max_seen = 0;
        let mut got = Vec::new();
        while let Some(f) = slow.recv().await {
            max_seen = max_seen.max(slow.stats().queued_frames);
            got.push(f);
            if got.len() % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        (got, max_seen, slow.stats())
    });
    let publisher = std::thread::spawn(move || {
        source.publish(vsh(0, 1));
        for i in 0..20_000u32 {
            let f = if i % 50 == 0 {
                keyframe(i, 1)
            } else {
                inter(i, 2)
            };
            source.publish(f);
        }
    });
    publisher.join().unwrap();
    for reader in fast {
        let (got, stats) = reader.await.unwrap();
        assert_eq!(got.len(), 20_001, "{stats:?}");
        assert!(got.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((stats.dropped_frames, stats.queued_frames), (0, 0));
    }
    let (got, max_seen, stats) = slow_reader.await.unwrap();
    assert!(max_seen <= limits.max_frames, "{max_seen}");
    assert_eq!(stats.queued_frames, 0);
    assert_eq!(stats.queued_bytes, 0);
    // Everything was either received or counted as dropped.
    assert_eq!(got.len() as u64 + stats.dropped_frames, 20_001);
    // Every resume lands on a keyframe.
    for w in got.windows(2) {
        if w[1].timestamp_ms != w[0].timestamp_ms + 1 && w[0].timestamp_ms != 0 {
            assert!(gop::is_video_keyframe(&w[1]), "{:?} after {:?}", w[1], w[0]);
        }
    }
}

#[tokio::test]
async fn ready_waits_for_a_decodable_start_so_tracks_are_known() {
    let hub = Hub::default();
    let source = hub.publish(key("s")).unwrap();
    // Subscribed the moment the stream went live: nothing is known yet.
    let mut sub = hub.subscribe(&key("s"), QueueLimits::default()).unwrap();
    assert!(sub.stream_info().tracks().is_empty());
    let waiter = tokio::spawn(async move {
        let info = sub.ready().await.unwrap();
        (info, sub)
    });
    start(&source);
    let (info, mut sub) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<_> = info.tracks().iter().map(|t| t.id).collect();
    assert_eq!(ids, [101, 102]);
    // Nothing was consumed: the first frame is still handed out, then the rest.
    assert_eq!(sub.recv().await.unwrap(), metadata(0, 1));
    // ready() again is a no-op peek of the next frame.
    assert!(sub.ready().await.is_some());
    let mut buf = Vec::new();
    assert_eq!(sub.recv_many(&mut buf, 100).await, 5);
    assert_eq!(buf[0], vsh(0, 1));
    assert_eq!(sub.stats().received_frames, 6);
    drop(source);
    assert!(sub.ready().await.is_none());
}

/// Enhanced RTMP: an HEVC stream with a second AAC track (ffmpeg 9's tag layouts). The
/// keyframe is found (the first byte is 0x9X, not 0x1X), every track's sequence header
/// is cached, a late subscriber gets them all before the keyframe, and the tracks are
/// listed with their ids.
#[tokio::test]
async fn enhanced_rtmp_keyframes_and_every_tracks_headers_are_cached() {
    let hub = Hub::default();
    let source = hub.publish(key("e")).unwrap();
    let hevc_seq = frame(FrameKind::Video, 0, b"\x90hvc1\x01\x01\x60".to_vec());
    let aac0_seq = ash(0, 1);
    let aac1_seq = frame(FrameKind::Audio, 0, b"\x95\x00mp4a\x01\x11\x88".to_vec());
    let aac1_layout = frame(FrameKind::Audio, 0, b"\x95\x04mp4a\x01\x01\x01".to_vec());
    let hevc_key = frame(
        FrameKind::Video,
        0,
        b"\x91hvc1\x00\x00\x43\x00\x01".to_vec(),
    );
    let hevc_inter = frame(FrameKind::Video, 33, b"\xa3hvc1\x00\x02".to_vec());
    let aac1 = frame(FrameKind::Audio, 21, b"\x95\x01mp4a\x01\xdc".to_vec());
    for f in [
        metadata(0, 1),
        hevc_seq.clone(),
        aac0_seq.clone(),
        aac1_seq.clone(),
        aac1_layout.clone(),
        hevc_key.clone(),
        aac(10, 0),
        aac1.clone(),
        hevc_inter.clone(),
    ] {
        source.publish(f);
    }
    let mut late = hub.subscribe(&key("e"), QueueLimits::default()).unwrap();
    let got = drain(&mut late);
    assert_eq!(
        got,
        [
            metadata(0, 1),
            hevc_seq,
            aac0_seq,
            aac1_seq,
            aac1_layout,
            hevc_key,
            aac(10, 0),
            aac1,
            hevc_inter
        ]
    );
    let tracks: Vec<_> = hub
        .info(&key("e"))
        .unwrap()
        .tracks()
        .into_iter()
        .map(|t| (t.id, t.name, t.codec.to_string()))
        .collect();
    assert_eq!(
        tracks,
        [
            (101, "bypass_video".to_string(), "HEVC".to_string()),
            (102, "bypass_audio".to_string(), "AAC".to_string()),
            (112, "bypass_audio_1".to_string(), "AAC".to_string()),
        ]
    );
}

// ---- splicing: reconnect window, backup inputs (`splice`) ------------------------------

fn continuity(window_ms: u64, stall_ms: u64) -> Continuity {
    Continuity {
        reconnect_window: Duration::from_millis(window_ms),
        stall: Duration::from_millis(stall_ms),
        switch_back: true,
    }
}

fn primary(hub: &Hub, name: &str, c: Continuity) -> Source {
    hub.publish_input(key(name), Role::Primary, Some(c))
        .unwrap()
}

/// Frames of a second encoder run: the same headers, its own timestamps from 0.
fn restart_frames(n: u8) -> Vec<Frame> {
    vec![
        metadata(0, 1),
        vsh(0, 1),
        ash(0, 1),
        keyframe(0, n),
        aac(10, n),
        inter(33, n + 1),
    ]
}

fn media_timestamps(frames: &[Frame]) -> Vec<u32> {
    frames
        .iter()
        .filter(|f| f.kind != FrameKind::Data && !f.is_sequence_header())
        .map(|f| f.timestamp_ms)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_publisher_back_within_the_window_continues_the_stream_after_the_gap() {
    let hub = Hub::default();
    let first = primary(&hub, "cam", continuity(10_000, 2_000));
    start(&first);
    let mut sub = hub.subscribe(&key("cam"), QueueLimits::default()).unwrap();
    let before = drain(&mut sub);
    let status = sub.splice_status();
    drop(first);
    assert!(
        hub.is_live(&key("cam")),
        "the stream waits for its publisher"
    );
    assert_eq!(status.borrow().active, None);
    assert_eq!(status.borrow().interruptions, 1);
    assert!(matches!(sub.try_recv(), Err(TryRecvError::Empty)), "no end");

    tokio::time::advance(Duration::from_millis(2_000)).await;
    let again = primary(&hub, "cam", continuity(10_000, 2_000));
    assert_eq!(status.borrow().resumes, 1);
    assert_eq!(status.borrow().active, Some(Role::Primary));
    for f in restart_frames(7) {
        again.publish(f);
    }
    let after = drain(&mut sub);
    // Only the keyframe and what follows: the same headers are not sent again.
    assert!(
        after
            .iter()
            .all(|f| !f.is_sequence_header() && f.kind != FrameKind::Data),
        "unchanged headers were re-sent: {after:?}"
    );
    assert_eq!(
        after[0].payload,
        keyframe(0, 7).payload,
        "starts at the keyframe"
    );
    let last_before = *media_timestamps(&before).iter().max().unwrap();
    let ts = media_timestamps(&after);
    assert_eq!(
        ts[0],
        last_before + 2_000,
        "after the last frame, by the gap"
    );
    assert!(ts.windows(2).all(|w| w[0] <= w[1] + 50), "{ts:?}");
}

#[tokio::test(start_paused = true)]
async fn changed_headers_are_sent_and_a_new_codec_republishes() {
    let hub = Hub::default();
    let first = primary(&hub, "cam", continuity(10_000, 2_000));
    start(&first);
    let mut sub = hub.subscribe(&key("cam"), QueueLimits::default()).unwrap();
    drain(&mut sub);
    drop(first);
    let again = primary(&hub, "cam", continuity(10_000, 2_000));
    again.publish(vsh(0, 9)); // new SPS/PPS, same codec
    again.publish(ash(0, 1));
    again.publish(keyframe(0, 1));
    let after = drain(&mut sub);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        after[0].payload,
        vsh(0, 9).payload,
        "the changed header only"
    );
    drop(again);

    // HEVC after H.264: no splice; the subscription ends, a new one starts on HEVC.
    let third = primary(&hub, "cam", continuity(10_000, 2_000));
    let hevc = frame(FrameKind::Video, 0, b"\x90hvc1\x01\x02".to_vec());
    third.publish(hevc);
    assert!(matches!(sub.try_recv(), Err(TryRecvError::Ended)));
    assert!(hub.subscribe(&key("cam"), QueueLimits::default()).is_some());
}

#[tokio::test(start_paused = true)]
async fn the_window_passes_and_the_stream_ends() {
    let hub = Hub::default();
    let first = primary(&hub, "cam", continuity(1_000, 2_000));
    start(&first);
    let mut sub = hub.subscribe(&key("cam"), QueueLimits::default()).unwrap();
    drain(&mut sub);
    drop(first);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(hub.is_live(&key("cam")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!hub.is_live(&key("cam")), "gone after the window");
    assert_eq!(sub.recv().await, None);
    // Without a window the stream ends with its publisher (as before).
    let plain = hub.publish(key("cam")).unwrap();
    drop(plain);
    assert!(!hub.is_live(&key("cam")));
}

#[tokio::test(start_paused = true)]
async fn a_backup_is_warm_and_takes_over_at_its_keyframe_when_the_primary_ends() {
    let hub = Hub::default();
    let main = primary(&hub, "cam", continuity(0, 2_000));
    assert!(matches!(
        hub.publish_input(key("other"), Role::Backup, None),
        Err(HubError::Input(_, AttachError::NoPrimary))
    ));
    start(&main);
    let backup = hub.publish_input(key("cam"), Role::Backup, None).unwrap();
    assert!(matches!(
        hub.publish_input(key("cam"), Role::Backup, None),
        Err(HubError::Input(_, AttachError::BackupTaken))
    ));
    let mut sub = hub.subscribe(&key("cam"), QueueLimits::default()).unwrap();
    let before = drain(&mut sub);
    for f in restart_frames(40) {
        backup.publish(Frame {
            timestamp_ms: f.timestamp_ms + 90_000,
            ..f
        });
    }
    assert!(drain(&mut sub).is_empty(), "a standby pushes nothing");
    let status = sub.splice_status();
    drop(main);
    assert_eq!(status.borrow().active, Some(Role::Backup));
    assert_eq!(status.borrow().switches, 1);
    backup.publish(inter(90_066, 42));
    assert!(
        drain(&mut sub).is_empty(),
        "waits for the backup's keyframe"
    );
    tokio::time::advance(Duration::from_millis(40)).await;
    backup.publish(keyframe(90_100, 43));
    let after = drain(&mut sub);
    assert_eq!(
        after.len(),
        1,
        "same headers: the keyframe alone, {after:?}"
    );
    // Its first frame after the switch came at once: 1 ms after the primary's last; its
    // own spacing (34 ms to the keyframe) is kept.
    let last_before = *media_timestamps(&before).iter().max().unwrap();
    assert_eq!(after[0].timestamp_ms, last_before + 1 + 34);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_primary_is_switched_away_from_and_back_when_it_returns() {
    let hub = Hub::default();
    let main = primary(&hub, "cam", continuity(0, 2_000));
    start(&main);
    let backup = hub.publish_input(key("cam"), Role::Backup, None).unwrap();
    backup.publish(vsh(0, 1));
    let mut sub = hub.subscribe(&key("cam"), QueueLimits::default()).unwrap();
    drain(&mut sub);
    backup.publish(keyframe(0, 50));
    assert!(drain(&mut sub).is_empty(), "the primary is live");
    tokio::time::advance(Duration::from_millis(2_100)).await;
    backup.publish(keyframe(2_100, 51));
    let got = drain(&mut sub);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].payload,
        keyframe(0, 51).payload,
        "switched at the backup's keyframe"
    );
    // The primary sends again: back to it at its keyframe (switch_back).
    main.publish(inter(2_200, 2));
    backup.publish(inter(2_133, 52));
    assert_eq!(
        drain(&mut sub).len(),
        1,
        "the backup's frame; the primary's waits"
    );
    main.publish(keyframe(2_233, 3));
    let got = drain(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, keyframe(0, 3).payload);
    assert_eq!(sub.splice_status().borrow().switches, 2);
}

#[tokio::test(start_paused = true)]
async fn a_spliced_input_starts_after_every_picture_shown_so_far() {
    let hub = Hub::default();
    let first = primary(&hub, "cam", continuity(10_000, 2_000));
    start(&first);
    // A P-frame at 66 shown at 132 (composition offset 66, B-frames pending).
    first.publish(frame(FrameKind::Video, 66, vec![0x27, 1, 0, 0, 66, 2]));
    let mut sub = hub.subscribe(&key("cam"), QueueLimits::default()).unwrap();
    drain(&mut sub);
    drop(first);
    let again = primary(&hub, "cam", continuity(10_000, 2_000));
    again.publish(keyframe(0, 9));
    let after = drain(&mut sub);
    assert_eq!(
        after[0].timestamp_ms, 133,
        "after the last picture (132), not the last decode time"
    );
}
