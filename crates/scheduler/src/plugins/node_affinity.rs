//! NodeAffinity: `spec.nodeSelector` and required node affinity must match the node's
//! labels; preferred terms add their weights to the score.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, State};

pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Vec<String> {
        if matches(pod, node) {
            Vec::new()
        } else {
            vec!["node(s) didn't match Pod's node affinity/selector".into()]
        }
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Option<i64> {
        let preferred = pod
            .pod
            .spec
            .as_ref()?
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()?;
        let total: i64 = preferred.iter().map(|p| i64::from(p.weight)).sum();
        if total == 0 {
            return None;
        }
        let matched: i64 = preferred
            .iter()
            .filter(|p| skiff_api::selector::term_matches(&p.preference, &node.name, &node.labels))
            .map(|p| i64::from(p.weight))
            .sum();
        Some(matched * 100 / total)
    }

    fn weight(&self) -> i64 {
        2
    }
}

/// Whether the node satisfies the pod's `nodeSelector` and required node affinity
/// (also what PodTopologySpread's `nodeAffinityPolicy: Honor` counts by).
pub fn matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let Some(spec) = pod.pod.spec.as_ref() else {
        return true;
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| skiff_api::selector::node_matches(r, &node.name, &node.labels))
}
