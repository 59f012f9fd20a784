//! Protocol state machines on top of the chunk stream: [`server`] (ingest: encoders
//! publish to us) and [`client`] (push: we publish to a destination).
//!
//! Both are sans-IO: bytes in, events out, bytes to send queued in an outbound buffer.
//! What they share — handshake, chunk codec, acknowledgements, pings, the outbound queue
//! — lives in [`Transport`] here.

pub mod client;
pub mod server;

use bytes::Bytes;

use super::chunk::{ChunkDecoder, ChunkEncoder, DecoderConfig, OutBuf, RawMessage, csid};
use super::error::RtmpError;
use super::handshake::{Handshake, HandshakeStatus};
use super::message::{Message, PeerBandwidthLimit, RtmpMessage, UserControlEvent};
use pushcast_media::{Frame, FrameKind};

/// The AMF0 encoding of the string `"@setDataFrame"`, as it starts a data message that a
/// publisher sends to set the stream's metadata.
pub(crate) const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";
/// The AMF0 encoding of the string `"onMetaData"`.
pub(crate) const ON_META_DATA: &[u8] = b"\x02\x00\x0aonMetaData";

/// The transport-level half of a connection: handshake, chunk codec, flow control.
#[derive(Debug)]
pub(crate) struct Transport {
    handshake: Handshake,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    out: OutBuf,
    bytes_in: u64,
    last_ack: u64,
    /// Acknowledge every this many bytes received: the peer's Window Acknowledgement
    /// Size once it sent one, our own default until then.
    ack_window: u32,
    /// The last Window Acknowledgement Size we sent, so that a Set Peer Bandwidth with a
    /// new size gets one in reply (and an unchanged one does not).
    sent_window: Option<u32>,
}

impl Transport {
    pub(crate) fn server(decoder: DecoderConfig, ack_window: u32) -> Self {
        Self::with_handshake(Handshake::server(), decoder, ack_window)
    }

    /// A client connection with C0 + C1 already queued.
    pub(crate) fn client(decoder: DecoderConfig, ack_window: u32) -> Self {
        let (handshake, c0c1) = Handshake::client();
        let mut conn = Self::with_handshake(handshake, decoder, ack_window);
        conn.out.put_header(&c0c1);
        conn
    }

    fn with_handshake(handshake: Handshake, decoder: DecoderConfig, ack_window: u32) -> Self {
        Self {
            handshake,
            decoder: ChunkDecoder::new(decoder),
            encoder: ChunkEncoder::new(),
            out: OutBuf::new(),
            bytes_in: 0,
            last_ack: 0,
            ack_window,
            sent_window: None,
        }
    }

    pub(crate) fn bytes_received(&self) -> u64 {
        self.bytes_in
    }

    pub(crate) fn set_decoder_config(&mut self, config: DecoderConfig) {
        self.decoder.set_config(config);
    }

    pub(crate) fn outbound_len(&self) -> usize {
        self.out.len()
    }

    pub(crate) fn take_outbound(&mut self) -> Vec<Bytes> {
        self.out.take()
    }

    /// Feeds bytes from the peer. Returns whether the handshake completed during this
    /// call, and the messages decoded (aggregates flattened). Flow control is handled
    /// here: pings are answered, acknowledgements sent, window sizes tracked.
    pub(crate) fn receive(&mut self, input: &[u8]) -> Result<(bool, Vec<Message>), RtmpError> {
        self.bytes_in = self
            .bytes_in
            .saturating_add(u64::try_from(input.len()).unwrap_or(u64::MAX));
        let mut handshake_completed = false;
        if self.handshake.is_done() {
            self.decoder.push(input);
        } else {
            let mut reply = Vec::new();
            let status = self.handshake.feed(input, &mut reply)?;
            self.out.put_header(&reply);
            match status {
                HandshakeStatus::InProgress => return Ok((false, Vec::new())),
                HandshakeStatus::Done { remaining } => {
                    handshake_completed = true;
                    self.decoder.push(&remaining);
                }
            }
        }
        let mut messages = Vec::new();
        while let Some(raw) = self.decoder.next_message()? {
            match Message::decode(&raw)? {
                Message {
                    body: RtmpMessage::Aggregate(subs),
                    ..
                } => messages.extend(subs),
                m => messages.push(m),
            }
        }
        for m in &messages {
            self.on_control(m)?;
        }
        self.maybe_acknowledge()?;
        Ok((handshake_completed, messages))
    }

    fn on_control(&mut self, m: &Message) -> Result<(), RtmpError> {
        match &m.body {
            RtmpMessage::WindowAckSize(size) if *size > 0 => self.ack_window = *size,
            RtmpMessage::UserControl(UserControlEvent::PingRequest(t)) => {
                self.send_control(RtmpMessage::UserControl(UserControlEvent::PingResponse(*t)))?;
            }
            RtmpMessage::SetPeerBandwidth { size, .. } if self.sent_window != Some(*size) => {
                self.send_window_ack_size(*size)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn maybe_acknowledge(&mut self) -> Result<(), RtmpError> {
        if self.bytes_in.saturating_sub(self.last_ack) >= u64::from(self.ack_window) {
            self.last_ack = self.bytes_in;
            // The sequence number is the byte count modulo 2^32 (it wraps on long runs).
            let sequence = (self.bytes_in & 0xFFFF_FFFF) as u32;
            self.send_control(RtmpMessage::Acknowledgement { sequence })?;
        }
        Ok(())
    }

    /// Queues a protocol control / user control message (chunk stream 2, stream 0).
    pub(crate) fn send_control(&mut self, body: RtmpMessage) -> Result<(), RtmpError> {
        self.send(csid::PROTOCOL_CONTROL, &Message::new(0, 0, body))
    }

    pub(crate) fn send_window_ack_size(&mut self, size: u32) -> Result<(), RtmpError> {
        self.sent_window = Some(size);
        self.send_control(RtmpMessage::WindowAckSize(size))
    }

    pub(crate) fn send_peer_bandwidth(&mut self, size: u32) -> Result<(), RtmpError> {
        self.send_control(RtmpMessage::SetPeerBandwidth {
            size,
            limit: PeerBandwidthLimit::Dynamic,
        })
    }

    /// Announces and switches to a new outbound chunk size.
    pub(crate) fn set_chunk_size(&mut self, size: u32) -> Result<(), RtmpError> {
        // Validate before announcing, so that a bad value is not sent to the peer.
        ChunkEncoder::new().set_chunk_size(size)?;
        self.send_control(RtmpMessage::SetChunkSize(size))?;
        self.encoder.set_chunk_size(size)
    }

    pub(crate) fn send(&mut self, csid: u32, message: &Message) -> Result<(), RtmpError> {
        let raw = message.encode(csid)?;
        self.send_raw(&raw)
    }

    pub(crate) fn send_raw(&mut self, raw: &RawMessage) -> Result<(), RtmpError> {
        self.encoder.encode(raw, &mut self.out)
    }
}

/// The media frame a message carries, if it is audio, video or data.
pub(crate) fn frame_of(message: &Message) -> Option<Frame> {
    let (kind, payload) = match &message.body {
        RtmpMessage::Audio(p) => (FrameKind::Audio, p.clone()),
        RtmpMessage::Video(p) => (FrameKind::Video, p.clone()),
        RtmpMessage::Data(p) => (FrameKind::Data, p.clone()),
        _ => return None,
    };
    Some(Frame {
        kind,
        timestamp_ms: message.timestamp,
        payload,
    })
}

#[cfg(test)]
mod tests;
