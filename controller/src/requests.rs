//! The gateway's request bodies: bytes → JSON → the typed requests of [`Pushes`] and
//! [`Apps`](crate::apps::Apps). Pure (no store, no socket), so the one place where the
//! REST API reads what a client sent can be fuzzed as a whole (`fuzz/`, target
//! `rest_json`) and tested without HTTP.
//!
//! The OME contract is lenient about shapes: a field of the wrong type counts as missing
//! (and then the action's own check names it), never as a parse error.
//!
//! [`Pushes`]: crate::pushes::Pushes

use pushcast_proto::ApiError;
use pushcast_proto::destination::{Destination, DestinationSpec};
use pushcast_proto::model::{AppConfig, Callbacks, Protocol};
use pushcast_proto::rules::{self, PushRule};
use serde_json::{Map, Value};

use crate::apps::{AppPatch, Continuity};
use crate::pushes::{DestinationRef, DestinationRequest, StartPush, UpdatePush};

/// A body as JSON of any shape (app creation takes an object or an array); empty or
/// blank is `{}`. The size bound is the transport's ([`MAX_BODY`](crate::gateway::MAX_BODY)).
pub fn body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("[JSON] {e}")))
}

/// A body that must be a JSON object; empty is `{}`.
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match body(bytes)? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(
            "[JSON] Request body must be a JSON object",
        )),
    }
}

/// The body of `PATCH /v1/vhosts/{vhost}`: `{"hosts": ["live.example.com", ...]}`.
pub fn vhost_hosts(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::bad_request("[hosts] must be an array of host names");
    match obj.get("hosts") {
        None => Err(ApiError::bad_request(
            "There is no required parameter [ hosts]",
        )),
        Some(Value::Array(items)) => items
            .iter()
            .map(|h| h.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// The body of `PATCH /v1/vhosts/{vhost}/apps/{app}`.
pub fn app_patch(obj: &Map<String, Value>) -> Result<AppPatch, ApiError> {
    let v = Value::Object(obj.clone());
    Ok(AppPatch {
        open_publish: obj.get("openPublish").and_then(Value::as_bool),
        callbacks: callbacks(&v)?,
        srt_passphrase: match obj.get("srtPassphrase") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(p) => Some(Some(srt_passphrase(p)?)),
        },
        continuity: continuity(&v)?,
        rules: rules(&v)?,
    })
}

/// An app's `rules` when present: `[{"name", "stream", "destinations": [{"protocol",
/// "url", "streamKey", "variantNames"}], "trackIds", "variantNames"}]`. Each destination
/// is checked by the one destination parser with its macros expanded for a sample
/// stream, so a rule that could never push is refused when it is written.
pub fn rules(v: &Value) -> Result<Option<Vec<PushRule>>, ApiError> {
    let items = match v.get("rules") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::bad_request("[rules] must be an array of rules")),
    };
    if items.len() > rules::MAX_RULES {
        return Err(ApiError::bad_request(format!(
            "An app has at most {} rules ({} given)",
            rules::MAX_RULES,
            items.len()
        )));
    }
    let mut out: Vec<PushRule> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let bad = |what: &str| ApiError::bad_request(format!("[rules[{i}]] {what}"));
        let name = str_field(item, "name").unwrap_or_default();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(bad("name must be 1 to 64 of A-Z a-z 0-9 - _"));
        }
        if out.iter().any(|r| r.name == name) {
            return Err(bad("name is used by another rule of the app"));
        }
        let stream = str_field(item, "stream").unwrap_or_default();
        if stream.is_empty() || stream.len() > 256 {
            return Err(bad("stream must be a stream name pattern (* wildcards)"));
        }
        let dests = item
            .get("destinations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if dests.is_empty() || dests.len() > rules::MAX_RULE_DESTINATIONS {
            return Err(bad(&format!(
                "destinations must list 1 to {} destinations",
                rules::MAX_RULE_DESTINATIONS
            )));
        }
        let mut destinations = Vec::with_capacity(dests.len());
        for d in &dests {
            let protocol_text = str_field(d, "protocol").unwrap_or_default().to_lowercase();
            let protocol = Protocol::parse(&protocol_text)
                .ok_or_else(|| bad(&format!("unknown protocol '{protocol_text}'")))?;
            let spec = DestinationSpec {
                protocol,
                url: str_field(d, "url")
                    .unwrap_or_default()
                    .trim()
                    .trim_end_matches('/')
                    .to_string(),
                stream_key: str_field(d, "streamKey").unwrap_or_default(),
                variant_names: string_list(d.get("variantNames")),
            };
            let sample = rules::expand(&spec.url, "vhost", "app", "stream");
            let key = rules::expand(&spec.stream_key, "vhost", "app", "stream");
            Destination::parse(protocol, &sample, &key, spec.variant_names.clone())
                .map_err(|e| bad(&e.api_message()))?;
            destinations.push(spec);
        }
        out.push(PushRule {
            name,
            stream,
            destinations,
            track_ids: int_list(item.get("trackIds")).unwrap_or_default(),
            variant_names: string_list(item.get("variantNames")),
        });
    }
    Ok(Some(out))
}

/// The source-continuity fields of an app body, each when present:
/// `reconnectWindowMs` (0 to 600000), `inputStallMs` (100 to 60000),
/// `switchBackToPrimary`.
pub fn continuity(v: &Value) -> Result<Continuity, ApiError> {
    let ms = |name: &str, range: std::ops::RangeInclusive<u64>| -> Result<Option<u64>, ApiError> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => match n.as_u64() {
                Some(ms) if range.contains(&ms) => Ok(Some(ms)),
                _ => Err(ApiError::bad_request(format!(
                    "[{name}] must be a number of milliseconds from {} to {}",
                    range.start(),
                    range.end()
                ))),
            },
        }
    };
    Ok(Continuity {
        reconnect_window_ms: ms("reconnectWindowMs", 0..=600_000)?,
        input_stall_ms: ms("inputStallMs", 100..=60_000)?,
        switch_back_to_primary: match v.get("switchBackToPrimary") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "[switchBackToPrimary] must be true or false",
                ));
            }
        },
    })
}

pub fn app(vhost: &str, v: &Value) -> Result<AppConfig, ApiError> {
    let name = str_field(v, "name")
        .ok_or_else(|| ApiError::bad_request("There is no required parameter [ name]"))?;
    let continuity = continuity(v)?;
    Ok(AppConfig {
        vhost: vhost.to_string(),
        name,
        open_publish: v
            .get("openPublish")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        callbacks: callbacks(v)?.unwrap_or_default(),
        srt_passphrase: match v.get("srtPassphrase") {
            None | Some(Value::Null) => None,
            Some(p) => Some(srt_passphrase(p)?),
        },
        reconnect_window_ms: continuity.reconnect_window_ms.unwrap_or(0),
        input_stall_ms: continuity.input_stall_ms,
        switch_back_to_primary: continuity.switch_back_to_primary,
        rules: rules(v)?.unwrap_or_default(),
    })
}

/// An app's `srtPassphrase`: a string of 10 to 79 characters (what SRT accepts).
fn srt_passphrase(v: &Value) -> Result<String, ApiError> {
    match v.as_str() {
        Some(p) if (10..=79).contains(&p.chars().count()) && p.is_ascii() => Ok(p.to_string()),
        _ => Err(ApiError::bad_request(
            "[srtPassphrase] must be a string of 10 to 79 ASCII characters",
        )),
    }
}

/// The `callbacks` object of an app body (or of a PATCH), when present.
pub fn callbacks(v: &Value) -> Result<Option<Callbacks>, ApiError> {
    match v.get("callbacks") {
        None | Some(Value::Null) => Ok(None),
        Some(c) => Callbacks::from_ome_json(c)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("Invalid callbacks: {e}"))),
    }
}

/// A string field; anything else (number, null, object) counts as missing.
fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_string)
}

pub fn start_push(obj: &Map<String, Value>) -> StartPush {
    let body = Value::Object(obj.clone());
    let stream = body.get("stream").filter(|s| s.is_object());
    // `tracks` is the old name of `trackIds`.
    let track_ids = int_list(stream.and_then(|s| s.get("trackIds").or_else(|| s.get("tracks"))))
        .unwrap_or_default();
    StartPush {
        id: str_field(&body, "id"),
        stream_name: stream.and_then(|s| str_field(s, "name")),
        track_ids,
        variant_names: string_list(stream.and_then(|s| s.get("variantNames"))),
        protocol: str_field(&body, "protocol"),
        url: str_field(&body, "url"),
        stream_key: str_field(&body, "streamKey"),
        destinations: destinations(body.get("destinations")),
        reconnect_window_ms: body.get("reconnectWindowMs").and_then(Value::as_u64),
        rule: None,
    }
}

/// The integers of a JSON array (other items skipped); `None` when it is not an array.
fn int_list(v: Option<&Value>) -> Option<Vec<i64>> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
}

/// The strings of a JSON array (other items skipped); empty when it is not an array.
fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `[{protocol, url, streamKey, variantNames?}, ...]`; anything but an object in the
/// array counts as a destination with every field missing.
fn destinations(v: Option<&Value>) -> Vec<DestinationRequest> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|d| DestinationRequest {
                    protocol: str_field(d, "protocol"),
                    url: str_field(d, "url"),
                    stream_key: str_field(d, "streamKey"),
                    variant_names: string_list(d.get("variantNames")),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `{"id", "addDestinations": [...], "removeDestinations": [<{url,streamKey}> or index],
/// "variantNames"?, "trackIds"?}`.
pub fn update_push(obj: &Map<String, Value>) -> UpdatePush {
    let remove = obj
        .get("removeDestinations")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|r| match r.as_u64() {
                    Some(i) => DestinationRef::Index(usize::try_from(i).unwrap_or(usize::MAX)),
                    None => DestinationRef::Address {
                        url: str_field(r, "url").unwrap_or_default(),
                        stream_key: str_field(r, "streamKey").unwrap_or_default(),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    UpdatePush {
        id: obj.get("id").and_then(Value::as_str).map(str::to_string),
        add: destinations(obj.get("addDestinations")),
        remove,
        variant_names: obj
            .get("variantNames")
            .filter(|v| v.is_array())
            .map(|v| string_list(Some(v))),
        track_ids: int_list(obj.get("trackIds")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn update_push_reads_indexes_and_addresses() {
        let obj = json!({"id": "t", "addDestinations": [{"protocol": "rtmp", "url": "rtmp://h/a",
            "streamKey": "k", "variantNames": ["bypass_video", 3]}],
            "removeDestinations": [1, {"url": "rtmp://h/b", "streamKey": "k2"}, "junk"],
            "trackIds": [101]});
        let up = update_push(obj.as_object().unwrap());
        assert_eq!(up.id.as_deref(), Some("t"));
        assert_eq!(up.add.len(), 1);
        assert_eq!(up.add[0].variant_names, ["bypass_video"]);
        assert_eq!(
            up.remove,
            [
                DestinationRef::Index(1),
                DestinationRef::Address {
                    url: "rtmp://h/b".into(),
                    stream_key: "k2".into()
                },
                DestinationRef::Address {
                    url: String::new(),
                    stream_key: String::new()
                },
            ]
        );
        assert_eq!(up.track_ids, Some(vec![101]));
        assert_eq!(up.variant_names, None, "absent: the selection is kept");
    }
}
