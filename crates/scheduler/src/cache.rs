//! The scheduler's picture of the cluster: every node with what the pods bound to it
//! (or assumed to be, while their binding is in flight) request. Kept incrementally from
//! the pod and node watches, so a scheduling decision never scans all pods.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use skiff_api::quantity;

pub type Labels = BTreeMap<String, String>;

/// Resources in the units the scheduler compares: millicores, bytes, pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
}

impl Resources {
    fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
    }

    fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
    }

    fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Resources {
        let get = |name: &str, f: fn(&str) -> Option<i64>| {
            list.and_then(|l| l.get(name))
                .and_then(|q| f(&q.0))
                .unwrap_or(0)
        };
        Resources {
            milli_cpu: get("cpu", quantity::milli_value),
            memory: get("memory", quantity::value),
            ephemeral_storage: get("ephemeral-storage", quantity::value),
            pods: get("pods", quantity::value),
        }
    }
}

/// What scheduling needs to know of a pod.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub requests: Resources,
    /// Host ports as (protocol, hostIP, port).
    pub host_ports: Vec<(String, String, i32)>,
    /// `spec.priority`, which admission set from the pod's PriorityClass.
    pub priority: i32,
    pub labels: Labels,
    /// Whether the pod has inter-pod (anti-)affinity terms.
    pub has_affinity: bool,
    pub pod: Pod,
}

impl PodInfo {
    pub fn new(pod: &Pod) -> PodInfo {
        let spec = pod.spec.clone().unwrap_or_default();
        // Containers run together; init containers one at a time before them.
        let mut requests = Resources::default();
        for c in &spec.containers {
            requests.add(&Resources::from_list(
                c.resources.as_ref().and_then(|r| r.requests.as_ref()),
            ));
        }
        for c in spec.init_containers.iter().flatten() {
            let r = Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            requests.milli_cpu = requests.milli_cpu.max(r.milli_cpu);
            requests.memory = requests.memory.max(r.memory);
            requests.ephemeral_storage = requests.ephemeral_storage.max(r.ephemeral_storage);
        }
        requests.add(&Resources::from_list(spec.overhead.as_ref()));
        requests.pods = 1;
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some((
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.host_ip.clone().unwrap_or_default(),
                    port,
                ))
            })
            .collect();
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: spec.node_name.clone().filter(|n| !n.is_empty()),
            requests,
            host_ports,
            priority: spec.priority.unwrap_or(0),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            has_affinity: spec
                .affinity
                .as_ref()
                .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some()),
            pod: pod.clone(),
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn tolerations(&self) -> &[k8s_openapi::api::core::v1::Toleration] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
    }

    pub fn terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    /// When the pod started (or was created), for ordering victims.
    pub fn start_time(&self) -> Option<&k8s_openapi::jiff::Timestamp> {
        self.pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(self.pod.metadata.creation_timestamp.as_ref())
            .map(|t| &t.0)
    }
}

/// A pod that still holds its node's resources: not finished, not gone.
pub fn holds_resources(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A node and what is placed on it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub allocatable: Resources,
    pub requested: Resources,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub used_ports: HashSet<(String, String, i32)>,
    pub pods: HashSet<String>,
}

impl NodeInfo {
    fn from_node(node: &Node) -> NodeInfo {
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let spec = node.spec.as_ref();
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable: Resources::from_list(allocatable),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ..Default::default()
        }
    }

    pub(crate) fn place(&mut self, pod: &PodInfo) {
        self.requested.add(&pod.requests);
        self.used_ports.extend(pod.host_ports.iter().cloned());
        self.pods.insert(pod.key());
    }

    pub(crate) fn unplace(&mut self, pod: &PodInfo) {
        self.requested.sub(&pod.requests);
        for port in &pod.host_ports {
            self.used_ports.remove(port);
        }
        self.pods.remove(&pod.key());
    }
}

/// Nodes and the pods placed on them (bound, or assumed while binding).
#[derive(Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Every pod holding resources on some node, by `namespace/name`.
    placed: HashMap<String, PodInfo>,
    /// Pods bound by us whose binding the watch has not shown yet.
    assumed: HashSet<String>,
    /// Placed pods with inter-pod (anti-)affinity terms, which other pods must respect.
    with_affinity: HashSet<String>,
    /// Pending pods that preempted others, by the node they wait for: lower-priority
    /// pods must not take the room freed for them.
    nominated: HashMap<String, HashMap<String, PodInfo>>,
    /// Pods nominated by this scheduler whose status does not show it yet.
    nominating: HashSet<String>,
}

impl Cache {
    pub fn set_node(&mut self, node: &Node) {
        let mut info = NodeInfo::from_node(node);
        if let Some(old) = self.nodes.get(&info.name) {
            info.requested = old.requested;
            info.used_ports = old.used_ports.clone();
            info.pods = old.pods.clone();
        } else {
            let name = info.name.clone();
            for pod in self
                .placed
                .values()
                .filter(|p| p.node.as_deref() == Some(&name))
            {
                info.place(pod);
            }
        }
        self.nodes.insert(info.name.clone(), info);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// A pod as the watch shows it: placed where it is bound while it holds resources.
    pub fn set_pod(&mut self, pod: &Pod) {
        let info = PodInfo::new(pod);
        let key = info.key();
        if info.node.is_some() {
            self.assumed.remove(&key);
        } else if self.assumed.contains(&key) {
            // Our binding is in flight: keep the assumption.
            return;
        }
        self.remove_pod(&key);
        // The status is the record of nominations, except that one this scheduler just
        // made shows there only once its patch lands: until then a status without one
        // (our own PodScheduled write, say) does not clear it.
        let nominated = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty());
        if info.node.is_some() || info.terminating() {
            self.nominating.remove(&key);
            if self.nominated_node(&key).is_some() {
                self.nominate(&info, None);
            }
        } else if let Some(node) = nominated {
            self.nominating.remove(&key);
            if self.nominated_node(&key) != Some(node) {
                self.nominate(&info, Some(node));
            }
        } else if !self.nominating.contains(&key) && self.nominated_node(&key).is_some() {
            self.nominate(&info, None);
        }
        // A terminating pod holds its resources until it is gone, as upstream counts it.
        if info.node.is_some() && holds_resources(pod) {
            self.place(info);
        }
    }

    /// Forgets a deleted pod, placed or nominated.
    pub fn delete_pod(&mut self, key: &str) {
        self.nominating.remove(key);
        self.remove_pod(key);
        for pods in self.nominated.values_mut() {
            pods.remove(key);
        }
        self.nominated.retain(|_, pods| !pods.is_empty());
    }

    pub fn remove_pod(&mut self, key: &str) {
        self.with_affinity.remove(key);
        if let Some(old) = self.placed.remove(key)
            && let Some(node) = old.node.as_ref().and_then(|n| self.nodes.get_mut(n))
        {
            node.unplace(&old);
        }
    }

    fn place(&mut self, info: PodInfo) {
        if info.has_affinity {
            self.with_affinity.insert(info.key());
        }
        if let Some(node) = info.node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
            node.place(&info);
        }
        self.placed.insert(info.key(), info);
    }

    /// Keeps only the placed and nominated pods `keep` says still exist (after a
    /// re-list).
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool) {
        for pods in self.nominated.values_mut() {
            pods.retain(|k, _| keep(k));
        }
        self.nominated.retain(|_, pods| !pods.is_empty());
        self.nominating.retain(|k| keep(k));
        let gone: Vec<String> = self
            .placed
            .keys()
            .filter(|k| !keep(k) && !self.assumed.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove_pod(&key);
        }
    }

    /// Places a pod on a node before its binding is written (its nomination, if any,
    /// is spent).
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        self.nominating.remove(&pod.key());
        self.nominate(pod, None);
        let mut info = pod.clone();
        info.node = Some(node.to_string());
        self.assumed.insert(info.key());
        self.remove_pod(&info.key());
        self.place(info);
    }

    /// Undoes an assumption whose binding failed.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.remove(key) {
            self.remove_pod(key);
        }
    }

    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    /// The pods placed on a node.
    pub fn pods_on<'a>(&'a self, node: &'a NodeInfo) -> impl Iterator<Item = &'a PodInfo> + 'a {
        node.pods.iter().filter_map(|k| self.placed.get(k))
    }

    /// Every placed pod that has inter-pod (anti-)affinity terms.
    pub fn pods_with_affinity(&self) -> impl Iterator<Item = &PodInfo> {
        self.with_affinity.iter().filter_map(|k| self.placed.get(k))
    }

    /// Every placed pod.
    pub fn placed_pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.placed.values()
    }

    /// Nominates a pod after a preemption, ahead of the status that will record it.
    pub fn nominate_new(&mut self, pod: &PodInfo, node: &str) {
        self.nominating.insert(pod.key());
        self.nominate(pod, Some(node));
    }

    /// Drops a nomination that can no longer be honoured.
    pub fn clear_nomination(&mut self, pod: &PodInfo) {
        self.nominating.remove(&pod.key());
        self.nominate(pod, None);
    }

    /// Records (or clears, with `None`) the node a pending pod was nominated to.
    pub fn nominate(&mut self, pod: &PodInfo, node: Option<&str>) {
        let key = pod.key();
        for pods in self.nominated.values_mut() {
            pods.remove(&key);
        }
        self.nominated.retain(|_, pods| !pods.is_empty());
        if let Some(node) = node {
            self.nominated
                .entry(node.to_string())
                .or_default()
                .insert(key, pod.clone());
        }
    }

    /// The node `key` is nominated to, if any.
    pub fn nominated_node(&self, key: &str) -> Option<&str> {
        self.nominated
            .iter()
            .find(|(_, pods)| pods.contains_key(key))
            .map(|(node, _)| node.as_str())
    }

    /// Pods nominated to `node` that a pod of `priority` must leave room for.
    pub fn nominated_on(&self, node: &str, priority: i32, except: &str) -> Vec<&PodInfo> {
        self.nominated
            .get(node)
            .map(|pods| {
                pods.values()
                    .filter(|p| p.priority >= priority && p.key() != except)
                    .collect()
            })
            .unwrap_or_default()
    }
}
