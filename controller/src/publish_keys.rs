//! Publish keys: the secret an encoder publishes a stream with (the API calls it the
//! stream key: `:streamKey`, `StreamKeyService`). Keys are derived from a cluster secret
//! and a per-stream nonce; see [`pushcast_proto::publish_keys`] for why nothing usable
//! is stored.

use std::sync::Arc;

use pushcast_proto::ApiError;
use pushcast_proto::keys;
use pushcast_proto::model::LiveStream;
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
    pub live: bool,
    pub created_ms: i64,
}

impl Issued {
    pub fn to_ome_json(&self) -> serde_json::Value {
        serde_json::json!({
            "stream": self.stream,
            "rtmpUrl": self.rtmp_url,
            "streamKey": self.stream_key,
            "streamUrl": self.stream_url,
            "live": self.live,
            "createdTime": time::format_ms(Some(self.created_ms)),
        })
    }

    pub fn to_proto(&self) -> v1::GetStreamKeyResponse {
        v1::GetStreamKeyResponse {
            stream: self.stream.clone(),
            rtmp_url: self.rtmp_url.clone(),
            stream_key: self.stream_key.clone(),
            stream_url: self.stream_url.clone(),
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
            secret: Arc::default(),
        }
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
                return Ok(self.issued(
                    vhost,
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
                return Ok(self.issued(vhost, app, stream, &key, live, rec.created_ms));
            }
        }
        Err(ApiError::unavailable(
            "The stream key changed concurrently, try again",
        ))
    }

    fn issued(
        &self,
        _vhost: &str,
        app: &str,
        stream: &str,
        key: &str,
        live: bool,
        created_ms: i64,
    ) -> Issued {
        let rtmp_url = format!("{}/{app}", self.public_ingest_url);
        Issued {
            stream: stream.to_string(),
            stream_url: format!("{rtmp_url}/{key}"),
            rtmp_url,
            stream_key: key.to_string(),
            live,
            created_ms,
        }
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
