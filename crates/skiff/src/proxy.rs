//! `skiff proxy`: the service proxy (upstream's kube-proxy) for this node, against a
//! server; `skiff server` runs the same in process with its agent. `--cleanup` removes
//! its rules and exits.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args, Clone, Debug)]
pub struct ProxyArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long, required_unless_present = "cleanup")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (default: the host name), for `Local` traffic policies.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The pods' address range: Service traffic from outside it is masqueraded, so
    /// replies come back through this node.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    #[command(flatten)]
    pub rules: ProxyRuleArgs,
    /// Remove the proxy's rules and exit (those of `--proxy-mode` when given, else of
    /// both modes).
    #[arg(long)]
    pub cleanup: bool,
}

/// Flags shared with `skiff server` and `skiff agent`.
#[derive(clap::Args, Clone, Debug)]
pub struct ProxyRuleArgs {
    /// How Services are programmed: `nftables` (default) or `iptables`.
    #[arg(long, value_parser = parse_mode)]
    pub proxy_mode: Option<skiff_proxy::Mode>,
    /// The least time between two rule syncs (changes in between are batched).
    #[arg(long, default_value = "100ms", value_parser = parse_millis)]
    pub min_sync_period: std::time::Duration,
    /// The nftables table the rules go in (tests run several proxies on one host).
    #[arg(long, default_value = skiff_proxy::DEFAULT_TABLE, hide = true)]
    pub proxy_nft_table: String,
}

fn parse_mode(text: &str) -> Result<skiff_proxy::Mode, String> {
    match text {
        "nftables" => Ok(skiff_proxy::Mode::Nftables),
        "iptables" => Ok(skiff_proxy::Mode::Iptables),
        "ipvs" => {
            Err("ipvs is not supported (this kernel has no IPVS); use nftables or iptables".into())
        }
        _ => Err(format!(
            "unknown proxy mode {text:?} (nftables or iptables)"
        )),
    }
}

/// `100ms`, `1s`, `1m`.
fn parse_millis(text: &str) -> Result<std::time::Duration, String> {
    match text.strip_suffix("ms") {
        Some(ms) => ms
            .parse()
            .map(std::time::Duration::from_millis)
            .map_err(|_| format!("invalid duration {text:?}")),
        None => crate::join::parse_duration(text),
    }
}

impl ProxyRuleArgs {
    pub fn config(&self, node_name: String, cluster_cidr: Option<String>) -> skiff_proxy::Config {
        let mut config = skiff_proxy::Config::new(node_name);
        config.cluster_cidr = cluster_cidr;
        config.mode = self.proxy_mode.unwrap_or_default();
        config.table = self.proxy_nft_table.clone();
        config.min_sync_period = self.min_sync_period;
        config
    }
}

pub async fn run(args: ProxyArgs) -> Result<()> {
    if args.cleanup {
        skiff_proxy::cleanup(&args.rules.proxy_nft_table, args.rules.proxy_mode)
            .await
            .context("removing the proxy's rules")?;
        eprintln!("removed the proxy's rules");
        return Ok(());
    }
    let Some(kubeconfig) = args.kubeconfig.clone() else {
        anyhow::bail!("--kubeconfig is required");
    };
    run_until(kubeconfig, args, crate::server::shutdown_signal_quiet()).await
}

/// Runs the proxy until `shutdown` completes; its rules stay (traffic keeps flowing
/// until the next proxy takes over).
pub async fn run_until(
    kubeconfig: PathBuf,
    args: ProxyArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let node = args
        .hostname_override
        .clone()
        .unwrap_or_else(crate::kubelet::host_name);
    let config = args.rules.config(node, args.cluster_cidr.clone());
    run_config(kubeconfig, config, shutdown).await
}

/// Runs the proxy with `config` until `shutdown` completes.
pub async fn run_config(
    kubeconfig: PathBuf,
    config: skiff_proxy::Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let client = crate::scheduler::client(&kubeconfig, "kube-proxy").await?;
    tracing::info!(mode = ?config.mode, table = %config.table, cluster_cidr = ?config.cluster_cidr, "service proxy");
    tokio::select! {
        result = skiff_proxy::run(client, config) => result.context("service proxy")?,
        () = shutdown => {}
    }
    Ok(())
}
