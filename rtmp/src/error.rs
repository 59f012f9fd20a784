//! The one error type of the RTMP layer.
//!
//! Every error here is fatal for the connection it came from: the caller logs it and
//! closes the socket. [`RtmpError::Rejected`] means the server said no (wrong key, name
//! taken): retrying soon makes no sense, unlike after a protocol hiccup.

use super::amf0::Amf0Error;

/// Why an RTMP connection cannot go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RtmpError {
    /// The peer asked for another RTMP version (6 is RTMPE encryption, which we do not speak).
    #[error("unsupported RTMP version {0} in the handshake (only 3, plain RTMP, is supported)")]
    UnsupportedVersion(u8),

    /// A Set Chunk Size of 0 or with the top bit set.
    #[error("invalid chunk size {0} (must be 1..=0x7FFFFFFF)")]
    InvalidChunkSize(u32),

    /// A message longer than the configured limit: refused before anything is allocated.
    #[error("message of {length} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { length: u64, max: u32 },

    /// A chunk of type 1, 2 or 3 on a chunk stream that never had a type 0 header.
    #[error("chunk stream {csid}: type {fmt} chunk header without a previous header")]
    MissingPreviousHeader { csid: u32, fmt: u8 },

    /// A full header (type 0, 1, 2) in the middle of a message on the same chunk stream.
    #[error("chunk stream {csid}: type {fmt} chunk header in the middle of a message")]
    HeaderInsideMessage { csid: u32, fmt: u8 },

    /// More chunk streams than the configured limit (each may hold a partial message).
    #[error("too many chunk streams in use (limit {0})")]
    TooManyChunkStreams(usize),

    /// Incomplete messages over all chunk streams hold more than the configured limit.
    #[error("more than {0} bytes of incomplete messages buffered")]
    TooMuchBuffered(usize),

    /// A chunk stream id we cannot write (valid ids are 2..=65599).
    #[error("invalid chunk stream id {0} (must be 2..=65599)")]
    InvalidChunkStreamId(u32),

    /// A message whose body does not match its type.
    #[error("malformed {kind} message: {reason}")]
    MalformedMessage { kind: &'static str, reason: String },

    /// An AMF0 body that does not decode (or a value that cannot be encoded).
    #[error("AMF0: {0}")]
    Amf0(#[from] Amf0Error),

    /// The peer broke the command sequence (e.g. publish before connect).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// The server refused us: `_error` to connect/createStream, or an error-level
    /// `onStatus` such as `NetStream.Publish.BadName`. Retrying at once will not help.
    #[error("rejected by the server: {code}: {description}")]
    Rejected { code: String, description: String },

    /// The caller used the connection out of order (e.g. sent media before `Published`).
    #[error("invalid use of the connection: {0}")]
    InvalidState(String),
}

impl RtmpError {
    pub(crate) fn malformed(kind: &'static str, reason: impl Into<String>) -> Self {
        RtmpError::MalformedMessage {
            kind,
            reason: reason.into(),
        }
    }
}
