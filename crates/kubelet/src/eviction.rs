//! Node-pressure eviction, as upstream's eviction manager: every interval the
//! node's signals (from the Summary, `stats.rs`) are compared with the hard thresholds
//! (`--eviction-hard`, upstream's defaults: `memory.available<100Mi`,
//! `nodefs.available<10%`, `nodefs.inodesFree<5%`, `imagefs.available<15%`). A met
//! threshold sets the node's MemoryPressure or DiskPressure condition (held for the
//! pressure transition period after it clears) and evicts one pod per round, ranked as
//! upstream ranks them: pods using more than they request first, then lower priority,
//! then those furthest over their request. An evicted pod ends Failed with reason
//! `Evicted`. Under pressure new pods are refused at admission: BestEffort pods under
//! MemoryPressure, every pod under DiskPressure. Static and critical pods are spared.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// What a threshold watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    MemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
        }
    }

    /// The resource the signal is short of, as upstream names it in messages.
    fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsInodesFree => "inodes",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
        }
    }

    pub fn memory(self) -> bool {
        self == Signal::MemoryAvailable
    }
}

/// A quantity or a share of capacity.
#[derive(Clone, Debug, PartialEq)]
pub enum Amount {
    Quantity(u64, String),
    Percent(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub amount: Amount,
}

impl Threshold {
    fn limit(&self, capacity: u64) -> u64 {
        match &self.amount {
            Amount::Quantity(bytes, _) => *bytes,
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }

    fn describe(&self, capacity: u64) -> String {
        match &self.amount {
            Amount::Quantity(_, text) => text.clone(),
            Amount::Percent(_) => self.limit(capacity).to_string(),
        }
    }
}

/// Upstream's default hard thresholds.
pub fn defaults() -> Vec<Threshold> {
    parse("memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%")
        .unwrap_or_default()
}

/// `signal<quantity|percent%,...` as `--eviction-hard` takes it.
pub fn parse(text: &str) -> Result<Vec<Threshold>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('<')
            .ok_or_else(|| format!("eviction threshold {part:?}: expected signal<value"))?;
        let signal = match name.trim() {
            "memory.available" => Signal::MemoryAvailable,
            "nodefs.available" => Signal::NodeFsAvailable,
            "nodefs.inodesFree" => Signal::NodeFsInodesFree,
            "imagefs.available" => Signal::ImageFsAvailable,
            other => return Err(format!("unknown eviction signal {other:?}")),
        };
        let value = value.trim();
        let amount = match value.strip_suffix('%') {
            Some(p) => {
                let p: f64 = p
                    .parse()
                    .map_err(|_| format!("eviction threshold {part:?}: bad percentage"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!(
                        "eviction threshold {part:?}: percentage out of range"
                    ));
                }
                Amount::Percent(p)
            }
            None => {
                let q = skiff_api::quantity::value(value)
                    .and_then(|q| u64::try_from(q).ok())
                    .ok_or_else(|| format!("eviction threshold {part:?}: bad quantity"))?;
                Amount::Quantity(q, value.to_string())
            }
        };
        out.push(Threshold { signal, amount });
    }
    Ok(out)
}

/// The node's pressure conditions, shared by the eviction loop, node status and pod
/// admission.
#[derive(Default)]
pub struct Pressure {
    /// When memory, and disk, thresholds were last met.
    last_met: Mutex<(Option<Instant>, Option<Instant>)>,
    transition: Mutex<Duration>,
}

impl Pressure {
    pub fn new(transition: Duration) -> Pressure {
        Pressure {
            last_met: Mutex::default(),
            transition: Mutex::new(transition),
        }
    }

    fn record(&self, memory: bool, disk: bool) {
        let mut last = self.last_met.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if memory {
            last.0 = Some(now);
        }
        if disk {
            last.1 = Some(now);
        }
    }

    fn held(&self, at: Option<Instant>) -> bool {
        let transition = *self.transition.lock().unwrap_or_else(|e| e.into_inner());
        at.is_some_and(|at| at.elapsed() <= transition)
    }

    pub fn memory(&self) -> bool {
        let last = self.last_met.lock().unwrap_or_else(|e| e.into_inner()).0;
        self.held(last)
    }

    pub fn disk(&self) -> bool {
        let last = self.last_met.lock().unwrap_or_else(|e| e.into_inner()).1;
        self.held(last)
    }
}

/// (available, capacity) of a signal in a Summary's node.
fn observe(node: &Value, signal: Signal) -> Option<(u64, u64)> {
    let pair = |value: &Value, available: &str, capacity: Option<&str>| {
        let free = value[available].as_u64()?;
        let total = match capacity {
            Some(key) => value[key].as_u64()?,
            None => free + value["workingSetBytes"].as_u64()?,
        };
        Some((free, total))
    };
    match signal {
        Signal::MemoryAvailable => pair(&node["memory"], "availableBytes", None),
        Signal::NodeFsAvailable => pair(&node["fs"], "availableBytes", Some("capacityBytes")),
        Signal::NodeFsInodesFree => pair(&node["fs"], "inodesFree", Some("inodes")),
        Signal::ImageFsAvailable => pair(
            &node["runtime"]["imageFs"],
            "availableBytes",
            Some("capacityBytes"),
        ),
    }
}

/// The thresholds the node meets now, with what was observed.
pub fn met(summary: &Value, thresholds: &[Threshold]) -> Vec<(Threshold, u64, u64)> {
    thresholds
        .iter()
        .filter_map(|t| {
            let (available, capacity) = observe(&summary["node"], t.signal)?;
            (available < t.limit(capacity)).then(|| (t.clone(), available, capacity))
        })
        .collect()
}

/// Records pressure from this round's met thresholds.
pub fn record(pressure: &Pressure, met: &[(Threshold, u64, u64)]) {
    let memory = met.iter().any(|(t, ..)| t.signal.memory());
    let disk = met.iter().any(|(t, ..)| !t.signal.memory());
    pressure.record(memory, disk);
}

/// Pods the kubelet must not evict or refuse: static pods and critical ones.
pub fn spared(pod: &Pod) -> bool {
    let file = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/config.source"))
        .is_some_and(|s| s == "file");
    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    file || priority >= 2_000_000_000
}

fn requested(pod: &Pod, resource: &str) -> u64 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
        .filter_map(|q| skiff_api::quantity::value(&q.0))
        .filter_map(|q| u64::try_from(q).ok())
        .sum()
}

/// The pod to evict for `threshold` (upstream's ranking), and the message it gets.
pub fn choose<'a>(
    summary: &Value,
    pods: &'a [Pod],
    threshold: &Threshold,
    available: u64,
    capacity: u64,
) -> Option<(&'a Pod, String)> {
    let usage = |pod: &Pod| -> u64 {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let stats = summary["pods"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["podRef"]["uid"] == uid));
        let Some(stats) = stats else { return 0 };
        if threshold.signal.memory() {
            stats["memory"]["workingSetBytes"].as_u64().unwrap_or(0)
        } else {
            stats["ephemeral-storage"]["usedBytes"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    let request_key = if threshold.signal.memory() {
        "memory"
    } else {
        "ephemeral-storage"
    };
    let mut ranked: Vec<(&Pod, u64, u64, i32)> = pods
        .iter()
        .filter(|p| !spared(p))
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
                && p.metadata.deletion_timestamp.is_none()
        })
        .map(|p| {
            let priority = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            (p, usage(p), requested(p, request_key), priority)
        })
        .collect();
    ranked.sort_by(|a, b| {
        let over = |x: &(&Pod, u64, u64, i32)| x.1 > x.2;
        over(b)
            .cmp(&over(a))
            .then(a.3.cmp(&b.3))
            .then((b.1.saturating_sub(b.2)).cmp(&a.1.saturating_sub(a.2)))
    });
    let (pod, used, request, _) = ranked.first()?;
    let resource = threshold.signal.resource();
    let message = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}Ki. Pod was using {}Ki, request is {}Ki. ",
        threshold.describe(capacity),
        available / 1024,
        used / 1024,
        request / 1024,
    );
    Some((pod, message))
}

/// Why a new pod may not start under the node's pressure, if it may not.
pub fn refuse(pod: &Pod, pressure: &Pressure) -> Option<String> {
    if spared(pod) {
        return None;
    }
    if pressure.disk() {
        return Some("The node had condition: [DiskPressure]. ".into());
    }
    let best_effort = pod
        .spec
        .as_ref()
        .is_some_and(|s| crate::status::qos_class(s) == "BestEffort");
    (pressure.memory() && best_effort).then(|| "The node had condition: [MemoryPressure]. ".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, memory_request: Option<&str>, priority: i32) -> Pod {
        let mut c = json!({"name": "c", "image": "i"});
        if let Some(m) = memory_request {
            c["resources"] = json!({"requests": {"memory": m}});
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name},
            "spec": {"containers": [c], "priority": priority},
            "status": {"phase": "Running"},
        }))
        .expect("pod")
    }

    #[test]
    fn thresholds_parse_as_upstream_writes_them() {
        let t = parse("memory.available<100Mi, nodefs.available<10%").expect("parse");
        assert_eq!(t[0].signal, Signal::MemoryAvailable);
        assert_eq!(t[0].amount, Amount::Quantity(100 << 20, "100Mi".into()));
        assert_eq!(t[1].amount, Amount::Percent(10.0));
        assert_eq!(defaults().len(), 4);
        for bad in [
            "memory.available>1Gi",
            "cpu.available<1",
            "nodefs.available<120%",
            "memory.available<lots",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals_come_from_the_summary() {
        let summary = json!({"node": {
            "memory": {"availableBytes": 50u64 << 20, "workingSetBytes": 950u64 << 20},
            "fs": {"availableBytes": 5, "capacityBytes": 100, "inodesFree": 50, "inodes": 100},
            "runtime": {"imageFs": {"availableBytes": 90, "capacityBytes": 100}},
        }});
        let met = met(&summary, &defaults());
        let signals: Vec<Signal> = met.iter().map(|(t, ..)| t.signal).collect();
        assert_eq!(
            signals,
            vec![Signal::MemoryAvailable, Signal::NodeFsAvailable]
        );
        assert_eq!((met[0].1, met[0].2), (50 << 20, 1000 << 20));
        let pressure = Pressure::new(Duration::from_secs(60));
        record(&pressure, &met);
        assert!(pressure.memory() && pressure.disk());
    }

    #[test]
    fn pods_over_their_requests_go_first_then_low_priority() {
        let summary = json!({"pods": [
            {"podRef": {"uid": "small-over"}, "memory": {"workingSetBytes": 20u64 << 20}},
            {"podRef": {"uid": "big-under"}, "memory": {"workingSetBytes": 500u64 << 20}},
            {"podRef": {"uid": "big-over"}, "memory": {"workingSetBytes": 300u64 << 20}},
            {"podRef": {"uid": "important-over"}, "memory": {"workingSetBytes": 900u64 << 20}},
        ]});
        let pods = vec![
            pod("small-over", None, 0),
            pod("big-under", Some("1Gi"), 0),
            pod("big-over", Some("100Mi"), 0),
            pod("important-over", None, 1000),
        ];
        let threshold = &defaults()[0];
        let (chosen, message) =
            choose(&summary, &pods, threshold, 1 << 20, 1 << 30).expect("a pod");
        assert_eq!(chosen.metadata.name.as_deref(), Some("big-over"));
        assert!(message.starts_with("The node was low on resource: memory. Threshold quantity: 100Mi, available: 1024Ki."), "{message}");
    }

    #[test]
    fn admission_under_pressure() {
        let pressure = Pressure::new(Duration::from_secs(60));
        let best_effort = pod("a", None, 0);
        let burstable = pod("b", Some("1Mi"), 0);
        assert_eq!(refuse(&best_effort, &pressure), None);
        pressure.record(true, false);
        assert!(refuse(&best_effort, &pressure).is_some_and(|m| m.contains("MemoryPressure")));
        assert_eq!(refuse(&burstable, &pressure), None);
        pressure.record(false, true);
        assert!(refuse(&burstable, &pressure).is_some_and(|m| m.contains("DiskPressure")));
    }
}
