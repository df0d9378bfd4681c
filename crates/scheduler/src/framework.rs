//! The scheduling framework: filter plugins say which nodes can run a pod (and why the
//! others cannot, in upstream's words), score plugins rank the feasible ones, and the
//! best node wins. Pure functions over the cache; the I/O (binding, events) is in
//! `scheduler.rs`. The plugins, one per file, are listed in [`plugins`].

use std::collections::BTreeMap;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::plugins;

pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Why `node` cannot run `pod`, as upstream phrases it; empty when it can.
    fn filter(&self, _pod: &PodInfo, _node: &NodeInfo) -> Vec<String> {
        Vec::new()
    }

    /// How well `node` suits `pod`, 0 to 100; `None` for a plugin that does not score.
    fn score(&self, _pod: &PodInfo, _node: &NodeInfo) -> Option<i64> {
        None
    }

    fn weight(&self) -> i64 {
        1
    }
}

/// Every plugin, in the order upstream's default profile runs them.
pub fn default_plugins() -> Vec<Box<dyn Plugin>> {
    vec![
        Box::new(plugins::node_unschedulable::NodeUnschedulable),
        Box::new(plugins::node_name::NodeName),
        Box::new(plugins::taint_toleration::TaintToleration),
        Box::new(plugins::node_affinity::NodeAffinity),
        Box::new(plugins::node_ports::NodePorts),
        Box::new(plugins::node_resources_fit::NodeResourcesFit),
        Box::new(plugins::scoring::LeastAllocated),
        Box::new(plugins::scoring::BalancedAllocation),
    ]
}

/// The outcome of one scheduling attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Node(String),
    /// No node fits: upstream's message ("0/3 nodes are available: ...").
    Unschedulable(String),
}

/// Picks a node for `pod`. Equal scores go to the node after the last one chosen
/// (`rotation`), so identical nodes fill evenly.
pub fn schedule(
    pod: &PodInfo,
    cache: &Cache,
    plugins: &[Box<dyn Plugin>],
    rotation: usize,
) -> Decision {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Vec<(&str, i64)> = Vec::new();
    let mut best_score = i64::MIN;
    for node in cache.nodes.values() {
        let failed = plugins
            .iter()
            .map(|p| (p.name(), p.filter(pod, node)))
            .find(|(_, r)| !r.is_empty());
        if let Some((plugin, failed)) = failed {
            tracing::trace!(pod = %pod.key(), node = %node.name, plugin, "filtered out");
            for reason in failed {
                *reasons.entry(reason).or_default() += 1;
            }
            continue;
        }
        let score: i64 = plugins
            .iter()
            .filter_map(|p| p.score(pod, node).map(|s| s * p.weight()))
            .sum();
        if score > best_score {
            best_score = score;
            best.clear();
        }
        if score == best_score {
            best.push((&node.name, score));
        }
    }
    if best.is_empty() {
        return Decision::Unschedulable(fit_error(cache.nodes.len(), &reasons));
    }
    Decision::Node(best[rotation % best.len()].0.to_string())
}

/// `0/N nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable.`
fn fit_error(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, Node, Pod, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use serde_json::json;

    use super::*;

    pub(crate) fn node(name: &str, cpu: &str, memory: &str, pods: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods}},
        }))
        .expect("node")
    }

    pub(crate) fn pod(name: &str, cpu: &str) -> PodInfo {
        let mut requests = std::collections::BTreeMap::new();
        requests.insert("cpu".to_string(), Quantity(cpu.into()));
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        PodInfo::new(&pod)
    }

    #[test]
    fn spreads_equal_pods_and_explains_when_nothing_fits() {
        let mut cache = Cache::default();
        for n in ["a", "b"] {
            cache.set_node(&node(n, "1", "1Gi", "110"));
        }
        let plugins = default_plugins();
        let first = schedule(&pod("p1", "600m"), &cache, &plugins, 0);
        let Decision::Node(first) = first else {
            panic!("{first:?}")
        };
        cache.assume(&pod("p1", "600m"), &first);
        // Least allocated prefers the emptier node.
        let second = schedule(&pod("p2", "600m"), &cache, &plugins, 0);
        assert_ne!(second, Decision::Node(first.clone()));
        let Decision::Node(second) = second else {
            panic!()
        };
        cache.assume(&pod("p2", "600m"), &second);
        assert_eq!(
            schedule(&pod("p3", "600m"), &cache, &plugins, 0),
            Decision::Unschedulable("0/2 nodes are available: 2 Insufficient cpu.".into())
        );
        // A failed binding gives the resources back.
        cache.forget("default/p2");
        assert_eq!(
            schedule(&pod("p3", "600m"), &cache, &plugins, 0),
            Decision::Node(second)
        );
    }
}
