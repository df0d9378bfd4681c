//! The scheduling framework: filter plugins say which nodes can run a pod (and why the
//! others cannot, in upstream's words), score plugins rank the feasible ones, and the
//! best node wins. Pure functions over the cache; the I/O (binding, events) is in
//! `scheduler.rs`. The plugins, one per file, are listed in [`plugins`].

use std::any::Any;
use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::plugins;

/// What a plugin works out once per pod before looking at nodes (upstream's PreFilter
/// and PreScore state), such as how many matching pods each topology domain holds.
pub type State = dyn Any + Send + Sync;

/// A node a score plugin returned `None` for, while normalizing.
pub const UNSCORED: i64 = i64::MIN;

/// The lowest and highest of the scores a plugin gave (0, 0 when none).
pub fn scored_range(scores: &[i64]) -> (i64, i64) {
    let scored = scores.iter().copied().filter(|s| *s != UNSCORED);
    (scored.clone().min().unwrap_or(0), scored.max().unwrap_or(0))
}

/// A node labelled with its name and a zone, with room for anything, for tests.
#[cfg(test)]
pub(crate) fn zoned_node(name: &str, zone: &str) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": zone,
        }},
        "status": {"allocatable": {"cpu": "8", "memory": "8Gi", "pods": "110"}},
    }))
    .expect("node")
}

pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Cluster-wide facts this plugin needs for `pod`, computed once per attempt.
    fn prepare(&self, _pod: &PodInfo, _cache: &Cache) -> Option<Box<State>> {
        None
    }

    /// Why `node` cannot run `pod`, as upstream phrases it; empty when it can.
    fn filter(&self, _pod: &PodInfo, _node: &NodeInfo, _state: Option<&State>) -> Vec<String> {
        Vec::new()
    }

    /// Whether removing pods from the node could never cure this failure (upstream's
    /// `UnschedulableAndUnresolvable`): preemption skips such nodes.
    fn unresolvable(&self, _reason: &str) -> bool {
        true
    }

    /// How well `node` suits `pod`; `None` for a plugin that does not score. Scores are
    /// 0 to 100 unless the plugin rescales them in [`Plugin::normalize`].
    fn score(&self, _pod: &PodInfo, _node: &NodeInfo, _state: Option<&State>) -> Option<i64> {
        None
    }

    /// Rescales the raw scores of the feasible nodes to 0..=100 (NormalizeScore).
    /// Nodes the plugin did not score hold [`UNSCORED`] and end with 0.
    fn normalize(&self, _scores: &mut [i64]) {}

    fn weight(&self) -> i64 {
        1
    }
}

/// Every plugin, in the order upstream's default profile runs them.
#[cfg(test)]
pub fn default_plugins() -> Vec<Box<dyn Plugin>> {
    plugins_with(crate::ScoringStrategy::LeastAllocated)
}

/// The default profile with NodeResourcesFit scoring by `strategy`.
pub fn plugins_with(strategy: crate::ScoringStrategy) -> Vec<Box<dyn Plugin>> {
    let fit: Box<dyn Plugin> = match strategy {
        crate::ScoringStrategy::LeastAllocated => Box::new(plugins::scoring::LeastAllocated),
        crate::ScoringStrategy::MostAllocated => Box::new(plugins::scoring::MostAllocated),
    };
    vec![
        Box::new(plugins::node_unschedulable::NodeUnschedulable),
        Box::new(plugins::node_name::NodeName),
        Box::new(plugins::taint_toleration::TaintToleration),
        Box::new(plugins::node_affinity::NodeAffinity),
        Box::new(plugins::node_ports::NodePorts),
        Box::new(plugins::node_resources_fit::NodeResourcesFit),
        Box::new(plugins::pod_topology_spread::PodTopologySpread),
        Box::new(plugins::inter_pod_affinity::InterPodAffinity),
        fit,
        Box::new(plugins::scoring::BalancedAllocation),
    ]
}

/// The outcome of one scheduling attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Node(String),
    /// No node fits: upstream's message ("0/3 nodes are available: ..."), and the nodes
    /// whose failures preemption might cure.
    Unschedulable {
        message: String,
        resolvable: Vec<String>,
    },
}

/// One pod's plugins with their prepared state.
pub struct Cycle<'a> {
    pub pod: &'a PodInfo,
    plugins: &'a [Box<dyn Plugin>],
    states: Vec<Option<Box<State>>>,
}

impl<'a> Cycle<'a> {
    pub fn new(pod: &'a PodInfo, cache: &Cache, plugins: &'a [Box<dyn Plugin>]) -> Self {
        let states = plugins.iter().map(|p| p.prepare(pod, cache)).collect();
        Cycle {
            pod,
            plugins,
            states,
        }
    }

    /// The first failing plugin's reasons, and whether preemption could cure them.
    pub fn filter(&self, node: &NodeInfo) -> Option<(Vec<String>, bool)> {
        self.plugins
            .iter()
            .zip(&self.states)
            .find_map(|(p, state)| {
                let reasons = p.filter(self.pod, node, state.as_deref());
                if reasons.is_empty() {
                    return None;
                }
                let unresolvable = reasons.iter().any(|r| p.unresolvable(r));
                tracing::trace!(pod = %self.pod.key(), node = %node.name, plugin = p.name(), "filtered out");
                Some((reasons, !unresolvable))
            })
    }

    /// `node` with the pods nominated to it that this pod must leave room for.
    pub fn with_nominated<'n>(&self, cache: &Cache, node: &'n NodeInfo) -> Cow<'n, NodeInfo> {
        let nominated = cache.nominated_on(&node.name, self.pod.priority, &self.pod.key());
        if nominated.is_empty() {
            return Cow::Borrowed(node);
        }
        let mut node = node.clone();
        for pod in nominated {
            node.place(pod);
        }
        Cow::Owned(node)
    }

    /// Total weighted scores of the feasible nodes, in their order.
    fn scores(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut total = vec![0i64; nodes.len()];
        let mut raw = vec![0i64; nodes.len()];
        for (p, state) in self.plugins.iter().zip(&self.states) {
            let mut scored = false;
            for (i, node) in nodes.iter().enumerate() {
                raw[i] = match p.score(self.pod, node, state.as_deref()) {
                    Some(s) => {
                        scored = true;
                        s
                    }
                    None => UNSCORED,
                };
            }
            if !scored {
                continue;
            }
            p.normalize(&mut raw);
            for (t, r) in total.iter_mut().zip(&raw) {
                if *r != UNSCORED {
                    *t += r * p.weight();
                }
            }
        }
        total
    }
}

/// Upstream's adaptive `percentageOfNodesToScore`: in big clusters the search stops
/// once this many feasible nodes are found (50% of the nodes, minus a point per 125
/// nodes, at least 5% and at least 100 nodes).
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(MIN)
}

/// Picks a node for `pod`, looking at every node.
#[cfg(test)]
pub fn schedule(
    pod: &PodInfo,
    cache: &Cache,
    plugins: &[Box<dyn Plugin>],
    rotation: usize,
) -> Decision {
    schedule_from(pod, cache, plugins, rotation, 0).0
}

/// Picks a node for `pod`, searching from the `start`th node round the ring until
/// [`feasible_nodes_to_find`] nodes fit; returns how many nodes were looked at, where
/// the next search starts (as upstream, so every node gets its turn). Equal scores go
/// to the node after the last one chosen (`rotation`), so identical nodes fill evenly.
pub fn schedule_from(
    pod: &PodInfo,
    cache: &Cache,
    plugins: &[Box<dyn Plugin>],
    rotation: usize,
    start: usize,
) -> (Decision, usize) {
    let cycle = Cycle::new(pod, cache, plugins);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut resolvable = Vec::new();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let total = cache.nodes.len();
    let wanted = feasible_nodes_to_find(total);
    let start = if total == 0 { 0 } else { start % total };
    let mut evaluated = 0;
    let ring = cache
        .nodes
        .values()
        .skip(start)
        .chain(cache.nodes.values().take(start));
    for node in ring {
        if feasible.len() >= wanted {
            break;
        }
        evaluated += 1;
        match cycle.filter(&cycle.with_nominated(cache, node)) {
            Some((failed, can_preempt)) => {
                for reason in failed {
                    *reasons.entry(reason).or_default() += 1;
                }
                if can_preempt {
                    resolvable.push(node.name.clone());
                }
            }
            None => feasible.push(node),
        }
    }
    if feasible.is_empty() {
        let decision = Decision::Unschedulable {
            message: fit_error(cache.nodes.len(), &reasons),
            resolvable,
        };
        return (decision, evaluated);
    }
    let scores = if feasible.len() == 1 {
        vec![0]
    } else {
        cycle.scores(&feasible)
    };
    let best_score = scores.iter().copied().max().unwrap_or(0);
    let best: Vec<&str> = feasible
        .iter()
        .zip(&scores)
        .filter(|(_, s)| **s == best_score)
        .map(|(n, _)| n.name.as_str())
        .collect();
    (
        Decision::Node(best[rotation % best.len()].to_string()),
        evaluated,
    )
}

/// `0/N nodes are available: 2 Insufficient cpu, 1 node(s) were unschedulable.`
pub fn fit_error(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
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
    fn big_clusters_are_sampled_as_upstream() {
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(150), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        let mut cache = Cache::default();
        for i in 0..300 {
            cache.set_node(&node(&format!("n{i:03}"), "1", "1Gi", "110"));
        }
        let plugins = default_plugins();
        let (decision, evaluated) = schedule_from(&pod("p", "10m"), &cache, &plugins, 0, 250);
        // 300 nodes: 50 - 2 = 48% -> 144 nodes, from the 250th round the ring.
        assert_eq!(evaluated, 144);
        assert!(matches!(decision, Decision::Node(_)));
    }

    #[test]
    fn most_allocated_packs_pods_onto_the_fullest_node() {
        let mut cache = Cache::default();
        for n in ["a", "b", "c"] {
            cache.set_node(&node(n, "4", "4Gi", "110"));
        }
        let plugins = plugins_with(crate::ScoringStrategy::MostAllocated);
        // CPU and memory in step, so BalancedAllocation ranks every node the same.
        let sized = |name: &str, cpu: &str, memory: &str| {
            let mut p = pod(name, cpu);
            p.requests.memory = skiff_api::quantity::value(memory).expect("memory");
            p
        };
        cache.assume(&sized("first", "1", "1Gi"), "b");
        for i in 0..3 {
            let p = sized(&format!("p{i}"), "500m", "512Mi");
            assert_eq!(
                schedule(&p, &cache, &plugins, i),
                Decision::Node("b".into())
            );
            cache.assume(&p, "b");
        }
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
            Decision::Unschedulable {
                message: "0/2 nodes are available: 2 Insufficient cpu.".into(),
                resolvable: vec!["a".into(), "b".into()],
            }
        );
        // A failed binding gives the resources back.
        cache.forget("default/p2");
        assert_eq!(
            schedule(&pod("p3", "600m"), &cache, &plugins, 0),
            Decision::Node(second)
        );
    }
}
