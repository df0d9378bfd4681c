//! The roles of the controllers (upstream's `controller_policy.go`): each controller runs
//! as the ServiceAccount `kube-system/<name>` and may do what `system:controller:<name>`
//! grants, bound by the ClusterRoleBinding of the same name. Translated rule by rule
//! from upstream (Kubernetes 1.32), with one addition: where a role may `update` a status
//! subresource it may also `patch` it, since skiff's controllers write status by merge
//! patch. Two of skiff's controllers do the work of more than one upstream controller,
//! so their account is bound to those roles too: `endpoint-controller` also writes
//! EndpointSlices (`endpointslice-controller`, `endpointslicemirroring-controller`), and
//! `job-controller` also deletes finished Jobs after their TTL
//! (`ttl-after-finished-controller`).

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::policy::{CORE, named, r};

/// The roles of the controllers upstream's controller manager runs with their own
/// service accounts (`--use-service-account-credentials`): `system:controller:NAME`
/// bound to the ServiceAccount `kube-system/NAME`.
pub(super) fn controller_roles() -> Vec<(&'static str, Vec<PolicyRule>)> {
    vec![
        (
            "system:controller:clusterrole-aggregation-controller",
            vec![
                // this controller must have full permissions on clusterroles to allow it to
                // mutate them in any way
                r(
                    "escalate get list patch update watch",
                    &["rbac.authorization.k8s.io"],
                    "clusterroles",
                ),
            ],
        ),
        (
            // "watch" on pods came from kubernetes#130405 (backported to release-1.32 as #130461).
            "system:controller:cronjob-controller",
            vec![
                r("get list update watch", &["batch"], "cronjobs"),
                r(
                    "create delete get list patch update watch",
                    &["batch"],
                    "jobs",
                ),
                r("update", &["batch"], "cronjobs/status"),
                r("update", &["batch"], "cronjobs/finalizers"),
                r("delete list watch", &[CORE], "pods"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:daemon-set-controller",
            vec![
                r("get list watch", &["apps", "extensions"], "daemonsets"),
                r("update", &["apps", "extensions"], "daemonsets/status"),
                r("update", &["apps", "extensions"], "daemonsets/finalizers"),
                r("list watch", &[CORE], "nodes"),
                r("create delete list patch watch", &[CORE], "pods"),
                r("create", &[CORE], "pods/binding"),
                r(
                    "create delete get list patch update watch",
                    &["apps"],
                    "controllerrevisions",
                ),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:deployment-controller",
            vec![
                r(
                    "get list update watch",
                    &["apps", "extensions"],
                    "deployments",
                ),
                r("update", &["apps", "extensions"], "deployments/status"),
                r("update", &["apps", "extensions"], "deployments/finalizers"),
                r(
                    "create delete get list patch update watch",
                    &["apps", "extensions"],
                    "replicasets",
                ),
                // TODO upstream: remove "update" once kubernetes#36897 is resolved.
                r("get list update watch", &[CORE], "pods"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:disruption-controller",
            vec![
                r("get list watch", &["apps", "extensions"], "deployments"),
                r("get list watch", &["apps", "extensions"], "replicasets"),
                r("get list watch", &[CORE], "replicationcontrollers"),
                r("get list watch", &["policy"], "poddisruptionbudgets"),
                r("get list watch", &["apps"], "statefulsets"),
                r("update", &["policy"], "poddisruptionbudgets/status"),
                // pod DisruptionTarget conditions (PodDisruptionConditions, GA in 1.31);
                // unconditional upstream now
                r("patch update", &[CORE], "pods/status"),
                r("get", &["*"], "*/scale"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            // "watch" added by kubernetes#130405 (backported to release-1.32).
            "system:controller:endpoint-controller",
            vec![
                r("get list watch", &[CORE], "pods services"),
                r("create delete get list update watch", &[CORE], "endpoints"),
                r("create", &[CORE], "endpoints/restricted"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            // "watch" added by kubernetes#130405 (backported to release-1.32).
            "system:controller:endpointslice-controller",
            vec![
                r("get list watch", &[CORE], "nodes pods services"),
                // to set a Service's finalizers when creating an EndpointSlice owned by it
                // with blockOwnerDeletion=true
                r("update", &[CORE], "services/finalizers"),
                r(
                    "create delete get list update watch",
                    &["discovery.k8s.io"],
                    "endpointslices",
                ),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            // "watch" added by kubernetes#130405 (backported to release-1.32).
            "system:controller:endpointslicemirroring-controller",
            vec![
                r("get list watch", &[CORE], "endpoints services"),
                r("update", &[CORE], "services/finalizers"),
                r("update", &[CORE], "endpoints/finalizers"),
                r(
                    "create delete get list update watch",
                    &["discovery.k8s.io"],
                    "endpointslices",
                ),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:generic-garbage-collector",
            vec![
                // list/watch, selective gets, and updates against any resource
                r("delete get list patch update watch", &["*"], "*"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:job-controller",
            vec![
                r("get list patch update watch", &["batch"], "jobs"),
                r("update", &["batch"], "jobs/status"),
                r("update", &["batch"], "jobs/finalizers"),
                r("create delete list patch watch", &[CORE], "pods"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            // "watch" on */* added by kubernetes#129201 (WatchListClient). Also backported
            // to release-1.32, as far as I can tell (not verified).
            "system:controller:namespace-controller",
            vec![
                r("delete get list watch", &[CORE], "namespaces"),
                r("update", &[CORE], "namespaces/finalize namespaces/status"),
                r("delete deletecollection get list watch", &["*"], "*"),
            ],
        ),
        (
            // "watch" added by kubernetes#130405 (backported to release-1.32).
            "system:controller:node-controller",
            vec![
                r("delete get list patch update watch", &[CORE], "nodes"),
                r("patch update", &[CORE], "nodes/status"),
                // used for pod deletion
                r("patch update", &[CORE], "pods/status"),
                r("delete get list watch", &[CORE], "pods"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            // "watch" added by kubernetes#130405 (backported to release-1.32).
            "system:controller:pod-garbage-collector",
            vec![
                r("delete list watch", &[CORE], "pods"),
                r("get list watch", &[CORE], "nodes"),
                // pod DisruptionTarget condition (PodDisruptionConditions, GA in 1.31)
                r("patch", &[CORE], "pods/status"),
            ],
        ),
        (
            "system:controller:replicaset-controller",
            vec![
                r(
                    "get list update watch",
                    &["apps", "extensions"],
                    "replicasets",
                ),
                r("update", &["apps", "extensions"], "replicasets/status"),
                r("update", &["apps", "extensions"], "replicasets/finalizers"),
                r("create delete list patch watch", &[CORE], "pods"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:resourcequota-controller",
            vec![
                // quota can count quota on anything for reconciliation, so it needs full
                // viewing powers
                r("list watch", &["*"], "*"),
                r("update", &[CORE], "resourcequotas/status"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:service-account-controller",
            vec![
                r("create", &[CORE], "serviceaccounts"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:statefulset-controller",
            vec![
                r("list watch", &[CORE], "pods"),
                r("get list watch", &["apps"], "statefulsets"),
                r("update", &["apps"], "statefulsets/status"),
                r("update", &["apps"], "statefulsets/finalizers"),
                r("create delete get patch update", &[CORE], "pods"),
                r(
                    "create delete get list patch update watch",
                    &["apps"],
                    "controllerrevisions",
                ),
                r("create get list watch", &[CORE], "persistentvolumeclaims"),
                // persistentVolumeClaimRetentionPolicy (StatefulSetAutoDeletePVC, GA in 1.32);
                // unconditional upstream now
                r("delete update", &[CORE], "persistentvolumeclaims"),
                r("update", &[CORE], "pods/finalizers"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:certificate-controller",
            vec![
                r(
                    "delete get list watch",
                    &["certificates.k8s.io"],
                    "certificatesigningrequests",
                ),
                r(
                    "update",
                    &["certificates.k8s.io"],
                    "certificatesigningrequests/approval certificatesigningrequests/status",
                ),
                // capi.KubeAPIServerClientKubeletSignerName
                named(
                    "approve",
                    &["certificates.k8s.io"],
                    "signers",
                    "kubernetes.io/kube-apiserver-client-kubelet",
                ),
                // capi.LegacyUnknownSignerName, KubeAPIServerClientSignerName,
                // KubeAPIServerClientKubeletSignerName, KubeletServingSignerName
                named(
                    "sign",
                    &["certificates.k8s.io"],
                    "signers",
                    "kubernetes.io/kube-apiserver-client kubernetes.io/kube-apiserver-client-kubelet \
                     kubernetes.io/kubelet-serving kubernetes.io/legacy-unknown",
                ),
                r("create", &["authorization.k8s.io"], "subjectaccessreviews"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:ttl-after-finished-controller",
            vec![
                r("delete get list watch", &["batch"], "jobs"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        (
            "system:controller:root-ca-cert-publisher",
            vec![
                r("create update", &[CORE], "configmaps"),
                r("create patch update", &[CORE, "events.k8s.io"], "events"),
            ],
        ),
        // Not here: token-cleaner and bootstrap-signer. Upstream has no
        // `system:controller:` ClusterRole for them. namespace_policy.go gives them
        // namespaced Roles and RoleBindings instead (the Role and its RoleBinding share the
        // name `system:controller:NAME`; the subject is the ServiceAccount kube-system/NAME):
        //
        //   Role kube-system/system:controller:token-cleaner
        //     r("delete get list watch", &[CORE], "secrets")
        //     r("create patch update", &[CORE, "events.k8s.io"], "events")
        //
        //   Role kube-system/system:controller:bootstrap-signer
        //     r("get list watch", &[CORE], "secrets")
        //
        //   Role kube-public/system:controller:bootstrap-signer
        //     r("get list watch", &[CORE], "configmaps")
        //     named("update", &[CORE], "configmaps", "cluster-info")
        //     r("create patch update", &[CORE, "events.k8s.io"], "events")
    ]
}

/// Subjects of `system:controller:<name>`: its own account, and the accounts of skiff
/// controllers that also do its work.
pub(super) fn controller_accounts(role: &str) -> Vec<&'static str> {
    match role.strip_prefix("system:controller:").unwrap_or(role) {
        "endpointslice-controller" => vec!["endpointslice-controller", "endpoint-controller"],
        "endpointslicemirroring-controller" => {
            vec!["endpointslicemirroring-controller", "endpoint-controller"]
        }
        "ttl-after-finished-controller" => vec!["ttl-after-finished-controller", "job-controller"],
        other => CONTROLLER_ACCOUNTS
            .iter()
            .copied()
            .find(|a| *a == other)
            .into_iter()
            .collect(),
    }
}

const CONTROLLER_ACCOUNTS: &[&str] = &[
    "clusterrole-aggregation-controller",
    "cronjob-controller",
    "daemon-set-controller",
    "deployment-controller",
    "disruption-controller",
    "endpoint-controller",
    "generic-garbage-collector",
    "job-controller",
    "namespace-controller",
    "node-controller",
    "pod-garbage-collector",
    "replicaset-controller",
    "resourcequota-controller",
    "service-account-controller",
    "statefulset-controller",
    "certificate-controller",
    "root-ca-cert-publisher",
];

/// Adds `patch` wherever `update` on a status subresource is granted.
pub(super) fn with_status_patch(mut rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    for rule in &mut rules {
        let status = rule
            .resources
            .iter()
            .flatten()
            .any(|r| r.ends_with("/status"));
        if status
            && rule.verbs.iter().any(|v| v == "update")
            && !rule.verbs.iter().any(|v| v == "patch")
        {
            rule.verbs.push("patch".into());
        }
    }
    rules
}
