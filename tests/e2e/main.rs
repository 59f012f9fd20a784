//! The end-to-end tests: the real binaries against real etcd, encoders, receivers and
//! webhook receivers on 127.0.0.1, started and stopped by the tests through the test
//! sandbox (`pushcast-testkit`). One test binary, a module per area, so the suite links
//! once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod callbacks;
mod chaos;
mod cluster;
mod console;
mod continuity;
mod controller_cluster;
mod data_plane;
mod drain;
mod enhanced_rtmp;
mod etcd_security;
mod grpc_api;
mod health;
mod ingest;
mod metrics;
mod multi_destination;
mod openapi;
mod rest_api;
mod rules;
mod srt_ingest;
mod stream_keys;
mod tls;
mod tracing;
mod vhosts;

/// A gRPC channel to `node`'s API (plain HTTP/2).
async fn grpc_channel(node: &pushcast_testkit::api::Node) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(node.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The sandbox starts the binaries Cargo built for this test: the same files as its
/// `CARGO_BIN_EXE_*`, never a stale copy.
#[test]
fn the_sandbox_runs_the_binaries_cargo_built() {
    use pushcast_testkit::process::binary;
    for (name, built) in [
        ("pushcast", env!("CARGO_BIN_EXE_pushcast")),
        (
            "pushcast-controller",
            env!("CARGO_BIN_EXE_pushcast-controller"),
        ),
        ("pushcast-worker", env!("CARGO_BIN_EXE_pushcast-worker")),
    ] {
        assert_eq!(binary(name), std::path::Path::new(built), "{name}");
    }
}
