//! The default roles and bindings upstream's API server creates at every start (its
//! `rbac/bootstrap-roles` post-start hook): the user-facing roles (cluster-admin, and
//! admin, edit and view built by aggregation), discovery and self-review for everyone,
//! public information for anonymous users, and the roles of the components
//! (system:kube-scheduler, system:kube-controller-manager, system:node,
//! system:node-proxier, ...). Each carries `kubernetes.io/bootstrapping: rbac-defaults`;
//! those annotated `rbac.authorization.kubernetes.io/autoupdate: "true"` (all, unless a
//! user set it to "false") get back any default rule they lost, as upstream reconciles.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use crate::registry::store::{Registry, WriteOptions};
use crate::status::ApiError;

pub(super) const CORE: &str = "";
const RW: &str = "create delete deletecollection patch update";
const READ: &str = "get list watch";

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// A resource rule: space-separated verbs and resources, a list of groups.
pub(super) fn r(verbs: &str, groups: &[&str], resources: &str) -> PolicyRule {
    PolicyRule {
        verbs: words(verbs),
        api_groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        resources: Some(words(resources)),
        ..Default::default()
    }
}

/// A resource rule limited to names.
pub(super) fn named(verbs: &str, groups: &[&str], resources: &str, names: &str) -> PolicyRule {
    PolicyRule {
        resource_names: Some(words(names)),
        ..r(verbs, groups, resources)
    }
}

/// A leader-elected component's Lease: create any, get and update its own.
fn leader_lease(name: &str) -> [PolicyRule; 2] {
    [
        r("create", &["coordination.k8s.io"], "leases"),
        named("get update", &["coordination.k8s.io"], "leases", name),
    ]
}

/// A non-resource rule.
fn urls(verbs: &str, paths: &str) -> PolicyRule {
    PolicyRule {
        verbs: words(verbs),
        non_resource_urls: Some(words(paths)),
        ..Default::default()
    }
}

struct DefaultRole {
    name: &'static str,
    rules: Vec<PolicyRule>,
    /// `rbac.authorization.k8s.io/aggregate-to-*` labels it carries.
    aggregate_to: &'static [&'static str],
    /// The label its aggregationRule selects (its rules are filled by the
    /// clusterrole-aggregation controller).
    aggregated_from: Option<&'static str>,
}

fn role(name: &'static str, rules: Vec<PolicyRule>) -> DefaultRole {
    DefaultRole {
        name,
        rules,
        aggregate_to: &[],
        aggregated_from: None,
    }
}

fn aggregated(name: &'static str, from: &'static str, to: &'static [&'static str]) -> DefaultRole {
    DefaultRole {
        name,
        rules: Vec::new(),
        aggregate_to: to,
        aggregated_from: Some(from),
    }
}

/// What a kubelet may do beyond what the Node authorizer decides itself (the
/// `system:node` role's rules, upstream's NodeRules).
pub(crate) fn node_rules() -> Vec<PolicyRule> {
    vec![
        r("create", &["authentication.k8s.io"], "tokenreviews"),
        r(
            "create",
            &["authorization.k8s.io"],
            "localsubjectaccessreviews subjectaccessreviews",
        ),
        r(READ, &[CORE], "services"),
        r("create get list watch", &[CORE], "nodes"),
        r("patch update", &[CORE], "nodes/status"),
        r("patch update", &[CORE], "nodes"),
        r("create patch update", &[CORE], "events"),
        r(READ, &[CORE], "pods"),
        r("create delete", &[CORE], "pods"),
        r("patch update", &[CORE], "pods/status"),
        r("create", &[CORE], "pods/eviction"),
        r(READ, &[CORE], "configmaps secrets"),
        r("get", &[CORE], "persistentvolumeclaims persistentvolumes"),
        r("get", &[CORE], "endpoints"),
        r(
            "create get list watch",
            &["certificates.k8s.io"],
            "certificatesigningrequests",
        ),
        r(
            "create delete get patch update",
            &["coordination.k8s.io"],
            "leases",
        ),
        r("get", &["storage.k8s.io"], "volumeattachments"),
        r("create", &[CORE], "serviceaccounts/token"),
        r("get patch update", &[CORE], "persistentvolumeclaims/status"),
        r(READ, &["storage.k8s.io"], "csidrivers"),
        r(
            "create delete get patch update",
            &["storage.k8s.io"],
            "csinodes",
        ),
        r(READ, &["node.k8s.io"], "runtimeclasses"),
    ]
}

fn cluster_roles() -> Vec<DefaultRole> {
    let events = r("create patch update", &[CORE, "events.k8s.io"], "events");
    let reviews = vec![
        r("create", &["authentication.k8s.io"], "tokenreviews"),
        r("create", &["authorization.k8s.io"], "subjectaccessreviews"),
    ];
    let controllers = super::controller_policy::controller_roles()
        .into_iter()
        .map(|(name, rules)| role(name, super::controller_policy::with_status_patch(rules)));
    let mut roles = vec![
        role("cluster-admin", vec![r("*", &["*"], "*"), urls("*", "*")]),
        aggregated("admin", "admin", &[]),
        aggregated("edit", "edit", &["admin"]),
        aggregated("view", "view", &["edit"]),
        DefaultRole {
            aggregate_to: &["admin"],
            ..role(
                "system:aggregate-to-admin",
                vec![
                    r(
                        "create",
                        &["authorization.k8s.io"],
                        "localsubjectaccessreviews",
                    ),
                    r(
                        &format!("{RW} {READ}"),
                        &["rbac.authorization.k8s.io"],
                        "rolebindings roles",
                    ),
                ],
            )
        },
        DefaultRole {
            aggregate_to: &["edit"],
            ..role(
                "system:aggregate-to-edit",
                vec![
                    r(
                        READ,
                        &[CORE],
                        "pods/attach pods/exec pods/portforward pods/proxy secrets services/proxy",
                    ),
                    r("impersonate", &[CORE], "serviceaccounts"),
                    r(
                        RW,
                        &[CORE],
                        "pods pods/attach pods/exec pods/portforward pods/proxy",
                    ),
                    r("create", &[CORE], "pods/eviction"),
                    r(
                        RW,
                        &[CORE],
                        "configmaps events persistentvolumeclaims replicationcontrollers replicationcontrollers/scale secrets serviceaccounts services services/proxy",
                    ),
                    r("create", &[CORE], "serviceaccounts/token"),
                    r(
                        RW,
                        &["apps"],
                        "daemonsets deployments deployments/rollback deployments/scale replicasets replicasets/scale statefulsets statefulsets/scale",
                    ),
                    r(RW, &["autoscaling"], "horizontalpodautoscalers"),
                    r(RW, &["batch"], "cronjobs jobs"),
                    r(RW, &["policy"], "poddisruptionbudgets"),
                    r(RW, &["networking.k8s.io"], "ingresses networkpolicies"),
                    r(&format!("{RW} {READ}"), &["coordination.k8s.io"], "leases"),
                ],
            )
        },
        DefaultRole {
            aggregate_to: &["view"],
            ..role(
                "system:aggregate-to-view",
                vec![
                    r(
                        READ,
                        &[CORE],
                        "configmaps endpoints persistentvolumeclaims persistentvolumeclaims/status pods replicationcontrollers replicationcontrollers/scale serviceaccounts services services/status",
                    ),
                    r(
                        READ,
                        &[CORE],
                        "bindings events limitranges namespaces/status pods/log pods/status replicationcontrollers/status resourcequotas resourcequotas/status",
                    ),
                    r(READ, &[CORE], "namespaces"),
                    r(READ, &["discovery.k8s.io"], "endpointslices"),
                    r(
                        READ,
                        &["apps"],
                        "controllerrevisions daemonsets daemonsets/status deployments deployments/scale deployments/status replicasets replicasets/scale replicasets/status statefulsets statefulsets/scale statefulsets/status",
                    ),
                    r(
                        READ,
                        &["autoscaling"],
                        "horizontalpodautoscalers horizontalpodautoscalers/status",
                    ),
                    r(
                        READ,
                        &["batch"],
                        "cronjobs cronjobs/status jobs jobs/status",
                    ),
                    r(
                        READ,
                        &["policy"],
                        "poddisruptionbudgets poddisruptionbudgets/status",
                    ),
                    r(
                        READ,
                        &["networking.k8s.io"],
                        "ingresses ingresses/status networkpolicies",
                    ),
                ],
            )
        },
        role("system:auth-delegator", reviews.clone()),
        role(
            "system:basic-user",
            vec![
                r(
                    "create",
                    &["authorization.k8s.io"],
                    "selfsubjectaccessreviews selfsubjectrulesreviews",
                ),
                r("create", &["authentication.k8s.io"], "selfsubjectreviews"),
            ],
        ),
        role(
            "system:discovery",
            vec![urls(
                "get",
                "/api /api/* /apis /apis/* /healthz /livez /openapi /openapi/* /readyz /version /version/",
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![urls("get", "/healthz /livez /readyz /version /version/")],
        ),
        role(
            "system:monitoring",
            vec![urls(
                "get",
                "/healthz /healthz/* /livez /livez/* /metrics /metrics/slis /readyz /readyz/*",
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            vec![urls(
                "get",
                "/.well-known/openid-configuration /openid/v1/jwks",
            )],
        ),
        role(
            "system:kube-scheduler",
            [
                vec![
                    events.clone(),
                    leader_lease("kube-scheduler")[0].clone(),
                    leader_lease("kube-scheduler")[1].clone(),
                    r(READ, &[CORE], "nodes"),
                    r("delete get list watch", &[CORE], "pods"),
                    r("create", &[CORE], "bindings pods/binding"),
                    r("patch update", &[CORE], "pods/status"),
                    r(READ, &[CORE], "replicationcontrollers services"),
                    r(READ, &["apps", "extensions"], "replicasets"),
                    r(READ, &["apps"], "statefulsets"),
                    r(READ, &["policy"], "poddisruptionbudgets"),
                    r(READ, &[CORE], "persistentvolumeclaims persistentvolumes"),
                ],
                reviews.clone(),
                vec![
                    r(READ, &["storage.k8s.io"], "csinodes"),
                    r(READ, &[CORE], "namespaces"),
                    r(READ, &["storage.k8s.io"], "csidrivers"),
                    r(READ, &["storage.k8s.io"], "csistoragecapacities"),
                ],
            ]
            .concat(),
        ),
        role(
            "system:volume-scheduler",
            vec![
                r("get list patch update watch", &[CORE], "persistentvolumes"),
                r(READ, &["storage.k8s.io"], "storageclasses"),
                r(
                    "get list patch update watch",
                    &[CORE],
                    "persistentvolumeclaims",
                ),
            ],
        ),
        role(
            "system:kube-controller-manager",
            [
                vec![
                    events.clone(),
                    leader_lease("kube-controller-manager")[0].clone(),
                    leader_lease("kube-controller-manager")[1].clone(),
                    r("create", &[CORE], "secrets serviceaccounts"),
                    r("delete", &[CORE], "secrets"),
                    r(
                        "get",
                        &[CORE],
                        "configmaps namespaces secrets serviceaccounts",
                    ),
                    r("update", &[CORE], "secrets serviceaccounts"),
                ],
                reviews.clone(),
                vec![
                    r("list watch", &["*"], "*"),
                    r("create", &[CORE], "serviceaccounts/token"),
                ],
            ]
            .concat(),
        ),
        role("system:node", node_rules()),
        role(
            "system:node-proxier",
            vec![
                r("list watch", &[CORE], "endpoints services"),
                r(READ, &[CORE], "nodes"),
                events.clone(),
                r("list watch", &["discovery.k8s.io"], "endpointslices"),
            ],
        ),
        role(
            "system:node-bootstrapper",
            vec![r(
                "create get list watch",
                &["certificates.k8s.io"],
                "certificatesigningrequests",
            )],
        ),
        role(
            "system:node-problem-detector",
            vec![
                r("get", &[CORE], "nodes"),
                r("patch", &[CORE], "nodes/status"),
                events.clone(),
            ],
        ),
        role(
            "system:kube-dns",
            vec![r("list watch", &[CORE], "endpoints services")],
        ),
        // kubeadm's CoreDNS role (not one of upstream's bootstrap roles): what a cluster
        // DNS reads, EndpointSlices included.
        role(
            "system:coredns",
            vec![
                r("list watch", &[CORE], "endpoints services pods namespaces"),
                r("list watch", &["discovery.k8s.io"], "endpointslices"),
            ],
        ),
        role(
            "system:kube-aggregator",
            vec![r(READ, &[CORE], "endpoints services")],
        ),
        role(
            "system:heapster",
            vec![
                r(READ, &[CORE], "events namespaces nodes pods"),
                r(READ, &["extensions"], "deployments"),
            ],
        ),
        role(
            "system:persistent-volume-provisioner",
            vec![
                r("create delete get list watch", &[CORE], "persistentvolumes"),
                r("get list update watch", &[CORE], "persistentvolumeclaims"),
                r(READ, &["storage.k8s.io"], "storageclasses"),
                r("watch", &[CORE], "events"),
                events,
            ],
        ),
        role(
            "system:kubelet-api-admin",
            vec![
                r(READ, &[CORE], "nodes"),
                r("proxy", &[CORE], "nodes"),
                r(
                    "*",
                    &[CORE],
                    "nodes/log nodes/metrics nodes/proxy nodes/stats",
                ),
            ],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![r(
                "create",
                &["certificates.k8s.io"],
                "certificatesigningrequests/nodeclient",
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![r(
                "create",
                &["certificates.k8s.io"],
                "certificatesigningrequests/selfnodeclient",
            )],
        ),
    ];
    roles.extend(controllers);
    roles
}

/// A subject of a default binding: (kind, name, namespace).
type DefaultSubject = (&'static str, &'static str, &'static str);

/// (ClusterRole, its subjects).
fn cluster_role_bindings() -> Vec<(&'static str, Vec<DefaultSubject>)> {
    let controllers = super::controller_policy::controller_roles()
        .into_iter()
        .map(|(name, _)| {
            let accounts = super::controller_policy::controller_accounts(name)
                .into_iter()
                .map(|a| ("ServiceAccount", a, "kube-system"))
                .collect();
            (name, accounts)
        });
    let mut bindings = vec![
        ("cluster-admin", vec![("Group", "system:masters", "")]),
        (
            "system:basic-user",
            vec![("Group", "system:authenticated", "")],
        ),
        (
            "system:discovery",
            vec![("Group", "system:authenticated", "")],
        ),
        (
            "system:public-info-viewer",
            vec![
                ("Group", "system:authenticated", ""),
                ("Group", "system:unauthenticated", ""),
            ],
        ),
        (
            "system:monitoring",
            vec![("Group", "system:monitoring", "")],
        ),
        (
            "system:service-account-issuer-discovery",
            vec![("Group", "system:serviceaccounts", "")],
        ),
        (
            "system:kube-scheduler",
            vec![("User", "system:kube-scheduler", "")],
        ),
        (
            "system:volume-scheduler",
            vec![("User", "system:kube-scheduler", "")],
        ),
        (
            "system:kube-controller-manager",
            vec![("User", "system:kube-controller-manager", "")],
        ),
        ("system:node", vec![]),
        // Upstream binds the proxier role to `system:kube-proxy` only (kubeadm runs the
        // proxy as a service account); a skiff node runs its proxy with the node's own
        // credentials, so nodes get it too (read-only: Services, endpoints, nodes).
        (
            "system:node-proxier",
            vec![
                ("User", "system:kube-proxy", ""),
                ("Group", "system:nodes", ""),
            ],
        ),
        (
            "system:kube-dns",
            vec![("ServiceAccount", "kube-dns", "kube-system")],
        ),
        // kubeadm's CoreDNS account, and skiff's own DNS server.
        (
            "system:coredns",
            vec![
                ("ServiceAccount", "coredns", "kube-system"),
                ("User", "system:kube-dns", ""),
            ],
        ),
    ];
    bindings.extend(controllers);
    bindings
}

fn metadata(name: &str, labels: Value) -> Value {
    let mut all = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    json!({
        "name": name,
        "labels": all,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn rules_json(rules: &[PolicyRule]) -> Value {
    serde_json::to_value(rules).unwrap_or_else(|_| json!([]))
}

/// Creates the default roles and bindings that are missing, and gives auto-updated
/// ones back the default rules and subjects they lost.
pub(crate) async fn ensure(registry: &Registry) -> Result<(), ApiError> {
    let roles = crate::registry::builtin(super::rbac::GROUP, "v1", "clusterroles")?;
    let bindings = crate::registry::builtin(super::rbac::GROUP, "v1", "clusterrolebindings")?;
    for default in cluster_roles() {
        let labels: serde_json::Map<String, Value> = default
            .aggregate_to
            .iter()
            .map(|to| {
                (
                    format!("rbac.authorization.k8s.io/aggregate-to-{to}"),
                    json!("true"),
                )
            })
            .collect();
        let mut obj = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": metadata(default.name, Value::Object(labels)),
        });
        if let Some(from) = default.aggregated_from {
            obj["aggregationRule"] = json!({"clusterRoleSelectors": [
                {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{from}"): "true"}}
            ]});
        } else {
            obj["rules"] = rules_json(&default.rules);
        }
        let wanted = default.rules.clone();
        reconcile(registry, roles, default.name, obj, move |live| {
            // Aggregated roles' rules belong to the aggregation controller.
            if live.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                return None;
            }
            let have: Vec<PolicyRule> =
                serde_json::from_value(live["rules"].clone()).unwrap_or_default();
            let missing: Vec<&PolicyRule> = wanted.iter().filter(|w| !have.contains(w)).collect();
            if missing.is_empty() {
                return None;
            }
            let mut next = live.clone();
            let mut all = have.clone();
            all.extend(missing.into_iter().cloned());
            next["rules"] = rules_json(&all);
            Some(next)
        })
        .await?;
    }
    for (role, subjects) in cluster_role_bindings() {
        let subjects: Vec<Value> = subjects
            .into_iter()
            .map(|(kind, name, namespace)| {
                let mut s = json!({"kind": kind, "name": name});
                if namespace.is_empty() {
                    s["apiGroup"] = json!("rbac.authorization.k8s.io");
                } else {
                    s["namespace"] = json!(namespace);
                }
                s
            })
            .collect();
        let obj = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": metadata(role, json!({})),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects,
        });
        let wanted = subjects.clone();
        reconcile(registry, bindings, role, obj, move |live| {
            let have = live["subjects"].as_array().cloned().unwrap_or_default();
            let missing: Vec<Value> = wanted
                .iter()
                .filter(|w| !have.contains(w))
                .cloned()
                .collect();
            if missing.is_empty() {
                return None;
            }
            let mut next = live.clone();
            next["subjects"] = json!([have, missing].concat());
            Some(next)
        })
        .await?;
    }
    Ok(())
}

/// Creates `obj` if absent; otherwise, unless its autoupdate annotation is "false",
/// applies `fix` (None: nothing to change).
async fn reconcile(
    registry: &Registry,
    r: &'static crate::registry::Resource,
    name: &str,
    obj: Value,
    fix: impl Fn(&Value) -> Option<Value>,
) -> Result<(), ApiError> {
    match registry.get(r, None, name).await {
        Ok(live) => {
            let auto = live
                .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
                .and_then(Value::as_str);
            if auto == Some("false") {
                return Ok(());
            }
            if let Some(next) = fix(&live) {
                registry
                    .update(r, None, name, next, WriteOptions::default())
                    .await?;
            }
            Ok(())
        }
        Err(e) if e.code == 404 => {
            match registry.create(r, None, obj, WriteOptions::default()).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn defaults_are_created_and_restored() {
        let (_dir, registry) = crate::registry::store::test_registry();
        ensure(&registry).await.expect("ensure");
        let roles = crate::registry::builtin(super::super::rbac::GROUP, "v1", "clusterroles")
            .expect("kind");
        let admin = registry
            .get(roles, None, "cluster-admin")
            .await
            .expect("cluster-admin");
        assert_eq!(admin["rules"][0]["verbs"], json!(["*"]));
        let view = registry.get(roles, None, "view").await.expect("view");
        assert_eq!(
            view["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"],
            json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"})
        );
        assert_eq!(
            view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
            json!("true")
        );
        // A default role that lost a rule gets it back; one marked autoupdate=false does not.
        let mut basic = registry
            .get(roles, None, "system:basic-user")
            .await
            .expect("basic");
        basic["rules"] = json!([]);
        registry
            .update(
                roles,
                None,
                "system:basic-user",
                basic,
                WriteOptions::default(),
            )
            .await
            .expect("update");
        let mut discovery = registry
            .get(roles, None, "system:discovery")
            .await
            .expect("discovery");
        discovery["rules"] = json!([]);
        discovery["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] =
            json!("false");
        registry
            .update(
                roles,
                None,
                "system:discovery",
                discovery,
                WriteOptions::default(),
            )
            .await
            .expect("update");
        ensure(&registry).await.expect("again");
        let basic = registry
            .get(roles, None, "system:basic-user")
            .await
            .expect("basic");
        assert_eq!(basic["rules"].as_array().map(Vec::len), Some(2));
        let discovery = registry
            .get(roles, None, "system:discovery")
            .await
            .expect("discovery");
        assert!(discovery["rules"].as_array().is_none_or(Vec::is_empty));
    }
}
