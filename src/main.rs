//! `pushcast`: the standalone mode. A controller and a worker in one process on the
//! embedded store (unless --etcd-endpoints is given): the laptop / demo setup.

use clap::Parser;
use pushcast_controller::config::{
    ControllerArgs, ControllerConfig, VhostSection, vhosts_or_default,
};
use pushcast_runtime::cli::CommonArgs;
use pushcast_runtime::config_file::ConfigFile;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pushcast_runtime::logging::init();
    let args: Vec<_> = std::env::args_os().collect();
    let file = ConfigFile::locate(&args)?;
    let cli = Cli::parse_from(file.merge_into_args(args));
    let (vhosts, apps) = vhosts_or_default(
        file.section::<std::collections::BTreeMap<String, VhostSection>>("vhosts")?,
    );
    let shutdown = pushcast_runtime::shutdown::on_signal();
    let store = cli.common.open_store().await?;
    let cfg = ControllerConfig {
        args: cli.controller,
        vhosts,
        apps,
        node_id: cli.common.node_id(),
    };
    let controller = pushcast_controller::start(cfg, store, shutdown).await?;
    println!("pushcast standalone is up");
    println!(
        "  REST API (OME-compatible): http://{}",
        controller.rest_addr
    );
    println!("  gRPC API:                  {}", controller.grpc_addr);
    if let Some(token) = &controller.generated_token {
        println!("  access token:              {token}");
        println!(
            "  try: curl -H \"Authorization: Basic $(printf %s '{token}' | base64 -w0)\" http://{}/v1/vhosts/default/apps/app:pushes",
            controller.rest_addr
        );
    }
    controller.wait().await
}
