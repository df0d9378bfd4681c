//! PodTopologySpread: `topologySpreadConstraints` keep matching pods evenly spread over
//! topology domains (nodes, zones, ...). `DoNotSchedule` constraints filter: placing the
//! pod in a domain may not make it exceed the least populated domain by more than
//! `maxSkew`. `ScheduleAnyway` constraints score: emptier domains are preferred.
//! Pods count when they are in the pod's namespace, match the constraint's selector
//! (plus `matchLabelKeys`) and are not terminating, on nodes that carry every topology
//! key and, with the default `nodeAffinityPolicy: Honor`, match the pod's node affinity.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use skiff_api::selector::matches;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{Plugin, State, UNSCORED, scored_range};
use crate::plugins::node_affinity;

const HOSTNAME: &str = "kubernetes.io/hostname";
const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const SKEW: &str = "node(s) didn't match pod topology spread constraints";

pub struct PodTopologySpread;

/// One constraint with the pods counted per domain (value of its topology key).
struct Counted {
    key: String,
    max_skew: i64,
    selector: Option<LabelSelector>,
    min_domains: Option<i32>,
    counts: HashMap<String, i64>,
    /// Whether the incoming pod matches its own selector (it will count once placed).
    self_match: i64,
}

impl Counted {
    /// The least number of matching pods in any domain (0 with fewer than minDomains).
    fn global_min(&self) -> i64 {
        if self
            .min_domains
            .is_some_and(|m| (self.counts.len() as i64) < i64::from(m))
        {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }

    /// Upstream's `topologyNormalizingWeight`: domains of a bigger topology count less.
    fn weight(&self, nodes: usize) -> f64 {
        let size = if self.key == HOSTNAME {
            nodes
        } else {
            self.counts.len()
        };
        ((size + 2) as f64).ln()
    }
}

struct Spread {
    hard: Vec<Counted>,
    soft: Vec<Counted>,
    /// Eligible nodes, for the hostname weight.
    nodes: usize,
}

/// The selector with `matchLabelKeys` turned into `In` requirements on the pod's values;
/// `None` without a `labelSelector`, which selects no pods (as upstream).
fn selector_of(c: &TopologySpreadConstraint, pod: &PodInfo) -> Option<LabelSelector> {
    let mut selector = c.label_selector.clone()?;
    for key in c.match_label_keys.iter().flatten() {
        if let Some(value) = pod.labels.get(key) {
            selector
                .match_expressions
                .get_or_insert_with(Vec::new)
                .push(LabelSelectorRequirement {
                    key: key.clone(),
                    operator: "In".into(),
                    values: Some(vec![value.clone()]),
                });
        }
    }
    Some(selector)
}

/// Whether `node`'s pods count for `pod`'s constraints.
fn eligible(pod: &PodInfo, node: &NodeInfo, constraints: &[&TopologySpreadConstraint]) -> bool {
    if !constraints
        .iter()
        .all(|c| node.labels.contains_key(&c.topology_key))
    {
        return false;
    }
    let honor_affinity = constraints
        .iter()
        .all(|c| c.node_affinity_policy.as_deref() != Some("Ignore"));
    if honor_affinity && !node_affinity::matches(pod, node) {
        return false;
    }
    let honor_taints = constraints
        .iter()
        .any(|c| c.node_taints_policy.as_deref() == Some("Honor"));
    if honor_taints {
        let tolerations = pod.tolerations();
        if skiff_api::taints::untolerated(&node.taints, tolerations, &["NoSchedule", "NoExecute"])
            .is_some()
        {
            return false;
        }
    }
    true
}

fn count(
    pod: &PodInfo,
    cache: &Cache,
    constraints: &[&TopologySpreadConstraint],
) -> (Vec<Counted>, usize) {
    let mut counted: Vec<Counted> = constraints
        .iter()
        .map(|c| {
            let selector = selector_of(c, pod);
            Counted {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew),
                self_match: i64::from(selector.as_ref().is_some_and(|s| matches(s, &pod.labels))),
                selector,
                min_domains: c.min_domains,
                counts: HashMap::new(),
            }
        })
        .collect();
    let mut nodes = 0;
    for node in cache.nodes.values() {
        if !eligible(pod, node, constraints) {
            continue;
        }
        nodes += 1;
        for c in &mut counted {
            let Some(domain) = node.labels.get(&c.key) else {
                continue;
            };
            let matching = match &c.selector {
                Some(selector) => cache
                    .pods_on(node)
                    .filter(|p| p.namespace == pod.namespace && !p.terminating())
                    .filter(|p| matches(selector, &p.labels))
                    .count() as i64,
                None => 0,
            };
            *c.counts.entry(domain.clone()).or_default() += matching;
        }
    }
    (counted, nodes)
}

fn constraints<'a>(pod: &'a PodInfo, when: &str) -> Vec<&'a TopologySpreadConstraint> {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .map(|cs| cs.iter().filter(|c| c.when_unsatisfiable == when).collect())
        .unwrap_or_default()
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn prepare(&self, pod: &PodInfo, cache: &Cache) -> Option<Box<State>> {
        let hard = constraints(pod, "DoNotSchedule");
        let soft = constraints(pod, "ScheduleAnyway");
        if hard.is_empty() && soft.is_empty() {
            return None;
        }
        let (hard, _) = count(pod, cache, &hard);
        let (soft, nodes) = count(pod, cache, &soft);
        Some(Box::new(Spread { hard, soft, nodes }))
    }

    fn filter(&self, _pod: &PodInfo, node: &NodeInfo, state: Option<&State>) -> Vec<String> {
        let Some(spread) = state.and_then(|s| s.downcast_ref::<Spread>()) else {
            return Vec::new();
        };
        for c in &spread.hard {
            let Some(domain) = node.labels.get(&c.key) else {
                return vec![MISSING_LABEL.into()];
            };
            let here = c.counts.get(domain).copied().unwrap_or(0);
            if here + c.self_match - c.global_min() > c.max_skew {
                return vec![SKEW.into()];
            }
        }
        Vec::new()
    }

    fn unresolvable(&self, reason: &str) -> bool {
        reason == MISSING_LABEL
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: Option<&State>) -> Option<i64> {
        let spread = state.and_then(|s| s.downcast_ref::<Spread>())?;
        if spread.soft.is_empty() {
            return None;
        }
        let mut score = 0.0;
        for c in &spread.soft {
            // Nodes without every key are ignored (scored 0 after normalizing).
            let domain = node.labels.get(&c.key)?;
            let here = c.counts.get(domain).copied().unwrap_or(0);
            score += here as f64 * c.weight(spread.nodes) + (c.max_skew - 1) as f64;
        }
        Some(score.round() as i64)
    }

    /// Fewer matching pods is better: `100 * (max + min - s) / max`; ignored nodes
    /// (without every key) stay unscored.
    fn normalize(&self, scores: &mut [i64]) {
        let (min, max) = scored_range(scores);
        for s in scores.iter_mut().filter(|s| **s != UNSCORED) {
            *s = if max == 0 {
                100
            } else {
                100 * (max + min - *s) / max
            };
        }
    }

    fn weight(&self) -> i64 {
        2
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::*;
    use crate::framework::{Decision, default_plugins, schedule, zoned_node};

    fn spread_pod(name: &str, when: &str) -> PodInfo {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "c"}],
                "topologySpreadConstraints": [{
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": when,
                    "labelSelector": {"matchLabels": {"app": "web"}},
                }],
            },
        }))
        .expect("pod");
        PodInfo::new(&pod)
    }

    #[test]
    fn do_not_schedule_keeps_zones_within_max_skew() {
        let mut cache = Cache::default();
        cache.set_node(&zoned_node("a1", "a"));
        cache.set_node(&zoned_node("a2", "a"));
        cache.set_node(&zoned_node("b1", "b"));
        let plugins = default_plugins();
        let mut zones = HashMap::<String, i64>::new();
        for i in 0..6 {
            let pod = spread_pod(&format!("p{i}"), "DoNotSchedule");
            let Decision::Node(node) = schedule(&pod, &cache, &plugins, i) else {
                panic!("unschedulable");
            };
            *zones.entry(node[..1].to_string()).or_default() += 1;
            cache.assume(&pod, &node);
            let (a, b) = (
                zones.get("a").copied().unwrap_or(0),
                zones.get("b").copied().unwrap_or(0),
            );
            assert!((a - b).abs() <= 1, "after {i}: a={a} b={b}");
        }
        // A node without the zone label is filtered out as missing it.
        let mut bare = zoned_node("x", "a");
        bare.metadata.labels =
            Some([("kubernetes.io/hostname".to_string(), "x".to_string())].into());
        cache.set_node(&bare);
        let state = PodTopologySpread.prepare(&spread_pod("q", "DoNotSchedule"), &cache);
        let x = cache.nodes.get("x").expect("x");
        assert_eq!(
            PodTopologySpread.filter(&spread_pod("q", "DoNotSchedule"), x, state.as_deref()),
            vec![MISSING_LABEL.to_string()]
        );
    }

    #[test]
    fn schedule_anyway_prefers_the_emptier_zone() {
        let mut cache = Cache::default();
        cache.set_node(&zoned_node("a1", "a"));
        cache.set_node(&zoned_node("b1", "b"));
        for i in 0..3 {
            cache.assume(&spread_pod(&format!("old{i}"), "ScheduleAnyway"), "a1");
        }
        let plugins = default_plugins();
        for i in 0..3 {
            assert_eq!(
                schedule(&spread_pod("new", "ScheduleAnyway"), &cache, &plugins, i),
                Decision::Node("b1".into())
            );
        }
    }
}
