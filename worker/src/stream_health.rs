//! The health of the live streams on this worker: what each encoder sends, measured
//! over the last seconds (bitrate, pictures per second), with what its `onMetaData`
//! says (resolution, encoder software) and its tracks' codecs. Sampled once a second by
//! the worker's health tick; read by the controllers over `WorkerService.ListStreams`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use pushcast_proto::v1;
use pushcast_rtmp::amf0::{self, Amf0Value};
use tokio::time::Instant;

use crate::hub::{Hub, StreamId, StreamInfo};

/// Samples kept per stream: five seconds of rates.
const SAMPLES: usize = 6;

/// (when, bytes in, pictures in) of one stream, the last [`SAMPLES`] seconds.
type Ring = VecDeque<(Instant, u64, u64)>;

/// Per stream: its samples, once a second.
#[derive(Debug, Clone, Default)]
pub struct StreamRates {
    samples: Arc<Mutex<HashMap<StreamId, Ring>>>,
}

impl StreamRates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Ring>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes this second's sample of every live stream (`streams`: the hub's now);
    /// forgets the streams that ended.
    pub fn sample(&self, streams: &[StreamInfo]) {
        let now = Instant::now();
        let mut all = self.lock();
        all.retain(|k, _| streams.iter().any(|s| s.key == *k));
        for s in streams {
            let ring = all.entry(s.key.clone()).or_default();
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back((now, s.bytes_in, s.pictures_in));
        }
    }

    /// Every live stream's health now.
    pub fn health(&self, hub: &Hub) -> Vec<v1::StreamHealth> {
        let now = Instant::now();
        let all = self.lock();
        hub.streams()
            .into_iter()
            .map(|s| {
                let (bps, fps) = all.get(&s.key).and_then(|ring| ring.front()).map_or(
                    (0, 0.0),
                    |&(then, bytes, pictures)| {
                        let ms = now.saturating_duration_since(then).as_millis() as u64;
                        if ms < 500 {
                            return (0, 0.0);
                        }
                        let bps = s.bytes_in.saturating_sub(bytes) * 8 * 1000 / ms;
                        let fps =
                            s.pictures_in.saturating_sub(pictures) as f64 * 1000.0 / ms as f64;
                        (bps, (fps * 100.0).round() / 100.0)
                    },
                );
                health_of(&s, bps, fps)
            })
            .collect()
    }
}

fn health_of(s: &StreamInfo, bitrate_bps: u64, fps: f64) -> v1::StreamHealth {
    let meta = s.metadata.as_deref().map(metadata).unwrap_or_default();
    v1::StreamHealth {
        vhost: s.key.vhost.clone(),
        app: s.key.app.clone(),
        stream: s.key.stream.clone(),
        codecs: s.tracks().iter().map(|t| t.codec.to_string()).collect(),
        width: meta.width,
        height: meta.height,
        fps,
        bitrate_bps,
        encoder: meta.encoder,
        frames_in: s.frames_in,
        bytes_in: s.bytes_in,
    }
}

/// What an `onMetaData` says that the stream view shows.
#[derive(Debug, Default, PartialEq)]
struct Meta {
    width: u32,
    height: u32,
    encoder: String,
}

/// Reads width, height and encoder from an `onMetaData` (or `@setDataFrame`) payload;
/// whatever does not parse is left out.
fn metadata(payload: &[u8]) -> Meta {
    let values = amf0::decode_all(payload).unwrap_or_default();
    let props = values.iter().find_map(|v| match v {
        Amf0Value::EcmaArray(p) | Amf0Value::Object(p) => Some(p),
        _ => None,
    });
    let mut meta = Meta::default();
    for (k, v) in props.into_iter().flatten() {
        match (k.as_str(), v) {
            ("width", Amf0Value::Number(n)) if n.is_finite() && *n >= 0.0 => meta.width = *n as u32,
            ("height", Amf0Value::Number(n)) if n.is_finite() && *n >= 0.0 => {
                meta.height = *n as u32
            }
            ("encoder", Amf0Value::String(s)) => meta.encoder = s.chars().take(128).collect(),
            _ => {}
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_and_encoder_come_from_on_meta_data() {
        let mut payload = Vec::new();
        amf0::encode_all(
            &[
                Amf0Value::string("@setDataFrame"),
                Amf0Value::string("onMetaData"),
                Amf0Value::EcmaArray(vec![
                    ("width".into(), Amf0Value::Number(1280.0)),
                    ("height".into(), Amf0Value::Number(720.0)),
                    ("encoder".into(), Amf0Value::string("Lavf59.27.100")),
                ]),
            ],
            &mut payload,
        )
        .expect("encodes");
        assert_eq!(
            metadata(&payload),
            Meta {
                width: 1280,
                height: 720,
                encoder: "Lavf59.27.100".into()
            }
        );
        assert_eq!(metadata(b"garbage"), Meta::default());
    }
}
