//! pushcast's data plane: RTMP ingest, the fan-out hub, push sessions.
#![forbid(unsafe_code)]

pub mod media;
pub mod mpegts;
pub mod rtmp;
