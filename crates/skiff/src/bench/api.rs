//! `skiff bench api`: load against any Kubernetes API server through kube-rs: creates of
//! N ConfigMaps with C concurrent clients, LIST of them (consistent and at
//! resourceVersion=0), watch delivery latency, and the server's RSS when its pid is known.
//! `--spawn` starts a private `skiff server` first and times it to ready.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, Config};

use super::stats::{Samples, ms};
use super::store::progress;

/// The static token of the unprivileged bench user (`--rbac-roles`).
const BENCH_TOKEN: &str = "skiff-bench-token";

#[derive(clap::Args)]
pub struct ApiBench {
    /// kubeconfig of the server to measure (ignored with --spawn).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Start a private `skiff server` (embedded store, temporary directory) and measure it.
    #[arg(long)]
    spawn: bool,
    /// The server's process id, to report its memory (found automatically with --spawn).
    #[arg(long)]
    server_pid: Option<u32>,
    /// ConfigMaps to create.
    #[arg(long, default_value_t = 2000)]
    objects: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Watch events to time.
    #[arg(long, default_value_t = 200)]
    watch_events: usize,
    /// With --spawn: run the load as a user without privileges whose permissions come
    /// from the last of this many Roles and RoleBindings (0: as the admin, whom
    /// authorization never checks).
    #[arg(long, default_value_t = 0)]
    rbac_roles: usize,
    /// With --spawn: the server's `--authorization-mode` (`AlwaysAllow` to compare).
    #[arg(long, default_value = "Node,RBAC")]
    authorization_mode: String,
}

pub(super) struct Spawned {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    ready_after: Duration,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn spawn_server() -> Result<Spawned> {
    spawn_role("server")
}

/// A private `skiff ROLE` (`server` or `apiserver`) on a free port and a fresh store.
pub(super) fn spawn_role(role: &str) -> Result<Spawned> {
    spawn_with(role, &[])
}

/// [`spawn_role`] with more flags for the server.
fn spawn_with(role: &str, extra: &[String]) -> Result<Spawned> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        // The control plane only: the bench measures the API server.
        .args([role, "--disable-agent", "--secure-port", "0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting skiff server")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .with_context(|| format!("skiff {role} exited before it was ready"))??;
        if line.starts_with(&format!("skiff {role} ready")) {
            break;
        }
    }
    let ready_after = started.elapsed();
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Spawned {
        child,
        kubeconfig: dir.path().join("admin.kubeconfig"),
        _dir: dir,
        ready_after,
    })
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

impl ApiBench {
    pub async fn run(self) -> Result<()> {
        anyhow::ensure!(
            self.rbac_roles == 0 || self.spawn,
            "--rbac-roles needs --spawn (the bench user's token is the spawned server's)"
        );
        let tokens = tempfile::tempdir()?;
        let token_file = tokens.path().join("tokens.csv");
        std::fs::write(&token_file, format!("{BENCH_TOKEN},bench,bench-uid\n"))?;
        let spawned = if self.spawn {
            Some(spawn_with(
                "server",
                &[
                    "--authorization-mode".into(),
                    self.authorization_mode.clone(),
                    "--token-auth-file".into(),
                    token_file.display().to_string(),
                ],
            )?)
        } else {
            None
        };
        let kubeconfig = match &spawned {
            Some(s) => s.kubeconfig.clone(),
            None => self
                .kubeconfig
                .clone()
                .context("--kubeconfig, KUBECONFIG or --spawn")?,
        };
        let pid = self.server_pid.or(spawned.as_ref().map(|s| s.child.id()));
        let config = Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &Default::default(),
        )
        .await?;
        let client = Client::try_from(config)?;
        let mut rows: Vec<(String, String)> = Vec::new();
        if let Some(s) = &spawned {
            rows.push(("start to ready".into(), ms(s.ready_after)));
        }
        if let Some(rss) = pid.and_then(rss_mib) {
            rows.push(("server RSS, idle".into(), format!("{rss:.1} MiB")));
        }

        let namespace = format!("skiff-bench-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))?;
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .context("creating the bench namespace")?;
        let mut api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        if self.rbac_roles > 0 {
            rows.push((
                "authorization".into(),
                format!(
                    "{}, as a user granted by the last of {} Roles and RoleBindings",
                    self.authorization_mode, self.rbac_roles
                ),
            ));
            self.grant(&client, &namespace).await?;
            let admin = std::fs::read_to_string(&kubeconfig)?;
            let user: String = admin
                .lines()
                .filter(|l| !l.contains("client-key-data"))
                .map(|l| match l.split_once("client-certificate-data:") {
                    Some((indent, _)) => format!("{indent}token: {BENCH_TOKEN}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            let config = Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::from_yaml(&user)?,
                &Default::default(),
            )
            .await?;
            api = Api::namespaced(Client::try_from(config)?, &namespace);
        }

        let (rate, mut latency) = self.creates(&api).await?;
        rows.push((
            format!("creates/s, {} clients", self.clients),
            format!("{rate:.0}"),
        ));
        rows.push((
            format!("create p50, {} clients", self.clients),
            ms(latency.percentile(50.0)),
        ));
        rows.push((
            format!("create p99, {} clients", self.clients),
            ms(latency.percentile(99.0)),
        ));
        if let Some(rss) = pid.and_then(rss_mib) {
            rows.push((
                format!("server RSS after {} objects", self.objects),
                format!("{rss:.1} MiB"),
            ));
        }
        for (label, params) in [
            ("LIST, consistent", ListParams::default()),
            ("LIST, resourceVersion=0", ListParams::default().match_any()),
        ] {
            let mut samples = Samples::with_capacity(20);
            for _ in 0..20 {
                let t = Instant::now();
                let list = api.list(&params).await?;
                samples.push(t.elapsed());
                // (The namespace also holds the kube-root-ca.crt the controller manager
                // publishes in every namespace.)
                let ours = list
                    .items
                    .iter()
                    .filter(|cm| {
                        cm.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("cm-"))
                    })
                    .count();
                anyhow::ensure!(ours == self.objects, "listed {ours} of our objects");
            }
            rows.push((
                format!("{label} of {} p50", self.objects),
                ms(samples.percentile(50.0)),
            ));
            rows.push((
                format!("{label} of {} p99", self.objects),
                ms(samples.percentile(99.0)),
            ));
        }
        let mut watch = self.watch_latency(&api).await?;
        rows.push(("watch delivery p50".into(), ms(watch.percentile(50.0))));
        rows.push(("watch delivery p99".into(), ms(watch.percentile(99.0))));

        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        namespaces
            .delete(&namespace, &DeleteParams::default())
            .await?;

        println!("| metric | value |\n|---|---|");
        for (metric, value) in rows {
            println!("| {metric} | {value} |");
        }
        Ok(())
    }

    /// `rbac_roles` Roles and RoleBindings for other users, then the bench user's
    /// (last in name order, so every decision walks past the others).
    async fn grant(&self, client: &Client, namespace: &str) -> Result<()> {
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
        let bar = progress(self.rbac_roles + 1, "creating Roles and RoleBindings");
        let pair = |name: String, user: String, resource_name: Option<String>| {
            let mut rule =
                serde_json::json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]});
            if let Some(n) = resource_name {
                rule["resourceNames"] = serde_json::json!([n]);
            }
            let role: Result<Role, _> = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name}, "rules": [rule]}));
            let binding: Result<RoleBinding, _> = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]}));
            (role, binding)
        };
        let mut work: Vec<_> = (0..self.rbac_roles)
            .map(|i| {
                pair(
                    format!("other-{i:05}"),
                    format!("user-{i}"),
                    Some(format!("cm-{i}")),
                )
            })
            .collect();
        work.push(pair("zz-bench".into(), "bench".into(), None));
        let mut tasks = futures::stream::iter(work.into_iter().map(|(role, binding)| {
            let (roles, bindings, bar) = (roles.clone(), bindings.clone(), bar.clone());
            async move {
                roles.create(&PostParams::default(), &role?).await?;
                bindings.create(&PostParams::default(), &binding?).await?;
                bar.inc(1);
                anyhow::Ok(())
            }
        }))
        .buffer_unordered(8);
        while let Some(done) = tasks.next().await {
            done?;
        }
        bar.finish_and_clear();
        Ok(())
    }

    async fn creates(&self, api: &Api<ConfigMap>) -> Result<(f64, Samples)> {
        let bar = progress(self.objects, "creating ConfigMaps");
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let workers = (0..self.clients).map(|_| {
            let (api, bar, next) = (api.clone(), bar.clone(), next.clone());
            let total = self.objects;
            async move {
                let mut samples = Samples::with_capacity(total / self.clients + 1);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return anyhow::Ok(samples);
                    }
                    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                        "metadata": {"name": format!("cm-{i:06}")},
                        "data": {"key": "x".repeat(256)},
                    }))?;
                    let t = Instant::now();
                    api.create(&PostParams::default(), &cm).await?;
                    samples.push(t.elapsed());
                    bar.inc(1);
                }
            }
        });
        let results = futures::future::join_all(workers).await;
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        let mut all = Samples::with_capacity(self.objects);
        for r in results {
            all.extend(r?);
        }
        Ok((all.len() as f64 / elapsed.as_secs_f64(), all))
    }

    /// One watcher; a writer patches one object repeatedly; latency from the request
    /// being sent to the event being seen.
    async fn watch_latency(&self, api: &Api<ConfigMap>) -> Result<Samples> {
        let events = self.watch_events;
        let sent: Arc<Vec<OnceLock<Instant>>> =
            Arc::new((0..events).map(|_| OnceLock::new()).collect());
        let list = api.list(&ListParams::default().limit(1)).await?;
        let rv = list.metadata.resource_version.unwrap_or_default();
        let params = WatchParams::default()
            .fields("metadata.name=cm-000000")
            .timeout(290);
        let mut stream = api.watch(&params, &rv).await?.boxed();
        let receiver = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut samples = Samples::with_capacity(events);
                while samples.len() < events {
                    let event = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
                        .await
                        .context("watch stalled")??
                        .context("watch ended")?;
                    if let WatchEvent::Modified(cm) = event {
                        let seen = Instant::now();
                        let i: usize = cm
                            .data
                            .as_ref()
                            .and_then(|d| d.get("seq"))
                            .context("seq")?
                            .parse()?;
                        samples.push(seen.duration_since(*sent[i].get().context("sent")?));
                    }
                }
                anyhow::Ok(samples)
            })
        };
        let bar = progress(events, "watch latency");
        for (i, slot) in sent.iter().enumerate() {
            let patch =
                kube::api::Patch::Merge(serde_json::json!({"data": {"seq": i.to_string()}}));
            let _ = slot.set(Instant::now());
            api.patch("cm-000000", &kube::api::PatchParams::default(), &patch)
                .await?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        receiver.await?
    }
}
