//! API authentication: `Authorization: Basic base64(<access token>)`, as OME does it,
//! for REST and gRPC alike.

use base64::Engine;
use pushcast_proto::ApiError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured access tokens; none means authentication is off (only when asked for).
#[derive(Clone)]
pub struct Auth {
    /// SHA-256 of each token: compared in constant time, and equal length whatever the token.
    digests: Vec<[u8; 32]>,
}

impl Auth {
    pub fn new(tokens: &[String]) -> Auth {
        Auth {
            digests: tokens
                .iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        }
    }

    pub fn disabled() -> Auth {
        Auth { digests: vec![] }
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Checks an `Authorization` header value, with the contract's five messages.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let Some(header) = header else {
            return Err(ApiError::unauthorized(
                "Authorization header is required to call API",
            ));
        };
        let text = String::from_utf8_lossy(header);
        let words: Vec<&str> = text.split_whitespace().collect();
        let [scheme, credential] = words.as_slice() else {
            return Err(ApiError::unauthorized("Invalid authorization header"));
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(ApiError::unauthorized(format!(
                "Not supported credential type: {scheme}"
            )));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .map_err(|_| ApiError::unauthorized("Invalid credential format"))?;
        let digest: [u8; 32] = Sha256::digest(&decoded).into();
        let mut ok = subtle::Choice::from(0u8);
        for d in &self.digests {
            ok |= d.ct_eq(&digest);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(ApiError::unauthorized("Invalid credential"))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(auth: &Auth, h: Option<&str>) -> String {
        auth.check(h.map(str::as_bytes)).unwrap_err().message
    }

    #[test]
    fn five_messages() {
        let a = Auth::new(&["ome-access-token".to_string()]);
        assert!(a.check(Some(b"Basic b21lLWFjY2Vzcy10b2tlbg==")).is_ok());
        assert_eq!(
            msg(&a, None),
            "Authorization header is required to call API"
        );
        assert_eq!(msg(&a, Some("Basic")), "Invalid authorization header");
        assert_eq!(
            msg(&a, Some("Bearer x")),
            "Not supported credential type: Bearer"
        );
        assert_eq!(msg(&a, Some("Basic !!!")), "Invalid credential format");
        assert_eq!(msg(&a, Some("Basic d3Jvbmc=")), "Invalid credential");
    }

    #[test]
    fn disabled_accepts_anything() {
        assert!(Auth::disabled().check(None).is_ok());
    }
}
