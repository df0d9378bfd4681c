//! The filter and score plugins, one per file, each after the upstream plugin of the
//! same name (k8s.io/kubernetes `pkg/scheduler/framework/plugins`).

pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod scoring;
pub mod taint_toleration;
