//! The DaemonSet controller: one pod per eligible node (the node selector, required node
//! affinity and the node's NoSchedule/NoExecute taints decide, as upstream), created
//! directly on the node (`spec.nodeName` set, as the controller did before scheduling
//! DaemonSet pods moved to the scheduler), removed from nodes that stop being eligible,
//! and replaced node by node within `maxUnavailable` when the template changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use serde_json::json;

use crate::events::Recorder;
use crate::queue::{WorkQueue, Workers, drive, object_key, owner_key, reflect};
use crate::shared::Shared;
use crate::{Error, delete_pod, pod_ready, status_changed, write_status};

const WORKERS: usize = 4;
const HASH_LABEL: &str = "controller-revision-hash";
/// How long a created pod may take to show in the watch before it is made again.
const EXPECT_FOR: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Context {
    client: kube::Client,
    sets: Store<DaemonSet>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    queue: WorkQueue,
    events: Recorder,
    /// Pods created per (DaemonSet key, node) that the watch has not shown yet.
    expected: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

/// Syncs a DaemonSet when it, one of its pods, or any node changes.
pub async fn run(client: kube::Client, shared_pods: Shared<Pod>) -> Result<(), Error> {
    let (sets, set_writer) = reflector::store();
    let (nodes, node_writer) = reflector::store();
    let pods = shared_pods.store();
    let ctx = Context {
        client: client.clone(),
        sets,
        nodes,
        pods,
        queue: WorkQueue::gated(),
        events: Recorder::new(client.clone(), "daemonset-controller"),
        expected: Arc::default(),
    };
    let set_events = reflect(&client, set_writer);
    let node_events = reflect(&client, node_writer);
    let pod_events = shared_pods
        .subscribe()
        .map(Ok::<_, std::convert::Infallible>);
    let mut workers = Workers::default();
    let worker_ctx = ctx.clone();
    workers.sync_loop(WORKERS, &ctx.queue, "daemonset", move |key| {
        let ctx = worker_ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|()| None) }
    });
    let queue = ctx.queue.clone();
    let set_loop = set_events.for_each(|event| {
        if let Ok(ds) = event {
            queue.add(&object_key(&ds));
        }
        futures::future::ready(())
    });
    // Only what decides eligibility matters (not every heartbeat): labels, taints,
    // unschedulable, and the node coming or going.
    let (queue, sets, nodes) = (ctx.queue.clone(), ctx.sets.clone(), ctx.nodes.clone());
    let mut seen: HashMap<String, String> = HashMap::new();
    let node_loop = node_events.for_each(move |event| {
        if let Ok(node) = event {
            let name = node.metadata.name.clone().unwrap_or_default();
            let gone = nodes.get(&ObjectRef::new(&name)).is_none();
            let spec = node.spec.as_ref();
            let fingerprint = format!(
                "{:?}{:?}{:?}",
                node.metadata.labels,
                spec.and_then(|s| s.taints.as_ref()),
                spec.and_then(|s| s.unschedulable)
            );
            let changed = if gone {
                seen.remove(&name);
                true
            } else {
                seen.insert(name, fingerprint.clone()).as_ref() != Some(&fingerprint)
            };
            if changed {
                for ds in sets.state() {
                    queue.add(&object_key(&*ds));
                }
            }
        }
        futures::future::ready(())
    });
    let queue = ctx.queue.clone();
    let pod_loop = pod_events.for_each(|event| {
        if let Ok(pod) = event
            && let Some(key) = owner_key(&*pod, "DaemonSet")
        {
            queue.add(&key);
        }
        futures::future::ready(())
    });
    // Syncs start once every cache has its first list; all objects are looked at
    // again every minute.
    drive(
        &ctx.queue,
        vec![
            Box::new(ctx.sets.clone()),
            Box::new(ctx.nodes.clone()),
            Box::new(ctx.pods.clone()),
        ],
        ctx.sets.clone(),
        futures::future::join3(set_loop, node_loop, pod_loop),
    )
    .await;
    Ok(())
}

/// Tolerations every DaemonSet pod gets, as upstream adds them.
fn daemon_tolerations() -> Vec<Toleration> {
    [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ]
    .into_iter()
    .map(|key| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        ..Default::default()
    })
    .chain(
        [
            "node.kubernetes.io/unschedulable",
            "node.kubernetes.io/disk-pressure",
            "node.kubernetes.io/memory-pressure",
            "node.kubernetes.io/pid-pressure",
        ]
        .into_iter()
        .map(|key| Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }),
    )
    .collect()
}

fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let affinity_ok = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|r| skiff_api::selector::node_matches(r, &name, &labels));
    let mut tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let taints_ok =
        skiff_api::taints::untolerated(&taints, &tolerations, &["NoSchedule", "NoExecute"])
            .is_none();
    selector_ok && affinity_ok && taints_ok
}

fn template_hash(ds: &DaemonSet) -> String {
    let text = serde_json::to_string(&ds.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}").chars().take(10).collect()
}

async fn reconcile(ctx: &Context, key: &str) -> Result<(), kube::Error> {
    let client = &ctx.client;
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(ds) = ctx.sets.get(&ObjectRef::new(name).within(ns)) else {
        ctx.lock_expected().retain(|(k, _), _| k != key);
        return Ok(());
    };
    let nodes = ctx.nodes.state();
    let pods = ctx.pods.state();
    {
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let name = ds.metadata.name.clone().unwrap_or_default();
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let hash = template_hash(&ds);
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for pod in pods.iter().map(|p| &**p).filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && p.metadata.deletion_timestamp.is_none()
                && p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid && o.controller == Some(true))
        }) {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            by_node.entry(node).or_default().push(pod);
        }
        let spec = ds.spec.clone().unwrap_or_default();
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let on_delete = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            == Some("OnDelete");
        let eligible_nodes: Vec<&Node> = nodes
            .iter()
            .map(|n| &**n)
            .filter(|n| eligible(&ds, n))
            .collect();
        let desired = eligible_nodes.len();
        let max_unavailable = match rolling.and_then(|r| r.max_unavailable.as_ref()) {
            Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(1),
            Some(IntOrString::String(p)) => p
                .strip_suffix('%')
                .and_then(|p| p.parse::<usize>().ok())
                .map_or(1, |p| (desired * p / 100).max(1)),
            None => 1,
        };
        let mut unavailable = by_node.values().flatten().filter(|p| !pod_ready(p)).count();
        let (mut current, mut updated, mut ready_count) = (0, 0, 0);
        for node in &eligible_nodes {
            let node_name = node.metadata.name.clone().unwrap_or_default();
            let here = by_node.remove(&node_name).unwrap_or_default();
            let expected = (key.to_string(), node_name.clone());
            if !here.is_empty() {
                ctx.lock_expected().remove(&expected);
            }
            if here.is_empty() {
                let waiting = ctx
                    .lock_expected()
                    .get(&expected)
                    .is_some_and(|at| at.elapsed() < EXPECT_FOR);
                if waiting {
                    continue;
                }
                let pod = daemon_pod(&ds, &node_name, &hash);
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(created) => {
                        ctx.lock_expected().insert(expected, Instant::now());
                        let pod_name = created.metadata.name.unwrap_or_default();
                        ctx.events.normal(
                            &*ds,
                            "SuccessfulCreate",
                            format!("Created pod: {pod_name}"),
                        );
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        ctx.events
                            .warning(&*ds, "FailedCreate", format!("Error creating: {e}"));
                        return Err(e);
                    }
                }
                continue;
            }
            current += 1;
            let pod = here[0];
            let up_to_date =
                pod.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash);
            if up_to_date {
                updated += 1;
            }
            if pod_ready(pod) {
                ready_count += 1;
            }
            // Extra pods on one node go; an outdated one is replaced within the budget.
            for extra in here.iter().skip(1) {
                delete_pod(&pods_api, extra).await?;
                deleted(ctx, &ds, extra);
            }
            if !up_to_date && !on_delete && (unavailable < max_unavailable || !pod_ready(pod)) {
                delete_pod(&pods_api, pod).await?;
                deleted(ctx, &ds, pod);
                if pod_ready(pod) {
                    unavailable += 1;
                }
            }
        }
        // Nodes no longer eligible (or gone) lose their pods.
        for pods_elsewhere in by_node.values() {
            for pod in pods_elsewhere {
                delete_pod(&pods_api, pod).await?;
                deleted(ctx, &ds, pod);
            }
        }
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": 0,
            "numberReady": ready_count,
            "numberAvailable": ready_count,
            "numberUnavailable": desired.saturating_sub(ready_count),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds.metadata.generation,
        });
        let old = serde_json::to_value(ds.status.clone().unwrap_or_default()).unwrap_or_default();
        let keys = [
            "desiredNumberScheduled",
            "currentNumberScheduled",
            "numberReady",
            "updatedNumberScheduled",
            "observedGeneration",
        ];
        if status_changed(&old, &status, &keys) {
            let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
            write_status(&api, &name, status).await?;
        }
    }
    Ok(())
}

impl Context {
    fn lock_expected(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.expected.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn deleted(ctx: &Context, ds: &DaemonSet, pod: &Pod) {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    ctx.events
        .normal(ds, "SuccessfulDelete", format!("Deleted pod: {pod_name}"));
}

fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(node.into());
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .extend(daemon_tolerations());
    let name = ds.metadata.name.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name,
                uid: ds.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}
