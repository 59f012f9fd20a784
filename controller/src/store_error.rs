//! How state-store failures look to API callers.

use pushcast_proto::ApiError;
use pushcast_store::StoreError;

/// Maps a store failure to the API: an unreachable store is 503 (retry later), the rest 500.
pub fn api_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(msg) => {
            metrics::counter!("pushcast_store_errors_total", "kind" => "unavailable").increment(1);
            ApiError::unavailable(format!(
                "State store is unavailable, try again later: {msg}"
            ))
        }
        other => ApiError::internal(format!("State store error: {other}")),
    }
}

/// Decodes a JSON value read from the store; a corrupt one is an internal error.
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("corrupt value at {key}: {e}")))
}

pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::internal(format!("cannot encode value: {e}")))
}
