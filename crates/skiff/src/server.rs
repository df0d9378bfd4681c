//! `skiff server`: the all-in-one cluster (and `skiff apiserver`, the API server
//! alone). Opens the datastore (embedded by default, etcd with `--etcd-endpoints`), runs
//! the API server on it, the scheduler and the controller manager as its clients, and
//! this machine's node agent (runtime and kubelet; `--disable-agent` leaves it out),
//! until SIGINT or SIGTERM, then closes the datastore cleanly.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use skiff_storage::Store;
use skiff_storage::embedded::{Config as EmbeddedConfig, Embedded};
use skiff_storage::etcd::{EtcdConfig, EtcdStore};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where cluster state lives (the embedded store, certificates, kubeconfigs).
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// HTTPS port of the API server (0 picks a free one and logs it).
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Service ClusterIP range; its first address is the `kubernetes` Service's.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = skiff_apiserver::ServiceCidr::parse)]
    service_cidr: skiff_apiserver::ServiceCidr,
    /// How long events are kept after they were last seen, in seconds.
    #[arg(long, default_value_t = 3600)]
    event_ttl: u64,
    /// The issuer (`iss`) of service account tokens, and the base URL of its OIDC
    /// discovery document.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    service_account_issuer: String,
    /// Authorizers to ask, in order (comma-separated): Node, RBAC, AlwaysAllow,
    /// AlwaysDeny.
    #[arg(long, default_value = "Node,RBAC")]
    authorization_mode: String,
    /// Static bearer tokens: a CSV file of `token,user,uid[,"group1,group2"]` lines.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Serve requests without credentials as `system:anonymous` (RBAC lets them reach
    /// the health and version endpoints only); `false` answers them 401.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// Encrypt resources at rest as this EncryptionConfiguration file says (aesgcm and
    /// identity providers).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Write the audit log here (one audit.k8s.io/v1 Event per line).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// The audit policy (audit.k8s.io/v1 Policy; default: every request at Metadata).
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Use this etcd cluster instead of the embedded store (comma-separated client URLs).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix inside etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// PEM CA bundle for etcd's serving certificates.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// PEM client certificate for etcd.
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// PEM client key for etcd.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// Node lifecycle (all in one only).
    #[command(flatten)]
    nodes: crate::controller_manager::NodeArgs,
    /// Run the control plane only: no runtime or kubelet on this machine.
    #[arg(long)]
    disable_agent: bool,
    /// This node's agent (all in one only).
    #[command(flatten)]
    agent: crate::agent::NodeAgentArgs,
    /// Run no service proxy with the agent (another one programs Services).
    #[arg(long)]
    disable_proxy: bool,
    /// The service proxy (all in one only).
    #[command(flatten)]
    proxy: crate::proxy::ProxyRuleArgs,
    /// Run no cluster DNS.
    #[arg(long)]
    disable_dns: bool,
    /// The cluster DNS (all in one only): it answers on the node's address and is
    /// published as `kube-system/kube-dns` at the tenth address of the service range.
    #[command(flatten)]
    dns: crate::dns::DnsServeArgs,
}

/// Runs the control plane as `role` (`server`: all in one, the API server, the scheduler
/// and the controller manager; `apiserver`: the API server alone).
pub async fn run(args: ServerArgs, role: &str) -> Result<()> {
    let store = open_store(&args).await?;
    store.health().await.context("datastore health check")?;
    let config = skiff_apiserver::Config {
        data_dir: args.data_dir.clone(),
        bind_address: args.bind_address,
        secure_port: args.secure_port,
        service_cidr: args.service_cidr,
        event_ttl: std::time::Duration::from_secs(args.event_ttl),
        service_account_issuer: args.service_account_issuer.clone(),
        authorization_modes: skiff_apiserver::AuthorizationMode::parse_list(
            &args.authorization_mode,
        )
        .map_err(anyhow::Error::msg)
        .context("--authorization-mode")?,
        token_auth_file: args.token_auth_file.clone(),
        anonymous_auth: args.anonymous_auth,
        encryption_provider_config: args.encryption_provider_config.clone(),
        audit_log_path: args.audit_log_path.clone(),
        audit_policy_file: args.audit_policy_file.clone(),
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut apiserver = tokio::spawn(skiff_apiserver::run(
        config,
        store.clone(),
        ready_tx,
        async {
            let _ = stop_rx.await;
        },
    ));
    let server_url = match ready_rx.await {
        Ok(ready) => {
            eprintln!(
                "skiff {role} ready: https://{} (kubeconfig: {})",
                ready.addr,
                ready.kubeconfig.display()
            );
            let ip = match ready.addr.ip() {
                ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
                ip => ip,
            };
            format!(
                "https://{}",
                std::net::SocketAddr::new(ip, ready.addr.port())
            )
        }
        // The API server gave up before serving: report why.
        Err(_) => {
            apiserver.await?.context("starting the API server")?;
            anyhow::bail!("the API server stopped before it was ready");
        }
    };
    // All in one: the scheduler and the controller manager run here too, clients of the
    // API server like any other, and this machine's node agent.
    let (components_stop, components_stopped) = tokio::sync::watch::channel(false);
    let mut components = Vec::new();
    let mut control = None;
    if role == "server" {
        // Each component with its own identity, as upstream's: RBAC's default roles
        // say what the scheduler may do, the Node authorizer what this node's kubelet
        // may; the controller manager makes each controller a service account of its
        // own with upstream's `system:controller:*` role.
        control = Some(ControlPlane::start(
            &args.data_dir,
            &server_url,
            &args.nodes,
        )?);
        let node_name = args
            .agent
            .node_name
            .clone()
            .unwrap_or_else(crate::kubelet::host_name);
        let kubelet_kubeconfig = identity(
            &args.data_dir,
            &server_url,
            &format!("kubelet-{node_name}"),
            &format!("system:node:{node_name}"),
            &["system:nodes"],
        )?;
        let mut agent_args = args.agent.clone();
        agent_args.cluster_cidr = Some(args.nodes.cluster_cidr.clone());
        if !args.disable_dns {
            // The cluster DNS, as `system:kube-dns` (kubeadm's system:coredns role), on
            // this node's address; pods reach it through the kube-dns Service.
            let cluster_ip = args.service_cidr.nth(10).to_string();
            let bind = args.agent.node_ip.unwrap_or_else(skiff_kubelet::detect_ip);
            let kubeconfig = identity(
                &args.data_dir,
                &server_url,
                "kube-dns",
                "system:kube-dns",
                &[],
            )?;
            let config = args.dns.config(bind);
            let publish = Some((
                cluster_ip.clone(),
                bind,
                args.data_dir.join("admin.kubeconfig"),
            ));
            components.push(crate::scheduler::spawn_in_process(
                "cluster DNS",
                components_stopped.clone(),
                move |stop| crate::dns::run_until(kubeconfig, config, publish, stop),
            ));
            if agent_args.cluster_dns.is_empty() {
                agent_args.cluster_dns = vec![cluster_ip];
            }
        }
        if !args.disable_agent && !args.disable_proxy {
            // The node's service proxy, as `system:kube-proxy` (upstream's
            // system:node-proxier role).
            let kubeconfig = identity(
                &args.data_dir,
                &server_url,
                "kube-proxy",
                "system:kube-proxy",
                &[],
            )?;
            let config = args
                .proxy
                .config(node_name.clone(), Some(args.nodes.cluster_cidr.clone()));
            components.push(crate::scheduler::spawn_in_process(
                "service proxy",
                components_stopped.clone(),
                move |stop| crate::proxy::run_config(kubeconfig, config, stop),
            ));
        }
        if !args.disable_agent {
            let (agent, data_dir) = (agent_args, args.data_dir.clone());
            components.push(crate::scheduler::spawn_in_process(
                "node agent",
                components_stopped.clone(),
                // The proxy runs apart, with its own identity.
                move |stop| {
                    crate::agent::run_until(kubelet_kubeconfig, data_dir, agent, None, stop)
                },
            ));
        }
    }
    // The components' certificates are checked twice a day; renewed ones (within 30 days
    // of expiry) restart the scheduler and the controller manager with them. (The node
    // agent renews its own through a CSR.)
    let mut renewals =
        tokio::time::interval_at(tokio::time::Instant::now() + RENEWAL_CHECK, RENEWAL_CHECK);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            result = &mut shutdown => {
                result?;
                tracing::info!("shutting down");
                if let Some(control) = control.take() {
                    control.stop().await;
                }
                let _ = components_stop.send(true);
                for component in components {
                    let _ = component.await;
                }
                let _ = stop_tx.send(());
                (&mut apiserver).await?.context("API server")?;
                break;
            }
            result = &mut apiserver => {
                result?.context("API server")?;
                anyhow::bail!("the API server stopped");
            }
            _ = renewals.tick(), if role == "server" => {
                let renewed = match control.as_ref() {
                    Some(c) => Some(c.renewed(&args.data_dir, &server_url)),
                    // Failed to start last time: try again.
                    None => Some(Ok(true)),
                };
                match renewed {
                    Some(Ok(true)) => {
                        tracing::info!("renewed the scheduler's and controller manager's certificates: restarting them");
                        if let Some(old) = control.take() {
                            old.stop().await;
                        }
                        match ControlPlane::start(&args.data_dir, &server_url, &args.nodes) {
                            Ok(started) => control = Some(started),
                            Err(e) => {
                                // Not fatal for the API server; tried again at the next check.
                                tracing::error!(error = %format!("{e:#}"), "restarting the scheduler and controller manager");
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "checking the components' certificates"),
                    _ => {}
                }
            }
        }
    }
    drop(store);
    Ok(())
}

/// How often an all-in-one server checks its components' certificates.
const RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The scheduler and the controller manager of an all-in-one server, each with a
/// certificate of its own.
struct ControlPlane {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Their kubeconfigs as they started with them.
    identities: String,
}

impl ControlPlane {
    fn identities(data_dir: &std::path::Path, server: &str) -> Result<(PathBuf, PathBuf, String)> {
        let scheduler = identity(data_dir, server, "scheduler", "system:kube-scheduler", &[])?;
        let controller_manager = identity(
            data_dir,
            server,
            "controller-manager",
            "system:kube-controller-manager",
            &[],
        )?;
        let mut text = String::new();
        for path in [&scheduler, &controller_manager] {
            text += &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        Ok((scheduler, controller_manager, text))
    }

    fn start(
        data_dir: &std::path::Path,
        server: &str,
        nodes: &crate::controller_manager::NodeArgs,
    ) -> Result<ControlPlane> {
        let (scheduler, controller_manager, identities) = Self::identities(data_dir, server)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let args = crate::scheduler::SchedulerArgs {
            kubeconfig: scheduler,
            scheduler_name: "default-scheduler".into(),
            leader_elect: true,
            identity: None,
            scoring_strategy: Default::default(),
        };
        let scheduler =
            crate::scheduler::spawn_in_process("scheduler", stopped.clone(), move |stop| {
                crate::scheduler::run_until(args, stop)
            });
        let args = crate::controller_manager::ControllerManagerArgs {
            kubeconfig: controller_manager,
            use_service_account_credentials: true,
            leader_elect: true,
            identity: None,
            controllers: Vec::new(),
            nodes: nodes.clone(),
            cluster_signing_cert_file: Some(data_dir.join("pki/ca.crt")),
            cluster_signing_key_file: Some(data_dir.join("pki/ca.key")),
            cluster_signing_duration: std::time::Duration::from_secs(365 * 86_400),
        };
        let controller_manager =
            crate::scheduler::spawn_in_process("controller manager", stopped, move |stop| {
                crate::controller_manager::run_until(args, stop)
            });
        Ok(ControlPlane {
            stop,
            tasks: vec![scheduler, controller_manager],
            identities,
        })
    }

    /// Whether their certificates were reissued since they started (checking reissues
    /// those within 30 days of expiry).
    fn renewed(&self, data_dir: &std::path::Path, server: &str) -> Result<bool> {
        let (_, _, now) = Self::identities(data_dir, server)?;
        Ok(now != self.identities)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Issues (or reuses) a component's client certificate and writes its kubeconfig,
/// `DATA_DIR/NAME.kubeconfig`.
fn identity(
    data_dir: &std::path::Path,
    server: &str,
    name: &str,
    user: &str,
    groups: &[&str],
) -> Result<PathBuf> {
    let cert = skiff_apiserver::pki::client_certificate(data_dir, name, user, groups)
        .with_context(|| format!("issuing the {name} certificate"))?;
    let path = data_dir.join(format!("{name}.kubeconfig"));
    skiff_apiserver::kubeconfig::write_client(&path, server, user, &cert)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn open_store(args: &ServerArgs) -> Result<Arc<dyn Store>> {
    if args.etcd_endpoints.is_empty() {
        let config = EmbeddedConfig::new(args.data_dir.join("db"));
        let store = tokio::task::spawn_blocking(move || Embedded::open(&config))
            .await?
            .context("opening the embedded datastore")?;
        tracing::info!(path = %store.path().display(), "embedded datastore");
        Ok(Arc::new(store))
    } else {
        let config = EtcdConfig {
            endpoints: args.etcd_endpoints.clone(),
            prefix: args.etcd_prefix.clone().into_bytes(),
            ca_file: args.etcd_cafile.clone(),
            cert_file: args.etcd_certfile.clone(),
            key_file: args.etcd_keyfile.clone(),
        };
        let store = EtcdStore::connect(&config)
            .await
            .context("connecting to etcd")?;
        tracing::info!(endpoints = ?args.etcd_endpoints, "etcd datastore");
        Ok(Arc::new(store))
    }
}

/// SIGINT or SIGTERM, for components that only need to stop.
pub async fn shutdown_signal_quiet() {
    if let Err(e) = shutdown_signal().await {
        tracing::warn!(error = %e, "waiting for signals");
    }
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
