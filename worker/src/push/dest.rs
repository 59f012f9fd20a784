//! Where a task pushes to: its url + stream key parsed into a connectable target, and a
//! redacted form for logs and status (a stream key is a password: never log it in full).
//!
//! RTMP urls follow OBS and ffmpeg, because users copy them from YouTube/Twitch/Facebook
//! pages written for those tools:
//! - with a stream key (OBS's "Server" + "Stream Key"): the whole url path is the app,
//!   so `rtmp://host/app/instance` + `KEY` publishes `KEY` to app `app/instance`;
//! - without one (ffmpeg's single url): the last element is the stream name and the app is
//!   what precedes it, at most two elements (`rtmp://h/a/b/c/d` is app `a/b`, stream
//!   `c/d`), as ffmpeg's rtmpproto splits it.
//!
//! The key keeps its `?query` (`key?token=1`: some CDNs authenticate that way). The tcUrl
//! is the url up to the app as the user wrote it (`rtmp[s]://host[:port]/app`); the port
//! defaults to 1935 for `rtmp` and 443 for `rtmps`.

use std::fmt;
use std::time::Duration;

use pushcast_proto::model::{Protocol, TaskSpec};

use super::error::PushError;

/// RTMP destination details.
#[derive(Clone, PartialEq, Eq)]
pub struct RtmpTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    pub tc_url: String,
    /// The stream key (with its query, if any). Secret.
    pub stream_name: String,
}

/// SRT caller options taken from the url query, with ffmpeg's names and units.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SrtOptions {
    /// `streamid=`: what the listener uses to route or authorise (may be secret).
    pub stream_id: Option<String>,
    /// `latency=` in microseconds, as in ffmpeg's srt protocol.
    pub latency: Option<Duration>,
    /// `passphrase=` (10..=79 characters). Secret.
    pub passphrase: Option<String>,
    /// `pbkeylen=` 16, 24 or 32 (bytes of AES key); 16 by default with a passphrase.
    pub key_size: Option<u16>,
}

/// A parsed destination.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Rtmp(RtmpTarget),
    /// MPEG-TS in 1316-byte datagrams.
    Udp {
        host: String,
        port: u16,
    },
    /// MPEG-TS as a plain byte stream.
    Tcp {
        host: String,
        port: u16,
    },
    /// MPEG-TS over SRT, caller mode.
    Srt {
        host: String,
        port: u16,
        options: SrtOptions,
    },
}

/// A task's destination, ready to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    pub target: Target,
    redacted: String,
}

// Debug must not print the secrets either (a `{:?}` in a log line is easy to write).
impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Destination").field(&self.redacted).finish()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// A secret shown as at most its first 4 characters: enough to tell two keys apart in a
/// log, useless to an attacker. Keys shorter than 12 characters show nothing.
pub fn redact_secret(secret: &str) -> String {
    if secret.chars().count() >= 12 {
        let head: String = secret.chars().take(4).collect();
        format!("{head}…")
    } else {
        "…".to_owned()
    }
}

fn invalid(msg: impl Into<String>) -> PushError {
    PushError::InvalidDestination(msg.into())
}

/// `host[:port]` or `[v6][:port]` → (host without brackets, port).
fn parse_authority(authority: &str, default_port: Option<u16>) -> Result<(String, u16), PushError> {
    if authority.contains('@') {
        return Err(invalid(
            "credentials in the url (user:password@host) are not supported",
        ));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("unterminated IPv6 address in the url"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("garbage after the IPv6 address"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("the url has no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("invalid port '{p}'")))?,
        None => default_port.ok_or_else(|| invalid("the url has no port"))?,
    };
    Ok((host.to_owned(), port))
}

/// Splits `scheme://authority[/rest]` into its parts (scheme lowercased).
fn split_url(url: &str) -> Result<(String, &str, &str), PushError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("the url has no scheme (expected e.g. rtmp://host/app)"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    Ok((scheme.to_ascii_lowercase(), authority, tail))
}

impl Destination {
    /// Parses a task's url and stream key.
    pub fn parse(spec: &TaskSpec) -> Result<Destination, PushError> {
        Self::parse_parts(spec.protocol, spec.url.trim(), &spec.stream_key)
    }

    /// Like [`Destination::parse`], from the parts.
    pub fn parse_parts(
        protocol: Protocol,
        url: &str,
        stream_key: &str,
    ) -> Result<Destination, PushError> {
        let (scheme, authority, tail) = split_url(url)?;
        if !protocol.schemes().contains(&scheme.as_str()) {
            return Err(invalid(format!(
                "scheme '{scheme}' does not fit protocol {} (expected {})",
                protocol.as_str(),
                protocol.schemes().join(" or ")
            )));
        }
        match scheme.as_str() {
            "rtmp" | "rtmps" => Self::rtmp(&scheme, authority, tail, stream_key),
            "udp" | "tcp" => {
                let (host, port) = parse_authority(authority, None)?;
                let redacted = format!("{scheme}://{authority}");
                let target = if scheme == "udp" {
                    Target::Udp { host, port }
                } else {
                    Target::Tcp { host, port }
                };
                Ok(Destination { target, redacted })
            }
            _ => Self::srt(authority, tail),
        }
    }

    fn rtmp(
        scheme: &str,
        authority: &str,
        tail: &str,
        key: &str,
    ) -> Result<Destination, PushError> {
        let tls = scheme == "rtmps";
        let (host, port) = parse_authority(authority, Some(if tls { 443 } else { 1935 }))?;
        let path = tail.trim_start_matches('/').trim_end_matches('/');
        let key = key.trim();
        let (app, stream_name) = if !key.is_empty() {
            (path.to_owned(), key.to_owned())
        } else {
            // ffmpeg's split of a single url: app is one element, or two when more follow.
            let mut parts = path.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(app), Some(name), None) => (app.to_owned(), name.to_owned()),
                (Some(a), Some(b), Some(name)) => (format!("{a}/{b}"), name.to_owned()),
                _ => {
                    return Err(invalid(
                        "no stream name: give a streamKey or end the url with it \
                         (rtmp://host/app/KEY)",
                    ));
                }
            }
        };
        if app.is_empty() {
            return Err(invalid(
                "the url has no application (expected rtmp://host/app)",
            ));
        }
        if stream_name.is_empty() {
            return Err(invalid("empty stream name"));
        }
        let tc_url = format!("{scheme}://{authority}/{app}");
        let redacted = format!("{tc_url}/{}", redact_secret(&stream_name));
        Ok(Destination {
            target: Target::Rtmp(RtmpTarget {
                tls,
                host,
                port,
                app,
                tc_url,
                stream_name,
            }),
            redacted,
        })
    }

    fn srt(authority: &str, tail: &str) -> Result<Destination, PushError> {
        let (host, port) = parse_authority(authority, None)?;
        let query = tail.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut options = SrtOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "mode" if v != "caller" => {
                    return Err(invalid(format!(
                        "SRT mode '{v}' is not supported: pushes are callers"
                    )));
                }
                "streamid" => {
                    if v.len() > 512 {
                        return Err(invalid("SRT streamid longer than 512 bytes"));
                    }
                    options.stream_id = Some(v);
                }
                "latency" => {
                    let us = v.parse::<u64>().map_err(|_| {
                        invalid(format!("SRT latency '{v}' is not a number of microseconds"))
                    })?;
                    options.latency = Some(Duration::from_micros(us));
                }
                "passphrase" => {
                    // Bytes, as srt-tokio counts them (it panics otherwise).
                    if !(10..=79).contains(&v.len()) {
                        return Err(invalid("SRT passphrase must have 10 to 79 bytes"));
                    }
                    options.passphrase = Some(v);
                }
                "pbkeylen" => {
                    let size = v.parse::<u16>().ok().filter(|s| matches!(s, 16 | 24 | 32));
                    options.key_size =
                        Some(size.ok_or_else(|| invalid("SRT pbkeylen must be 16, 24 or 32"))?);
                }
                // Other ffmpeg options (mode=caller, transtype=live, ...) need nothing.
                _ => {}
            }
        }
        let redacted = if query.is_empty() {
            format!("srt://{authority}")
        } else {
            format!("srt://{authority}?…")
        };
        Ok(Destination {
            target: Target::Srt {
                host,
                port,
                options,
            },
            redacted,
        })
    }

    /// The destination as logs and status may show it: the stream key reduced to its
    /// first characters, SRT query options (stream id, passphrase) hidden.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `host:port` (brackets around IPv6) for messages.
    pub fn host_port(&self) -> String {
        let (host, port) = match &self.target {
            Target::Rtmp(r) => (&r.host, r.port),
            Target::Udp { host, port }
            | Target::Tcp { host, port }
            | Target::Srt { host, port, .. } => (host, *port),
        };
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

/// `%XX` decoding for query values (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtmp(url: &str, key: &str) -> RtmpTarget {
        match Destination::parse_parts(Protocol::Rtmp, url, key) {
            Ok(Destination {
                target: Target::Rtmp(r),
                ..
            }) => r,
            other => panic!("{url} + {key}: {other:?}"),
        }
    }

    #[test]
    fn obs_style_url_plus_key() {
        let r = rtmp("rtmp://a.rtmp.youtube.com/live2", "abcd-efgh-ijkl-mnop");
        assert_eq!(
            (r.host.as_str(), r.port, r.tls),
            ("a.rtmp.youtube.com", 1935, false)
        );
        assert_eq!(r.app, "live2");
        assert_eq!(r.tc_url, "rtmp://a.rtmp.youtube.com/live2");
        assert_eq!(r.stream_name, "abcd-efgh-ijkl-mnop");

        let r = rtmp(
            "rtmps://live-api-s.facebook.com:443/rtmp",
            "FB-123?s_bl=1&a=b",
        );
        assert_eq!((r.port, r.tls), (443, true));
        assert_eq!(r.tc_url, "rtmps://live-api-s.facebook.com:443/rtmp");
        assert_eq!(r.stream_name, "FB-123?s_bl=1&a=b");

        let r = rtmp("rtmps://host/app/inst/", "k");
        assert_eq!((r.port, r.app.as_str()), (443, "app/inst"));
        assert_eq!(r.tc_url, "rtmps://host/app/inst");

        let r = rtmp("RTMP://[::1]:1936/live", "k");
        assert_eq!((r.host.as_str(), r.port), ("::1", 1936));
        assert_eq!(r.tc_url, "rtmp://[::1]:1936/live");
    }

    #[test]
    fn ffmpeg_style_single_url() {
        let r = rtmp("rtmp://127.0.0.1:1935/live/stream", "");
        assert_eq!((r.app.as_str(), r.stream_name.as_str()), ("live", "stream"));
        assert_eq!(r.tc_url, "rtmp://127.0.0.1:1935/live");
        let r = rtmp("rtmp://h/a/b/c/d", "");
        assert_eq!((r.app.as_str(), r.stream_name.as_str()), ("a/b", "c/d"));
    }

    #[test]
    fn bad_urls_are_invalid_destinations() {
        for (url, key) in [
            ("rtmp://host", "k"),
            ("rtmp://host/live", ""),
            ("rtmp://:1935/live", "k"),
            ("rtmp://host:0/live", "k"),
            ("rtmp://host:99999/live", "k"),
            ("rtmp://u:p@host/live", "k"),
            ("host/live", "k"),
            ("udp://host/live", "k"),
        ] {
            let e = Destination::parse_parts(Protocol::Rtmp, url, key).expect_err(url);
            assert!(matches!(e, PushError::InvalidDestination(_)), "{url}: {e}");
        }
        let e = Destination::parse_parts(Protocol::Mpegts, "udp://host", "").expect_err("no port");
        assert!(e.to_string().contains("no port"), "{e}");
    }

    #[test]
    fn redaction_hides_keys_and_srt_options() {
        let d = Destination::parse_parts(Protocol::Rtmp, "rtmp://h/live", "supersecretkey123")
            .expect("parses");
        assert_eq!(d.redacted(), "rtmp://h/live/supe…");
        assert_eq!(format!("{d:?}"), "Destination(\"rtmp://h/live/supe…\")");
        let d =
            Destination::parse_parts(Protocol::Rtmp, "rtmp://h/live/short", "").expect("parses");
        assert_eq!(d.redacted(), "rtmp://h/live/…");
        let d = Destination::parse_parts(
            Protocol::Srt,
            "srt://h:9000?mode=caller&streamid=publish%3Asecret&latency=200000&passphrase=0123456789&pbkeylen=24",
            "",
        )
        .expect("parses");
        assert_eq!(d.redacted(), "srt://h:9000?…");
        let Target::Srt { options, .. } = &d.target else {
            panic!("{d:?}")
        };
        assert_eq!(options.stream_id.as_deref(), Some("publish:secret"));
        assert_eq!(options.latency, Some(Duration::from_millis(200)));
        assert_eq!(options.key_size, Some(24));
        assert!(Destination::parse_parts(Protocol::Srt, "srt://h:9000?mode=listener", "").is_err());
        assert!(
            Destination::parse_parts(Protocol::Srt, "srt://h:9000?passphrase=short", "").is_err()
        );
        let d = Destination::parse_parts(Protocol::Mpegts, "tcp://[::1]:5000", "").expect("parses");
        assert_eq!(d.host_port(), "[::1]:5000");
    }
}
