//! The disruption controller: a PodDisruptionBudget's status says how many of its pods
//! are healthy and how many may be evicted now; the API server's eviction subresource
//! spends `disruptionsAllowed`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use kube::runtime::reflector::Store;

use crate::Error;
use crate::shared::Shared;

const PERIOD: Duration = Duration::from_secs(1);

pub async fn run(client: kube::Client, pods: Shared<Pod>) -> Result<(), Error> {
    let pods = pods.store();
    crate::shared::passes_over(&pods, PERIOD, "disruption budgets", || pass(&client, &pods)).await
}

fn resolve(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map_or(0, |p| {
                i32::try_from((i64::from(total) * p + 99) / 100).unwrap_or(0)
            }),
    }
}

async fn pass(client: &kube::Client, pods: &Store<Pod>) -> Result<(), kube::Error> {
    let budgets: Api<PodDisruptionBudget> = Api::all(client.clone());
    let list = budgets
        .list(&ListParams::default().match_any())
        .await?
        .items;
    if list.is_empty() {
        return Ok(());
    }
    let pods = pods.state();
    for pdb in list {
        let ns = pdb.metadata.namespace.clone().unwrap_or_default();
        let name = pdb.metadata.name.clone().unwrap_or_default();
        let spec = pdb.spec.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        let selected: Vec<&Pod> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                skiff_api::selector::matches(
                    &selector,
                    &p.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        // Percentages and maxUnavailable count against what the pods' controllers want
        // (their scale), as upstream; a whole number minAvailable against the pods.
        let by_scale = spec.max_unavailable.is_some()
            || matches!(spec.min_available, Some(IntOrString::String(_)));
        let expected = if by_scale {
            match expected_from_controllers(client, &ns, &selected).await? {
                Ok(n) => n,
                Err(why) => {
                    tracing::warn!(pdb = %format!("{ns}/{name}"), %why, "disruption budget");
                    0
                }
            }
        } else {
            i32::try_from(selected.len()).unwrap_or(0)
        };
        let healthy =
            i32::try_from(selected.iter().filter(|p| crate::pod_ready(p)).count()).unwrap_or(0);
        let desired = match (&spec.min_available, &spec.max_unavailable) {
            (Some(min), _) => resolve(min, expected),
            (None, Some(max)) => (expected - resolve(max, expected)).max(0),
            (None, None) => expected,
        };
        let allowed = if expected == 0 && by_scale {
            0
        } else {
            (healthy - desired).max(0)
        };
        let current = pdb.status.clone().unwrap_or_default();
        if current.observed_generation == pdb.metadata.generation
            && current.current_healthy == healthy
            && current.desired_healthy == desired
            && current.expected_pods == expected
            && current.disruptions_allowed == allowed
        {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let (status, reason) = if allowed > 0 {
            ("True", "SufficientPods")
        } else {
            ("False", "InsufficientPods")
        };
        // Compare-and-swap: an eviction that just spent a disruption is not overwritten.
        let patch = json!({"metadata": {"resourceVersion": pdb.metadata.resource_version}, "status": {
            "observedGeneration": pdb.metadata.generation,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": allowed,
            "conditions": [{"type": "DisruptionAllowed", "status": status, "reason": reason,
                "message": "", "lastTransitionTime": now, "observedGeneration": pdb.metadata.generation}],
        }});
        let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The sum of the scales of the controllers of `pods`: a ReplicaSet's (its Deployment's
/// when it has one), a StatefulSet's or a ReplicationController's. `Err` (in words) when
/// a pod has no controller or one of another kind, where upstream allows no disruption.
async fn expected_from_controllers(
    client: &kube::Client,
    ns: &str,
    pods: &[&Pod],
) -> Result<Result<i32, String>, kube::Error> {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::api::core::v1::ReplicationController;
    let mut controllers = std::collections::BTreeSet::new();
    for pod in pods {
        let Some(owner) = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        else {
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            return Ok(Err(format!("found no controller ref for pod {pod_name:?}")));
        };
        controllers.insert((owner.kind.clone(), owner.name.clone()));
    }
    let mut total = 0;
    let mut counted = std::collections::BTreeSet::new();
    for (kind, name) in controllers {
        let (kind, name, replicas) = match kind.as_str() {
            "ReplicaSet" => {
                let Some(rs) = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .get_opt(&name)
                    .await?
                else {
                    continue;
                };
                let deployment = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                    .map(|o| o.name.clone());
                match deployment {
                    Some(d) => match Api::<Deployment>::namespaced(client.clone(), ns)
                        .get_opt(&d)
                        .await?
                    {
                        Some(dep) => (
                            "Deployment".to_string(),
                            d,
                            dep.spec.and_then(|s| s.replicas).unwrap_or(1),
                        ),
                        None => continue,
                    },
                    None => (kind, name, rs.spec.and_then(|s| s.replicas).unwrap_or(1)),
                }
            }
            "StatefulSet" => match Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await?
            {
                Some(sts) => (kind, name, sts.spec.and_then(|s| s.replicas).unwrap_or(1)),
                None => continue,
            },
            "ReplicationController" => {
                match Api::<ReplicationController>::namespaced(client.clone(), ns)
                    .get_opt(&name)
                    .await?
                {
                    Some(rc) => (kind, name, rc.spec.and_then(|s| s.replicas).unwrap_or(1)),
                    None => continue,
                }
            }
            other => {
                return Ok(Err(format!(
                    "{other} {name} has no scale the budget can use"
                )));
            }
        };
        // Two ReplicaSets of one Deployment count the Deployment once.
        if counted.insert((kind, name)) {
            total += replicas;
        }
    }
    Ok(Ok(total))
}
