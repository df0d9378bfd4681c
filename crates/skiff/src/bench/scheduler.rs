//! `skiff bench scheduler`: how fast pods get bound. For each scenario a private `skiff
//! server` (API server + scheduler, embedded store) gets N fake nodes (Node objects with
//! allocatable resources, no kubelet), then P pods are created by concurrent clients;
//! the clock runs from the first create to the last pod seen bound through a watch.
//! Works against any cluster with `--kubeconfig` too (it creates and deletes its nodes).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, Client};

use super::api::{spawn_role, spawn_server};
use super::store::progress;

#[derive(clap::Args)]
pub struct SchedulerBench {
    /// kubeconfig of a cluster to measure instead of private servers.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Scenarios as NODESxPODS.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100x1000,1000x1000,100x10000,1000x10000"
    )]
    scenarios: Vec<String>,
    /// Concurrent clients creating pods.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Replicas of the Deployment timed from creation to every pod bound (0: skip), on
    /// 100 fake nodes.
    #[arg(long, default_value_t = 500)]
    deployment_replicas: usize,
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl SchedulerBench {
    /// The cluster to measure: `--kubeconfig`'s, or a private `skiff server` (kept alive
    /// by the returned handle).
    async fn target(&self) -> Result<(Option<super::api::Spawned>, Client)> {
        let spawned = match &self.kubeconfig {
            Some(_) => None,
            None => Some(spawn_server()?),
        };
        let kubeconfig = spawned
            .as_ref()
            .map(|s| s.kubeconfig.clone())
            .or_else(|| self.kubeconfig.clone())
            .context("a kubeconfig")?;
        let client = crate::scheduler::client(&kubeconfig, "skiff-bench").await?;
        Ok((spawned, client))
    }

    pub async fn run(self) -> Result<()> {
        let mut rows = Vec::new();
        for scenario in &self.scenarios {
            let (nodes, pods) = scenario
                .split_once('x')
                .and_then(|(n, p)| Some((n.parse::<usize>().ok()?, p.parse::<usize>().ok()?)))
                .with_context(|| format!("scenario {scenario}: expected NODESxPODS"))?;
            let (spawned, client) = self.target().await?;
            let figures = scenario_run(&client, nodes, pods, self.clients).await?;
            drop(spawned);
            let alone = match &self.kubeconfig {
                Some(_) => None,
                None => Some(scheduler_alone(nodes, pods, self.clients).await?),
            };
            rows.push((scenario.clone(), figures, alone));
        }
        let mut deployment = None;
        if self.deployment_replicas > 0 {
            let (_server, client) = self.target().await?;
            deployment = Some(deployment_run(&client, 100, self.deployment_replicas).await?);
        }
        println!(
            "| nodes x pods | pods bound/s | all bound after | bound after the last create | scheduler alone: pods bound/s |"
        );
        println!("|---|---|---|---|---|");
        for (scenario, (rate, total, lag), alone) in rows {
            let alone = alone.map_or("-".to_string(), |r| format!("{r:.0}"));
            println!(
                "| {scenario} | {rate:.0} | {:.2} s | {:.0} ms | {alone} |",
                total.as_secs_f64(),
                lag.as_secs_f64() * 1000.0
            );
        }
        if let Some(took) = deployment {
            println!(
                "\nDeployment of {} replicas on 100 nodes: every pod bound {:.2} s after the Deployment was created",
                self.deployment_replicas,
                took.as_secs_f64()
            );
        }
        Ok(())
    }
}

async fn create_nodes(client: &Client, nodes: usize, clients: usize) -> Result<()> {
    let node_api: Api<Node> = Api::all(client.clone());
    let bar = progress(nodes, "fake nodes");
    futures::stream::iter(0..nodes)
        .map(|i| {
            let api = node_api.clone();
            async move {
                let name = format!("bench-node-{i}");
                let node: Node = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "skiff.dev/bench": "true"}},
                }))?;
                api.create(&PostParams::default(), &node).await?;
                let status = serde_json::json!({"status": {
                    "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(clients)
        .inspect(|_| bar.inc(1))
        .try_collect::<()>()
        .await?;
    bar.finish_and_clear();
    Ok(())
}

/// Time from creating a Deployment to all of its pods bound (the controller manager
/// and the scheduler together).
async fn deployment_run(client: &Client, nodes: usize, replicas: usize) -> Result<Duration> {
    create_nodes(client, nodes, 16).await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rv = pod_api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = pod_api
        .watch(&WatchParams::default().labels("app=bench-deployment"), &rv)
        .await?
        .boxed();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    let deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench-deployment"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench-deployment"}},
            "template": {"metadata": {"labels": {"app": "bench-deployment"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}},
    }))?;
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let bar = progress(replicas, "deployment pods bound");
    wait_bound(&mut watch, replicas, &bar).await?;
    bar.finish_and_clear();
    let took = started.elapsed();
    let _ = deployments
        .delete("bench-deployment", &DeleteParams::background())
        .await;
    Ok(took)
}

/// Reads pod events until `count` distinct pods have been seen bound to a node.
async fn wait_bound(
    watch: &mut futures::stream::BoxStream<'static, kube::Result<WatchEvent<Pod>>>,
    count: usize,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let mut bound = HashSet::new();
    while bound.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(120), watch.try_next())
            .await
            .context("no pod bound for 120 s")??
            .context("the watch ended")?;
        if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) = event
            && pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
            && bound.insert(pod.metadata.name.unwrap_or_default())
        {
            bar.inc(1);
        }
    }
    Ok(())
}

/// A watch of the bench's pods from now on.
async fn watch_bench_pods(
    pod_api: &Api<Pod>,
) -> Result<futures::stream::BoxStream<'static, kube::Result<WatchEvent<Pod>>>> {
    let rv = pod_api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    Ok(pod_api
        .watch(&WatchParams::default().labels("skiff.dev/bench=true"), &rv)
        .await?
        .boxed())
}

/// Creates `pods` small pods labelled `skiff.dev/bench=true` from `clients` tasks.
async fn create_pods(
    api: &Api<Pod>,
    pods: usize,
    clients: usize,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("bench-pod-{i}"), "labels": {"skiff.dev/bench": "true"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
                }))?;
                api.create(&PostParams::default(), &pod).await?;
                bar.inc(1);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(clients)
        .try_collect::<()>()
        .await
}

/// The scheduler on its own, as upstream's scheduler_perf measures it: `skiff apiserver`
/// gets the nodes and every pod first, then `skiff scheduler` starts; the clock runs
/// from its start to the last pod seen bound.
async fn scheduler_alone(nodes: usize, pods: usize, clients: usize) -> Result<f64> {
    let server = spawn_role("apiserver")?;
    let client = crate::scheduler::client(&server.kubeconfig, "skiff-bench").await?;
    create_nodes(&client, nodes, clients).await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bar = progress(pods, "pending pods");
    create_pods(&pod_api, pods, clients, &bar).await?;
    bar.finish_and_clear();
    let mut watch = watch_bench_pods(&pod_api).await?;
    let started = Instant::now();
    let _scheduler = Child(
        std::process::Command::new(std::env::current_exe()?)
            .arg("scheduler")
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting skiff scheduler")?,
    );
    let bar = progress(pods, &format!("{nodes} nodes: scheduler alone"));
    wait_bound(&mut watch, pods, &bar).await?;
    bar.finish_and_clear();
    Ok(pods as f64 / started.elapsed().as_secs_f64())
}

async fn scenario_run(
    client: &Client,
    nodes: usize,
    pods: usize,
    clients: usize,
) -> Result<(f64, Duration, Duration)> {
    let node_api: Api<Node> = Api::all(client.clone());
    create_nodes(client, nodes, clients).await?;

    let namespace = "default";
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut watch = watch_bench_pods(&pod_api).await?;
    let started = Instant::now();
    let creating = {
        let api = pod_api.clone();
        tokio::spawn(async move {
            create_pods(&api, pods, clients, &indicatif::ProgressBar::hidden()).await?;
            anyhow::Ok(Instant::now())
        })
    };
    let bar = progress(pods, &format!("{nodes} nodes: pods bound"));
    wait_bound(&mut watch, pods, &bar).await?;
    let total = started.elapsed();
    bar.finish_and_clear();
    let created = creating.await??;
    let lag = Instant::now().saturating_duration_since(created).min(total);
    // Leave the cluster as it was.
    let _ = pod_api
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels("skiff.dev/bench=true"),
        )
        .await;
    let _ = node_api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("skiff.dev/bench=true"),
        )
        .await;
    Ok((pods as f64 / total.as_secs_f64(), total, lag))
}
