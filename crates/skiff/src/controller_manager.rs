//! `skiff controller-manager`: the control loops as their own process against any API
//! server, with leader election through the `kube-system/kube-controller-manager` Lease.
//! `skiff server` runs them in process, against its own API server over loopback HTTPS.

use std::future::Future;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::scheduler::{client_config, run_elected};

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
    /// The CA certificate the CSR signer issues with (PEM).
    #[arg(long, requires = "cluster_signing_key_file")]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// The CA's private key (PEM).
    #[arg(long, requires = "cluster_signing_cert_file")]
    pub cluster_signing_key_file: Option<PathBuf>,
    /// Run each controller as its own service account (`kube-system/<controller>`, with
    /// the `system:controller:*` roles) instead of with this process's credentials.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub use_service_account_credentials: bool,
    /// The longest a signed certificate is valid.
    #[arg(long, default_value = "8760h", value_parser = crate::join::parse_duration)]
    pub cluster_signing_duration: std::time::Duration,
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

/// The cluster CA in PEM, from the kubeconfig (inline or a file), for the root CA
/// publisher.
pub fn root_ca(kubeconfig: &std::path::Path) -> Option<String> {
    use base64::Engine;
    let config = kube::config::Kubeconfig::read_from(kubeconfig).ok()?;
    let context = config.current_context.as_ref().and_then(|current| {
        config
            .contexts
            .iter()
            .find(|c| &c.name == current)
            .and_then(|c| c.context.as_ref())
    });
    let cluster = config
        .clusters
        .iter()
        .find(|c| context.is_none_or(|ctx| ctx.cluster == c.name))
        .and_then(|c| c.cluster.as_ref())?;
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()?;
        return String::from_utf8(pem).ok();
    }
    std::fs::read_to_string(cluster.certificate_authority.as_ref()?).ok()
}

pub async fn run(args: ControllerManagerArgs) -> Result<()> {
    run_until(args, crate::server::shutdown_signal_quiet()).await
}

/// Runs until `shutdown` completes (releasing the lease) or a controller fails.
pub async fn run_until(
    args: ControllerManagerArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let client_config = client_config(&args.kubeconfig, "kube-controller-manager").await?;
    let client =
        kube::Client::try_from(client_config.clone()).context("creating the API client")?;
    let mut config = skiff_controllers::Config::default();
    if !args.controllers.is_empty() {
        config.controllers = args.controllers.clone();
    }
    config.node_monitor_grace_period =
        std::time::Duration::from_secs(args.nodes.node_monitor_grace_period);
    config.cluster_cidr = args.nodes.cluster_cidr.clone();
    config.root_ca = root_ca(&args.kubeconfig);
    if args.use_service_account_credentials {
        config.credentials = skiff_controllers::Credentials::ServiceAccounts {
            config: Box::new(client_config),
        };
    }
    if let (Some(cert), Some(key)) = (
        &args.cluster_signing_cert_file,
        &args.cluster_signing_key_file,
    ) {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        config.signing = Some(skiff_controllers::certificates::Signing {
            ca_cert_pem: read(cert)?,
            ca_key_pem: read(key)?,
            duration: args.cluster_signing_duration,
        });
    }
    let lease = args.leader_elect.then_some("kube-controller-manager");
    let work = || skiff_controllers::run(client.clone(), config.clone());
    run_elected(&client, lease, args.identity.clone(), work, shutdown)
        .await
        .context("controller manager")
}
