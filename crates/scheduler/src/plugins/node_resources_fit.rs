//! NodeResourcesFit: the pod's requests must fit in what the node has left of its
//! allocatable CPU, memory, ephemeral storage and pod count.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, State};

pub struct NodeResourcesFit;

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Vec<String> {
        let (a, used, want) = (&node.allocatable, &node.requested, &pod.requests);
        let mut reasons = Vec::new();
        if used.pods + 1 > a.pods {
            reasons.push("Too many pods".to_string());
        }
        if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > a.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > a.memory {
            reasons.push("Insufficient memory".into());
        }
        if want.ephemeral_storage > 0
            && used.ephemeral_storage + want.ephemeral_storage > a.ephemeral_storage
        {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        reasons
    }

    /// Evicting pods frees what they held.
    fn unresolvable(&self, _reason: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Resources;

    #[test]
    fn reports_every_insufficient_resource() {
        let node = NodeInfo {
            allocatable: Resources {
                milli_cpu: 1000,
                memory: 1 << 30,
                ephemeral_storage: 0,
                pods: 1,
            },
            requested: Resources {
                milli_cpu: 900,
                memory: 0,
                ephemeral_storage: 0,
                pods: 1,
            },
            ..Default::default()
        };
        let pod = PodInfo {
            requests: Resources {
                milli_cpu: 200,
                memory: 1,
                ephemeral_storage: 0,
                pods: 1,
            },
            ..Default::default()
        };
        assert_eq!(
            NodeResourcesFit.filter(&pod, &node, None),
            vec!["Too many pods".to_string(), "Insufficient cpu".to_string()]
        );
    }
}
