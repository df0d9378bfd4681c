//! TaintToleration: a node's NoSchedule and NoExecute taints keep out pods that do not
//! tolerate them; PreferNoSchedule taints lower the node's score.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, State};

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Vec<String> {
        let tolerations = pod.tolerations();
        match skiff_api::taints::untolerated(
            &node.taints,
            tolerations,
            &["NoSchedule", "NoExecute"],
        ) {
            Some(taint) => vec![format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or_default()
            )],
            None => Vec::new(),
        }
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Option<i64> {
        let tolerations = pod.tolerations();
        let intolerable = node
            .taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| {
                !tolerations
                    .iter()
                    .any(|tol| skiff_api::taints::tolerates(tol, t))
            })
            .count() as i64;
        Some((100 - 10 * intolerable).max(0))
    }
}
