//! Publish keys (the API's "stream keys", what encoders publish with): derived, never
//! stored.
//!
//! A stream's key is `base64url(HMAC-SHA256(cluster secret, vhost/app/stream/nonce))`
//! (256 bits). The store keeps only the per-stream random nonce and, for the ingest's
//! lookup, the SHA-256 of the key: a leaked store dump holds no usable key, yet the API
//! can return the current key at any time by deriving it again. Regenerating draws a new
//! nonce, so the old key stops working at once.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the store keeps of a stream's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishKeyRecord {
    /// Random, hex; the key is derived from it.
    pub nonce: String,
    pub created_ms: i64,
}

/// Derives the key of a stream.
pub fn derive(secret: &[u8], vhost: &str, app: &str, stream: &str, nonce: &str) -> String {
    // HMAC accepts a key of any length; `new_from_slice` cannot fail for HMAC.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    for part in [vhost, app, stream, nonce] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// What the ingest looks a presented key up by.
pub fn lookup_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_url_safe_and_bound_to_stream_and_nonce() {
        let k = derive(b"secret", "default", "app", "cam", "n1");
        assert_eq!(k.len(), 43);
        assert!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(k, derive(b"secret", "default", "app", "cam", "n1"));
        assert_ne!(k, derive(b"secret", "default", "app", "cam", "n2"));
        assert_ne!(k, derive(b"secret", "default", "app", "cam2", "n1"));
        assert_ne!(k, derive(b"other", "default", "app", "cam", "n1"));
        // Length-prefixed parts: no ambiguity between ("ab","c") and ("a","bc").
        assert_ne!(
            derive(b"s", "ab", "c", "x", "n"),
            derive(b"s", "a", "bc", "x", "n")
        );
        assert_eq!(lookup_hash(&k).len(), 64);
    }
}
