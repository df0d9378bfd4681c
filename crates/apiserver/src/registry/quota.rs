//! Upstream's ResourceQuota admission: a new object is charged to
//! every quota of its namespace that limits something it uses (its kind's count,
//! `count/<resource>.<group>`, a pod's CPU and memory requests and limits, a claim's
//! storage, NodePort and LoadBalancer services) and refused with upstream's message when
//! one would go over (`exceeded quota: compute, requested: requests.cpu=500m, used:
//! requests.cpu=1, limited: requests.cpu=1`), or when a quota limits a compute resource
//! a container does not state (`failed quota: compute: must specify limits.cpu for:
//! app`). The charge is a compare-and-swap on the quota's `status.used`, so concurrent
//! creations cannot overshoot together; the controller recounts afterwards (a create
//! that then failed is given back there). Quotas with scopes are not enforced here yet.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use skiff_api::quantity;

use super::object::meta_str;
use super::store::{ListOptions, Part, Registry, WriteOptions};
use super::{Resource, builtin};
use crate::status::ApiError;

/// Compute resources a quota may limit on pods: (quota name, part, resource).
const COMPUTE: [(&str, &str, &str); 6] = [
    ("cpu", "requests", "cpu"),
    ("requests.cpu", "requests", "cpu"),
    ("limits.cpu", "limits", "cpu"),
    ("memory", "requests", "memory"),
    ("requests.memory", "requests", "memory"),
    ("limits.memory", "limits", "memory"),
];

/// What an object uses, by quota resource name.
fn usage(r: &Resource, obj: &Value) -> BTreeMap<String, i64> {
    let mut used = BTreeMap::new();
    let qualified = if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    };
    used.insert(format!("count/{qualified}"), 1);
    if r.group.is_empty()
        && matches!(
            r.plural,
            "pods"
                | "services"
                | "configmaps"
                | "secrets"
                | "persistentvolumeclaims"
                | "replicationcontrollers"
                | "resourcequotas"
        )
    {
        used.insert(r.plural.to_string(), 1);
    }
    match (r.group, r.plural) {
        ("", "pods") => {
            for (name, part, resource) in COMPUTE {
                let total: i64 = obj["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["resources"][part][resource].as_str())
                    .filter_map(|q| quantity::of_resource(resource, q))
                    .sum();
                used.insert(name.to_string(), total);
            }
        }
        ("", "services") => match obj["spec"]["type"].as_str() {
            Some("NodePort") => {
                used.insert("services.nodeports".into(), 1);
            }
            Some("LoadBalancer") => {
                used.insert("services.loadbalancers".into(), 1);
                used.insert("services.nodeports".into(), 1);
            }
            _ => {}
        },
        ("", "persistentvolumeclaims") => {
            let storage = obj["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(quantity::value)
                .unwrap_or(0);
            used.insert("requests.storage".into(), storage);
        }
        _ => {}
    }
    used
}

/// Containers that do not state a compute resource a quota limits: "limits.cpu for: a,b".
fn unstated(obj: &Value, hard: &BTreeMap<String, i64>) -> Vec<String> {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, part, resource) in COMPUTE {
        if !hard.contains_key(name) {
            continue;
        }
        let canonical = format!("{part}.{resource}");
        for c in obj["spec"]["containers"].as_array().into_iter().flatten() {
            if c["resources"][part][resource].is_null() {
                let containers = missing.entry(canonical.clone()).or_default();
                let container = c["name"].as_str().unwrap_or_default().to_string();
                if !containers.contains(&container) {
                    containers.push(container);
                }
            }
        }
    }
    missing
        .into_iter()
        .map(|(resource, containers)| format!("{resource} for: {}", containers.join(",")))
        .collect()
}

fn amounts(list: &Value) -> BTreeMap<String, i64> {
    list.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), quantity::of_resource(k, v.as_str()?)?)))
        .collect()
}

fn show(values: &[(String, i64)]) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={}", quantity::format_resource(k, *v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// How long the datastore's "none here" is trusted while the watch cache agrees.
const LIVE_LOOKUP_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// When the datastore last said a namespace has none of a kind admission reads.
#[derive(Default)]
pub(crate) struct LiveLookups(
    std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
);

impl Registry {
    /// The quotas or limit ranges of a namespace, for admission: from the watch cache;
    /// when it holds none, from the datastore (one may have just been created) at most
    /// every 30 s per namespace, as upstream's live lookup.
    pub(crate) async fn policy_objects(
        &self,
        r: &Resource,
        ns: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let cached = ListOptions {
            resource_version: Some("0".into()),
            ..Default::default()
        };
        let items = |list: Value| match list {
            Value::Object(mut o) => match o.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let found = items(self.list(r, Some(ns), &cached).await?);
        if !found.is_empty() {
            return Ok(found);
        }
        let key = format!("{}/{ns}", r.plural);
        let fresh = self
            .live_lookups
            .0
            .lock()
            .ok()
            .and_then(|seen| seen.get(&key).copied())
            .is_some_and(|at| at.elapsed() < LIVE_LOOKUP_TTL);
        if fresh {
            return Ok(found);
        }
        let live = items(self.list(r, Some(ns), &ListOptions::default()).await?);
        if let Ok(mut seen) = self.live_lookups.0.lock() {
            if live.is_empty() {
                seen.insert(key, std::time::Instant::now());
            } else {
                seen.remove(&key);
            }
        }
        Ok(live)
    }

    /// Charges a new object to the quotas of `ns`; refuses it if one would be exceeded.
    /// A dry run checks without charging.
    pub(crate) async fn admit_quota(
        &self,
        r: &Resource,
        ns: &str,
        obj: &Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let quotas = builtin("", "v1", "resourcequotas")?;
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        let subject = |why: String| {
            ApiError::forbidden(format!("{} \"{name}\" is forbidden: {why}", r.plural))
        };
        let mut delta = None;
        // Quotas already charged by an earlier attempt (not charged twice).
        let mut charged_already: Vec<String> = Vec::new();
        // Every quota is checked before any is charged; each charge is a compare-and-swap,
        // a conflict meaning another write charged it first. The first look is through
        // `policy_objects`; after a conflict, at the datastore.
        for attempt in 0..10 {
            let list = if attempt == 0 {
                self.policy_objects(quotas, ns).await?
            } else {
                let list = self.list(quotas, Some(ns), &ListOptions::default()).await?;
                list["items"].as_array().cloned().unwrap_or_default()
            };
            if list.is_empty() {
                return Ok(());
            }
            let delta = delta.get_or_insert_with(|| usage(r, obj));
            let mut charges = Vec::new();
            for quota in &list {
                let spec = &quota["spec"];
                let scoped = spec["scopes"].as_array().is_some_and(|s| !s.is_empty())
                    || !spec["scopeSelector"].is_null();
                let quota_name = meta_str(quota, "name").unwrap_or_default().to_string();
                if scoped || charged_already.contains(&quota_name) {
                    continue;
                }
                let hard = amounts(&spec["hard"]);
                let charged: Vec<(String, i64)> = delta
                    .iter()
                    .filter(|(k, _)| hard.contains_key(*k))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                if charged.is_empty() {
                    continue;
                }
                if r.plural == "pods" && r.group.is_empty() {
                    let missing = unstated(obj, &hard);
                    if !missing.is_empty() {
                        return Err(subject(format!(
                            "failed quota: {quota_name}: must specify {}",
                            missing.join("; ")
                        )));
                    }
                }
                let mut used = amounts(&quota["status"]["used"]);
                let mut counted: BTreeMap<String, i64> = BTreeMap::new();
                for (k, _) in &charged {
                    if !used.contains_key(k) {
                        // Not counted by the controller yet: count it now.
                        let now = match counted.get(k) {
                            Some(n) => *n,
                            None => self.current_usage(ns, k).await?,
                        };
                        counted.insert(k.clone(), now);
                        used.insert(k.clone(), now);
                    }
                }
                let over: Vec<&(String, i64)> = charged
                    .iter()
                    .filter(|(k, v)| used.get(k).copied().unwrap_or(0) + v > hard[k])
                    .collect();
                if !over.is_empty() {
                    let requested: Vec<(String, i64)> =
                        over.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    let was: Vec<(String, i64)> = over
                        .iter()
                        .map(|(k, _)| (k.clone(), used.get(k).copied().unwrap_or(0)))
                        .collect();
                    let limit: Vec<(String, i64)> =
                        over.iter().map(|(k, _)| (k.clone(), hard[k])).collect();
                    return Err(subject(format!(
                        "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                        show(&requested),
                        show(&was),
                        show(&limit)
                    )));
                }
                let mut next = quota.clone();
                for (k, v) in &charged {
                    let total = used.get(k).copied().unwrap_or(0) + v;
                    next["status"]["used"][k] = json!(quantity::format_resource(k, total));
                }
                if next["status"]["hard"].is_null() {
                    next["status"]["hard"] = spec["hard"].clone();
                }
                charges.push((quota_name, next));
            }
            if dry_run {
                return Ok(());
            }
            let mut conflicted = false;
            for (quota_name, next) in charges {
                let write = WriteOptions {
                    part: Part::Status,
                    ..Default::default()
                };
                match self
                    .update(quotas, Some(ns), &quota_name, next, write)
                    .await
                {
                    Ok(_) => charged_already.push(quota_name),
                    Err(e) if e.code == 409 => conflicted = true,
                    Err(e) => return Err(e),
                }
            }
            if !conflicted {
                return Ok(());
            }
        }
        Err(ApiError {
            code: 409,
            reason: "Conflict",
            message: "the quotas of this namespace kept changing: try again".into(),
            details: None,
        })
    }

    /// What a namespace uses of a quota resource, counted from the store.
    async fn current_usage(&self, ns: &str, resource: &str) -> Result<i64, ApiError> {
        let (plural, group) = match resource {
            "services.nodeports" | "services.loadbalancers" => ("services", ""),
            "requests.storage" => ("persistentvolumeclaims", ""),
            r if COMPUTE.iter().any(|(name, _, _)| *name == r) => ("pods", ""),
            r => {
                let counted = r.strip_prefix("count/").unwrap_or(r);
                counted.split_once('.').unwrap_or((counted, ""))
            }
        };
        let Some(kind) = super::CATALOG
            .iter()
            .find(|k| k.plural == plural && k.group == group)
        else {
            return Ok(0);
        };
        let list = self.list(kind, Some(ns), &ListOptions::default()).await?;
        let total = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| {
                // Finished pods no longer count.
                !(plural == "pods"
                    && matches!(o["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            })
            .map(|o| usage(kind, o).get(resource).copied().unwrap_or(0))
            .sum();
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_use_their_containers_compute_and_count() {
        let pods = super::super::find("", "v1", "pods").expect("pods");
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}},
        ]}});
        let used = usage(pods, &pod);
        assert_eq!(used["pods"], 1);
        assert_eq!(used["count/pods"], 1);
        assert_eq!(used["requests.cpu"], 1250);
        assert_eq!(used["limits.cpu"], 2000);
        assert_eq!(used["requests.memory"], 64 << 20);
        let hard: BTreeMap<String, i64> = [
            ("limits.cpu".to_string(), 1),
            ("requests.memory".to_string(), 1),
        ]
        .into();
        assert_eq!(
            unstated(&pod, &hard),
            ["limits.cpu for: a", "requests.memory for: b"]
        );
        assert_eq!(
            show(&[
                ("requests.cpu".into(), 500),
                ("requests.memory".into(), 1 << 30)
            ]),
            "requests.cpu=500m,requests.memory=1Gi"
        );
    }
}
