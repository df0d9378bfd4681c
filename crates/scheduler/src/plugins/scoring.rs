//! NodeResourcesFit's LeastAllocated score (prefer nodes with more left) or its
//! MostAllocated score (prefer the fullest, for bin packing), and
//! NodeResourcesBalancedAllocation (prefer nodes whose CPU and memory use stay even).
//! Pods without requests count as upstream's defaults (100m CPU, 200 MiB).

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{Plugin, State};

const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

/// (cpu, memory) fractions of allocatable the node would use with the pod, in 0..=1.
fn fractions(pod: &PodInfo, node: &NodeInfo) -> Option<(f64, f64)> {
    let a = &node.allocatable;
    if a.milli_cpu <= 0 || a.memory <= 0 {
        return None;
    }
    let cpu = pod.requests.milli_cpu.max(if pod.requests.milli_cpu == 0 {
        DEFAULT_MILLI_CPU
    } else {
        0
    });
    let memory = pod.requests.memory.max(if pod.requests.memory == 0 {
        DEFAULT_MEMORY
    } else {
        0
    });
    let cpu = (node.requested.milli_cpu + cpu) as f64 / a.milli_cpu as f64;
    let memory = (node.requested.memory + memory) as f64 / a.memory as f64;
    Some((cpu.min(1.0), memory.min(1.0)))
}

pub struct LeastAllocated;

impl Plugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Option<i64> {
        let (cpu, memory) = fractions(pod, node)?;
        Some((((1.0 - cpu) + (1.0 - memory)) * 50.0) as i64)
    }
}

/// NodeResourcesFit's MostAllocated strategy: prefer the fullest nodes (bin packing).
pub struct MostAllocated;

impl Plugin for MostAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Option<i64> {
        let (cpu, memory) = fractions(pod, node)?;
        Some(((cpu + memory) * 50.0) as i64)
    }
}

pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: Option<&State>) -> Option<i64> {
        let (cpu, memory) = fractions(pod, node)?;
        // Upstream: 1 - standard deviation of the fractions.
        let deviation = (cpu - memory).abs() / 2.0;
        Some(((1.0 - deviation) * 100.0) as i64)
    }
}
