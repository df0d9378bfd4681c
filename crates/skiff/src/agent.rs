//! The node side: `skiff agent` runs this node's container runtime and kubelet against a
//! server (joining it first with `--server` and `--token`, see `join.rs`); `skiff server` runs the same in process next to the control plane unless
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
    /// Where the CNI network configuration is. When it holds no other network, the
    /// kubelet writes a bridge network over the node's pod CIDR (`10-skiff.conflist`,
    /// with the plugins `--default-cni` says) once the controller manager gave it one.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are (repeatable; searched in order). The first gets the
    /// `skiff-cni` link to this binary.
    #[arg(long, default_values = ["/opt/cni/bin", "/usr/lib/cni"])]
    pub cni_bin_dir: Vec<PathBuf>,
    /// The plugins of the default pod network: skiff's own (`skiff`), or Debian's
    /// containernetworking-plugins bridge, host-local and portmap (`debian`).
    #[arg(long, value_enum, default_value_t = DefaultCni::Skiff)]
    pub default_cni: DefaultCni,
    /// The default pod network's bridge.
    #[arg(long, default_value = skiff_kubelet::network_bridge(), hide = true)]
    pub cni_bridge: String,
    /// The cluster's pod CIDR, which pods reach without masquerade (set by `skiff server`).
    #[arg(skip)]
    pub cluster_cidr: Option<String>,
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

/// `--default-cni`'s choices.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultCni {
    Skiff,
    Debian,
}

/// Links `skiff-cni` in `dir` to this binary (replacing an older link), so the runtime
/// finds skiff's CNI plugin.
pub fn link_cni_plugin(dir: &std::path::Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the skiff binary")?;
    let link = dir.join(skiff_kubelet::SKIFF_PLUGIN);
    if std::fs::read_link(&link).is_ok_and(|target| target == exe) {
        return Ok(link);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = dir.join(format!(
        ".{}.{}",
        skiff_kubelet::SKIFF_PLUGIN,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&exe, &temporary)
        .and_then(|()| std::fs::rename(&temporary, &link))
        .with_context(|| format!("linking {} to {}", link.display(), exe.display()))?;
    tracing::info!(link = %link.display(), "linked skiff's CNI plugin");
    Ok(link)
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The kubeconfig to reach the API server with (default: the one joining wrote,
    /// `DATA_DIR/kubelet.kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Join this server (`https://HOST:PORT`) with `--token`.
    #[arg(long, requires = "token")]
    pub server: Option<String>,
    /// A join token from `skiff token create` (`K10<ca-hash>::<id>.<secret>`), or a
    /// bare `<id>.<secret>` bootstrap token with `--ca-cert-hash`.
    #[arg(long, requires = "server")]
    pub token: Option<String>,
    /// The cluster CA's hash (`sha256:<hex>` of its public key), for a bare token.
    #[arg(long)]
    pub ca_cert_hash: Option<String>,
    /// Where node state lives (skiff's runtime keeps `runtime/` here).
    #[arg(long, default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeAgentArgs,
    /// Run no service proxy (another one programs Services on this node).
    #[arg(long)]
    pub disable_proxy: bool,
    #[command(flatten)]
    pub proxy: crate::proxy::ProxyRuleArgs,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let node_name = args
        .node
        .node_name
        .clone()
        .unwrap_or_else(crate::kubelet::host_name);
    let joined = args.data_dir.join("kubelet.kubeconfig");
    let kubeconfig = match (&args.kubeconfig, &args.server, &args.token) {
        (Some(kubeconfig), _, _) => kubeconfig.clone(),
        // Joined before: the node's own identity (the token may have expired since).
        (None, _, _) if joined.exists() => joined,
        (None, Some(server), Some(token)) => {
            crate::join::bootstrap(
                &args.data_dir,
                server,
                token,
                args.ca_cert_hash.as_deref(),
                &node_name,
            )
            .await?
        }
        _ => anyhow::bail!(
            "give --kubeconfig, or --server and --token to join a cluster (skiff token create prints one)"
        ),
    };
    let mut node = args.node;
    node.node_name = Some(node_name);
    let proxy = (!args.disable_proxy).then_some(args.proxy);
    run_until(
        kubeconfig,
        args.data_dir,
        node,
        proxy,
        crate::server::shutdown_signal_quiet(),
    )
    .await
}

/// The node's service proxy with the node's credentials, treating the node's pod
/// CIDR as the pods' range (upstream's `--detect-local-mode=NodeCIDR`).
async fn node_proxy(
    client: kube::Client,
    node: String,
    rules: crate::proxy::ProxyRuleArgs,
) -> Result<()> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let mut cidr = None;
    for _ in 0..60 {
        if let Ok(Some(n)) = nodes.get_opt(&node).await {
            cidr = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty());
            if cidr.is_some() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let config = rules.config(node, cidr);
    skiff_proxy::run(client, config)
        .await
        .context("service proxy")
}

/// Runs the runtime (unless another is named), the kubelet and (with `proxy`) the
/// service proxy until `shutdown`.
pub async fn run_until(
    kubeconfig: PathBuf,
    data_dir: PathBuf,
    node: NodeAgentArgs,
    proxy: Option<crate::proxy::ProxyRuleArgs>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    // The plugin link, for the default network (not where another network is set up).
    if node.default_cni == DefaultCni::Skiff
        && !skiff_kubelet::has_network(&node.cni_conf_dir)
        && let Some(dir) = node.cni_bin_dir.first()
    {
        link_cni_plugin(dir)?;
    }
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
        // Only the API server (its kubelet client certificate) gets in: the cluster CA
        // is the server's own, or the one a join verified and wrote here.
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
            plugins: match node.default_cni {
                DefaultCni::Skiff => skiff_kubelet::CniPlugins::Skiff,
                DefaultCni::Debian => skiff_kubelet::CniPlugins::Debian,
            },
            bridge: node.cni_bridge.clone(),
            non_masquerade: node.cluster_cidr.iter().cloned().collect(),
        }),
        ..Default::default()
    };
    tokio::pin!(shutdown);
    let result = loop {
        // The kubelet runs until the node's certificate is due for renewal, then again
        // with the renewed one (its pods keep running meanwhile).
        let client = crate::scheduler::client(&kubeconfig, "kubelet").await?;
        let (kubelet_stop, kubelet_stopped) = tokio::sync::watch::channel(false);
        let kubelet = skiff_kubelet::run(client.clone(), config.clone(), wait(kubelet_stopped));
        tokio::pin!(kubelet);
        // The proxy restarts with the kubelet on a renewed certificate; its rules stay.
        // A proxy that fails is logged; the node's pods keep running.
        let proxying = async {
            if let Some(rules) = &proxy {
                let proxied = async {
                    let client = crate::scheduler::client(&kubeconfig, "kube-proxy").await?;
                    node_proxy(client, config.node_name.clone(), rules.clone()).await
                };
                if let Err(e) = proxied.await {
                    tracing::error!(error = %format!("{e:#}"), "the service proxy stopped");
                }
            }
            std::future::pending::<()>().await
        };
        tokio::pin!(proxying);
        let renewal = renewal_wait(&kubeconfig, &config.node_name);
        let outcome = tokio::select! {
            () = &mut shutdown => Some(Ok(())),
            result = &mut kubelet => Some(result.context("kubelet")),
            Some(result) = async { match runtime.as_mut() { Some(r) => Some(r.await), None => None } } => {
                Some(match result {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the runtime stopped")),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("runtime")),
                    Err(e) => Err(anyhow::Error::new(e).context("runtime task")),
                })
            }
            () = renewal => None,
            // Never completes: it only runs alongside.
            () = &mut proxying => None,
        };
        let _ = kubelet_stop.send(true);
        if let Some(outcome) = outcome {
            break outcome;
        }
        // Renewed: the kubelet stops and starts again with the new certificate.
        if let Err(e) = kubelet.await {
            tracing::warn!(error = %e, "the kubelet stopping for a certificate renewal");
        }
    };
    let _ = stop.send(true);
    if let Some(runtime) = runtime {
        let _ = runtime.await;
    }
    result
}

/// Resolves once the node's client certificate (CN `system:node:NAME`) has been
/// renewed; never for other credentials. A failed renewal is retried each minute.
async fn renewal_wait(kubeconfig: &std::path::Path, node: &str) {
    let Some(due) = crate::join::renewal_due(kubeconfig) else {
        return std::future::pending().await;
    };
    let own = crate::join::certificate_user(kubeconfig)
        .is_some_and(|cn| cn == format!("system:node:{node}"));
    if !own {
        return std::future::pending().await;
    }
    let wait = (due - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
    // Timers this long are fine, but a day at a time keeps clock jumps in check.
    let wait = std::time::Duration::try_from(wait).unwrap_or_default();
    if wait > std::time::Duration::from_secs(86_400) {
        tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
        return Box::pin(renewal_wait(kubeconfig, node)).await;
    }
    tokio::time::sleep(wait).await;
    tracing::info!(kubeconfig = %kubeconfig.display(), "the node's client certificate is due for renewal");
    loop {
        match crate::join::renew(kubeconfig, node).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "renewing the node's client certificate; retrying in a minute");
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
        }
    }
}
