//! `skiff controller-manager`: the control loops as their own process against any API
//! server, with leader election through the `kube-system/kube-controller-manager` Lease.
//! `skiff server` runs them in process, against its own API server over loopback HTTPS.

use std::future::Future;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::scheduler::{client, run_elected};

#[derive(clap::Args, Clone)]
pub struct ControllerManagerArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Elect one active copy through the `kube-system/kube-controller-manager` Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// This copy's name in the Lease (default: host name and process id).
    #[arg(long)]
    pub identity: Option<String>,
    /// The controllers to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub controllers: Vec<String>,
    #[command(flatten)]
    pub nodes: NodeArgs,
}

/// Node lifecycle settings, shared with `skiff server`.
#[derive(clap::Args, Clone)]
pub struct NodeArgs {
    /// Seconds a node may go without renewing its Lease before it is Ready=Unknown and
    /// tainted unreachable.
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// The range node pod CIDRs (/24 each) are assigned from.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
}

pub async fn run(args: ControllerManagerArgs) -> Result<()> {
    run_until(args, crate::server::shutdown_signal_quiet()).await
}

/// Runs until `shutdown` completes (releasing the lease) or a controller fails.
pub async fn run_until(
    args: ControllerManagerArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let client = client(&args.kubeconfig).await?;
    let mut config = skiff_controllers::Config::default();
    if !args.controllers.is_empty() {
        config.controllers = args.controllers.clone();
    }
    config.node_monitor_grace_period =
        std::time::Duration::from_secs(args.nodes.node_monitor_grace_period);
    config.cluster_cidr = args.nodes.cluster_cidr.clone();
    let lease = args.leader_elect.then_some("kube-controller-manager");
    let work = || skiff_controllers::run(client.clone(), config.clone());
    run_elected(&client, lease, args.identity.clone(), work, shutdown)
        .await
        .context("controller manager")
}
