//! Pod defaulting: the values upstream fills in when a client leaves a field out
//! (k8s.io/kubernetes `pkg/apis/core/v1/defaults.go`), shared by the API server (on
//! every write) and the kubelet (static pods from manifest files, which never pass
//! through the API server first).

use serde_json::{Value, json};

/// Sets `obj[path]` when it is missing.
pub fn set(obj: &mut Value, pointer: &str, value: Value) {
    if obj.pointer(pointer).is_some() {
        return;
    }
    let mut at = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !at.is_object() {
            return;
        }
        if i == parts.len() - 1 {
            at[*part] = value;
            return;
        }
        if at.get(*part).is_none() {
            at[*part] = json!({});
        }
        at = &mut at[*part];
    }
}

pub fn pod(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec") {
        pod_spec(spec);
        default_toleration_seconds(spec);
    }
    set(obj, "/status/phase", json!("Pending"));
}

/// `SetDefaults_PodSpec` and `SetDefaults_Container`, for pods and pod templates.
pub fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "/restartPolicy", json!("Always"));
    set(spec, "/dnsPolicy", json!("ClusterFirst"));
    set(spec, "/schedulerName", json!("default-scheduler"));
    set(spec, "/terminationGracePeriodSeconds", json!(30));
    set(spec, "/securityContext", json!({}));
    set(spec, "/enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter(|c| c.is_object()) {
            set(c, "/terminationMessagePath", json!("/dev/termination-log"));
            set(c, "/terminationMessagePolicy", json!("File"));
            set(c, "/resources", json!({}));
            let policy = image_pull_policy(c.get("image").and_then(Value::as_str).unwrap_or(""));
            set(c, "/imagePullPolicy", json!(policy));
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut().filter(|p| p.is_object()) {
                    set(port, "/protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Upstream's DefaultTolerationSeconds admission: a pod stays 300 s on a node that is
/// not ready or unreachable before it is evicted, unless it says otherwise.
pub fn default_toleration_seconds(spec: &mut Value) {
    let Some(map) = spec.as_object_mut() else {
        return;
    };
    let tolerations = map.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let t_key = t.get("key").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute")
                && (t_key == key || (t_key.is_empty() && exists))
        });
        if !tolerated {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// `Always` for `:latest` or untagged images (they move), `IfNotPresent` otherwise.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    match name.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}
