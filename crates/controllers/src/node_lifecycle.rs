//! The node lifecycle controller: a node whose kubelet stops renewing its Lease in
//! `kube-node-lease` for the grace period gets `Ready=Unknown` and the
//! `node.kubernetes.io/unreachable` taints (a node reporting `Ready=False` the
//! `not-ready` ones); pods on it that do not tolerate a NoExecute taint are evicted
//! (deleted), those that tolerate it for `tolerationSeconds` once that has passed. The
//! taints go when the node reports Ready again. Conditions get their NoSchedule taints
//! while true (upstream's TaintNodesByCondition: `memory-pressure`, `disk-pressure`,
//! `pid-pressure`, `network-unavailable`), so the scheduler stops placing pods a node
//! under pressure would refuse. Node IPAM gives every node a pod CIDR from the cluster
//! CIDR.
//!
//! A node with neither a Lease nor a Ready heartbeat is not monitored (it never had a
//! kubelet).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::Error;
use std::sync::Arc;

use kube::runtime::reflector::Store;

use crate::events::Recorder;

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
const PERIOD: Duration = Duration::from_secs(1);

/// Conditions whose truth taints the node NoSchedule.
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];
const BOTH: &[&str] = &["NoSchedule", "NoExecute"];
const NO_SCHEDULE: &[&str] = &["NoSchedule"];

/// The taints this controller wants on `node`: the readiness `state` ones, and a
/// NoSchedule taint per true pressure condition (not while the node is silent: its
/// conditions are stale then).
fn wanted_taints(
    node: &Node,
    state: &str,
    silent: bool,
) -> Vec<(&'static str, &'static [&'static str])> {
    let mut wanted = match state {
        "Unknown" => vec![(UNREACHABLE, BOTH)],
        "False" => vec![(NOT_READY, BOTH)],
        _ => Vec::new(),
    };
    if !silent {
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (condition, key) in CONDITION_TAINTS {
            if conditions
                .iter()
                .any(|c| c.type_ == condition && c.status == "True")
            {
                wanted.push((key, NO_SCHEDULE));
            }
        }
    }
    wanted
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub grace: Duration,
    /// The cluster CIDR pod CIDRs are carved from (/24 each), if node IPAM runs.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
}

/// Per node: the last heartbeat record seen and when, on this controller's clock. A node
/// is silent when the record has not changed for the grace period, so neither clock
/// skew nor a control plane that was down makes healthy nodes look dead.
type Observed = HashMap<String, (Option<Timestamp>, std::time::Instant)>;

pub async fn run(
    client: kube::Client,
    settings: Settings,
    pods: crate::shared::Shared<Pod>,
) -> Result<(), Error> {
    // The pods on each node come from the shared informer, not a LIST per node per pass.
    let pods = pods.store();
    let _ = pods.wait_until_ready().await;
    let mut tick = tokio::time::interval(PERIOD);
    let mut observed = Observed::new();
    let events = Recorder::new(client.clone(), "node-controller");
    let evictions = Recorder::new(client.clone(), "taint-eviction-controller");
    loop {
        tick.tick().await;
        let recorders = [&events, &evictions];
        if let Err(e) = pass(&client, &settings, &pods, &mut observed, recorders).await {
            tracing::warn!(error = %e, "node lifecycle pass");
        }
    }
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

async fn pass(
    client: &kube::Client,
    settings: &Settings,
    pods: &Store<Pod>,
    observed: &mut Observed,
    [events, evictions]: [&Recorder; 2],
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let node_list = nodes.list(&ListParams::default().match_any()).await?.items;
    let lease_list = leases.list(&ListParams::default().match_any()).await?.items;
    let now = Timestamp::now();
    let mut used_cidrs: BTreeSet<String> = node_list
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
        .collect();
    for node in &node_list {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some((base, prefix)) = settings.cluster_cidr
            && node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_ref())
                .is_none()
            && let Some(cidr) = free_cidr(base, prefix, &used_cidrs)
        {
            let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            tracing::info!(node = %name, %cidr, "assigned a pod CIDR");
            used_cidrs.insert(cidr);
        }
        let lease_time = lease_list
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let ready = ready_condition(node);
        let heartbeat = [
            lease_time,
            ready.and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0)),
        ]
        .into_iter()
        .flatten()
        .max();
        if heartbeat.is_none() {
            continue;
        }
        let seen_at = match observed.get(&name) {
            Some((record, at)) if *record == heartbeat => *at,
            _ => {
                let at = std::time::Instant::now();
                observed.insert(name.clone(), (heartbeat, at));
                at
            }
        };
        let silent = seen_at.elapsed() > settings.grace;
        // A node renewing its lease without a Ready condition (a kubelet that does not
        // report one) is taken as ready.
        let status = ready.map(|c| c.status.as_str()).unwrap_or("True");
        if silent && ready.is_none_or(|c| c.status != "Unknown") {
            mark_unknown(&nodes, node, &name).await?;
            events.normal(
                node,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        // Every pass while the node is silent, so a failed or interrupted attempt (a
        // new leader) is retried; only pods still Ready are written.
        if silent && let Err(e) = mark_pods_not_ready(client, &pods_on(pods, &name), events).await {
            tracing::warn!(node = %name, error = %e, "marking pods not ready");
        }
        let state = if silent { "Unknown" } else { status };
        let wanted = wanted_taints(node, state, silent);
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let version = node.metadata.resource_version.clone();
        let taints = sync_taints(&nodes, &name, version, taints, &wanted, now).await?;
        evict(client, &name, pods, &taints, now, evictions).await?;
    }
    Ok(())
}

async fn mark_unknown(nodes: &Api<Node>, node: &Node, name: &str) -> Result<(), kube::Error> {
    let now = Timestamp::now().to_string();
    let conditions: Vec<serde_json::Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                   "message": "Kubelet stopped posting node status.",
                   "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now})
        })
        .collect();
    let conditions = if conditions.is_empty() {
        vec![
            json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.", "lastTransitionTime": now}),
        ]
    } else {
        conditions
    };
    tracing::warn!(node = %name, "node stopped renewing its lease: Ready=Unknown");
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": conditions}})),
        )
        .await?;
    Ok(())
}

/// Makes the node's lifecycle and condition taints exactly `wanted` (keys and effects).
async fn sync_taints(
    nodes: &Api<Node>,
    name: &str,
    version: Option<String>,
    taints: Vec<Taint>,
    wanted: &[(&str, &[&str])],
    now: Timestamp,
) -> Result<Vec<Taint>, kube::Error> {
    let ours = |t: &Taint| {
        t.key == UNREACHABLE
            || t.key == NOT_READY
            || CONDITION_TAINTS.iter().any(|(_, key)| t.key == *key)
    };
    let mut next: Vec<Taint> = taints.iter().filter(|t| !ours(t)).cloned().collect();
    for &(key, effects) in wanted {
        for &effect in effects {
            let existing = taints.iter().find(|t| t.key == key && t.effect == effect);
            next.push(existing.cloned().unwrap_or_else(|| {
                Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute")
                        .then_some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
                    value: None,
                }
            }));
        }
    }
    let key = |t: &Taint| (t.key.clone(), t.effect.clone());
    let before: BTreeSet<_> = taints.iter().map(key).collect();
    let after: BTreeSet<_> = next.iter().map(key).collect();
    if before != after {
        // Compare-and-swap on the version read: a concurrent `kubectl taint` is kept.
        let patch = json!({"metadata": {"resourceVersion": version}, "spec": {"taints": next}});
        match nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(taints),
            Err(e) => return Err(e),
        }
        tracing::info!(node = %name, taints = ?wanted, "node lifecycle taints updated");
    }
    Ok(next)
}

/// Deletes the node's pods that do not tolerate its NoExecute taints (or whose
/// toleration time has run out).
async fn evict(
    client: &kube::Client,
    node: &str,
    pods: &Store<Pod>,
    taints: &[Taint],
    now: Timestamp,
    events: &Recorder,
) -> Result<(), kube::Error> {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Ok(());
    }
    for pod in &pods_on(pods, node) {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let due = no_execute.iter().any(|taint| {
            match tolerations
                .iter()
                .find(|t| skiff_api::taints::tolerates(t, taint))
            {
                None => true,
                Some(t) => match (t.toleration_seconds, taint.time_added.as_ref()) {
                    (Some(seconds), Some(added)) => {
                        now.duration_since(added.0) >= SignedDuration::from_secs(seconds.max(0))
                    }
                    _ => false,
                },
            }
        });
        if due {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            tracing::info!(pod = %format!("{ns}/{name}"), %node, "evicting from a tainted node");
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => events.normal(
                    &**pod,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {ns}/{name}"),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Upstream's `MarkPodsNotReady`: the pods of a node that went silent are no longer
/// Ready, so Services stop sending them traffic before they are evicted.
async fn mark_pods_not_ready(
    client: &kube::Client,
    on_node: &[Arc<Pod>],
    events: &Recorder,
) -> Result<(), kube::Error> {
    let now = Timestamp::now().to_string();
    for pod in on_node.iter().filter(|p| crate::pod_ready(p)) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now}]}});
        crate::ignore_not_found(
            api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await,
        )?;
        events.warning(&**pod, "NodeNotReady", "Node is not ready".into());
    }
    Ok(())
}

/// The pods bound to `node`, from the shared pod store.
fn pods_on(pods: &Store<Pod>, node: &str) -> Vec<Arc<Pod>> {
    pods.state()
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect()
}

/// The first /24 of the cluster CIDR no node has.
fn free_cidr(base: Ipv4Addr, prefix: u8, used: &BTreeSet<String>) -> Option<String> {
    let base = u32::from(base);
    let count = 1u32 << 24u8.checked_sub(prefix)?;
    (0..count)
        .map(|i| format!("{}/24", Ipv4Addr::from(base + (i << 8))))
        .find(|c| !used.contains(c))
}

/// `10.244.0.0/16` -> (address, prefix); prefixes from /8 to /24.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (8..=24).contains(&prefix).then_some((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_the_first_free_slash_24s() {
        let (base, prefix) = parse_cidr("10.244.0.0/16").expect("cidr");
        let mut used = BTreeSet::new();
        assert_eq!(
            free_cidr(base, prefix, &used).as_deref(),
            Some("10.244.0.0/24")
        );
        used.insert("10.244.0.0/24".to_string());
        assert_eq!(
            free_cidr(base, prefix, &used).as_deref(),
            Some("10.244.1.0/24")
        );
        assert!(parse_cidr("10.0.0.0/30").is_none());
    }

    #[test]
    fn pressure_conditions_taint_no_schedule() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "DiskPressure", "status": "True"},
                {"type": "MemoryPressure", "status": "False"},
            ]}
        }))
        .expect("node");
        assert_eq!(
            wanted_taints(&node, "True", false),
            vec![("node.kubernetes.io/disk-pressure", NO_SCHEDULE)]
        );
        // A silent node: unreachable, and its stale conditions count for nothing.
        assert_eq!(
            wanted_taints(&node, "Unknown", true),
            vec![(UNREACHABLE, BOTH)]
        );
    }
}
