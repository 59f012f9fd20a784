//! nginx with the rtmp module: a push destination that records what it receives
//! ([`Nginx::start`]), or any rtmp configuration ([`Nginx::start_conf`]: the benchmark's
//! sink and nginx-rtmp relay).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::net::{free_tcp_port, wait_accepting};
use crate::proc::Guard;

/// Where the Debian package libnginx-mod-rtmp installs the module.
pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// Options of the destination.
#[derive(Debug, Clone, Default)]
pub struct NginxOptions {
    /// `on_publish` notification URL: nginx-rtmp refuses the publish unless it answers
    /// 2xx.
    pub on_publish: Option<String>,
    /// Listen on this port instead of a free one (e.g. a destination that comes up late).
    pub port: Option<u16>,
    /// `drop_idle_publisher`: closes a publisher that sent nothing for this long, as the
    /// big platforms do with a stalled ingest (a frozen pusher then does not hold the
    /// stream key forever).
    pub drop_idle_publisher: Option<Duration>,
}

/// A running nginx-rtmp on 127.0.0.1 with `application live { live on; record all; }`.
/// Stopped when dropped.
pub struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    guard: Guard,
}

impl Nginx {
    pub fn start() -> Nginx {
        Nginx::start_with(NginxOptions::default())
    }

    /// Starts on a given port.
    pub fn start_on(port: u16) -> Nginx {
        Nginx::start_with(NginxOptions {
            port: Some(port),
            ..NginxOptions::default()
        })
    }

    pub fn start_with(options: NginxOptions) -> Nginx {
        let port = options.port.unwrap_or_else(free_tcp_port);
        let on_publish = options
            .on_publish
            .map(|u| format!("on_publish {u};"))
            .unwrap_or_default();
        let idle = options
            .drop_idle_publisher
            .map(|d| format!("drop_idle_publisher {}ms;", d.as_millis()))
            .unwrap_or_default();
        let record = "{prefix}/record";
        let body = format!(
            "rtmp {{\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 chunk_size 4096;\n\
                 application live {{\n\
                   live on;\n\
                   record all;\n\
                   record_path {record};\n\
                   {on_publish}\n\
                   {idle}\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        Nginx::start_conf("destination", port, 256, &body)
    }

    /// nginx with the rtmp module and `body` as the configuration after the main and
    /// events sections (`{prefix}` in it stands for the nginx prefix directory, which has
    /// a `record` directory): one process (`master_process off`), logs under the prefix,
    /// `connections` worker connections. Returns once it accepts on `port`.
    pub fn start_conf(what: &str, port: u16, connections: usize, body: &str) -> Nginx {
        assert!(
            Path::new(RTMP_MODULE).exists(),
            "{RTMP_MODULE} is missing: this test needs nginx with the rtmp module \
             (Debian: apt-get install -y --no-install-recommends nginx libnginx-mod-rtmp)"
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("pushcast-nginx-{what}-"))
            .tempdir()
            .expect("tempdir");
        let prefix = dir.path();
        std::fs::create_dir_all(prefix.join("record")).expect("mkdir record");
        std::fs::create_dir_all(prefix.join("logs")).expect("mkdir logs");
        let body = body.replace("{prefix}", &prefix.display().to_string());
        let conf = format!(
            "load_module {RTMP_MODULE};\n\
             daemon off;\n\
             master_process off;\n\
             user root;\n\
             worker_processes 1;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log info;\n\
             events {{ worker_connections {connections}; }}\n\
             {body}",
            p = prefix.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let log = prefix.join("stderr.log");
        let mut guard = Guard::spawn(
            "nginx",
            &[
                "-c",
                conf_path.to_str().unwrap(),
                "-p",
                prefix.to_str().unwrap(),
                "-e",
                prefix.join("error.log").to_str().unwrap(),
            ],
            &log,
        );
        let logs = || {
            format!(
                "{}{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
            )
        };
        wait_accepting(port, &mut guard, Duration::from_secs(10), &logs);
        Nginx { port, dir, guard }
    }

    /// `rtmp://127.0.0.1:PORT/live` (a task's url; the stream key is separate).
    pub fn rtmp_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live", self.port)
    }

    /// Where nginx records stream `name`.
    pub fn recording(&self, name: &str) -> PathBuf {
        self.dir.path().join("record").join(format!("{name}.flv"))
    }

    /// Waits until the recording of `name` exists and has stopped growing (nginx closes
    /// it on unpublish), then returns its path.
    pub fn finished_recording(&self, name: &str, limit: Duration) -> PathBuf {
        let path = self.recording(name);
        let start = Instant::now();
        let mut last = None;
        loop {
            let size = std::fs::metadata(&path).map(|m| m.len()).ok();
            if size.is_some() && size == last {
                return path;
            }
            assert!(
                start.elapsed() < limit,
                "no finished recording {} after {limit:?}; nginx log:\n{}",
                path.display(),
                self.error_log()
            );
            last = size;
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}
