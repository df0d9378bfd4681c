//! The Skiff kubelet: the node agent. It registers its Node (capacity, addresses,
//! versions, conditions) and keeps its Lease in `kube-node-lease` fresh, watches the
//! pods bound to its node and makes them real through a CRI v1 runtime (skiff's own or
//! containerd), one worker per pod, and reports their status back as upstream's
//! kubelet fills it. Everything it knows of the cluster comes through the API server;
//! everything it knows of containers comes through CRI.
//!
//! - `cri.rs`: the CRI client over the runtime's Unix socket.
//! - `node.rs`: registration, node status and the Lease.
//! - `network.rs`: the default pod network when the node has none.
//! - `spec.rs`: a Pod's sandbox and container configs for CRI.
//! - `volumes.rs`: pod volumes on the node and their mounts.
//! - `gc.rs`: unused images and the logs of pods that are gone.
//! - `tokens.rs`: service account tokens for projected volumes.
//! - `status.rs`: pod status from what the runtime reports (phase, conditions, container
//!   statuses).
//! - `server.rs`: the kubelet API the API server proxies to (container logs).
//! - `pods/`: the pod workers: sandbox, init containers, containers, restarts with
//!   back-off, graceful termination and the final delete.

mod cri;
pub mod eviction;
mod gc;
mod network;
mod node;
pub use node::detect_ip;
mod pods;
mod server;
mod spec;
mod static_pods;
mod stats;
mod status;
mod tokens;
mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use gc::ImagePolicy;
pub use network::{DefaultCni, Plugins as CniPlugins, SKIFF_PLUGIN, has_network, network_bridge};
pub use server::ApiConfig;

/// How this node's kubelet runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Node's name (the host name by default, chosen by the caller).
    pub node_name: String,
    /// The CRI runtime's socket.
    pub cri_socket: PathBuf,
    /// Where containers' logs go: `<dir>/<namespace>_<name>_<uid>/<container>/<n>.log`.
    pub pod_log_dir: PathBuf,
    /// The node's InternalIP (detected from the default route when unset).
    pub node_ip: Option<std::net::IpAddr>,
    /// Pods this node accepts (`pods` capacity).
    pub max_pods: u32,
    /// The cluster DNS servers ClusterFirst pods use; none: the node's resolv.conf.
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// Labels added to the Node at registration (over the well-known ones).
    pub node_labels: BTreeMap<String, String>,
    /// How often node status is computed (and posted when it changed).
    pub node_status_update_frequency: Duration,
    /// The node Lease's duration; it is renewed every quarter of it.
    pub node_lease_duration_seconds: i32,
    /// How often each pod worker looks at its pod's containers without being told to.
    pub pod_resync: Duration,
    /// Write a default pod network when the CNI directory has none.
    pub default_cni: Option<DefaultCni>,
    /// Serve the kubelet API (none: not served).
    pub api: Option<ApiConfig>,
    /// Where pods' volumes live (`<root>/pods/<uid>/volumes`).
    pub root_dir: PathBuf,
    /// The directory of static pod manifests (none: no static pods).
    pub static_pod_path: Option<PathBuf>,
    /// How often the static pod directory is read.
    pub file_check_frequency: Duration,
    /// Hard eviction thresholds (`--eviction-hard`).
    pub eviction_hard: Vec<eviction::Threshold>,
    /// How long a pressure condition stays after its threshold clears.
    pub eviction_pressure_transition_period: Duration,
    /// How often eviction signals are observed.
    pub eviction_interval: Duration,
    /// When unused images are collected.
    pub image_gc: ImagePolicy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_name: String::new(),
            cri_socket: PathBuf::from("/run/skiff/cri.sock"),
            pod_log_dir: PathBuf::from("/var/log/pods"),
            node_ip: None,
            max_pods: 110,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            node_labels: BTreeMap::new(),
            node_status_update_frequency: Duration::from_secs(10),
            node_lease_duration_seconds: 40,
            pod_resync: Duration::from_secs(1),
            default_cni: None,
            api: None,
            root_dir: PathBuf::from("/var/lib/skiff/kubelet"),
            static_pod_path: None,
            file_check_frequency: Duration::from_secs(20),
            eviction_hard: eviction::defaults(),
            eviction_pressure_transition_period: Duration::from_secs(300),
            eviction_interval: Duration::from_secs(10),
            image_gc: ImagePolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the CRI runtime at {path}: {message}")]
    Runtime { path: String, message: String },
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Config(String),
}

/// Runs the kubelet until `shutdown` completes. Pods keep running when it stops (their
/// containers belong to the runtime); a restarted kubelet picks them up again.
pub async fn run(
    client: kube::Client,
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if config.node_name.is_empty() {
        return Err(Error::Config("the node needs a name".into()));
    }
    // Mount points are compared by path: the root's real one.
    std::fs::create_dir_all(&config.root_dir)
        .and_then(|()| config.root_dir.canonicalize())
        .map(|root| config.root_dir = root)
        .map_err(|e| Error::Config(format!("{}: {e}", config.root_dir.display())))?;
    // The API's port is known before the Node reports it.
    let mut listener = None;
    if let Some(api) = config.api.as_mut() {
        let (bound, address) = server::bind(api).await?;
        api.address = address;
        listener = Some(bound);
    }
    let runtime = cri::Runtime::connect(&config.cri_socket).await?;
    let info = runtime.version().await.map_err(|e| Error::Runtime {
        path: config.cri_socket.display().to_string(),
        message: e.to_string(),
    })?;
    tracing::info!(node = %config.node_name, runtime = %info, "kubelet starting");
    let info_name = info.name.clone();
    let pressure = Arc::new(eviction::Pressure::new(
        config.eviction_pressure_transition_period,
    ));
    let node = node::Agent::new(
        client.clone(),
        config.clone(),
        runtime.clone(),
        info,
        pressure.clone(),
    );
    let node_uid = node.register().await?;
    if let Some(cni) = config.default_cni.clone() {
        tokio::spawn(network::ensure(
            client.clone(),
            config.node_name.clone(),
            cni,
        ));
    }
    let manager = pods::Manager::new(
        client,
        config.clone(),
        runtime.clone(),
        node.host_ip(),
        info_name,
        node_uid.clone(),
        pressure,
    );
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(api), Some(listener)) = (config.api.clone(), listener) {
        let serving = server::Serving {
            node: config.node_name.clone(),
            runtime: runtime.clone(),
            root_dir: config.root_dir.clone(),
            pod_log_dir: config.pod_log_dir.clone(),
            pods: manager.known(),
        };
        tasks.spawn(async move { server::serve(listener, api, serving).await });
    }
    {
        let node = node.clone();
        tasks.spawn(async move { node.keep_status().await });
    }
    {
        let (node, node_uid) = (node.clone(), node_uid.clone());
        tasks.spawn(async move { node.keep_lease(node_uid).await });
    }
    tasks.spawn(async move { manager.run().await });
    tokio::select! {
        () = shutdown => Ok(()),
        Some(result) = tasks.join_next() => match result {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::Config("a kubelet task ended".into())),
        },
    }
}

/// Now, in nanoseconds since the epoch (the CRI's clock).
fn status_now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
