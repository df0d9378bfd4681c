//! The node side: `skiff agent` runs this node's container runtime and kubelet against a
//! server; `skiff server` runs the same in process next to the control plane unless
//! `--disable-agent`. With `--container-runtime-endpoint` the kubelet drives another CRI
//! runtime (containerd) and skiff's own is not started.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The node's flags, shared by `skiff agent` and `skiff server`.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeAgentArgs {
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the address of the default route's interface).
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// Drive this CRI runtime socket instead of running skiff's own runtime.
    #[arg(long)]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// The socket skiff's runtime serves CRI on.
    #[arg(long, default_value = "/run/skiff/cri.sock")]
    pub cri_socket: PathBuf,
    /// skiff's runtime's data directory (default: `<data-dir>/runtime`).
    #[arg(long)]
    pub runtime_data_dir: Option<PathBuf>,
    /// Where container logs go.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// Where the CNI network configuration is. When it holds none, the kubelet writes a
    /// bridge network over the node's pod CIDR (Debian's bridge, host-local and portmap
    /// plugins) once the controller manager has given it one.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are (repeatable; searched in order).
    #[arg(long, default_values = ["/opt/cni/bin", "/usr/lib/cni"])]
    pub cni_bin_dir: Vec<PathBuf>,
    /// The cgroup pods go under.
    #[arg(long, default_value = "/skiff")]
    pub cgroup_parent: String,
    /// Cluster DNS server addresses for ClusterFirst pods (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<String>,
    /// Pods the node accepts.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// The kubelet API's port (0: a free one, reported in the Node's status).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// A directory of static pod manifests the kubelet runs (shown as mirror pods).
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// Hard eviction thresholds (`signal<quantity|percent%`, comma-separated).
    #[arg(
        long,
        default_value = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%"
    )]
    pub eviction_hard: String,
    /// Percent of the image filesystem in use from which unused images are removed
    /// (100: never).
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,
    /// Percent of the image filesystem in use image collection frees down to.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Where node state lives (skiff's runtime keeps `runtime/` here).
    #[arg(long, default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeAgentArgs,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    run_until(
        args.kubeconfig,
        args.data_dir,
        args.node,
        crate::server::shutdown_signal_quiet(),
    )
    .await
}

/// Runs the runtime (unless another is named) and the kubelet until `shutdown`.
pub async fn run_until(
    kubeconfig: PathBuf,
    data_dir: PathBuf,
    node: NodeAgentArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut runtime = None;
    let socket = match &node.container_runtime_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => {
            let exe = std::env::current_exe().context("finding the skiff binary for monitors")?;
            let config = skiff_runtime::Config {
                data_dir: node
                    .runtime_data_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("runtime")),
                listen: node.cri_socket.clone(),
                oci_runtime: "runc".into(),
                cni_conf_dir: node.cni_conf_dir.clone(),
                cni_bin_dirs: node.cni_bin_dir.clone(),
                cgroup_parent: node.cgroup_parent.clone(),
                monitor: vec![exe.clone().into_os_string(), "runtime-monitor".into()],
                pause: vec![exe.clone().into_os_string(), "runtime-pause".into()],
                exec_wait: vec![exe.into_os_string(), "runtime-exec-wait".into()],
                streaming_address: "127.0.0.1:0".parse()?,
            };
            runtime = Some(tokio::spawn(skiff_runtime::run(
                config,
                wait(stopped.clone()),
            )));
            node.cri_socket.clone()
        }
    };
    let client = crate::scheduler::client(&kubeconfig).await?;
    let config = skiff_kubelet::Config {
        node_name: node
            .node_name
            .clone()
            .unwrap_or_else(crate::kubelet::host_name),
        cri_socket: socket,
        pod_log_dir: node.pod_log_dir.clone(),
        node_ip: node.node_ip,
        max_pods: node.max_pods,
        cluster_dns: node.cluster_dns.clone(),
        // Only the API server (its kubelet client certificate) gets in; without the
        // cluster CA here (a joined node: issue 8) the API is not served.
        api: Some(data_dir.join("pki/ca.crt"))
            .filter(|ca| ca.exists())
            .map(|client_ca| skiff_kubelet::ApiConfig {
                address: std::net::SocketAddr::new(
                    std::net::Ipv4Addr::UNSPECIFIED.into(),
                    node.kubelet_port,
                ),
                client_ca,
            }),
        root_dir: data_dir.join("kubelet"),
        static_pod_path: node.pod_manifest_path.clone(),
        eviction_hard: skiff_kubelet::eviction::parse(&node.eviction_hard)
            .map_err(anyhow::Error::msg)
            .context("--eviction-hard")?,
        image_gc: crate::kubelet::image_policy(
            node.image_gc_high_threshold,
            node.image_gc_low_threshold,
            skiff_kubelet::ImagePolicy::default().minimum_age,
            skiff_kubelet::ImagePolicy::default().period,
        )?,
        default_cni: Some(skiff_kubelet::DefaultCni {
            conf_dir: node.cni_conf_dir.clone(),
            bin_dirs: node.cni_bin_dir.clone(),
        }),
        ..Default::default()
    };
    let kubelet = skiff_kubelet::run(client, config, wait(stopped));
    tokio::pin!(kubelet);
    let result = tokio::select! {
        () = shutdown => Ok(()),
        result = &mut kubelet => result.context("kubelet"),
        Some(result) = async { match runtime.as_mut() { Some(r) => Some(r.await), None => None } } => {
            match result {
                Ok(Ok(())) => Err(anyhow::anyhow!("the runtime stopped")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("runtime")),
                Err(e) => Err(anyhow::Error::new(e).context("runtime task")),
            }
        }
    };
    let _ = stop.send(true);
    if let Some(runtime) = runtime {
        let _ = runtime.await;
    }
    result
}
