//! The Job controller: runs pods from a Job's template until `completions` of them
//! succeed (`parallelism` at a time; with Indexed completion each index once), fails
//! the Job after `backoffLimit` failed pods or past `activeDeadlineSeconds`, stops its
//! pods while `suspend`ed, and deletes a finished Job `ttlSecondsAfterFinished` later
//! (upstream's TTL-after-finished controller).
//!
//! Succeeded and failed pods are counted from the pods that exist (upstream tracks them
//! with a finalizer so that deleting finished pods loses no count).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use serde_json::{Value, json};

use crate::events::Recorder;
use crate::queue::{WorkQueue, Workers, drive, meta_key, reflect};
use crate::shared::Shared;
use crate::{Error, controller_of, status_changed, write_status};

const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

#[derive(Clone)]
struct Context {
    client: kube::Client,
    jobs: Store<Job>,
    pods: Store<Pod>,
    queue: WorkQueue,
    events: Recorder,
    /// Pods created per Job that the pod watch has not shown yet: no more are made for
    /// it until they show (or 30 s pass), so a Job never overshoots.
    expected: Arc<std::sync::Mutex<HashMap<String, Expected>>>,
}

/// Pod names a Job created, and when.
type Expected = (BTreeSet<String>, std::time::Instant);

pub async fn run(client: kube::Client, shared_pods: Shared<Pod>) -> Result<(), Error> {
    let (jobs, j_writer) = reflector::store();
    let pods = shared_pods.store();
    let ctx = Context {
        client: client.clone(),
        jobs,
        pods,
        queue: WorkQueue::gated(),
        events: Recorder::new(client.clone(), "job-controller"),
        expected: Arc::default(),
    };
    let job_events = reflect(&client, j_writer);
    let pod_events = shared_pods
        .subscribe()
        .map(Ok::<_, std::convert::Infallible>);
    let mut workers = Workers::default();
    let worker_ctx = ctx.clone();
    workers.sync_loop(2, &ctx.queue, "job", move |key| {
        let ctx = worker_ctx.clone();
        async move { sync(&ctx, &key).await }
    });
    let q = ctx.queue.clone();
    let jobs = job_events.for_each(move |j| {
        if let Ok(j) = j {
            q.add(&meta_key(&j.metadata));
        }
        futures::future::ready(())
    });
    let q = ctx.queue.clone();
    let pods = pod_events.for_each(move |p| {
        if let Ok(p) = p
            && let Some(owner) = controller_of(&p.metadata).filter(|o| o.kind == "Job")
        {
            q.add(&format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                owner.name
            ));
        }
        futures::future::ready(())
    });
    // Syncs start once every cache has its first list; all objects are looked at
    // again every minute.
    drive(
        &ctx.queue,
        vec![Box::new(ctx.jobs.clone()), Box::new(ctx.pods.clone())],
        ctx.jobs.clone(),
        futures::future::join(jobs, pods),
    )
    .await;
    Ok(())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
}

fn condition(status: &Value, kind: &str) -> bool {
    status["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// One sync; `Some(delay)` to look again later (a deadline or a TTL).
async fn sync(ctx: &Context, key: &str) -> Result<Option<Duration>, kube::Error> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(job) = ctx.jobs.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(None);
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let spec = job.spec.clone().unwrap_or_default();
    let status = serde_json::to_value(job.status.clone().unwrap_or_default()).unwrap_or_default();
    let now = Timestamp::now();
    let finished_at = |kind: &str| -> Option<Timestamp> {
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind && c["status"] == "True")?["lastTransitionTime"]
            .as_str()?
            .parse()
            .ok()
    };
    // Finished: only the TTL is left to act on.
    if let Some(done) = finished_at("Complete").or_else(|| finished_at("Failed")) {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(None);
        };
        let due = done + SignedDuration::from_secs(i64::from(ttl));
        if now >= due {
            tracing::info!(job = %key, "deleting a finished job after its TTL");
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
            return Ok(None);
        }
        return Ok(Some(Duration::from_secs_f64(
            now.duration_until(due).as_secs_f64().max(0.1),
        )));
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let mine: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let succeeded: Vec<&Arc<Pod>> = mine.iter().filter(|p| phase(p) == "Succeeded").collect();
    let failed = mine.iter().filter(|p| phase(p) == "Failed").count();
    let active: Vec<&Arc<Pod>> = mine
        .iter()
        .filter(|p| {
            !matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let ready = active.iter().filter(|p| crate::pod_ready(p)).count();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0);
    let completions = spec.completions.map(|c| usize::try_from(c).unwrap_or(0));
    let succeeded_count = if indexed {
        succeeded
            .iter()
            .filter_map(|p| index_of(p))
            .collect::<BTreeSet<_>>()
            .len()
    } else {
        succeeded.len()
    };
    let start: Timestamp = status["startTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(now);
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let mut completion_time = None;
    let suspended = spec.suspend == Some(true);
    let mut failure: Option<(&str, String)> = None;
    if failed > usize::try_from(spec.backoff_limit.unwrap_or(6)).unwrap_or(6) {
        failure = Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
    } else if let Some(deadline) = spec.active_deadline_seconds
        && !suspended
        && now.duration_since(start) >= SignedDuration::from_secs(deadline)
    {
        failure = Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        ));
    }
    let complete = match completions {
        Some(c) => succeeded_count >= c,
        None => succeeded_count > 0 && active.is_empty(),
    };
    let mut stop_active = suspended || failure.is_some();
    if let Some((reason, message)) = &failure {
        ctx.events.warning(&*job, reason, message.clone());
        for kind in ["FailureTarget", "Failed"] {
            conditions.push(
                json!({"type": kind, "status": "True", "reason": reason, "message": message,
                "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()}),
            );
        }
    } else if complete {
        ctx.events
            .normal(&*job, "Completed", "Job completed".into());
        for kind in ["SuccessCriteriaMet", "Complete"] {
            conditions.push(
                json!({"type": kind, "status": "True", "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()}),
            );
        }
        completion_time = Some(now.to_string());
        stop_active = true;
    } else if !suspended {
        // Run pods up to parallelism, never beyond what is left to complete; without
        // `completions`, no new pods once one has succeeded.
        let left = match completions {
            Some(c) => c.saturating_sub(succeeded_count),
            None if succeeded_count > 0 => 0,
            None => parallelism,
        };
        let want = parallelism.min(left);
        let waiting = {
            let mut expected = ctx.expected.lock().unwrap_or_else(|e| e.into_inner());
            let names: BTreeSet<&str> = mine
                .iter()
                .filter_map(|p| p.metadata.name.as_deref())
                .collect();
            match expected.get(key) {
                Some((pending, since))
                    if since.elapsed() < Duration::from_secs(30)
                        && pending.iter().any(|n| !names.contains(n.as_str())) =>
                {
                    true
                }
                _ => {
                    expected.remove(key);
                    false
                }
            }
        };
        if active.len() < want && !waiting {
            let job_ref = OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: name.into(),
                uid: uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            };
            let mut indexes: Vec<Option<i32>> = vec![None; want - active.len()];
            if indexed {
                let taken: BTreeSet<i32> = succeeded
                    .iter()
                    .chain(active.iter())
                    .filter_map(|p| index_of(p))
                    .collect();
                let total = i32::try_from(completions.unwrap_or(0)).unwrap_or(0);
                indexes = (0..total)
                    .filter(|i| !taken.contains(i))
                    .take(want - active.len())
                    .map(Some)
                    .collect();
            }
            let mut created = BTreeSet::new();
            for index in indexes {
                let pod = pod_from_template(&job, job_ref.clone(), index);
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(pod) => {
                        let pod_name = pod.metadata.name.unwrap_or_default();
                        ctx.events.normal(
                            &*job,
                            "SuccessfulCreate",
                            format!("Created pod: {pod_name}"),
                        );
                        created.insert(pod_name);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        ctx.events
                            .warning(&*job, "FailedCreate", format!("Error creating: {e}"));
                        return Err(e);
                    }
                }
            }
            ctx.expected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.to_string(), (created, std::time::Instant::now()));
        }
    }
    if stop_active {
        for pod in &active {
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            match pods_api.delete(pod_name, &DeleteParams::background()).await {
                Ok(_) => ctx.events.normal(
                    &*job,
                    "SuccessfulDelete",
                    format!("Deleted pod: {pod_name}"),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if suspended && !condition(&status, "Suspended") {
        conditions.push(json!({"type": "Suspended", "status": "True", "reason": "JobSuspended",
            "message": "Job suspended", "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()}));
    }
    let mut new_status = json!({
        "active": if stop_active { 0 } else { active.len() },
        "succeeded": succeeded_count,
        "failed": failed,
        "ready": ready,
        "startTime": start.to_string(),
        "conditions": conditions,
    });
    if let Some(t) = completion_time {
        new_status["completionTime"] = json!(t);
    }
    if indexed {
        let done: Vec<String> = succeeded
            .iter()
            .filter_map(|p| index_of(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|i| i.to_string())
            .collect();
        new_status["completedIndexes"] = json!(done.join(","));
    }
    // startTime is compared by presence: the stored one has seconds only.
    let keys = [
        "active",
        "succeeded",
        "failed",
        "ready",
        "conditions",
        "completedIndexes",
    ];
    if status_changed(&status, &new_status, &keys) || status["startTime"].is_null() {
        write_status(&api, name, new_status).await?;
    }
    // Come back for the deadline.
    Ok(spec.active_deadline_seconds.map(|d| {
        let left = SignedDuration::from_secs(d) - now.duration_since(start);
        Duration::from_secs_f64(left.as_secs_f64().max(0.1))
    }))
}

fn pod_from_template(job: &Job, owner: OwnerReference, index: Option<i32>) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            annotations.insert(INDEX_ANNOTATION.into(), i.to_string());
            spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
            for c in &mut spec.containers {
                c.env
                    .get_or_insert_with(Vec::new)
                    .push(k8s_openapi::api::core::v1::EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: Some(i.to_string()),
                        value_from: None,
                    });
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    let mut labels = meta.labels.unwrap_or_default();
    if let Some(i) = index {
        labels.insert(INDEX_ANNOTATION.into(), i.to_string());
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}
