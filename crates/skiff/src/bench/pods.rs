//! `skiff bench pods`: pod startup latency through the whole system, from the client's
//! create to the pod Running and to Ready as a watch sees them: the API server, the
//! scheduler, the kubelet and a CRI runtime. It starts its own control plane (`skiff
//! server --disable-agent`), skiff's runtime and (when installed) containerd with the
//! busybox image `skiff bench cri` builds, and one `skiff kubelet` per runtime, then
//! measures one pod at a time, a burst of pods created at once, and a Deployment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::stats::{Samples, ms};

#[derive(clap::Args)]
pub struct PodsBench {
    /// Pods started one after another, each measured alone.
    #[arg(long, default_value_t = 10)]
    single: usize,
    /// Pods created at once.
    #[arg(long, default_value_t = 30)]
    burst: usize,
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 100)]
    deployment: usize,
}

/// When the watch first saw each pod Running and Ready.
#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"skiff-bench": "pods"}},
        "spec": template_spec(node),
    }))
    .unwrap_or_default()
}

fn template_spec(node: &str) -> serde_json::Value {
    json!({
        "nodeSelector": {"kubernetes.io/hostname": node},
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "c", "image": super::cri::IMAGE,
                        "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}],
    })
}

/// One scenario's numbers.
struct Result1 {
    runtime: String,
    scenario: String,
    running: Samples,
    ready: Samples,
    all_ready: Duration,
}

impl PodsBench {
    pub async fn run(self) -> Result<()> {
        let scratch = tempfile::tempdir()?;
        let runtimes = super::cri::spawn(scratch.path())?;
        let server = super::api::spawn_server()?;
        let client = crate::scheduler::client(&server.kubeconfig, "skiff-bench").await?;
        println!(
            "skiff bench pods: {} pod(s) one at a time, {} at once, a Deployment of {}; kubelet per runtime on this machine\n",
            self.single, self.burst, self.deployment
        );
        let seen: Shared = Arc::default();
        let watching = {
            let seen = seen.clone();
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            tokio::spawn(async move {
                let config = watcher::Config::default().labels("skiff-bench=pods");
                let mut events = std::pin::pin!(watcher(pods, config));
                while let Ok(Some(event)) = events.try_next().await {
                    if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event {
                        record(&seen, &p);
                    }
                }
            })
        };
        let mut results = Vec::new();
        for runtime in &runtimes {
            let node = format!("bench-{}", runtime.name);
            let dir = scratch.path().join(format!("kubelet-{}", runtime.name));
            std::fs::create_dir_all(&dir)?;
            let mut kubelet = std::process::Command::new(std::env::current_exe()?)
                .arg("kubelet")
                .arg("--kubeconfig")
                .arg(&server.kubeconfig)
                .args(["--node-name", &node, "--node-ip", "127.0.0.1"])
                .arg("--cri-socket")
                .arg(&runtime.socket)
                .arg("--root-dir")
                .arg(dir.join("root"))
                .arg("--pod-log-dir")
                .arg(dir.join("logs"))
                .args(["--eviction-hard", "memory.available<1Mi"])
                .env("RUST_LOG", "warn")
                .stderr(std::fs::File::create(dir.join("kubelet.log"))?)
                .spawn()
                .context("starting skiff kubelet")?;
            let mut outcome = self
                .measure(&client, &seen, &runtime.name, &node, &mut results)
                .await;
            // The kubelet removes the deleted pods' sandboxes before it goes, so nothing
            // is left in the runtime (containerd's shims would outlive it).
            if outcome.is_ok() {
                outcome = no_sandboxes_left(&runtime.socket).await;
            }
            let _ = kubelet.kill();
            let _ = kubelet.wait();
            outcome?;
        }
        watching.abort();
        println!(
            "| runtime | scenario | pods | to Running p50 | p99 | to Ready p50 | p99 | all Ready |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        for mut r in results {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.runtime,
                r.scenario,
                r.ready.len(),
                ms(r.running.percentile(50.0)),
                ms(r.running.percentile(99.0)),
                ms(r.ready.percentile(50.0)),
                ms(r.ready.percentile(99.0)),
                ms(r.all_ready),
            );
        }
        drop(runtimes);
        Ok(())
    }

    async fn measure(
        &self,
        client: &kube::Client,
        seen: &Shared,
        runtime: &str,
        node: &str,
        results: &mut Vec<Result1>,
    ) -> Result<()> {
        wait_node_ready(client, node).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let prefix = format!("{runtime}-");

        // One at a time.
        let mut single = Result1::new(runtime, "one at a time");
        let started = Instant::now();
        for i in 0..self.single {
            let name = format!("{prefix}single-{i}");
            let created = Instant::now();
            pods.create(&PostParams::default(), &pod(&name, node))
                .await?;
            wait_ready(seen, std::slice::from_ref(&name)).await?;
            single.add(seen, &name, created);
        }
        single.all_ready = started.elapsed();
        results.push(single);
        clear(&pods).await?;

        // A burst created at once.
        let names: Vec<String> = (0..self.burst)
            .map(|i| format!("{prefix}burst-{i}"))
            .collect();
        let mut created = HashMap::new();
        let started = Instant::now();
        let creates = names.iter().map(|name| {
            let pods = pods.clone();
            let body = pod(name, node);
            async move {
                let at = Instant::now();
                pods.create(&PostParams::default(), &body).await.map(|_| at)
            }
        });
        for (name, at) in names.iter().zip(futures::future::join_all(creates).await) {
            created.insert(name.clone(), at?);
        }
        wait_ready(seen, &names).await?;
        let mut burst = Result1::new(runtime, "at once");
        for name in &names {
            burst.add(seen, name, created[name]);
        }
        burst.all_ready = started.elapsed();
        results.push(burst);
        clear(&pods).await?;

        // A Deployment: latencies from its creation.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let name = format!("{prefix}deploy");
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": self.deployment,
                "selector": {"matchLabels": {"skiff-bench": "pods", "deploy": name}},
                "template": {
                    "metadata": {"labels": {"skiff-bench": "pods", "deploy": name}},
                    "spec": template_spec(node),
                },
            },
        }))?;
        let started = Instant::now();
        deployments
            .create(&PostParams::default(), &deployment)
            .await?;
        let deadline = started + Duration::from_secs(300);
        let names = loop {
            let listed = pods
                .list(&ListParams::default().labels(&format!("deploy={name}")))
                .await?;
            let names: Vec<String> = listed
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            let all_ready = {
                let seen_now = lock(seen);
                names.iter().all(|n| seen_now.ready.contains_key(n))
            };
            if names.len() == self.deployment && all_ready {
                break names;
            }
            if Instant::now() > deadline {
                bail!("the Deployment's pods were not all Ready within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut deploy = Result1::new(runtime, "Deployment");
        for pod_name in &names {
            deploy.add(seen, pod_name, started);
        }
        deploy.all_ready = started.elapsed();
        results.push(deploy);
        deployments.delete(&name, &DeleteParams::default()).await?;
        clear(&pods).await?;
        Ok(())
    }
}

impl Result1 {
    fn new(runtime: &str, scenario: &str) -> Result1 {
        Result1 {
            runtime: runtime.into(),
            scenario: scenario.into(),
            running: Samples::default(),
            ready: Samples::default(),
            all_ready: Duration::ZERO,
        }
    }

    fn add(&mut self, seen: &Shared, name: &str, created: Instant) {
        let seen = lock(seen);
        if let Some(at) = seen.running.get(name) {
            self.running.push(at.saturating_duration_since(created));
        }
        if let Some(at) = seen.ready.get(name) {
            self.ready.push(at.saturating_duration_since(created));
        }
    }
}

fn record(seen: &Shared, pod: &Pod) {
    let Some(name) = pod.metadata.name.clone() else {
        return;
    };
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let now = Instant::now();
    let mut seen = lock(seen);
    if running {
        seen.running.entry(name.clone()).or_insert(now);
    }
    if ready {
        seen.ready.entry(name).or_insert(now);
    }
}

async fn wait_ready(seen: &Shared, names: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !names.iter().all(|n| lock(seen).ready.contains_key(n)) {
        if Instant::now() > deadline {
            bail!("pods were not Ready within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn wait_node_ready(client: &kube::Client, node: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.get_opt(node).await?.is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {node} was not Ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the runtime at `socket` has no pod sandbox left.
async fn no_sandboxes_left(socket: &std::path::Path) -> Result<()> {
    use k8s_cri::v1::ListPodSandboxRequest;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    let mut runtime = RuntimeServiceClient::new(crate::runtime::connect(socket).await?);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = runtime
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} sandboxes were left in the runtime after 120 s",
                left.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the bench's pods and waits until they are gone.
async fn clear(pods: &Api<Pod>) -> Result<()> {
    let params = ListParams::default().labels("skiff-bench=pods");
    pods.delete_collection(&DeleteParams::default(), &params)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&params).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("the bench's pods were not gone within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
