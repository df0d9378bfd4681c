//! Admission that shapes and limits what namespaces hold, driven with kubectl against
//! `skiff server`: LimitRanger fills in a container's default requests and limits and
//! refuses pods outside a LimitRange, ResourceQuota refuses what would exceed a quota
//! (charging it at once, so concurrent creations cannot overshoot together), and
//! DefaultStorageClass gives claims the default class, each with upstream's messages.

mod common;

use common::{Backend, Cluster, wait_for};

fn pod(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {resources}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_containers() {
    let c = Cluster::start(Backend::Embedded).await;
    c.ok(&["create", "namespace", "limits"]);
    c.ok_stdin(
        &["apply", "-n", "limits", "-f", "-"],
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bounds}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 128Mi}\n    defaultRequest: {cpu: 100m}\n    max: {cpu: '1'}\n    min: {memory: 64Mi}\n",
    );
    // The LimitRange itself is defaulted as upstream: the request defaults to the limit.
    let range = c.json(&["get", "limitrange", "bounds", "-n", "limits"]);
    assert_eq!(
        range["spec"]["limits"][0]["defaultRequest"]["memory"],
        "128Mi"
    );
    c.ok_stdin(&["apply", "-n", "limits", "-f", "-"], &pod("plain", "{}"));
    let plain = c.json(&["get", "pod", "plain", "-n", "limits"]);
    let resources = &plain["spec"]["containers"][0]["resources"];
    assert_eq!(
        resources["limits"],
        serde_json::json!({"cpu": "500m", "memory": "128Mi"})
    );
    assert_eq!(
        resources["requests"],
        serde_json::json!({"cpu": "100m", "memory": "128Mi"})
    );
    assert_eq!(
        plain["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    let out = c.fails_stdin(
        &["apply", "-n", "limits", "-f", "-"],
        &pod("greedy", "{limits: {cpu: '2'}}"),
    );
    assert!(
        out.contains(
            r#"pods "greedy" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#
        ),
        "{out}"
    );
    let out = c.fails_stdin(
        &["apply", "-n", "limits", "-f", "-"],
        &pod("tiny", "{requests: {memory: 32Mi}, limits: {cpu: '2'}}"),
    );
    assert!(
        out.contains("[maximum cpu usage per Container is 1, but limit is 2, minimum memory usage per Container is 64Mi, but request is 32Mi]"),
        "{out}"
    );

    // DefaultStorageClass: a claim naming no class gets the default one; "" stays.
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: fast\n  annotations: {storageclass.kubernetes.io/is-default-class: 'true'}\nprovisioner: example.com/fast\n",
    );
    let claim = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n{class}"
        )
    };
    c.ok_stdin(&["apply", "-f", "-"], &claim("defaulted", ""));
    c.ok_stdin(
        &["apply", "-f", "-"],
        &claim("classless", "  storageClassName: ''\n"),
    );
    let class = |name: &str| {
        c.ok(&[
            "get",
            "pvc",
            name,
            "-o",
            "jsonpath={.spec.storageClassName}",
        ])
    };
    assert_eq!(class("defaulted"), "fast");
    assert_eq!(class("classless"), "");
}

/// What the `compute` quota of namespace `team` counts of CPU requests.
fn cpu_used(c: &Cluster) -> String {
    c.ok(&[
        "get",
        "quota",
        "compute",
        "-n",
        "team",
        "-o",
        "jsonpath={.status.used.requests\\.cpu}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_what_would_exceed_them() {
    let c = Cluster::start(Backend::Embedded).await;
    c.ok(&["create", "namespace", "team"]);
    wait_for("the namespace's root CA", || {
        c.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "team"])
            .status
            .success()
    });
    c.ok_stdin(
        &["apply", "-n", "team", "-f", "-"],
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: compute}\nspec:\n  hard: {requests.cpu: '1', limits.cpu: '2', pods: '3'}\n---\napiVersion: v1\nkind: ResourceQuota\nmetadata: {name: objects}\nspec:\n  hard: {count/configmaps: '2'}\n",
    );
    let out = c.fails_stdin(&["apply", "-n", "team", "-f", "-"], &pod("bare", "{}"));
    assert!(
        out.contains(r#"pods "bare" is forbidden: failed quota: compute: must specify limits.cpu for: c; requests.cpu for: c"#),
        "{out}"
    );
    let sized = "{requests: {cpu: 600m}, limits: {cpu: '1'}}";
    c.ok_stdin(&["apply", "-n", "team", "-f", "-"], &pod("first", sized));
    // Charged at once, before the controller recounts.
    assert_eq!(cpu_used(&c), "600m");
    let out = c.fails_stdin(&["apply", "-n", "team", "-f", "-"], &pod("second", sized));
    assert!(
        out.contains(r#"pods "second" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"#),
        "{out}"
    );
    // A dry run is checked but not charged.
    let small = "{requests: {cpu: 100m}, limits: {cpu: 100m}}";
    c.ok_stdin(
        &["apply", "-n", "team", "--dry-run=server", "-f", "-"],
        &pod("dry", small),
    );
    assert_eq!(cpu_used(&c), "600m");
    // Freed once the pod is gone (the controller recounts).
    c.ok(&[
        "delete",
        "pod",
        "first",
        "-n",
        "team",
        "--grace-period=0",
        "--force",
    ]);
    wait_for("the quota to be recounted", || cpu_used(&c) == "0");
    // Concurrent creations: exactly as many as the quota allows get in.
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    let out = c.kubectl_with(
                        &["apply", "-n", "team", "-f", "-"],
                        &[],
                        Some(&pod(&format!("racer-{i}"), small)),
                    );
                    out.status.success()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 3, "{results:?}");
    // Object counts: the namespace holds kube-root-ca.crt already.
    c.ok(&["create", "configmap", "one", "-n", "team"]);
    let out = c.fails(&["create", "configmap", "two", "-n", "team"]);
    assert!(
        out.contains(r#"configmaps "two" is forbidden: exceeded quota: objects, requested: count/configmaps=1, used: count/configmaps=2, limited: count/configmaps=2"#),
        "{out}"
    );
}
