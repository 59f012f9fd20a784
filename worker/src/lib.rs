//! pushcast's data plane: RTMP ingest, the fan-out hub, push sessions.
#![forbid(unsafe_code)]

pub mod config;
pub mod forward;
pub mod hub;
pub mod ingest;
pub mod ingest_limits;
pub mod lease;
pub mod live;
pub mod push;
pub mod reconnect;
pub mod runner;
pub mod server;
pub mod service;
pub mod stale;
pub mod status;
pub mod stream_health;
pub mod tracks;

pub use config::WorkerArgs;
pub use server::{Worker, start};
