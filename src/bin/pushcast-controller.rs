//! `pushcast-controller`: the control plane as its own process.

use clap::Parser;
use pushcast_controller::config::{ControllerArgs, ControllerConfig, vhosts_from};
use pushcast_runtime::cli::CommonArgs;
use pushcast_runtime::config_file::parse_args;

#[derive(Parser, Debug)]
#[command(
    name = "pushcast-controller",
    version,
    about = "pushcast control plane: REST + gRPC API",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    controller: ControllerArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pushcast_runtime::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    // One rustls provider for the process (ring): the https callbacks and any library
    // that uses the default.
    pushcast_runtime::tls::install_provider();
    let telemetry = pushcast_runtime::logging::init("pushcast-controller");
    let (cli, file) = parse_args::<Cli>()?;
    let (vhosts, apps) = vhosts_from(&file)?;
    let shutdown = pushcast_runtime::shutdown::on_signal();
    cli.common.serve_metrics(&shutdown).await?;
    let store = cli.common.open_store().await?;
    let mut args = cli.controller;
    args.grpc_tls = cli.common.grpc_tls.clone();
    args.webhook_tls = cli.common.webhook_tls.clone();
    let cfg = ControllerConfig {
        args,
        vhosts,
        apps,
        node_id: cli.common.node_id(),
    };
    let controller = pushcast_controller::start(cfg, store, shutdown).await?;
    if let Some(token) = &controller.generated_token {
        println!("access token: {token}");
    }
    let result = controller.wait().await;
    telemetry.shutdown();
    result
}
