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
    pods.wait_until_ready().await.ok();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&client, &pods).await {
            tracing::warn!(error = %e, "disruption budgets");
        }
    }
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
        let expected = i32::try_from(selected.len()).unwrap_or(0);
        let healthy = i32::try_from(
            selected
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count(),
        )
        .unwrap_or(0);
        let desired = match (&spec.min_available, &spec.max_unavailable) {
            (Some(min), _) => resolve(min, expected),
            (None, Some(max)) => (expected - resolve(max, expected)).max(0),
            (None, None) => expected,
        };
        let allowed = (healthy - desired).max(0);
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
