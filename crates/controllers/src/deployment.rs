//! The Deployment controller: a Deployment owns one ReplicaSet per pod template it has
//! had; the one matching the current template ("new") is scaled up and the others
//! ("old") down, by the strategy — RollingUpdate within `maxSurge` and
//! `maxUnavailable`, or Recreate (old pods gone first) — as upstream's
//! `pkg/controller/deployment` does, so `kubectl rollout status|history|undo|pause|
//! resume|restart` work. Old ReplicaSets beyond `revisionHistoryLimit` are deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use serde_json::json;

use crate::events::Recorder;
use crate::queue::{WorkQueue, Workers, drive, key, reflect};
use crate::shared::Shared;
use crate::{Error, controller_of};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";
const WORKERS: usize = 2;

#[derive(Clone)]
struct Context {
    client: kube::Client,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    queue: WorkQueue,
    events: Recorder,
}

pub async fn run(client: kube::Client, shared_pods: Shared<Pod>) -> Result<(), Error> {
    let (deployments, d_writer) = reflector::store();
    let (replicasets, rs_writer) = reflector::store();
    let pods = shared_pods.store();
    let ctx = Context {
        client: client.clone(),
        deployments,
        replicasets,
        pods,
        queue: WorkQueue::gated(),
        events: Recorder::new(client.clone(), "deployment-controller"),
    };
    let d_events = reflect(&client, d_writer);
    let rs_events = reflect(&client, rs_writer);
    let pod_events = shared_pods
        .subscribe()
        .map(Ok::<_, std::convert::Infallible>);
    let mut workers = Workers::default();
    let worker_ctx = ctx.clone();
    workers.sync_loop(WORKERS, &ctx.queue, "deployment", move |key| {
        let ctx = worker_ctx.clone();
        async move { sync(&ctx, &key).await }
    });
    let q = ctx.queue.clone();
    let deployments = d_events.for_each(move |d| {
        if let Ok(d) = d {
            q.add(&key(
                d.metadata.namespace.as_deref().unwrap_or_default(),
                d.metadata.name.as_deref().unwrap_or_default(),
            ));
        }
        futures::future::ready(())
    });
    let (q, d_store) = (ctx.queue.clone(), ctx.deployments.clone());
    let replicasets = rs_events.for_each(move |rs| {
        if let Ok(rs) = rs {
            let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
            match controller_of(&rs.metadata) {
                Some(owner) if owner.kind == "Deployment" => q.add(&key(ns, &owner.name)),
                Some(_) => {}
                // An orphan: the Deployments that select it may adopt it.
                None if rs.metadata.deletion_timestamp.is_none() => {
                    crate::adoption::queue_adopters(&q, &d_store, &rs, |d: &Deployment| {
                        d.spec.as_ref().map(|s| &s.selector)
                    });
                }
                None => {}
            }
        }
        futures::future::ready(())
    });
    // Pods matter for Recreate (old pods must be gone) and for readiness changes.
    let q = ctx.queue.clone();
    let rs_store = ctx.replicasets.clone();
    let pods = pod_events.for_each(move |pod| {
        if let Ok(pod) = pod
            && let Some(rs) = controller_of(&pod.metadata).filter(|o| o.kind == "ReplicaSet")
        {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            if let Some(rs) = rs_store.get(&ObjectRef::new(&rs.name).within(ns))
                && let Some(owner) = controller_of(&rs.metadata).filter(|o| o.kind == "Deployment")
            {
                q.add(&key(ns, &owner.name));
            }
        }
        futures::future::ready(())
    });
    // Syncs start once every cache has its first list; all objects are looked at
    // again every minute.
    drive(
        &ctx.queue,
        vec![
            Box::new(ctx.deployments.clone()),
            Box::new(ctx.replicasets.clone()),
            Box::new(ctx.pods.clone()),
        ],
        ctx.deployments.clone(),
        futures::future::join3(deployments, replicasets, pods),
    )
    .await;
    Ok(())
}

/// upstream's `ComputeHash`: FNV-32a of the template (and collision count), spelled
/// with `SafeEncodeString`'s alphabet.
fn template_hash(template: &PodTemplateSpec, collisions: i32) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let text = serde_json::to_string(template).unwrap_or_default();
    for b in text.bytes().chain(if collisions > 0 {
        collisions.to_string().into_bytes()
    } else {
        Vec::new()
    }) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// A ReplicaSet's template without the hash label, to compare with the Deployment's.
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// An IntOrString of `total` (percentages round up for surge, down for unavailable).
fn resolve(value: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let text = match value {
        Some(IntOrString::Int(n)) => return *n,
        Some(IntOrString::String(s)) => s.clone(),
        None => default.to_string(),
    };
    match text.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(percent) => {
            let scaled = i64::from(total) * percent;
            let v = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            i32::try_from(v).unwrap_or(0)
        }
        None => text.parse().unwrap_or(0),
    }
}

/// The reference a Deployment's ReplicaSets carry.
fn owner_ref(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.metadata.name.clone().unwrap_or_default(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// One sync; `Some(delay)` to look again later (a rollout waiting on time or pods).
async fn sync(ctx: &Context, key: &str) -> Result<Option<Duration>, kube::Error> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(d) = ctx.deployments.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(None);
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let in_namespace: Vec<Arc<ReplicaSet>> = ctx
        .replicasets
        .state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns))
        .collect();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let mut owned =
        crate::adoption::claim(&rs_api, &owner_ref(&d), false, &spec.selector, in_namespace)
            .await?;
    owned.sort_by_key(|rs| revision(rs));
    let template = spec.template.clone();
    let new = owned
        .iter()
        .find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(without_hash)
                == Some(template.clone())
        })
        .cloned();
    let max_revision = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    if spec.paused == Some(true) {
        // Paused: no rollout (and no deadline); only the status is kept up to date.
        update_status(ctx, &d, &owned, new.as_deref(), replicas).await?;
        return Ok(None);
    }
    let new = match new {
        Some(rs) if revision(&rs) < max_revision => {
            // Rolled back to an older template: it becomes the newest revision.
            let patch =
                json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
            Arc::new(
                rs_api
                    .patch(
                        rs.metadata.name.as_deref().unwrap_or_default(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?,
            )
        }
        Some(rs) => rs,
        None => Arc::new(create_new(&d, &template, max_revision + 1, &rs_api).await?),
    };
    let new_name = new.metadata.name.clone().unwrap_or_default();
    let olds: Vec<&Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| rs.metadata.name.as_deref() != Some(new_name.as_str()))
        .collect();
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let mut scaled = false;
    if recreate {
        for old in olds.iter().filter(|rs| spec_replicas(rs) > 0) {
            scale(ctx, &d, &rs_api, old, 0).await?;
            scaled = true;
        }
        let old_pods = ctx.pods.state().into_iter().any(|p| {
            let terminal = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            !terminal
                && p.metadata.namespace.as_deref() == Some(ns)
                && controller_of(&p.metadata).is_some_and(|o| {
                    olds.iter()
                        .any(|rs| rs.metadata.uid.as_deref() == Some(o.uid.as_str()))
                })
        });
        if !old_pods && spec_replicas(&new) != replicas {
            scale(ctx, &d, &rs_api, &new, replicas).await?;
            scaled = true;
        }
    } else {
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let surge = resolve(
            rolling.and_then(|r| r.max_surge.as_ref()),
            replicas,
            true,
            "25%",
        );
        let mut unavailable = resolve(
            rolling.and_then(|r| r.max_unavailable.as_ref()),
            replicas,
            false,
            "25%",
        );
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        let total: i32 = owned.iter().map(|rs| spec_replicas(rs)).sum();
        // Scale the new ReplicaSet up within the surge.
        let current_new = spec_replicas(&new);
        if current_new > replicas {
            scale(ctx, &d, &rs_api, &new, replicas).await?;
            scaled = true;
        } else if current_new < replicas {
            let room = replicas + surge - total;
            let target = (current_new + room.max(0)).min(replicas);
            if target > current_new {
                scale(ctx, &d, &rs_api, &new, target).await?;
                scaled = true;
            }
        }
        // Scale old ReplicaSets down within the unavailability budget.
        let min_available = replicas - unavailable;
        let new_unavailable = (spec_replicas(&new) - available(&new)).max(0);
        let all_pods: i32 = owned.iter().map(|rs| spec_replicas(rs)).sum();
        let mut budget = all_pods - min_available - new_unavailable;
        // Unhealthy old pods go first: removing them costs no availability.
        // What this sync set, so the second pass does not start from stale counts.
        let mut set: HashMap<String, i32> = HashMap::new();
        for old in &olds {
            if budget <= 0 {
                break;
            }
            let unhealthy = (spec_replicas(old) - available(old)).max(0);
            let cut = unhealthy.min(budget);
            if cut > 0 {
                let to = spec_replicas(old) - cut;
                scale(ctx, &d, &rs_api, old, to).await?;
                set.insert(old.metadata.name.clone().unwrap_or_default(), to);
                budget -= cut;
                scaled = true;
            }
        }
        let total_available: i32 = owned.iter().map(|rs| available(rs)).sum();
        let mut budget = (total_available - min_available).max(0).min(budget.max(0));
        for old in &olds {
            let current = set
                .get(old.metadata.name.as_deref().unwrap_or_default())
                .copied()
                .unwrap_or_else(|| spec_replicas(old));
            if budget <= 0 || current == 0 {
                continue;
            }
            let cut = current.min(budget);
            scale(ctx, &d, &rs_api, old, current - cut).await?;
            budget -= cut;
            scaled = true;
        }
    }
    cleanup(&rs_api, &olds, spec.revision_history_limit.unwrap_or(10)).await?;
    let deadline = update_status(ctx, &d, &owned, Some(&new), replicas).await?;
    Ok(
        match (scaled.then_some(Duration::from_millis(500)), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    )
}

async fn create_new(
    d: &Deployment,
    template: &PodTemplateSpec,
    revision: i64,
    api: &Api<ReplicaSet>,
) -> Result<ReplicaSet, kube::Error> {
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let hash = template_hash(template, collisions);
    let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
    let mut template = template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash);
    let replicas = spec.replicas.unwrap_or(1);
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (REVISION.to_string(), revision.to_string()),
                (
                    "deployment.kubernetes.io/desired-replicas".into(),
                    replicas.to_string(),
                ),
            ])),
            owner_references: Some(vec![owner_ref(d)]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            tracing::info!(replicaset = %name, revision, "created a ReplicaSet for a new template");
            Ok(created)
        }
        // Made by an earlier sync the store has not shown yet.
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await,
        Err(e) => Err(e),
    }
}

/// Sets a ReplicaSet's replicas, with upstream's `ScalingReplicaSet` event.
async fn scale(
    ctx: &Context,
    d: &Deployment,
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    replicas: i32,
) -> Result<(), kube::Error> {
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let from = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let direction = if replicas >= from { "up" } else { "down" };
    ctx.events.normal(
        d,
        "ScalingReplicaSet",
        format!("Scaled {direction} replica set {name} from {from} to {replicas}"),
    );
    tracing::debug!(replicaset = %name, replicas, "scaled");
    Ok(())
}

/// Deletes the oldest empty old ReplicaSets beyond the history limit.
async fn cleanup(
    api: &Api<ReplicaSet>,
    olds: &[&Arc<ReplicaSet>],
    limit: i32,
) -> Result<(), kube::Error> {
    let empty: Vec<&&Arc<ReplicaSet>> = olds
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    let excess = empty
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    for rs in empty.into_iter().take(excess) {
        let name = rs.metadata.name.as_deref().unwrap_or_default();
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn update_status(
    ctx: &Context,
    d: &Deployment,
    owned: &[Arc<ReplicaSet>],
    new: Option<&ReplicaSet>,
    replicas: i32,
) -> Result<Option<Duration>, kube::Error> {
    let ns = d.metadata.namespace.as_deref().unwrap_or("default");
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let fresh = |rs: &ReplicaSet| {
        ctx.replicasets
            .get(&ObjectRef::new(rs.metadata.name.as_deref().unwrap_or_default()).within(ns))
            .map_or_else(|| rs.clone(), |r| (*r).clone())
    };
    let all: Vec<ReplicaSet> = owned.iter().map(|rs| fresh(rs)).collect();
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let total: i32 = all.iter().map(|rs| status_of(rs).replicas).sum();
    let ready: i32 = all
        .iter()
        .map(|rs| status_of(rs).ready_replicas.unwrap_or(0))
        .sum();
    let available_total: i32 = all
        .iter()
        .map(|rs| status_of(rs).available_replicas.unwrap_or(0))
        .sum();
    let updated = new.map(fresh).map_or(0, |rs| status_of(&rs).replicas);
    let spec = d.spec.clone().unwrap_or_default();
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let unavailable_budget = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        "25%",
    );
    let is_available = available_total >= replicas - unavailable_budget;
    let complete = updated == replicas && total == replicas && available_total >= replicas;
    let now = Timestamp::now().to_string();
    let previous: HashMap<String, (String, String)> = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            (
                c.type_.clone(),
                (c.status.clone(), c.reason.clone().unwrap_or_default()),
            )
        })
        .collect();
    let condition = |kind: &str, status: &str, reason: &str, message: String| {
        let unchanged = previous.get(kind) == Some(&(status.to_string(), reason.to_string()));
        let since = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.to_string())
            .filter(|_| unchanged)
            .unwrap_or_else(|| now.clone());
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastUpdateTime": now, "lastTransitionTime": since})
    };
    let new_name = new
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let available_condition = if is_available {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    // Progress is a change in the counts; without it for progressDeadlineSeconds (since
    // the Progressing condition was last updated) the rollout has timed out, as upstream.
    let old = d.status.clone().unwrap_or_default();
    let progress_made = old.replicas.unwrap_or(0) != total
        || old.updated_replicas.unwrap_or(0) != updated
        || old.ready_replicas.unwrap_or(0) != ready
        || old.available_replicas.unwrap_or(0) != available_total
        || old.observed_generation != d.metadata.generation;
    let last_progress = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Progressing"))
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0);
    let paused = spec.paused == Some(true);
    let deadline = spec
        .progress_deadline_seconds
        .filter(|_| !complete && !paused)
        .map(|s| k8s_openapi::jiff::SignedDuration::from_secs(i64::from(s)));
    // Once timed out, it stays so until the counts move again.
    let was_timed_out =
        previous.get("Progressing").map(|(_, r)| r.as_str()) == Some("ProgressDeadlineExceeded");
    let timed_out = match (deadline, last_progress) {
        (Some(deadline), Some(last)) => {
            !progress_made && (was_timed_out || Timestamp::now().duration_since(last) >= deadline)
        }
        _ => false,
    };
    // When to look again for the deadline.
    let recheck = match (deadline, last_progress) {
        (Some(deadline), Some(last)) if !timed_out && !progress_made => {
            let left = deadline - Timestamp::now().duration_since(last);
            Some(Duration::from_secs(
                u64::try_from(left.as_secs()).unwrap_or(0).max(1),
            ))
        }
        (Some(deadline), _) if !timed_out => Some(Duration::from_secs(
            u64::try_from(deadline.as_secs()).unwrap_or(0).max(1),
        )),
        _ => None,
    };
    let progressing = if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if timed_out {
        condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        )
    } else {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available_total,
        "unavailableReplicas": (replicas - available_total).max(0),
        "conditions": [available_condition, progressing],
    });
    let same = old.observed_generation == d.metadata.generation
        && old.replicas.unwrap_or(0) == total
        && old.updated_replicas.unwrap_or(0) == updated
        && old.ready_replicas.unwrap_or(0) == ready
        && old.available_replicas.unwrap_or(0) == available_total
        && previous.get("Available").map(|(s, _)| s.as_str())
            == Some(if is_available { "True" } else { "False" })
        && previous.get("Progressing").map(|(_, r)| r.as_str())
            == Some(if complete {
                "NewReplicaSetAvailable"
            } else if timed_out {
                "ProgressDeadlineExceeded"
            } else {
                "ReplicaSetUpdated"
            });
    let revision_annotation = new.map(revision).unwrap_or(0).to_string();
    let annotated = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        == Some(&revision_annotation);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    if !annotated && new.is_some() {
        // An update of the version read (upstream's verb; a conflict retries the sync).
        let mut annotated = (*d).clone();
        annotated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION.to_string(), revision_annotation);
        api.replace(name, &kube::api::PostParams::default(), &annotated)
            .await?;
    }
    if !same {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    Ok(recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve(Some(&pct("25%")), 10, true, "25%"), 3);
        assert_eq!(resolve(Some(&pct("25%")), 10, false, "25%"), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(1)), 10, false, "25%"), 1);
        assert_eq!(resolve(None, 4, false, "25%"), 1);
    }

    #[test]
    fn template_hashes_are_stable_and_change_with_the_template() {
        let t: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "a"}]}}))
            .expect("template");
        let mut u = t.clone();
        u.spec.as_mut().expect("spec").containers[0].image = Some("b".into());
        assert_eq!(template_hash(&t, 0), template_hash(&t, 0));
        assert_ne!(template_hash(&t, 0), template_hash(&u, 0));
        assert_ne!(template_hash(&t, 0), template_hash(&t, 1));
        assert!(
            template_hash(&t, 0)
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
    }
}
