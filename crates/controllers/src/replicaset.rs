//! The ReplicaSet controller: for every ReplicaSet, keep `spec.replicas` active pods made
//! from its template and owned by it (a controller ownerReference), and report counts in
//! its status.
//!
//! As upstream: creations go in slow-start batches (1, 2, 4, ...) so a broken template
//! fails fast; deletions pick unscheduled, then pending, then not-ready, then the newest
//! pods first; a ReplicaSet whose last creations or deletions the pod watch has not shown
//! yet is not acted on again ("expectations"), so it never overshoots.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use serde_json::json;

use crate::events::Recorder;
use crate::queue::{WorkQueue, Workers, drive, key, reflect};
use crate::shared::Shared;
use crate::{Error, controller_of, pod_ready, status_changed, write_status};

/// How long a ReplicaSet waits for the watch to show its own writes before acting again.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);
/// Upstream's cap on creations or deletions per sync.
const BURST: usize = 500;
const WORKERS: usize = 4;

#[derive(Default)]
struct Expectations {
    adds: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

#[derive(Clone)]
struct Context {
    client: kube::Client,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    expectations: Arc<Mutex<HashMap<String, Expectations>>>,
    queue: WorkQueue,
    events: Recorder,
}

/// The reference a ReplicaSet's pods carry.
fn owner_ref(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod that counts toward its ReplicaSet: not being deleted, not finished.
fn active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

pub async fn run(client: kube::Client, shared_pods: Shared<Pod>) -> Result<(), Error> {
    let (replicasets, rs_writer) = reflector::store();
    let pods = shared_pods.store();
    let ctx = Context {
        client: client.clone(),
        replicasets,
        pods,
        expectations: Arc::default(),
        queue: WorkQueue::gated(),
        events: Recorder::new(client.clone(), "replicaset-controller"),
    };
    let rs_events = reflect(&client, rs_writer);
    let pod_events = shared_pods
        .subscribe()
        .map(Ok::<_, std::convert::Infallible>);
    let mut workers = Workers::default();
    let worker_ctx = ctx.clone();
    workers.sync_loop(WORKERS, &ctx.queue, "replicaset", move |key| {
        let ctx = worker_ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|()| None) }
    });
    let queue = ctx.queue.clone();
    let rs_loop = rs_events.for_each(|event| {
        if let Ok(rs) = event {
            queue.add(&key(
                rs.metadata.namespace.as_deref().unwrap_or_default(),
                rs.metadata.name.as_deref().unwrap_or_default(),
            ));
        }
        futures::future::ready(())
    });
    let queue = ctx.queue.clone();
    let sets = ctx.replicasets.clone();
    let pod_loop = pod_events.for_each(|event| {
        let Ok(pod) = event;
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        match controller_of(&pod.metadata) {
            Some(owner) if owner.kind == "ReplicaSet" => queue.add(&key(ns, &owner.name)),
            Some(_) => {}
            // An orphan: the ReplicaSets that select it may adopt it.
            None if pod.metadata.deletion_timestamp.is_none() => {
                crate::adoption::queue_adopters(&queue, &sets, &*pod, |rs: &ReplicaSet| {
                    rs.spec.as_ref().map(|s| &s.selector)
                });
            }
            None => {}
        }
        futures::future::ready(())
    });
    // Syncs start once every cache has its first list; all objects are looked at
    // again every minute.
    drive(
        &ctx.queue,
        vec![
            Box::new(ctx.replicasets.clone()),
            Box::new(ctx.pods.clone()),
        ],
        ctx.replicasets.clone(),
        futures::future::join(rs_loop, pod_loop),
    )
    .await;
    Ok(())
}

async fn reconcile(ctx: &Context, key: &str) -> Result<(), kube::Error> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(rs) = ctx.replicasets.get(&ObjectRef::new(name).within(ns)) else {
        ctx.lock_expectations().remove(key);
        return Ok(());
    };
    let in_namespace: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .collect();
    let selector = rs
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mine = crate::adoption::claim(
        &pods_api,
        &owner_ref(&rs),
        rs.metadata.deletion_timestamp.is_some(),
        &selector,
        in_namespace,
    )
    .await?;
    // Wait for the watch to show what we did last time.
    {
        let mut all = ctx.lock_expectations();
        if let Some(e) = all.get_mut(key) {
            let names: HashSet<&str> = mine
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            e.adds.retain(|n| !names.contains(n.as_str()));
            e.deletes.retain(|n| {
                mine.iter().any(|p| {
                    p.metadata.name.as_deref() == Some(n) && p.metadata.deletion_timestamp.is_none()
                })
            });
            let fresh = e.since.is_some_and(|s| s.elapsed() < EXPECTATIONS_TIMEOUT);
            if fresh && (!e.adds.is_empty() || !e.deletes.is_empty()) {
                return Ok(());
            }
            all.remove(key);
        }
    }
    let active_pods: Vec<&Arc<Pod>> = mine.iter().filter(|p| active(p)).collect();
    let want = usize::try_from(rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0);
    let deleting = rs.metadata.deletion_timestamp.is_some();
    if !deleting && active_pods.len() < want {
        let missing = (want - active_pods.len()).min(BURST);
        create_pods(ctx, key, &rs, missing).await?;
    } else if !deleting && active_pods.len() > want {
        let extra = (active_pods.len() - want).min(BURST);
        delete_pods(ctx, key, &rs, &active_pods, extra).await?;
    }
    update_status(ctx, &rs, &active_pods).await
}

impl Context {
    fn lock_expectations(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectations>> {
        self.expectations.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template
        .as_ref()
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner_ref(rs)]),
            ..Default::default()
        },
        spec: template.and_then(|t| t.spec),
        status: None,
    }
}

async fn create_pods(
    ctx: &Context,
    key: &str,
    rs: &ReplicaSet,
    count: usize,
) -> Result<(), kube::Error> {
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pod = pod_from_template(rs);
    ctx.lock_expectations().insert(
        key.to_string(),
        Expectations {
            since: Some(Instant::now()),
            ..Default::default()
        },
    );
    // Slow start: 1, 2, 4, ... at a time; stop at the first failure.
    let mut remaining = count;
    let mut batch = 1;
    while remaining > 0 {
        let n = batch.min(remaining);
        let params = PostParams::default();
        let results = futures::future::join_all((0..n).map(|_| api.create(&params, &pod))).await;
        let mut failure = None;
        for result in results {
            match result {
                Ok(created) => {
                    let name = created.metadata.name.unwrap_or_default();
                    ctx.events
                        .normal(rs, "SuccessfulCreate", format!("Created pod: {name}"));
                    if let Some(e) = ctx.lock_expectations().get_mut(key) {
                        e.adds.insert(name);
                    }
                }
                Err(e) => {
                    ctx.events
                        .warning(rs, "FailedCreate", format!("Error creating: {e}"));
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        remaining -= n;
        batch *= 2;
    }
    Ok(())
}

/// Deletion order: unscheduled, pending, not ready, then newest first.
async fn delete_pods(
    ctx: &Context,
    key: &str,
    rs: &ReplicaSet,
    pods: &[&Arc<Pod>],
    count: usize,
) -> Result<(), kube::Error> {
    let mut ranked: Vec<&Arc<Pod>> = pods.to_vec();
    ranked.sort_by_key(|p| {
        let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let pending = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (
            scheduled,
            !pending,
            pod_ready(p),
            std::cmp::Reverse(created),
        )
    });
    let victims: Vec<String> = ranked
        .iter()
        .take(count)
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    ctx.lock_expectations().insert(
        key.to_string(),
        Expectations {
            deletes: victims.iter().cloned().collect(),
            since: Some(Instant::now()),
            ..Default::default()
        },
    );
    let ns = key.split_once('/').map_or("default", |(ns, _)| ns);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams::default();
    for (name, result) in victims
        .iter()
        .zip(futures::future::join_all(victims.iter().map(|name| api.delete(name, &params))).await)
    {
        match result {
            Ok(_) => ctx
                .events
                .normal(rs, "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn update_status(
    ctx: &Context,
    rs: &ReplicaSet,
    pods: &[&Arc<Pod>],
) -> Result<(), kube::Error> {
    let labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = pods
        .iter()
        .filter(|p| {
            let have = p.metadata.labels.clone().unwrap_or_default();
            labels.iter().all(|(k, v)| have.get(k) == Some(v))
        })
        .count();
    let ready_count = pods.iter().filter(|p| pod_ready(p)).count();
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready_count,
        "availableReplicas": ready_count,
        "observedGeneration": rs.metadata.generation,
    });
    let current = serde_json::to_value(rs.status.clone().unwrap_or_default()).unwrap_or_default();
    let keys = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ];
    if !status_changed(&current, &status, &keys) {
        return Ok(());
    }
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    write_status(&api, name, status).await
}
