//! What each node's pods refer to, for the Node authorizer: upstream's authorization
//! graph in its simplest form. Every pod bound to a node contributes edges from the
//! node to the secrets, configmaps, persistent volume claims and service account it
//! uses; a claim bound to a volume extends the edge to that PersistentVolume. Fed by
//! watches of pods and claims through the watch cache, like the RBAC index.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use skiff_storage::KeyValue;

use crate::registry::watch_cache::WatchCache;

/// An object a node may read because one of its pods uses it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Ref {
    Secret(String, String),
    ConfigMap(String, String),
    Claim(String, String),
    ServiceAccount(String, String),
    Volume(String),
}

#[derive(Default)]
struct Edges {
    /// pod (namespace, name) → its node and what it refers to.
    pods: HashMap<(String, String), (String, Vec<Ref>)>,
    /// (node, object) → how many of the node's pods refer to it.
    refs: HashMap<(String, Ref), usize>,
    /// claim (namespace, name) → the volume it is bound to.
    claims: HashMap<(String, String), String>,
}

pub(crate) struct Graph {
    edges: RwLock<Edges>,
}

impl Graph {
    /// Starts following pods and claims; returns once both are loaded.
    pub(crate) async fn start(cache: Arc<WatchCache>) -> Arc<Graph> {
        let graph = Arc::new(Graph {
            edges: RwLock::new(Edges::default()),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(2);
        for plural in ["pods", "persistentvolumeclaims"] {
            if let Some(r) = crate::registry::find("", "v1", plural) {
                tokio::spawn(follow(
                    graph.clone(),
                    cache.clone(),
                    r.key_prefix(None),
                    plural == "pods",
                    tx.clone(),
                ));
            }
        }
        drop(tx);
        for _ in 0..2 {
            if rx.recv().await.is_none() {
                break;
            }
        }
        graph
    }

    /// Whether a pod bound to `node` refers to `object` (for a volume: through a claim).
    pub(crate) fn related(&self, node: &str, object: &Ref) -> bool {
        let edges = self.edges.read().unwrap_or_else(|e| e.into_inner());
        if let Ref::Volume(volume) = object {
            return edges.claims.iter().any(|((ns, claim), bound)| {
                bound == volume
                    && edges
                        .refs
                        .contains_key(&(node.to_string(), Ref::Claim(ns.clone(), claim.clone())))
            });
        }
        edges.refs.contains_key(&(node.to_string(), object.clone()))
    }

    fn set_pod(&self, key: (String, String), pod: Option<&Value>) {
        let mut edges = self.edges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((node, refs)) = edges.pods.remove(&key) {
            for r in refs {
                let entry = (node.clone(), r);
                if let Some(n) = edges.refs.get_mut(&entry) {
                    *n -= 1;
                    if *n == 0 {
                        edges.refs.remove(&entry);
                    }
                }
            }
        }
        let Some(pod) = pod else {
            return;
        };
        let Some(node) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        let refs = references(&key.0, pod);
        for r in &refs {
            *edges.refs.entry((node.to_string(), r.clone())).or_default() += 1;
        }
        edges.pods.insert(key, (node.to_string(), refs));
    }

    fn set_claim(&self, key: (String, String), claim: Option<&Value>) {
        let mut edges = self.edges.write().unwrap_or_else(|e| e.into_inner());
        match claim
            .and_then(|c| c.pointer("/spec/volumeName"))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
        {
            Some(volume) => {
                edges.claims.insert(key, volume.to_string());
            }
            None => {
                edges.claims.remove(&key);
            }
        }
    }

    fn reset(&self, pods: bool) {
        let mut edges = self.edges.write().unwrap_or_else(|e| e.into_inner());
        if pods {
            edges.pods.clear();
            edges.refs.clear();
        } else {
            edges.claims.clear();
        }
    }
}

/// What a pod uses: its service account, image pull secrets, volumes (secret,
/// configMap, projected, claims, ephemeral claims) and env/envFrom references.
fn references(ns: &str, pod: &Value) -> Vec<Ref> {
    let spec = &pod["spec"];
    let mut refs = Vec::new();
    let name = |v: &Value, field: &str| {
        v.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let account = name(spec, "serviceAccountName").unwrap_or_else(|| "default".into());
    refs.push(Ref::ServiceAccount(ns.into(), account));
    for secret in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        if let Some(n) = name(secret, "name") {
            refs.push(Ref::Secret(ns.into(), n));
        }
    }
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(n) = name(&volume["secret"], "secretName") {
            refs.push(Ref::Secret(ns.into(), n));
        }
        if let Some(n) = name(&volume["configMap"], "name") {
            refs.push(Ref::ConfigMap(ns.into(), n));
        }
        if let Some(n) = name(&volume["persistentVolumeClaim"], "claimName") {
            refs.push(Ref::Claim(ns.into(), n));
        }
        if volume.get("ephemeral").is_some_and(Value::is_object)
            && let Some(v) = name(volume, "name")
        {
            refs.push(Ref::Claim(ns.into(), format!("{pod_name}-{v}")));
        }
        for source in volume
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = name(&source["secret"], "name") {
                refs.push(Ref::Secret(ns.into(), n));
            }
            if let Some(n) = name(&source["configMap"], "name") {
                refs.push(Ref::ConfigMap(ns.into(), n));
            }
        }
        for (kind, field) in [
            ("cephfs", "secretRef"),
            ("rbd", "secretRef"),
            ("csi", "nodePublishSecretRef"),
        ] {
            if let Some(n) = volume
                .get(kind)
                .map(|v| &v[field])
                .and_then(|r| name(r, "name"))
            {
                refs.push(Ref::Secret(ns.into(), n));
            }
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in spec[list].as_array().into_iter().flatten() {
            for env in container["env"].as_array().into_iter().flatten() {
                if let Some(n) = name(&env["valueFrom"]["secretKeyRef"], "name") {
                    refs.push(Ref::Secret(ns.into(), n));
                }
                if let Some(n) = name(&env["valueFrom"]["configMapKeyRef"], "name") {
                    refs.push(Ref::ConfigMap(ns.into(), n));
                }
            }
            for from in container["envFrom"].as_array().into_iter().flatten() {
                if let Some(n) = name(&from["secretRef"], "name") {
                    refs.push(Ref::Secret(ns.into(), n));
                }
                if let Some(n) = name(&from["configMapRef"], "name") {
                    refs.push(Ref::ConfigMap(ns.into(), n));
                }
            }
        }
    }
    refs.sort_by_key(|r| format!("{r:?}"));
    refs.dedup();
    refs
}

/// `/registry/pods/NS/NAME` → (NS, NAME).
fn key_of(kv: &KeyValue) -> Option<(String, String)> {
    let key = std::str::from_utf8(&kv.key).ok()?;
    let mut parts = key.rsplit('/');
    let name = parts.next()?.to_string();
    let ns = parts.next()?.to_string();
    Some((ns, name))
}

async fn follow(
    graph: Arc<Graph>,
    cache: Arc<WatchCache>,
    prefix: String,
    pods: bool,
    loaded: tokio::sync::mpsc::Sender<()>,
) {
    let apply = |kv: &KeyValue, deleted: bool| {
        let Some(key) = key_of(kv) else {
            return;
        };
        let value: Option<Value> = if deleted {
            None
        } else {
            serde_json::from_slice(&kv.value).ok()
        };
        if pods {
            graph.set_pod(key, value.as_ref());
        } else {
            graph.set_claim(key, value.as_ref());
        }
    };
    let mut loaded = Some(loaded);
    super::follow(cache, prefix, |change| match change {
        super::Change::Snapshot(kvs, _) => {
            graph.reset(pods);
            for kv in kvs {
                apply(kv, false);
            }
            if let Some(tx) = loaded.take() {
                let _ = tx.try_send(());
            }
        }
        super::Change::Put(kv) => apply(kv, false),
        super::Change::Deleted(kv) => apply(kv, true),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_relates_its_node_to_what_it_uses() {
        let graph = Graph {
            edges: RwLock::new(Edges::default()),
        };
        let pod = json!({"metadata": {"name": "web"}, "spec": {
            "nodeName": "n1",
            "serviceAccountName": "robot",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "tls"}},
                {"name": "b", "projected": {"sources": [{"configMap": {"name": "settings"}}]}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
            ],
            "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}]}],
        }});
        graph.set_pod(("ns".into(), "web".into()), Some(&pod));
        graph.set_claim(
            ("ns".into(), "data".into()),
            Some(&json!({"spec": {"volumeName": "pv1"}})),
        );
        let s = |n: &str| Ref::Secret("ns".into(), n.into());
        for r in [
            s("pull"),
            s("tls"),
            s("db"),
            Ref::ConfigMap("ns".into(), "settings".into()),
            Ref::ServiceAccount("ns".into(), "robot".into()),
            Ref::Volume("pv1".into()),
        ] {
            assert!(graph.related("n1", &r), "{r:?}");
            assert!(!graph.related("n2", &r), "{r:?}");
        }
        assert!(!graph.related("n1", &s("other")));
        assert!(!graph.related("n1", &Ref::Secret("elsewhere".into(), "tls".into())));
        // The pod goes: so do its edges.
        graph.set_pod(("ns".into(), "web".into()), None);
        assert!(!graph.related("n1", &s("tls")));
    }
}
