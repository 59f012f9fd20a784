//! The RTMP "simple" handshake, for both roles, as a state machine fed with bytes.
//!
//! ```text
//! client                               server
//!   C0 (version 3) + C1 (1536 bytes) ──▶
//!                                    ◀── S0 + S1 + S2 (S2 = echo of C1)
//!   C2 (echo of S1)                  ──▶
//! ```
//! We send zeros in the version field of C1/S1 (bytes 4..8), which tells the peer that
//! this is the simple handshake: ffmpeg, OBS (librtmp) and nginx-rtmp then skip the
//! digest ("complex", Flash Player 9) handshake. The echoes are not verified: peers that
//! use the complex handshake send digests instead of echoes, and checking them buys no
//! security (RTMP has none at this layer).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use super::error::RtmpError;

/// The only RTMP version we speak: plain RTMP.
pub const RTMP_VERSION: u8 = 3;
/// Size of C1, C2, S1, S2.
pub const HANDSHAKE_SIZE: usize = 1536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Server: waiting for C0 + C1.
    AwaitC0C1,
    /// Server: S0/S1/S2 sent, waiting for C2.
    AwaitC2,
    /// Client: C0/C1 sent, waiting for S0 + S1 + S2.
    AwaitS0S1S2,
    Done,
}

/// What a call to [`Handshake::feed`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// More bytes from the peer are needed.
    InProgress,
    /// The handshake is complete; `remaining` are the bytes after it (already chunk
    /// stream data, e.g. the client's connect command) for the chunk decoder.
    Done { remaining: Vec<u8> },
}

/// One side of the handshake.
#[derive(Debug)]
pub struct Handshake {
    stage: Stage,
    /// Bytes received but not yet used (never more than one handshake step plus input).
    buf: Vec<u8>,
}

impl Handshake {
    /// The server side: it speaks only after C0 + C1 arrive.
    pub fn server() -> Self {
        Self {
            stage: Stage::AwaitC0C1,
            buf: Vec::new(),
        }
    }

    /// The client side, and C0 + C1 to send at once.
    pub fn client() -> (Self, Vec<u8>) {
        let mut out = Vec::with_capacity(1 + HANDSHAKE_SIZE);
        out.push(RTMP_VERSION);
        out.extend_from_slice(&random_packet());
        (
            Self {
                stage: Stage::AwaitS0S1S2,
                buf: Vec::new(),
            },
            out,
        )
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Feeds bytes from the peer; appends what must be sent back to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<HandshakeStatus, RtmpError> {
        if self.stage == Stage::Done {
            return Ok(HandshakeStatus::Done {
                remaining: input.to_vec(),
            });
        }
        self.buf.extend_from_slice(input);
        loop {
            match self.stage {
                Stage::AwaitC0C1 => {
                    let Some((c0c1, _)) = self.buf.split_at_checked(1 + HANDSHAKE_SIZE) else {
                        return self.in_progress();
                    };
                    let (c0, c1) = c0c1.split_at(1);
                    check_version(c0)?;
                    out.push(RTMP_VERSION);
                    out.extend_from_slice(&random_packet()); // S1
                    out.extend_from_slice(c1); // S2 = echo of C1
                    self.buf.drain(..1 + HANDSHAKE_SIZE);
                    self.stage = Stage::AwaitC2;
                }
                Stage::AwaitC2 => {
                    if self.buf.len() < HANDSHAKE_SIZE {
                        return self.in_progress();
                    }
                    self.buf.drain(..HANDSHAKE_SIZE);
                    return Ok(self.finish());
                }
                Stage::AwaitS0S1S2 => {
                    let Some((s0s1s2, _)) = self.buf.split_at_checked(1 + 2 * HANDSHAKE_SIZE)
                    else {
                        return self.in_progress();
                    };
                    let (s0, s1s2) = s0s1s2.split_at(1);
                    check_version(s0)?;
                    let (s1, _s2) = s1s2.split_at(HANDSHAKE_SIZE);
                    out.extend_from_slice(s1); // C2 = echo of S1
                    self.buf.drain(..1 + 2 * HANDSHAKE_SIZE);
                    return Ok(self.finish());
                }
                Stage::Done => return Ok(self.finish()),
            }
        }
    }

    /// Checks the version as soon as the first byte is there, so a non-RTMP peer (an
    /// HTTP request, a TLS hello) is refused at once instead of after 1537 bytes.
    fn in_progress(&self) -> Result<HandshakeStatus, RtmpError> {
        if matches!(self.stage, Stage::AwaitC0C1 | Stage::AwaitS0S1S2)
            && let Some(first) = self.buf.first()
        {
            check_version(std::slice::from_ref(first))?;
        }
        Ok(HandshakeStatus::InProgress)
    }

    fn finish(&mut self) -> HandshakeStatus {
        self.stage = Stage::Done;
        HandshakeStatus::Done {
            remaining: std::mem::take(&mut self.buf),
        }
    }
}

fn check_version(c0: &[u8]) -> Result<(), RtmpError> {
    match c0.first() {
        Some(&RTMP_VERSION) => Ok(()),
        Some(&v) => Err(RtmpError::UnsupportedVersion(v)),
        None => Ok(()),
    }
}

/// C1/S1: time (0), four zero bytes (= simple handshake), 1528 random bytes. The random
/// part only has to differ between connections; it is not a secret.
fn random_packet() -> [u8; HANDSHAKE_SIZE] {
    let mut packet = [0u8; HANDSHAKE_SIZE];
    let mut state = RandomState::new().build_hasher().finish() | 1;
    for chunk in packet[8..].chunks_mut(8) {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: HandshakeStatus) -> Vec<u8> {
        match status {
            HandshakeStatus::Done { remaining } => remaining,
            HandshakeStatus::InProgress => panic!("expected the handshake to be done"),
        }
    }

    #[test]
    fn client_and_server_complete_and_echo() {
        let (mut client, c0c1) = Handshake::client();
        assert_eq!(c0c1.len(), 1537);
        assert_eq!(c0c1[0], 3);
        assert_eq!(&c0c1[5..9], &[0, 0, 0, 0]);
        let mut server = Handshake::server();

        let mut s_out = Vec::new();
        assert_eq!(
            server.feed(&c0c1, &mut s_out),
            Ok(HandshakeStatus::InProgress)
        );
        assert_eq!(s_out.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(&s_out[1 + HANDSHAKE_SIZE..], &c0c1[1..], "S2 echoes C1");

        let mut c_out = Vec::new();
        // The server's bytes plus the start of the chunk stream that follows.
        let mut input = s_out.clone();
        input.extend_from_slice(b"after");
        let rest = done(client.feed(&input, &mut c_out).expect("client ok"));
        assert_eq!(rest, b"after");
        assert_eq!(c_out, &s_out[1..1 + HANDSHAKE_SIZE], "C2 echoes S1");
        assert!(client.is_done());

        let mut c2 = c_out.clone();
        c2.extend_from_slice(b"connect...");
        let rest = done(server.feed(&c2, &mut Vec::new()).expect("server ok"));
        assert_eq!(rest, b"connect...");
        assert!(server.is_done());
    }

    #[test]
    fn byte_by_byte_feeding_works() {
        let (mut client, c0c1) = Handshake::client();
        let mut server = Handshake::server();
        let mut s_out = Vec::new();
        for b in &c0c1 {
            assert_eq!(
                server.feed(&[*b], &mut s_out),
                Ok(HandshakeStatus::InProgress)
            );
        }
        let mut c_out = Vec::new();
        let mut finished = false;
        for b in &s_out {
            if let HandshakeStatus::Done { remaining } = client.feed(&[*b], &mut c_out).expect("ok")
            {
                assert!(remaining.is_empty());
                finished = true;
            }
        }
        assert!(finished);
        let mut server_done = false;
        for b in &c_out {
            if let HandshakeStatus::Done { .. } = server.feed(&[*b], &mut Vec::new()).expect("ok") {
                server_done = true;
            }
        }
        assert!(server_done);
    }

    #[test]
    fn wrong_version_is_refused_on_the_first_byte() {
        let mut server = Handshake::server();
        assert_eq!(
            server.feed(b"G", &mut Vec::new()),
            Err(RtmpError::UnsupportedVersion(b'G'))
        );
        let (mut client, _) = Handshake::client();
        assert_eq!(
            client.feed(&[6], &mut Vec::new()),
            Err(RtmpError::UnsupportedVersion(6))
        );
    }

    #[test]
    fn random_parts_differ_between_connections() {
        let (_, a) = Handshake::client();
        let (_, b) = Handshake::client();
        assert_ne!(a[9..], b[9..]);
    }
}
