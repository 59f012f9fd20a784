//! RTMP / RTMPS push sessions against real peers: nginx-rtmp recording what it gets,
//! stunnel terminating TLS with a test CA, and the crate's own RTMP server (for exact
//! timestamps and misbehaving destinations). Needs ffmpeg, ffprobe, nginx with
//! libnginx-mod-rtmp and stunnel; without them the tests fail with a message saying so.

use std::time::{Duration, Instant};

use crate::Paced as PacedSource;
use pushcast_media::{Frame, FrameKind};
use pushcast_proto::model::Protocol;
use pushcast_testkit::destination;
use pushcast_testkit::ffmpeg::{RtmpRecorder, assert_starts_on_a_keyframe_at_zero, first_media};
use pushcast_testkit::ffprobe::{decode_errors, probe, stream};
use pushcast_testkit::flv::count_media;
use pushcast_testkit::http::StatusServer;
use pushcast_testkit::media::test_media;
use pushcast_testkit::net::free_tcp_port;
use pushcast_testkit::nginx::{Nginx, NginxOptions};
use pushcast_testkit::pki::make_pki;
use pushcast_testkit::rtmp_server::{Behaviour, TestRtmpServer};
use pushcast_testkit::source::{repeat_frames, shifted};
use pushcast_testkit::stunnel::Stunnel;
use pushcast_worker::push::{
    PushConfig, PushError, SessionCounters, SessionEnd, SessionEvent, TrackSelection, run_attempt,
    tls_client_config,
};
use tokio_util::sync::CancellationToken;

/// Runs one session to its end; returns the result, the counters and how many
/// `Connected` events came.
async fn push(
    url: &str,
    key: &str,
    frames: Vec<Frame>,
    speed: f64,
    cfg: &PushConfig,
) -> (
    Result<SessionEnd, PushError>,
    std::sync::Arc<SessionCounters>,
    usize,
) {
    push_until(&CancellationToken::new(), url, key, frames, speed, cfg).await
}

/// [`push`], stopped when `cancel` fires.
async fn push_until(
    cancel: &CancellationToken,
    url: &str,
    key: &str,
    frames: Vec<Frame>,
    speed: f64,
    cfg: &PushConfig,
) -> (
    Result<SessionEnd, PushError>,
    std::sync::Arc<SessionCounters>,
    usize,
) {
    let dest = destination(Protocol::Rtmp, url, key);
    let mut source = PacedSource::new(frames, speed);
    let counters = SessionCounters::new();
    let mut connected = 0;
    let result = run_attempt(
        &dest,
        TrackSelection::ALL,
        &mut source,
        &counters,
        cfg,
        cancel,
        |ev| {
            if let SessionEvent::Connected { .. } = ev {
                connected += 1;
            }
        },
    )
    .await;
    (result, counters, connected)
}

fn payload_bytes(frames: &[Frame]) -> u64 {
    frames.iter().map(|f| f.payload.len() as u64).sum()
}

/// The recording holds exactly the video and audio frames sent, H.264 High + AAC, and
/// decodes without a single error. (Not how it starts: nginx-rtmp's recorder skips video
/// until a keyframe and rebases timestamps; see `rtmp_to_an_ffmpeg_listener_...`.)
fn assert_recording_matches(path: &std::path::Path, frames: &[Frame]) {
    let streams = probe(path);
    let video = stream(&streams, "h264");
    let audio = stream(&streams, "aac");
    assert_eq!(video.profile.as_deref(), Some("High"));
    let want_video = count_media(frames, FrameKind::Video);
    let want_audio = count_media(frames, FrameKind::Audio);
    eprintln!(
        "recording {}: {} video frames (sent {want_video}), {} audio frames (sent {want_audio})",
        path.display(),
        video.frames,
        audio.frames
    );
    assert_eq!(
        video.frames, want_video,
        "every video frame arrived and decodes"
    );
    assert_eq!(
        audio.frames, want_audio,
        "every audio frame arrived and decodes"
    );
    let errors = decode_errors(path);
    assert!(errors.is_empty(), "decode errors: {errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_to_nginx_records_every_frame() {
    let media = test_media();
    let nginx = Nginx::start();
    // The session joins "mid-stream": source timestamps far from zero.
    let frames = shifted(&media.frames, 3_600_000);
    let started = Instant::now();
    let (result, counters, connected) = push(
        &nginx.rtmp_url(),
        "stream1",
        frames.clone(),
        4.0,
        &PushConfig::default(),
    )
    .await;
    assert_eq!(
        result.expect("session ends cleanly"),
        SessionEnd::SourceEnded
    );
    eprintln!("pushed in {:?}", started.elapsed());
    assert_eq!(connected, 1);
    assert_eq!(
        counters.sent_bytes(),
        payload_bytes(&frames),
        "sent_bytes = payload bytes"
    );
    assert_eq!(counters.sent_frames(), frames.len() as u64);

    let path = nginx.finished_recording("stream1", Duration::from_secs(10));
    assert_recording_matches(&path, &frames);

    // The same with a write per frame (no gathering window).
    let cfg = PushConfig {
        write_interval: Duration::ZERO,
        ..PushConfig::default()
    };
    let (result, counters, _) = push(&nginx.rtmp_url(), "stream2", frames.clone(), 4.0, &cfg).await;
    assert_eq!(
        result.expect("session ends cleanly"),
        SessionEnd::SourceEnded
    );
    assert_eq!(counters.sent_bytes(), payload_bytes(&frames));
    let path = nginx.finished_recording("stream2", Duration::from_secs(10));
    assert_recording_matches(&path, &frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_through_stunnel_verifies_the_certificate() {
    let media = test_media();
    let nginx = Nginx::start();
    let tls = Stunnel::start(nginx.port);
    // "localhost": SNI and name verification against the test certificate.
    let url = format!("rtmps://localhost:{}/live", tls.port);

    let cfg = PushConfig {
        tls: tls_client_config(Some(&tls.pki.ca_pem)).expect("TLS config with the test CA"),
        ..PushConfig::default()
    };
    let (result, counters, connected) = push(&url, "secure", media.frames.clone(), 4.0, &cfg).await;
    assert_eq!(
        result.unwrap_or_else(|e| panic!("rtmps push failed: {e}\nstunnel log:\n{}", tls.log())),
        SessionEnd::SourceEnded
    );
    assert_eq!(connected, 1);
    assert!(counters.sent_bytes() > 0);
    let path = nginx.finished_recording("secure", Duration::from_secs(10));
    assert_recording_matches(&path, &media.frames);

    // A CA that did not sign the server's certificate: refused, with the reason.
    let other = make_pki(tls.dir.path(), "unrelated");
    let wrong = PushConfig {
        tls: tls_client_config(Some(&other.ca_pem)).expect("TLS config"),
        ..PushConfig::default()
    };
    for cfg in [wrong, PushConfig::default()] {
        let started = Instant::now();
        let (result, counters, connected) =
            push(&url, "secure2", media.frames.clone(), 4.0, &cfg).await;
        let err = result.expect_err("an untrusted certificate must fail");
        eprintln!("wrong CA: {err}");
        assert!(matches!(err, PushError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string().contains("certificate verify failed"),
            "{err}"
        );
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert_eq!((connected, counters.sent_bytes()), (0, 0));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refusing_the_key_is_a_rejection() {
    let media = test_media();
    let deny = StatusServer::start(403);
    let nginx = Nginx::start_with(NginxOptions {
        on_publish: Some(deny.url()),
        ..NginxOptions::default()
    });
    let started = Instant::now();
    let (result, counters, connected) = push(
        &nginx.rtmp_url(),
        "badkey0123456789",
        media.frames.clone(),
        4.0,
        &PushConfig::default(),
    )
    .await;
    let err = result.expect_err("publish must be refused");
    eprintln!("nginx on_publish 403: {err}");
    assert!(matches!(err, PushError::Rejected { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("destination rejected the stream key"),
        "{err}"
    );
    assert_eq!(err.retry_class(), pushcast_retry::RetryClass::Rejected);
    assert!(deny.requests() >= 1, "nginx asked the on_publish endpoint");
    assert_eq!((connected, counters.sent_bytes()), (0, 0));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_name_status_is_reported_with_its_code() {
    let media = test_media();
    let server = TestRtmpServer::start(Behaviour::RejectBadName).await;
    let (result, _, connected) = push(
        &server.url(),
        "taken-key-0001",
        media.frames.clone(),
        4.0,
        &PushConfig::default(),
    )
    .await;
    let err = result.expect_err("refused");
    assert_eq!(connected, 0);
    assert_eq!(
        err.to_string(),
        "destination rejected the stream key: NetStream.Publish.BadName: test server refuses this key"
    );
}

/// Joined "mid-stream" (source timestamps an hour in), the push starts at 0 and keeps
/// every frame in order, as an independent receiver records it (ffmpeg, which keeps what
/// arrives as it arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_to_an_ffmpeg_listener_starts_at_zero_on_a_keyframe() {
    let media = test_media();
    let dir = tempfile::tempdir().unwrap();
    let mut recorder = RtmpRecorder::start(&dir.path().join("rec.flv"));
    let frames = shifted(&media.frames, 3_600_000);
    let (result, _, connected) = push(
        &recorder.rtmp_url(),
        "k",
        frames.clone(),
        4.0,
        &PushConfig::default(),
    )
    .await;
    assert_eq!(result.expect("clean end"), SessionEnd::SourceEnded);
    assert_eq!(connected, 1);
    let got = recorder.finish(Duration::from_secs(10));
    assert_starts_on_a_keyframe_at_zero(&got, "the push");
    for kind in [FrameKind::Video, FrameKind::Audio] {
        assert_eq!(
            count_media(&got, kind),
            count_media(&frames, kind),
            "{kind:?}"
        );
    }
    let last = first_media(&got.iter().rev().cloned().collect::<Vec<_>>())
        .map(|f| f.timestamp_ms)
        .unwrap_or_default();
    assert!(
        (3_900..4_200).contains(&last),
        "4 s of stream end near 4 s, not at the source's time: {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_start_at_zero_and_stay_monotonic() {
    let media = test_media();
    let server = TestRtmpServer::start(Behaviour::Accept).await;
    // Joined mid-stream, just before the 32-bit wrap, frames delivered as fast as they
    // come (every write coalesces many frames).
    let frames = shifted(&media.frames, u32::MAX - 1_000);
    let (result, counters, _) = push(
        &server.url(),
        "key-with-query?token=abc",
        frames.clone(),
        f64::INFINITY,
        &PushConfig::default(),
    )
    .await;
    assert_eq!(result.expect("clean end"), SessionEnd::SourceEnded);
    let got = server.wait_closed(Duration::from_secs(5)).await;
    assert_eq!(got.app.as_deref(), Some("live"));
    assert_eq!(got.tc_url.as_deref(), Some(server.url().as_str()));
    assert_eq!(got.stream_name.as_deref(), Some("key-with-query"));
    assert_eq!(got.query.as_deref(), Some("token=abc"));
    assert!(got.publish_ended, "FCUnpublish/deleteStream at the end");
    assert_eq!(got.frames.len(), frames.len(), "every frame arrived");
    assert_eq!(counters.sent_frames(), frames.len() as u64);

    let origin = frames
        .iter()
        .find(|f| f.kind != FrameKind::Data && !f.is_sequence_header())
        .unwrap()
        .timestamp_ms;
    let mut last = [0u32; 3];
    for (sent, recv) in frames.iter().zip(&got.frames) {
        assert_eq!(
            (sent.kind, &sent.payload),
            (recv.kind, &recv.payload),
            "same frames, same order"
        );
        let config = sent.kind == FrameKind::Data || sent.is_sequence_header();
        let want = if config {
            0
        } else {
            sent.timestamp_ms.wrapping_sub(origin)
        };
        assert_eq!(recv.timestamp_ms, want, "{:?} frame", sent.kind);
        let slot = sent.kind as usize;
        assert!(recv.timestamp_ms >= last[slot], "monotonic per kind");
        last[slot] = recv.timestamp_ms;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_fails_fast() {
    let media = test_media();
    let url = format!("rtmp://127.0.0.1:{}/live", free_tcp_port());
    let started = Instant::now();
    let (result, _, connected) =
        push(&url, "k", media.frames.clone(), 4.0, &PushConfig::default()).await;
    let err = result.expect_err("nothing listens");
    eprintln!("{err}");
    assert!(matches!(err, PushError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(err.retry_class(), pushcast_retry::RetryClass::Transient);
    assert_eq!(connected, 0);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_in_the_handshake() {
    let media = test_media();
    let server = TestRtmpServer::start(Behaviour::Silent).await;
    let cfg = PushConfig {
        connect_timeout: Duration::from_millis(500),
        ..PushConfig::default()
    };
    let started = Instant::now();
    let (result, _, _) = push(&server.url(), "k", media.frames.clone(), 4.0, &cfg).await;
    let err = result.expect_err("no handshake answer");
    eprintln!("{err}");
    assert!(matches!(err, PushError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("no answer"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_stops_reading_fails_after_the_send_timeout() {
    let media = test_media();
    let server = TestRtmpServer::start(Behaviour::StopReadingAfterPublish).await;
    let cfg = PushConfig {
        send_timeout: Duration::from_millis(500),
        ..PushConfig::default()
    };
    // Far more data than the socket buffers hold, as fast as it can go.
    let frames = repeat_frames(&media.frames, 40);
    let total = payload_bytes(&frames);
    let started = Instant::now();
    let (result, counters, connected) = push(&server.url(), "k", frames, f64::INFINITY, &cfg).await;
    let took = started.elapsed();
    let err = result.expect_err("must time out");
    eprintln!(
        "{err} after {took:?}, {} of {total} bytes sent",
        counters.sent_bytes()
    );
    assert!(matches!(err, PushError::Timeout { .. }), "{err:?}");
    assert_eq!(connected, 1);
    assert!(counters.sent_bytes() < total);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_ends_the_session_promptly_and_unpublishes() {
    let media = test_media();
    let server = TestRtmpServer::start(Behaviour::Accept).await;
    let cfg = PushConfig::default();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let cancelled_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let at = cancelled_at.clone();
    let watched = server.received_handle();
    tokio::spawn(async move {
        // Mid-session: once the server has frames (the source lasts 4 s).
        pushcast_testkit::wait_for("frames at the server", Duration::from_secs(10), || {
            let got = !watched().frames.is_empty();
            async move { got.then_some(()) }
        })
        .await;
        *at.lock().unwrap() = Some(Instant::now());
        token.cancel();
    });
    // Real time: the source would last 4 s.
    let (result, counters, connected) =
        push_until(&cancel, &server.url(), "k", media.frames.clone(), 1.0, &cfg).await;
    let stopped = cancelled_at.lock().unwrap().expect("cancelled").elapsed();
    assert_eq!(
        result.expect("cancel is not an error"),
        SessionEnd::Cancelled
    );
    eprintln!("ended {stopped:?} after the cancel");
    assert!(stopped < Duration::from_secs(1), "{stopped:?}");
    assert_eq!(connected, 1);
    assert!(counters.sent_bytes() > 0);
    let got = server.wait_closed(Duration::from_secs(2)).await;
    assert!(got.publish_ended, "FCUnpublish/deleteStream sent on stop");
    assert!(got.closed);
    assert!(!got.frames.is_empty() && got.frames.len() < media.frames.len());
}

/// Destinations that misbehave on purpose: each attempt ends with a clear error, fast (a
/// push reads only small commands from a server: a 16 MB message is refused at its
/// header, never buffered), and it is one the backoff policy retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_destinations_fail_fast_with_a_clear_error() {
    let media = test_media();
    for (behaviour, says) in [
        (
            Behaviour::HugeMessageAfterHandshake,
            "exceeds the limit of 65536 bytes",
        ),
        (Behaviour::GarbageAfterHandshake, ""),
    ] {
        let server = TestRtmpServer::start(behaviour).await;
        let started = Instant::now();
        let (result, counters, connected) = push(
            &server.url(),
            "k",
            media.frames.clone(),
            4.0,
            &PushConfig::default(),
        )
        .await;
        let took = started.elapsed();
        let err = result.expect_err("a hostile destination fails the attempt");
        eprintln!("{behaviour:?}: {err} after {took:?}");
        assert!(err.to_string().contains(says), "{behaviour:?}: {err}");
        assert_eq!(connected, 0, "{behaviour:?}");
        assert_eq!(counters.sent_bytes(), 0);
        // Well before the 5 s connect timeout: the error is the input's, not a wait.
        assert!(took < Duration::from_secs(2), "{behaviour:?}: {took:?}");
        assert_eq!(
            err.retry_class(),
            pushcast_retry::RetryClass::Transient,
            "{behaviour:?}: retried by the backoff policy"
        );
    }
}

/// A destination that announces a 4 GB acknowledgement window, or answers one byte at a
/// time, is still published to, and gets every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_destinations_get_every_frame() {
    let media = test_media();
    for behaviour in [Behaviour::HugeAckWindow, Behaviour::ByteByByte] {
        let server = TestRtmpServer::start(behaviour).await;
        let (result, _, connected) = push(
            &server.url(),
            "k",
            media.frames.clone(),
            f64::INFINITY,
            &PushConfig::default(),
        )
        .await;
        assert!(
            matches!(result, Ok(SessionEnd::SourceEnded)),
            "{behaviour:?}: {result:?}"
        );
        assert_eq!(connected, 1, "{behaviour:?}");
        let got = server.wait_closed(Duration::from_secs(5)).await;
        assert_eq!(
            (
                count_media(&got.frames, FrameKind::Video),
                count_media(&got.frames, FrameKind::Audio)
            ),
            (media.video_frames(), media.audio_frames()),
            "{behaviour:?}"
        );
    }
}
