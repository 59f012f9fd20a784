//! The one error type of the API, mapped to HTTP status codes and gRPC codes.

/// What kind of failure an API call met; decides the HTTP status and the gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    NotFound,
    Conflict,
    PayloadTooLarge,
    /// The state store (etcd) cannot be reached; the call may be retried.
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::BadRequest => tonic::Code::InvalidArgument,
            ErrorKind::Unauthorized => tonic::Code::Unauthenticated,
            ErrorKind::NotFound => tonic::Code::NotFound,
            // OME answers a duplicate id with 400; over gRPC it is still a conflict.
            ErrorKind::Conflict => tonic::Code::AlreadyExists,
            ErrorKind::PayloadTooLarge => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }
}

/// An API failure: a kind and the human-readable text of the contract
/// (without the `[HTTP] ... (N)` frame, which the REST gateway adds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The gRPC code when it differs from the kind's default (OME's `Duplicate ID` is an
    /// HTTP 400 but an `AlreadyExists` for gRPC clients).
    pub grpc_code: Option<tonic::Code>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            grpc_code: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn with_grpc_code(mut self, code: tonic::Code) -> Self {
        self.grpc_code = Some(code);
        self
    }
    pub fn http_status(&self) -> u16 {
        self.kind.http_status()
    }
    pub fn grpc_code(&self) -> tonic::Code {
        self.grpc_code.unwrap_or_else(|| self.kind.grpc_code())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.grpc_code(), e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_http_and_grpc() {
        let e = ApiError::bad_request("Duplicate ID").with_grpc_code(tonic::Code::AlreadyExists);
        assert_eq!(e.http_status(), 400);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::AlreadyExists);
        let e = ApiError::unavailable("etcd down");
        assert_eq!(e.http_status(), 503);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    }
}
