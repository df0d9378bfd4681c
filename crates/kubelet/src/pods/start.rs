//! Starting containers: the image as the pull policy says (with the pod's pull
//! secrets and a back-off for failed pulls), the environment with the ConfigMaps and
//! Secrets it names read at start, CreateContainer and StartContainer; restarts wait out
//! upstream's crash back-off. What goes wrong becomes the container's waiting reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Api;
use serde_json::Value;

use super::{BACKOFF_MAX, BACKOFF_RESET, BACKOFF_START, Backoff, Ctx, Placement, Worker, name};
use crate::spec;

/// Go's `time.Duration` text for whole seconds (10s, 1m20s, 5m0s).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

/// Restarts an exited container unless its back-off says wait.
pub(super) async fn restart_container(
    ctx: &Ctx,
    state: &mut Worker,
    pod: &Pod,
    at: &Placement<'_>,
    container: &Container,
    newest: &cri::ContainerStatus,
) {
    let finished_ago = Duration::from_nanos(
        u64::try_from(crate::status_now_nanos().saturating_sub(newest.finished_at)).unwrap_or(0),
    );
    let now = Instant::now();
    let entry = state.backoff.get(&container.name);
    if let Some(entry) = entry
        && finished_ago < entry.delay
    {
        let message = format!(
            "back-off {} restarting failed container={} pod={}_{}({})",
            go_duration(entry.delay),
            container.name,
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default(),
        );
        state
            .waiting
            .insert(container.name.clone(), ("CrashLoopBackOff".into(), message));
        return;
    }
    // A container that never started (StartError) ran for no time at all.
    let ran = if newest.started_at > 0 {
        Duration::from_nanos(
            u64::try_from(newest.finished_at.saturating_sub(newest.started_at)).unwrap_or(0),
        )
    } else {
        Duration::ZERO
    };
    let delay = match entry {
        Some(entry)
            if ran < BACKOFF_RESET && now.duration_since(entry.updated) < BACKOFF_MAX * 2 =>
        {
            (entry.delay * 2).min(BACKOFF_MAX)
        }
        _ => BACKOFF_START,
    };
    state.backoff.insert(
        container.name.clone(),
        Backoff {
            delay,
            updated: now,
        },
    );
    let attempt = newest.metadata.as_ref().map_or(0, |m| m.attempt + 1);
    start_container(ctx, state, pod, at, container, attempt).await;
}

/// Pulls the image as the policy says, then creates and starts the container; what went
/// wrong becomes the container's waiting reason.
pub(super) async fn start_container(
    ctx: &Ctx,
    state: &mut Worker,
    pod: &Pod,
    at: &Placement<'_>,
    container: &Container,
    attempt: u32,
) {
    state.waiting.remove(&container.name);
    if let Err((reason, message)) = ensure_image(ctx, state, pod, container).await {
        state
            .waiting
            .insert(container.name.clone(), (reason, message));
        return;
    }
    if let Err(message) = verify_run_as_non_root(ctx, pod, container).await {
        state.waiting.insert(
            container.name.clone(),
            ("CreateContainerConfigError".into(), message),
        );
        return;
    }
    let env = match environment(ctx, pod, container, at.pod_ip).await {
        Ok(env) => env,
        Err(message) => {
            state.waiting.insert(
                container.name.clone(),
                ("CreateContainerConfigError".into(), message),
            );
            return;
        }
    };
    let mounts = match crate::volumes::mounts(container, &state.prepared) {
        Ok(mounts) => mounts,
        Err(message) => {
            state.waiting.insert(
                container.name.clone(),
                ("CreateContainerConfigError".into(), message),
            );
            return;
        }
    };
    let mut mounts = mounts;
    if let Some(mount) = termination_log(ctx, pod, container, attempt, &mounts) {
        mounts.push(mount);
    }
    if let Some(mount) = etc_hosts(ctx, pod, at, &mounts) {
        mounts.push(mount);
    }
    let config = spec::container(pod, container, attempt, &env, mounts);
    let id = match ctx
        .runtime
        .create_container(at.sandbox, config, at.config.clone())
        .await
    {
        Ok(id) => id,
        Err(e) => {
            state.waiting.insert(
                container.name.clone(),
                ("CreateContainerError".into(), e.message().to_string()),
            );
            return;
        }
    };
    if let Err(e) = ctx.runtime.start_container(&id).await {
        state.waiting.insert(
            container.name.clone(),
            ("RunContainerError".into(), e.message().to_string()),
        );
        return;
    }
    tracing::info!(pod = %name(pod), container = %container.name, attempt, "container started");
    // postStart runs right after the start; if it fails the container is killed (the
    // restart policy decides what follows).
    if let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
    {
        let grace = super::grace_period(pod);
        let timeout = Duration::from_secs(u64::try_from(grace.max(1)).unwrap_or(30));
        if let Err(message) =
            super::probe::hook(&ctx.runtime, container, &id, at.pod_ip, handler, timeout).await
        {
            tracing::warn!(pod = %name(pod), container = %container.name, %message, "postStart hook failed: killing the container");
            let _ = ctx.runtime.stop_container(&id, grace).await;
            state.waiting.insert(
                container.name.clone(),
                ("PostStartHookError".into(), message),
            );
        }
    }
}

/// The image, pulled when the policy asks for it.
async fn ensure_image(
    ctx: &Ctx,
    state: &mut Worker,
    pod: &Pod,
    container: &Container,
) -> Result<(), (String, String)> {
    let image = container.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Err(("InvalidImageName".into(), "no image".into()));
    }
    let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
        let tag = image.rsplit('/').next().unwrap_or("");
        if image.contains('@') || (tag.contains(':') && !tag.ends_with(":latest")) {
            "IfNotPresent".into()
        } else {
            "Always".into()
        }
    });
    let present = ctx.runtime.image_present(&image).await.ok().flatten();
    // Not collected between here and the container's creation.
    if let Some(id) = &present {
        ctx.images.touch(id);
    }
    let present = present.is_some();
    match policy.as_str() {
        "Never" if !present => {
            return Err((
                "ErrImageNeverPull".into(),
                format!("Container image \"{image}\" is not present with pull policy of Never"),
            ));
        }
        "Never" => return Ok(()),
        "IfNotPresent" if present => return Ok(()),
        _ => {}
    }
    if let Some(backoff) = state.pulls.get(&image)
        && backoff.updated.elapsed() < backoff.delay
    {
        return Err((
            "ImagePullBackOff".into(),
            format!("Back-off pulling image \"{image}\""),
        ));
    }
    let auth = pull_auth(ctx, pod, &image).await;
    match ctx.runtime.pull_image(&image, auth).await {
        Ok(id) => {
            ctx.images.touch(&id);
            state.pulls.remove(&image);
            Ok(())
        }
        Err(e) => {
            let delay = state
                .pulls
                .get(&image)
                .map_or(BACKOFF_START, |b| (b.delay * 2).min(BACKOFF_MAX));
            state.pulls.insert(
                image.clone(),
                Backoff {
                    delay,
                    updated: Instant::now(),
                },
            );
            Err(("ErrImagePull".into(), e.message().to_string()))
        }
    }
}

/// Credentials for the image's registry from the pod's imagePullSecrets
/// (`kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg`).
async fn pull_auth(ctx: &Ctx, pod: &Pod, image: &str) -> Option<cri::AuthConfig> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let first = image.split('/').next().unwrap_or_default();
    let registry = if image.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        first.to_string()
    } else {
        "docker.io".to_string()
    };
    for reference in pod.spec.as_ref()?.image_pull_secrets.iter().flatten() {
        let Ok(secret) = secrets.get(&reference.name).await else {
            continue;
        };
        let data = secret.data.unwrap_or_default();
        // A secret that is no registry config does not stop the search.
        let Some(config) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
            .and_then(|b| serde_json::from_slice::<Value>(&b.0).ok())
        else {
            continue;
        };
        let auths = if config["auths"].is_object() {
            &config["auths"]
        } else {
            &config
        };
        let Some(auths) = auths.as_object() else {
            continue;
        };
        for (host, entry) in auths {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default();
            let matches = host == registry
                || (registry == "docker.io"
                    && (host == "index.docker.io" || host == "registry-1.docker.io"));
            if matches {
                return Some(cri::AuthConfig {
                    username: entry["username"].as_str().unwrap_or_default().into(),
                    password: entry["password"].as_str().unwrap_or_default().into(),
                    auth: entry["auth"].as_str().unwrap_or_default().into(),
                    server_address: host.into(),
                    ..Default::default()
                });
            }
        }
    }
    None
}

/// The container's environment, with the ConfigMaps and Secrets it names read now.
async fn environment(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut config_map_names = HashSet::new();
    let mut secret_names = HashSet::new();
    for source in container.env_from.iter().flatten() {
        if let Some(r) = &source.config_map_ref {
            config_map_names.insert(r.name.clone());
        }
        if let Some(r) = &source.secret_ref {
            secret_names.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(from) = &var.value_from {
            if let Some(r) = &from.config_map_key_ref {
                config_map_names.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secret_names.insert(r.name.clone());
            }
        }
    }
    let config_maps_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut config_maps: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for name in config_map_names {
        match config_maps_api.get_opt(&name).await {
            Ok(Some(cm)) => {
                config_maps.insert(name, cm.data.unwrap_or_default());
            }
            Ok(None) => {}
            Err(e) => return Err(format!("reading configmap {name}: {e}")),
        }
    }
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut secrets: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for name in secret_names {
        match secrets_api.get_opt(&name).await {
            Ok(Some(secret)) => {
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                secrets.insert(name, data);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("reading secret {name}: {e}")),
        }
    }
    // Services as variables: the pod's namespace's (unless enableServiceLinks is
    // false) and the API server's (`kubernetes` in default), as upstream.
    let mut services = Vec::new();
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let services_api: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    if links {
        let listed = services_api
            .list(&Default::default())
            .await
            .map_err(|e| format!("listing services: {e}"))?;
        for service in &listed.items {
            services.extend(spec::service_env(service));
        }
    }
    // The API server's Service, unless the namespace's own `kubernetes` took its names.
    let shadowed = services.iter().any(|(k, _)| k == "KUBERNETES_SERVICE_HOST");
    if !shadowed {
        let default: Api<Service> = Api::namespaced(ctx.client.clone(), "default");
        if let Ok(Some(kubernetes)) = default.get_opt("kubernetes").await {
            services.extend(spec::service_env(&kubernetes));
        }
    }
    let context = spec::Context {
        services: &services,
        allocatable: crate::node::allocatable(),
        node_name: &ctx.config.node_name,
        host_ip: &ctx.host_ip,
        pod_ip,
        config_maps: &config_maps,
        secrets: &secrets,
    };
    spec::environment(pod, container, &context).map_err(|e| e.to_string())
}

/// `runAsNonRoot`: the container may not run as uid 0, by its own `runAsUser` or by the
/// image's user (upstream's checks and messages).
async fn verify_run_as_non_root(ctx: &Ctx, pod: &Pod, container: &Container) -> Result<(), String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let non_root = sc
        .and_then(|c| c.run_as_non_root)
        .or(pod_sc.and_then(|p| p.run_as_non_root));
    if non_root != Some(true) {
        return Ok(());
    }
    let meta = &pod.metadata;
    let who = format!(
        "pod: \"{}_{}({})\", container: {}",
        meta.name.as_deref().unwrap_or_default(),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default(),
        container.name
    );
    let user = sc
        .and_then(|c| c.run_as_user)
        .or(pod_sc.and_then(|p| p.run_as_user));
    if let Some(user) = user {
        return if user == 0 {
            Err(format!(
                "container's runAsUser breaks non-root policy ({who})"
            ))
        } else {
            Ok(())
        };
    }
    let image = container.image.as_deref().unwrap_or_default();
    match ctx.runtime.image_user(image).await {
        Ok((Some(0), _)) => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        Ok((None, name)) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root ({who})"
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("verifying the image's user: {}", e.message())),
    }
}

/// The file behind `terminationMessagePath`: an empty, writable file per container
/// attempt under the pod's directory, bind-mounted at that path (what the container
/// writes there becomes its termination message).
fn termination_log(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
    attempt: u32,
    mounts: &[k8s_cri::v1::Mount],
) -> Option<k8s_cri::v1::Mount> {
    use std::os::unix::fs::PermissionsExt;
    let path = container.termination_message_path.as_deref()?;
    if !path.starts_with('/') || mounts.iter().any(|m| m.container_path == path) {
        return None;
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = crate::volumes::pod_dir(&ctx.config.root_dir, uid)
        .join("containers")
        .join(&container.name);
    let file = dir.join(format!("{attempt}-termination-log"));
    let made = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, b""))
        .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)));
    if let Err(e) = made {
        tracing::warn!(file = %file.display(), error = %e, "making the termination message file");
        return None;
    }
    Some(k8s_cri::v1::Mount {
        container_path: path.to_string(),
        host_path: file.display().to_string(),
        ..Default::default()
    })
}

/// The pod's managed `/etc/hosts` (rewritten at every container start, as upstream),
/// bind-mounted unless the container mounts something there itself.
fn etc_hosts(
    ctx: &Ctx,
    pod: &Pod,
    at: &Placement<'_>,
    mounts: &[k8s_cri::v1::Mount],
) -> Option<k8s_cri::v1::Mount> {
    if at.pod_ip.is_empty() || mounts.iter().any(|m| m.container_path == "/etc/hosts") {
        return None;
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = crate::volumes::pod_dir(&ctx.config.root_dir, uid);
    let file = dir.join("etc-hosts");
    let text = spec::hosts_file(
        pod,
        &at.config.hostname,
        &[at.pod_ip],
        &ctx.config.cluster_domain,
    );
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, text)) {
        tracing::warn!(file = %file.display(), error = %e, "writing the pod's hosts file");
        return None;
    }
    Some(k8s_cri::v1::Mount {
        container_path: "/etc/hosts".into(),
        host_path: file.display().to_string(),
        ..Default::default()
    })
}
