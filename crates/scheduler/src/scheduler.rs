//! The scheduler's loops. Two watches (pods, nodes) keep the cache and queue; one
//! scheduling loop takes pods off the queue, decides in memory, assumes the pod on its
//! node and hands the binding to a task of its own, so API round trips overlap and never
//! hold up the next decision. A failed binding forgets the assumption and backs off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

use crate::cache::{Cache, PodInfo, holds_resources};
use crate::framework::{Decision, plugins_with, schedule_from};
use crate::preemption::{self, Preemption};
use crate::queue::Queue;
use crate::{Config, Error};

/// Everything the loops share.
#[derive(Default)]
struct State {
    cache: Cache,
    queue: Queue,
    /// Pending pods of this scheduler, latest version, by `namespace/name`.
    pending: HashMap<String, Pod>,
    /// The last unschedulable message reported per pod (reported again only on change).
    reported: HashMap<String, String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Runs the scheduler until a watch fails for good.
pub async fn run(client: kube::Client, config: Config) -> Result<(), Error> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Notify::new(),
    });
    let (events_tx, events_rx) = mpsc::channel(1024);
    tokio::spawn(record_events(client.clone(), events_rx));
    let nodes = watch_nodes(client.clone(), shared.clone());
    let pods = watch_pods(
        client.clone(),
        shared.clone(),
        config.scheduler_name.clone(),
    );
    let cycle = schedule_loop(client, shared, config, events_tx);
    tokio::select! {
        r = nodes => r,
        r = pods => r,
        () = cycle => Ok(()),
    }
}

async fn watch_nodes(client: kube::Client, shared: Arc<Shared>) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen: Vec<String> = Vec::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "node watch");
                continue;
            }
        };
        let mut state = shared.lock();
        match event {
            Event::Init => seen.clear(),
            Event::InitApply(node) => {
                seen.push(node.metadata.name.clone().unwrap_or_default());
                state.cache.set_node(&node);
            }
            Event::InitDone => {
                let gone: Vec<String> = state
                    .cache
                    .nodes
                    .keys()
                    .filter(|n| !seen.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    state.cache.remove_node(&name);
                }
                state.queue.move_unschedulable();
            }
            Event::Apply(node) => {
                state.cache.set_node(&node);
                state.queue.move_unschedulable();
            }
            Event::Delete(node) => {
                state
                    .cache
                    .remove_node(node.metadata.name.as_deref().unwrap_or_default());
            }
        }
        drop(state);
        shared.wake.notify_one();
    }
    Ok(())
}

async fn watch_pods(client: kube::Client, shared: Arc<Shared>, name: String) -> Result<(), Error> {
    let api: Api<Pod> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // Pods seen during a (re)list: those not seen are gone.
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                continue;
            }
        };
        let mut state = shared.lock();
        if let Event::InitApply(pod) = &event {
            seen.insert(key_of(pod));
        }
        match event {
            Event::Init => seen.clear(),
            Event::InitDone => {
                let gone: Vec<String> = state
                    .pending
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    state.pending.remove(&key);
                    state.queue.forget(&key);
                }
                state.cache.retain_pods(|key| seen.contains(key));
                state.queue.move_unschedulable();
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                let key = key_of(&pod);
                state.cache.set_pod(&pod);
                let ours = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or("default-scheduler")
                    == name;
                let unbound = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_none_or(str::is_empty);
                let live = pod.metadata.deletion_timestamp.is_none() && holds_resources(&pod);
                // Pods with scheduling gates wait until every gate is removed.
                let gated = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.scheduling_gates.as_ref())
                    .is_some_and(|g| !g.is_empty());
                if ours && unbound && live && !gated {
                    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                    state.queue.add(&key, priority);
                    state.pending.insert(key, pod);
                } else {
                    if state.pending.remove(&key).is_some() {
                        state.queue.forget(&key);
                        state.reported.remove(&key);
                    }
                    // A pod that stopped holding resources frees room for others.
                    if !unbound && !live {
                        state.queue.move_unschedulable();
                    }
                }
            }
            Event::Delete(pod) => {
                let key = key_of(&pod);
                state.cache.delete_pod(&key);
                state.pending.remove(&key);
                state.reported.remove(&key);
                state.queue.forget(&key);
                state.queue.move_unschedulable();
            }
        }
        drop(state);
        shared.wake.notify_one();
    }
    Ok(())
}

/// What the scheduler reports about a pod.
enum Report {
    Scheduled {
        pod: Pod,
        node: String,
    },
    Unschedulable {
        pod: Pod,
        message: String,
    },
    Preempted {
        victim: Pod,
        by_uid: String,
        node: String,
    },
}

async fn schedule_loop(
    client: kube::Client,
    shared: Arc<Shared>,
    config: Config,
    events: mpsc::Sender<Report>,
) {
    let plugins = plugins_with(config.scoring_strategy);
    let bindings = Arc::new(Semaphore::new(config.parallel_bindings.max(1)));
    let mut rotation = 0usize;
    let mut next_start = 0usize;
    loop {
        let next = {
            let mut state = shared.lock();
            let now = Instant::now();
            match state.queue.pop(now) {
                Some(key) => Ok(key),
                None => Err(state.queue.next_due()),
            }
        };
        let key = match next {
            Ok(key) => key,
            Err(due) => {
                let sleep =
                    due.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(sleep) => {}
                }
                continue;
            }
        };
        let decision = {
            let mut state = shared.lock();
            let Some(pod) = state.pending.get(&key).cloned() else {
                state.queue.forget(&key);
                continue;
            };
            if state.cache.is_placed(&key) {
                state.queue.forget(&key);
                continue;
            }
            let info = PodInfo::new(&pod);
            rotation = rotation.wrapping_add(1);
            let (decision, evaluated) =
                schedule_from(&info, &state.cache, &plugins, rotation, next_start);
            next_start = next_start.wrapping_add(evaluated);
            match decision {
                Decision::Node(node) => {
                    state.cache.assume(&info, &node);
                    state.reported.remove(&key);
                    Ok((pod, node))
                }
                Decision::Unschedulable {
                    mut message,
                    resolvable,
                } => {
                    let preempted = preemption::preempt(&info, &state.cache, &plugins, &resolvable);
                    match preempted {
                        Ok(p) => {
                            tracing::info!(pod = %key, node = %p.node, victims = p.victims.len(), "preempting");
                            state.cache.nominate_new(&info, &p.node);
                            tokio::spawn(carry_out(
                                client.clone(),
                                pod.clone(),
                                p,
                                config.scheduler_name.clone(),
                                events.clone(),
                            ));
                        }
                        Err(refusal) => {
                            message = format!("{message} {}.", refusal.message);
                            // A nomination that can no longer be honoured is dropped,
                            // so its room goes back to everyone (as upstream).
                            let nominated = pod
                                .status
                                .as_ref()
                                .and_then(|s| s.nominated_node_name.as_deref())
                                .is_some_and(|n| !n.is_empty());
                            if !refusal.keep_nomination {
                                state.cache.clear_nomination(&info);
                                if nominated {
                                    tokio::spawn(clear_nomination(client.clone(), pod.clone()));
                                }
                            }
                        }
                    }
                    state.queue.unschedulable(&key, Instant::now());
                    let changed = state.reported.get(&key) != Some(&message);
                    if changed {
                        state.reported.insert(key.clone(), message.clone());
                    }
                    Err(changed.then_some((pod, message)))
                }
            }
        };
        match decision {
            Ok((pod, node)) => {
                let Ok(permit) = bindings.clone().acquire_owned().await else {
                    return;
                };
                let (client, shared, events) = (client.clone(), shared.clone(), events.clone());
                tokio::spawn(async move {
                    let result = bind(&client, &pod, &node).await;
                    drop(permit);
                    let mut state = shared.lock();
                    match result {
                        Ok(()) => {
                            state.pending.remove(&key);
                            state.queue.forget(&key);
                            drop(state);
                            let _ = events.try_send(Report::Scheduled { pod, node });
                        }
                        Err(e) => {
                            tracing::warn!(pod = %key, %node, error = %e, "binding failed");
                            state.cache.forget(&key);
                            state.queue.backoff(&key, Instant::now());
                            drop(state);
                            shared.wake.notify_one();
                        }
                    }
                });
            }
            Err(Some((pod, message))) => {
                tracing::info!(pod = %key, %message, "unschedulable");
                let _ = events.try_send(Report::Unschedulable { pod, message });
            }
            Err(None) => {}
        }
    }
}

/// Evicts a preemption's victims: each gets a DisruptionTarget condition and a
/// `Preempted` event, then is deleted gracefully; the preemptor is nominated to the node.
async fn carry_out(
    client: kube::Client,
    preemptor: Pod,
    preemption: Preemption,
    scheduler: String,
    events: mpsc::Sender<Report>,
) {
    let params = PatchParams::default();
    let ns = preemptor.metadata.namespace.as_deref().unwrap_or("default");
    let name = preemptor.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nominate = json!({"status": {"nominatedNodeName": preemption.node}});
    if let Err(e) = api
        .patch_status(name, &params, &Patch::Merge(nominate))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "nominating");
    }
    for victim in preemption.victims {
        let api: Api<Pod> = Api::namespaced(client.clone(), &victim.namespace);
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": Timestamp::now().to_string(),
        }]}});
        if let Err(e) = api
            .patch_status(&victim.name, &params, &Patch::Strategic(condition))
            .await
        {
            tracing::debug!(pod = %victim.name, error = %e, "marking a victim");
        }
        match api
            .delete(&victim.name, &kube::api::DeleteParams::default())
            .await
        {
            Ok(_) => {
                let _ = events.try_send(Report::Preempted {
                    victim: victim.pod,
                    by_uid: preemptor.metadata.uid.clone().unwrap_or_default(),
                    node: preemption.node.clone(),
                });
            }
            Err(e) => tracing::warn!(pod = %victim.name, error = %e, "preempting"),
        }
    }
}

async fn clear_nomination(client: kube::Client, pod: Pod) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, ns);
    let patch = json!({"status": {"nominatedNodeName": null}});
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "clearing a nomination");
    }
}

async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

/// Writes events and the PodScheduled=False condition off the scheduling path; when
/// the API server falls behind, reports are dropped rather than queued without bound.
async fn record_events(client: kube::Client, mut reports: mpsc::Receiver<Report>) {
    while let Some(report) = reports.recv().await {
        let (pod, kind, reason, message) = match report {
            Report::Scheduled { pod, node } => {
                let message = format!("Successfully assigned {} to {node}", key_of(&pod));
                (pod, "Normal", "Scheduled", message)
            }
            Report::Unschedulable { pod, message } => {
                set_unschedulable(&client, &pod, &message).await;
                (pod, "Warning", "FailedScheduling", message)
            }
            Report::Preempted {
                victim,
                by_uid,
                node,
            } => {
                let message = format!("Preempted by pod {by_uid} on node {node}");
                (victim, "Normal", "Preempted", message)
            }
        };
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = Time(Timestamp::now());
        let event = CoreEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(kind.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("default-scheduler".into()),
                host: None,
            }),
            reporting_component: Some("default-scheduler".into()),
            ..Default::default()
        };
        let api: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %e, "recording an event");
        }
    }
}

/// `PodScheduled=False, reason Unschedulable` with the message, as upstream sets it.
async fn set_unschedulable(client: &kube::Client, pod: &Pod, message: &str) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    let params = PatchParams::default();
    if let Err(e) = api
        .patch_status(name, &params, &Patch::Strategic(patch))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "setting PodScheduled=False");
    }
}
