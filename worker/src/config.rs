//! The worker's settings: flags, `PUSHCAST_*` environment variables, config file keys.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// RTMP ingest: encoders publish rtmp://HOST:PORT/{app}/{stream}.
    #[arg(long, env = "PUSHCAST_RTMP_ADDR", default_value = "0.0.0.0:1935")]
    pub rtmp_addr: SocketAddr,

    /// RTMPS ingest (RTMP over TLS, its own port): needs --rtmps-cert and --rtmps-key.
    #[arg(long, env = "PUSHCAST_RTMPS_ADDR", value_name = "ADDR")]
    pub rtmps_addr: Option<SocketAddr>,

    /// Certificate chain (PEM) of the RTMPS ingest.
    #[arg(long, env = "PUSHCAST_RTMPS_CERT", value_name = "FILE")]
    pub rtmps_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --rtmps-cert.
    #[arg(long, env = "PUSHCAST_RTMPS_KEY", value_name = "FILE")]
    pub rtmps_key: Option<std::path::PathBuf>,

    /// SRT ingest (MPEG-TS over SRT, H.264 + AAC): encoders publish
    /// srt://HOST:PORT?streamid=#!::r=APP/STREAM_OR_KEY,m=publish. Off unless set.
    #[arg(long, env = "PUSHCAST_SRT_ADDR", value_name = "ADDR")]
    pub srt_addr: Option<SocketAddr>,

    /// Passphrase every SRT publisher must use (AES-128; 10 to 79 characters).
    #[arg(
        long,
        env = "PUSHCAST_SRT_PASSPHRASE",
        value_name = "PASSPHRASE",
        hide_env_values = true
    )]
    pub srt_passphrase: Option<pushcast_runtime::cli::Secret>,

    /// SRT receive latency: the time SRT has to recover lost packets.
    #[arg(long, env = "PUSHCAST_SRT_LATENCY_MS", default_value_t = 120)]
    pub srt_latency_ms: u64,

    /// gRPC TLS of WorkerService (the shared `--grpc-tls-*` flags, copied here by the
    /// binary).
    #[arg(skip)]
    pub grpc_tls: pushcast_runtime::tls::GrpcTlsArgs,

    /// Trust for https callback receivers (the shared `--webhook-ca-file`, copied here by
    /// the binary).
    #[arg(skip)]
    pub webhook_tls: pushcast_runtime::tls::WebhookTlsArgs,

    /// Host name or IP other nodes reach this worker at (default: the bound IP, or the
    /// node id when bound to all interfaces).
    #[arg(long, env = "PUSHCAST_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,

    /// Most RTMP/RTMPS ingest connections open at once (0 = no limit); one more is closed
    /// unanswered and counted (`pushcast_ingest_refused_total{reason="connection limit"}`).
    #[arg(long, env = "PUSHCAST_MAX_INGEST_CONNECTIONS", default_value_t = 4096)]
    pub max_ingest_connections: usize,

    /// Most ingest connections open at once from one IP address (0 = no limit). Off by
    /// default: behind a NAT or a load balancer that does not keep client addresses
    /// every encoder shares one, and forwards from another worker count here too.
    #[arg(
        long,
        env = "PUSHCAST_MAX_INGEST_CONNECTIONS_PER_IP",
        default_value_t = 0
    )]
    pub max_ingest_connections_per_ip: usize,

    /// Largest RTMP message (a frame) an admitted publisher may send, in bytes. Before
    /// its publish is admitted a connection may send no message over 64 KiB.
    #[arg(long, env = "PUSHCAST_MAX_MESSAGE_BYTES", default_value_t = crate::ingest_limits::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: u32,

    /// Most push sessions this worker runs at once (0 = no limit).
    #[arg(long, env = "PUSHCAST_MAX_SESSIONS", default_value_t = 0)]
    pub max_sessions: u32,

    /// On SIGTERM, how long live publishes may go on before the worker stops anyway
    /// (no new publish is accepted meanwhile), in seconds.
    #[arg(long, env = "PUSHCAST_DRAIN_GRACE_SECS", default_value_t = 3600)]
    pub drain_grace_secs: u64,

    /// TTL of the worker's lease in the store, in seconds.
    #[arg(long, env = "PUSHCAST_LEASE_TTL_SECS", default_value_t = 5)]
    pub lease_ttl_secs: u64,

    /// How long a push may take to connect, in milliseconds.
    #[arg(long, env = "PUSHCAST_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub connect_timeout_ms: u64,

    /// How long a destination may stop reading before its session fails, in milliseconds.
    #[arg(long, env = "PUSHCAST_SEND_TIMEOUT_MS", default_value_t = 2000)]
    pub send_timeout_ms: u64,

    /// A push whose bytes do not move for this long while its source is live is stalled:
    /// reported (`lastError: stalled: ...`), counted and connected again. 0: never. (A
    /// destination that stops reading is caught sooner, by the send timeout.)
    #[arg(long, env = "PUSHCAST_STALL_TIMEOUT_MS", default_value_t = 5000)]
    pub stall_timeout_ms: u64,

    /// The gathering window of push writes, in milliseconds: after a write, a push lets
    /// frames gather this long and writes them in one go (fewer syscalls and wakeups per
    /// destination: less CPU at high fan-out), at the price of up to this much extra delay
    /// at the destination. 0 writes every frame as it comes. A session's connect,
    /// handshake, commands and first keyframe never wait for it.
    #[arg(long, env = "PUSHCAST_WRITE_INTERVAL_MS", default_value_t = 100)]
    pub write_interval_ms: u64,

    /// Extra CA certificate (PEM) trusted for rtmps:// destinations, besides the web PKI.
    #[arg(long, env = "PUSHCAST_PUSH_CA_FILE", value_name = "FILE")]
    pub push_ca_file: Option<std::path::PathBuf>,
}

impl WorkerArgs {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs.max(1))
    }
}
