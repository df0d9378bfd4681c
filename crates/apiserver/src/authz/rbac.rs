//! The RBAC authorizer: Roles, ClusterRoles and their bindings, held in memory and kept
//! current by watching them through the watch cache (upstream's informers), so a
//! decision costs no datastore read. A request is allowed when a ClusterRoleBinding, or
//! a RoleBinding in the request's namespace, binds the user (by name, group or service
//! account) to a role with a rule that allows it.
//!
//! Writes to RBAC objects through this server wait until the index has seen them, so a
//! binding is in force once its create returns (read-your-writes on one server; other
//! API servers catch up within a watch round trip, as upstream's do).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use skiff_storage::{EventKind, KeyRange, KeyValue, Revision};
use tokio::sync::watch;

use super::{Attributes, rules};
use crate::authn::UserInfo;
use crate::registry::watch_cache::{From, WatchCache};
use crate::registry::{self, Resource};

pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";
/// The four kinds, in the order of [`Index::revisions`].
pub(crate) const KINDS: [&str; 4] = [
    "clusterroles",
    "roles",
    "clusterrolebindings",
    "rolebindings",
];

#[derive(Clone, Debug)]
struct Binding {
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

#[derive(Default)]
struct Objects {
    cluster_roles: HashMap<String, Arc<[PolicyRule]>>,
    /// (namespace, name)
    roles: HashMap<(String, String), Arc<[PolicyRule]>>,
    cluster_bindings: BTreeMap<String, Binding>,
    /// namespace → name → binding
    bindings: HashMap<String, BTreeMap<String, Binding>>,
}

/// The RBAC objects as last seen.
pub(crate) struct Index {
    objects: RwLock<Objects>,
    /// The last revision applied, per kind of [`KINDS`].
    revisions: [watch::Sender<Revision>; 4],
}

/// Rules that apply to a user, with the problems met gathering them (a binding to a
/// role that does not exist).
pub(crate) struct Gathered {
    pub rules: Vec<PolicyRule>,
    pub errors: Vec<String>,
}

impl Index {
    /// Starts following the RBAC kinds; returns once every kind is loaded.
    pub(crate) async fn start(cache: Arc<WatchCache>) -> Arc<Index> {
        let index = Arc::new(Index {
            objects: RwLock::new(Objects::default()),
            revisions: std::array::from_fn(|_| watch::channel(0).0),
        });
        for (i, plural) in KINDS.iter().enumerate() {
            let Some(r) = registry::find(GROUP, "v1", plural) else {
                continue;
            };
            tokio::spawn(follow(index.clone(), cache.clone(), r, i));
        }
        for tx in &index.revisions {
            let mut rx = tx.subscribe();
            let _ = rx.wait_for(|rev| *rev > 0).await;
        }
        index
    }

    /// Waits (a few seconds at most) until the index has applied `revision` of `plural`.
    pub(crate) async fn caught_up(&self, plural: &str, revision: Revision) {
        let Some(i) = KINDS.iter().position(|k| *k == plural) else {
            return;
        };
        let mut rx = self.revisions[i].subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a rule bound to `user` allows the request; why not otherwise (roles
    /// that bindings name but that do not exist).
    pub(crate) fn allows(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
        let objects = self.read();
        let mut errors = Vec::new();
        let namespace = attrs.namespace();
        let found = objects.visit(user, namespace, &mut errors, &mut |rule| {
            rules::allows(rule, attrs)
        });
        if found {
            Ok(())
        } else if errors.is_empty() {
            Err(String::new())
        } else {
            Err(format!("RBAC: [{}]", errors.join(", ")))
        }
    }

    /// Every rule bound to `user` in `namespace` (and cluster-wide).
    pub(crate) fn rules_for(&self, user: &UserInfo, namespace: &str) -> Gathered {
        let objects = self.read();
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        objects.visit(user, namespace, &mut errors, &mut |rule| {
            rules.push(rule.clone());
            false
        });
        Gathered { rules, errors }
    }

    /// The rules of the role a binding refers to, in `namespace` for a Role.
    pub(crate) fn role_rules(
        &self,
        role_ref: &RoleRef,
        namespace: &str,
    ) -> Option<Arc<[PolicyRule]>> {
        self.read().role(role_ref, namespace)
    }

    fn apply(&self, kind: usize, kv: &KeyValue, deleted: bool) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        objects.apply(kind, &kv.key, (!deleted).then_some(&kv.value[..]));
    }

    fn reset(&self, kind: usize, kvs: &[KeyValue]) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        match kind {
            0 => objects.cluster_roles.clear(),
            1 => objects.roles.clear(),
            2 => objects.cluster_bindings.clear(),
            _ => objects.bindings.clear(),
        }
        for kv in kvs {
            objects.apply(kind, &kv.key, Some(&kv.value[..]));
        }
    }
}

/// `.../NAME` or `.../NS/NAME` at the end of a key.
fn key_parts(key: &[u8], namespaced: bool) -> Option<(String, String)> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.rsplit('/');
    let name = parts.next()?.to_string();
    let ns = if namespaced {
        parts.next()?.to_string()
    } else {
        String::new()
    };
    Some((ns, name))
}

impl Objects {
    fn apply(&mut self, kind: usize, key: &[u8], value: Option<&[u8]>) {
        let Some((ns, name)) = key_parts(key, kind % 2 == 1) else {
            return;
        };
        let rules_of = |rules: Option<Vec<PolicyRule>>| -> Arc<[PolicyRule]> {
            rules.unwrap_or_default().into()
        };
        match (kind, value) {
            (0, Some(v)) => match serde_json::from_slice::<ClusterRole>(v) {
                Ok(role) => {
                    self.cluster_roles.insert(name, rules_of(role.rules));
                }
                Err(e) => tracing::warn!(%name, error = %e, "an unreadable ClusterRole"),
            },
            (0, None) => {
                self.cluster_roles.remove(&name);
            }
            (1, Some(v)) => match serde_json::from_slice::<Role>(v) {
                Ok(role) => {
                    self.roles.insert((ns, name), rules_of(role.rules));
                }
                Err(e) => tracing::warn!(%name, error = %e, "an unreadable Role"),
            },
            (1, None) => {
                self.roles.remove(&(ns, name));
            }
            (2, Some(v)) => match serde_json::from_slice::<ClusterRoleBinding>(v) {
                Ok(b) => {
                    self.cluster_bindings.insert(
                        name,
                        Binding {
                            role_ref: b.role_ref,
                            subjects: b.subjects.unwrap_or_default(),
                        },
                    );
                }
                Err(e) => tracing::warn!(%name, error = %e, "an unreadable ClusterRoleBinding"),
            },
            (2, None) => {
                self.cluster_bindings.remove(&name);
            }
            (_, Some(v)) => match serde_json::from_slice::<RoleBinding>(v) {
                Ok(b) => {
                    self.bindings.entry(ns).or_default().insert(
                        name,
                        Binding {
                            role_ref: b.role_ref,
                            subjects: b.subjects.unwrap_or_default(),
                        },
                    );
                }
                Err(e) => tracing::warn!(%name, error = %e, "an unreadable RoleBinding"),
            },
            (_, None) => {
                if let Some(in_ns) = self.bindings.get_mut(&ns) {
                    in_ns.remove(&name);
                    if in_ns.is_empty() {
                        self.bindings.remove(&ns);
                    }
                }
            }
        }
    }

    fn role(&self, role_ref: &RoleRef, namespace: &str) -> Option<Arc<[PolicyRule]>> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&role_ref.name).cloned(),
            "Role" if !namespace.is_empty() => self
                .roles
                .get(&(namespace.to_string(), role_ref.name.clone()))
                .cloned(),
            _ => None,
        }
    }

    /// Upstream's VisitRulesFor: every rule bound to `user`, cluster bindings first,
    /// then the namespace's; stops when `visit` returns true.
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        errors: &mut Vec<String>,
        visit: &mut dyn FnMut(&PolicyRule) -> bool,
    ) -> bool {
        let mut each = |binding: &Binding, ns: &str, errors: &mut Vec<String>| -> bool {
            if !binding.subjects.iter().any(|s| applies_to(s, user, ns)) {
                return false;
            }
            match self.role(&binding.role_ref, ns) {
                Some(rules) => rules.iter().any(&mut *visit),
                None => {
                    let kind = binding.role_ref.kind.to_lowercase();
                    errors.push(format!(
                        "{kind}.{GROUP} \"{}\" not found",
                        binding.role_ref.name
                    ));
                    false
                }
            }
        };
        for binding in self.cluster_bindings.values() {
            if each(binding, "", errors) {
                return true;
            }
        }
        if !namespace.is_empty()
            && let Some(in_ns) = self.bindings.get(namespace)
        {
            for binding in in_ns.values() {
                if each(binding, namespace, errors) {
                    return true;
                }
            }
        }
        false
    }
}

/// Whether a binding's subject is this user (a ServiceAccount subject without a
/// namespace means the binding's own).
fn applies_to(subject: &Subject, user: &UserInfo, namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.username,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty()
                && user.username == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

/// Keeps one kind current: a snapshot, then every change; a new snapshot whenever the
/// watch ends (a slow reader's queue overflowed, or the datastore watch restarted).
async fn follow(index: Arc<Index>, cache: Arc<WatchCache>, r: &'static Resource, kind: usize) {
    let prefix = r.key_prefix(None);
    loop {
        let sub = match cache
            .watch(&prefix, KeyRange::prefix(prefix.clone()), From::Cached)
            .await
        {
            Ok(Some(sub)) => sub,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(kind = r.plural, error = %e, "watching RBAC objects");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut events = sub.events;
        if let Some(snapshot) = sub.snapshot {
            index.reset(kind, &snapshot.kvs);
            index.revisions[kind].send_replace(snapshot.revision.max(1));
        }
        for event in sub.backlog {
            index.apply(kind, &event.kv, event.kind == EventKind::Deleted);
            index.revisions[kind].send_replace(event.revision());
        }
        while let Some(event) = events.recv().await {
            index.apply(kind, &event.kv, event.kind == EventKind::Deleted);
            index.revisions[kind].send_replace(event.revision());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::{WriteOptions, test_registry};
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn list_pods(ns: &str) -> Attributes {
        Attributes {
            verb: "list".into(),
            path: format!("/api/v1/namespaces/{ns}/pods"),
            resource: Some(super::super::ResourceAttributes {
                resource: "pods".into(),
                version: "v1".into(),
                namespace: ns.into(),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn bindings_take_effect_once_written() {
        let (_dir, registry) = test_registry();
        let kind = |plural| registry::find(GROUP, "v1", plural).expect("kind");
        registry.ensure_namespace("ns").await.expect("namespace");
        let index = Index::start(registry.cache.clone()).await;
        let alice = user("alice", &["dev"]);
        assert_eq!(index.allows(&alice, &list_pods("ns")), Err(String::new()));
        let role = json!({"metadata": {"name": "reader"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]});
        registry
            .create(kind("clusterroles"), None, role, WriteOptions::default())
            .await
            .expect("role");
        // A RoleBinding to a group, in one namespace.
        let binding = json!({"metadata": {"name": "devs"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "reader"},
            "subjects": [{"kind": "Group", "name": "dev", "apiGroup": GROUP}]});
        let written = registry
            .create(
                kind("rolebindings"),
                Some("ns"),
                binding,
                WriteOptions::default(),
            )
            .await
            .expect("binding");
        let rv: Revision = written.object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("rv");
        index.caught_up("rolebindings", rv).await;
        assert_eq!(index.allows(&alice, &list_pods("ns")), Ok(()));
        assert!(index.allows(&alice, &list_pods("other")).is_err());
        assert!(index.allows(&user("bob", &[]), &list_pods("ns")).is_err());
        // A binding to a role that does not exist says so.
        let dangling = json!({"metadata": {"name": "dangling"},
            "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "missing"},
            "subjects": [{"kind": "User", "name": "bob", "apiGroup": GROUP}]});
        let written = registry
            .create(
                kind("rolebindings"),
                Some("ns"),
                dangling,
                WriteOptions::default(),
            )
            .await
            .expect("binding");
        let rv: Revision = written.object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("rv");
        index.caught_up("rolebindings", rv).await;
        assert_eq!(
            index.allows(&user("bob", &[]), &list_pods("ns")),
            Err(format!("RBAC: [role.{GROUP} \"missing\" not found]"))
        );
    }
}
