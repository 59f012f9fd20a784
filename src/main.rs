//! `pushcast`: the standalone mode. A controller and a worker in one process on the
//! embedded store (unless --etcd-endpoints is given): the laptop / demo setup. Same code
//! paths as the distributed mode; the controller reaches the worker over loopback gRPC.

use clap::Parser;
use pushcast_controller::config::{ControllerArgs, ControllerConfig, vhosts_from};
use pushcast_runtime::cli::CommonArgs;
use pushcast_runtime::config_file::parse_args;
use pushcast_worker::WorkerArgs;

#[derive(Parser, Debug)]
#[command(
    name = "pushcast",
    version,
    about = "pushcast standalone: controller + worker in one process",
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    controller: ControllerArgs,
    #[command(flatten)]
    worker: WorkerArgs,
    /// The in-process worker's WorkerService (the controller calls it for live counters).
    #[arg(long, env = "PUSHCAST_WORKER_GRPC_ADDR", default_value = "127.0.0.1:0")]
    worker_grpc_addr: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pushcast_runtime::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    // One rustls provider for the process (ring): the https callbacks and any library
    // that uses the default.
    pushcast_runtime::tls::install_provider();
    let telemetry = pushcast_runtime::logging::init("pushcast");
    let (cli, file) = parse_args::<Cli>()?;
    let (vhosts, apps) = vhosts_from(&file)?;
    let shutdown = pushcast_runtime::shutdown::on_signal();
    cli.common.serve_metrics(&shutdown).await?;
    let store = cli.common.open_store().await?;
    let node_id = cli.common.node_id();
    let mut worker_args = cli.worker;
    worker_args.grpc_tls = cli.common.grpc_tls.clone();
    worker_args.webhook_tls = cli.common.webhook_tls.clone();
    let worker = pushcast_worker::start(
        worker_args,
        cli.worker_grpc_addr,
        node_id.clone(),
        store.clone(),
        shutdown.clone(),
    )
    .await?;
    let mut controller_args = cli.controller;
    controller_args.grpc_tls = cli.common.grpc_tls.clone();
    controller_args.webhook_tls = cli.common.webhook_tls.clone();
    if controller_args.public_ingest_url.is_none() {
        let ip = worker.rtmp_addr.ip();
        let host = if ip.is_unspecified() {
            "localhost".to_string()
        } else {
            ip.to_string()
        };
        controller_args.public_ingest_url =
            Some(format!("rtmp://{host}:{}", worker.rtmp_addr.port()));
    }
    let controller_args_tls = controller_args.rest_tls_cert.is_some();
    let cfg = ControllerConfig {
        args: controller_args,
        vhosts,
        apps,
        node_id,
    };
    // The controller stays up while the worker drains, then stops with it.
    let controller_stop = pushcast_runtime::CancellationToken::new();
    let (stopped, cs) = (worker.stopped.clone(), controller_stop.clone());
    tokio::spawn(async move {
        stopped.cancelled().await;
        cs.cancel();
    });
    let controller = pushcast_controller::start(cfg, store, controller_stop).await?;
    println!("pushcast standalone is up");
    let rest_scheme = if controller_args_tls { "https" } else { "http" };
    println!(
        "  REST API (OME-compatible): {rest_scheme}://{}",
        controller.rest_addr
    );
    println!("  gRPC API:                  {}", controller.grpc_addr);
    println!(
        "  RTMP ingest:               rtmp://{}/app/<stream>",
        worker.rtmp_addr
    );
    if let Some(addr) = worker.rtmps_addr {
        println!("  RTMPS ingest:              rtmps://{addr}/app/<stream>");
    }
    if let Some(token) = &controller.generated_token {
        println!("  access token:              {token}");
        println!(
            "  try: curl -H \"Authorization: Basic $(printf %s '{token}' | base64 -w0)\" {rest_scheme}://{}/v1/vhosts/default/apps/app:pushes",
            controller.rest_addr
        );
    }
    let (c, w) = tokio::join!(controller.wait(), worker.wait());
    telemetry.shutdown();
    c.and(w)
}
