//! Free ports and readiness checks on 127.0.0.1.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::proc::Guard;

/// A TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
    s.local_addr().expect("local addr").port()
}

/// Waits until something accepts TCP connections on `port` (connecting to it), failing
/// the test if `child` exits first or `limit` passes. Only for servers that accept many
/// connections (nginx, stunnel); use [`wait_listening`] for one-shot listeners.
/// `log` gives the process's log for the failure message, read when it fails.
pub fn wait_accepting(port: u16, child: &mut Guard, limit: Duration, log: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.try_status() {
            panic!(
                "{} exited ({status}) before accepting on port {port}; log:\n{}",
                child.name,
                log()
            );
        }
        assert!(
            start.elapsed() < limit,
            "{} does not accept on port {port} after {limit:?}; log:\n{}",
            child.name,
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a socket is bound to `port` in `/proc/net/{table}` (`tcp`: listening only).
fn bound(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    [table.to_owned(), format!("{table}6")].iter().any(|t| {
        std::fs::read_to_string(format!("/proc/net/{t}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local_ok = cols.get(1).is_some_and(|a| a.ends_with(&want));
                // TCP state 0A = LISTEN; UDP sockets are 07 (unconnected).
                let state_ok = table != "tcp" || cols.get(3) == Some(&"0A");
                local_ok && state_ok
            })
    })
}

/// Waits until a process listens on TCP `port` without connecting to it (a connection
/// would use up a one-shot listener such as `ffmpeg -i tcp://...?listen=1`).
pub fn wait_listening(port: u16, child: &mut Guard, limit: Duration) {
    wait_bound("tcp", port, child, limit)
}

/// Waits until a process has bound UDP `port` (ffmpeg reading udp:// or SRT).
pub fn wait_udp_bound(port: u16, child: &mut Guard, limit: Duration) {
    wait_bound("udp", port, child, limit)
}

fn wait_bound(table: &str, port: u16, child: &mut Guard, limit: Duration) {
    let start = Instant::now();
    while !bound(table, port) {
        if let Some(status) = child.try_status() {
            panic!(
                "{} exited ({status}) before binding {table} port {port}",
                child.name
            );
        }
        assert!(
            start.elapsed() < limit,
            "{} did not bind {table} port {port} within {limit:?}",
            child.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
