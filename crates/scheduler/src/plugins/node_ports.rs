//! NodePorts: a pod's host ports must be free on the node.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, State};

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Vec<String> {
        let conflict = pod.host_ports.iter().any(|(protocol, ip, port)| {
            node.used_ports.iter().any(|(p2, ip2, port2)| {
                protocol == p2
                    && port == port2
                    && (ip.is_empty()
                        || ip2.is_empty()
                        || ip == "0.0.0.0"
                        || ip2 == "0.0.0.0"
                        || ip == ip2)
            })
        });
        if conflict {
            vec!["node(s) didn't have free ports for the requested pod ports".into()]
        } else {
            Vec::new()
        }
    }

    /// Evicting pods frees what they held.
    fn unresolvable(&self, _reason: &str) -> bool {
        false
    }
}
