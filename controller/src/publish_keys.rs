//! Publish keys: the secret an encoder publishes a stream with (the API calls it the
//! stream key: `:streamKey`, `StreamKeyService`). Keys are derived from a cluster secret
//! and a per-stream nonce; see [`pushcast_proto::publish_keys`] for why nothing usable
//! is stored.

use std::sync::Arc;

use pushcast_proto::ApiError;
use pushcast_proto::keys;
use pushcast_proto::model::{LiveStream, WorkerInfo};
use pushcast_proto::publish_keys::{PublishKeyRecord, derive, lookup_hash};
use pushcast_proto::{time, v1};
use pushcast_store::{Compare, Op, Store, Txn};
use rand::RngCore;
use tokio::sync::OnceCell;

use crate::apps::Apps;
use crate::store_error::{api_error, decode, encode};
use crate::worker_clients::WorkerClients;

/// A stream's credentials as the API returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub stream: String,
    pub rtmp_url: String,
    pub stream_key: String,
    pub stream_url: String,
    /// `rtmps://<ingest host>/<app>` and it + `/key`, where the workers serve RTMPS.
    pub rtmps_url: Option<String>,
    pub streams_url: Option<String>,
    pub live: bool,
    pub created_ms: i64,
}

impl Issued {
    pub fn to_ome_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "stream": self.stream,
            "rtmpUrl": self.rtmp_url,
            "streamKey": self.stream_key,
            "streamUrl": self.stream_url,
            "live": self.live,
            "createdTime": time::format_ms(Some(self.created_ms)),
        });
        // Additive: only where RTMPS is served, so the answer is unchanged elsewhere.
        if let (Some(obj), Some(rtmps), Some(streams)) =
            (v.as_object_mut(), &self.rtmps_url, &self.streams_url)
        {
            obj.insert("rtmpsUrl".into(), rtmps.clone().into());
            obj.insert("streamsUrl".into(), streams.clone().into());
        }
        v
    }

    pub fn to_proto(&self) -> v1::GetStreamKeyResponse {
        v1::GetStreamKeyResponse {
            stream: self.stream.clone(),
            rtmp_url: self.rtmp_url.clone(),
            stream_key: self.stream_key.clone(),
            stream_url: self.stream_url.clone(),
            rtmps_url: self.rtmps_url.clone().unwrap_or_default(),
            streams_url: self.streams_url.clone().unwrap_or_default(),
            live: self.live,
            created_time: Some(time::to_timestamp(self.created_ms)),
        }
    }
}

#[derive(Clone)]
pub struct PublishKeys {
    store: Arc<dyn Store>,
    apps: Apps,
    clients: WorkerClients,
    /// e.g. `rtmp://live.example.com` (the app is appended).
    public_ingest_url: String,
    /// e.g. `rtmps://live.example.com:443`; `None`: derived from the workers' RTMPS ports.
    public_rtmps_url: Option<String>,
    secret: Arc<OnceCell<Vec<u8>>>,
}

fn missing_stream() -> ApiError {
    ApiError::bad_request("There is no required parameter [ stream]")
}

impl PublishKeys {
    pub fn new(
        store: Arc<dyn Store>,
        apps: Apps,
        clients: WorkerClients,
        public_ingest_url: String,
    ) -> Self {
        PublishKeys {
            store,
            apps,
            clients,
            public_ingest_url: public_ingest_url.trim_end_matches('/').to_string(),
            public_rtmps_url: None,
            secret: Arc::default(),
        }
    }

    /// Where encoders reach the RTMPS ingest (`--public-ingest-rtmps-url`).
    pub fn with_public_rtmps_url(mut self, url: Option<String>) -> Self {
        self.public_rtmps_url = url.map(|u| u.trim_end_matches('/').to_string());
        self
    }

    /// The ingest URLs (RTMP, and RTMPS where served) an encoder of `vhost` publishes
    /// to: with the vhost's first plain host name in place of the public host, so the
    /// publish lands in that vhost.
    async fn ingest_urls(&self, vhost: &str) -> Result<(String, Option<String>), ApiError> {
        let rtmps = match &self.public_rtmps_url {
            Some(url) => Some(url.clone()),
            None => {
                let workers = self.store.list(keys::WORKERS).await.map_err(api_error)?;
                workers
                    .kvs
                    .iter()
                    .filter_map(|kv| serde_json::from_slice::<WorkerInfo>(&kv.value).ok())
                    .filter(|w| !w.draining)
                    .find_map(|w| w.rtmps_addr)
                    .and_then(|addr| {
                        let port = addr.rsplit_once(':')?.1.parse::<u16>().ok()?;
                        with_scheme_and_port(&self.public_ingest_url, "rtmps", port)
                    })
            }
        };
        let host = self
            .apps
            .vhost(vhost)
            .await?
            .hosts
            .into_iter()
            .find(|h| !h.starts_with("*."));
        let place = |url: &str| match &host {
            Some(h) => with_host(url, h).unwrap_or_else(|| url.to_string()),
            None => url.to_string(),
        };
        Ok((place(&self.public_ingest_url), rtmps.as_deref().map(place)))
    }

    /// The cluster's key secret: created once (first writer wins), then read.
    async fn secret(&self) -> Result<&[u8], ApiError> {
        let store = self.store.clone();
        self.secret
            .get_or_try_init(|| async move {
                let mut fresh = [0u8; 32];
                rand::rng().fill_bytes(&mut fresh);
                let txn = Txn::new()
                    .when(Compare::Absent(keys::STREAM_KEY_SECRET.to_string()))
                    .and_then(Op::put(
                        keys::STREAM_KEY_SECRET,
                        hex::encode(fresh).into_bytes(),
                    ));
                store.txn(txn).await.map_err(api_error)?;
                let kv = store
                    .get(keys::STREAM_KEY_SECRET)
                    .await
                    .map_err(api_error)?
                    .ok_or_else(|| ApiError::internal("the stream key secret vanished"))?;
                hex::decode(&kv.value)
                    .map_err(|_| ApiError::internal("the stream key secret is corrupt"))
            })
            .await
            .map(Vec::as_slice)
    }

    async fn live(
        &self,
        vhost: &str,
        app: &str,
        stream: &str,
    ) -> Result<Option<LiveStream>, ApiError> {
        let key = keys::stream(vhost, app, stream);
        match self.store.get(&key).await.map_err(api_error)? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Issues or returns the stream's key; `regenerate` replaces it.
    pub async fn get(
        &self,
        vhost: &str,
        app: &str,
        stream: Option<&str>,
        regenerate: bool,
    ) -> Result<Issued, ApiError> {
        self.apps.require(vhost, app).await?;
        let stream = stream
            .filter(|s| !s.is_empty())
            .ok_or_else(missing_stream)?;
        let secret = self.secret().await?.to_vec();
        let urls = self.ingest_urls(vhost).await?;
        let record_key = keys::publish_key(vhost, app, stream);
        for _ in 0..5 {
            let live = self.live(vhost, app, stream).await?.is_some();
            let current = self.store.get(&record_key).await.map_err(api_error)?;
            let old: Option<PublishKeyRecord> = match &current {
                Some(kv) => Some(decode(&record_key, &kv.value)?),
                None => None,
            };
            if let Some(rec) = &old
                && !regenerate
            {
                return Ok(issued(
                    &urls,
                    app,
                    stream,
                    &derive(&secret, vhost, app, stream, &rec.nonce),
                    live,
                    rec.created_ms,
                ));
            }
            if regenerate && live {
                return Err(ApiError::conflict(
                    "Can not generate stream key, live stream in process",
                ));
            }
            let mut nonce = [0u8; 16];
            rand::rng().fill_bytes(&mut nonce);
            let rec = PublishKeyRecord {
                nonce: hex::encode(nonce),
                created_ms: time::now_ms(),
            };
            let key = derive(&secret, vhost, app, stream, &rec.nonce);
            let mut txn = Txn::new()
                .when(Compare::ModRevision(
                    record_key.clone(),
                    current.as_ref().map_or(0, |kv| kv.mod_revision),
                ))
                .and_then(Op::put(record_key.clone(), encode(&rec)?))
                .and_then(Op::put(
                    keys::publish_key_lookup(vhost, app, &lookup_hash(&key)),
                    stream.as_bytes().to_vec(),
                ));
            if let Some(old) = &old {
                let old_key = derive(&secret, vhost, app, stream, &old.nonce);
                txn = txn.and_then(Op::delete(keys::publish_key_lookup(
                    vhost,
                    app,
                    &lookup_hash(&old_key),
                )));
            }
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                tracing::info!(
                    vhost,
                    app,
                    stream,
                    regenerated = old.is_some(),
                    "stream key issued"
                );
                return Ok(issued(&urls, app, stream, &key, live, rec.created_ms));
            }
        }
        Err(ApiError::unavailable(
            "The stream key changed concurrently, try again",
        ))
    }

    /// Revokes the stream's key; with `disconnect`, a live publish is closed too.
    pub async fn delete(
        &self,
        vhost: &str,
        app: &str,
        stream: Option<&str>,
        disconnect: bool,
    ) -> Result<(), ApiError> {
        self.apps.require(vhost, app).await?;
        let stream = stream
            .filter(|s| !s.is_empty())
            .ok_or_else(missing_stream)?;
        let record_key = keys::publish_key(vhost, app, stream);
        let Some(kv) = self.store.get(&record_key).await.map_err(api_error)? else {
            return Err(ApiError::not_found(format!(
                "Could not find the stream key of '{stream}': [{vhost}/{app}]"
            )));
        };
        let rec: PublishKeyRecord = decode(&record_key, &kv.value)?;
        let secret = self.secret().await?.to_vec();
        let key = derive(&secret, vhost, app, stream, &rec.nonce);
        let txn = Txn::new()
            .when(Compare::ModRevision(record_key.clone(), kv.mod_revision))
            .and_then(Op::delete(record_key))
            .and_then(Op::delete(keys::publish_key_lookup(
                vhost,
                app,
                &lookup_hash(&key),
            )));
        if !self.store.txn(txn).await.map_err(api_error)?.succeeded {
            return Err(ApiError::unavailable(
                "The stream key changed concurrently, try again",
            ));
        }
        tracing::info!(vhost, app, stream, disconnect, "stream key revoked");
        if disconnect && let Some(live) = self.live(vhost, app, stream).await? {
            self.disconnect(&live).await?;
        }
        Ok(())
    }

    async fn disconnect(&self, live: &LiveStream) -> Result<(), ApiError> {
        let wkey = keys::worker(&live.worker);
        let Some(kv) = self.store.get(&wkey).await.map_err(api_error)? else {
            return Ok(());
        };
        let info: pushcast_proto::model::WorkerInfo = decode(&wkey, &kv.value)?;
        let mut client = self
            .clients
            .client(&info.grpc_addr)
            .ok_or_else(|| ApiError::internal("bad worker address"))?;
        client
            .disconnect_stream(v1::DisconnectStreamRequest {
                vhost: live.vhost.clone(),
                app: live.app.clone(),
                stream: live.stream.clone(),
            })
            .await
            .map_err(|e| {
                ApiError::unavailable(format!(
                    "cannot reach worker {}: {}",
                    live.worker,
                    e.message()
                ))
            })?;
        Ok(())
    }
}

/// The answer for `stream` of `app` at `urls` (RTMP base, RTMPS base).
fn issued(
    urls: &(String, Option<String>),
    app: &str,
    stream: &str,
    key: &str,
    live: bool,
    created_ms: i64,
) -> Issued {
    let rtmp_url = format!("{}/{app}", urls.0);
    let rtmps_url = urls.1.as_ref().map(|base| format!("{base}/{app}"));
    Issued {
        stream: stream.to_string(),
        stream_url: format!("{rtmp_url}/{key}"),
        rtmp_url,
        streams_url: rtmps_url.as_ref().map(|u| format!("{u}/{key}")),
        rtmps_url,
        stream_key: key.to_string(),
        live,
        created_ms,
    }
}

/// `url` with its host replaced (scheme, port and path kept); `None` if it does not parse.
fn with_host(url: &str, host: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    u.set_host(Some(host)).ok()?;
    Some(u.as_str().trim_end_matches('/').to_string())
}

/// `url`'s host with another scheme and port (`rtmp://h:1935` → `rtmps://h:1936`).
fn with_scheme_and_port(url: &str, scheme: &str, port: u16) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn ingest_urls_take_a_vhost_host_and_an_rtmps_port() {
        assert_eq!(
            with_host("rtmp://ingest.example.com:1935", "live.studio.com").as_deref(),
            Some("rtmp://live.studio.com:1935")
        );
        assert_eq!(
            with_host("rtmp://ingest.example.com", "127.0.0.1").as_deref(),
            Some("rtmp://127.0.0.1")
        );
        assert_eq!(
            with_scheme_and_port("rtmp://ingest.example.com:1935", "rtmps", 1936).as_deref(),
            Some("rtmps://ingest.example.com:1936")
        );
        assert_eq!(
            with_scheme_and_port("rtmp://[::1]:1935", "rtmps", 443).as_deref(),
            Some("rtmps://[::1]:443")
        );
        assert_eq!(with_host("not a url", "x"), None);
    }
}
