//! pushcast's API types.
//!
//! The generated gRPC code lives in [`v1`]; the rest of the workspace works with the
//! hand-written domain types of [`model`] and reports failures with the one error type of
//! [`error`], which maps to both an HTTP status and a gRPC code, so the REST gateway and
//! the gRPC services can never disagree on what a failure means.
#![forbid(unsafe_code)]

pub mod destination;
pub mod error;
pub mod keys;
pub mod model;
pub mod publish_keys;
pub mod rules;
pub mod secret;
pub mod time;
pub mod vhosts;

pub use error::{ApiError, ErrorKind};

/// Generated messages and services of `pushcast.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("pushcast.v1");

    /// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("pushcast_descriptor");
}
