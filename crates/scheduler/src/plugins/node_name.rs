//! NodeName: a pod that names its node runs there only.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, State};

pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Vec<String> {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(name) if !name.is_empty() && name != node.name => {
                vec!["node(s) didn't match the requested node name".into()]
            }
            _ => Vec::new(),
        }
    }
}
