//! InterPodAffinity: pods placed relative to other pods by topology domain. Required
//! affinity needs a matching pod in the node's domain; required anti-affinity (the
//! pod's own, and that of pods already placed) forbids one; preferred terms, and the
//! placed pods' terms towards this pod, score domains up or down by their weights.
//! Namespaces: a term's `namespaces`, all of them for an empty `namespaceSelector`,
//! else the pod's own.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodAffinityTerm, WeightedPodAffinityTerm};
use skiff_api::selector::matches;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{Plugin, State, UNSCORED, scored_range};

const AFFINITY: &str = "node(s) didn't match pod affinity rules";
const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
/// Upstream's `hardPodAffinityWeight`: a placed pod's required affinity towards this
/// pod also attracts it, this much.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

pub struct InterPodAffinity;

/// A topology domain: a key and its value.
type Domain = (String, String);

#[derive(Default)]
struct Prepared {
    /// The pod's required affinity terms, each with the domains that hold a pod
    /// matching every term.
    affinity: Vec<(String, HashSet<String>)>,
    /// Whether no pod anywhere matches the affinity terms (the first of a group may
    /// go anywhere if it matches its own terms).
    first_of_group: bool,
    /// The pod's required anti-affinity terms, each with the domains holding a match.
    anti: Vec<(String, HashSet<String>)>,
    /// Domains that placed pods' anti-affinity keeps this pod out of.
    existing_anti: HashSet<Domain>,
    /// Preference per domain, from every preferred term either way.
    scores: HashMap<Domain, i64>,
}

/// Whether `term` of `owner` selects `pod`.
fn term_selects(term: &PodAffinityTerm, owner: &PodInfo, pod: &PodInfo) -> bool {
    let in_namespace = match (&term.namespaces, &term.namespace_selector) {
        (Some(ns), _) if !ns.is_empty() => ns.contains(&pod.namespace),
        (_, Some(sel))
            if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty()) =>
        {
            true
        }
        _ => pod.namespace == owner.namespace,
    };
    in_namespace
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| matches(s, &pod.labels))
}

/// Adds `sign` times the weight of each of `owner`'s preferred `terms` that selects
/// `target` to the domain of `node` the term names; whether any did.
fn weigh(
    scores: &mut HashMap<Domain, i64>,
    terms: &[WeightedPodAffinityTerm],
    owner: &PodInfo,
    target: &PodInfo,
    node: &NodeInfo,
    sign: i64,
) -> bool {
    let mut any = false;
    for w in terms {
        let key = &w.pod_affinity_term.topology_key;
        if term_selects(&w.pod_affinity_term, owner, target)
            && let Some(value) = node.labels.get(key)
        {
            *scores.entry((key.clone(), value.clone())).or_default() += sign * i64::from(w.weight);
            any = true;
        }
    }
    any
}

struct Terms<'a> {
    required_affinity: &'a [PodAffinityTerm],
    required_anti: &'a [PodAffinityTerm],
    preferred_affinity: &'a [WeightedPodAffinityTerm],
    preferred_anti: &'a [WeightedPodAffinityTerm],
}

fn terms(pod: &PodInfo) -> Terms<'_> {
    let affinity = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let a = affinity.and_then(|a| a.pod_affinity.as_ref());
    let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
    Terms {
        required_affinity: a
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default(),
        required_anti: anti
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default(),
        preferred_affinity: a
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default(),
        preferred_anti: anti
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default(),
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn prepare(&self, pod: &PodInfo, cache: &Cache) -> Option<Box<State>> {
        let own = terms(pod);
        let mut prepared = Prepared {
            affinity: own
                .required_affinity
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            anti: own
                .required_anti
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            first_of_group: true,
            ..Default::default()
        };
        let existing: Box<dyn Iterator<Item = &PodInfo>> = if pod.has_affinity {
            Box::new(cache.placed_pods())
        } else {
            Box::new(cache.pods_with_affinity())
        };
        let mut any = false;
        for other in existing {
            if other.key() == pod.key() {
                continue;
            }
            let Some(node) = other.node.as_ref().and_then(|n| cache.nodes.get(n)) else {
                continue;
            };
            let domain = |key: &str| node.labels.get(key).map(|v| (key.to_string(), v.clone()));
            // The pod's own terms, against the placed pod.
            if !own.required_affinity.is_empty()
                && own
                    .required_affinity
                    .iter()
                    .all(|t| term_selects(t, pod, other))
            {
                prepared.first_of_group = false;
                for (term, (_, values)) in own.required_affinity.iter().zip(&mut prepared.affinity)
                {
                    if let Some(v) = node.labels.get(&term.topology_key) {
                        values.insert(v.clone());
                    }
                }
            }
            for (term, (_, values)) in own.required_anti.iter().zip(&mut prepared.anti) {
                if term_selects(term, pod, other)
                    && let Some(v) = node.labels.get(&term.topology_key)
                {
                    values.insert(v.clone());
                }
            }
            let scores = &mut prepared.scores;
            any |= weigh(scores, own.preferred_affinity, pod, other, node, 1);
            any |= weigh(scores, own.preferred_anti, pod, other, node, -1);
            // The placed pod's terms, against this pod.
            if !other.has_affinity {
                continue;
            }
            let theirs = terms(other);
            for term in theirs.required_anti {
                if term_selects(term, other, pod)
                    && let Some(d) = domain(&term.topology_key)
                {
                    prepared.existing_anti.insert(d);
                }
            }
            for term in theirs.required_affinity {
                if term_selects(term, other, pod)
                    && let Some(d) = domain(&term.topology_key)
                {
                    *prepared.scores.entry(d).or_default() += HARD_POD_AFFINITY_WEIGHT;
                    any = true;
                }
            }
            let scores = &mut prepared.scores;
            any |= weigh(scores, theirs.preferred_affinity, other, pod, node, 1);
            any |= weigh(scores, theirs.preferred_anti, other, pod, node, -1);
        }
        if !any {
            prepared.scores.clear();
        }
        let nothing = prepared.affinity.is_empty()
            && prepared.anti.is_empty()
            && prepared.existing_anti.is_empty()
            && prepared.scores.is_empty();
        if nothing {
            return None;
        }
        // The first pod of a group may start it only if it matches its own terms.
        if prepared.first_of_group {
            prepared.first_of_group = own
                .required_affinity
                .iter()
                .all(|t| term_selects(t, pod, pod));
        }
        Some(Box::new(prepared))
    }

    fn filter(&self, _pod: &PodInfo, node: &NodeInfo, state: Option<&State>) -> Vec<String> {
        let Some(p) = state.and_then(|s| s.downcast_ref::<Prepared>()) else {
            return Vec::new();
        };
        let mut affinity_ok = true;
        for (key, values) in &p.affinity {
            match node.labels.get(key) {
                None => return vec![AFFINITY.into()],
                Some(v) if !values.contains(v) => affinity_ok = false,
                Some(_) => {}
            }
        }
        if !affinity_ok && !p.first_of_group {
            return vec![AFFINITY.into()];
        }
        if p.anti
            .iter()
            .any(|(key, values)| node.labels.get(key).is_some_and(|v| values.contains(v)))
        {
            return vec![ANTI_AFFINITY.into()];
        }
        if p.existing_anti
            .iter()
            .any(|(k, v)| node.labels.get(k) == Some(v))
        {
            return vec![EXISTING_ANTI_AFFINITY.into()];
        }
        Vec::new()
    }

    fn unresolvable(&self, reason: &str) -> bool {
        reason == AFFINITY
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: Option<&State>) -> Option<i64> {
        let p = state.and_then(|s| s.downcast_ref::<Prepared>())?;
        if p.scores.is_empty() {
            return None;
        }
        Some(
            node.labels
                .iter()
                .filter_map(|(k, v)| p.scores.get(&(k.clone(), v.clone())))
                .sum(),
        )
    }

    /// `100 * (s - min) / (max - min)`; all 0 when every node scores the same.
    fn normalize(&self, scores: &mut [i64]) {
        let (min, max) = scored_range(scores);
        for s in scores.iter_mut().filter(|s| **s != UNSCORED) {
            *s = if max > min {
                100 * (*s - min) / (max - min)
            } else {
                0
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
    use serde_json::{Value, json};

    use super::*;
    use crate::framework::{Decision, default_plugins, schedule, zoned_node as node};

    fn pod(name: &str, app: &str, affinity: Value) -> PodInfo {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c"}], "affinity": affinity},
        }))
        .expect("pod");
        PodInfo::new(&pod)
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    #[test]
    fn required_affinity_and_anti_affinity() {
        let mut cache = Cache::default();
        for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            cache.set_node(&node(n, z));
        }
        let plugins = default_plugins();
        cache.assume(&pod("db", "db", json!(null)), "b1");
        // Affinity to the db's zone: only b1.
        let web = pod(
            "web",
            "web",
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "topology.kubernetes.io/zone")]}}),
        );
        for i in 0..3 {
            assert_eq!(
                schedule(&web, &cache, &plugins, i),
                Decision::Node("b1".into())
            );
        }
        // Affinity to something that does not exist and that the pod is not: nowhere.
        let lonely = pod(
            "lonely",
            "web",
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "kubernetes.io/hostname")]}}),
        );
        let Decision::Unschedulable {
            message,
            resolvable,
        } = schedule(&lonely, &cache, &plugins, 0)
        else {
            panic!("scheduled");
        };
        assert_eq!(message, format!("0/3 nodes are available: 3 {AFFINITY}."));
        assert!(resolvable.is_empty());
        // The first of a self-affine group goes anywhere.
        let first = pod(
            "first",
            "cache",
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "kubernetes.io/hostname")]}}),
        );
        assert!(matches!(
            schedule(&first, &cache, &plugins, 0),
            Decision::Node(_)
        ));

        // One per zone by anti-affinity: the third has nowhere to go.
        let anti = |name: &str| {
            pod(
                name,
                "spread",
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("spread", "topology.kubernetes.io/zone")]}}),
            )
        };
        let mut zones = HashSet::new();
        for i in 0..2 {
            let p = anti(&format!("s{i}"));
            let Decision::Node(n) = schedule(&p, &cache, &plugins, i) else {
                panic!("s{i} unschedulable");
            };
            assert!(zones.insert(n[..1].to_string()), "two in one zone");
            cache.assume(&p, &n);
        }
        let Decision::Unschedulable { message, .. } = schedule(&anti("s2"), &cache, &plugins, 0)
        else {
            panic!("scheduled");
        };
        assert!(message.contains(ANTI_AFFINITY), "{message}");
        // A pod without terms is kept away by the placed pods' anti-affinity.
        let plain = pod("plain", "spread", json!(null));
        let Decision::Unschedulable { message, .. } = schedule(&plain, &cache, &plugins, 0) else {
            panic!("scheduled");
        };
        assert!(message.contains(EXISTING_ANTI_AFFINITY), "{message}");
    }

    #[test]
    fn preferred_affinity_scores_the_domain() {
        let mut cache = Cache::default();
        for (n, z) in [("a1", "a"), ("b1", "b")] {
            cache.set_node(&node(n, z));
        }
        cache.assume(&pod("db", "db", json!(null)), "a1");
        let near = pod(
            "near",
            "web",
            json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term("db", "topology.kubernetes.io/zone")}]}}),
        );
        let far = pod(
            "far",
            "web",
            json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term("db", "topology.kubernetes.io/zone")}]}}),
        );
        let plugins = default_plugins();
        for i in 0..2 {
            assert_eq!(
                schedule(&near, &cache, &plugins, i),
                Decision::Node("a1".into())
            );
            assert_eq!(
                schedule(&far, &cache, &plugins, i),
                Decision::Node("b1".into())
            );
        }
    }
}
