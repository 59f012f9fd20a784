//! etcd store for distributed mode.
//!
//! Why it looks like this:
//! - **Every call is bounded** by the request timeout and every transport failure becomes
//!   [`StoreError::Unavailable`], so the API can answer 503 within a few seconds when etcd
//!   is down. The gRPC channel connects lazily and reconnects on the next call, so the
//!   same [`EtcdStore`] recovers by itself when etcd comes back.
//! - **No channel-wide request timeout**: tonic's would also cut long-lived watch
//!   streams; unary calls are bounded with `tokio::time::timeout` instead, and watches
//!   rely on HTTP/2 keep-alive to notice a dead peer.
//! - **HTTP/2 pings only while streams are open** (`keep_alive_while_idle(false)`), at
//!   most every 10 s: etcd's server policy (5 s minimum, no pings without streams) answers
//!   more eager pings with GOAWAY "too_many_pings".
//! - **Keys live under a prefix** (e.g. `/pushcast/`); the trait sees keys relative to it.
//! - **Watches are established before `watch()` returns** (the server's `created`
//!   answer is awaited), so "from now on" really starts before the caller's next write.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, KvClient, LeaseClient, PutOptions, TlsOptions, TxnOp, WatchClient, WatchOptions,
    WatchResponse,
};
use tonic::transport::{Certificate, Identity};

use crate::{
    Compare, KeyValue, LeaseId, Listing, Op, Result, Store, StoreError, Txn, TxnResult, WatchEvent,
    WatchStream,
};

/// Keys per range request when listing: keeps each response far below gRPC's message
/// size limit however large the values are, while reading all pages at one revision.
const LIST_PAGE: i64 = 500;
/// Attempts after a connection failure before a call gives up (about 0.6 s of backoff
/// in total): enough to find a live member among several, short enough that a call
/// fails fast when none is up.
const CONNECT_RETRIES: u32 = 6;
/// Decoding limit for responses (a watch response carries a whole revision, e.g. a
/// prefix delete of many keys).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The etcd store. Cheap to clone (the gRPC channel is shared).
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    client: Client,
    prefix: String,
    timeout: Duration,
    /// Each member's client URL, asked one by one by [`Store::quorum_lost`].
    endpoints: Arc<[String]>,
    options: ConnectOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How pushcast authenticates to etcd and checks etcd's certificate. `Debug` never shows
/// the password or the key.
#[derive(Clone, Default)]
pub struct EtcdCredentials {
    /// PEM of the CA(s) that signed etcd's server certificates. With https:// endpoints
    /// and no CA, the public web roots (Mozilla's list) are trusted.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// User name and password, for etcd with auth enabled.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl EtcdCredentials {
    /// Adds TLS and the user to `options`; endpoints must be all https:// when TLS is
    /// configured or used (one scheme for the cluster, so no member is reached in clear).
    fn apply(&self, endpoints: &[String], options: ConnectOptions) -> Result<ConnectOptions> {
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let tls_files = self.ca_pem.is_some() || self.identity.is_some();
        if https > 0 && https < endpoints.len() {
            return Err(StoreError::Internal(
                "etcd endpoints mix http:// and https://: use one scheme for every member".into(),
            ));
        }
        if tls_files && https == 0 {
            return Err(StoreError::Internal(
                "etcd TLS settings (CA, client certificate) need https:// endpoints".into(),
            ));
        }
        let mut options = options;
        if https > 0 {
            let mut tls = TlsOptions::new();
            tls = match &self.ca_pem {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_webpki_roots(),
            };
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        Ok(options)
    }
}

impl EtcdStore {
    /// Connects to etcd without TLS or auth: see [`EtcdStore::connect_with`].
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        request_timeout: Duration,
    ) -> Result<EtcdStore> {
        Self::connect_with(
            endpoints,
            prefix,
            request_timeout,
            &EtcdCredentials::default(),
        )
        .await
    }

    /// Connects to etcd and checks that it answers (the client itself connects lazily).
    ///
    /// `prefix` is prepended to every key (e.g. `/pushcast/`); `request_timeout` bounds
    /// every call of the store. Fails with [`StoreError::Unavailable`] if etcd does not
    /// answer a status request within `request_timeout`.
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        request_timeout: Duration,
        credentials: &EtcdCredentials,
    ) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(StoreError::Internal("no etcd endpoints given".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(request_timeout.min(Duration::from_secs(5)))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            .with_tcp_keepalive(Duration::from_secs(30))
            // A member cut off from the quorum fails calls (and cancels watches) instead
            // of serving stale data.
            .with_require_leader(true);
        let options = credentials.apply(endpoints, options)?;
        let client = match tokio::time::timeout(
            request_timeout,
            Client::connect(endpoints, Some(options.clone())),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(map_err("connect", e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {} did not answer within {request_timeout:?}",
                    endpoints.join(",")
                )));
            }
        };
        let store = EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            lease: client.lease_client(),
            client,
            prefix: prefix.to_string(),
            timeout: request_timeout,
            endpoints: endpoints.into(),
            options,
        };
        let maintenance = store.client.maintenance_client();
        store
            .call("status", || {
                let mut maintenance = maintenance.clone();
                async move { maintenance.status().await }
            })
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(m) | StoreError::Internal(m) => {
                    // etcd refuses a TLS 1.3 client without a certificate after the
                    // handshake: the client sees an alert, the connection closed or a
                    // broken pipe, depending on timing. A transport error past the TCP
                    // connect and the server's certificate check gets the hint.
                    let hint = if credentials.identity.is_none()
                        && endpoints.iter().all(|e| e.starts_with("https://"))
                        && m.contains("transport error")
                        && !["Connection refused", "invalid peer certificate", "dns error"]
                            .iter()
                            .any(|other| m.contains(other))
                    {
                        " (does etcd require a client certificate? --etcd-cert-file, --etcd-key-file)"
                    } else {
                        ""
                    };
                    StoreError::Unavailable(format!(
                        "etcd at {} is not ready: {m}{hint}",
                        endpoints.join(",")
                    ))
                }
                e => e,
            })?;
        // Status needs no permission: read one key of the prefix too, so a user without
        // access (or none, with auth on) fails here, at start, and not at the first write.
        let (kv, key) = (store.kv.clone(), prefix.to_string());
        store
            .call("read", || {
                let (mut kv, key) = (kv.clone(), key.clone());
                let options = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1);
                async move { kv.get(key, Some(options)).await }
            })
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(m) | StoreError::Internal(m) => StoreError::Unavailable(
                    format!("etcd refuses to let this process read {prefix}: {m}"),
                ),
                e => e,
            })?;
        tracing::info!(endpoints = %endpoints.join(","), prefix, "connected to etcd");
        Ok(store)
    }

    /// The key prefix of this store.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs one etcd call within the request timeout, mapping its errors.
    ///
    /// `attempt` is retried (with a short backoff, still within the timeout) when the
    /// channel could not connect to the endpoint it picked: the request was never sent,
    /// so this is safe for writes too. It matters with several endpoints: the balanced
    /// channel keeps handing requests to a dead member (its lazy connection reports
    /// "ready" and fails the call), so without the retry a third of the calls fail while
    /// one member of three is down.
    async fn call<T, F, Fut>(&self, op: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let run = async {
            let mut retries = 0u32;
            loop {
                match attempt().await {
                    Err(e) if is_connect_error(&e) && retries < CONNECT_RETRIES => {
                        retries += 1;
                        tracing::debug!(op, error = %e, retries, "etcd endpoint unreachable; retrying");
                        tokio::time::sleep(Duration::from_millis(10 << retries.min(4))).await;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result.map_err(|e| map_err(op, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd did not answer {op} within {:?}",
                self.timeout
            ))),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn kv_from(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: strip_prefix(&self.prefix, kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }

    fn txn_op(&self, op: &Op) -> TxnOp {
        match op {
            Op::Put { key, value, lease } => TxnOp::put(
                self.full_key(key),
                value.clone(),
                Some(PutOptions::new().with_lease(*lease)),
            ),
            Op::Delete(key) => TxnOp::delete(self.full_key(key), None),
            Op::DeletePrefix(prefix) => TxnOp::delete(
                self.full_key(prefix),
                Some(DeleteOptions::new().with_prefix()),
            ),
        }
    }

    fn compare(&self, c: &Compare) -> EtcdCompare {
        match c {
            // version is 0 exactly when the key does not exist.
            Compare::Absent(k) => EtcdCompare::version(self.full_key(k), CompareOp::Equal, 0),
            Compare::Present(k) => EtcdCompare::version(self.full_key(k), CompareOp::Greater, 0),
            Compare::ModRevision(k, rev) => {
                EtcdCompare::mod_revision(self.full_key(k), CompareOp::Equal, *rev)
            }
            // etcd fails a value compare on a missing key, as the trait wants.
            Compare::Value(k, v) => {
                EtcdCompare::value(self.full_key(k), CompareOp::Equal, v.clone())
            }
        }
    }

    /// One page-by-page range read at a single revision.
    async fn list_once(
        &self,
        prefix: &str,
    ) -> std::result::Result<(Vec<etcd_client::KeyValue>, i64), etcd_client::Error> {
        let start = self.full_key(prefix).into_bytes();
        let end = prefix_range_end(&start);
        let mut kv = self.kv.clone();
        let mut from = start;
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut resp = kv.get(from.clone(), Some(options)).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let page = resp.take_kvs();
            match page.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                    kvs.extend(page);
                }
                _ => {
                    kvs.extend(page);
                    break;
                }
            }
        }
        Ok((kvs, revision))
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty or all 0xff: to the end of the key space.
    vec![0]
}

fn strip_prefix(prefix: &str, key: &[u8]) -> Result<String> {
    let key = std::str::from_utf8(key)
        .map_err(|_| StoreError::Internal(format!("etcd key is not UTF-8: {key:?}")))?;
    key.strip_prefix(prefix)
        .map(str::to_string)
        .ok_or_else(|| StoreError::Internal(format!("etcd key {key:?} is outside {prefix:?}")))
}

/// Whether the channel failed to connect to an endpoint (so the request was not sent).
fn is_connect_error(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound && s.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Maps a client error: what says "etcd is not there (now)" becomes `Unavailable`
/// (503, retry later), what says "this request is wrong" becomes `Internal`.
fn map_err(op: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let mut msg = format!("etcd {op} failed: {:?}: {}", s.code(), s.message());
            let causes: Vec<String> = causes(std::error::Error::source(&s))
                .into_iter()
                .filter(|c| !msg.contains(c.as_str()))
                .collect();
            if !causes.is_empty() {
                msg.push_str(&format!(" ({})", causes.join(": ")));
            }
            match s.code() {
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::AlreadyExists
                | Code::NotFound
                | Code::Unimplemented => StoreError::Internal(msg),
                _ => StoreError::Unavailable(msg),
            }
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::Utf8Error(_) | E::InvalidMetadataValue(_) => {
            StoreError::Internal(format!("etcd {op}: {e}"))
        }
        e => StoreError::Unavailable(format!("etcd {op} failed: {e}")),
    }
}

/// An error's causes on one line, the innermost included: a TLS alert sits in an
/// `io::Error`, whose `source()` skips the error it wraps, so that is unwrapped by hand.
fn causes(first: Option<&(dyn std::error::Error + 'static)>) -> Vec<String> {
    let mut said: Vec<String> = Vec::new();
    let mut next = first;
    while let Some(err) = next {
        let text = err.to_string();
        if !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    said
}

/// What one etcd member said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Its port refuses connections: no etcd process there.
    Dead,
    /// It answers, without a leader.
    NoLeader,
    /// It answers, and follows (or is) a leader.
    Led,
    /// No answer in time, or an error that says nothing either way.
    Unknown,
}

/// How long one member gets to say what it is (see [`Store::quorum_lost`]).
const MEMBER_LOOK: Duration = Duration::from_millis(500);

/// Asks one member (a client URL) for its status, on a connection of its own.
async fn member_state(endpoint: &str, options: ConnectOptions) -> Member {
    let addr = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .trim_end_matches('/');
    let look = async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Member::Dead,
            Err(_) => return Member::Unknown,
            Ok(_) => {}
        }
        // The status of the member itself: served without a leader, unlike a read.
        let options = options.with_require_leader(false);
        let Ok(mut client) = Client::connect([endpoint], Some(options)).await else {
            return Member::Unknown;
        };
        match client.status().await {
            Ok(s) if s.leader() == 0 || s.errors().iter().any(|e| e.contains("no leader")) => {
                Member::NoLeader
            }
            Ok(_) => Member::Led,
            Err(_) => Member::Unknown,
        }
    };
    tokio::time::timeout(MEMBER_LOOK, look)
        .await
        .unwrap_or(Member::Unknown)
}

/// The first lease named by a transaction (to report which one was not found).
fn first_lease(txn: &Txn) -> LeaseId {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            Op::Put { lease, .. } if *lease != 0 => Some(*lease),
            _ => None,
        })
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = self.full_key(key);
        let resp = self
            .call("get", || {
                let (mut kv, key) = (self.kv.clone(), key.clone());
                async move { kv.get(key, None).await }
            })
            .await?;
        resp.kvs().first().map(|kv| self.kv_from(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let (kvs, revision) = self
            .call("list", || async {
                // A compaction between two pages invalidates the revision of the first
                // page: start over (still within the request timeout).
                let mut compacted = 0;
                loop {
                    match self.list_once(prefix).await {
                        Err(etcd_client::Error::GRpcStatus(s))
                            if s.code() == tonic::Code::OutOfRange && compacted < 3 =>
                        {
                            compacted += 1;
                        }
                        other => return other,
                    }
                }
            })
            .await?;
        let kvs = kvs
            .iter()
            .map(|kv| self.kv_from(kv))
            .collect::<Result<_>>()?;
        Ok(Listing { kvs, revision })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<i64> {
        let key = self.full_key(key);
        let resp = self
            .call("put", || {
                let (mut kv, key, value) = (self.kv.clone(), key.clone(), value.clone());
                async move {
                    let options = PutOptions::new().with_lease(lease);
                    match kv.put(key, value, Some(options)).await {
                        Err(e) if is_lease_not_found(&e) => {
                            Ok(Err(StoreError::LeaseNotFound(lease)))
                        }
                        other => other.map(Ok),
                    }
                }
            })
            .await??;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.full_key(key);
        let resp = self
            .call("delete", || {
                let (mut kv, key) = (self.kv.clone(), key.clone());
                async move { kv.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let ops = |ops: &[Op]| ops.iter().map(|op| self.txn_op(op)).collect::<Vec<_>>();
        let request = etcd_client::Txn::new()
            .when(
                txn.compares
                    .iter()
                    .map(|c| self.compare(c))
                    .collect::<Vec<_>>(),
            )
            .and_then(ops(&txn.success))
            .or_else(ops(&txn.failure));
        let lease = first_lease(&txn);
        let resp = self
            .call("txn", || {
                let (mut kv, request) = (self.kv.clone(), request.clone());
                async move {
                    match kv.txn(request).await {
                        Err(e) if is_lease_not_found(&e) => {
                            Ok(Err(StoreError::LeaseNotFound(lease)))
                        }
                        other => other.map(Ok),
                    }
                }
            })
            .await??;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let key = self.full_key(prefix);
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let (stream, created) = self
            .call("watch", || {
                let (mut client, key, options) = (self.watch.clone(), key.clone(), options.clone());
                async move {
                    let mut stream = client.watch(key, Some(options)).await?;
                    // Wait until the server has registered the watch.
                    loop {
                        match stream.message().await? {
                            Some(resp) if resp.created() => return Ok((stream, resp)),
                            Some(_) => continue,
                            None => {
                                return Err(etcd_client::Error::WatchError(
                                    "etcd closed the watch before creating it".into(),
                                ));
                            }
                        }
                    }
                }
            })
            .await?;
        let mut watcher = EtcdWatcher {
            stream,
            prefix: self.prefix.clone(),
            buf: VecDeque::new(),
            done: false,
        };
        watcher.absorb(created);
        Ok(crate::watch_stream(watcher))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let resp = self
            .call("lease grant", || {
                let mut lease = self.lease.clone();
                async move { lease.grant(secs, None).await }
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        // One round trip on a fresh keep-alive stream (the client reads the first answer
        // and reports a TTL of 0, i.e. an unknown lease, as "lease not found"). Dropping
        // the keeper and the stream closes it.
        self.call("lease keep-alive", || {
            let mut lease = self.lease.clone();
            async move {
                match lease.keep_alive(id).await {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if is_lease_not_found(&e) => Ok(Err(StoreError::LeaseNotFound(id))),
                    Err(e) => Err(e),
                }
            }
        })
        .await?
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        self.call("lease revoke", || {
            let mut lease = self.lease.clone();
            async move {
                match lease.revoke(id).await {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if is_lease_not_found(&e) => Ok(Err(StoreError::LeaseNotFound(id))),
                    Err(e) => Err(e),
                }
            }
        })
        .await?
    }

    async fn quorum_lost(&self) -> bool {
        let looks = self
            .endpoints
            .iter()
            .map(|e| member_state(e, self.options.clone()));
        let states = futures::future::join_all(looks).await;
        let n = states.len();
        let out = states
            .iter()
            .filter(|s| matches!(s, Member::Dead | Member::NoLeader))
            .count();
        let lost = n - out < n / 2 + 1;
        if lost {
            tracing::debug!(?states, "etcd has no quorum");
        }
        lost
    }

    async fn lease_ttl(&self, id: LeaseId) -> Result<Option<Duration>> {
        let resp = self
            .call("lease time-to-live", || {
                let mut lease = self.lease.clone();
                async move { lease.time_to_live(id, None).await }
            })
            .await?;
        // etcd answers -1 for a lease that expired or never was.
        Ok(u64::try_from(resp.ttl()).ok().map(Duration::from_secs))
    }

    async fn revision(&self) -> Result<i64> {
        let resp = self
            .call("revision", || {
                let (mut kv, key) = (self.kv.clone(), self.prefix.clone());
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }
}

/// State of one etcd watch stream. Dropping it drops the gRPC stream, which cancels the
/// watch on the server.
struct EtcdWatcher {
    stream: etcd_client::WatchStream,
    prefix: String,
    buf: VecDeque<Result<WatchEvent>>,
    done: bool,
}

impl crate::Watcher for EtcdWatcher {
    async fn next_item(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(item) = self.buf.pop_front() {
                if item.is_err() {
                    self.done = true;
                }
                return Some(item);
            }
            match self.stream.message().await {
                Ok(Some(resp)) => self.absorb(resp),
                Ok(None) => {
                    self.done = true;
                    return Some(Err(StoreError::Unavailable(
                        "etcd closed the watch stream".into(),
                    )));
                }
                Err(e) => {
                    self.done = true;
                    tracing::debug!(error = %e, "etcd watch broke");
                    return Some(Err(map_err("watch", e)));
                }
            }
        }
    }
}

impl EtcdWatcher {
    /// Queues the events of one response, then the error that ends the watch, if any.
    fn absorb(&mut self, resp: WatchResponse) {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let item = strip_prefix(&self.prefix, kv.key()).map(|key| match event.event_type() {
                EventType::Put => WatchEvent::Put(KeyValue {
                    key,
                    value: kv.value().to_vec(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                    lease: kv.lease(),
                }),
                EventType::Delete => WatchEvent::Delete {
                    key,
                    mod_revision: kv.mod_revision(),
                },
            });
            let failed = item.is_err();
            self.buf.push_back(item);
            if failed {
                return;
            }
        }
        if resp.compact_revision() != 0 {
            self.buf
                .push_back(Err(StoreError::Compacted(resp.compact_revision())));
        } else if resp.canceled() {
            self.buf.push_back(Err(StoreError::Unavailable(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            ))));
        }
    }
}
