//! pushcast's control plane: the OME-compatible REST gateway and the gRPC API over one
//! domain service ([`pushes::Pushes`]), with all state in the store.
#![forbid(unsafe_code)]

pub mod apps;
pub mod auth;
pub mod config;
pub mod console;
pub mod gateway;
pub mod grpc;
pub mod informer;
pub mod leader;
pub mod live_status;
pub mod notifier;
pub mod outbox;
pub mod publish_keys;
pub mod pushes;
pub mod requests;
pub mod rules;
pub mod scheduler;
pub mod server;
pub mod store_error;
pub mod worker_clients;

pub use config::{ControllerArgs, ControllerConfig};
pub use server::{Controller, start};
