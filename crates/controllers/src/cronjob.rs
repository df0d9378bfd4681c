//! The CronJob controller: at each time the schedule names (UTC), a Job from the
//! template, named `CRONJOB-<minutes since the epoch>` as upstream, under the
//! concurrency policy (Allow, Forbid while one runs, Replace the running one) and the
//! starting deadline; finished Jobs beyond the history limits are deleted.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_api::cron::Schedule;

use crate::Error;
use crate::events::Recorder;

const PERIOD: Duration = Duration::from_secs(1);

pub async fn run(client: kube::Client) -> Result<(), Error> {
    let mut tick = tokio::time::interval(PERIOD);
    let events = Recorder::new(client.clone(), "cronjob-controller");
    loop {
        tick.tick().await;
        if let Err(e) = pass(&client, &events).await {
            tracing::warn!(error = %e, "cronjob pass");
        }
    }
}

fn finished(job: &Job) -> Option<(&'static str, Timestamp)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    for (kind, name) in [("Complete", "Complete"), ("Failed", "Failed")] {
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
        {
            let at = c
                .last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
            return Some((name, at));
        }
    }
    None
}

async fn pass(client: &kube::Client, events: &Recorder) -> Result<(), kube::Error> {
    let cronjobs: Api<CronJob> = Api::all(client.clone());
    let listed = cronjobs
        .list(&ListParams::default().match_any())
        .await?
        .items;
    if listed.is_empty() {
        return Ok(());
    }
    let all_jobs: Vec<Job> = Api::<Job>::all(client.clone())
        .list(&ListParams::default().match_any())
        .await?
        .items;
    let now = Timestamp::now();
    for cj in listed {
        if cj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let name = cj.metadata.name.clone().unwrap_or_default();
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let spec = cj.spec.clone().unwrap_or_default();
        let jobs: Vec<&Job> = all_jobs
            .iter()
            .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|j| {
                j.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid && o.controller == Some(true))
            })
            .collect();
        let active: Vec<&&Job> = jobs
            .iter()
            .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
            .collect();
        let job_api: Api<Job> = Api::namespaced(client.clone(), &ns);
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(cronjob = %format!("{ns}/{name}"), error = %e, "unparseable schedule");
                continue;
            }
        };
        let last = cj
            .status
            .as_ref()
            .and_then(|s| s.last_schedule_time.as_ref())
            .or(cj.metadata.creation_timestamp.as_ref())
            .map_or(now, |t| t.0);
        let (latest, _) = schedule.latest_between(last, now);
        let mut last_schedule = None;
        if let Some(scheduled) = latest
            && spec.suspend != Some(true)
        {
            let too_late = spec
                .starting_deadline_seconds
                .is_some_and(|d| now.duration_since(scheduled) > SignedDuration::from_secs(d));
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            let skip = too_late || (policy == "Forbid" && !active.is_empty());
            if !skip {
                if policy == "Replace" {
                    for job in &active {
                        let job_name = job.metadata.name.as_deref().unwrap_or_default();
                        if job_api
                            .delete(job_name, &DeleteParams::background())
                            .await
                            .is_ok()
                        {
                            events.normal(
                                &cj,
                                "SuccessfulDelete",
                                format!("Deleted job {job_name}"),
                            );
                        }
                    }
                }
                let minutes = scheduled.as_second() / 60;
                let template = spec.job_template.clone();
                let meta = template.metadata.clone().unwrap_or_default();
                let mut annotations = meta.annotations.unwrap_or_default();
                annotations.insert(
                    "batch.kubernetes.io/cronjob-scheduled-timestamp".into(),
                    scheduled.to_string(),
                );
                let job = Job {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}-{minutes}")),
                        namespace: Some(ns.clone()),
                        labels: meta.labels,
                        annotations: Some(annotations),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "batch/v1".into(),
                            kind: "CronJob".into(),
                            name: name.clone(),
                            uid: uid.clone(),
                            controller: Some(true),
                            block_owner_deletion: Some(true),
                        }]),
                        ..Default::default()
                    },
                    spec: template.spec,
                    status: None,
                };
                match job_api.create(&PostParams::default(), &job).await {
                    Ok(_) => {
                        tracing::info!(cronjob = %format!("{ns}/{name}"), job = %format!("{name}-{minutes}"), "started a scheduled job");
                        events.normal(
                            &cj,
                            "SuccessfulCreate",
                            format!("Created job {name}-{minutes}"),
                        );
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            last_schedule = Some(scheduled);
        }
        // History: the newest finished jobs within the limits stay.
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut done: Vec<(&Job, Timestamp)> = jobs
                .iter()
                .filter_map(|j| {
                    finished(j)
                        .filter(|(k, _)| *k == kind)
                        .map(|(_, at)| (*j, at))
                })
                .collect();
            done.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
            for (job, _) in done.into_iter().skip(usize::try_from(limit).unwrap_or(0)) {
                let job_name = job.metadata.name.as_deref().unwrap_or_default();
                if job_api
                    .delete(job_name, &DeleteParams::background())
                    .await
                    .is_ok()
                {
                    events.normal(&cj, "SuccessfulDelete", format!("Deleted job {job_name}"));
                }
            }
        }
        let last_successful = jobs
            .iter()
            .filter_map(|j| {
                finished(j)
                    .filter(|(k, _)| *k == "Complete")
                    .map(|(_, at)| at)
            })
            .max();
        let refs: Vec<serde_json::Value> = active
            .iter()
            .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": j.metadata.name, "namespace": ns, "uid": j.metadata.uid}))
            .collect();
        let mut status =
            json!({"active": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) }});
        if let Some(t) = last_schedule {
            status["lastScheduleTime"] = json!(t.to_string());
        }
        if let Some(t) = last_successful {
            status["lastSuccessfulTime"] = json!(t.to_string());
        }
        let current =
            serde_json::to_value(cj.status.clone().unwrap_or_default()).unwrap_or_default();
        // Jobs that were active and have finished since.
        for job in &jobs {
            let job_name = job.metadata.name.as_deref().unwrap_or_default();
            let was_active = current["active"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["name"] == job_name));
            if was_active && let Some((kind, _)) = finished(job) {
                events.normal(
                    &cj,
                    "SawCompletedJob",
                    format!("Saw completed job: {job_name}, status: {kind}"),
                );
            }
        }
        let changed = last_schedule.is_some()
            || current["active"].as_array().map_or(0, Vec::len) != refs.len()
            || (last_successful.is_some() && current["lastSuccessfulTime"].is_null());
        if changed {
            cronjobs_status(client, &ns, &name, status).await?;
        }
    }
    Ok(())
}

async fn cronjobs_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let api: Api<CronJob> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}
