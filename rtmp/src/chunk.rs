//! The RTMP chunk stream: messages cut into chunks, interleaved over one connection.
//!
//! Each chunk starts with a basic header (format 0–3, chunk stream id) and, depending on
//! the format, a message header that is compressed against the previous chunk *of the
//! same chunk stream*: type 0 carries everything, type 1 omits the message stream id,
//! type 2 carries only a timestamp delta, type 3 nothing. A peer may interleave chunks of
//! messages on different chunk streams (audio on one, video on another), so the decoder
//! keeps a header and a partial message per chunk stream id — unlike rml_rtmp 0.8, which
//! keeps one partial buffer for all of them and corrupts such streams.
//!
//! Untrusted input can never make the decoder panic, underflow, or allocate more than it
//! received: message lengths above [`DecoderConfig::max_message_size`] are refused as soon
//! as the header is read, the number of chunk streams is capped, and buffers grow with
//! the data that actually arrives.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::RtmpError;
use super::reader::Reader;

/// Chunk size both sides start with (RTMP spec).
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size the spec allows (31 bits).
pub const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
/// Default limit on one message: far above any real video frame, far below "100 MB".
pub const DEFAULT_MAX_MESSAGE_SIZE: u32 = 16 * 1024 * 1024;
/// Default limit on chunk streams in use; real peers use fewer than ten.
pub const DEFAULT_MAX_CHUNK_STREAMS: usize = 64;
/// Default limit on bytes of incomplete messages held at once.
pub const DEFAULT_MAX_PARTIAL_BYTES: usize = 32 * 1024 * 1024;
/// Largest message length a chunk header can express (24 bits).
pub const MAX_WIRE_MESSAGE_SIZE: u32 = 0x00FF_FFFF;
/// Largest chunk stream id (3-byte basic header).
pub const MAX_CSID: u32 = 65_599;

const EXTENDED_TIMESTAMP: u32 = 0x00FF_FFFF;

/// Chunk stream ids this crate writes on. Any id works; these match what ffmpeg and
/// nginx-rtmp use and keep audio and video apart so that their headers compress well.
pub mod csid {
    /// Protocol control and user control messages (required by the spec).
    pub const PROTOCOL_CONTROL: u32 = 2;
    /// NetConnection commands (connect, createStream, ...).
    pub const COMMAND: u32 = 3;
    pub const AUDIO: u32 = 4;
    /// NetStream commands (publish, onStatus) and data messages (metadata).
    pub const STREAM: u32 = 5;
    pub const VIDEO: u32 = 6;
}

/// One complete RTMP message as carried by the chunk stream, body still undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Chunk stream it arrived on / is to be written on.
    pub csid: u32,
    /// Absolute timestamp in milliseconds (32-bit, wraps).
    pub timestamp: u32,
    /// Message type id (1–22).
    pub type_id: u8,
    /// Message stream id (0 for the connection, N for a createStream'd stream).
    pub stream_id: u32,
    pub payload: Bytes,
}

/// Limits applied to what a peer may make us buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Longest message accepted; a longer length claim is an error at header time.
    pub max_message_size: u32,
    /// Most chunk streams tracked at once.
    pub max_chunk_streams: usize,
    /// Most bytes held in messages still being reassembled, over all chunk streams:
    /// without it, a peer could park a nearly complete maximum-size message on each of
    /// `max_chunk_streams` streams.
    pub max_partial_bytes: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_chunk_streams: DEFAULT_MAX_CHUNK_STREAMS,
            max_partial_bytes: DEFAULT_MAX_PARTIAL_BYTES,
        }
    }
}

impl DecoderConfig {
    /// The limits for a peer that has only commands and control messages to send (a few
    /// hundred bytes each): an encoder whose publish is not admitted yet (`connect`,
    /// `createStream`, `publish`), and a server we publish to (`_result`, `onStatus`,
    /// acknowledgements). 64 KiB per message and 128 KiB of partial messages are plenty,
    /// and what such a peer can make us hold is bounded by them (the decoder never
    /// buffers more than one chunk, and a chunk is never longer than its message).
    pub const fn commands_only() -> DecoderConfig {
        DecoderConfig {
            max_message_size: 64 * 1024,
            max_chunk_streams: 8,
            max_partial_bytes: 128 * 1024,
        }
    }

    /// The limits of an admitted publisher whose messages (frames) may be up to
    /// `max_message_size` bytes: partial messages up to twice that (audio and video in
    /// flight at once).
    pub fn admitted(max_message_size: u32) -> DecoderConfig {
        DecoderConfig {
            max_message_size,
            max_chunk_streams: DEFAULT_MAX_CHUNK_STREAMS,
            max_partial_bytes: usize::try_from(max_message_size)
                .unwrap_or(usize::MAX)
                .saturating_mul(2),
        }
    }
}

/// The header state of one inbound chunk stream, and its message in progress.
#[derive(Debug, Default)]
struct InStream {
    timestamp: u32,
    /// Delta applied when a type 3 chunk starts a new message. After a type 0 header
    /// this is its timestamp, as in ffmpeg and librtmp (whose encoders rely on it).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// Whether the last type 0/1/2 header used an extended timestamp: if so, every type
    /// 3 chunk that follows carries the 4-byte extended timestamp too.
    extended: bool,
    /// The message being assembled, if any.
    partial: Option<BytesMut>,
}

/// What one parsed chunk changes; computed without mutating the decoder so that a chunk
/// that is not complete yet leaves everything as it was.
struct ParsedChunk {
    consumed: usize,
    csid: u32,
    /// `Some` when this chunk starts a new message: its full header.
    new_header: Option<NewHeader>,
    payload_start: usize,
    payload_len: usize,
}

struct NewHeader {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
}

/// Reassembles messages from a byte stream of chunks.
#[derive(Debug)]
pub struct ChunkDecoder {
    config: DecoderConfig,
    chunk_size: u32,
    streams: HashMap<u32, InStream>,
    buf: BytesMut,
    /// Bytes in `InStream::partial` of incomplete messages, summed.
    partial_bytes: usize,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new(DecoderConfig::default())
    }
}

/// `Some(v)` → v; `None` → the chunk is incomplete: report "need more data".
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl ChunkDecoder {
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
            buf: BytesMut::new(),
            partial_bytes: 0,
        }
    }

    /// Replaces the limits (an ingest raises them once a publish is admitted). What is
    /// already held stays; the new limits apply to what comes next.
    pub fn set_config(&mut self, config: DecoderConfig) {
        self.config = config;
    }

    /// The limits in force.
    pub fn config(&self) -> DecoderConfig {
        self.config
    }

    /// The inbound chunk size currently in force.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes received but not yet consumed as complete chunks.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Applies a Set Chunk Size from the peer. The decoder does this by itself for type 1
    /// messages it decodes; this is for tests and unusual callers.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), RtmpError> {
        self.chunk_size = validate_chunk_size(size)?;
        Ok(())
    }

    /// Drops the partial message of chunk stream `csid` (an Abort message). Also applied
    /// automatically for type 2 messages.
    pub fn abort(&mut self, csid: u32) {
        if let Some(dropped) = self.streams.get_mut(&csid).and_then(|s| s.partial.take()) {
            self.partial_bytes = self.partial_bytes.saturating_sub(dropped.len());
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `None` if more bytes are needed. Set Chunk Size and
    /// Abort messages are applied before they are returned, so the chunks after them are
    /// read correctly without the caller's help. An error is fatal for the connection.
    pub fn next_message(&mut self) -> Result<Option<RawMessage>, RtmpError> {
        loop {
            let Some(chunk) = self.parse_chunk()? else {
                return Ok(None);
            };
            if let Some(msg) = self.apply(chunk)? {
                self.apply_control(&msg)?;
                return Ok(Some(msg));
            }
        }
    }

    fn apply_control(&mut self, msg: &RawMessage) -> Result<(), RtmpError> {
        match msg.type_id {
            1 => {
                let raw = Reader::new(&msg.payload).u32_be().ok_or_else(|| {
                    RtmpError::malformed("Set Chunk Size", "shorter than 4 bytes")
                })?;
                self.set_chunk_size(raw)?;
            }
            2 => {
                let csid = Reader::new(&msg.payload)
                    .u32_be()
                    .ok_or_else(|| RtmpError::malformed("Abort", "shorter than 4 bytes"))?;
                self.abort(csid);
            }
            _ => {}
        }
        Ok(())
    }

    /// Parses the chunk at the front of the buffer without changing any state.
    fn parse_chunk(&self) -> Result<Option<ParsedChunk>, RtmpError> {
        let mut r = Reader::new(&self.buf);
        let b0 = need!(r.u8());
        let fmt = b0 >> 6;
        let csid = match u32::from(b0 & 0x3f) {
            0 => 64 + u32::from(need!(r.u8())),
            1 => 64 + u32::from(need!(r.u16_be()).swap_bytes()),
            n => n,
        };
        let prev = self.streams.get(&csid);
        let in_progress = prev.is_some_and(|s| s.partial.is_some());
        if fmt != 3 && in_progress {
            return Err(RtmpError::HeaderInsideMessage { csid, fmt });
        }
        let prev = match (fmt, prev) {
            (0, _) => None,
            (_, Some(p)) => Some(p),
            (_, None) => return Err(RtmpError::MissingPreviousHeader { csid, fmt }),
        };

        let new_header = match (fmt, prev) {
            (0, _) => {
                let ts_field = need!(r.u24_be());
                let length = need!(r.u24_be());
                let type_id = need!(r.u8());
                let stream_id = need!(r.u32_le());
                self.check_length(length)?;
                let extended = ts_field == EXTENDED_TIMESTAMP;
                let timestamp = if extended {
                    need!(r.u32_be())
                } else {
                    ts_field
                };
                Some(NewHeader {
                    timestamp,
                    delta: timestamp,
                    length,
                    type_id,
                    stream_id,
                    extended,
                })
            }
            (1 | 2, Some(p)) => {
                let delta_field = need!(r.u24_be());
                let (length, type_id) = if fmt == 1 {
                    (need!(r.u24_be()), need!(r.u8()))
                } else {
                    (p.length, p.type_id)
                };
                self.check_length(length)?;
                let extended = delta_field == EXTENDED_TIMESTAMP;
                let delta = if extended {
                    need!(r.u32_be())
                } else {
                    delta_field
                };
                Some(NewHeader {
                    timestamp: p.timestamp.wrapping_add(delta),
                    delta,
                    length,
                    type_id,
                    stream_id: p.stream_id,
                    extended,
                })
            }
            (_, Some(p)) if p.partial.is_none() => {
                // Type 3 starting a new message: everything as before, timestamp + delta.
                let delta = if p.extended {
                    need!(r.u32_be())
                } else {
                    p.delta
                };
                Some(NewHeader {
                    timestamp: p.timestamp.wrapping_add(delta),
                    delta,
                    length: p.length,
                    type_id: p.type_id,
                    stream_id: p.stream_id,
                    extended: p.extended,
                })
            }
            (_, Some(p)) => {
                // Type 3 continuation: repeats the extended timestamp, if one is in use.
                if p.extended {
                    need!(r.u32_be());
                }
                None
            }
            (_, None) => return Err(RtmpError::MissingPreviousHeader { csid, fmt }),
        };

        let (length, received) = match (&new_header, prev) {
            (Some(h), _) => (h.length, 0),
            (None, Some(p)) => (p.length, p.partial.as_ref().map_or(0, BytesMut::len)),
            (None, None) => return Err(RtmpError::MissingPreviousHeader { csid, fmt }),
        };
        let length = usize::try_from(length).map_err(|_| self.too_large(length))?;
        let chunk_size = usize::try_from(self.chunk_size).unwrap_or(usize::MAX);
        let payload_len = length.saturating_sub(received).min(chunk_size);
        let payload_start = r.position();
        need!(r.bytes(payload_len));
        Ok(Some(ParsedChunk {
            consumed: r.position(),
            csid,
            new_header,
            payload_start,
            payload_len,
        }))
    }

    fn check_length(&self, length: u32) -> Result<(), RtmpError> {
        if length > self.config.max_message_size {
            return Err(self.too_large(length));
        }
        Ok(())
    }

    fn too_large(&self, length: u32) -> RtmpError {
        RtmpError::MessageTooLarge {
            length: u64::from(length),
            max: self.config.max_message_size,
        }
    }

    /// Commits a parsed chunk; returns the message it completes, if any.
    fn apply(&mut self, chunk: ParsedChunk) -> Result<Option<RawMessage>, RtmpError> {
        if !self.streams.contains_key(&chunk.csid)
            && self.streams.len() >= self.config.max_chunk_streams
        {
            return Err(RtmpError::TooManyChunkStreams(
                self.config.max_chunk_streams,
            ));
        }
        let mut data = self.buf.split_to(chunk.consumed);
        data.advance(chunk.payload_start);
        data.truncate(chunk.payload_len);
        let data_len = data.len();
        let stream = self.streams.entry(chunk.csid).or_default();
        if let Some(h) = chunk.new_header {
            stream.timestamp = h.timestamp;
            stream.delta = h.delta;
            stream.length = h.length;
            stream.type_id = h.type_id;
            stream.stream_id = h.stream_id;
            stream.extended = h.extended;
            // Grow with the data, not with the claim: at most 64 KiB up front.
            let initial = usize::try_from(h.length).unwrap_or(0).min(64 * 1024);
            stream.partial = Some(BytesMut::with_capacity(initial));
        }
        let Some(partial) = stream.partial.as_mut() else {
            return Ok(None);
        };
        let before = partial.len();
        if partial.is_empty() && usize::try_from(stream.length).is_ok_and(|l| l == data.len()) {
            // The whole message came in one chunk: keep its buffer, no copy.
            *partial = data;
        } else {
            partial.extend_from_slice(&data);
        }
        if usize::try_from(stream.length).is_ok_and(|l| partial.len() >= l) {
            self.partial_bytes = self.partial_bytes.saturating_sub(before);
            let payload = stream
                .partial
                .take()
                .map(BytesMut::freeze)
                .unwrap_or_default();
            return Ok(Some(RawMessage {
                csid: chunk.csid,
                timestamp: stream.timestamp,
                type_id: stream.type_id,
                stream_id: stream.stream_id,
                payload,
            }));
        }
        self.partial_bytes = self.partial_bytes.saturating_add(data_len);
        if self.partial_bytes > self.config.max_partial_bytes {
            return Err(RtmpError::TooMuchBuffered(self.config.max_partial_bytes));
        }
        Ok(None)
    }
}

fn validate_chunk_size(size: u32) -> Result<u32, RtmpError> {
    if size == 0 || size > MAX_CHUNK_SIZE {
        return Err(RtmpError::InvalidChunkSize(size));
    }
    Ok(size)
}

/// What the encoder remembers of the last message written on a chunk stream.
#[derive(Debug, Clone, Copy)]
struct OutStream {
    timestamp: u32,
    /// The delta a type 3 header would imply, if the last header established one (a type
    /// 1/2 header). After a type 0 header we never write a type 3 new message: peers
    /// disagree about what delta it implies (nginx-rtmp: 0; ffmpeg: the timestamp).
    delta: Option<u32>,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Cuts messages into chunks, with header compression against the previous message on
/// the same chunk stream. Use a large chunk size (announced to the peer with a Set Chunk
/// Size message first): fewer headers, fewer bytes, fewer write calls.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    streams: HashMap<u32, OutStream>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    /// An encoder at the initial chunk size of 128.
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Switches the outbound chunk size. The caller must have queued a Set Chunk Size
    /// message with the same value before any chunk written after this call.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), RtmpError> {
        self.chunk_size = validate_chunk_size(size)?;
        Ok(())
    }

    /// Appends `msg`, chunked, to `out`. Many messages may be written into one
    /// [`OutBuf`] and sent with one (vectored) write.
    pub fn encode(&mut self, msg: &RawMessage, out: &mut OutBuf) -> Result<(), RtmpError> {
        if !(2..=MAX_CSID).contains(&msg.csid) {
            return Err(RtmpError::InvalidChunkStreamId(msg.csid));
        }
        let length = u32::try_from(msg.payload.len())
            .ok()
            .filter(|l| *l <= MAX_WIRE_MESSAGE_SIZE)
            .ok_or(RtmpError::MessageTooLarge {
                length: u64::try_from(msg.payload.len()).unwrap_or(u64::MAX),
                max: MAX_WIRE_MESSAGE_SIZE,
            })?;

        let prev = self.streams.get(&msg.csid).copied();
        let (fmt, ts_field) = match prev {
            Some(p) if p.stream_id == msg.stream_id && msg.timestamp >= p.timestamp => {
                let delta = msg.timestamp - p.timestamp;
                if p.length == length && p.type_id == msg.type_id {
                    if p.delta == Some(delta) {
                        (3, delta)
                    } else {
                        (2, delta)
                    }
                } else {
                    (1, delta)
                }
            }
            _ => (0, msg.timestamp),
        };
        let extended = ts_field >= EXTENDED_TIMESTAMP;

        let field = ts_field.min(EXTENDED_TIMESTAMP);
        let mut header = [0u8; 18];
        let header_len = {
            let mut w = &mut header[..];
            put_basic_header(&mut w, fmt, msg.csid);
            if fmt <= 2 {
                w.put_slice(&field.to_be_bytes()[1..]);
            }
            if fmt <= 1 {
                w.put_slice(&length.to_be_bytes()[1..]);
                w.put_u8(msg.type_id);
            }
            if fmt == 0 {
                w.put_u32_le(msg.stream_id);
            }
            if extended {
                w.put_u32(ts_field);
            }
            18 - w.len()
        };
        // Continuation chunks: type 3 basic header, plus the extended timestamp if used.
        let mut cont = [0u8; 7];
        let cont_len = {
            let mut w = &mut cont[..];
            put_basic_header(&mut w, 3, msg.csid);
            if extended {
                w.put_u32(ts_field);
            }
            7 - w.len()
        };

        let chunk_size = usize::try_from(self.chunk_size).unwrap_or(usize::MAX);
        let mut offset = 0usize;
        let total = msg.payload.len();
        out.put_header(header.get(..header_len).unwrap_or_default());
        loop {
            let n = (total - offset).min(chunk_size);
            out.put_payload(&msg.payload, offset, n);
            offset += n;
            if offset >= total {
                break;
            }
            out.put_header(cont.get(..cont_len).unwrap_or_default());
        }

        self.streams.insert(
            msg.csid,
            OutStream {
                timestamp: msg.timestamp,
                delta: (fmt != 0).then_some(ts_field),
                length,
                type_id: msg.type_id,
                stream_id: msg.stream_id,
            },
        );
        Ok(())
    }
}

fn put_basic_header(w: &mut &mut [u8], fmt: u8, csid: u32) {
    let fmt = fmt << 6;
    match csid {
        0..=63 => w.put_u8(fmt | csid as u8),
        64..=319 => {
            w.put_u8(fmt);
            w.put_u8((csid - 64) as u8);
        }
        _ => {
            let id = csid.saturating_sub(64);
            w.put_u8(fmt | 1);
            w.put_u8((id & 0xff) as u8);
            w.put_u8(((id >> 8) & 0xff) as u8);
        }
    }
}

/// Payload pieces at least this long go out as zero-copy slices of the frame's
/// [`Bytes`]; shorter ones are copied next to their headers (a tiny iovec costs more
/// than the copy). Low enough that AAC frames (~350 bytes at 128 kb/s) are not copied:
/// the copies made the per-connection header buffer grow to a window's worth of audio
/// (~2 KiB per destination, for as long as the push runs).
const ZERO_COPY_MIN: usize = 128;

/// First allocation of an [`OutBuf`]'s header buffer: a write window's chunk headers
/// (and small payloads) fit.
const PENDING_INITIAL: usize = 256;

/// Encoded bytes waiting to be written, as a list of segments for a vectored write.
///
/// Headers and small payloads are packed into shared buffers; large payload pieces are
/// refcounted slices of the original frame, so N destinations do not copy a video frame
/// N times. [`OutBuf::take`] hands the segments over in order.
#[derive(Debug, Default)]
pub struct OutBuf {
    segments: Vec<Bytes>,
    pending: BytesMut,
    len: usize,
}

impl OutBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// Total bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues raw bytes (handshake bytes, chunk headers).
    pub fn put_header(&mut self, bytes: &[u8]) {
        self.pending_room(bytes.len());
        self.pending.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    fn put_payload(&mut self, payload: &Bytes, offset: usize, n: usize) {
        let Some(end) = offset.checked_add(n) else {
            return;
        };
        if n >= ZERO_COPY_MIN {
            self.flush_pending();
            self.segments.push(payload.slice(offset..end));
        } else if let Some(piece) = payload.get(offset..end) {
            self.pending_room(piece.len());
            self.pending.extend_from_slice(piece);
        }
        self.len += n;
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            self.segments.push(self.pending.split().freeze());
        }
    }

    /// Everything queued, in order; leaves the buffer empty.
    pub fn take(&mut self) -> Vec<Bytes> {
        self.flush_pending();
        // The header buffer's allocation goes with the segments cut from it (and is freed
        // once they are written) instead of staying with the connection for its whole
        // life, idle between writes: the next headers start a small one.
        self.pending = BytesMut::new();
        self.len = 0;
        std::mem::take(&mut self.segments)
    }

    fn pending_room(&mut self, n: usize) {
        if self.pending.capacity() == 0 {
            self.pending.reserve(n.max(PENDING_INITIAL));
        }
    }

    /// Everything queued as one contiguous buffer (copies when there are several
    /// segments); leaves the buffer empty.
    pub fn take_contiguous(&mut self) -> Bytes {
        let segments = self.take();
        match segments.len() {
            0 => Bytes::new(),
            1 => segments.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(segments.iter().map(Bytes::len).sum());
                for s in segments {
                    all.extend_from_slice(&s);
                }
                all.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(csid: u32, ts: u32, type_id: u8, sid: u32, payload: &[u8]) -> RawMessage {
        RawMessage {
            csid,
            timestamp: ts,
            type_id,
            stream_id: sid,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn encode_all(enc: &mut ChunkEncoder, msgs: &[RawMessage]) -> Vec<u8> {
        let mut out = OutBuf::new();
        for m in msgs {
            enc.encode(m, &mut out).expect("encodes");
        }
        out.take_contiguous().to_vec()
    }

    fn decode_all(dec: &mut ChunkDecoder, bytes: &[u8]) -> Result<Vec<RawMessage>, RtmpError> {
        dec.push(bytes);
        let mut out = Vec::new();
        while let Some(m) = dec.next_message()? {
            out.push(m);
        }
        Ok(out)
    }

    /// Audio and video on two chunk streams, chunk size 128, interleaved chunk by chunk:
    /// video chunk 1, audio (type 0, whole), video chunk 2 (type 3), audio (type 2,
    /// whole), video chunk 3 (type 3). Hand-built so that the test does not depend on our
    /// own encoder.
    fn interleaved_stream() -> (Vec<u8>, Vec<RawMessage>) {
        let video = pattern(300, 7);
        let audio1 = pattern(100, 1);
        let audio2 = pattern(100, 2);
        let mut b = Vec::new();
        // Video, csid 6, fmt 0, ts 40, len 300, type 9, stream 1.
        b.extend_from_slice(&[0x06, 0, 0, 40, 0, 0x01, 0x2c, 9, 1, 0, 0, 0]);
        b.extend_from_slice(&video[..128]);
        // Audio, csid 4, fmt 0, ts 23, len 100, type 8, stream 1.
        b.extend_from_slice(&[0x04, 0, 0, 23, 0, 0, 100, 8, 1, 0, 0, 0]);
        b.extend_from_slice(&audio1);
        // Video continuation, csid 6, fmt 3.
        b.push(0xc6);
        b.extend_from_slice(&video[128..256]);
        // Audio, csid 4, fmt 2, delta 23.
        b.extend_from_slice(&[0x84, 0, 0, 23]);
        b.extend_from_slice(&audio2);
        // Video continuation, csid 6, fmt 3.
        b.push(0xc6);
        b.extend_from_slice(&video[256..]);
        let expected = vec![
            msg(4, 23, 8, 1, &audio1),
            msg(4, 46, 8, 1, &audio2),
            msg(6, 40, 9, 1, &video),
        ];
        (b, expected)
    }

    #[test]
    fn interleaved_chunk_streams_reassemble() {
        let (bytes, expected) = interleaved_stream();
        let got = decode_all(&mut ChunkDecoder::default(), &bytes).expect("decodes");
        assert_eq!(got, expected);
    }

    type Tuple = (u8, u32, u32, Vec<u8>);

    /// What rml_rtmp 0.8's deserializer makes of `bytes`: the messages it returned, and
    /// how it stopped if it failed (an error, or a panic: it subtracts without checking,
    /// which panics in debug builds and wraps around in release builds).
    fn rml_decode(bytes: &[u8]) -> (Vec<Tuple>, Option<String>) {
        let mut out = Vec::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut d = rml_rtmp::chunk_io::ChunkDeserializer::new();
            let mut input = bytes;
            loop {
                match d.get_next_message(input) {
                    Ok(Some(m)) => out.push((
                        m.type_id,
                        m.timestamp.value,
                        m.message_stream_id,
                        m.data.to_vec(),
                    )),
                    Ok(None) => return None,
                    Err(e) => return Some(format!("error: {e:?}")),
                }
                input = &[];
            }
        }));
        let failure = result.unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Some(format!("panic: {text}"))
        });
        (out, failure)
    }

    fn as_tuples(msgs: &[RawMessage]) -> Vec<Tuple> {
        msgs.iter()
            .map(|m| (m.type_id, m.timestamp, m.stream_id, m.payload.to_vec()))
            .collect()
    }

    /// The reason this module exists. Same bytes, two decoders: ours reassembles both
    /// interleavings; rml_rtmp 0.8 (one partial buffer for all chunk streams) does not.
    #[test]
    fn rml_rtmp_fails_on_interleaved_chunk_streams() {
        // Case 1: the audio message (100 bytes) is shorter than the video bytes already
        // buffered (128): rml computes 100 - 128 in usize → panic (debug) / wrap (release).
        let (bytes, expected) = interleaved_stream();
        assert_eq!(
            decode_all(&mut ChunkDecoder::default(), &bytes).expect("ours"),
            expected
        );
        let (got, failure) = rml_decode(&bytes);
        assert_ne!(
            got,
            as_tuples(&expected),
            "rml_rtmp decoded case 1 correctly"
        );
        assert!(
            failure.is_some(),
            "rml_rtmp did not fail on case 1: {got:?}"
        );

        // Case 2: a longer audio message: no underflow, but rml glues the first 128 video
        // bytes to 72 audio bytes, returns that as the audio message, then reads the rest
        // of the audio as chunk headers and fails.
        let video = pattern(300, 7);
        let audio = pattern(200, 1);
        let mut b = vec![0x06, 0, 0, 40, 0, 0x01, 0x2c, 9, 1, 0, 0, 0];
        b.extend_from_slice(&video[..128]);
        b.extend_from_slice(&[0x04, 0, 0, 23, 0, 0, 200, 8, 1, 0, 0, 0]);
        b.extend_from_slice(&audio[..128]);
        b.push(0xc6);
        b.extend_from_slice(&video[128..256]);
        b.push(0xc4);
        b.extend_from_slice(&audio[128..]);
        b.push(0xc6);
        b.extend_from_slice(&video[256..]);
        let expected = vec![msg(4, 23, 8, 1, &audio), msg(6, 40, 9, 1, &video)];
        assert_eq!(
            decode_all(&mut ChunkDecoder::default(), &b).expect("ours"),
            expected
        );
        let (got, failure) = rml_decode(&b);
        assert_ne!(
            got,
            as_tuples(&expected),
            "rml_rtmp decoded case 2 correctly"
        );
        let first = got.first().map(|m| m.3.clone()).unwrap_or_default();
        assert_eq!(first.len(), 200);
        assert_eq!(
            first[..128],
            video[..128],
            "the 'audio' message starts with video bytes"
        );
        assert!(failure.is_some());

        // Control: the same messages without interleaving decode fine in rml_rtmp, so the
        // failures above are about interleaving, not about how the test drives it.
        let mut sequential = vec![0x06, 0, 0, 40, 0, 0x01, 0x2c, 9, 1, 0, 0, 0];
        sequential.extend_from_slice(&video[..128]);
        sequential.push(0xc6);
        sequential.extend_from_slice(&video[128..256]);
        sequential.push(0xc6);
        sequential.extend_from_slice(&video[256..]);
        sequential.extend_from_slice(&[0x04, 0, 0, 23, 0, 0, 200, 8, 1, 0, 0, 0]);
        sequential.extend_from_slice(&audio[..128]);
        sequential.push(0xc4);
        sequential.extend_from_slice(&audio[128..]);
        let in_order = vec![msg(6, 40, 9, 1, &video), msg(4, 23, 8, 1, &audio)];
        assert_eq!(rml_decode(&sequential), (as_tuples(&in_order), None));
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let (bytes, expected) = interleaved_stream();
        for cut in 0..=bytes.len() {
            let mut dec = ChunkDecoder::default();
            let mut got = decode_all(&mut dec, &bytes[..cut]).expect("prefix is fine");
            got.extend(decode_all(&mut dec, &bytes[cut..]).expect("rest is fine"));
            assert_eq!(got, expected, "split at {cut}");
        }
    }

    #[test]
    fn every_truncation_waits_for_more() {
        let mut enc = ChunkEncoder::new();
        let msgs = vec![
            msg(2, 0, 1, 0, &4096u32.to_be_bytes()),
            msg(6, 0, 9, 1, &pattern(5000, 3)),
            msg(4, 0xFFFF_FFF0, 8, 1, &pattern(10, 4)),
            msg(4, 0xFFFF_FFF5, 8, 1, &pattern(10, 5)),
        ];
        let mut out = OutBuf::new();
        enc.encode(&msgs[0], &mut out).expect("encodes");
        enc.set_chunk_size(4096).expect("valid");
        for m in &msgs[1..] {
            enc.encode(m, &mut out).expect("encodes");
        }
        let bytes = out.take_contiguous();
        for cut in 0..bytes.len() {
            let mut dec = ChunkDecoder::default();
            let got = decode_all(&mut dec, &bytes[..cut]).expect("a prefix is never an error");
            assert!(got.len() < msgs.len(), "cut {cut}");
            assert_eq!(got[..], msgs[..got.len()], "cut {cut}");
        }
        let all = decode_all(&mut ChunkDecoder::default(), &bytes).expect("decodes");
        assert_eq!(all, msgs);
    }

    #[test]
    fn extended_timestamps_on_all_header_types() {
        // fmt 0 with extended timestamp 0x01000000, two chunks (fmt 3 repeats it).
        let payload = pattern(200, 9);
        let mut b = vec![
            0x06, 0xff, 0xff, 0xff, 0, 0, 200, 9, 1, 0, 0, 0, 0x01, 0, 0, 0,
        ];
        b.extend_from_slice(&payload[..128]);
        b.extend_from_slice(&[0xc6, 0x01, 0, 0, 0]);
        b.extend_from_slice(&payload[128..]);
        // fmt 2 with an extended delta of 0x01000000.
        b.extend_from_slice(&[0x86, 0xff, 0xff, 0xff, 0x01, 0, 0, 0]);
        b.extend_from_slice(&payload[..128]);
        b.extend_from_slice(&[0xc6, 0x01, 0, 0, 0]);
        b.extend_from_slice(&payload[128..]);
        // fmt 3 new message: same delta, extended timestamp repeated.
        b.extend_from_slice(&[0xc6, 0x01, 0, 0, 0]);
        b.extend_from_slice(&payload[..128]);
        b.extend_from_slice(&[0xc6, 0x01, 0, 0, 0]);
        b.extend_from_slice(&payload[128..]);
        let got = decode_all(&mut ChunkDecoder::default(), &b).expect("decodes");
        let ts: Vec<u32> = got.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![0x0100_0000, 0x0200_0000, 0x0300_0000]);
        assert!(got.iter().all(|m| m.payload[..] == payload[..]));
    }

    #[test]
    fn encoder_roundtrips_with_compression_and_extended_timestamps() {
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(100).expect("valid");
        let msgs = vec![
            msg(4, 0, 8, 1, &pattern(10, 1)),
            msg(4, 23, 8, 1, &pattern(10, 2)), // fmt 2
            msg(4, 46, 8, 1, &pattern(10, 3)), // fmt 3
            msg(4, 69, 8, 1, &pattern(11, 4)), // fmt 1
            msg(4, 10, 8, 1, &pattern(11, 4)), // backwards: fmt 0
            msg(4, 10, 8, 2, &pattern(11, 4)), // other stream: fmt 0
            msg(6, 0x00FF_FFFF, 9, 1, &pattern(250, 5)),
            msg(6, 0x01FF_FFFE, 9, 1, &pattern(250, 6)), // extended delta
            msg(6, 0x02FF_FFFD, 9, 1, &pattern(250, 7)), // fmt 3 with extended delta
            msg(3, 0, 20, 0, &[]),
            msg(300, 1, 18, 1, &pattern(5, 8)),
            msg(65_599, 2, 18, 1, &pattern(5, 9)),
        ];
        let bytes = encode_all(&mut enc, &msgs);
        let mut dec = ChunkDecoder::default();
        dec.set_chunk_size(100).expect("valid");
        assert_eq!(decode_all(&mut dec, &bytes).expect("decodes"), msgs);
        // Compression happened: the fmt 3 audio message is 1 + 10 bytes.
        let first_three = encode_all(&mut ChunkEncoder::new(), &msgs[..3]);
        assert_eq!(first_three.len(), (12 + 10) + (4 + 10) + (1 + 10));
    }

    #[test]
    fn set_chunk_size_is_honoured_mid_stream() {
        let mut enc = ChunkEncoder::new();
        let mut out = OutBuf::new();
        enc.encode(&msg(2, 0, 1, 0, &1000u32.to_be_bytes()), &mut out)
            .expect("ok");
        enc.set_chunk_size(1000).expect("ok");
        let big = msg(6, 0, 9, 1, &pattern(2500, 1));
        enc.encode(&big, &mut out).expect("ok");
        let mut dec = ChunkDecoder::default();
        let got = decode_all(&mut dec, &out.take_contiguous()).expect("decodes");
        assert_eq!(got[1], big);
        assert_eq!(dec.chunk_size(), 1000);
    }

    #[test]
    fn invalid_chunk_sizes_are_rejected() {
        for bad in [0u32, 0x8000_0000, 0xFFFF_FFFF] {
            let mut dec = ChunkDecoder::default();
            let mut b = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
            b.extend_from_slice(&bad.to_be_bytes());
            assert_eq!(
                decode_all(&mut dec, &b),
                Err(RtmpError::InvalidChunkSize(bad))
            );
        }
        let mut dec = ChunkDecoder::default();
        let mut b = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
        b.extend_from_slice(&MAX_CHUNK_SIZE.to_be_bytes());
        assert!(decode_all(&mut dec, &b).is_ok());
        assert_eq!(dec.chunk_size(), MAX_CHUNK_SIZE);
        assert!(ChunkEncoder::new().set_chunk_size(0).is_err());
    }

    #[test]
    fn a_100_mb_length_claim_is_rejected_at_once() {
        // 24-bit lengths top out at 16 MiB - 1; a decoder configured for 1 MiB refuses a
        // 16 MB claim, and the default (16 MiB) refuses nothing it cannot hold.
        let mut dec = ChunkDecoder::new(DecoderConfig {
            max_message_size: 1024 * 1024,
            ..DecoderConfig::default()
        });
        let b = [0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
        assert_eq!(
            decode_all(&mut dec, &b),
            Err(RtmpError::MessageTooLarge {
                length: 0xFF_FFFF,
                max: 1024 * 1024
            })
        );
        // "100 MB" cannot even be expressed in a chunk header; the encoder refuses it.
        let huge = RawMessage {
            csid: 6,
            timestamp: 0,
            type_id: 9,
            stream_id: 1,
            payload: Bytes::from(vec![0u8; 100 * 1024 * 1024]),
        };
        assert!(matches!(
            ChunkEncoder::new().encode(&huge, &mut OutBuf::new()),
            Err(RtmpError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn abort_drops_the_partial_message() {
        let mut b = vec![0x06, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        b.extend_from_slice(&[0u8; 128]);
        // Abort csid 6.
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0, 0, 0, 0, 6]);
        // A fresh message on csid 6.
        b.extend_from_slice(&[0x06, 0, 0, 5, 0, 0, 2, 9, 1, 0, 0, 0, 0xaa, 0xbb]);
        let got = decode_all(&mut ChunkDecoder::default(), &b).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], msg(6, 5, 9, 1, &[0xaa, 0xbb]));
    }

    #[test]
    fn garbage_headers_are_errors() {
        // fmt 1 on a chunk stream never seen.
        assert_eq!(
            decode_all(&mut ChunkDecoder::default(), &[0x46, 0, 0, 0, 0, 0, 1, 8]),
            Err(RtmpError::MissingPreviousHeader { csid: 6, fmt: 1 })
        );
        // fmt 0 in the middle of a message.
        let mut b = vec![0x06, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        b.extend_from_slice(&[0u8; 128]);
        b.extend_from_slice(&[0x06, 0, 0, 0, 0, 0, 1, 9, 1, 0, 0, 0, 0]);
        assert_eq!(
            decode_all(&mut ChunkDecoder::default(), &b),
            Err(RtmpError::HeaderInsideMessage { csid: 6, fmt: 0 })
        );
    }

    #[test]
    fn too_many_chunk_streams_is_an_error() {
        let mut dec = ChunkDecoder::new(DecoderConfig {
            max_chunk_streams: 4,
            ..DecoderConfig::default()
        });
        let mut b = Vec::new();
        for id in 2..10u8 {
            b.extend_from_slice(&[id, 0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0, 0]);
        }
        assert_eq!(
            decode_all(&mut dec, &b),
            Err(RtmpError::TooManyChunkStreams(4))
        );
    }

    #[test]
    fn partial_messages_on_many_streams_hit_the_buffer_limit() {
        let mut dec = ChunkDecoder::new(DecoderConfig {
            max_partial_bytes: 1000,
            ..DecoderConfig::default()
        });
        // Ten chunk streams, each with the first 128 bytes of a 10 000-byte message.
        let mut b = Vec::new();
        for id in 2..12u8 {
            b.extend_from_slice(&[id, 0, 0, 0, 0, 0x27, 0x10, 9, 1, 0, 0, 0]);
            b.extend_from_slice(&[0u8; 128]);
        }
        assert_eq!(
            decode_all(&mut dec, &b),
            Err(RtmpError::TooMuchBuffered(1000))
        );
        // Completed and aborted messages release their share.
        let mut dec = ChunkDecoder::new(DecoderConfig {
            max_partial_bytes: 300,
            ..DecoderConfig::default()
        });
        let (bytes, expected) = interleaved_stream();
        for _ in 0..5 {
            // The stream starts with type 0 headers on both chunk streams, so it can
            // simply be repeated.
            let got = decode_all(&mut dec, &bytes).expect("within the limit");
            assert_eq!(got.len(), expected.len());
        }
        let mut b = vec![0x06, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0];
        b.extend_from_slice(&[0u8; 128]);
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0, 0, 0, 0, 6]);
        decode_all(&mut dec, &b).expect("abort");
        assert_eq!(dec.partial_bytes, 0);
    }

    #[test]
    fn zero_length_messages_complete_at_once() {
        let b = [0x03, 0, 0, 7, 0, 0, 0, 20, 0, 0, 0, 0, 0xc3];
        let got = decode_all(&mut ChunkDecoder::default(), &b).expect("decodes");
        assert_eq!(got, vec![msg(3, 7, 20, 0, &[]), msg(3, 14, 20, 0, &[])]);
    }

    #[test]
    fn out_buf_keeps_large_payloads_zero_copy() {
        let frame = Bytes::from(pattern(10_000, 1));
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(4096).expect("ok");
        let mut out = OutBuf::new();
        let m = RawMessage {
            csid: 6,
            timestamp: 0,
            type_id: 9,
            stream_id: 1,
            payload: frame.clone(),
        };
        enc.encode(&m, &mut out).expect("ok");
        enc.encode(&msg(4, 0, 8, 1, &[1, 2, 3]), &mut out)
            .expect("ok");
        let total = out.len();
        let segs = out.take();
        assert_eq!(segs.iter().map(Bytes::len).sum::<usize>(), total);
        // header, 4096, header, 4096, header + 1808 tail (copied) + audio.
        assert_eq!(segs[1].as_ptr(), frame.as_ptr());
        assert!(out.is_empty());
    }

    /// Seeded random inputs: the decoder must return (messages or an error), never panic.
    #[test]
    fn random_bytes_fuzz_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (valid, _) = interleaved_stream();
        for round in 0..4_000 {
            let mut dec = ChunkDecoder::new(DecoderConfig {
                max_message_size: 64 * 1024,
                max_chunk_streams: 16,
                max_partial_bytes: 128 * 1024,
            });
            let len = (next() % 600) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Half the rounds: a valid stream with a few bytes flipped, which reaches
                // deeper states than pure noise.
                input = valid.clone();
                for _ in 0..(1 + next() % 4) {
                    let i = (next() as usize) % input.len();
                    input[i] = next() as u8;
                }
            }
            let mut pos = 0;
            while pos < input.len() {
                let step = 1 + (next() % 64) as usize;
                let end = (pos + step).min(input.len());
                dec.push(&input[pos..end]);
                pos = end;
                loop {
                    match dec.next_message() {
                        Ok(Some(m)) => assert!(m.payload.len() <= 64 * 1024),
                        Ok(None) => break,
                        Err(_) => {
                            pos = input.len();
                            break;
                        }
                    }
                }
            }
        }
    }
}
