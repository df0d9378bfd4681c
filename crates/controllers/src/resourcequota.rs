//! The ResourceQuota controller: each quota's `status.used` for the resources it limits
//! (object counts and the pods' CPU and memory requests and limits), with `status.hard`
//! mirroring the spec. (Refusing what would exceed a quota, and charging it at once, is
//! the API server's admission; this recounts, giving back what was charged for creations
//! that then failed.)

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Service};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::json;
use skiff_api::quantity;

use kube::runtime::reflector::Store;

use crate::Error;
use crate::resources::discover;
use crate::shared::Shared;

const PERIOD: Duration = Duration::from_secs(2);

pub async fn run(client: kube::Client, pods: Shared<Pod>) -> Result<(), Error> {
    let pods = pods.store();
    crate::shared::passes_over(&pods, PERIOD, "resource quotas", || pass(&client, &pods)).await
}

fn pod_sum(pods: &[&Pod], part: &str, resource: &str) -> i64 {
    let parse: fn(&str) -> Option<i64> = if resource == "cpu" {
        quantity::milli_value
    } else {
        quantity::value
    };
    pods.iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .filter_map(|c| {
            let r = c.resources.as_ref()?;
            let list = if part == "limits" {
                r.limits.as_ref()
            } else {
                r.requests.as_ref()
            }?;
            parse(&list.get(resource)?.0)
        })
        .sum()
}

async fn pass(client: &kube::Client, pods: &Store<Pod>) -> Result<(), kube::Error> {
    let quotas = Api::<ResourceQuota>::all(client.clone())
        .list(&ListParams::default().match_any())
        .await?
        .items;
    if quotas.is_empty() {
        return Ok(());
    }
    let kinds = discover(client).await?;
    let pods = pods.state();
    for quota in quotas {
        let ns = quota.metadata.namespace.clone().unwrap_or_default();
        let name = quota.metadata.name.clone().unwrap_or_default();
        let hard = quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let live: Vec<&Pod> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .collect();
        let mut used = BTreeMap::new();
        for resource in hard.keys() {
            let value = match resource.as_str() {
                "pods" | "count/pods" => live.len().to_string(),
                "requests.cpu" | "cpu" => quantity::format_milli(pod_sum(&live, "requests", "cpu")),
                "limits.cpu" => quantity::format_milli(pod_sum(&live, "limits", "cpu")),
                "requests.memory" | "memory" => {
                    quantity::format_bytes(pod_sum(&live, "requests", "memory"))
                }
                "limits.memory" => quantity::format_bytes(pod_sum(&live, "limits", "memory")),
                "requests.storage" => {
                    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                        .list(&ListParams::default().match_any())
                        .await?;
                    let total: i64 = claims
                        .items
                        .iter()
                        .filter_map(|c| {
                            let requests =
                                c.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?;
                            quantity::value(&requests.get("storage")?.0)
                        })
                        .sum();
                    quantity::format_bytes(total)
                }
                kind @ ("services.nodeports" | "services.loadbalancers") => {
                    let services = Api::<Service>::namespaced(client.clone(), &ns)
                        .list(&ListParams::default().match_any())
                        .await?;
                    let counted: &[&str] = if kind == "services.nodeports" {
                        &["NodePort", "LoadBalancer"]
                    } else {
                        &["LoadBalancer"]
                    };
                    services
                        .items
                        .iter()
                        .filter(|s| {
                            s.spec
                                .as_ref()
                                .and_then(|s| s.type_.as_deref())
                                .is_some_and(|t| counted.contains(&t))
                        })
                        .count()
                        .to_string()
                }
                other => {
                    // Object counts: `configmaps`, `count/deployments.apps`, ...
                    let plural = other.strip_prefix("count/").unwrap_or(other);
                    let (plural, group) = plural.split_once('.').unwrap_or((plural, ""));
                    let Some(kind) = kinds.iter().find(|k| {
                        k.namespaced && k.resource.plural == plural && k.resource.group == group
                    }) else {
                        continue;
                    };
                    let resource: &ApiResource = &kind.resource;
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(client.clone(), &ns, resource);
                    api.list_metadata(&ListParams::default().match_any())
                        .await?
                        .items
                        .len()
                        .to_string()
                }
            };
            used.insert(resource.clone(), value);
        }
        let current_used: BTreeMap<String, String> = quota
            .status
            .as_ref()
            .and_then(|s| s.used.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let current_hard = quota
            .status
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        if current_used == used && current_hard == hard {
            continue;
        }
        let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
        // On the quota as listed: admission may have charged it since (a conflict; the
        // next pass counts again).
        let patch = json!({
            "metadata": {"resourceVersion": quota.metadata.resource_version},
            "status": {"hard": hard, "used": used},
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
