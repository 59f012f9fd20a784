//! Publish callbacks (spec "Publish callbacks (seed 002)"): what is sent when a publish
//! starts and ends, in the new (JSON) and old (form) formats.

use std::net::SocketAddr;

use serde::Serialize;
use serde::ser::SerializeMap;
use url::form_urlencoded;

/// The format of one publish callback URL (per app: `{"url", "format": "new" | "old"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON, `Content-Type: application/json`.
    #[default]
    New,
    /// `application/x-www-form-urlencoded`.
    Old,
}

/// How a publish ended: the old format's `close_mode` (1 normal, 2 abnormal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseMode {
    /// The encoder unpublished / closed the connection cleanly.
    Normal,
    /// The connection broke, timed out, or was kicked.
    Abnormal,
}

impl CloseMode {
    /// The old format's `close_mode` value.
    pub fn code(self) -> &'static str {
        match self {
            CloseMode::Normal => "1",
            CloseMode::Abnormal => "2",
        }
    }
}

/// One publish session, as the ingest saw it. Built once when the publish is accepted and
/// kept until it ends (the same `vdoid` goes into both callbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishEvent {
    /// RTMP application (`App` / `app`).
    pub app: String,
    /// The vhost the publish was mapped to (not sent; for routing and logs).
    pub vhost: String,
    /// The ingest host the encoder used, from the tcUrl (`Pubdomain`); see [`host_from_tc_url`].
    pub domain: String,
    /// The stream name (`Stream` / `name`) — the stream, never its publish key.
    pub stream: String,
    /// The encoder's address (`ClientIp`, `ClientPort`).
    pub client: SocketAddr,
    /// The worker that took the publish (`Node`).
    pub node: String,
    /// Query parameters of the publish URL, in order (`PubParam`); see [`parse_query`].
    pub params: Vec<(String, String)>,
    /// The tcUrl as the encoder sent it (`tcurl`).
    pub tc_url: String,
    /// `flashver` from the RTMP connect (`nil` when absent).
    pub flashver: Option<String>,
    /// `swfUrl` from the RTMP connect (`nil` when absent).
    pub swfurl: Option<String>,
    /// Identifies this publish session (same stream, different times): see [`new_vdoid`].
    pub vdoid: String,
    /// When the publish started, Unix ms (`PubStartUnixTime`).
    pub start_ms: u64,
}

/// How and when a publish ended (the PubEnd / `user_publish_done` callback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishEnd {
    /// Unix ms (`PubEndUnixTime`).
    pub time_ms: u64,
    /// Why it ended (`PubEndMessage`), e.g. "unpublished", "connection reset".
    pub message: String,
    /// `close_mode`.
    pub mode: CloseMode,
}

/// A fresh publish session id (`vdoid`): a random non-zero u64 in decimal.
pub fn new_vdoid() -> String {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id.to_string();
        }
    }
}

/// Parses a query string (`a=1&b=x%20y`, with or without the leading `?`) into ordered
/// pairs, form-decoded. Empty pieces are skipped.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    let query = query.strip_prefix('?').unwrap_or(query);
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Splits an RTMP publish name or URL at its first `?`: `("key", [("a","1")])` for
/// `key?a=1`. Without a `?`, the whole input and no parameters.
pub fn split_query(s: &str) -> (&str, Vec<(String, String)>) {
    match s.split_once('?') {
        Some((head, query)) => (head, parse_query(query)),
        None => (s, Vec::new()),
    }
}

/// The host of a tcUrl (`rtmp://live.example.com:1935/app?x=1` → `live.example.com`),
/// lower-cased; `None` when the tcUrl does not parse or has no host.
pub fn host_from_tc_url(tc_url: &str) -> Option<String> {
    let url = url::Url::parse(tc_url.trim()).ok()?;
    let host = url.host_str()?;
    if host.is_empty() {
        return None;
    }
    Some(host.trim_matches(['[', ']']).to_ascii_lowercase())
}

/// `PubParam`: an object of strings in the order of the URL; a repeated name keeps its
/// first value (a JSON object cannot hold a name twice).
struct Params<'a>(&'a [(String, String)]);

impl Serialize for Params<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seen: Vec<&str> = Vec::with_capacity(self.0.len());
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in self.0 {
            if seen.contains(&k.as_str()) {
                continue;
            }
            seen.push(k);
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

// Field order = the seed's samples (serde writes struct fields in declaration order).
#[derive(Serialize)]
struct StartJson<'a> {
    #[serde(rename = "Version")]
    version: &'static str,
    #[serde(rename = "App")]
    app: &'a str,
    #[serde(rename = "Pubdomain")]
    pubdomain: &'a str,
    #[serde(rename = "Stream")]
    stream: &'a str,
    /// A string, as the seed has it.
    #[serde(rename = "PubStartUnixTime")]
    start: String,
    #[serde(rename = "NotifyType")]
    notify_type: &'static str,
    #[serde(rename = "ClientIp")]
    client_ip: String,
    #[serde(rename = "ClientPort")]
    client_port: u16,
    #[serde(rename = "Node")]
    node: &'a str,
    #[serde(rename = "PubParam")]
    params: Params<'a>,
}

#[derive(Serialize)]
struct EndJson<'a> {
    #[serde(rename = "Version")]
    version: &'static str,
    #[serde(rename = "App")]
    app: &'a str,
    #[serde(rename = "Pubdomain")]
    pubdomain: &'a str,
    #[serde(rename = "Stream")]
    stream: &'a str,
    /// A number (the seed's quirk: the start time is a string, the end time is not).
    #[serde(rename = "PubEndUnixTime")]
    end: u64,
    #[serde(rename = "NotifyType")]
    notify_type: &'static str,
    #[serde(rename = "ClientIp")]
    client_ip: String,
    #[serde(rename = "ClientPort")]
    client_port: u16,
    #[serde(rename = "Node")]
    node: &'a str,
    #[serde(rename = "PubEndMessage")]
    message: &'a str,
    #[serde(rename = "PubParam")]
    params: Params<'a>,
}

fn client_ip(ev: &PublishEvent) -> String {
    // An IPv4 client on a dual-stack socket shows as 1.2.3.4, not ::ffff:1.2.3.4.
    ev.client.ip().to_canonical().to_string()
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these structs (strings, integers, a map with string keys) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The new-format PubStart body (compact JSON, the seed's field order).
pub fn start_json(ev: &PublishEvent) -> Vec<u8> {
    to_json(&StartJson {
        version: "1.0",
        app: &ev.app,
        pubdomain: &ev.domain,
        stream: &ev.stream,
        start: ev.start_ms.to_string(),
        notify_type: "PubStart",
        client_ip: client_ip(ev),
        client_port: ev.client.port(),
        node: &ev.node,
        params: Params(&ev.params),
    })
}

/// The new-format PubEnd body. As in the seed's end sample, `PubEndUnixTime` (a number)
/// takes the place of `PubStartUnixTime`, and `PubEndMessage` comes before `PubParam`.
pub fn end_json(ev: &PublishEvent, end: &PublishEnd) -> Vec<u8> {
    to_json(&EndJson {
        version: "1.0",
        app: &ev.app,
        pubdomain: &ev.domain,
        stream: &ev.stream,
        end: end.time_ms,
        notify_type: "PubEnd",
        client_ip: client_ip(ev),
        client_port: ev.client.port(),
        node: &ev.node,
        message: &end.message,
        params: Params(&ev.params),
    })
}

fn old_form(ev: &PublishEvent, end: Option<&PublishEnd>) -> Vec<u8> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("app", &ev.app)
        .append_pair("name", &ev.stream)
        .append_pair("swfurl", ev.swfurl.as_deref().unwrap_or("nil"))
        .append_pair("flashver", ev.flashver.as_deref().unwrap_or("nil"))
        .append_pair("tcurl", &ev.tc_url);
    match end {
        None => {
            form.append_pair("call", "user_publish");
        }
        Some(end) => {
            // The seed's end sample: `...&call=user_publish_done&close_mode=..&vdoid=..`.
            form.append_pair("call", "user_publish_done")
                .append_pair("close_mode", end.mode.code());
        }
    }
    form.append_pair("vdoid", &ev.vdoid);
    form.finish().into_bytes()
}

/// The old-format `user_publish` body (`application/x-www-form-urlencoded`).
pub fn start_form(ev: &PublishEvent) -> Vec<u8> {
    old_form(ev, None)
}

/// The old-format `user_publish_done` body, with `close_mode` 1 (normal) or 2 (abnormal).
pub fn end_form(ev: &PublishEvent, end: &PublishEnd) -> Vec<u8> {
    old_form(ev, Some(end))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event() -> PublishEvent {
        PublishEvent {
            app: "live".into(),
            vhost: "default".into(),
            domain: "xxx.xxx.com".into(),
            stream: "test".into(),
            client: "1.2.3.4:51234".parse().unwrap(),
            node: "worker-1".into(),
            params: vec![
                ("param1".into(), "123456".into()),
                ("param2".into(), "11".into()),
            ],
            tc_url: "rtmp://test.uplive.ks-cdn.com/live".into(),
            flashver: None,
            swfurl: None,
            vdoid: "123456".into(),
            start_ms: 1_456_800_010_000,
        }
    }

    #[test]
    fn new_format_start_bytes() {
        assert_eq!(
            String::from_utf8(start_json(&event())).unwrap(),
            r#"{"Version":"1.0","App":"live","Pubdomain":"xxx.xxx.com","Stream":"test","PubStartUnixTime":"1456800010000","NotifyType":"PubStart","ClientIp":"1.2.3.4","ClientPort":51234,"Node":"worker-1","PubParam":{"param1":"123456","param2":"11"}}"#
        );
    }

    #[test]
    fn new_format_end_bytes() {
        let end = PublishEnd {
            time_ms: 1_456_800_070_000,
            message: "unpublished".into(),
            mode: CloseMode::Normal,
        };
        assert_eq!(
            String::from_utf8(end_json(&event(), &end)).unwrap(),
            r#"{"Version":"1.0","App":"live","Pubdomain":"xxx.xxx.com","Stream":"test","PubEndUnixTime":1456800070000,"NotifyType":"PubEnd","ClientIp":"1.2.3.4","ClientPort":51234,"Node":"worker-1","PubEndMessage":"unpublished","PubParam":{"param1":"123456","param2":"11"}}"#
        );
    }

    #[test]
    fn new_format_escapes_and_dedups_params() {
        let mut ev = event();
        ev.client = "[::ffff:10.0.0.7]:1935".parse().unwrap();
        ev.stream = "a\"b\\c".into();
        ev.params = vec![
            ("x".into(), "1".into()),
            ("é".into(), "<&>".into()),
            ("x".into(), "2".into()),
        ];
        let json: serde_json::Value = serde_json::from_slice(&start_json(&ev)).unwrap();
        assert_eq!(json["Stream"], "a\"b\\c");
        assert_eq!(json["ClientIp"], "10.0.0.7");
        assert_eq!(json["ClientPort"], 1935);
        assert_eq!(json["PubParam"], serde_json::json!({"x": "1", "é": "<&>"}));
        let mut ev = event();
        ev.params.clear();
        ev.client = "[2001:db8::1]:4000".parse().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&start_json(&ev)).unwrap();
        assert_eq!(json["PubParam"], serde_json::json!({}));
        assert_eq!(json["ClientIp"], "2001:db8::1");
    }

    #[test]
    fn old_format_start_bytes() {
        // The seed's sample, with tcurl form-encoded (`:` and `/` escaped); a form decoder
        // reads the same values as from the seed's unescaped sample.
        let body = String::from_utf8(start_form(&event())).unwrap();
        assert_eq!(
            body,
            "app=live&name=test&swfurl=nil&flashver=nil&tcurl=rtmp%3A%2F%2Ftest.uplive.ks-cdn.com%2Flive&call=user_publish&vdoid=123456"
        );
        let seed = "app=live&name=test&swfurl=nil&flashver=nil&tcurl=rtmp://test.uplive.ks-cdn.com/live&call=user_publish&vdoid=123456";
        assert_eq!(parse_query(&body), parse_query(seed));
    }

    #[test]
    fn old_format_end_bytes_and_escaping() {
        let mut ev = event();
        ev.flashver = Some("MAC 10,2,153,2".into());
        ev.swfurl = Some("http://x/y.swf?a=1&b=2".into());
        ev.stream = "s&name=evil".into();
        let normal = PublishEnd {
            time_ms: 1,
            message: "unpublished".into(),
            mode: CloseMode::Normal,
        };
        assert_eq!(
            String::from_utf8(end_form(&ev, &normal)).unwrap(),
            "app=live&name=s%26name%3Devil&swfurl=http%3A%2F%2Fx%2Fy.swf%3Fa%3D1%26b%3D2&flashver=MAC+10%2C2%2C153%2C2&tcurl=rtmp%3A%2F%2Ftest.uplive.ks-cdn.com%2Flive&call=user_publish_done&close_mode=1&vdoid=123456"
        );
        let abnormal = PublishEnd {
            mode: CloseMode::Abnormal,
            ..normal
        };
        let pairs = parse_query(std::str::from_utf8(&end_form(&ev, &abnormal)).unwrap());
        assert!(pairs.contains(&("close_mode".into(), "2".into())));
        assert!(pairs.contains(&("name".into(), "s&name=evil".into())));
        assert!(pairs.contains(&("flashver".into(), "MAC 10,2,153,2".into())));
    }

    #[test]
    fn query_helpers() {
        assert_eq!(
            split_query("key123?param1=123456&param2=11&empty=&=x&sp=a+b%2Bc"),
            (
                "key123",
                vec![
                    ("param1".into(), "123456".into()),
                    ("param2".into(), "11".into()),
                    ("empty".into(), "".into()),
                    ("sp".into(), "a b+c".into()),
                ]
            )
        );
        assert_eq!(split_query("key"), ("key", vec![]));
        assert_eq!(split_query("key?"), ("key", vec![]));
        assert_eq!(parse_query("?a=1"), vec![("a".into(), "1".into())]);
        assert_eq!(
            host_from_tc_url("rtmp://Live.Example.com:1935/live?x=1").as_deref(),
            Some("live.example.com")
        );
        assert_eq!(
            host_from_tc_url("rtmps://[::1]:443/live").as_deref(),
            Some("::1")
        );
        assert_eq!(host_from_tc_url("live").as_deref(), None);
        let a = new_vdoid();
        let b = new_vdoid();
        assert_ne!(a, b);
        assert!(a.parse::<u64>().unwrap() > 0);
    }
}
