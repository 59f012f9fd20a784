//! Media as pushcast carries it, sans I/O: the [`Frame`] (an FLV tag body, parsed once at
//! ingest and shared by every destination), the one table of codec ids and names
//! ([`codec`]), and the one timestamp rebaser every push runs its frames through
//! ([`timeline::Rebaser`]).
//!
//! This crate knows nothing of sockets, tasks or logging, so the protocol crates above it
//! (`pushcast-rtmp`, `pushcast-mpegts`) can be fuzzed and reused on their own.
#![forbid(unsafe_code)]

pub mod codec;
pub mod frame;
pub mod tag;
pub mod timeline;

pub use codec::{AudioCodec, VideoCodec};
pub use frame::{Frame, FrameKind};
pub use tag::{Codec, PacketType, Tag, normalize, normalized_codec, split_tracks};
pub use timeline::Rebaser;
