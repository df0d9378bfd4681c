//! The pod workers. A watch on the pods bound to this node feeds one worker per pod
//! (by uid); each worker is a loop over a small state machine, woken by changes to its
//! pod and by a resync tick:
//!
//! - running: a ready sandbox (a new one, attempt + 1, when it is gone or not ready),
//!   init containers one at a time in order (sidecars, `restartPolicy: Always`, started
//!   and left running), then the containers; exited ones restart as the pod's
//!   restartPolicy says, after upstream's back-off (10 s doubling to 5 min, reset after
//!   10 min of running), waiting as `CrashLoopBackOff` meanwhile; status patched when it
//!   changed;
//! - finished (Succeeded or Failed): the sandbox stops, containers stay for their logs;
//! - terminating (`deletionTimestamp` set): every container stopped with the grace
//!   period, the sandbox stopped, the final status posted, then the pod deleted with
//!   grace 0 (uid precondition) and its sandboxes removed;
//! - gone from the API: everything of it removed.
//!
//! Static pods (`static_pods.rs`) get workers too, fed from their manifests with the
//! status of their mirror pods; their status goes to the mirror.
//!
//! At start, once the first list is in, sandboxes of pods neither the API nor the
//! manifests have are removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cri::Runtime;
use crate::spec::{self, CONTAINER_NAME, POD_UID};
use crate::{Config, Error};
use start::{restart_container, start_container};

mod handlers;
mod probe;
mod start;

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long starts its back-off afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The reason of a pod the kubelet evicted (or refused under pressure).
const EVICTED: &str = "Evicted";
/// How long a static pod's name stays free after its mirror pod went.
const MIRROR_HOLD: Duration = Duration::from_secs(2);
/// How often ConfigMap, Secret and downward API volumes are rewritten.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

struct Ctx {
    client: kube::Client,
    config: Config,
    runtime: Runtime,
    host_ip: String,
    runtime_name: String,
    node_uid: String,
    /// Static pod uid -> the uid of its mirror pod in the API.
    mirror_uids: std::sync::Mutex<HashMap<String, String>>,
    pressure: Arc<crate::eviction::Pressure>,
    /// Pods the kubelet ended itself (evicted, refused, past their deadline), by uid:
    /// the reason and message their status gets.
    evicted: std::sync::Mutex<HashMap<String, (String, String)>>,
    /// Unused images, collected when the image filesystem fills.
    images: crate::gc::ImageGc,
}

impl Ctx {
    fn evicted(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        self.evicted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mirror_uids(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.mirror_uids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Manager {
    ctx: Arc<Ctx>,
    known: Known,
}

impl Manager {
    pub fn new(
        client: kube::Client,
        config: Config,
        runtime: Runtime,
        host_ip: std::net::IpAddr,
        runtime_name: String,
        node_uid: String,
        pressure: Arc<crate::eviction::Pressure>,
    ) -> Manager {
        Manager {
            ctx: Arc::new(Ctx {
                images: crate::gc::ImageGc::new(runtime.clone(), config.image_gc.clone()),
                client,
                config,
                runtime,
                host_ip: host_ip.to_string(),
                runtime_name,
                node_uid,
                mirror_uids: Default::default(),
                pressure,
                evicted: Default::default(),
            }),
            known: Known::default(),
        }
    }

    /// The pods this manager runs, kept current while it runs.
    pub fn known(&self) -> Known {
        self.known.clone()
    }

    pub async fn run(self) -> Result<(), Error> {
        tokio::spawn(evict(self.ctx.clone(), self.known.clone()));
        {
            let ctx = self.ctx.clone();
            tokio::spawn(async move { ctx.images.run().await });
        }
        let pods: Api<Pod> = Api::all(self.ctx.client.clone());
        let node = self.ctx.config.node_name.clone();
        let selector = format!("spec.nodeName={node}");
        let mut events =
            std::pin::pin!(watcher(pods, watcher::Config::default().fields(&selector)));
        let mut workers = Workers(HashMap::new(), self.known.clone());
        let mut listed: HashSet<String> = HashSet::new();
        let mut cleaned = false;
        // The pod list has been read once; the static pod directory has been read once.
        let (mut listed_once, mut statics_read) = (false, false);
        // Static pods by uid, and the API's mirror pods by namespace and name.
        let static_dir = self.ctx.config.static_pod_path.clone();
        let mut warned = HashSet::new();
        let mut statics: HashMap<String, Pod> = HashMap::new();
        let mut mirrors: HashMap<(String, String), Pod> = HashMap::new();
        // When each mirror last went: a new one waits a little, so a client waiting for
        // the old one to go (kubectl delete) sees it gone before the name is taken again.
        let mut gone: HashMap<(String, String), Instant> = HashMap::new();
        let mut tick = tokio::time::interval(self.ctx.config.file_check_frequency);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut mirrors_changed = false;
            tokio::select! {
                event = events.try_next() => {
                    let event = match event {
                        Ok(Some(event)) => event,
                        Ok(None) => return Err(Error::Config("the pod watch ended".into())),
                        Err(e) => {
                            tracing::warn!(error = %e, "watching pods; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    match event {
                        watcher::Event::Init => {
                            listed.clear();
                            mirrors.clear();
                        }
                        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                            if let Some(hash) = crate::static_pods::mirror_of(&pod) {
                                if let Some(own) = statics.get(hash) {
                                    self.ctx.mirror_uids().insert(hash.to_string(), pod.metadata.uid.clone().unwrap_or_default());
                                    workers.feed(&self.ctx, hash, with_status(own, &pod));
                                }
                                mirrors.insert(key(&pod), pod);
                                mirrors_changed = true;
                            } else if let Some(uid) = pod.metadata.uid.clone() {
                                listed.insert(uid.clone());
                                workers.feed(&self.ctx, &uid, pod);
                            }
                        }
                        watcher::Event::Delete(pod) => {
                            if let Some(hash) = crate::static_pods::mirror_of(&pod) {
                                let mut uids = self.ctx.mirror_uids();
                                if uids.get(hash) == pod.metadata.uid.as_ref() {
                                    uids.remove(hash);
                                }
                                drop(uids);
                                mirrors.remove(&key(&pod));
                                gone.insert(key(&pod), Instant::now());
                                mirrors_changed = true;
                            } else if let Some(uid) = pod.metadata.uid {
                                workers.end(&uid);
                            }
                        }
                        watcher::Event::InitDone => {
                            // Pods that went while the watch was down.
                            let gone: Vec<String> = workers
                                .0
                                .keys()
                                .filter(|uid| !listed.contains(*uid) && !statics.contains_key(*uid))
                                .cloned()
                                .collect();
                            for uid in gone {
                                workers.end(&uid);
                            }
                            mirrors_changed = true;
                            listed_once = true;
                            // Orphans once the API's pods and the static ones are known.
                            if !cleaned && (static_dir.is_none() || statics_read) {
                                cleaned = true;
                                spawn_remove_orphans(&self.ctx, &listed, &statics);
                            }
                        }
                    }
                }
                _ = tick.tick(), if static_dir.is_some() => {
                    let dir = static_dir.as_deref().unwrap_or(std::path::Path::new(""));
                    let Some(now) = crate::static_pods::read(dir, &node, &mut warned) else {
                        continue;
                    };
                    for (uid, pod) in statics.iter().filter(|(uid, _)| !now.contains_key(*uid)) {
                        tracing::info!(pod = %name(pod), pod_uid = %uid, "static pod manifest gone; stopping the pod");
                        workers.terminate(uid, pod);
                    }
                    for (uid, pod) in now.iter().filter(|(uid, _)| !statics.contains_key(*uid)) {
                        tracing::info!(pod = %name(pod), pod_uid = %uid, "static pod from manifest");
                        let mirror = mirrors.get(&key(pod)).filter(|m| crate::static_pods::mirror_of(m) == Some(uid.as_str()));
                        let fed = match mirror {
                            Some(mirror) => with_status(pod, mirror),
                            None => pod.clone(),
                        };
                        workers.feed(&self.ctx, uid, fed);
                    }
                    statics = now;
                    statics_read = true;
                    if !cleaned && listed_once {
                        cleaned = true;
                        spawn_remove_orphans(&self.ctx, &listed, &statics);
                    }
                    // A mirror deleted by hand, or one that never got made, is made again.
                    mirrors_changed = !statics.is_empty() || !mirrors.is_empty();
                }
            }
            if mirrors_changed && cleaned {
                let (client, ctx) = (self.ctx.client.clone(), self.ctx.clone());
                gone.retain(|_, at| at.elapsed() < MIRROR_HOLD);
                let held: HashSet<(String, String)> = gone.keys().cloned().collect();
                let (statics, mirrors) = (statics.clone(), mirrors.clone());
                tokio::spawn(async move {
                    crate::static_pods::reconcile(
                        &client,
                        &ctx.config.node_name,
                        &ctx.node_uid,
                        &statics,
                        &mirrors,
                        &held,
                    )
                    .await;
                });
            }
        }
    }
}

/// The eviction loop: observes the node's signals every interval and, while a hard
/// threshold is met, evicts one pod per round (its worker then stops it).
async fn evict(ctx: Arc<Ctx>, known: Known) {
    let samples = crate::stats::NodeSamples::default();
    let config = &ctx.config;
    loop {
        tokio::time::sleep(config.eviction_interval).await;
        if config.eviction_hard.is_empty() {
            continue;
        }
        let summary = match crate::stats::summary(
            &ctx.runtime,
            &config.node_name,
            &config.root_dir,
            &config.pod_log_dir,
            &samples,
        )
        .await
        {
            Ok(summary) => summary,
            Err(e) => {
                tracing::debug!(error = %e.message(), "eviction: no stats this round");
                continue;
            }
        };
        let met = crate::eviction::met(&summary, &config.eviction_hard);
        crate::eviction::record(&ctx.pressure, &met);
        let Some((threshold, available, capacity)) = met.first() else {
            continue;
        };
        // Disk: unused images go before any pod does (node-level reclaim); the next
        // round observes again.
        if met.iter().any(|(t, _, _)| !t.signal.memory()) {
            let freed = ctx.images.delete_unused().await;
            if freed > 0 {
                tracing::info!(
                    freed,
                    signal = threshold.signal.name(),
                    "reclaimed disk from unused images"
                );
                continue;
            }
        }
        let pods: Vec<Pod> = known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|p| {
                !ctx.evicted()
                    .contains_key(p.metadata.uid.as_deref().unwrap_or_default())
            })
            .cloned()
            .collect();
        if let Some((pod, message)) =
            crate::eviction::choose(&summary, &pods, threshold, *available, *capacity)
        {
            tracing::warn!(pod = %name(pod), signal = threshold.signal.name(), %message, "evicting a pod");
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            ctx.evicted().insert(uid, (EVICTED.into(), message));
        }
    }
}

/// The pod as its worker must treat it: one the kubelet evicted or refused is Failed
/// with reason `Evicted` (and a DisruptionTarget condition), whatever the API says yet.
fn as_evicted(ctx: &Ctx, pod: Pod) -> Pod {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some((reason, message)) = ctx.evicted().get(&uid).cloned() else {
        return pod;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return pod;
    }
    let mut status = serde_json::to_value(&pod.status).unwrap_or(Value::Null);
    if !status.is_object() {
        status = json!({});
    }
    status["phase"] = json!("Failed");
    status["reason"] = json!(reason);
    status["message"] = json!(message);
    if reason == EVICTED {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        conditions.retain(|c| c["type"] != "DisruptionTarget");
        conditions.push(json!({
            "type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
            "message": message, "lastTransitionTime": now,
        }));
        status["conditions"] = json!(conditions);
    }
    let mut pod = pod;
    pod.status = serde_json::from_value(status).ok();
    pod
}

/// Admission under node pressure: a pod not started yet that the node cannot take now
/// is refused (Failed, `Evicted`), as upstream's eviction admit handler does.
async fn admit(ctx: &Ctx, pod: Pod) -> Pod {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let started = pod.status.as_ref().and_then(|s| s.start_time.as_ref());
    // activeDeadlineSeconds counts from the pod's start on the node.
    let deadline = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    if let (Some(started), Some(deadline)) = (started, deadline) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let active = now.as_second() - started.0.as_second();
        if active >= deadline && !ctx.evicted().contains_key(&uid) {
            tracing::info!(pod = %name(&pod), deadline, "pod past its activeDeadlineSeconds");
            ctx.evicted().insert(
                uid.clone(),
                (
                    "DeadlineExceeded".into(),
                    "Pod was active on the node longer than the specified deadline".into(),
                ),
            );
        }
    }
    if started.is_some() || ctx.evicted().contains_key(&uid) {
        return as_evicted(ctx, pod);
    }
    if let Some(message) = crate::eviction::refuse(&pod, &ctx.pressure) {
        let fresh = ctx
            .runtime
            .sandboxes_of(&uid)
            .await
            .is_ok_and(|s| s.is_empty());
        if fresh {
            tracing::warn!(pod = %name(&pod), %message, "refusing a pod under node pressure");
            ctx.evicted().insert(uid, (EVICTED.into(), message));
        }
    }
    as_evicted(ctx, pod)
}

/// The pods this kubelet runs, by uid, as it last saw them (the kubelet API's `/pods`).
pub type Known = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Pod>>>;

/// One worker per pod uid, fed the pod as it changes (`None`: it is gone).
#[derive(Default)]
struct Workers(HashMap<String, watch::Sender<Option<Pod>>>, Known);

impl Workers {
    fn known(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Pod>> {
        self.1.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn feed(&mut self, ctx: &Arc<Ctx>, uid: &str, pod: Pod) {
        self.0.retain(|_, tx| !tx.is_closed());
        self.known().insert(uid.to_string(), pod.clone());
        match self.0.get(uid) {
            Some(tx) => {
                let _ = tx.send(Some(pod));
            }
            None => {
                let (tx, rx) = watch::channel(Some(pod));
                tokio::spawn(worker(ctx.clone(), uid.to_string(), rx));
                self.0.insert(uid.to_string(), tx);
            }
        }
    }

    /// Stops a static pod whose manifest is gone as a deleted pod stops: preStop
    /// hooks, the grace period, a final status; its worker then ends.
    fn terminate(&mut self, uid: &str, pod: &Pod) {
        self.known().remove(uid);
        let mut ending = pod.clone();
        let now = k8s_openapi::jiff::Timestamp::now();
        ending.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        ending.metadata.deletion_grace_period_seconds = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        if let Some(tx) = self.0.get(uid) {
            let _ = tx.send(Some(ending));
        }
    }

    fn end(&mut self, uid: &str) {
        self.known().remove(uid);
        if let Some(tx) = self.0.remove(uid) {
            let _ = tx.send(None);
        }
    }
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// A static pod as its worker sees it: its manifest, with its mirror's status.
fn with_status(pod: &Pod, mirror: &Pod) -> Pod {
    let mut pod = pod.clone();
    if mirror.status.is_some() {
        pod.status = mirror.status.clone();
    }
    pod
}

/// Removes, in the background, what belongs to none of the listed and static pods.
fn spawn_remove_orphans(ctx: &Arc<Ctx>, listed: &HashSet<String>, statics: &HashMap<String, Pod>) {
    let ctx = ctx.clone();
    let mut wanted = listed.clone();
    wanted.extend(statics.keys().cloned());
    let listed_at = std::time::SystemTime::now();
    tokio::spawn(async move { remove_orphans(&ctx, &wanted, listed_at).await });
}

/// Removes the sandboxes (and so the containers) of pods the API does not have.
async fn remove_orphans(ctx: &Ctx, wanted: &HashSet<String>, listed_at: std::time::SystemTime) {
    let Ok(sandboxes) = ctx.runtime.all_sandboxes().await else {
        return;
    };
    for sandbox in sandboxes {
        let Some(uid) = sandbox.labels.get(POD_UID) else {
            continue;
        };
        if !wanted.contains(uid) {
            tracing::info!(sandbox = %sandbox.id, pod_uid = %uid, "removing the sandbox of a pod the API does not have");
            let _ = ctx.runtime.stop_sandbox(&sandbox.id).await;
            let _ = ctx.runtime.remove_sandbox(&sandbox.id).await;
        }
    }
    // Volumes and logs after the sandboxes; a pod that came meanwhile is not an orphan.
    crate::volumes::remove_orphans(&ctx.config.root_dir, wanted, listed_at);
    crate::gc::remove_pod_logs(
        &ctx.config.pod_log_dir,
        &|uid| wanted.contains(uid),
        Some(listed_at),
    );
}

/// Where a pod's containers go: its sandbox, the sandbox's config, its address.
pub(super) struct Placement<'a> {
    sandbox: &'a str,
    config: &'a cri::PodSandboxConfig,
    pod_ip: &'a str,
}

/// A container's restart back-off (flowcontrol.Backoff).
struct Backoff {
    delay: Duration,
    updated: Instant,
}

#[derive(Default)]
struct Worker {
    backoff: HashMap<String, Backoff>,
    /// Image pulls that failed: when, and how long to wait.
    pulls: HashMap<String, Backoff>,
    waiting: HashMap<String, (String, String)>,
    prober: probe::Prober,
    posted: Option<Value>,
    deleted: bool,
    /// A finished pod's sandbox has been stopped.
    stopped: bool,
    /// The pod's volumes on the node, and when they were last set up or refreshed.
    prepared: crate::volumes::Prepared,
    volumes_at: Option<Instant>,
}

async fn worker(ctx: Arc<Ctx>, uid: String, mut rx: watch::Receiver<Option<Pod>>) {
    let mut state = Worker::default();
    let mut errors = 0u32;
    loop {
        let pod = rx.borrow_and_update().clone();
        let Some(pod) = pod else {
            teardown(&ctx, &uid).await;
            ctx.evicted().remove(&uid);
            return;
        };
        let result = if pod.metadata.deletion_timestamp.is_some() {
            let result = terminate(&ctx, &mut state, &pod).await;
            if state.deleted && is_static(&pod) {
                return;
            }
            result
        } else {
            let pod = admit(&ctx, pod.clone()).await;
            sync(&ctx, &mut state, &pod).await
        };
        // Errors back off (doubling to 10 s); finished pods are looked at rarely.
        let mut pause = ctx.config.pod_resync;
        if let Err(e) = result {
            tracing::warn!(pod = %name(&pod), error = %e, "pod sync failed; retrying");
            errors = (errors + 1).min(4);
            pause = (pause * 2u32.pow(errors)).min(Duration::from_secs(10));
        } else {
            errors = 0;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) && state.stopped {
            pause = Duration::from_secs(60);
        }
        tokio::select! {
            // Closed: the kubelet is stopping; the pod keeps running.
            changed = rx.changed() => if changed.is_err() {
                return;
            },
            () = tokio::time::sleep(pause) => {}
        }
    }
}

fn name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

type Failure = String;

/// The pod's sandboxes, newest first.
async fn sandboxes(ctx: &Ctx, uid: &str) -> Result<Vec<cri::PodSandbox>, Failure> {
    let mut sandboxes = ctx
        .runtime
        .sandboxes_of(uid)
        .await
        .map_err(|e| format!("listing sandboxes: {}", e.message()))?;
    sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    Ok(sandboxes)
}

/// The runtime containers of a sandbox by container name, newest first.
async fn containers(
    ctx: &Ctx,
    sandbox: &str,
) -> Result<HashMap<String, Vec<cri::ContainerStatus>>, Failure> {
    let mut by_name: HashMap<String, Vec<cri::ContainerStatus>> = HashMap::new();
    for status in ctx
        .runtime
        .containers_of(sandbox)
        .await
        .map_err(|e| format!("listing containers: {}", e.message()))?
    {
        let name = status
            .labels
            .get(CONTAINER_NAME)
            .cloned()
            .or_else(|| status.metadata.as_ref().map(|m| m.name.clone()))
            .unwrap_or_default();
        by_name.entry(name).or_default().push(status);
    }
    for list in by_name.values_mut() {
        list.sort_by_key(|s| {
            std::cmp::Reverse((s.metadata.as_ref().map_or(0, |m| m.attempt), s.created_at))
        });
    }
    Ok(by_name)
}

fn is_running(status: &cri::ContainerStatus) -> bool {
    status.state == cri::ContainerState::ContainerRunning as i32
        || status.state == cri::ContainerState::ContainerCreated as i32
}

fn exited(status: &cri::ContainerStatus) -> bool {
    status.state == cri::ContainerState::ContainerExited as i32
}

async fn sync(ctx: &Ctx, state: &mut Worker, pod: &Pod) -> Result<(), Failure> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api_phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let finished = api_phase == "Succeeded" || api_phase == "Failed";
    let sandboxes = sandboxes(ctx, &uid).await?;
    let ready = sandboxes
        .first()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .cloned();
    let sandbox = match (ready, finished) {
        (Some(sandbox), false) => Some(sandbox),
        (_, true) => {
            // Nothing runs again: stop what is left, keep the containers' logs.
            for sandbox in &sandboxes {
                if sandbox.state == cri::PodSandboxState::SandboxReady as i32 {
                    stop_all(ctx, &sandbox.id, 0).await;
                    let _ = ctx.runtime.stop_sandbox(&sandbox.id).await;
                }
            }
            state.stopped = true;
            return post_status(ctx, state, pod, sandboxes.first(), false).await;
        }
        (None, false) => {
            // A new sandbox: whatever ran in the old ones is stopped first, with the
            // pod's grace period.
            let grace = grace_period(pod);
            let mut ran = false;
            for old in &sandboxes {
                ran |= ctx
                    .runtime
                    .containers_of(&old.id)
                    .await
                    .is_ok_and(|c| !c.is_empty());
                stop_all(ctx, &old.id, grace).await;
                let _ = ctx.runtime.stop_sandbox(&old.id).await;
            }
            // A pod that must not restart, whose containers already ran, ends with
            // what they did instead of running again (upstream's rule).
            let never =
                pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never");
            if never && ran {
                state.stopped = true;
                return post_status(ctx, state, pod, sandboxes.first(), true).await;
            }
            let attempt = sandboxes
                .first()
                .and_then(|s| s.metadata.as_ref())
                .map_or(0, |m| m.attempt + 1);
            let config = sandbox_config(ctx, pod, attempt);
            if let Err(e) = std::fs::create_dir_all(&config.log_directory) {
                return Err(format!("creating {}: {e}", config.log_directory));
            }
            match ctx.runtime.run_sandbox(config).await {
                Ok(id) => {
                    tracing::info!(pod = %name(pod), sandbox = %id, attempt, "sandbox running");
                    for old in &sandboxes {
                        let _ = ctx.runtime.remove_sandbox(&old.id).await;
                    }
                    sandboxes_of_new(ctx, &uid, &id).await
                }
                Err(e) => {
                    post_status(ctx, state, pod, None, false).await?;
                    return Err(format!("creating the pod sandbox: {}", e.message()));
                }
            }
        }
    };
    let Some(sandbox) = sandbox else {
        return post_status(ctx, state, pod, None, false).await;
    };
    let sandbox_config =
        sandbox_config(ctx, pod, sandbox.metadata.as_ref().map_or(0, |m| m.attempt));
    let pod_ip = pod_ip(ctx, pod, &sandbox.id).await;
    let spec = pod.spec.clone().unwrap_or_default();
    let at = Placement {
        sandbox: &sandbox.id,
        config: &sandbox_config,
        pod_ip: &pod_ip,
    };
    let mut running = containers(ctx, &sandbox.id).await?;
    // Created but never started (an interrupted start), or unknown: removed, and the
    // next attempt starts in its place.
    let mut next_attempt: HashMap<String, u32> = HashMap::new();
    for (name, history) in running.iter_mut() {
        let Some(newest) = history.first() else {
            continue;
        };
        let stuck = newest.state == cri::ContainerState::ContainerCreated as i32
            || newest.state == cri::ContainerState::ContainerUnknown as i32;
        if stuck {
            let _ = ctx.runtime.stop_container(&newest.id, 0).await;
            if ctx.runtime.remove_container(&newest.id).await.is_ok() {
                next_attempt.insert(
                    name.clone(),
                    newest.metadata.as_ref().map_or(0, |m| m.attempt + 1),
                );
                history.remove(0);
            }
        }
    }
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    // Volumes first (refreshed every 10 s: ConfigMap and Secret updates reach running
    // containers); nothing starts before they are there.
    if state
        .volumes_at
        .is_none_or(|at| at.elapsed() >= VOLUME_REFRESH)
    {
        match crate::volumes::prepare(&ctx.client, &ctx.config.root_dir, pod).await {
            Ok(prepared) => {
                state.prepared = prepared;
                state.volumes_at = Some(Instant::now());
            }
            Err(message) if state.volumes_at.is_none() => {
                post_status(ctx, state, pod, Some(&sandbox), false).await?;
                return Err(message);
            }
            Err(message) => {
                tracing::warn!(pod = %name(pod), %message, "refreshing volumes");
                state.volumes_at = Some(Instant::now());
            }
        }
    }
    let mut proceed = true;
    // Containers killed this round (not probed again).
    let mut killed = HashSet::new();
    for init in spec.init_containers.iter().flatten() {
        let sidecar = init.restart_policy.as_deref() == Some("Always");
        let history = running
            .get(&init.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match history.first() {
            Some(newest) if newest.state == cri::ContainerState::ContainerRunning as i32 => {
                if !sidecar {
                    proceed = false;
                    break;
                }
            }
            Some(newest) if exited(newest) && newest.exit_code == 0 && !sidecar => {}
            Some(newest) if exited(newest) => {
                let restart = sidecar || policy != "Never";
                if restart {
                    restart_container(ctx, state, pod, &at, init, newest).await;
                }
                if !sidecar {
                    proceed = false;
                    break;
                }
            }
            _ => {
                let attempt = first_attempt(&next_attempt, &sandbox_config, init);
                start_container(ctx, state, pod, &at, init, attempt).await;
                if !sidecar {
                    proceed = false;
                    break;
                }
            }
        }
    }
    if proceed {
        for container in &spec.containers {
            let history = running
                .get(&container.name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            match history.first() {
                None => {
                    let attempt = first_attempt(&next_attempt, &sandbox_config, container);
                    start_container(ctx, state, pod, &at, container, attempt).await;
                }
                Some(newest) if exited(newest) => {
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => newest.exit_code != 0,
                        _ => true,
                    };
                    if restart {
                        restart_container(ctx, state, pod, &at, container, newest).await;
                    }
                }
                // The spec changed (a new image): restarted whatever the restart policy.
                Some(newest) if is_running(newest) && changed(newest, container) => {
                    tracing::info!(pod = %name(pod), container = %container.name, "Container {} definition changed, will be restarted", container.name);
                    let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
                    kill_container(ctx, pod, container, &newest.id, grace, &pod_ip).await;
                    killed.insert(newest.id.clone());
                    let attempt = newest.metadata.as_ref().map_or(0, |m| m.attempt + 1);
                    start_container(ctx, state, pod, &at, container, attempt).await;
                }
                Some(_) => {}
            }
        }
    }
    // Probes of what was running when this round began.
    let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for container in all {
        let Some(newest) = running.get(&container.name).and_then(|h| h.first()) else {
            state.prober.forget(&container.name);
            continue;
        };
        if newest.state != cri::ContainerState::ContainerRunning as i32
            || killed.contains(&newest.id)
        {
            continue;
        }
        if let probe::Verdict::Kill(message) = state
            .prober
            .probe(&ctx.runtime, container, newest, &pod_ip)
            .await
        {
            tracing::info!(pod = %name(pod), container = %container.name, %message, "killing the container");
            let grace = [&container.liveness_probe, &container.startup_probe]
                .into_iter()
                .flatten()
                .find_map(|p| p.termination_grace_period_seconds)
                .unwrap_or(grace);
            kill_container(ctx, pod, container, &newest.id, grace, &pod_ip).await;
        }
    }
    // Older dead containers: the newest two of each name are all status needs.
    for history in running.values() {
        for old in history.iter().skip(2).filter(|s| exited(s)) {
            if ctx.runtime.remove_container(&old.id).await.is_ok() && !old.log_path.is_empty() {
                let _ = std::fs::remove_file(&old.log_path);
            }
        }
    }
    post_status(ctx, state, pod, Some(&sandbox), false).await
}

/// The attempt of a container with no instance in its sandbox: after a removed stuck
/// one, the next; else one past its logs (a recreated sandbox keeps the count).
fn first_attempt(
    next: &HashMap<String, u32>,
    sandbox: &cri::PodSandboxConfig,
    container: &k8s_openapi::api::core::v1::Container,
) -> u32 {
    next.get(&container.name).copied().unwrap_or_else(|| {
        crate::gc::restart_count_from_logs(
            &std::path::Path::new(&sandbox.log_directory).join(&container.name),
        )
    })
}

/// The pod's address: its sandbox's, or the node's on the host network.
async fn pod_ip(ctx: &Ctx, pod: &Pod, sandbox: &str) -> String {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        ctx.host_ip.clone()
    } else {
        ctx.runtime.sandbox_ip(sandbox).await.unwrap_or_default()
    }
}

/// The sandbox just made, as the list reports it.
async fn sandboxes_of_new(ctx: &Ctx, uid: &str, id: &str) -> Option<cri::PodSandbox> {
    sandboxes(ctx, uid)
        .await
        .ok()?
        .into_iter()
        .find(|s| s.id == id)
}

fn sandbox_config(ctx: &Ctx, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    spec::sandbox(
        pod,
        attempt,
        &ctx.config.pod_log_dir,
        &ctx.config.cluster_dns,
        &ctx.config.cluster_domain,
    )
}

/// Stops every running container of a sandbox, `grace` seconds each, all at once.
async fn stop_all(ctx: &Ctx, sandbox: &str, grace: i64) {
    let Ok(statuses) = ctx.runtime.containers_of(sandbox).await else {
        return;
    };
    let stops = statuses
        .iter()
        .filter(|s| is_running(s))
        .map(|s| ctx.runtime.stop_container(&s.id, grace));
    for result in futures::future::join_all(stops).await {
        if let Err(e) = result {
            tracing::warn!(error = %e.message(), "stopping a container");
        }
    }
}

/// Every running container's preStop hook, all at once, each bounded by `grace`.
async fn run_pre_stop(ctx: &Ctx, pod: &Pod, sandbox: &str, grace: i64) {
    let Ok(running) = containers(ctx, sandbox).await else {
        return;
    };
    let pod_ip = pod_ip(ctx, pod, sandbox).await;
    let timeout = Duration::from_secs(u64::try_from(grace.max(0)).unwrap_or(0));
    let spec = pod.spec.clone().unwrap_or_default();
    let hooks = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter_map(|container| {
            let handler = container.lifecycle.as_ref()?.pre_stop.as_ref()?;
            let newest = running.get(&container.name)?.first()?;
            (newest.state == cri::ContainerState::ContainerRunning as i32)
                .then(|| (container, handler, newest.id.clone()))
        })
        .map(|(container, handler, id)| {
            let pod_ip = pod_ip.clone();
            async move {
                if let Err(message) =
                    probe::hook(&ctx.runtime, container, &id, &pod_ip, handler, timeout).await
                {
                    tracing::warn!(pod = %name(pod), container = %container.name, %message, "preStop hook failed");
                }
            }
        });
    futures::future::join_all(hooks).await;
}

/// Whether a running container was made from another spec than the pod's now.
fn changed(
    status: &cri::ContainerStatus,
    container: &k8s_openapi::api::core::v1::Container,
) -> bool {
    status
        .annotations
        .get(spec::CONTAINER_HASH)
        .is_some_and(|hash| *hash != spec::container_hash(container))
}

/// Kills one container as upstream's killContainer: its preStop hook first, using up
/// the grace period, then SIGTERM and, after what is left, SIGKILL.
async fn kill_container(
    ctx: &Ctx,
    pod: &Pod,
    container: &k8s_openapi::api::core::v1::Container,
    id: &str,
    grace: i64,
    pod_ip: &str,
) {
    let grace = match container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        Some(handler) => {
            let started = Instant::now();
            let timeout = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
            if let Err(message) =
                probe::hook(&ctx.runtime, container, id, pod_ip, handler, timeout).await
            {
                tracing::warn!(pod = %name(pod), container = %container.name, %message, "preStop hook failed");
            }
            left_after(grace, started)
        }
        None => grace,
    };
    if let Err(e) = ctx.runtime.stop_container(id, grace).await {
        tracing::warn!(pod = %name(pod), container = %container.name, error = %e.message(), "stopping a container");
    }
}

/// What is left of a grace period after preStop hooks that began at `started` (upstream
/// gives the stop at least 2 s more).
fn left_after(grace: i64, started: Instant) -> i64 {
    let left = grace - i64::try_from(started.elapsed().as_secs()).unwrap_or(0);
    left.max(if grace > 0 { 2 } else { 0 })
}

/// Graceful termination: stop everything within the grace period, post the final
/// status, delete the pod for good, remove its sandboxes.
async fn terminate(ctx: &Ctx, state: &mut Worker, pod: &Pod) -> Result<(), Failure> {
    if state.deleted {
        return Ok(());
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0);
    let sandboxes = sandboxes(ctx, &uid).await?;
    // preStop hooks first, within the grace period, which they use up as they run.
    let started = Instant::now();
    if let Some(sandbox) = sandboxes.first() {
        run_pre_stop(ctx, pod, &sandbox.id, grace).await;
    }
    let grace = left_after(grace, started);
    for sandbox in &sandboxes {
        stop_all(ctx, &sandbox.id, grace).await;
    }
    // The final status, from the stopped containers.
    post_status(ctx, state, pod, sandboxes.first(), true).await?;
    for sandbox in &sandboxes {
        let _ = ctx.runtime.stop_sandbox(&sandbox.id).await;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods
        .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(e) => return Err(format!("deleting the pod: {e}")),
    }
    state.deleted = true;
    tracing::info!(pod = %name(pod), "pod terminated and deleted");
    for sandbox in &sandboxes {
        let _ = ctx.runtime.remove_sandbox(&sandbox.id).await;
    }
    crate::volumes::remove(&ctx.config.root_dir, &uid);
    remove_logs(ctx, &uid);
    Ok(())
}

/// The pod's log directory, once the pod is gone.
fn remove_logs(ctx: &Ctx, uid: &str) {
    crate::gc::remove_pod_logs(&ctx.config.pod_log_dir, &|other| other != uid, None);
}

/// Removes a pod's volumes when dropped.
struct RemoveVolumes<'a>(&'a std::path::Path, &'a str);

impl Drop for RemoveVolumes<'_> {
    fn drop(&mut self) {
        crate::volumes::remove(self.0, self.1);
    }
}

/// The pod is gone from the API: nothing of it may stay.
async fn teardown(ctx: &Ctx, uid: &str) {
    let Ok(sandboxes) = sandboxes(ctx, uid).await else {
        return;
    };
    // After the sandboxes (below): no container may still use a volume.
    let _volumes = RemoveVolumes(&ctx.config.root_dir, uid);
    for sandbox in sandboxes {
        stop_all(ctx, &sandbox.id, 0).await;
        let _ = ctx.runtime.stop_sandbox(&sandbox.id).await;
        let _ = ctx.runtime.remove_sandbox(&sandbox.id).await;
    }
    remove_logs(ctx, uid);
}

/// Computes the status and patches it when it changed.
async fn post_status(
    ctx: &Ctx,
    state: &mut Worker,
    pod: &Pod,
    sandbox: Option<&cri::PodSandbox>,
    terminal: bool,
) -> Result<(), Failure> {
    let (containers, sandbox_ready, pod_ip) = match sandbox {
        Some(sandbox) => {
            let ready = sandbox.state == cri::PodSandboxState::SandboxReady as i32;
            let ip = if ready {
                ctx.runtime.sandbox_ip(&sandbox.id).await
            } else {
                None
            };
            (containers(ctx, &sandbox.id).await?, ready, ip)
        }
        None => (HashMap::new(), false, None),
    };
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let pod_ip = if host_network {
        Some(ctx.host_ip.clone())
    } else {
        pod_ip
    };
    let previous = serde_json::to_value(&pod.status).unwrap_or(Value::Null);
    let now = k8s_openapi::jiff::Timestamp::from_second(crate::status_now_nanos() / 1_000_000_000)
        .map(|t| t.to_string())
        .unwrap_or_default();
    // Running containers clear what they waited for.
    state.waiting.retain(|name, _| {
        containers
            .get(name)
            .and_then(|h| h.first())
            .is_none_or(|s| s.state != cri::ContainerState::ContainerRunning as i32)
    });
    let probed: HashMap<String, (bool, bool)> = containers
        .iter()
        .filter_map(|(name, history)| {
            let newest = history.first()?;
            Some((name.clone(), state.prober.get(name, &newest.id)?))
        })
        .collect();
    let observed = crate::status::Observed {
        probed: &probed,
        sandbox_ready,
        pod_ip,
        host_ip: &ctx.host_ip,
        containers: &containers,
        waiting: &state.waiting,
        terminal,
        runtime_name: &ctx.runtime_name,
        now: &now,
    };
    let status = crate::status::pod_status(pod, &previous, &observed);
    if state.posted.as_ref() == Some(&status) && same_as_api(&previous, &status) {
        return Ok(());
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    // A static pod's status goes to its mirror, when there is one (it is only a
    // reflection: the pod runs on without it).
    let mut patch = json!({"status": status});
    if is_static(pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(mirror) = ctx.mirror_uids().get(&uid).cloned() else {
            return Ok(());
        };
        patch["metadata"] = json!({"uid": mirror});
        if let Err(e) = pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            tracing::debug!(pod = %name, error = %e, "updating a mirror pod's status");
            return Ok(());
        }
        state.posted = Some(status);
        return Ok(());
    }
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| format!("updating the pod status: {e}"))?;
    state.posted = Some(status);
    Ok(())
}

/// The pod's termination grace period in seconds (upstream's default: 30).
pub(super) fn grace_period(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0)
}

/// Whether the kubelet runs `pod` from a manifest file.
fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::static_pods::CONFIG_SOURCE))
        .is_some_and(|s| s == "file")
}

/// Whether the API already shows what we would post (its phase and container states).
fn same_as_api(api: &Value, ours: &Value) -> bool {
    api["phase"] == ours["phase"] && api["containerStatuses"] == ours["containerStatuses"]
}
