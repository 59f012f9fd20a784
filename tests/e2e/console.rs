//! The web console in a real browser (Debian's chromium, headless, over WebDriver):
//! log in, see a stream that ffmpeg publishes with its codecs, start a push to
//! nginx-rtmp and watch it turn `started` with its bitrate moving, add a destination
//! live, stop the push, issue and regenerate a stream key; a screenshot per step
//! (`target/test-artifacts/console/`), and the accessibility basics (every control
//! labelled, keyboard order, contrast).

use std::path::PathBuf;
use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::browser::Browser;
use pushcast_testkit::ffmpeg::publish_file;
use pushcast_testkit::media::test_media;
use pushcast_testkit::nginx::Nginx;
use serde_json::{Value, json};

const TOKEN: &str = "console-token";

/// The smallest contrast ratio (WCAG) between the text and background colours of the
/// page's text, labels, buttons and table headers.
const CONTRAST: &str = r#"
const rgb = (c) => c.match(/[\d.]+/g).slice(0, 3).map(Number);
const lum = ([r, g, b]) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const bg = (e) => {
  for (; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (!c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return c;
  }
  return 'rgb(255, 255, 255)';
};
let worst = 21;
for (const e of document.querySelectorAll('body, label, button, th, h1, h2, p, td')) {
  if (!e.offsetParent && e !== document.body) continue;
  const a = lum(rgb(getComputedStyle(e).color)), b = lum(rgb(bg(e)));
  worst = Math.min(worst, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05));
}
return worst;
"#;

fn text_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_logs_in_watches_a_live_push_and_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let nginx = Nginx::start();
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/console");
    let _ = std::fs::remove_dir_all(&shots);
    let mut b = Browser::start(&shots).await;
    b.goto(&format!("{}/console", node.rest)).await;

    // Accessibility basics: every control has a label, Tab goes from the token to the
    // button, text contrast at least 4.5:1 (WCAG AA).
    let token = b.find("#token").await;
    let unlabelled = b
        .script(
            "return [...document.querySelectorAll('input, select')]\
             .filter(e => !(e.labels && e.labels.length)).map(e => e.id)",
            json!([]),
        )
        .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");
    b.click(&token).await;
    b.keys(&token, "\u{E004}").await;
    let focused = b
        .script("return document.activeElement.id", json!([]))
        .await;
    assert_eq!(focused, "login-button", "Tab from the token field");
    let contrast = b.script(CONTRAST, json!([])).await.as_f64().unwrap_or(0.0);
    assert!(contrast >= 4.5, "lowest contrast {contrast:.2}:1");
    b.screenshot("login").await;

    // A wrong token is refused in words; the right one opens the console.
    b.fill(&token, "wrong").await;
    b.click(&b.find("#login-button").await).await;
    let said = b
        .wait_script(
            "the refusal",
            Duration::from_secs(10),
            "return document.getElementById('login-error').textContent",
        )
        .await;
    assert!(text_of(&said).contains("not accepted"), "{said}");
    b.fill(&token, TOKEN).await;
    b.click(&b.find("#login-button").await).await;
    b.wait_script(
        "the console",
        Duration::from_secs(10),
        "return !document.getElementById('app').hidden",
    )
    .await;
    let cookies = b.script("return document.cookie", json!([])).await;
    assert_eq!(cookies, json!(""), "no cookie holds the token");

    // A stream published by ffmpeg shows with its codecs.
    let _encoder = publish_file(
        &test_media().flv,
        &node.ingest_url("app", "cam"),
        -1,
        &dir.path().join("publish.log"),
    );
    let codecs = b
        .wait_script(
            "the live stream with its codecs",
            Duration::from_secs(30),
            "const c = document.querySelector('tr[data-stream=\"app/cam\"] .codecs');\
             return c && c.textContent.includes('H.264') && c.textContent",
        )
        .await;
    assert!(text_of(&codecs).contains("AAC"), "{codecs}");
    b.screenshot("live-stream").await;

    // Start a push from the form: it turns started, its bitrate moves.
    b.fill(&b.find("#start-id").await, "yt").await;
    b.fill(&b.find("#start-stream").await, "cam").await;
    b.fill(&b.find("#start-url").await, &nginx.rtmp_url()).await;
    b.fill(&b.find("#start-key").await, "k").await;
    b.click(&b.find("#start-button").await).await;
    b.wait_script(
        "the push started with a bitrate",
        Duration::from_secs(30),
        "const r = document.querySelector('tr[data-task=\"app/yt\"]');\
         return r && r.querySelector('.state').textContent === 'started'\
           && Number(r.querySelector('.bitrate').dataset.bps) > 0",
    )
    .await;
    let points = b
        .wait_script(
            "the sparkline growing",
            Duration::from_secs(30),
            "const p = document.querySelector('tr[data-task=\"app/yt\"] polyline');\
             const n = p ? p.getAttribute('points').split(' ').length : 0; return n >= 3 && n",
        )
        .await;
    println!("sparkline points: {points}");
    b.screenshot("push-started").await;

    // Add a destination live: both destinations started, both recorded.
    b.fill(&b.find("#add-id").await, "yt").await;
    b.fill(&b.find("#add-url").await, &nginx.rtmp_url()).await;
    b.fill(&b.find("#add-key").await, "k2").await;
    b.click(&b.find("#add-button").await).await;
    b.wait_script(
        "two destinations started",
        Duration::from_secs(30),
        "const s = [...document.querySelectorAll('tr[data-task=\"app/yt\"] .dest-state')];\
         return s.length === 2 && s.every(e => e.textContent === 'started')",
    )
    .await;
    for key in ["k", "k2"] {
        assert!(nginx.recording(key).exists(), "nginx recorded {key}");
    }
    b.screenshot("destination-added").await;

    // Stop it.
    b.click(&b.find("tr[data-task=\"app/yt\"] button.stop").await)
        .await;
    b.wait_script(
        "the push gone",
        Duration::from_secs(15),
        "return !document.querySelector('tr[data-task=\"app/yt\"]')",
    )
    .await;
    b.screenshot("push-stopped").await;

    // Stream keys: issued, regenerated (a new key), masked, revoked.
    b.fill(&b.find("#key-stream").await, "show").await;
    b.click(&b.find("#key-issue").await).await;
    let first = b
        .wait_script(
            "a key shown",
            Duration::from_secs(10),
            "return document.getElementById('key-shown').textContent",
        )
        .await;
    b.click(&b.find("#key-regenerate").await).await;
    let script = format!(
        "const t = document.getElementById('key-shown').textContent; return t && t !== {first} && t"
    );
    let second = b
        .wait_script("a new key", Duration::from_secs(10), &script)
        .await;
    assert_ne!(first, second);
    b.screenshot("key-regenerated").await;
    b.click(&b.find("#key-hide").await).await;
    let shown = b
        .script(
            "return document.getElementById('key-shown').textContent",
            json!([]),
        )
        .await;
    assert!(
        !text_of(&shown).contains(&text_of(&second)),
        "masked: {shown}"
    );
    b.click(&b.find("#key-revoke").await).await;
    b.wait_script(
        "the key revoked",
        Duration::from_secs(10),
        "return document.getElementById('action-result').textContent === 'key revoked'",
    )
    .await;
    let key = node.action("streamKey", json!({"stream": "show"})).await;
    assert_ne!(
        key.json["response"]["streamKey"], second,
        "the revoked key is gone"
    );
    b.screenshot("key-revoked").await;
}
