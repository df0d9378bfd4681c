//! A Pod as CRI sees it: the sandbox config (metadata, hostname, DNS, host ports, log
//! directory, namespaces) and each container's config (image, command and args with
//! `$(VAR)` expanded, environment from values, fields, resources, ConfigMaps and
//! Secrets, resources as cgroup settings, security context), labelled as upstream's
//! kubelet labels them so any CRI tool shows which pod a container belongs to.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// The container spec's hash: a container whose spec changed (its image) is restarted.
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";

/// A hash of what may change in a running pod's container (its name and image, as
/// upstream hashes since 1.31: defaulted or new fields never restart containers).
pub fn container_hash(container: &Container) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(&(&container.name, &container.image)).unwrap_or_default();
    let digest = sha2::Sha256::digest(&bytes);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a container's environment may refer to besides the pod: the node, and the
/// ConfigMap and Secret keys (`None`: the object or key is missing).
pub struct Context<'a> {
    pub node_name: &'a str,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub config_maps: &'a HashMap<String, BTreeMap<String, String>>,
    pub secrets: &'a HashMap<String, BTreeMap<String, String>>,
    /// The node's allocatable CPU (millicores) and memory (bytes): what an unset limit
    /// reads as.
    pub allocatable: (i64, i64),
    /// Services' variables (`{NAME}_SERVICE_HOST`, ...), first in the environment.
    pub services: &'a [(String, String)],
}

/// A config error, as the kubelet reports it (`CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn meta(pod: &Pod) -> (&str, &str, &str) {
    (
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// `<dir>/<namespace>_<name>_<uid>`: the pod's log directory.
pub fn log_directory(base: &std::path::Path, pod: &Pod) -> std::path::PathBuf {
    let (name, namespace, uid) = meta(pod);
    base.join(format!("{namespace}_{name}_{uid}"))
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let (name, namespace, uid) = meta(pod);
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(POD_NAME.into(), name.into());
    labels.insert(POD_NAMESPACE.into(), namespace.into());
    labels.insert(POD_UID.into(), uid.into());
    labels
}

fn namespaces(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    let node = |flag: Option<bool>| {
        if flag == Some(true) {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        }
    };
    cri::NamespaceOption {
        network: node(spec.and_then(|s| s.host_network)),
        ipc: node(spec.and_then(|s| s.host_ipc)),
        pid: if spec.and_then(|s| s.host_pid) == Some(true) {
            cri::NamespaceMode::Node as i32
        } else if spec.and_then(|s| s.share_process_namespace) == Some(true) {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ..Default::default()
    }
}

/// The sandbox config for `attempt`.
pub fn sandbox(
    pod: &Pod,
    attempt: u32,
    log_base: &std::path::Path,
    cluster_dns: &[String],
    cluster_domain: &str,
) -> cri::PodSandboxConfig {
    let (name, namespace, uid) = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let hostname = if host_network {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    } else {
        // At most 63 characters, not ending in '-' or '.' (upstream's
        // truncatePodHostnameIfNeeded).
        let mut hostname = spec.hostname.clone().unwrap_or_else(|| name.to_string());
        hostname.truncate(63);
        hostname.trim_end_matches(['-', '.']).to_string()
    };
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or_default(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let security = spec.security_context.clone().unwrap_or_default();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt,
        }),
        hostname,
        log_directory: log_directory(log_base, pod).display().to_string(),
        dns_config: dns(pod, cluster_dns, cluster_domain),
        port_mappings,
        labels: pod_labels(pod),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(pod)),
                run_as_user: security.run_as_user.map(|v| cri::Int64Value { value: v }),
                run_as_group: security.run_as_group.map(|v| cri::Int64Value { value: v }),
                supplemental_groups: supplemental_groups(&security),
                ..Default::default()
            }),
            sysctls: security
                .sysctls
                .iter()
                .flatten()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

/// DNS by `dnsPolicy`: ClusterFirst uses the cluster DNS (the node's resolver when the
/// kubelet has none, as upstream), Default the node's, None only `dnsConfig`.
/// The pod's extra groups: `fsGroup` first (its volumes belong to it), then
/// `supplementalGroups`, as upstream's kubelet gives them.
fn supplemental_groups(security: &k8s_openapi::api::core::v1::PodSecurityContext) -> Vec<i64> {
    security
        .fs_group
        .into_iter()
        .chain(security.supplemental_groups.iter().flatten().copied())
        .collect()
}

/// The pod's `/etc/hosts`, as upstream's kubelet writes it for every container: a
/// managed file (localhost entries, the pod's own name, `hostname.subdomain...` when it
/// has a subdomain) or, on the host's network, the host's file; then the pod's
/// `hostAliases`.
pub fn hosts_file(pod: &Pod, hostname: &str, pod_ips: &[&str], domain: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut text = if spec.host_network == Some(true) {
        let host = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        format!("# Kubernetes-managed hosts file (host network).\n{host}")
    } else {
        let mut text = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
        );
        let subdomain = spec.subdomain.as_deref().filter(|s| !s.is_empty());
        for ip in pod_ips.iter().filter(|ip| !ip.is_empty()) {
            match subdomain {
                Some(sub) => {
                    let namespace = meta(pod).1;
                    text.push_str(&format!(
                        "{ip}\t{hostname}.{sub}.{namespace}.svc.{domain}\t{hostname}\n"
                    ));
                }
                None => text.push_str(&format!("{ip}\t{hostname}\n")),
            }
        }
        text
    };
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        text.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.unwrap_or_default().join("\t");
            text.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
    text
}

fn dns(pod: &Pod, cluster_dns: &[String], domain: &str) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let (_, namespace, _) = meta(pod);
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let mut config = match policy {
        "None" => cri::DnsConfig::default(),
        "ClusterFirst" if !cluster_dns.is_empty() && !host_network => cri::DnsConfig {
            servers: cluster_dns.to_vec(),
            searches: vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ],
            options: vec!["ndots:5".into()],
        },
        "ClusterFirstWithHostNet" if !cluster_dns.is_empty() => cri::DnsConfig {
            servers: cluster_dns.to_vec(),
            searches: vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ],
            options: vec!["ndots:5".into()],
        },
        // The node's resolv.conf (the runtime's default).
        _ => return dns_config_only(spec.dns_config.as_ref()),
    };
    if let Some(extra) = &spec.dns_config {
        config
            .servers
            .extend(extra.nameservers.iter().flatten().cloned());
        config
            .searches
            .extend(extra.searches.iter().flatten().cloned());
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else {
                continue;
            };
            let text = match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_string(),
            };
            config.options.retain(|o| o.split(':').next() != Some(name));
            config.options.push(text);
        }
    }
    Some(config)
}

/// The node's resolv.conf with `dnsConfig`'s additions (none: the runtime uses the
/// node's file as it is).
fn dns_config_only(
    extra: Option<&k8s_openapi::api::core::v1::PodDNSConfig>,
) -> Option<cri::DnsConfig> {
    let extra = extra?;
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut config = cri::DnsConfig::default();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => config.servers.extend(words.next().map(String::from)),
            Some("search" | "domain") => config.searches = words.map(String::from).collect(),
            Some("options") => config.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    config
        .servers
        .extend(extra.nameservers.iter().flatten().cloned());
    config
        .searches
        .extend(extra.searches.iter().flatten().cloned());
    for option in extra.options.iter().flatten() {
        let Some(name) = option.name.as_deref() else {
            continue;
        };
        config.options.retain(|o| o.split(':').next() != Some(name));
        config.options.push(match &option.value {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    Some(config)
}

/// The environment, in order, with `$(VAR)` references to earlier entries expanded.
pub fn environment(
    pod: &Pod,
    container: &Container,
    context: &Context,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = context.services.to_vec();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        if let Some(slot) = env.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            env.push((key, value));
        }
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, name, optional, kind) = if let Some(cm) = &source.config_map_ref {
            (
                context.config_maps.get(&cm.name),
                &cm.name,
                cm.optional,
                "configmap",
            )
        } else if let Some(secret) = &source.secret_ref {
            (
                context.secrets.get(&secret.name),
                &secret.name,
                secret.optional,
                "secret",
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, value) in data {
                    set(&mut env, format!("{prefix}{key}"), value.clone());
                }
            }
            None if optional == Some(true) => {}
            None => return Err(ConfigError(format!("{kind} \"{name}\" not found"))),
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = value_of(pod, container, var, context)? {
            let expanded = expand(&value, &env);
            set(&mut env, var.name.clone(), expanded);
        }
    }
    Ok(env)
}

/// One variable's value; `None` when an optional source is missing.
fn value_of(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    context: &Context,
) -> Result<Option<String>, ConfigError> {
    let Some(from) = &var.value_from else {
        return Ok(Some(var.value.clone().unwrap_or_default()));
    };
    let (name, namespace, uid) = meta(pod);
    if let Some(field) = &from.field_ref {
        let spec = pod.spec.clone().unwrap_or_default();
        let path = field.field_path.as_str();
        let value = match path {
            "metadata.name" => name.to_string(),
            "metadata.namespace" => namespace.to_string(),
            "metadata.uid" => uid.to_string(),
            "spec.nodeName" => context.node_name.to_string(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => context.host_ip.to_string(),
            "status.podIP" | "status.podIPs" => context.pod_ip.to_string(),
            other => metadata_key(pod, other).ok_or_else(|| {
                ConfigError(format!(
                    "unsupported fieldPath {other:?} in env {:?}",
                    var.name
                ))
            })?,
        };
        return Ok(Some(value));
    }
    if let Some(resource) = &from.resource_field_ref {
        let target = resource
            .container_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .and_then(|n| pod.spec.as_ref()?.containers.iter().find(|c| c.name == n))
            .unwrap_or(container);
        return Ok(Some(resource_value(
            target,
            &resource.resource,
            resource.divisor.as_ref(),
            context.allocatable,
        )?));
    }
    let lookup = |data: Option<&BTreeMap<String, String>>,
                  object: &str,
                  key: &str,
                  optional: Option<bool>,
                  kind: &str| {
        match data.and_then(|d| d.get(key)) {
            Some(value) => Ok(Some(value.clone())),
            None if optional == Some(true) => Ok(None),
            None if data.is_none() => Err(ConfigError(format!("{kind} \"{object}\" not found"))),
            None => Err(ConfigError(format!(
                "couldn't find key {key} in {kind} {namespace}/{object}"
            ))),
        }
    };
    if let Some(key) = &from.config_map_key_ref {
        return lookup(
            context.config_maps.get(&key.name),
            &key.name,
            &key.key,
            key.optional,
            "configmap",
        );
    }
    if let Some(key) = &from.secret_key_ref {
        return lookup(
            context.secrets.get(&key.name),
            &key.name,
            &key.key,
            key.optional,
            "secret",
        );
    }
    Ok(Some(String::new()))
}

/// The Docker-links style variables of one Service (upstream's `envvars.FromServices`);
/// none for a headless Service or one without an address.
pub fn service_env(service: &k8s_openapi::api::core::v1::Service) -> Vec<(String, String)> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    if ip.is_empty() || ip == "None" {
        return Vec::new();
    }
    let name = service
        .metadata
        .name
        .clone()
        .unwrap_or_default()
        .to_uppercase()
        .replace('-', "_");
    let ports = spec.ports.clone().unwrap_or_default();
    let mut env = vec![(format!("{name}_SERVICE_HOST"), ip.clone())];
    if let Some(first) = ports.first() {
        env.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    }
    for port in &ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            env.push((
                format!(
                    "{name}_SERVICE_PORT_{}",
                    port_name.to_uppercase().replace('-', "_")
                ),
                port.port.to_string(),
            ));
        }
    }
    if let Some(first) = ports.first() {
        let protocol = first.protocol.as_deref().unwrap_or("TCP").to_lowercase();
        env.push((
            format!("{name}_PORT"),
            format!("{protocol}://{ip}:{}", first.port),
        ));
    }
    for port in &ports {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let lower = protocol.to_lowercase();
        let prefix = format!("{name}_PORT_{}_{}", port.port, protocol.to_uppercase());
        env.push((prefix.clone(), format!("{lower}://{ip}:{}", port.port)));
        env.push((format!("{prefix}_PROTO"), lower));
        env.push((format!("{prefix}_PORT"), port.port.to_string()));
        env.push((format!("{prefix}_ADDR"), ip.clone()));
    }
    env
}

/// `metadata.labels['key']` and `metadata.annotations['key']` (empty when unset);
/// `None` for any other path.
pub fn metadata_key(pod: &Pod, path: &str) -> Option<String> {
    let lookup = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|k| k.strip_prefix("['").and_then(|k| k.strip_suffix("']")))
            .map(|k| {
                map.as_ref()
                    .and_then(|m| m.get(k))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    lookup("metadata.labels", &pod.metadata.labels)
        .or_else(|| lookup("metadata.annotations", &pod.metadata.annotations))
}

/// `limits.cpu` and friends, in units of `divisor` (rounded up, as upstream).
fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    allocatable: (i64, i64),
) -> Result<String, ConfigError> {
    let resources = container.resources.clone().unwrap_or_default();
    let (map, key, limit) = match resource.split_once('.') {
        Some(("limits", key)) => (resources.limits, key, true),
        Some(("requests", key)) => (resources.requests, key, false),
        _ => return Err(ConfigError(format!("unsupported resource {resource:?}"))),
    };
    let quantity = map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone());
    let cpu = key == "cpu";
    // Unset: a limit reads as the node's allocatable, a request as zero (upstream).
    let value = match (&quantity, cpu) {
        (Some(q), true) => skiff_api::quantity::milli_value(q).unwrap_or(0),
        (Some(q), false) => skiff_api::quantity::value(q).unwrap_or(0),
        (None, true) if limit => allocatable.0,
        (None, false) if limit => allocatable.1,
        (None, _) => 0,
    };
    let divisor = if cpu {
        divisor
            .and_then(|d| skiff_api::quantity::milli_value(&d.0))
            .unwrap_or(1000)
    } else {
        divisor
            .and_then(|d| skiff_api::quantity::value(&d.0))
            .unwrap_or(1)
    };
    let divisor = divisor.max(1);
    Ok(((value + divisor - 1) / divisor).to_string())
}

/// Expands `$(NAME)` from `env` (`$$` escapes; unknown references stay as written).
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container config for `attempt` (the restart count).
pub fn container(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    env: &[(String, String)],
    mounts: Vec<cri::Mount>,
) -> cri::ContainerConfig {
    let mut labels = pod_labels(pod);
    labels.retain(|k, _| k.starts_with("io.kubernetes."));
    labels.insert(CONTAINER_NAME.into(), container.name.clone());
    let annotations: HashMap<String, String> = [
        (RESTART_COUNT.to_string(), attempt.to_string()),
        (CONTAINER_HASH.to_string(), container_hash(container)),
        (
            "io.kubernetes.container.terminationMessagePath".to_string(),
            container
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
    ]
    .into();
    let expand_all = |items: &Option<Vec<String>>| -> Vec<String> {
        items
            .iter()
            .flatten()
            .map(|item| expand(item, env))
            .collect()
    };
    let security = container.security_context.clone().unwrap_or_default();
    let pod_security = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let capabilities = security.capabilities.clone().unwrap_or_default();
    let seccomp = security
        .seccomp_profile
        .clone()
        .or(pod_security.seccomp_profile.clone())
        .map(|profile| cri::SecurityProfile {
            profile_type: match profile.type_.as_str() {
                "RuntimeDefault" => cri::security_profile::ProfileType::RuntimeDefault as i32,
                "Localhost" => cri::security_profile::ProfileType::Localhost as i32,
                _ => cri::security_profile::ProfileType::Unconfined as i32,
            },
            localhost_ref: profile.localhost_profile.unwrap_or_default(),
        });
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", container.name),
        mounts,
        stdin: container.stdin == Some(true),
        stdin_once: container.stdin_once == Some(true),
        tty: container.tty == Some(true),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(container)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: capabilities.add.clone().unwrap_or_default(),
                    drop_capabilities: capabilities.drop.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                privileged: security.privileged == Some(true),
                namespace_options: Some(namespaces(pod)),
                run_as_user: security
                    .run_as_user
                    .or(pod_security.run_as_user)
                    .map(|v| cri::Int64Value { value: v }),
                run_as_group: security
                    .run_as_group
                    .or(pod_security.run_as_group)
                    .map(|v| cri::Int64Value { value: v }),
                run_as_username: String::new(),
                readonly_rootfs: security.read_only_root_filesystem == Some(true),
                supplemental_groups: supplemental_groups(&pod_security),
                no_new_privs: security.allow_privilege_escalation == Some(false),
                seccomp,
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Requests and limits as cgroup settings, as upstream converts them: shares from the
/// CPU request (2 at least), a CFS quota from the CPU limit over a 100 ms period, the
/// memory limit.
fn resources(container: &Container) -> cri::LinuxContainerResources {
    let resources = container.resources.clone().unwrap_or_default();
    let get = |map: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               key: &str| map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone());
    let cpu_request = get(&resources.requests, "cpu")
        .or_else(|| get(&resources.limits, "cpu"))
        .and_then(|q| skiff_api::quantity::milli_value(&q));
    let cpu_limit =
        get(&resources.limits, "cpu").and_then(|q| skiff_api::quantity::milli_value(&q));
    let memory_limit =
        get(&resources.limits, "memory").and_then(|q| skiff_api::quantity::value(&q));
    const PERIOD: i64 = 100_000;
    cri::LinuxContainerResources {
        cpu_shares: cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2)),
        cpu_period: if cpu_limit.is_some() { PERIOD } else { 0 },
        cpu_quota: cpu_limit.map_or(0, |m| (m * PERIOD / 1000).max(1000)),
        memory_limit_in_bytes: memory_limit.unwrap_or(0),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("no refs", &env), "no refs");
    }

    #[test]
    fn environment_from_values_fields_and_config_maps() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "GREETING", "value": "hi $(POD)"},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                ]}]},
        }))
        .expect("pod");
        let config_maps: HashMap<String, BTreeMap<String, String>> = [(
            "cm".to_string(),
            [("k".to_string(), "v".to_string())].into(),
        )]
        .into();
        let context = Context {
            services: &[],
            allocatable: (2000, 1 << 30),
            node_name: "n",
            host_ip: "10.0.0.1",
            pod_ip: "",
            config_maps: &config_maps,
            secrets: &HashMap::new(),
        };
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let env = environment(&pod, container, &context).expect("env");
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CM_k"), Some("v"));
        assert_eq!(get("POD"), Some("p"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("GREETING"), Some("hi p"));
        assert_eq!(get("MEM"), Some("64"));
        assert_eq!(get("KEY"), Some("v"));
        let config = super::container(&pod, container, 2, &env, Vec::new());
        let resources = config.linux.and_then(|l| l.resources).expect("resources");
        assert_eq!(
            (
                resources.cpu_shares,
                resources.cpu_quota,
                resources.memory_limit_in_bytes
            ),
            (512, 50_000, 64 << 20)
        );
        assert_eq!(config.log_path, "c/2.log");
        let missing = Context {
            config_maps: &HashMap::new(),
            ..context
        };
        let err = environment(&pod, container, &missing).expect_err("no configmap");
        assert_eq!(err.to_string(), "configmap \"cm\" not found");
    }

    #[test]
    fn services_become_docker_link_variables() {
        let service: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "my-svc"},
                "spec": {"clusterIP": "10.0.0.11", "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP"},
                    {"port": 53, "protocol": "UDP"}]},
            }))
            .expect("service");
        let env = service_env(&service);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("MY_SVC_SERVICE_HOST"), Some("10.0.0.11"));
        assert_eq!(get("MY_SVC_SERVICE_PORT"), Some("80"));
        assert_eq!(get("MY_SVC_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(get("MY_SVC_PORT"), Some("tcp://10.0.0.11:80"));
        assert_eq!(get("MY_SVC_PORT_53_UDP_PROTO"), Some("udp"));
        assert_eq!(get("MY_SVC_PORT_53_UDP_ADDR"), Some("10.0.0.11"));
        let mut headless = service.clone();
        if let Some(spec) = headless.spec.as_mut() {
            spec.cluster_ip = Some("None".into());
        }
        assert!(service_env(&headless).is_empty());
    }
}
