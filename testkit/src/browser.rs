//! A real browser for tests: Debian's chromium, headless, driven over W3C WebDriver by
//! Debian's chromedriver (`apt-get install chromium chromium-driver`, which
//! `scripts/deps.sh test` does). The WebDriver calls are plain JSON over HTTP, made with
//! the sandbox's one HTTP client: no WebDriver crate for the dozen calls a test needs.
//! Screenshots go where the test says (its artifacts).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::net::{free_tcp_port, wait_accepting};
use crate::proc::Guard;

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless chromium session. Closed (and chromedriver stopped) when dropped.
pub struct Browser {
    base: String,
    session: String,
    http: reqwest::Client,
    shots: PathBuf,
    shot: usize,
    _profile: tempfile::TempDir,
    _driver: Guard,
}

/// An element of the page (a WebDriver element reference).
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless chromium; screenshots go to `shots`.
    pub async fn start(shots: &Path) -> Browser {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: this test needs Debian's chromium and chromium-driver \
                 (apt-get install -y chromium chromium-driver; scripts/deps.sh test does)"
            );
        }
        std::fs::create_dir_all(shots).expect("screenshot directory");
        let port = free_tcp_port();
        let profile = tempfile::tempdir().expect("profile dir");
        let log = profile.path().join("chromedriver.log");
        let mut driver = Guard::spawn(
            "/usr/bin/chromedriver",
            &[&format!("--port={port}"), "--allowed-ips=127.0.0.1"],
            &log,
        );
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_accepting(port, &mut driver, Duration::from_secs(20), &logs);
        let http = crate::http::client(Duration::from_secs(60));
        let base = format!("http://127.0.0.1:{port}");
        // The flags that keep chromium off the network it cannot reach here (without
        // them it tries Google's hosts at every start), and a fresh profile.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1400,1100".into(),
            format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}\n{}", logs()))
            .to_string();
        Browser {
            base,
            session,
            http,
            shots: shots.to_path_buf(),
            shot: 0,
            _profile: profile,
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .json()
            .await
            .expect("webdriver json");
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// The first element matching `css`, if any (now).
    pub async fn find_now(&self, css: &str) -> Option<Element> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(|id| Element(id.to_string()))
    }

    /// The first element matching `css`, waiting for it (panics after 30 s).
    pub async fn find(&self, css: &str) -> Element {
        crate::wait_for(
            &format!("element {css}"),
            Duration::from_secs(30),
            || async { self.find_now(css).await },
        )
        .await
    }

    pub async fn click(&self, e: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            Some(json!({})),
        )
        .await;
    }

    /// Types `text` into `e` (after clearing it).
    pub async fn fill(&self, e: &Element, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", e.0),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Presses keys on the focused element (WebDriver key codes, e.g. `"\u{E004}"` Tab).
    pub async fn keys(&self, e: &Element, keys: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({"text": keys})),
        )
        .await;
    }

    pub async fn text(&self, e: &Element) -> String {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", e.0),
                None,
            )
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` in the page (a function body: `return ...`), with `args`.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until `script` returns something truthy (panics after `limit`) and returns
    /// it.
    pub async fn wait_script(&self, what: &str, limit: Duration, script: &str) -> Value {
        crate::wait_for(what, limit, || async {
            let v = self.script(script, json!([])).await;
            let truthy = !(v.is_null()
                || v == json!(false)
                || v == json!("")
                || v == json!(0)
                || v.get("error").is_some());
            truthy.then_some(v)
        })
        .await
    }

    /// Saves a screenshot of the page as `NN-{name}.png` in the test's directory.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        self.shot += 1;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot base64");
        let path = self.shots.join(format!("{:02}-{name}.png", self.shot));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    /// Ends the session (chromedriver closes its chromium), then chromedriver goes with
    /// its guard. A plain blocking HTTP request: drop cannot await.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(addr) = self.base.strip_prefix("http://") else {
            return;
        };
        if let Ok(mut sock) = std::net::TcpStream::connect(addr) {
            let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if sock.write_all(req.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = sock.read_to_end(&mut answer);
            }
        }
    }
}
