//! RTMP protocol (sans-IO): handshake, chunk stream, AMF0, messages, and the ingest
//! (server) and publish (client) connection state machines.
//!
//! We write this ourselves instead of using rml_rtmp 0.8 because its chunk deserializer
//! keeps one partial-message buffer for all chunk streams (messages interleaved across
//! chunk streams, which is legal RTMP, come out corrupted, and a debug build panics on
//! the resulting subtraction underflow), it ignores aggregate messages, and its client
//! never sends `releaseStream`/`FCPublish`. The proof is the test
//! `chunk::tests::rml_rtmp_fails_on_interleaved_chunk_streams`.
//!
//! Layers, each usable on its own:
//! - [`handshake`]: C0/C1/C2 ↔ S0/S1/S2 (simple handshake, version 3).
//! - [`chunk`]: [`ChunkDecoder`] (bytes → [`RawMessage`]) and [`ChunkEncoder`]
//!   ([`RawMessage`] → chunks in an [`OutBuf`]).
//! - [`amf0`]: [`Amf0Value`] encode/decode.
//! - [`message`]: [`RawMessage`] ↔ typed [`Message`] (control, media, commands;
//!   aggregates split).
//! - [`connection`]: [`ServerConnection`] and [`ClientConnection`].
//!
//! # Driving a connection
//! No sockets here: the I/O task owns the socket and the connection, and loops:
//! 1. read bytes → `conn.handle_input(&bytes)?` → act on the returned events;
//! 2. write everything from `conn.take_outbound()` (a `Vec<Bytes>` of segments, in
//!    order: one `write_vectored`/`write_all` pass; large frame payloads are refcounted
//!    slices, not copies);
//! 3. for a client, call `send_frame` for each frame to send, then flush as in 2 —
//!    queuing many frames before one flush coalesces them into one write.
//!
//! Methods that answer an event (`accept_publish`, `reject_publish`, `unpublish`) also
//! only queue bytes: flush after them too. Any `Err` is fatal for the connection;
//! [`RtmpError::Rejected`] is a refusal (bad key, name in use), anything else a
//! protocol error.
//!
//! ```
//! use pushcast_media::{Frame, FrameKind};
//! use pushcast_rtmp::{ClientConfig, ClientEvent, ClientConnection, ServerConfig, ServerEvent, ServerConnection};
//!
//! fn flat(segments: Vec<bytes::Bytes>) -> Vec<u8> {
//!     segments.concat()
//! }
//!
//! let mut server = ServerConnection::new(ServerConfig::default());
//! let mut client = ClientConnection::new(ClientConfig::new("live", "rtmp://127.0.0.1/live", "key?token=1"));
//! let frame = Frame { kind: FrameKind::Video, timestamp_ms: 0, payload: bytes::Bytes::from_static(&[0x17, 0, 0, 0, 0]) };
//! let mut received = Vec::new();
//! // Shuttle bytes both ways until the frame arrives (a real driver uses a socket).
//! for _ in 0..10 {
//!     for event in server.handle_input(&flat(client.take_outbound()))? {
//!         match event {
//!             ServerEvent::PublishRequested(req) => {
//!                 assert_eq!((req.app.as_str(), req.stream_name.as_str()), ("live", "key"));
//!                 server.accept_publish(req.stream_id)?; // or reject_publish(...)
//!             }
//!             ServerEvent::Media(f) => received.push(f),
//!             _ => {}
//!         }
//!     }
//!     for event in client.handle_input(&flat(server.take_outbound()))? {
//!         if let ClientEvent::Published { .. } = event {
//!             client.send_frame(&frame)?;
//!         }
//!     }
//! }
//! assert_eq!(received, vec![frame]);
//! # Ok::<(), pushcast_rtmp::RtmpError>(())
//! ```
#![forbid(unsafe_code)]

pub mod amf0;
pub mod chunk;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod message;
mod reader;

pub use amf0::{Amf0Error, Amf0Value};
pub use chunk::{ChunkDecoder, ChunkEncoder, DecoderConfig, OutBuf, RawMessage};
pub use connection::client::{ClientConfig, ClientConnection, ClientEvent};
pub use connection::server::{
    ConnectInfo, PublishRequest, RejectCode, ServerConfig, ServerConnection, ServerEvent,
};
pub use error::RtmpError;
pub use handshake::{Handshake, HandshakeStatus};
pub use message::{Command, Message, RtmpMessage, UserControlEvent};
