//! `skiff dns`: the cluster DNS server against a server; `skiff server` runs the same in
//! process, published as the `kube-system/kube-dns` Service at the tenth address of the
//! service range (kubeadm's choice), which its kubelet gives ClusterFirst pods.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args, Clone, Debug)]
pub struct DnsArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The address to answer on (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    #[command(flatten)]
    pub serve: DnsServeArgs,
    /// Also make the `kube-system/kube-dns` Service at this ClusterIP, pointing at
    /// `--advertise-address` (the kubeconfig must allow writing Services and Endpoints
    /// in kube-system).
    #[arg(long, requires = "advertise_address")]
    pub publish_cluster_ip: Option<String>,
    /// The address the Service's endpoint names (where pods reach this server).
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
}

/// Flags shared with `skiff server`.
#[derive(clap::Args, Clone, Debug)]
pub struct DnsServeArgs {
    /// The cluster domain answered for.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The port DNS answers on (0: a free one; the kube-dns Service maps port 53 to it).
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Resolvers for names outside the cluster (repeatable; default: the host's
    /// /etc/resolv.conf).
    #[arg(long = "dns-upstream")]
    pub dns_upstreams: Vec<SocketAddr>,
}

impl DnsServeArgs {
    pub fn config(&self, bind: IpAddr) -> skiff_dns::Config {
        let upstreams = if self.dns_upstreams.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            skiff_dns::server::resolv_conf_servers(&text)
        } else {
            self.dns_upstreams.clone()
        };
        skiff_dns::Config {
            domain: self.cluster_domain.clone(),
            listen: SocketAddr::new(bind, self.dns_port),
            upstreams,
            ttl: 5,
        }
    }
}

pub async fn run(args: DnsArgs) -> Result<()> {
    let config = args.serve.config(args.bind_address);
    let publish = args
        .publish_cluster_ip
        .clone()
        .zip(args.advertise_address)
        .map(|(cluster_ip, address)| (cluster_ip, address, args.kubeconfig.clone()));
    run_until(
        args.kubeconfig,
        config,
        publish,
        crate::server::shutdown_signal_quiet(),
    )
    .await
}

/// Runs the DNS server until `shutdown`; once it answers, `publish` (ClusterIP,
/// advertised address, a kubeconfig that may write the Service) makes its Service.
pub async fn run_until(
    kubeconfig: PathBuf,
    config: skiff_dns::Config,
    publish: Option<(String, IpAddr, PathBuf)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let client = crate::scheduler::client(&kubeconfig, "skiff-dns").await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let publishing = async move {
        let Ok(addr) = ready_rx.await else {
            return Ok(());
        };
        let Some((cluster_ip, address, admin)) = publish else {
            return Ok(());
        };
        let client = crate::scheduler::client(&admin, "skiff-dns").await?;
        let target = skiff_dns::publish::Publish {
            cluster_ip: cluster_ip.clone(),
            address,
            port: addr.port(),
        };
        // The API server may still be starting its controllers: try for a while.
        let mut attempt = 0;
        loop {
            match skiff_dns::publish::publish(client.clone(), &target).await {
                Ok(()) => {
                    tracing::info!(%cluster_ip, endpoint = %SocketAddr::new(address, addr.port()), "published the kube-dns Service");
                    return Ok::<(), anyhow::Error>(());
                }
                Err(e) if attempt < 30 => {
                    tracing::debug!(error = %e, "publishing the kube-dns Service");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e).context("publishing the kube-dns Service"),
            }
        }
    };
    let serving = skiff_dns::run(client, config, Some(ready_tx));
    tokio::pin!(serving);
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut serving => result.context("cluster DNS")?,
        result = publishing => {
            if let Err(e) = result {
                tracing::error!(error = %format!("{e:#}"), "cluster DNS");
            }
            tokio::select! {
                result = serving => result.context("cluster DNS")?,
                () = &mut shutdown => {}
            }
        }
        () = &mut shutdown => {}
    }
    Ok(())
}
