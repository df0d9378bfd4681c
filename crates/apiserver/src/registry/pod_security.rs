//! PodSecurity admission, as upstream's built-in plugin: a namespace's
//! `pod-security.kubernetes.io/{enforce,warn,audit}` labels pick a level of the Pod
//! Security Standards (privileged, baseline, restricted); a pod that breaks the
//! `enforce` level is refused with upstream's message, one that breaks `warn` is
//! admitted with a warning, and workload templates (Deployments, Jobs, ...) only ever
//! get warnings. The checks and their wording are upstream's for `latest` (v1.32).
//! A pod breaking the `audit` level is noted in its request's audit event
//! (`pod-security.kubernetes.io/audit-violations`), as upstream.

use serde_json::Value;

use super::store::Registry;
use super::{Resource, builtin};
use crate::status::ApiError;

const LABEL: &str = "pod-security.kubernetes.io/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// One mode's level and version, as the namespace labels say (invalid values: enforce
/// fails closed to restricted, warn and audit open to privileged, as upstream).
fn policy(labels: &serde_json::Map<String, Value>, mode: &str) -> (Level, String) {
    let level = match labels
        .get(&format!("{LABEL}{mode}"))
        .and_then(Value::as_str)
    {
        None => Level::Privileged,
        Some(l) => Level::parse(l).unwrap_or(if mode == "enforce" {
            Level::Restricted
        } else {
            Level::Privileged
        }),
    };
    let version = labels
        .get(&format!("{LABEL}{mode}-version"))
        .and_then(Value::as_str)
        .filter(|v| *v == "latest" || valid_version(v))
        .unwrap_or("latest")
        .to_string();
    (level, version)
}

fn valid_version(v: &str) -> bool {
    v.strip_prefix("v1.").is_some_and(|minor| {
        !minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
            && (minor == "0" || !minor.starts_with('0'))
    })
}

/// Upstream's validation of the labels on a namespace.
pub(crate) fn check_namespace_labels(
    labels: &serde_json::Map<String, Value>,
) -> Vec<crate::status::FieldError> {
    let mut errors = Vec::new();
    for mode in ["enforce", "audit", "warn"] {
        let key = format!("{LABEL}{mode}");
        if let Some(v) = labels.get(&key).and_then(Value::as_str)
            && Level::parse(v).is_none()
        {
            errors.push(crate::status::FieldError::invalid(
                format!("metadata.labels[{key}]"),
                v,
                "must be one of privileged, baseline, restricted",
            ));
        }
        let key = format!("{LABEL}{mode}-version");
        if let Some(v) = labels.get(&key).and_then(Value::as_str)
            && v != "latest"
            && !valid_version(v)
        {
            errors.push(crate::status::FieldError::invalid(
                format!("metadata.labels[{key}]"),
                v,
                "must be \"latest\" or \"v1.x\"",
            ));
        }
    }
    errors
}

fn joined(names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    format!("\"{}\"", names.join("\", \""))
}

fn plural<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

/// `container "a"` / `containers "a", "b"`.
fn containers(names: &[String]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        joined(names)
    )
}

fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Every container with its name, in upstream's order.
fn all_containers(spec: &Value) -> Vec<(&str, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().into_iter().flatten())
        .map(|c| (c["name"].as_str().unwrap_or_default(), c))
        .collect()
}

type Failure = (&'static str, String);

/// "pod and containers "a", "b"": who set something.
fn setters(pod: bool, names: &[String]) -> String {
    let mut parts = Vec::new();
    if pod {
        parts.push("pod".to_string());
    }
    if !names.is_empty() {
        parts.push(containers(names));
    }
    parts.join(" and ")
}

fn host_namespaces(_: &Value, spec: &Value) -> Option<Failure> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec[**f] == Value::Bool(true))
        .map(|f| format!("{f}=true"))
        .collect();
    (!set.is_empty()).then(|| ("host namespaces", set.join(", ")))
}

fn privileged(_: &Value, spec: &Value) -> Option<Failure> {
    let bad: Vec<String> = all_containers(spec)
        .into_iter()
        .filter(|(_, c)| c["securityContext"]["privileged"] == Value::Bool(true))
        .map(|(n, _)| n.to_string())
        .collect();
    (!bad.is_empty()).then(|| {
        (
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                containers(&bad)
            ),
        )
    })
}

const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added_capabilities(c: &Value) -> Vec<String> {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn capabilities_baseline(_: &Value, spec: &Value) -> Option<Failure> {
    let mut names = Vec::new();
    let mut caps = Vec::new();
    for (name, c) in all_containers(spec) {
        let bad: Vec<String> = added_capabilities(c)
            .into_iter()
            .filter(|cap| !BASELINE_CAPABILITIES.contains(&cap.as_str()))
            .collect();
        if !bad.is_empty() {
            names.push(name.to_string());
            caps.extend(bad);
        }
    }
    (!names.is_empty()).then(|| {
        (
            "non-default capabilities",
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers(&names),
                joined(&sorted_unique(caps))
            ),
        )
    })
}

fn host_path_volumes(_: &Value, spec: &Value) -> Option<Failure> {
    let bad: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect();
    (!bad.is_empty()).then(|| {
        (
            "hostPath volumes",
            format!(
                "{} {}",
                plural("volume", "volumes", bad.len()),
                joined(&bad)
            ),
        )
    })
}

fn host_ports(_: &Value, spec: &Value) -> Option<Failure> {
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for (name, c) in all_containers(spec) {
        let mine: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64())
            .filter(|p| *p != 0)
            .map(|p| p.to_string())
            .collect();
        if !mine.is_empty() {
            names.push(name.to_string());
            ports.extend(mine);
        }
    }
    let ports = sorted_unique(ports);
    (!names.is_empty()).then(|| {
        (
            "hostPort",
            format!(
                "{} {} {} {}",
                containers(&names),
                plural("uses", "use", names.len()),
                plural("hostPort", "hostPorts", ports.len()),
                ports.join(", ")
            ),
        )
    })
}

fn app_armor(meta: &Value, spec: &Value) -> Option<Failure> {
    let ok_type = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut values = Vec::new();
    let pod_type = spec["securityContext"]["appArmorProfile"]["type"].as_str();
    let pod_bad = pod_type.is_some_and(|t| !ok_type(t));
    if let Some(t) = pod_type.filter(|t| !ok_type(t)) {
        values.push(t.to_string());
    }
    let mut names = Vec::new();
    for (name, c) in all_containers(spec) {
        if let Some(t) = c["securityContext"]["appArmorProfile"]["type"]
            .as_str()
            .filter(|t| !ok_type(t))
        {
            names.push(name.to_string());
            values.push(t.to_string());
        }
    }
    let mut annotations = Vec::new();
    for (key, value) in meta["annotations"].as_object().into_iter().flatten() {
        let value = value.as_str().unwrap_or_default();
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && !(value.is_empty() || value == "runtime/default" || value.starts_with("localhost/"))
        {
            annotations.push(format!("{key}={value:?}"));
        }
    }
    if !pod_bad && names.is_empty() && annotations.is_empty() {
        return None;
    }
    let mut who = setters(pod_bad, &names);
    if !annotations.is_empty() {
        let a = plural("annotation", "annotations", annotations.len()).to_string();
        who = if who.is_empty() {
            a
        } else {
            format!("{who} and {a}")
        };
    }
    annotations.sort();
    let mut all = sorted_unique(values);
    all.extend(annotations);
    Some((
        if all.len() == 1 {
            "forbidden AppArmor profile"
        } else {
            "forbidden AppArmor profiles"
        },
        format!(
            "{who} must not set AppArmor profile type to {}",
            joined(&all)
        ),
    ))
}

fn se_linux(_: &Value, spec: &Value) -> Option<Failure> {
    const TYPES: [&str; 5] = [
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    let mut types = Vec::new();
    let (mut user, mut role) = (false, false);
    let mut check = |o: &Value| -> bool {
        let mut bad = false;
        if let Some(t) = o["type"].as_str().filter(|t| !TYPES.contains(t)) {
            types.push(t.to_string());
            bad = true;
        }
        if o["user"].as_str().is_some_and(|u| !u.is_empty()) {
            user = true;
            bad = true;
        }
        if o["role"].as_str().is_some_and(|r| !r.is_empty()) {
            role = true;
            bad = true;
        }
        bad
    };
    let pod_bad = check(&spec["securityContext"]["seLinuxOptions"]);
    let names: Vec<String> = all_containers(spec)
        .into_iter()
        .filter(|(_, c)| check(&c["securityContext"]["seLinuxOptions"]))
        .map(|(n, _)| n.to_string())
        .collect();
    if !pod_bad && names.is_empty() {
        return None;
    }
    let types = sorted_unique(types);
    let mut notes = Vec::new();
    if !types.is_empty() {
        notes.push(format!(
            "{} {}",
            plural("type", "types", types.len()),
            joined(&types)
        ));
    }
    if user {
        notes.push("user may not be set".into());
    }
    if role {
        notes.push("role may not be set".into());
    }
    Some((
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters(pod_bad, &names),
            notes.join("; ")
        ),
    ))
}

fn proc_mount(_: &Value, spec: &Value) -> Option<Failure> {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (name, c) in all_containers(spec) {
        if let Some(v) = c["securityContext"]["procMount"]
            .as_str()
            .filter(|v| *v != "Default")
        {
            names.push(name.to_string());
            values.push(v.to_string());
        }
    }
    (!names.is_empty()).then(|| {
        (
            "procMount",
            format!(
                "{} must not set securityContext.procMount to {}",
                containers(&names),
                joined(&sorted_unique(values))
            ),
        )
    })
}

fn seccomp_types(spec: &Value) -> (Option<String>, Vec<(String, Option<String>)>) {
    let pod = spec["securityContext"]["seccompProfile"]["type"]
        .as_str()
        .map(str::to_string);
    let containers = all_containers(spec)
        .into_iter()
        .map(|(n, c)| {
            (
                n.to_string(),
                c["securityContext"]["seccompProfile"]["type"]
                    .as_str()
                    .map(str::to_string),
            )
        })
        .collect();
    (pod, containers)
}

fn seccomp_ok(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

/// Explicitly forbidden seccomp types (both levels).
fn seccomp_forbidden(spec: &Value) -> Option<Failure> {
    let (pod, containers) = seccomp_types(spec);
    let mut values = Vec::new();
    let pod_bad = pod.as_deref().is_some_and(|t| !seccomp_ok(t));
    if let Some(t) = pod.filter(|t| !seccomp_ok(t)) {
        values.push(t);
    }
    let mut names = Vec::new();
    for (name, t) in containers {
        if let Some(t) = t.filter(|t| !seccomp_ok(t)) {
            names.push(name);
            values.push(t);
        }
    }
    (pod_bad || !names.is_empty()).then(|| {
        (
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters(pod_bad, &names),
                joined(&sorted_unique(values))
            ),
        )
    })
}

fn seccomp_baseline(_: &Value, spec: &Value) -> Option<Failure> {
    seccomp_forbidden(spec)
}

fn seccomp_restricted(_: &Value, spec: &Value) -> Option<Failure> {
    if windows(spec) {
        return None;
    }
    if let Some(f) = seccomp_forbidden(spec) {
        return Some(f);
    }
    let (pod, containers) = seccomp_types(spec);
    if pod.is_some() {
        return None;
    }
    let missing: Vec<String> = containers
        .into_iter()
        .filter(|(_, t)| t.is_none())
        .map(|(n, _)| n)
        .collect();
    (!missing.is_empty()).then(|| {
        (
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&missing)
            ),
        )
    })
}

fn containers_phrase(names: &[String]) -> String {
    containers(names)
}

const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

fn sysctls(_: &Value, spec: &Value) -> Option<Failure> {
    let bad: Vec<String> = spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_string)
        .collect();
    (!bad.is_empty()).then(|| ("forbidden sysctls", bad.join(", ")))
}

fn host_process(_: &Value, spec: &Value) -> Option<Failure> {
    let set = |sc: &Value| sc["windowsOptions"]["hostProcess"] == Value::Bool(true);
    let pod = set(&spec["securityContext"]);
    let names: Vec<String> = all_containers(spec)
        .into_iter()
        .filter(|(_, c)| set(&c["securityContext"]))
        .map(|(n, _)| n.to_string())
        .collect();
    (pod || !names.is_empty()).then(|| {
        (
            "hostProcess",
            format!(
                "{} must not set securityContext.windowsOptions.hostProcess=true",
                setters(pod, &names)
            ),
        )
    })
}

fn windows(spec: &Value) -> bool {
    spec["os"]["name"] == "windows"
}

fn allow_privilege_escalation(_: &Value, spec: &Value) -> Option<Failure> {
    if windows(spec) {
        return None;
    }
    let bad: Vec<String> = all_containers(spec)
        .into_iter()
        .filter(|(_, c)| c["securityContext"]["allowPrivilegeEscalation"] != Value::Bool(false))
        .map(|(n, _)| n.to_string())
        .collect();
    (!bad.is_empty()).then(|| {
        (
            "allowPrivilegeEscalation != false",
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers(&bad)
            ),
        )
    })
}

fn capabilities_restricted(_: &Value, spec: &Value) -> Option<Failure> {
    if windows(spec) {
        return None;
    }
    let mut no_drop = Vec::new();
    let mut adds = Vec::new();
    let mut caps = Vec::new();
    for (name, c) in all_containers(spec) {
        let drops_all = c["securityContext"]["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "ALL"));
        if !drops_all {
            no_drop.push(name.to_string());
        }
        let bad: Vec<String> = added_capabilities(c)
            .into_iter()
            .filter(|cap| cap != "NET_BIND_SERVICE")
            .collect();
        if !bad.is_empty() {
            adds.push(name.to_string());
            caps.extend(bad);
        }
    }
    let mut parts = Vec::new();
    if !no_drop.is_empty() {
        parts.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers(&no_drop)
        ));
    }
    if !adds.is_empty() {
        parts.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers(&adds),
            joined(&sorted_unique(caps))
        ));
    }
    (!parts.is_empty()).then(|| ("unrestricted capabilities", parts.join("; ")))
}

fn restricted_volumes(_: &Value, spec: &Value) -> Option<Failure> {
    const ALLOWED: [&str; 9] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    const KNOWN: [&str; 21] = [
        "hostPath",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "nfs",
        "iscsi",
        "glusterfs",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "fc",
        "azureFile",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "portworxVolume",
        "scaleIO",
        "storageos",
    ];
    let mut names = Vec::new();
    let mut types = Vec::new();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let Some(fields) = volume.as_object() else {
            continue;
        };
        let set = |k: &str| fields.get(k).is_some_and(|v| !v.is_null());
        if ALLOWED.iter().any(|k| set(k)) {
            continue;
        }
        names.push(volume["name"].as_str().unwrap_or_default().to_string());
        types.push(
            KNOWN
                .iter()
                .find(|k| set(k))
                .map_or("unknown", |k| *k)
                .to_string(),
        );
    }
    let types = sorted_unique(types);
    (!names.is_empty()).then(|| {
        (
            "restricted volume types",
            format!(
                "{} {} {} {} {}",
                plural("volume", "volumes", names.len()),
                joined(&names),
                plural("uses", "use", names.len()),
                plural(
                    "restricted volume type",
                    "restricted volume types",
                    types.len()
                ),
                joined(&types)
            ),
        )
    })
}

fn run_as_non_root(_: &Value, spec: &Value) -> Option<Failure> {
    let pod = spec["securityContext"]["runAsNonRoot"].as_bool();
    let containers_list = all_containers(spec);
    let explicit: Vec<String> = containers_list
        .iter()
        .filter(|(_, c)| c["securityContext"]["runAsNonRoot"] == Value::Bool(false))
        .map(|(n, _)| n.to_string())
        .collect();
    if pod == Some(false) || !explicit.is_empty() {
        return Some((
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters(pod == Some(false), &explicit)
            ),
        ));
    }
    if pod == Some(true) {
        return None;
    }
    let unset: Vec<String> = containers_list
        .iter()
        .filter(|(_, c)| c["securityContext"]["runAsNonRoot"].is_null())
        .map(|(n, _)| n.to_string())
        .collect();
    (!unset.is_empty()).then(|| {
        (
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers(&unset)
            ),
        )
    })
}

fn run_as_user(_: &Value, spec: &Value) -> Option<Failure> {
    let pod = spec["securityContext"]["runAsUser"].as_i64() == Some(0);
    let names: Vec<String> = all_containers(spec)
        .into_iter()
        .filter(|(_, c)| c["securityContext"]["runAsUser"].as_i64() == Some(0))
        .map(|(n, _)| n.to_string())
        .collect();
    (pod || !names.is_empty()).then(|| {
        (
            "runAsUser=0",
            format!("{} must not set runAsUser=0", setters(pod, &names)),
        )
    })
}

type Check = fn(&Value, &Value) -> Option<Failure>;

/// The checks of a level, in upstream's order.
fn checks(level: Level) -> &'static [Check] {
    match level {
        Level::Privileged => &[],
        Level::Baseline => &[
            app_armor,
            capabilities_baseline,
            host_namespaces,
            host_path_volumes,
            host_ports,
            privileged,
            proc_mount,
            se_linux,
            seccomp_baseline,
            sysctls,
            host_process,
        ],
        Level::Restricted => &[
            app_armor,
            host_namespaces,
            host_ports,
            privileged,
            proc_mount,
            se_linux,
            sysctls,
            host_process,
            allow_privilege_escalation,
            capabilities_restricted,
            restricted_volumes,
            run_as_non_root,
            run_as_user,
            seccomp_restricted,
        ],
    }
}

/// What a pod (its metadata and spec) breaks at `level`: `reason (detail), ...`.
fn violations(level: Level, meta: &Value, spec: &Value) -> Option<String> {
    let failures: Vec<String> = checks(level)
        .iter()
        .filter_map(|check| check(meta, spec))
        .map(|(reason, detail)| {
            if detail.is_empty() {
                reason.to_string()
            } else {
                format!("{reason} ({detail})")
            }
        })
        .collect();
    (!failures.is_empty()).then(|| failures.join(", "))
}

/// Whether an update changes what PodSecurity looks at (upstream's
/// isSignificantPodUpdate: images, the containers' number, seccomp annotations).
fn significant(new: &Value, old: &Value) -> bool {
    let seccomp = |v: &Value, key: &str| v["metadata"]["annotations"][key].clone();
    if seccomp(new, "seccomp.security.alpha.kubernetes.io/pod")
        != seccomp(old, "seccomp.security.alpha.kubernetes.io/pod")
    {
        return true;
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let (a, b) = (
            new["spec"][list].as_array().cloned().unwrap_or_default(),
            old["spec"][list].as_array().cloned().unwrap_or_default(),
        );
        if a.len() != b.len() {
            return true;
        }
        for (x, y) in a.iter().zip(&b) {
            let key = format!(
                "container.seccomp.security.alpha.kubernetes.io/{}",
                x["name"].as_str().unwrap_or_default()
            );
            if x["image"] != y["image"] || seccomp(new, &key) != seccomp(old, &key) {
                return true;
            }
        }
    }
    false
}

/// The pod template of a workload kind, if `r` is one.
fn template<'a>(r: &Resource, obj: &'a Value) -> Option<&'a Value> {
    match (r.group, r.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => obj.pointer("/spec/template"),
        ("", "PodTemplate") => obj.get("template"),
        ("batch", "CronJob") => obj.pointer("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

impl Registry {
    /// PodSecurity for a write of `obj` (`old`: the stored object of an update):
    /// refuses a pod that breaks the namespace's enforce level; the warnings for its
    /// warn level (pods and workload templates), and the audit annotations for its
    /// audit level and the enforce policy it was checked against (pods).
    pub(crate) async fn admit_pod_security(
        &self,
        r: &Resource,
        ns: &str,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<(Vec<String>, Vec<(String, String)>), ApiError> {
        let is_pod = r.group.is_empty() && r.kind == "Pod";
        let (meta, spec) = if is_pod {
            (&obj["metadata"], &obj["spec"])
        } else {
            match template(r, obj) {
                Some(t) => (&t["metadata"], &t["spec"]),
                None => return Ok((Vec::new(), Vec::new())),
            }
        };
        if let Some(old) = old {
            let unchanged = if is_pod {
                !significant(obj, old)
            } else {
                template(r, old) == template(r, obj)
            };
            if unchanged {
                return Ok((Vec::new(), Vec::new()));
            }
        }
        let namespaces = builtin("", "v1", "namespaces")?;
        let labels = match self.get(namespaces, None, ns).await {
            Ok(namespace) => namespace["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            Err(e) if e.code == 404 => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(e),
        };
        let (enforce, enforce_version) = policy(&labels, "enforce");
        if is_pod && let Some(why) = violations(enforce, meta, spec) {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            return Err(crate::authz::forbidden_error(
                "",
                "pods",
                name,
                &format!(
                    "violates PodSecurity \"{}:{enforce_version}\": {why}",
                    enforce.name()
                ),
            ));
        }
        let mut audit = Vec::new();
        if is_pod {
            audit.push((
                "pod-security.kubernetes.io/enforce-policy".to_string(),
                format!("{}:{enforce_version}", enforce.name()),
            ));
        }
        let (audited, audit_version) = policy(&labels, "audit");
        if let Some(why) = violations(audited, meta, spec) {
            audit.push((
                "pod-security.kubernetes.io/audit-violations".to_string(),
                format!(
                    "would violate PodSecurity \"{}:{audit_version}\": {why}",
                    audited.name()
                ),
            ));
        }
        let (warn, warn_version) = policy(&labels, "warn");
        let warnings = violations(warn, meta, spec)
            .map(|why| {
                vec![format!(
                    "would violate PodSecurity \"{}:{warn_version}\": {why}",
                    warn.name()
                )]
            })
            .unwrap_or_default();
        Ok((warnings, audit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn restricted(spec: Value) -> Option<String> {
        violations(Level::Restricted, &json!({}), &spec)
    }

    #[test]
    fn restricted_wants_everything_spelled_out() {
        let spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        assert_eq!(
            restricted(spec).as_deref(),
            Some(
                "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            )
        );
        let good = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        });
        assert_eq!(restricted(good), None);
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN", "CHOWN", "NET_ADMIN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 10080}]},
                {"name": "b", "securityContext": {"privileged": true}},
            ],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
        });
        assert_eq!(
            violations(Level::Baseline, &json!({}), &spec).as_deref(),
            Some(
                "non-default capabilities (container \"a\" must not include \"NET_ADMIN\", \"SYS_ADMIN\" in securityContext.capabilities.add), host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume \"root\"), hostPort (container \"a\" uses hostPorts 10080, 8080), privileged (containers \"a\", \"b\" must not set securityContext.privileged=true), forbidden sysctls (kernel.msgmax)"
            )
        );
        assert_eq!(violations(Level::Privileged, &json!({}), &spec), None);
    }

    #[test]
    fn labels_pick_levels_and_bad_values_fail_closed() {
        let labels = |pairs: &[(&str, &str)]| -> serde_json::Map<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect()
        };
        assert_eq!(
            policy(&labels(&[]), "enforce"),
            (Level::Privileged, "latest".into())
        );
        let l = labels(&[
            ("pod-security.kubernetes.io/enforce", "nonsense"),
            ("pod-security.kubernetes.io/warn", "nonsense"),
            ("pod-security.kubernetes.io/warn-version", "v1.30"),
        ]);
        assert_eq!(policy(&l, "enforce").0, Level::Restricted);
        assert_eq!(policy(&l, "warn"), (Level::Privileged, "v1.30".into()));
        let errors = check_namespace_labels(&l);
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0]
                .message
                .contains("must be one of privileged, baseline, restricted")
        );
    }
}
