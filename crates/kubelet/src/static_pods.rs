//! Static pods: pods the kubelet runs from manifest files in a directory
//! (`--pod-manifest-path`) with no scheduler involved, as upstream's file source does.
//! Each file (YAML or JSON, hidden files skipped) holds one Pod; it is defaulted as the
//! API server would, named `<name>-<node>`, bound to this node, given a uid that is the
//! hash of the file (an edit makes a new pod) and a toleration of every NoExecute taint.
//!
//! The API sees a static pod through its mirror pod: a copy carrying the
//! `kubernetes.io/config.mirror` annotation, owned by the Node, which receives the
//! static pod's status. The mirror is only a reflection: deleting it does not stop the
//! pod (the kubelet makes a new one), and a mirror whose static pod is gone is deleted.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";

/// Manifests larger than this are not pods.
const MAX_MANIFEST: u64 = 1 << 20;

/// The static pod a mirror pod reflects (its config hash), if it is one.
pub fn mirror_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_MIRROR)
        .map(String::as_str)
}

/// The static pods the directory describes, by uid. Files that are not valid pods are
/// skipped (and logged once per content). `None` when the directory cannot be read
/// (a missing one has no pods): the pods keep running as they are.
pub fn read(
    dir: &Path,
    node: &str,
    warned: &mut std::collections::HashSet<String>,
) -> Option<HashMap<String, Pod>> {
    let mut pods = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(pods),
        Err(e) => {
            if warned.insert(format!("{}:{e}", dir.display())) {
                tracing::warn!(dir = %dir.display(), error = %e, "reading static pod manifests");
            }
            return None;
        }
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        let small = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= MAX_MANIFEST);
        if hidden || !small {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match parse(&text, node) {
            Ok(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let taken = pods.values().any(|p: &Pod| {
                    p.metadata.name == pod.metadata.name
                        && p.metadata.namespace == pod.metadata.namespace
                });
                if taken {
                    if warned.insert(format!("{}:{uid}", path.display())) {
                        tracing::warn!(file = %path.display(), "static pod manifest names a pod another manifest already has; ignored");
                    }
                    continue;
                }
                pods.insert(uid, pod);
            }
            Err(e) => {
                if warned.insert(format!("{}:{}", path.display(), digest(&text))) {
                    tracing::warn!(file = %path.display(), error = %e, "static pod manifest ignored");
                }
            }
        }
    }
    Some(pods)
}

fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One manifest as the pod this node runs.
pub fn parse(text: &str, node: &str) -> Result<Pod, String> {
    let mut value: Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if value["kind"] != "Pod" || value["apiVersion"] != "v1" {
        return Err("not a v1 Pod".into());
    }
    if !value["metadata"].is_object() || !value["spec"].is_object() {
        return Err("metadata and spec must be objects".into());
    }
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    let uid = value["metadata"]["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(String::from)
        .unwrap_or_else(|| digest(&format!("{text}\n{node}\nfile")));
    value["metadata"]["name"] = json!(format!("{name}-{}", node.to_lowercase()));
    if value["metadata"]["namespace"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        value["metadata"]["namespace"] = json!("default");
    }
    value["metadata"]["uid"] = json!(uid);
    let annotations = &mut value["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[CONFIG_HASH] = json!(uid);
    annotations[CONFIG_SOURCE] = json!("file");
    skiff_api::defaults::pod(&mut value);
    let spec = &mut value["spec"];
    spec["nodeName"] = json!(node);
    if let Some(tolerations) = spec["tolerations"].as_array_mut()
        && !tolerations.iter().any(|t| {
            t["operator"] == "Exists" && t["effect"] == "NoExecute" && t.get("key").is_none()
        })
    {
        tolerations.push(json!({"operator": "Exists", "effect": "NoExecute"}));
    }
    value["status"] = json!({"phase": "Pending"});
    serde_json::from_value(value).map_err(|e| format!("not a valid pod: {e}"))
}

/// The mirror pod the API should hold for `pod`: a copy without uid or status, marked
/// and owned by the Node.
fn mirror(pod: &Pod, node: &str, node_uid: &str) -> Result<Pod, String> {
    let mut value = serde_json::to_value(pod).map_err(|e| e.to_string())?;
    let hash = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(meta) = value["metadata"].as_object_mut() {
        meta.remove("uid");
        meta.remove("resourceVersion");
        meta.remove("creationTimestamp");
    }
    value["metadata"]["annotations"][CONFIG_MIRROR] = json!(hash);
    value["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": true,
    }]);
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Makes the API's mirror pods match the static pods: a missing or outdated mirror is
/// (re)created, a mirror being deleted is deleted at once (and made again next time),
/// a mirror of a static pod that is gone is deleted.
pub async fn reconcile(
    client: &kube::Client,
    node: &str,
    node_uid: &str,
    statics: &HashMap<String, Pod>,
    mirrors: &HashMap<(String, String), Pod>,
    held: &std::collections::HashSet<(String, String)>,
) {
    // Names freed now are taken again in a later round, not this one.
    let mut deleted = std::collections::HashSet::new();
    for ((namespace, name), existing) in mirrors {
        let hash = mirror_of(existing).unwrap_or_default();
        let wanted = statics.get(hash).is_some_and(|p| {
            p.metadata.name.as_deref() == Some(name.as_str())
                && p.metadata.namespace.as_deref() == Some(namespace.as_str())
        });
        if !wanted || existing.metadata.deletion_timestamp.is_some() {
            delete(client, namespace, name, existing.metadata.uid.clone()).await;
            deleted.insert((namespace.clone(), name.clone()));
        }
    }
    for (uid, pod) in statics {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let current = mirrors
            .get(&(namespace.clone(), name.clone()))
            .is_some_and(|m| {
                mirror_of(m) == Some(uid.as_str()) && m.metadata.deletion_timestamp.is_none()
            });
        let at = (namespace.clone(), name.clone());
        if current || held.contains(&at) || deleted.contains(&at) {
            continue;
        }
        let mirror = match mirror(pod, node, node_uid) {
            Ok(mirror) => mirror,
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "building the mirror pod");
                continue;
            }
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        match pods.create(&PostParams::default(), &mirror).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), "created the mirror pod of a static pod")
            }
            // The old mirror is still going or another round made it (the next round
            // looks again), or a pod that is no mirror of ours has the name.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let theirs = pods.get_opt(&name).await.ok().flatten();
                if theirs.is_some_and(|p| mirror_of(&p).is_none()) {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), "a pod that is not a mirror has this static pod's name; no mirror pod");
                }
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "creating a mirror pod")
            }
        }
    }
}

async fn delete(client: &kube::Client, namespace: &str, name: &str, uid: Option<String>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => tracing::info!(pod = %format!("{namespace}/{name}"), "deleted a mirror pod"),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(e) => {
            tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "deleting a mirror pod")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: busybox}]\n";

    #[test]
    fn a_manifest_becomes_this_nodes_pod() {
        let pod = parse(MANIFEST, "Node-1").expect("pod");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().expect("uid");
        assert_eq!(uid.len(), 32);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get(CONFIG_HASH), Some(&uid));
        assert_eq!(
            annotations.get(CONFIG_SOURCE).map(String::as_str),
            Some("file")
        );
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert!(spec.tolerations.unwrap_or_default().iter().any(|t| {
            t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some("NoExecute")
                && t.key.is_none()
        }));
        // The same file is the same pod; another file (or node) another.
        assert_eq!(
            parse(MANIFEST, "Node-1").expect("pod").metadata.uid,
            Some(uid.clone())
        );
        let edited = MANIFEST.replace("busybox", "busybox:2");
        assert_ne!(
            parse(&edited, "Node-1").expect("pod").metadata.uid,
            Some(uid.clone())
        );
        assert_ne!(
            parse(MANIFEST, "node-2").expect("pod").metadata.uid,
            Some(uid)
        );
    }

    #[test]
    fn what_is_not_a_pod_is_refused() {
        assert!(
            parse(
                "kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n",
                "n"
            )
            .is_err()
        );
        assert!(
            parse(
                "apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: []}\n",
                "n"
            )
            .is_err()
        );
        assert!(parse(": not yaml : [", "n").is_err());
        assert!(
            parse(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 3}\n",
                "n"
            )
            .is_err()
        );
        for spec in ["3", "[]", "x"] {
            let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec: {spec}\n");
            assert!(parse(&text, "n").is_err(), "{text}");
        }
        assert!(parse("apiVersion: v1\nkind: Pod\nmetadata: 3\nspec: {}\n", "n").is_err());
    }

    #[test]
    fn the_mirror_is_marked_and_owned_by_the_node() {
        let pod = parse(MANIFEST, "n").expect("pod");
        let hash = pod.metadata.uid.clone();
        let mirror = mirror(&pod, "n", "node-uid").expect("mirror");
        assert_eq!(mirror.metadata.uid, None);
        assert_eq!(mirror_of(&mirror), hash.as_deref());
        let owner = &mirror.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", "node-uid")
        );
        assert!(mirror.status.is_none());
    }
}
