//! The ingest's bounds on whoever connects: how many connections at once, in total and
//! per address, and how large an admitted publisher's messages may be. Before a publish
//! is admitted, a connection holds at most a small read buffer, the handshake's 3 KiB and
//! [`DecoderConfig::commands_only`]'s 64 KiB message / 128 KiB partial bounds, so
//! the total an attacker can make the worker hold is bounded by construction: about
//! `max_connections` × 200 KiB at worst.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use pushcast_rtmp::DecoderConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open connections by address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The configured bounds, shared by every ingest connection (RTMP and RTMPS).
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Largest message (frame) of an admitted publisher.
    pub max_message_bytes: u32,
    /// Connections at once; `None` = no limit.
    total: Option<Arc<Semaphore>>,
    total_max: usize,
    /// Connections at once from one address; 0 = no limit.
    per_address_max: usize,
    per_address: PerAddress,
}

/// Why a connection was not taken (the `reason` of `pushcast_ingest_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("{0} ingest connections already open (--max-ingest-connections)")]
    Total(usize),
    #[error(
        "{0} ingest connections already open from this address (--max-ingest-connections-per-ip)"
    )]
    PerAddress(usize),
}

impl Full {
    pub fn label(&self) -> &'static str {
        match self {
            Full::Total(_) => "connection limit",
            Full::PerAddress(_) => "per-address limit",
        }
    }
}

/// A connection's place under the limits, given back when it is dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    address: Option<(IpAddr, PerAddress)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, map)) = self.address.take() {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits::new(0, 0, DEFAULT_MAX_MESSAGE_BYTES)
    }
}

/// `--max-message-bytes`' default: a 4K keyframe at a high bitrate is a few MB.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 8 * 1024 * 1024;

impl IngestLimits {
    /// `max_total` and `max_per_address` of 0 mean no limit.
    pub fn new(max_total: usize, max_per_address: usize, max_message_bytes: u32) -> Self {
        IngestLimits {
            max_message_bytes,
            total: (max_total > 0).then(|| Arc::new(Semaphore::new(max_total))),
            total_max: max_total,
            per_address_max: max_per_address,
            per_address: Arc::default(),
        }
    }

    /// A place for a new connection from `ip`, or why there is none.
    pub fn take(&self, ip: IpAddr) -> Result<Slot, Full> {
        let permit = match &self.total {
            Some(s) => Some(
                s.clone()
                    .try_acquire_owned()
                    .map_err(|_| Full::Total(self.total_max))?,
            ),
            None => None,
        };
        let address = if self.per_address_max > 0 {
            let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.per_address_max {
                return Err(Full::PerAddress(self.per_address_max));
            }
            *n += 1;
            Some((ip, self.per_address.clone()))
        } else {
            None
        };
        Ok(Slot {
            _permit: permit,
            address,
        })
    }

    /// The decoder limits of an admitted publisher.
    pub fn admitted(&self) -> DecoderConfig {
        DecoderConfig::admitted(self.max_message_bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_total_cap_refuses_the_one_too_many_and_a_closed_one_frees_its_place() {
        let limits = IngestLimits::new(2, 0, 1024);
        let a = limits.take(ip(1)).unwrap();
        let _b = limits.take(ip(2)).unwrap();
        assert_eq!(limits.take(ip(3)).unwrap_err(), Full::Total(2));
        drop(a);
        assert!(limits.take(ip(3)).is_ok());
    }

    #[test]
    fn the_per_address_cap_counts_each_address_apart() {
        let limits = IngestLimits::new(0, 2, 1024);
        let one: Vec<Slot> = (0..2).map(|_| limits.take(ip(1)).unwrap()).collect();
        assert_eq!(limits.take(ip(1)).unwrap_err(), Full::PerAddress(2));
        assert_eq!(Full::PerAddress(2).label(), "per-address limit");
        let _other = limits.take(ip(2)).unwrap();
        drop(one);
        let _again = limits.take(ip(1)).unwrap();
        assert_eq!(
            limits.per_address.lock().unwrap().get(&ip(1)),
            Some(&1),
            "the closed ones were counted out"
        );
    }

    #[test]
    fn a_refusal_by_address_gives_back_its_total_place() {
        let limits = IngestLimits::new(2, 1, 1024);
        let _a = limits.take(ip(1)).unwrap();
        assert_eq!(limits.take(ip(1)).unwrap_err(), Full::PerAddress(1));
        let _b = limits.take(ip(2)).unwrap();
        assert_eq!(limits.take(ip(3)).unwrap_err(), Full::Total(2));
    }

    #[test]
    fn zero_means_no_limit() {
        let limits = IngestLimits::default();
        let slots: Vec<Slot> = (0..1000).map(|_| limits.take(ip(1)).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
        assert_eq!(
            limits.admitted().max_message_size,
            DEFAULT_MAX_MESSAGE_BYTES
        );
    }
}
