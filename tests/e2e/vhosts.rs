//! Virtual hosts by host name: the ingest picks the vhost from the host the encoder used
//! (the tcUrl's host, the RTMPS SNI before it), so two vhosts with an app of the same
//! name take the same stream name from two encoders, and each vhost's tasks push only
//! their own stream. Stream-key answers name the vhost's host, and RTMPS where served.

use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::publish_file;
use pushcast_testkit::ffprobe::{probe, stream};
use pushcast_testkit::media::Clip;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::pki::make_pki;
use pushcast_testkit::proc::Guard;
use serde_json::{Value, json};

const TOKEN: &str = "vhosts";

/// A standalone with vhosts `default` (no host names) and `studio` (`localhost`), an
/// open-publish `app` in each.
async fn two_vhosts(dir: &std::path::Path, extra: &[String]) -> Node {
    let config = dir.join("pushcast.toml");
    std::fs::write(
        &config,
        "[vhosts.default]\napps = [\"app\"]\n\n[vhosts.studio]\napps = [\"app\"]\nhosts = [\"localhost\"]\n",
    )
    .unwrap();
    let mut args = vec![format!("--config={}", config.display())];
    args.extend_from_slice(extra);
    let node = Node::standalone_with(dir, TOKEN, &args).await;
    for vhost in ["default", "studio"] {
        let r = node
            .call(
                "PATCH",
                &format!("/v1/vhosts/{vhost}/apps/app"),
                Some(r#"{"openPublish": true}"#),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    node
}

async fn start_push(node: &Node, vhost: &str, nginx: &Nginx, key: &str) {
    let r = node
        .post(
            &format!("/v1/vhosts/{vhost}/apps/app:startPush"),
            &json!({"id": "t", "stream": {"name": "cam"}, "protocol": "rtmp",
                    "url": nginx.rtmp_url(), "streamKey": key})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn stream_key(node: &Node, vhost: &str) -> Value {
    let r = node
        .post(
            &format!("/v1/vhosts/{vhost}/apps/app:streamKey"),
            r#"{"stream": "cam"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["response"].clone()
}

fn width(recording: &std::path::Path) -> u64 {
    stream(&probe(recording), "h264").width.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vhosts_by_host_name_each_push_only_their_own_stream() {
    let dir = tempfile::tempdir().unwrap();
    let node = two_vhosts(dir.path(), &[]).await;

    // The API: names, host names, a name given twice, a bad name.
    let r = node.call("GET", "/v1/vhosts", None).await;
    assert_eq!(r.json["response"], json!(["default", "studio"]));
    let r = node.call("GET", "/v1/vhosts/studio", None).await;
    assert_eq!(
        r.json["response"],
        json!({"name": "studio", "hosts": ["localhost"]})
    );
    let r = node
        .call(
            "PATCH",
            "/v1/vhosts/default",
            Some(r#"{"hosts": ["LocalHost"]}"#),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(
        r.text
            .contains("[localhost] belongs to the virtual host [studio]"),
        "{}",
        r.text
    );
    let r = node
        .call("PATCH", "/v1/vhosts/default", Some(r#"{"hosts": ["a b"]}"#))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = node.call("GET", "/v1/vhosts/nope", None).await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Stream keys: the studio's answer names its host, the default's the public one.
    let ingest = node.rtmp.clone().unwrap();
    let port = ingest.rsplit_once(':').unwrap().1;
    let studio = stream_key(&node, "studio").await;
    assert_eq!(studio["rtmpUrl"], format!("rtmp://localhost:{port}/app"));
    assert!(studio.get("rtmpsUrl").is_none(), "no RTMPS here: {studio}");
    let default = stream_key(&node, "default").await;
    assert_eq!(default["rtmpUrl"], format!("rtmp://{ingest}/app"));

    let nginx = Nginx::start();
    start_push(&node, "default", &nginx, "def").await;
    start_push(&node, "studio", &nginx, "stu").await;
    // Two encoders, the same stream name, told apart by the host they use; their
    // pictures differ in size so the recordings say which stream each push carried.
    let small = Clip::live("320x240", 400, 4).make_in(dir.path());
    let large = Clip::live("640x360", 400, 4).make_in(dir.path());
    let mut to_default = publish_file(
        &small,
        &format!("rtmp://127.0.0.1:{port}/app/cam"),
        0,
        &dir.path().join("default.log"),
    );
    let mut to_studio = publish_file(
        &large,
        &format!("rtmp://localhost:{port}/app/cam"),
        0,
        &dir.path().join("studio.log"),
    );
    for (what, p) in [("default", &mut to_default), ("studio", &mut to_studio)] {
        let st = p
            .wait_exit(Duration::from_secs(30))
            .expect("the publish ends");
        let log = std::fs::read_to_string(dir.path().join(format!("{what}.log")));
        assert!(st.success(), "{what}: {}", log.unwrap_or_default());
    }
    let def = nginx.finished_recording("def", Duration::from_secs(20));
    let stu = nginx.finished_recording("stu", Duration::from_secs(20));
    assert_eq!(
        width(&def),
        320,
        "the default vhost's task pushed its own stream"
    );
    assert_eq!(
        width(&stu),
        640,
        "the studio vhost's task pushed its own stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rtmps_is_advertised_and_its_sni_picks_the_vhost() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "ingest");
    let node = two_vhosts(
        dir.path(),
        &[
            "--rtmps-addr=127.0.0.1:0".into(),
            format!("--rtmps-cert={}", pki.server_cert_pem.display()),
            format!("--rtmps-key={}", pki.server_key_pem.display()),
        ],
    )
    .await;
    let rtmps_port =
        pushcast_testkit::wait_for("the RTMPS address", Duration::from_secs(10), || {
            let node = &node;
            async move {
                node.proc
                    .output()
                    .iter()
                    .find(|l| l.contains("RTMPS ingest listening"))
                    .and_then(|l| l.split("127.0.0.1:").nth(1))
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .map(str::to_string)
            }
        })
        .await;
    // The answer gains rtmpsUrl/streamsUrl, on the vhost's host.
    let studio = stream_key(&node, "studio").await;
    assert_eq!(
        studio["rtmpsUrl"],
        format!("rtmps://localhost:{rtmps_port}/app")
    );
    assert_eq!(
        studio["streamsUrl"],
        format!(
            "rtmps://localhost:{rtmps_port}/app/{}",
            studio["streamKey"].as_str().unwrap()
        )
    );
    let default = stream_key(&node, "default").await;
    assert_eq!(
        default["rtmpsUrl"],
        format!("rtmps://127.0.0.1:{rtmps_port}/app")
    );

    let nginx = Nginx::start();
    start_push(&node, "default", &nginx, "def").await;
    start_push(&node, "studio", &nginx, "stu").await;
    // TLS to "localhost" (the SNI) with a tcUrl naming 127.0.0.1: the SNI decides.
    let large = Clip::live("640x360", 400, 4).make_in(dir.path());
    let log = dir.path().join("rtmps.log");
    let mut p = Guard::spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-i",
            large.to_str().unwrap(),
            "-c",
            "copy",
            "-rtmp_tcurl",
            &format!("rtmps://127.0.0.1:{rtmps_port}/app"),
            "-f",
            "flv",
            &format!("rtmps://localhost:{rtmps_port}/app/cam"),
        ],
        &log,
    );
    let st = p
        .wait_exit(Duration::from_secs(30))
        .expect("the publish ends");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let stu = nginx.finished_recording("stu", Duration::from_secs(20));
    assert_eq!(width(&stu), 640);
    let def = node
        .call("GET", "/v1/vhosts/default/apps/app:pushes", None)
        .await;
    let task = &def.json["response"][0];
    assert_eq!(
        task["sentBytes"].as_u64().unwrap_or(0),
        0,
        "the default task never pushed: {task}"
    );
}
