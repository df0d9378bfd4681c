//! The controller manager end to end, in `skiff server`: ReplicaSets over fake nodes,
//! garbage collection with every propagation policy, namespaces emptied on deletion,
//! default ServiceAccounts.

mod common;

use std::time::Duration;

use common::{Backend, Cluster, wait_for};

fn apply(c: &Cluster, manifest: &str) {
    let out = c.kubectl_with(&["apply", "-f", "-"], &[], Some(manifest));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn replicaset(name: &str, replicas: usize, extra_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: busybox}}]\n{extra_spec}"
    )
}

/// Active (not terminating) pods with `app=NAME`, and the nodes they are on.
fn active_pods(c: &Cluster, name: &str) -> Vec<String> {
    let out = c.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={name}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.deletionTimestamp}|{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_start_matches('|').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicasets_keep_their_pods_spread_and_scale() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(5);
    apply(&c, &replicaset("web", 50, ""));
    wait_for("50 pods bound", || {
        let pods = active_pods(&c, "web");
        pods.len() == 50 && pods.iter().all(|n| !n.is_empty())
    });
    let pods = active_pods(&c, "web");
    for i in 1..=5 {
        let on = pods.iter().filter(|n| **n == format!("node-{i}")).count();
        assert_eq!(on, 10, "node-{i}: {pods:?}");
    }
    // The controller acts as its own service account, with upstream's role: it may make
    // pods, not read secrets; its writes name the controller manager as their manager.
    let sa = "--as=system:serviceaccount:kube-system:replicaset-controller";
    assert_eq!(c.ok(&["auth", "can-i", "create", "pods", sa]).trim(), "yes");
    let denied = c.kubectl(&["auth", "can-i", "get", "secrets", sa]);
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");
    let managers = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.managedFields[*].manager}",
    ]);
    assert!(managers.contains("kube-controller-manager"), "{managers}");
    // The same through a Deployment of 50 (Deployment -> ReplicaSet -> pods -> scheduler).
    apply(
        &c,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: fifty}\nspec:\n  replicas: 50\n  selector: {matchLabels: {app: fifty}}\n  template:\n    metadata: {labels: {app: fifty}}\n    spec: {containers: [{name: c, image: busybox}]}\n",
    );
    wait_for("the Deployment's 50 pods bound", || {
        let pods = active_pods(&c, "fifty");
        pods.len() == 50 && pods.iter().all(|n| !n.is_empty())
    });
    let pods = active_pods(&c, "fifty");
    for i in 1..=5 {
        let on = pods.iter().filter(|n| **n == format!("node-{i}")).count();
        assert_eq!(on, 10, "node-{i}: {pods:?}");
    }
    wait_for("status.replicas 50", || {
        c.ok(&["get", "rs", "web", "-o", "jsonpath={.status.replicas}"]) == "50"
    });
    // Pods owned by the ReplicaSet, made from its template.
    let pod = c.json(&["get", "pods", "-l", "app=web"]);
    let owner = &pod["items"][0]["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicaSet");
    assert_eq!(owner["controller"], true);
    c.ok(&["scale", "rs", "web", "--replicas=0"]);
    wait_for("no active pods", || active_pods(&c, "web").is_empty());
    c.ok(&["scale", "rs", "web", "--replicas=5"]);
    wait_for("5 pods again", || active_pods(&c, "web").len() == 5);
    // A pod deleted by hand is replaced.
    c.ok(&[
        "delete",
        "pods",
        "-l",
        "app=web",
        "--force",
        "--grace-period=0",
    ]);
    wait_for("replacements", || active_pods(&c, "web").len() == 5);

    // Orphans that match a selector are adopted; a pod relabelled out of it is released.
    for i in 1..=2 {
        c.ok(&[
            "run",
            &format!("orphan-{i}"),
            "--image=busybox",
            "--labels=app=adopt",
        ]);
    }
    apply(&c, &replicaset("adopt", 3, ""));
    wait_for("3 pods, two of them adopted", || {
        active_pods(&c, "adopt").len() == 3
    });
    let owner = |pod: &str| {
        c.ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}",
        ])
    };
    wait_for("the orphans owned by adopt", || {
        owner("orphan-1") == "adopt" && owner("orphan-2") == "adopt"
    });
    c.ok(&["label", "pod", "orphan-1", "app=released", "--overwrite"]);
    wait_for("orphan-1 released and replaced", || {
        owner("orphan-1").is_empty() && active_pods(&c, "adopt").len() == 3
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_propagates_in_the_background_the_foreground_or_not_at_all() {
    let c = Cluster::start(Backend::Embedded).await;
    // No nodes: the pods stay unscheduled, so deleting them is immediate.
    for name in ["bg", "fg", "orphans"] {
        apply(&c, &replicaset(name, 3, ""));
    }
    for name in ["bg", "fg", "orphans"] {
        wait_for("3 pods", || active_pods(&c, name).len() == 3);
    }
    c.ok(&["delete", "rs", "bg"]);
    wait_for("background: the pods follow", || {
        active_pods(&c, "bg").is_empty()
    });
    let out = c.ok(&["delete", "rs", "fg", "--cascade=foreground"]);
    assert!(out.contains("deleted"), "{out}");
    // kubectl waited for the ReplicaSet to go, which it does only after its pods.
    assert!(active_pods(&c, "fg").is_empty());
    assert!(c.fails(&["get", "rs", "fg"]).contains("not found"));
    c.ok(&["delete", "rs", "orphans", "--cascade=orphan"]);
    wait_for("the orphaning to finish", || {
        c.kubectl(&["get", "rs", "orphans"]).status.code() != Some(0)
    });
    let pods = c.json(&["get", "pods", "-l", "app=orphans"]);
    let items = pods["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    assert!(
        items
            .iter()
            .all(|p| p["metadata"]["ownerReferences"].is_null()),
        "{pods}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_get_a_default_service_account_and_are_emptied_on_delete() {
    let c = Cluster::start(Backend::Embedded).await;
    c.ok(&["create", "namespace", "doomed"]);
    wait_for("the default service account", || {
        c.kubectl(&["get", "sa", "default", "-n", "doomed"])
            .status
            .success()
    });
    c.ok(&["create", "configmap", "a", "-n", "doomed"]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "doomed",
        "--from-literal=a=b",
    ]);
    let out = c.kubectl(&["delete", "namespace", "doomed", "--timeout=60s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.fails(&["get", "namespace", "doomed"])
            .contains("not found")
    );
    // Deleting the default account brings it back.
    c.ok(&["delete", "sa", "default"]);
    wait_for("the default service account again", || {
        c.kubectl(&["get", "sa", "default"]).status.success()
    });
}

static NEXT_IP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Plays the kubelet for fake nodes: every pod bound to a node becomes Running and
/// Ready, and pods being deleted are removed.
fn fake_kubelet(kubeconfig: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, DeleteParams, Patch, PatchParams};
    use kube::runtime::watcher;
    tokio::spawn(async move {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let mut pods =
            watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).boxed();
        while let Some(event) = pods.next().await {
            let pods: Vec<Pod> = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                _ => continue,
            };
            for pod in pods {
                let Some(_node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                if pod.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                    continue;
                }
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                // A container running `true` or `false` finishes at once.
                let command = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.command.clone())
                    .unwrap_or_default();
                let exit = match command.first().map(String::as_str) {
                    Some("true") => Some("Succeeded"),
                    Some("false") => Some("Failed"),
                    _ => None,
                };
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                if let Some(exit) = exit {
                    if phase.as_deref() != Some(exit) {
                        let status = serde_json::json!({"status": {"phase": exit, "conditions": [
                            {"type": "Ready", "status": "False"}]}});
                        let _ = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                            .await;
                    }
                    continue;
                }
                if !ready {
                    let n = NEXT_IP.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let ip = format!("10.244.{}.{}", n / 250, n % 250 + 1);
                    let status = serde_json::json!({"status": {"phase": "Running", "podIP": ip,
                        "podIPs": [{"ip": ip}], "conditions": [
                        {"type": "Ready", "status": "True"},
                        {"type": "PodScheduled", "status": "True"},
                    ]}});
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                        .await;
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_within_their_availability_budget_and_roll_back() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(5);
    let kubelet = fake_kubelet(c.kubeconfig.clone());
    let deployment = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 20\n  selector: {{matchLabels: {{app: web}}}}\n  strategy: {{rollingUpdate: {{maxSurge: 2, maxUnavailable: 2}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n"
        )
    };
    apply(&c, &deployment("example/web:1"));
    let out = c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    // Watch availability through the update: never below replicas - maxUnavailable.
    let mut watch = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args([
            "get",
            "deployment",
            "web",
            "-w",
            "-o",
            "jsonpath={.status.availableReplicas}{\"\\n\"}",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    apply(&c, &deployment("example/web:2"));
    let out = c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let _ = watch.kill();
    let seen = watch.wait_with_output().expect("watch output");
    let available: Vec<i64> = String::from_utf8_lossy(&seen.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(!available.is_empty());
    assert!(available.iter().all(|a| *a >= 18), "{available:?}");
    let images = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert!(
        images.split_whitespace().all(|i| i == "example/web:2"),
        "{images}"
    );
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    // What the controllers did shows as upstream's events in `kubectl describe`.
    wait_for("ScalingReplicaSet events", || {
        let described = c.ok(&["describe", "deployment", "web"]);
        described.contains("ScalingReplicaSet")
            && described.contains("Scaled up replica set web-")
            && described.contains("Scaled down replica set web-")
    });
    let rs = c.ok(&["get", "rs", "-l", "app=web", "-o", "name"]);
    let first_rs = rs.lines().next().expect("a ReplicaSet").to_string();
    wait_for("SuccessfulCreate events", || {
        c.ok(&["describe", &first_rs]).contains("Created pod: web-")
    });
    // Undo restores the first template.
    c.ok(&["rollout", "undo", "deployment/web"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    wait_for("every pod back on web:1", || {
        let images = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        let images: Vec<&str> = images.split_whitespace().collect();
        images.len() == 20 && images.iter().all(|i| *i == "example/web:1")
    });
    // Scale to zero and back.
    c.ok(&["scale", "deployment/web", "--replicas=0"]);
    wait_for("no pods", || active_pods(&c, "web").is_empty());
    c.ok(&["scale", "deployment/web", "--replicas=3"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    // Foreground deletion takes the ReplicaSets and pods first.
    c.ok(&["delete", "deployment", "web", "--cascade=foreground"]);
    assert!(
        c.ok(&["get", "rs,pods", "-l", "app=web", "-o", "name"])
            .trim()
            .is_empty()
    );
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_endpoints_and_slices_of_their_ready_pods() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(2);
    let kubelet = fake_kubelet(c.kubeconfig.clone());
    apply(
        &c,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n",
    );
    wait_for("three ready addresses", || {
        c.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
        .split_whitespace()
        .count()
            == 3
    });
    // The named target port resolves to the container port.
    assert_eq!(
        c.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[0].ports[0].port}"
        ]),
        "8080"
    );
    let slices = c.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    let slice = &slices["items"][0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"].as_array().map(Vec::len), Some(3));
    assert_eq!(slice["ports"][0]["port"], 8080);
    // Scaling down removes addresses.
    c.ok(&["scale", "deployment/web", "--replicas=1"]);
    wait_for("one address", || {
        c.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
        .split_whitespace()
        .count()
            == 1
    });
    // The API server's own Service is mirrored into a slice.
    wait_for("the kubernetes slice", || {
        c.ok(&[
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "name",
        ])
        .contains("kubernetes")
    });
    kubelet.abort();
}

/// Renews `kube-node-lease/NODE` every half second while `alive` says so.
fn lease_renewer(
    kubeconfig: std::path::PathBuf,
    node: &'static str,
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, Patch, PatchParams};
    tokio::spawn(async move {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
        loop {
            if alive.load(std::sync::atomic::Ordering::SeqCst) {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let lease = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}});
                let _ = api
                    .patch(
                        node,
                        &PatchParams::apply("fake-kubelet").force(),
                        &Patch::Apply(lease),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_is_tainted_and_its_pods_replaced_elsewhere() {
    let c = Cluster::start_with(Backend::Embedded, &["--node-monitor-grace-period", "3"]).await;
    c.fake_nodes(2);
    let kubelet = fake_kubelet(c.kubeconfig.clone());
    let alive1 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let alive2 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r1 = lease_renewer(c.kubeconfig.clone(), "node-1", alive1.clone());
    let r2 = lease_renewer(c.kubeconfig.clone(), "node-2", alive2.clone());
    // Node IPAM: every node gets a pod CIDR.
    wait_for("pod CIDRs", || {
        let cidrs = c.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
        cidrs.split_whitespace().count() == 2 && cidrs.contains("10.244.")
    });
    let tolerate_briefly = "      tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]\n";
    apply(&c, &replicaset("web", 6, tolerate_briefly));
    wait_for("pods on both nodes", || {
        let pods = active_pods(&c, "web");
        pods.len() == 6
            && pods.contains(&"node-1".to_string())
            && pods.contains(&"node-2".to_string())
    });
    // Every pod also got upstream's default 300 s toleration for not-ready nodes.
    let pod = c.json(&["get", "pods", "-l", "app=web"]);
    let tolerations = pod["items"][0]["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/not-ready"),
        "{tolerations}"
    );
    alive1.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for("node-1 unreachable", || {
        c.ok(&[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.spec.taints[*].key}",
        ])
        .contains("node.kubernetes.io/unreachable")
    });
    assert_eq!(
        c.ok(&[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"
        ]),
        "Unknown"
    );
    assert!(
        !c.ok(&["get", "node", "node-2", "-o", "jsonpath={.spec.taints}"])
            .contains("unreachable")
    );
    wait_for("all pods replaced on node-2", || {
        let pods = active_pods(&c, "web");
        pods.len() == 6 && pods.iter().all(|n| n == "node-2")
    });
    r1.abort();
    r2.abort();
    kubelet.abort();
}

fn job(name: &str, extra_spec: &str, command: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{extra_spec}  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: busybox, command: [{command}]}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_index_and_expire() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(2);
    let kubelet = fake_kubelet(c.kubeconfig.clone());
    apply(
        &c,
        &job("ok", "  completions: 3\n  parallelism: 2\n", "\"true\""),
    );
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=60s",
    ]);
    assert_eq!(
        c.ok(&["get", "job", "ok", "-o", "jsonpath={.status.succeeded}"]),
        "3"
    );
    wait_for("the Job's events", || {
        let described = c.ok(&["describe", "job", "ok"]);
        described.contains("SuccessfulCreate") && described.contains("Job completed")
    });
    apply(&c, &job("broken", "  backoffLimit: 1\n", "\"false\""));
    c.ok(&[
        "wait",
        "--for=condition=failed",
        "job/broken",
        "--timeout=60s",
    ]);
    let reason = c.ok(&[
        "get",
        "job",
        "broken",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
    ]);
    assert_eq!(reason, "BackoffLimitExceeded");
    assert_eq!(
        c.ok(&["get", "job", "broken", "-o", "jsonpath={.status.failed}"]),
        "2"
    );
    apply(
        &c,
        &job(
            "indexed",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
            "\"true\"",
        ),
    );
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=60s",
    ]);
    assert_eq!(
        c.ok(&[
            "get",
            "job",
            "indexed",
            "-o",
            "jsonpath={.status.completedIndexes}"
        ]),
        "0,1,2"
    );
    apply(
        &c,
        &job("short-lived", "  ttlSecondsAfterFinished: 1\n", "\"true\""),
    );
    wait_for("the finished job to be deleted after its TTL", || {
        c.kubectl(&["get", "job", "short-lived"]).status.code() != Some(0)
    });
    // A budget over three ready pods that must keep two allows one disruption.
    apply(
        &c,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox}]}\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: web}}\n",
    );
    wait_for("the budget's status", || {
        c.ok(&[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}",
        ]) == "3/1"
    });
    // maxUnavailable counts against the Deployment's scale: 5 wanted, so 4 must stay.
    apply(
        &c,
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web-max}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: web}}\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: loose}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: loose}}\n",
    );
    c.ok(&["scale", "deployment", "web", "--replicas=5"]);
    wait_for("the scale-based budget", || {
        c.ok(&[
            "get",
            "pdb",
            "web-max",
            "-o",
            "jsonpath={.status.expectedPods}/{.status.desiredHealthy}/{.status.disruptionsAllowed}",
        ]) == "5/4/1"
    });
    // Pods without a controller give a scale-based budget nothing to count: no disruption.
    c.ok(&["run", "loose", "--image=busybox", "--labels=app=loose"]);
    wait_for("the controllerless budget", || {
        c.ok(&[
            "get",
            "pdb",
            "loose",
            "-o",
            "jsonpath={.status.disruptionsAllowed}",
        ]) == "0"
    });
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_run_one_pod_per_eligible_node_and_roll() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(3);
    let kubelet = fake_kubelet(c.kubeconfig.clone());
    c.ok(&["taint", "node", "node-3", "dedicated=db:NoSchedule"]);
    let ds = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n"
        )
    };
    apply(&c, &ds("example/agent:1"));
    wait_for("a pod on each untainted node", || {
        let mut nodes = active_pods(&c, "agent");
        nodes.sort();
        nodes == ["node-1", "node-2"]
    });
    c.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    apply(&c, &ds("example/agent:2"));
    c.ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    wait_for("every pod on the new image", || {
        let images = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=agent",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        let images: Vec<&str> = images.split_whitespace().collect();
        images.len() == 2 && images.iter().all(|i| *i == "example/agent:2")
    });
    // Tolerating the taint brings a pod to the third node.
    c.ok(&["taint", "node", "node-3", "dedicated=db:NoSchedule-"]);
    wait_for("a third pod", || active_pods(&c, "agent").len() == 3);
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_make_ordered_pods_with_their_own_claims() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(2);
    let kubelet = fake_kubelet(c.kubeconfig.clone());
    let sts = |image: &str, replicas: u32| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  serviceName: db\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n  volumeClaimTemplates:\n  - metadata: {{name: data}}\n    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n"
        )
    };
    apply(&c, &sts("example/db:1", 3));
    c.ok(&["rollout", "status", "statefulset/db", "--timeout=60s"]);
    let names = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=db",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut names: Vec<&str> = names.split_whitespace().collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    // Created in order: each pod is younger than the one before it.
    let created = |n: &str| {
        c.ok(&[
            "get",
            "pod",
            n,
            "-o",
            "jsonpath={.metadata.creationTimestamp}",
        ])
    };
    assert!(created("db-0") <= created("db-1") && created("db-1") <= created("db-2"));
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "db-1",
            "-o",
            "jsonpath={.spec.hostname}.{.spec.subdomain}"
        ]),
        "db-1.db"
    );
    let claims = c.ok(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"]);
    for claim in ["data-db-0", "data-db-1", "data-db-2"] {
        assert!(claims.contains(claim), "{claims}");
    }
    wait_for("the StatefulSet's events", || {
        let described = c.ok(&["describe", "statefulset", "db"]);
        described.contains("create Pod db-2 in StatefulSet db successful")
            && described.contains("create Claim data-db-0 Pod db-0 in StatefulSet db success")
    });
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "db-0",
            "-o",
            "jsonpath={.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName}"
        ]),
        "data-db-0"
    );
    // A new template replaces every pod; the history lists both revisions.
    apply(&c, &sts("example/db:2", 3));
    c.ok(&["rollout", "status", "statefulset/db", "--timeout=60s"]);
    wait_for("every pod on db:2", || {
        let images = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=db",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        let images: Vec<&str> = images.split_whitespace().collect();
        images.len() == 3 && images.iter().all(|i| *i == "example/db:2")
    });
    let history = c.ok(&["rollout", "history", "statefulset/db"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    // Scaling down removes the highest ordinals; the claims stay.
    apply(&c, &sts("example/db:2", 1));
    wait_for("only db-0", || {
        c.ok(&[
            "get",
            "pods",
            "-l",
            "app=db",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]) == "db-0"
    });
    assert!(c.ok(&["get", "pvc", "-o", "name"]).contains("data-db-2"));
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quotas_report_usage() {
    let c = Cluster::start(Backend::Embedded).await;
    c.ok(&["create", "namespace", "quota"]);
    for name in ["a", "b"] {
        c.ok(&["create", "configmap", name, "-n", "quota"]);
    }
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: quota}}\nspec:\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}}}]\n"
        )
    };
    apply(&c, &pod("p1"));
    apply(&c, &pod("p2"));
    c.ok(&[
        "create",
        "quota",
        "limits",
        "-n",
        "quota",
        "--hard=pods=10,configmaps=5,requests.cpu=2,requests.memory=1Gi",
    ]);
    wait_for("quota usage", || {
        c.ok(&["get", "quota", "limits", "-n", "quota", "-o", "jsonpath={.status.used.pods} {.status.used.configmaps} {.status.used.requests\\.cpu} {.status.used.requests\\.memory}"])
            // The namespace's configmaps: a, b and the published kube-root-ca.crt.
            == "2 3 200m 128Mi"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_controller_manager_takes_over_when_the_leader_dies() {
    // `skiff apiserver` alone, then two controller managers against it.
    let c = Cluster::start(Backend::Etcd).await;
    let mut first = c.spawn_component(&["controller-manager", "--identity", "first"]);
    let holder = || {
        c.ok(&[
            "get",
            "lease",
            "kube-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    wait_for("the first controller manager to lead", || {
        holder() == "first"
    });
    let _second = c.spawn_component(&["controller-manager", "--identity", "second"]);
    apply(&c, &replicaset("before", 3, ""));
    wait_for("before's pods", || active_pods(&c, "before").len() == 3);
    // SIGKILL: the lease is not released; the standby waits out the lease duration.
    first.kill();
    let killed = std::time::Instant::now();
    apply(&c, &replicaset("after", 3, ""));
    wait_for("the second controller manager to lead", || {
        holder() == "second"
    });
    wait_for("after's pods", || active_pods(&c, "after").len() == 3);
    // Within the lease duration (15 s) plus a retry period and a sync.
    assert!(
        killed.elapsed() < Duration::from_secs(25),
        "{:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_rollout_exceeds_its_progress_deadline() {
    // No nodes: the pods never become available.
    let c = Cluster::start(Backend::Embedded).await;
    apply(
        &c,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stuck}\nspec:\n  replicas: 1\n  progressDeadlineSeconds: 2\n  selector: {matchLabels: {app: stuck}}\n  template:\n    metadata: {labels: {app: stuck}}\n    spec: {containers: [{name: c, image: busybox}]}\n",
    );
    wait_for("ProgressDeadlineExceeded", || {
        c.ok(&[
            "get",
            "deployment",
            "stuck",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
        ]) == "ProgressDeadlineExceeded"
    });
    let out = c.kubectl(&["rollout", "status", "deployment/stuck", "--timeout=30s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}
