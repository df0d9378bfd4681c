//! The Node: registered once with the well-known labels, its status recomputed every
//! `node_status_update_frequency` (capacity from the host, allocatable less upstream's
//! hard eviction thresholds, addresses, versions, conditions from the runtime and the
//! host) and patched when it changed or five minutes passed, and its Lease in
//! `kube-node-lease` renewed every quarter of its duration: the heartbeat the node
//! lifecycle controller watches.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::cri::{Info, Runtime};
use crate::{Config, Error};

/// Memory held back from pods: upstream's default hard eviction threshold.
const EVICTION_MEMORY: u64 = 100 << 20;
/// Upstream posts unchanged status at least this often.
const REPORT_EVERY: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Agent {
    client: kube::Client,
    config: Config,
    runtime: Runtime,
    info: Info,
    host_ip: IpAddr,
    last: Arc<Mutex<Last>>,
    pressure: Arc<crate::eviction::Pressure>,
}

/// What was last posted: conditions keep their transition times.
#[derive(Default)]
struct Last {
    conditions: Vec<Value>,
    status: Option<Value>,
    posted: Option<Instant>,
}

impl Agent {
    pub fn new(
        client: kube::Client,
        config: Config,
        runtime: Runtime,
        info: Info,
        pressure: Arc<crate::eviction::Pressure>,
    ) -> Agent {
        let host_ip = config.node_ip.unwrap_or_else(detect_ip);
        Agent {
            client,
            config,
            runtime,
            info,
            host_ip,
            last: Arc::new(Mutex::new(Last::default())),
            pressure,
        }
    }

    pub fn host_ip(&self) -> IpAddr {
        self.host_ip
    }

    /// Creates the Node, or brings an existing one's labels up to date; its uid.
    pub async fn register(&self) -> Result<String, Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut labels = json!({
            "kubernetes.io/hostname": self.config.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch(),
        });
        for (key, value) in &self.config.node_labels {
            labels[key] = json!(value);
        }
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.config.node_name, "labels": labels},
            "spec": {},
        }))
        .map_err(|e| Error::Config(e.to_string()))?;
        let mut pause = Duration::from_millis(100);
        loop {
            let result = match nodes.create(&PostParams::default(), &node).await {
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    let patch = json!({"metadata": {"labels": labels}});
                    nodes
                        .patch(
                            &self.config.node_name,
                            &PatchParams::default(),
                            &Patch::Merge(patch),
                        )
                        .await
                }
                other => other,
            };
            match result {
                Ok(node) => {
                    tracing::info!(node = %self.config.node_name, "node registered");
                    self.post_status().await;
                    return Ok(node.metadata.uid.unwrap_or_default());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registering the node; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(7));
                }
            }
        }
    }

    /// Recomputes node status forever, posting it when it changed.
    pub async fn keep_status(&self) -> Result<(), Error> {
        loop {
            tokio::time::sleep(self.config.node_status_update_frequency).await;
            self.post_status().await;
        }
    }

    async fn post_status(&self) {
        let conditions = self.conditions().await;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let conditions: Vec<Value> = conditions
                .into_iter()
                .map(|(kind, state, reason, message)| {
                    let since = last
                        .conditions
                        .iter()
                        .find(|c| c["type"] == kind && c["status"] == state)
                        .map(|c| c["lastTransitionTime"].clone())
                        .unwrap_or_else(|| json!(now));
                    json!({"type": kind, "status": state, "reason": reason, "message": message,
                           "lastTransitionTime": since})
                })
                .collect();
            let status = self.status(&conditions);
            let due = last.posted.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
            if !due && last.status.as_ref() == Some(&status) {
                return;
            }
            last.conditions = conditions;
            last.status = Some(status.clone());
            status
        };
        // Every posted condition carries this heartbeat.
        let mut status = status;
        if let Some(conditions) = status["conditions"].as_array_mut() {
            for condition in conditions {
                condition["lastHeartbeatTime"] = json!(now);
            }
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes
            .patch_status(
                &self.config.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => {
                self.last.lock().unwrap_or_else(|p| p.into_inner()).posted = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(error = %e, "posting node status");
                // Post again next time.
                self.last.lock().unwrap_or_else(|p| p.into_inner()).status = None;
            }
        }
    }

    /// Ready from the runtime's conditions, the pressures from the host: (type, status,
    /// reason, message) as upstream words them.
    async fn conditions(&self) -> Vec<(&'static str, &'static str, &'static str, String)> {
        let mut problems = Vec::new();
        match self.runtime.status().await {
            Ok(conditions) => {
                for (kind, what) in [
                    ("RuntimeReady", "container runtime not ready"),
                    ("NetworkReady", "container runtime network not ready"),
                ] {
                    match conditions.iter().find(|c| c.r#type == kind) {
                        Some(c) if c.status => {}
                        Some(c) => problems.push(format!(
                            "{what}: {kind}=false reason:{} message:{}",
                            c.reason, c.message
                        )),
                        None => problems.push(format!("{what}: {kind} not reported")),
                    }
                }
            }
            Err(e) => problems.push(format!("container runtime is down: {}", e.message())),
        }
        let ready = if problems.is_empty() {
            (
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status".to_string(),
            )
        } else {
            let message = if problems.len() == 1 {
                problems.remove(0)
            } else {
                format!("[{}]", problems.join(", "))
            };
            ("Ready", "False", "KubeletNotReady", message)
        };
        // The eviction manager's view (its thresholds, held for the transition period).
        let memory_low = self.pressure.memory();
        let disk_low = self.pressure.disk();
        let pids_low = pids_in_use().is_some_and(|(used, max)| used * 10 > max * 9);
        vec![
            if memory_low {
                (
                    "MemoryPressure",
                    "True",
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available".into(),
                )
            } else {
                (
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available".into(),
                )
            },
            if disk_low {
                (
                    "DiskPressure",
                    "True",
                    "KubeletHasDiskPressure",
                    "kubelet has disk pressure".into(),
                )
            } else {
                (
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure".into(),
                )
            },
            if pids_low {
                (
                    "PIDPressure",
                    "True",
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available".into(),
                )
            } else {
                (
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available".into(),
                )
            },
            ready,
        ]
    }

    /// The whole status but heartbeats.
    fn status(&self, conditions: &[Value]) -> Value {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory = meminfo("MemTotal:").unwrap_or(0);
        let (disk_total, _) = disk(&self.config.pod_log_dir).unwrap_or((0, 0));
        let pods = self.config.max_pods.to_string();
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let machine_id = read("/etc/machine-id");
        let system_uuid = Some(read("/sys/class/dmi/id/product_uuid"))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| machine_id.clone());
        json!({
            "capacity": {
                "cpu": cpus.to_string(),
                "memory": format!("{}Ki", memory / 1024),
                "ephemeral-storage": format!("{}Ki", disk_total / 1024),
                "pods": pods,
            },
            "allocatable": {
                "cpu": cpus.to_string(),
                "memory": format!("{}Ki", memory.saturating_sub(EVICTION_MEMORY) / 1024),
                "ephemeral-storage": format!("{}Ki", disk_total / 10 * 9 / 1024),
                "pods": pods,
            },
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip.to_string()},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": system_uuid,
                "bootID": read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": self.info.to_string(),
                "kubeletVersion": skiff_api::git_version(),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config.api.as_ref().map_or(0, |a| a.address.port())}},
        })
    }

    /// Renews the node's Lease forever (every quarter of its duration).
    pub async fn keep_lease(&self, node_uid: String) -> Result<(), Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let every = Duration::from_secs(
            u64::try_from(self.config.node_lease_duration_seconds.max(4) / 4).unwrap_or(10),
        );
        let name = self.config.node_name.clone();
        loop {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                         "uid": node_uid}]},
                "spec": {"holderIdentity": name,
                         "leaseDurationSeconds": self.config.node_lease_duration_seconds,
                         "renewTime": now},
            });
            if let Err(e) = leases
                .patch(
                    &name,
                    &PatchParams::apply("kubelet").force(),
                    &Patch::Apply(lease),
                )
                .await
            {
                tracing::warn!(error = %e, "renewing the node lease");
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// The node's allocatable CPU (millicores) and memory (bytes), as the Node reports them.
pub fn allocatable() -> (i64, i64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = meminfo("MemTotal:")
        .unwrap_or(0)
        .saturating_sub(EVICTION_MEMORY);
    (
        i64::try_from(cpus * 1000).unwrap_or(i64::MAX),
        i64::try_from(memory).unwrap_or(i64::MAX),
    )
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A /proc/meminfo value in bytes.
fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// (total, available) bytes of the filesystem holding `path` (or its nearest parent).
fn disk(path: &std::path::Path) -> Option<(u64, u64)> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = nix::sys::statvfs::statvfs(existing).ok()?;
    let block = stat.fragment_size();
    Some((stat.blocks() * block, stat.blocks_available() * block))
}

/// (threads in use, pid_max).
fn pids_in_use() -> Option<(u64, u64)> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let used = loadavg
        .split_whitespace()
        .nth(3)?
        .split('/')
        .nth(1)?
        .parse()
        .ok()?;
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((used, max))
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// The address of the interface the default route leaves by: connecting a UDP socket
/// picks it without sending anything. Loopback when there is no route.
pub fn detect_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}
