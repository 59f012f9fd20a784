//! Where a push goes: the one [`Destination`] type, parsed once (with the `url` crate)
//! when the API accepts it, stored typed in the task spec, and handed to the push that
//! serves it by reference. Nothing else in pushcast parses a destination url.
//!
//! RTMP urls follow OBS and ffmpeg, because users copy them from YouTube/Twitch/Facebook
//! pages written for those tools:
//! - with a destination stream key (OBS's "Server" + "Stream Key"): the whole url path is
//!   the app, so `rtmp://host/app/instance` + `KEY` publishes `KEY` to app `app/instance`;
//! - without one (ffmpeg's single url): the last element is the stream name and the app is
//!   what precedes it, at most two elements (`rtmp://h/a/b/c/d` is app `a/b`, stream
//!   `c/d`), as ffmpeg's rtmpproto splits it. `rtmp://h/app` alone names no stream and is
//!   refused.
//!
//! The key keeps its `?query` (`key?token=1`: some CDNs authenticate that way), and so
//! does the app (`rtmp://h/app?auth=x`). The tcUrl is the url up to the app
//! (`rtmp[s]://host[:port]/app`); the port defaults to 1935 for `rtmp://` and 443 for
//! `rtmps://`. MPEG-TS (`udp://`, `tcp://`) and SRT (`srt://`) need an explicit port; SRT
//! options come from the query with ffmpeg's names and units.
//!
//! A destination's stream key and SRT options are secrets: [`Destination::redacted`] is
//! the only form of it that logs and status show.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::model::Protocol;
use crate::secret::redact;

/// A destination as stored and as the API shows it: what the user sent, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationSpec {
    pub protocol: Protocol,
    /// Trimmed, trailing "/" stripped.
    pub url: String,
    /// The destination stream key (rtmp only; empty otherwise).
    #[serde(default)]
    pub stream_key: String,
    /// Tracks by name for this destination; empty = the task's selection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variant_names: Vec<String>,
}

/// Why a destination cannot be pushed to. The API refuses it with
/// [`DestinationError::api_message`]; a task stored before a rule existed keeps its
/// destination and reports the error as its `lastError` (see [`Destination::target`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The url is not a url, or has no host.
    #[error("the url does not parse (expected e.g. rtmp://host/app)")]
    Unparsable,
    /// The scheme does not fit the protocol.
    #[error("scheme '{scheme}' does not fit protocol {protocol} (expected {expected})")]
    SchemeMismatch {
        scheme: String,
        protocol: &'static str,
        expected: String,
    },
    /// SRT in another mode than `caller`.
    #[error("SRT mode '{0}' is not supported: pushes are callers")]
    ConnectionMode(String),
    /// The url parses but names nothing pushcast can push to.
    #[error("{0}")]
    Invalid(&'static str),
    /// A port or an SRT option out of range.
    #[error("{0}")]
    InvalidValue(String),
}

impl DestinationError {
    /// The REST contract's message for this refusal (`spec/rest-push-api.md`, checks
    /// 3–5, then ours).
    pub fn api_message(&self) -> String {
        match self {
            DestinationError::Unparsable => "Could not parse url".into(),
            DestinationError::SchemeMismatch { .. } => "Unsupported protocol".into(),
            DestinationError::ConnectionMode(_) => "Unsupported connection mode".into(),
            other => format!("Invalid destination: {other}"),
        }
    }
}

/// An RTMP/RTMPS destination.
#[derive(Clone, PartialEq, Eq)]
pub struct RtmpTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    pub tc_url: String,
    /// The stream name to publish (the destination stream key, with its query). Secret.
    pub stream_name: String,
}

/// SRT caller options taken from the url query, with ffmpeg's names and units.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SrtOptions {
    /// `streamid=`: what the listener uses to route or authorise (may be secret).
    pub stream_id: Option<String>,
    /// `latency=` in microseconds, as in ffmpeg's srt protocol.
    pub latency: Option<Duration>,
    /// `passphrase=` (10..=79 bytes). Secret.
    pub passphrase: Option<String>,
    /// `pbkeylen=` 16, 24 or 32 (bytes of AES key); 16 by default with a passphrase.
    pub key_size: Option<u16>,
}

/// What a push connects to.
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

impl Target {
    /// `host:port` (brackets around IPv6) for messages.
    pub fn host_port(&self) -> String {
        let (host, port) = match self {
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

// Debug must not print the secrets (a `{:?}` in a log line is easy to write).
impl fmt::Debug for RtmpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtmpTarget")
            .field("tc_url", &self.tc_url)
            .field("stream_name", &redact(&self.stream_name))
            .finish()
    }
}

impl fmt::Debug for SrtOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtOptions")
            .field("latency", &self.latency)
            .field("key_size", &self.key_size)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Rtmp(r) => r.fmt(f),
            Target::Udp { .. } => write!(f, "udp://{}", self.host_port()),
            Target::Tcp { .. } => write!(f, "tcp://{}", self.host_port()),
            Target::Srt { options, .. } => {
                write!(f, "srt://{} ", self.host_port())?;
                options.fmt(f)
            }
        }
    }
}

/// One destination of a task, parsed. Cheap to share: a task holds each in an `Arc`,
/// and the push that serves it borrows it from there.
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    spec: DestinationSpec,
    parsed: Result<Target, DestinationError>,
}

impl Destination {
    /// Parses a destination the API was given: `url` already trimmed with its trailing
    /// "/" stripped; `stream_key` empty when none was given (it is ignored for mpegts and
    /// srt). Errors come in the contract's order: unparsable url, scheme, SRT mode, then
    /// anything else that cannot be pushed to.
    pub fn parse(
        protocol: Protocol,
        url: &str,
        stream_key: &str,
        variant_names: Vec<String>,
    ) -> Result<Arc<Destination>, DestinationError> {
        let stream_key = match protocol {
            Protocol::Rtmp => stream_key.to_string(),
            Protocol::Mpegts | Protocol::Srt => String::new(),
        };
        let d = Destination::new(DestinationSpec {
            protocol,
            url: url.to_string(),
            stream_key,
            variant_names,
        });
        match &d.parsed {
            Ok(_) => Ok(Arc::new(d)),
            Err(e) => Err(e.clone()),
        }
    }

    /// A destination as stored. One that does not parse (stored before a rule of
    /// [`Destination::parse`] existed) is kept, so its task can still be shown and
    /// stopped; its push fails with the reason.
    pub fn new(spec: DestinationSpec) -> Destination {
        let parsed = parse_target(spec.protocol, &spec.url, &spec.stream_key);
        Destination { spec, parsed }
    }

    pub fn protocol(&self) -> Protocol {
        self.spec.protocol
    }

    /// The url as the user gave it (normalised).
    pub fn url(&self) -> &str {
        &self.spec.url
    }

    /// The destination stream key (empty for none). Secret.
    pub fn stream_key(&self) -> &str {
        &self.spec.stream_key
    }

    /// Tracks by name for this destination; empty = the task's selection.
    pub fn variant_names(&self) -> &[String] {
        &self.spec.variant_names
    }

    /// The stored form.
    pub fn spec(&self) -> &DestinationSpec {
        &self.spec
    }

    /// What a push connects to, or why it cannot.
    pub fn target(&self) -> Result<&Target, &DestinationError> {
        self.parsed.as_ref()
    }

    /// What identifies a destination across tasks (one task per address: the claim key)
    /// and within a task (the key of its status): for rtmp `url/streamKey`, otherwise
    /// the url.
    pub fn address(&self) -> String {
        self.spec.address()
    }

    /// The destination as logs and status may show it: the stream key reduced to its
    /// first characters, SRT query options (stream id, passphrase) hidden.
    pub fn redacted(&self) -> String {
        match &self.parsed {
            Ok(target) => redacted_form(&self.spec.url, target),
            Err(_) => "(invalid destination)".to_string(),
        }
    }
}

impl DestinationSpec {
    /// See [`Destination::address`].
    pub fn address(&self) -> String {
        if self.protocol == Protocol::Rtmp && !self.stream_key.is_empty() {
            format!("{}/{}", self.url, self.stream_key)
        } else {
            self.url.clone()
        }
    }
}

impl From<DestinationSpec> for Destination {
    fn from(spec: DestinationSpec) -> Destination {
        Destination::new(spec)
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.spec.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Destination, D::Error> {
        DestinationSpec::deserialize(d).map(Destination::new)
    }
}

// Debug must not print the secrets either.
impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Destination")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn invalid(reason: &'static str) -> DestinationError {
    DestinationError::Invalid(reason)
}

/// The one destination parser.
fn parse_target(protocol: Protocol, url: &str, key: &str) -> Result<Target, DestinationError> {
    let parsed = Url::parse(url).map_err(|_| DestinationError::Unparsable)?;
    let host = match parsed.host() {
        Some(Host::Domain("")) | None => return Err(DestinationError::Unparsable),
        Some(Host::Domain(d)) => d.to_string(),
        Some(Host::Ipv4(a)) => a.to_string(),
        Some(Host::Ipv6(a)) => a.to_string(),
    };
    let scheme = parsed.scheme();
    if !protocol.schemes().contains(&scheme) {
        return Err(DestinationError::SchemeMismatch {
            scheme: scheme.to_string(),
            protocol: protocol.as_str(),
            expected: protocol.schemes().join(" or "),
        });
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if scheme == "srt"
        && let Some((_, mode)) = pairs.iter().find(|(k, _)| k == "mode")
        && !mode.eq_ignore_ascii_case("caller")
    {
        return Err(DestinationError::ConnectionMode(mode.clone()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "credentials in the url (user:password@host) are not supported",
        ));
    }
    let default_port = match scheme {
        "rtmp" => Some(1935),
        "rtmps" => Some(443),
        _ => None,
    };
    let port = match parsed.port().or(default_port) {
        Some(0) => return Err(DestinationError::InvalidValue("invalid port '0'".into())),
        Some(p) => p,
        None => return Err(invalid("the url has no port")),
    };
    match scheme {
        "rtmp" | "rtmps" => rtmp_target(&parsed, host, port, key),
        "udp" => Ok(Target::Udp { host, port }),
        "tcp" => Ok(Target::Tcp { host, port }),
        _ => Ok(Target::Srt {
            host,
            port,
            options: srt_options(&pairs)?,
        }),
    }
}

fn rtmp_target(url: &Url, host: String, port: u16, key: &str) -> Result<Target, DestinationError> {
    let path = url.path().trim_start_matches('/').trim_end_matches('/');
    let key = key.trim();
    let (app, stream_name) = if !key.is_empty() {
        let app = match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        (app, key.to_string())
    } else {
        // ffmpeg's split of a single url: app is one element, or two when more follow.
        let mut parts = path.splitn(3, '/');
        let (app, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(app), Some(name), None) => (app.to_string(), name.to_string()),
            (Some(a), Some(b), Some(name)) => (format!("{a}/{b}"), name.to_string()),
            _ => {
                return Err(invalid(
                    "no stream name: give a streamKey or end the url with it \
                     (rtmp://host/app/KEY)",
                ));
            }
        };
        let name = match url.query() {
            Some(q) => format!("{name}?{q}"),
            None => name,
        };
        (app, name)
    };
    if app.is_empty() {
        return Err(invalid(
            "the url has no application (expected rtmp://host/app)",
        ));
    }
    if stream_name.is_empty() {
        return Err(invalid("empty stream name"));
    }
    let tls = url.scheme() == "rtmps";
    let tc_url = format!(
        "{}://{}/{app}",
        url.scheme(),
        url.authority().trim_start_matches('@')
    );
    Ok(Target::Rtmp(RtmpTarget {
        tls,
        host,
        port,
        app,
        tc_url,
        stream_name,
    }))
}

fn srt_options(pairs: &[(String, String)]) -> Result<SrtOptions, DestinationError> {
    let mut options = SrtOptions::default();
    for (k, v) in pairs {
        match k.as_str() {
            "streamid" => {
                if v.len() > 512 {
                    return Err(invalid("SRT streamid longer than 512 bytes"));
                }
                options.stream_id = Some(v.clone());
            }
            "latency" => {
                let us = v.parse::<u64>().map_err(|_| {
                    DestinationError::InvalidValue(format!(
                        "SRT latency '{v}' is not a number of microseconds"
                    ))
                })?;
                options.latency = Some(Duration::from_micros(us));
            }
            "passphrase" => {
                // Bytes, as srt-tokio counts them (it panics otherwise).
                if !(10..=79).contains(&v.len()) {
                    return Err(invalid("SRT passphrase must have 10 to 79 bytes"));
                }
                options.passphrase = Some(v.clone());
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
    Ok(options)
}

/// The form logs and status show: no stream key beyond its first characters, no SRT
/// options.
fn redacted_form(url: &str, target: &Target) -> String {
    match target {
        Target::Rtmp(r) => format!("{}/{}", r.tc_url, redact(&r.stream_name)),
        Target::Udp { .. } => format!("udp://{}", target.host_port()),
        Target::Tcp { .. } => format!("tcp://{}", target.host_port()),
        Target::Srt { .. } => {
            let shown = format!("srt://{}", target.host_port());
            if url.contains('?') {
                format!("{shown}?…")
            } else {
                shown
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(protocol: Protocol, url: &str, key: &str) -> Result<Target, DestinationError> {
        Destination::parse(protocol, url, key, Vec::new()).map(|d| match d.target() {
            Ok(t) => t.clone(),
            Err(e) => panic!("{e}"),
        })
    }

    fn rtmp(url: &str, key: &str) -> RtmpTarget {
        match parse(Protocol::Rtmp, url, key) {
            Ok(Target::Rtmp(r)) => r,
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

        let r = rtmp("rtmp://h/app?auth=x", "k");
        assert_eq!(
            (r.app.as_str(), r.tc_url.as_str()),
            ("app?auth=x", "rtmp://h/app?auth=x")
        );
    }

    #[test]
    fn ffmpeg_style_single_url() {
        let r = rtmp("rtmp://127.0.0.1:1935/live/stream", "");
        assert_eq!((r.app.as_str(), r.stream_name.as_str()), ("live", "stream"));
        assert_eq!(r.tc_url, "rtmp://127.0.0.1:1935/live");
        let r = rtmp("rtmp://h/a/b/c/d", "");
        assert_eq!((r.app.as_str(), r.stream_name.as_str()), ("a/b", "c/d"));
        let r = rtmp("rtmp://h/live/key?token=1", "");
        assert_eq!(r.stream_name, "key?token=1");
    }

    #[test]
    fn refusals_come_in_the_contract_order() {
        let e = |p, url, key| parse(p, url, key).expect_err(url);
        assert_eq!(
            e(Protocol::Rtmp, "host/live", "k"),
            DestinationError::Unparsable
        );
        assert_eq!(
            e(Protocol::Rtmp, "rtmp://:1935/live", "k"),
            DestinationError::Unparsable
        );
        assert_eq!(
            e(Protocol::Rtmp, "rtmp://host:99999/live", "k"),
            DestinationError::Unparsable
        );
        assert!(matches!(
            e(Protocol::Rtmp, "udp://host:5/live", "k"),
            DestinationError::SchemeMismatch { .. }
        ));
        assert_eq!(
            e(Protocol::Srt, "srt://h:9000?mode=listener", ""),
            DestinationError::ConnectionMode("listener".into())
        );
        assert!(parse(Protocol::Srt, "srt://h:9000?mode=Caller", "").is_ok());
        for (protocol, url, key) in [
            (Protocol::Rtmp, "rtmp://host", "k"),
            (Protocol::Rtmp, "rtmp://host/live", ""),
            (Protocol::Rtmp, "rtmp://host:0/live", "k"),
            (Protocol::Rtmp, "rtmp://u:p@host/live", "k"),
            (Protocol::Rtmp, "rtmp://:p@host/live", "k"),
            (Protocol::Rtmp, "rtmp://u@host/live", "k"),
            (Protocol::Mpegts, "udp://host", ""),
            (Protocol::Srt, "srt://h:9000?passphrase=short", ""),
            (Protocol::Srt, "srt://h:9000?latency=soon", ""),
        ] {
            let err = e(protocol, url, key);
            assert!(
                err.api_message().starts_with("Invalid destination: "),
                "{url}: {err:?}"
            );
        }
        assert_eq!(
            e(Protocol::Rtmp, "rtmp://host/live", "").to_string(),
            "no stream name: give a streamKey or end the url with it (rtmp://host/app/KEY)"
        );
        assert_eq!(
            e(Protocol::Mpegts, "udp://host", "").to_string(),
            "the url has no port"
        );
        assert_eq!(
            DestinationError::Unparsable.api_message(),
            "Could not parse url"
        );
    }

    #[test]
    fn redaction_hides_keys_and_srt_options() {
        let d = Destination::parse(Protocol::Rtmp, "rtmp://h/live", "supersecretkey123", vec![])
            .expect("parses");
        assert_eq!(d.redacted(), "rtmp://h/live/supe…");
        assert_eq!(format!("{d:?}"), "Destination(\"rtmp://h/live/supe…\")");
        let Ok(target) = d.target() else { panic!() };
        assert!(!format!("{target:?}").contains("secretkey"));
        let d =
            Destination::parse(Protocol::Rtmp, "rtmp://h/live/short", "", vec![]).expect("parses");
        assert_eq!(d.redacted(), "rtmp://h/live/…");
        let d = Destination::parse(
            Protocol::Srt,
            "srt://h:9000?mode=caller&streamid=publish%3Asecret&latency=200000&passphrase=0123456789&pbkeylen=24",
            "",
            vec![],
        )
        .expect("parses");
        assert_eq!(d.redacted(), "srt://h:9000?…");
        let Ok(Target::Srt { options, .. }) = d.target() else {
            panic!("{d:?}")
        };
        assert_eq!(options.stream_id.as_deref(), Some("publish:secret"));
        assert_eq!(options.latency, Some(Duration::from_millis(200)));
        assert_eq!(options.key_size, Some(24));
        assert!(!format!("{options:?}").contains("secret"));
        let d =
            Destination::parse(Protocol::Mpegts, "tcp://[::1]:5000", "", vec![]).expect("parses");
        let Ok(t) = d.target() else { panic!() };
        assert_eq!(t.host_port(), "[::1]:5000");
        assert_eq!(d.redacted(), "tcp://[::1]:5000");
    }

    #[test]
    fn each_scheme_makes_its_target() {
        let udp = parse(Protocol::Mpegts, "udp://239.0.0.1:5000", "").expect("parses");
        assert_eq!(
            udp,
            Target::Udp {
                host: "239.0.0.1".into(),
                port: 5000
            }
        );
        let tcp = parse(Protocol::Mpegts, "tcp://h:5001", "").expect("parses");
        assert_eq!(
            tcp,
            Target::Tcp {
                host: "h".into(),
                port: 5001
            }
        );
        // streamid: 512 bytes is the SRT limit, inclusive.
        let id = |n: usize| format!("srt://h:9000?streamid={}", "a".repeat(n));
        assert!(parse(Protocol::Srt, &id(512), "").is_ok());
        assert_eq!(
            parse(Protocol::Srt, &id(513), "").expect_err("too long"),
            DestinationError::Invalid("SRT streamid longer than 512 bytes")
        );
    }

    /// `{:?}` and `{}` are what a log line prints: the shape is kept, the secrets are not.
    #[test]
    fn debug_and_display_forms() {
        let d = Destination::parse(Protocol::Rtmp, "rtmp://h/live", "supersecretkey123", vec![])
            .expect("parses");
        assert_eq!(d.to_string(), "rtmp://h/live/supe…");
        let Ok(t) = d.target() else { panic!() };
        assert_eq!(
            format!("{t:?}"),
            r#"RtmpTarget { tc_url: "rtmp://h/live", stream_name: "supe…" }"#
        );
        let d = Destination::parse(
            Protocol::Srt,
            "srt://h:9000?passphrase=0123456789&latency=200000&pbkeylen=24",
            "",
            vec![],
        )
        .expect("parses");
        assert_eq!(d.to_string(), "srt://h:9000?…");
        let Ok(t) = d.target() else { panic!() };
        assert_eq!(
            format!("{t:?}"),
            "srt://h:9000 SrtOptions { latency: Some(200ms), key_size: Some(24), .. }"
        );
        let d = Destination::parse(Protocol::Mpegts, "udp://h:1", "", vec![]).expect("parses");
        let Ok(t) = d.target() else { panic!() };
        assert_eq!(format!("{t:?}"), "udp://h:1");
    }

    #[test]
    fn stored_destinations_that_no_longer_parse_are_kept_with_their_reason() {
        let json = r#"{"protocol":"rtmp","url":"rtmp://h/app","stream_key":""}"#;
        let d: Destination = serde_json::from_str(json).expect("decodes");
        assert_eq!(d.url(), "rtmp://h/app");
        assert!(matches!(d.target(), Err(DestinationError::Invalid(_))));
        assert_eq!(d.redacted(), "(invalid destination)");
        assert_eq!(serde_json::to_string(&d).expect("encodes"), json);
    }

    #[test]
    fn address_appends_the_key_for_rtmp_only() {
        let d = |p, url: &str, key: &str| {
            Destination::new(DestinationSpec {
                protocol: p,
                url: url.into(),
                stream_key: key.into(),
                variant_names: vec![],
            })
            .address()
        };
        assert_eq!(d(Protocol::Rtmp, "rtmp://h/live", "k"), "rtmp://h/live/k");
        assert_eq!(d(Protocol::Rtmp, "rtmp://h/live", ""), "rtmp://h/live");
        assert_eq!(d(Protocol::Mpegts, "udp://h:1", "k"), "udp://h:1");
    }
}
