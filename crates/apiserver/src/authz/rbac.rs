//! The RBAC authorizer: Roles, ClusterRoles and their bindings, held in memory and kept
//! current by watching them through the watch cache (upstream's informers), so a
//! decision costs no datastore read. A request is allowed when a ClusterRoleBinding, or
//! a RoleBinding in the request's namespace, binds the user (by name, group or service
//! account) to a role with a rule that allows it.
//!
//! Writes to RBAC objects through this server wait until the index has seen them, so a
//! binding is in force once its create returns (read-your-writes on one server; other
//! API servers catch up within a watch round trip, as upstream's do).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use skiff_storage::{KeyValue, Revision};
use tokio::sync::watch;

use super::{Attributes, rules};
use crate::authn::UserInfo;
use crate::registry::watch_cache::WatchCache;
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

/// Who a binding's subject is, as a lookup key (a ServiceAccount subject without a
/// namespace is the binding's namespace's).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum SubjectKey {
    User(String),
    Group(String),
    ServiceAccount(String, String),
}

impl SubjectKey {
    fn of(subject: &Subject, scope: &str) -> Option<SubjectKey> {
        match subject.kind.as_str() {
            "User" => Some(SubjectKey::User(subject.name.clone())),
            "Group" => Some(SubjectKey::Group(subject.name.clone())),
            "ServiceAccount" => {
                let ns = subject
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(scope);
                (!ns.is_empty())
                    .then(|| SubjectKey::ServiceAccount(ns.into(), subject.name.clone()))
            }
            _ => None,
        }
    }

    /// The keys a user is found under: their name, each group, their service account.
    fn of_user(user: &UserInfo) -> Vec<SubjectKey> {
        let mut keys = vec![SubjectKey::User(user.username.clone())];
        keys.extend(user.groups.iter().cloned().map(SubjectKey::Group));
        if let Some((ns, name)) = user
            .username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            keys.push(SubjectKey::ServiceAccount(ns.into(), name.into()));
        }
        keys
    }
}

#[derive(Default)]
struct Objects {
    cluster_roles: HashMap<String, Arc<[PolicyRule]>>,
    /// (namespace, name)
    roles: HashMap<(String, String), Arc<[PolicyRule]>>,
    /// scope (a namespace; "" for ClusterRoleBindings) → name → binding
    bindings: HashMap<String, BTreeMap<String, Binding>>,
    /// scope → subject → the names of the bindings naming it, so a decision looks at
    /// the user's own bindings only, however many others there are.
    by_subject: HashMap<String, HashMap<SubjectKey, BTreeSet<String>>>,
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
            _ => {
                let cluster = kind == 2;
                let gone: Vec<(String, String)> = objects
                    .bindings
                    .iter()
                    .filter(|(scope, _)| scope.is_empty() == cluster)
                    .flat_map(|(scope, named)| named.keys().map(|n| (scope.clone(), n.clone())))
                    .collect();
                for (scope, name) in gone {
                    objects.remove_binding(&scope, &name);
                }
            }
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
                Ok(b) => self.put_binding(
                    ns,
                    name,
                    Binding {
                        role_ref: b.role_ref,
                        subjects: b.subjects.unwrap_or_default(),
                    },
                ),
                Err(e) => tracing::warn!(%name, error = %e, "an unreadable ClusterRoleBinding"),
            },
            (_, Some(v)) => match serde_json::from_slice::<RoleBinding>(v) {
                Ok(b) => self.put_binding(
                    ns,
                    name,
                    Binding {
                        role_ref: b.role_ref,
                        subjects: b.subjects.unwrap_or_default(),
                    },
                ),
                Err(e) => tracing::warn!(%name, error = %e, "an unreadable RoleBinding"),
            },
            (_, None) => self.remove_binding(&ns, &name),
        }
    }

    fn put_binding(&mut self, scope: String, name: String, binding: Binding) {
        self.remove_binding(&scope, &name);
        let index = self.by_subject.entry(scope.clone()).or_default();
        for key in binding
            .subjects
            .iter()
            .filter_map(|s| SubjectKey::of(s, &scope))
        {
            index.entry(key).or_default().insert(name.clone());
        }
        self.bindings
            .entry(scope)
            .or_default()
            .insert(name, binding);
    }

    fn remove_binding(&mut self, scope: &str, name: &str) {
        let Some(named) = self.bindings.get_mut(scope) else {
            return;
        };
        let Some(old) = named.remove(name) else {
            return;
        };
        if named.is_empty() {
            self.bindings.remove(scope);
        }
        if let Some(index) = self.by_subject.get_mut(scope) {
            for key in old.subjects.iter().filter_map(|s| SubjectKey::of(s, scope)) {
                if let Some(names) = index.get_mut(&key) {
                    names.remove(name);
                    if names.is_empty() {
                        index.remove(&key);
                    }
                }
            }
            if index.is_empty() {
                self.by_subject.remove(scope);
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
        let keys = SubjectKey::of_user(user);
        let scopes: &[&str] = if namespace.is_empty() {
            &[""]
        } else {
            &["", namespace]
        };
        for scope in scopes {
            let (Some(index), Some(named)) =
                (self.by_subject.get(*scope), self.bindings.get(*scope))
            else {
                continue;
            };
            // The user's bindings in this scope, in name order (as upstream lists them).
            let mine: BTreeSet<&String> =
                keys.iter().filter_map(|k| index.get(k)).flatten().collect();
            for binding in mine.into_iter().filter_map(|name| named.get(name)) {
                match self.role(&binding.role_ref, scope) {
                    Some(rules) => {
                        if rules.iter().any(&mut *visit) {
                            return true;
                        }
                    }
                    None => {
                        let kind = binding.role_ref.kind.to_lowercase();
                        errors.push(format!(
                            "{kind}.{GROUP} \"{}\" not found",
                            binding.role_ref.name
                        ));
                    }
                }
            }
        }
        false
    }
}

/// Keeps one kind current, and its revision as applied.
async fn follow(index: Arc<Index>, cache: Arc<WatchCache>, r: &'static Resource, kind: usize) {
    super::follow(cache, r.key_prefix(None), |change| {
        let revision = match change {
            super::Change::Snapshot(kvs, revision) => {
                index.reset(kind, kvs);
                revision.max(1)
            }
            super::Change::Put(kv) => {
                index.apply(kind, kv, false);
                kv.mod_revision
            }
            super::Change::Deleted(kv) => {
                index.apply(kind, kv, true);
                kv.mod_revision
            }
        };
        index.revisions[kind].send_replace(revision);
    })
    .await
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

    /// Writes a RoleBinding in `ns` and waits for the index to have it.
    async fn bind(
        registry: &crate::registry::store::Registry,
        index: &Index,
        binding: serde_json::Value,
    ) {
        let kind = registry::find(GROUP, "v1", "rolebindings").expect("kind");
        let written = registry
            .create(kind, Some("ns"), binding, WriteOptions::default())
            .await
            .expect("binding");
        let rv: Revision = written.object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("rv");
        index.caught_up("rolebindings", rv).await;
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
        bind(&registry, &index, binding).await;
        assert_eq!(index.allows(&alice, &list_pods("ns")), Ok(()));
        assert!(index.allows(&alice, &list_pods("other")).is_err());
        assert!(index.allows(&user("bob", &[]), &list_pods("ns")).is_err());
        // A service account subject without a namespace is the binding's namespace's.
        let robot = json!({"metadata": {"name": "robots"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot"}]});
        bind(&registry, &index, robot).await;
        let sa = user(
            "system:serviceaccount:ns:robot",
            &["system:serviceaccounts"],
        );
        assert_eq!(index.allows(&sa, &list_pods("ns")), Ok(()));
        let other = user("system:serviceaccount:other:robot", &[]);
        assert!(index.allows(&other, &list_pods("ns")).is_err());
        // A binding to a role that does not exist says so.
        let dangling = json!({"metadata": {"name": "dangling"},
            "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "missing"},
            "subjects": [{"kind": "User", "name": "bob", "apiGroup": GROUP}]});
        bind(&registry, &index, dangling).await;
        assert_eq!(
            index.allows(&user("bob", &[]), &list_pods("ns")),
            Err(format!("RBAC: [role.{GROUP} \"missing\" not found]"))
        );
    }
}
