//! `pushcast-worker`: the data plane as its own process.

use std::net::SocketAddr;

use clap::Parser;
use pushcast_runtime::cli::CommonArgs;
use pushcast_runtime::config_file::parse_args;
use pushcast_worker::WorkerArgs;

#[derive(Parser, Debug)]
#[command(
    name = "pushcast-worker",
    version,
    about = "pushcast data plane: RTMP ingest and push sessions",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    worker: WorkerArgs,
    /// WorkerService (called by the controllers).
    #[arg(long, env = "PUSHCAST_GRPC_ADDR", default_value = "0.0.0.0:9100")]
    grpc_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pushcast_runtime::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    // One rustls provider for the process (ring): the https callbacks and any library
    // that uses the default.
    pushcast_runtime::tls::install_provider();
    let telemetry = pushcast_runtime::logging::init("pushcast-worker");
    let (cli, _file) = parse_args::<Cli>()?;
    let shutdown = pushcast_runtime::shutdown::on_signal();
    cli.common.serve_metrics(&shutdown).await?;
    let store = cli.common.open_store().await?;
    let mut args = cli.worker;
    args.grpc_tls = cli.common.grpc_tls.clone();
    args.webhook_tls = cli.common.webhook_tls.clone();
    let worker =
        pushcast_worker::start(args, cli.grpc_addr, cli.common.node_id(), store, shutdown).await?;
    let result = worker.wait().await;
    telemetry.shutdown();
    result
}
