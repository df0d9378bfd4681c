//! The StatefulSet controller: pods with stable names (`NAME-0`, `NAME-1`, ...), each
//! with its own PersistentVolumeClaims from `volumeClaimTemplates`, created in order
//! (each once the previous one is Running and Ready, with `OrderedReady`) or all at once
//! (`Parallel`), removed from the highest ordinal down, and updated from the highest
//! ordinal down to the `partition`, one at a time. Each template is recorded as a
//! ControllerRevision, as upstream, so `kubectl rollout status|history` work.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use serde_json::json;

use crate::events::Recorder;
use crate::queue::{WorkQueue, Workers, drive, object_key, owner_key, reflect};
use crate::shared::Shared;
use crate::{Error, delete_pod, pod_ready, status_changed, write_status};

const WORKERS: usize = 4;
const HASH_LABEL: &str = "controller-revision-hash";

#[derive(Clone)]
struct Context {
    client: kube::Client,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    queue: WorkQueue,
    events: Recorder,
}

/// Syncs a StatefulSet whenever it or one of its pods changes.
pub async fn run(client: kube::Client, shared_pods: Shared<Pod>) -> Result<(), Error> {
    let (sets, set_writer) = reflector::store();
    let pods = shared_pods.store();
    let ctx = Context {
        client: client.clone(),
        sets,
        pods,
        queue: WorkQueue::gated(),
        events: Recorder::new(client.clone(), "statefulset-controller"),
    };
    let set_events = reflect(&client, set_writer);
    let pod_events = shared_pods
        .subscribe()
        .map(Ok::<_, std::convert::Infallible>);
    let mut workers = Workers::default();
    let worker_ctx = ctx.clone();
    workers.sync_loop(WORKERS, &ctx.queue, "statefulset", move |key| {
        let ctx = worker_ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|()| None) }
    });
    let queue = ctx.queue.clone();
    let set_loop = set_events.for_each(|event| {
        if let Ok(sts) = event {
            queue.add(&object_key(&sts));
        }
        futures::future::ready(())
    });
    let queue = ctx.queue.clone();
    let pod_loop = pod_events.for_each(|event| {
        if let Ok(pod) = event
            && let Some(key) = owner_key(&*pod, "StatefulSet")
        {
            queue.add(&key);
        }
        futures::future::ready(())
    });
    // Syncs start once every cache has its first list; all objects are looked at
    // again every minute.
    drive(
        &ctx.queue,
        vec![Box::new(ctx.sets.clone()), Box::new(ctx.pods.clone())],
        ctx.sets.clone(),
        futures::future::join(set_loop, pod_loop),
    )
    .await;
    Ok(())
}

async fn reconcile(ctx: &Context, key: &str) -> Result<(), kube::Error> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(sts) = ctx.sets.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .collect();
    sync(ctx, &sts, &pods).await
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && pod_ready(pod)
}

fn owner(sts: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: sts.metadata.name.clone().unwrap_or_default(),
        uid: sts.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn revision_hash(sts: &StatefulSet) -> String {
    let text = serde_json::to_string(&sts.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!(
        "{}-{hash:08x}",
        sts.metadata.name.as_deref().unwrap_or_default()
    )
}

async fn sync(ctx: &Context, sts: &StatefulSet, all_pods: &[Arc<Pod>]) -> Result<(), kube::Error> {
    let client = &ctx.client;
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let name = sts.metadata.name.clone().unwrap_or_default();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let update_revision = revision_hash(sts);
    ensure_revision(client, sts, &update_revision).await?;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut by_ordinal: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in all_pods.iter().map(|p| &**p).filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
    }) {
        if let Some(ordinal) = pod
            .metadata
            .name
            .as_deref()
            .and_then(|n| n.strip_prefix(&format!("{name}-")))
            .and_then(|o| o.parse::<i32>().ok())
        {
            by_ordinal.insert(ordinal, pod);
        }
    }
    // Scale up, in order unless Parallel.
    for ordinal in 0..replicas {
        match by_ordinal.get(&ordinal) {
            Some(pod) => {
                if pod.metadata.deletion_timestamp.is_some() && !parallel {
                    break;
                }
                if !parallel && !running_and_ready(pod) {
                    break;
                }
            }
            None => {
                create_pod(ctx, sts, ordinal, &update_revision).await?;
                if !parallel {
                    break;
                }
            }
        }
    }
    // Scale down from the highest ordinal, one at a time unless Parallel.
    let extra: Vec<(&i32, &&Pod)> = by_ordinal
        .iter()
        .rev()
        .filter(|(o, _)| **o >= replicas)
        .collect();
    for (_, pod) in extra {
        if pod.metadata.deletion_timestamp.is_none() {
            delete_pod(&pods_api, pod).await?;
            deleted(ctx, sts, pod);
        }
        if !parallel {
            break;
        }
    }
    // Rolling update: from the highest ordinal down to the partition, one at a time,
    // each once the others are Running and Ready.
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let revision_of = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL))
            .cloned()
    };
    let current_pods: Vec<&Pod> = by_ordinal
        .iter()
        .filter(|(o, _)| **o < replicas)
        .map(|(_, p)| *p)
        .collect();
    if rolling
        && current_pods.len() == usize::try_from(replicas).unwrap_or(0)
        && current_pods.iter().all(|p| running_and_ready(p))
        && let Some((_, pod)) = by_ordinal
            .iter()
            .rev()
            .filter(|(o, _)| **o < replicas && **o >= partition)
            .find(|(_, p)| revision_of(p).as_deref() != Some(update_revision.as_str()))
    {
        delete_pod(&pods_api, pod).await?;
        deleted(ctx, sts, pod);
    }
    let existing: Vec<&Pod> = by_ordinal
        .values()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let updated = existing
        .iter()
        .filter(|p| revision_of(p).as_deref() == Some(update_revision.as_str()))
        .count();
    let ready_count = existing.iter().filter(|p| pod_ready(p)).count();
    let current_revision = if updated == existing.len() && !existing.is_empty() {
        update_revision.clone()
    } else {
        sts.status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .unwrap_or_else(|| update_revision.clone())
    };
    let current = existing
        .iter()
        .filter(|p| revision_of(p).as_deref() == Some(current_revision.as_str()))
        .count();
    let status = json!({
        "observedGeneration": sts.metadata.generation,
        "replicas": existing.len(),
        "readyReplicas": ready_count,
        "availableReplicas": ready_count,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
    });
    let old = serde_json::to_value(sts.status.clone().unwrap_or_default()).unwrap_or_default();
    let keys = [
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "currentReplicas",
        "updatedReplicas",
        "currentRevision",
        "updateRevision",
    ];
    if status_changed(&old, &status, &keys) {
        let api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        write_status(&api, &name, status).await?;
    }
    Ok(())
}

/// Records the template as a ControllerRevision (`kubectl rollout history`).
async fn ensure_revision(
    client: &kube::Client,
    sts: &StatefulSet,
    hash: &str,
) -> Result<(), kube::Error> {
    // The status names the revision once a sync has recorded it: no read per sync.
    if sts
        .status
        .as_ref()
        .and_then(|s| s.update_revision.as_deref())
        == Some(hash)
    {
        return Ok(());
    }
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    if api.get_opt(hash).await?.is_some() {
        return Ok(());
    }
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let existing = api.list(&ListParams::default()).await?.items;
    let revision = existing
        .iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .map(|r| r.revision)
        .max()
        .unwrap_or(0)
        + 1;
    let template = sts.spec.as_ref().map(|s| s.template.clone());
    let revision_object = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(hash.to_string()),
            namespace: Some(ns),
            labels: sts
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone()),
            owner_references: Some(vec![owner(sts)]),
            ..Default::default()
        },
        data: Some(RawExtension(
            json!({"spec": {"template": template, "$patch": "replace"}}),
        )),
        revision,
    };
    match api.create(&PostParams::default(), &revision_object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Upstream's `SuccessfulDelete` event.
fn deleted(ctx: &Context, sts: &StatefulSet, pod: &Pod) {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let set_name = sts.metadata.name.as_deref().unwrap_or_default();
    ctx.events.normal(
        sts,
        "SuccessfulDelete",
        format!("delete Pod {pod_name} in StatefulSet {set_name} successful"),
    );
}

async fn create_pod(
    ctx: &Context,
    sts: &StatefulSet,
    ordinal: i32,
    revision: &str,
) -> Result<(), kube::Error> {
    let client = &ctx.client;
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let set_name = sts.metadata.name.clone().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let pod_name = format!("{set_name}-{ordinal}");
    let meta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), revision.into());
    labels.insert(
        "statefulset.kubernetes.io/pod-name".into(),
        pod_name.clone(),
    );
    labels.insert("apps.kubernetes.io/pod-index".into(), ordinal.to_string());
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(pod_name.clone());
    if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for template in spec.volume_claim_templates.iter().flatten() {
        let template_name = template.metadata.name.clone().unwrap_or_default();
        let claim_name = format!("{template_name}-{pod_name}");
        let mut claim_labels = template.metadata.labels.clone().unwrap_or_default();
        claim_labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(claim_labels),
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        match claims.create(&PostParams::default(), &claim).await {
            Ok(_) => ctx.events.normal(
                sts,
                "SuccessfulCreate",
                format!(
                    "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                ),
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != template_name);
        volumes.push(
            serde_json::from_value::<Volume>(json!({
                "name": template_name,
                "persistentVolumeClaim": {"claimName": claim_name},
            }))
            .map_err(kube::Error::SerdeError)?,
        );
    }
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![owner(sts)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            ctx.events.normal(
                sts,
                "SuccessfulCreate",
                format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => {
            ctx.events.warning(
                sts,
                "FailedCreate",
                format!("create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
            );
            Err(e)
        }
    }
}
