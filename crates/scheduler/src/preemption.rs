//! Preemption (upstream's DefaultPreemption): a pod that fits nowhere may evict pods of
//! lower priority. On each node where removing pods could help, every lower-priority
//! pod is taken away; if the pod then fits, the most important of them are given back
//! one by one while it still fits, and the rest are the victims. The node whose victims
//! matter least wins: lowest highest priority, then lowest sum, then fewest.
//! The victims' removal is then carried out through the API by `scheduler.rs`.

use std::collections::BTreeMap;

use crate::cache::{Cache, PodInfo};
use crate::framework::{Cycle, Plugin, fit_error};

const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// A node to nominate and the pods to evict there.
#[derive(Debug)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<PodInfo>,
}

/// Why a pod may not preempt, in upstream's words (appended to the fit error), and
/// whether an earlier nomination stands (only while its victims are still leaving).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub keep_nomination: bool,
}

impl Refusal {
    fn clear(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            keep_nomination: false,
        }
    }
}

/// Finds where `pod` fits by evicting lower-priority pods, or says why it cannot, in
/// upstream's words (appended to the fit error).
pub fn preempt(
    pod: &PodInfo,
    cache: &Cache,
    plugins: &[Box<dyn Plugin>],
    resolvable: &[String],
) -> Result<Preemption, Refusal> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err(Refusal::clear(
            "preemption: not eligible due to preemptionPolicy=Never.",
        ));
    }
    // Victims of an earlier preemption are still leaving: wait for them.
    let nominated = cache.nominated_node(&pod.key()).or_else(|| {
        pod.pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
    });
    if let Some(node) = nominated.and_then(|n| cache.nodes.get(n))
        && cache
            .pods_on(node)
            .any(|p| p.terminating() && p.priority < pod.priority)
    {
        return Err(Refusal {
            message: "preemption: not eligible due to a terminating pod on the nominated node."
                .into(),
            keep_nomination: true,
        });
    }
    let cycle = Cycle::new(pod, cache, plugins);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(Key, Preemption)> = None;
    for node in cache.nodes.values() {
        if !resolvable.contains(&node.name) {
            *reasons.entry(NOT_HELPFUL.into()).or_default() += 1;
            continue;
        }
        let mut info = cycle.with_nominated(cache, node).into_owned();
        let mut lower: Vec<&PodInfo> = cache
            .pods_on(node)
            .filter(|p| p.priority < pod.priority)
            .collect();
        if lower.is_empty() {
            *reasons.entry(NO_VICTIMS.into()).or_default() += 1;
            continue;
        }
        for victim in &lower {
            info.unplace(victim);
        }
        if let Some((failed, _)) = cycle.filter(&info) {
            for reason in failed {
                *reasons.entry(reason).or_default() += 1;
            }
            continue;
        }
        // Most important first: higher priority, then the longer running (a pod not
        // started yet counts as starting now, the least important).
        let now = k8s_openapi::jiff::Timestamp::now();
        let started = |p: &PodInfo| p.start_time().copied().unwrap_or(now);
        lower.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| started(a).cmp(&started(b)))
        });
        let mut victims = Vec::new();
        for candidate in lower {
            info.place(candidate);
            if cycle.filter(&info).is_some() {
                info.unplace(candidate);
                victims.push(candidate.clone());
            }
        }
        let key = Key::of(&victims);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((
                key,
                Preemption {
                    node: node.name.clone(),
                    victims,
                },
            ));
        }
    }
    match best {
        Some((_, preemption)) => Ok(preemption),
        None => Err(Refusal::clear(format!(
            "preemption: {}",
            fit_error(cache.nodes.len(), &reasons)
        ))),
    }
}

/// How much a set of victims matters; less is a better choice.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    highest: i64,
    sum: i64,
    count: usize,
}

impl Key {
    fn of(victims: &[PodInfo]) -> Key {
        Key {
            highest: victims
                .iter()
                .map(|v| i64::from(v.priority))
                .max()
                .unwrap_or(i64::MIN),
            // Shifted to be positive, as upstream, so more victims never sum to less.
            sum: victims
                .iter()
                .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
                .sum(),
            count: victims.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::*;
    use crate::framework::{Decision, default_plugins, schedule};

    fn node(name: &str) -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"}},
        }))
        .expect("node")
    }

    fn pod(name: &str, cpu: &str, priority: i32, policy: &str) -> PodInfo {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "priority": priority,
                "preemptionPolicy": policy,
                "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}],
            },
        }))
        .expect("pod");
        PodInfo::new(&pod)
    }

    #[test]
    fn evicts_the_fewest_least_important_pods() {
        let mut cache = Cache::default();
        cache.set_node(&node("a"));
        cache.set_node(&node("b"));
        // a: two 400m pods of priority 10 and 5; b: one 800m pod of priority 100.
        cache.assume(&pod("a-10", "400m", 10, "PreemptLowerPriority"), "a");
        cache.assume(&pod("a-5", "400m", 5, "PreemptLowerPriority"), "a");
        cache.assume(&pod("b-100", "800m", 100, "PreemptLowerPriority"), "b");
        let plugins = default_plugins();
        let high = pod("high", "500m", 1000, "PreemptLowerPriority");
        let Decision::Unschedulable {
            message,
            resolvable,
        } = schedule(&high, &cache, &plugins, 0)
        else {
            panic!("fits");
        };
        assert_eq!(message, "0/2 nodes are available: 2 Insufficient cpu.");
        let p = preempt(&high, &cache, &plugins, &resolvable).expect("preemption");
        // On a, evicting the priority-5 pod frees enough; b would cost priority 100.
        assert_eq!(p.node, "a");
        let victims: Vec<String> = p.victims.iter().map(|v| v.name.clone()).collect();
        assert_eq!(victims, ["a-5"]);

        // A pod that may not preempt, and one with nothing below it.
        let never = pod("never", "500m", 1000, "Never");
        assert_eq!(
            preempt(&never, &cache, &plugins, &resolvable)
                .expect_err("never")
                .message,
            "preemption: not eligible due to preemptionPolicy=Never."
        );
        let low = pod("low", "500m", 1, "PreemptLowerPriority");
        assert_eq!(
            preempt(&low, &cache, &plugins, &resolvable)
                .expect_err("nothing lower")
                .message,
            format!("preemption: 0/2 nodes are available: 2 {NO_VICTIMS}.")
        );
        // Once nominated, the freed room is kept for it against lower priorities.
        cache.remove_pod("default/a-5");
        cache.nominate(&high, Some("a"));
        let mid = pod("mid", "500m", 50, "Never");
        assert!(matches!(
            schedule(&mid, &cache, &plugins, 0),
            Decision::Unschedulable { .. }
        ));
        assert_eq!(
            schedule(&high, &cache, &plugins, 0),
            Decision::Node("a".into())
        );
    }
}
