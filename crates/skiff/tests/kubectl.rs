//! End-to-end: the real `skiff server` driven by the real kubectl, against the embedded
//! store and against a real etcd.

mod common;

use std::process::{Command, Stdio};

use common::Cluster;
use serde_json::Value;

const MANIFEST: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: team
  labels:
    app: web
data:
  mode: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: token
  namespace: team
stringData:
  password: hunter2
";

async fn version_and_discovery(c: &mut Cluster) {
    let version = c.json(&["version"]);
    assert_eq!(version["serverVersion"]["major"], "1");
    assert!(
        version["serverVersion"]["gitVersion"]
            .as_str()
            .expect("gitVersion")
            .contains("skiff")
    );
    // Aggregated discovery: two requests (/api, /apis) learn every resource.
    let cache = c.data_dir().join("discovery-cache");
    let cache_flag = format!("--cache-dir={}", cache.display());
    let out = c.kubectl(&["api-resources", "--no-headers", "-v=6", &cache_flag]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("/apis?timeout"), "{log}");
    assert!(!log.contains("/apis/apps/v1?timeout"), "{log}");
    let resources = String::from_utf8_lossy(&out.stdout).into_owned();
    for expected in [
        "configmaps",
        "namespaces",
        "secrets",
        "deployments",
        "leases",
    ] {
        assert!(
            resources.lines().any(|l| l.starts_with(expected)),
            "{expected} in:\n{resources}"
        );
    }
    assert!(
        resources
            .lines()
            .any(|l| l.starts_with("configmaps") && l.contains(" cm "))
    );
    let v2: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/openapi/v2"])).expect("swagger json");
    assert_eq!(v2["swagger"], "2.0");
    assert!(
        v2["definitions"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"]
            .is_array()
    );
    let ready = c.ok(&["get", "--raw", "/readyz?verbose"]);
    assert!(ready.contains("readyz check passed"), "{ready}");
    let namespaces = c.ok(&["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "{namespaces}"
        );
    }
    let metrics = c.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.lines().any(|l| l.starts_with("apiserver_request_total{verb=\"LIST\",group=\"\",version=\"v1\",resource=\"namespaces\"")),
        "{metrics}"
    );
    assert!(metrics.contains("apiserver_request_duration_seconds_bucket{"));
}

const WORKLOAD: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: registry.local/app:1
        env:
        - {name: MODE, value: fast}
      - name: sidecar
        image: registry.local/sidecar:1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80}
";

async fn workloads_keep_spec_status_and_generation_apart(c: &mut Cluster) {
    let apply = |manifest: &str| {
        let out = c.kubectl_with(&["apply", "-f", "-"], &[], Some(manifest));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apply(WORKLOAD);
    let deploy = c.json(&["get", "deployment", "web"]);
    assert_eq!(deploy["metadata"]["generation"], 1);
    assert_eq!(
        deploy["spec"]["strategy"]["type"], "RollingUpdate",
        "defaulted"
    );
    let svc = c.json(&["get", "service", "web"]);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"], 80,
        "targetPort defaults to port"
    );
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");

    // Changing one container's image keeps the other container (strategic merge by name)
    // and bumps the generation; a label change does not.
    apply(&WORKLOAD.replace("registry.local/app:1", "registry.local/app:2"));
    let deploy = c.json(&["get", "deployment", "web"]);
    let containers = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert_eq!(containers[0]["image"], "registry.local/app:2");
    assert_eq!(containers[0]["env"][0]["name"], "MODE");
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(deploy["metadata"]["generation"], 2);
    c.ok(&["label", "deployment", "web", "team=a"]);
    assert_eq!(
        c.json(&["get", "deployment", "web"])["metadata"]["generation"],
        2
    );

    // Status goes through the status subresource only. (The responses are checked, not
    // a later read: in `skiff server` the Deployment controller owns the status.)
    let patched = c.json(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":5}}"#,
    ]);
    assert_ne!(patched["status"]["readyReplicas"], 5);
    let deploy = c.json(&["patch", "deployment", "web", "--subresource=status", "--type=merge", "-p", r#"{"status":{"replicas":2,"readyReplicas":1,"updatedReplicas":2,"availableReplicas":1},"spec":{"replicas":9}}"#]);
    assert_eq!(deploy["status"]["readyReplicas"], 1);
    assert_eq!(
        deploy["spec"]["replicas"], 2,
        "a status update changes nothing else"
    );
    assert_eq!(deploy["metadata"]["generation"], 2);

    let header = |args: &[&str]| {
        c.ok(args)
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        header(&["get", "deployments"]),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(
        header(&["get", "services"]),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    // READY is readyReplicas/replicas (what the controller reports, in `skiff server`).
    let row = c.ok(&["get", "deployment", "web", "--no-headers"]);
    let ready = row
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(row.starts_with("web") && ready.ends_with("/2"), "{row}");
    let all = c.ok(&["get", "all", "-o", "name"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("service/web"),
        "{all}"
    );
}

/// Writes `json` to a file in the cluster's directory, for `kubectl create --raw -f`.
fn body_file(c: &Cluster, name: &str, json: &str) -> String {
    let path = c.data_dir().join(name);
    std::fs::write(&path, json).expect("write body");
    path.to_string_lossy().into_owned()
}

async fn services_get_cluster_ips_and_node_ports(c: &mut Cluster) {
    assert_eq!(
        c.ok(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}"
        ]),
        "10.96.0.1"
    );
    let port = c.server.rsplit(':').next().expect("port").to_string();
    assert_eq!(
        c.ok(&[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[0].ports[0].port}"
        ]),
        port
    );
    let out = c.kubectl_with(&["apply", "-f", "-"], &[], Some(WORKLOAD));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ip = c.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with("10.") && ip != "10.96.0.1", "{ip}");
    let node_port = "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports:\n  - {port: 80}\n";
    assert!(
        c.kubectl_with(&["create", "-f", "-"], &[], Some(node_port))
            .status
            .success()
    );
    let allocated: u16 = c
        .ok(&[
            "get",
            "svc",
            "np",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .parse()
        .expect("nodePort");
    assert!((30000..=32767).contains(&allocated));
    let taken = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: taken\nspec:\n  clusterIP: {ip}\n  ports:\n  - {{port: 80}}\n"
    );
    let out = c.kubectl_with(&["create", "-f", "-"], &[], Some(&taken));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // Deleting a Service frees its address.
    c.ok(&["delete", "svc", "web"]);
    let out = c.kubectl_with(&["create", "-f", "-"], &[], Some(&taken));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.ok(&["get", "svc", "taken", "-o", "jsonpath={.spec.clusterIP}"]),
        ip
    );
}

async fn scale_binding_eviction_and_graceful_deletion(c: &mut Cluster) {
    let out = c.kubectl_with(&["apply", "-f", "-"], &[], Some(WORKLOAD));
    assert!(out.status.success());
    c.ok(&["scale", "deployment", "web", "--replicas=5"]);
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
    let scale: Value = serde_json::from_str(&c.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]))
    .expect("scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(scale["status"]["selector"], "app=web");

    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {app: q}\nspec:\n  containers:\n  - {name: c, image: busybox}\n";
    assert!(
        c.kubectl_with(&["create", "-f", "-"], &[], Some(pod))
            .status
            .success()
    );
    assert_eq!(
        c.ok(&["get", "pod", "p", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );
    let binding = body_file(
        c,
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"node-1"}}"#,
    );
    c.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p/binding",
        "-f",
        &binding,
    ]);
    let bound = c.json(&["get", "pod", "p"]);
    assert_eq!(bound["spec"]["nodeName"], "node-1");
    assert!(
        bound["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "True")
    );
    let err = c.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p/binding",
        "-f",
        &binding,
    ]);
    assert!(err.contains("already assigned"), "{err}");

    // Eviction respects the PodDisruptionBudget selecting the pod: refused (429) until
    // the budget has been processed and allows a disruption, which it then uses up.
    let pdb = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: keep\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels: {app: q}\n";
    assert!(
        c.kubectl_with(&["create", "-f", "-"], &[], Some(pdb))
            .status
            .success()
    );
    let eviction = body_file(
        c,
        "eviction.json",
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p"}}"#,
    );
    let evict = [
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p/eviction",
        "-f",
        &eviction,
    ];
    let err = c.fails(&evict);
    assert!(err.contains("disruption budget"), "{err}");
    // The disruption controller computes the status too (it allows nothing: the pod is
    // not ready), so the eviction must land between its passes.
    common::wait_for("an eviction the budget allows", || {
        c.ok(&["patch", "pdb", "keep", "--subresource=status", "--type=merge", "-p",
            r#"{"status":{"observedGeneration":1,"disruptionsAllowed":1,"currentHealthy":2,"desiredHealthy":1,"expectedPods":2}}"#]);
        c.kubectl(&evict).status.success()
    });
    let budget = c.json(&["get", "pdb", "keep"]);
    assert_eq!(budget["status"]["disruptionsAllowed"], 0, "{budget}");
    // The eviction records the pod as disrupted; the controller drops the entry once
    // the pod is marked for deletion, as upstream's does.
    let disrupted = &budget["status"]["disruptedPods"]["p"];
    assert!(disrupted.is_string() || disrupted.is_null(), "{budget}");
    // Namespaced kinds are not written across namespaces.
    let err = c.fails(&["delete", "--raw", "/api/v1/pods"]);
    assert!(
        err.contains("MethodNotAllowed") || err.contains("not allow"),
        "{err}"
    );
    // A pod on a node is only marked: the kubelet has its grace period to stop it.
    let marked = c.json(&["get", "pod", "p"]);
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        c.ok(&["get", "pod", "p", "--no-headers"])
            .split_whitespace()
            .nth(2),
        Some("Terminating")
    );
    c.ok(&["delete", "pod", "p", "--grace-period=0", "--force"]);
    assert!(c.fails(&["get", "pod", "p"]).contains("not found"));

    // A namespace is gone once its finalizers are cleared through /finalize. (Its own
    // finalizer keeps it Terminating after the namespace controller removed
    // `kubernetes`, in `skiff server`.)
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: doomed\nspec:\n  finalizers: [kubernetes, example.com/hold]\n";
    assert!(
        c.kubectl_with(&["create", "-f", "-"], &[], Some(ns))
            .status
            .success()
    );
    c.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    assert_eq!(
        c.ok(&["get", "ns", "doomed", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    let finalize = body_file(
        c,
        "finalize.json",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"doomed"},"spec":{"finalizers":[]}}"#,
    );
    c.ok(&[
        "replace",
        "--raw",
        "/api/v1/namespaces/doomed/finalize",
        "-f",
        &finalize,
    ]);
    assert!(c.fails(&["get", "ns", "doomed"]).contains("not found"));
}

async fn get_prints_the_upstream_columns(c: &mut Cluster) {
    let created = c.kubectl_with(&["create", "-f", "-"], &[], Some(MANIFEST));
    assert!(created.status.success());
    let header = |args: &[&str]| {
        c.ok(args)
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(header(&["get", "namespaces"]), ["NAME", "STATUS", "AGE"]);
    assert_eq!(
        header(&["get", "configmaps", "-n", "team"]),
        ["NAME", "DATA", "AGE"]
    );
    assert_eq!(
        header(&["get", "secrets", "-n", "team"]),
        ["NAME", "TYPE", "DATA", "AGE"]
    );
    assert_eq!(
        header(&["get", "configmaps", "-A"]),
        ["NAMESPACE", "NAME", "DATA", "AGE"]
    );
    assert_eq!(
        header(&["get", "configmaps", "-n", "team", "--show-labels"]),
        ["NAME", "DATA", "AGE", "LABELS"]
    );
    let row = c.ok(&["get", "secret", "token", "-n", "team", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], ["token", "Opaque", "1"], "{row}");
    let team = c.ok(&["get", "ns", "team", "--no-headers"]);
    assert!(
        team.starts_with("team") && team.contains("Active"),
        "{team}"
    );
}

async fn create_get_label_annotate_delete(c: &mut Cluster) {
    let created = c.kubectl_with(&["create", "-f", "-"], &[], Some(MANIFEST));
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let out = String::from_utf8_lossy(&created.stdout);
    assert!(
        out.contains("namespace/team created")
            && out.contains("configmap/settings created")
            && out.contains("secret/token created"),
        "{out}"
    );

    let cm = c.json(&["get", "configmap", "settings", "-n", "team"]);
    assert_eq!(cm["data"]["mode"], "fast");
    assert!(
        cm["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    assert!(
        cm["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let secret = c.json(&["get", "secret", "token", "-n", "team"]);
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["data"]["password"], "aHVudGVyMg==",
        "stringData is folded into data"
    );
    assert!(secret.get("stringData").is_none());
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "fast"
    );
    assert!(
        c.ok(&["get", "cm", "-n", "team", "-o", "yaml"])
            .contains("mode: fast")
    );

    c.ok(&["label", "cm", "settings", "-n", "team", "tier=front"]);
    c.ok(&["annotate", "cm", "settings", "-n", "team", "owner=ops"]);
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "-n",
            "team",
            "-l",
            "tier=front,app in (web)",
            "-o",
            "name"
        ])
        .trim(),
        "configmap/settings"
    );
    assert_eq!(
        // (`app` too: kube-root-ca.crt, published in every namespace, has no tier.)
        c.ok(&[
            "get",
            "cm",
            "-n",
            "team",
            "-l",
            "app,tier!=front",
            "-o",
            "name"
        ])
        .trim(),
        ""
    );
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team",
            "-o",
            "jsonpath={.metadata.annotations.owner}"
        ]),
        "ops"
    );
    c.ok(&["label", "cm", "settings", "-n", "team", "tier-"]);
    assert_eq!(
        c.ok(&["get", "cm", "-n", "team", "-l", "tier", "-o", "name"])
            .trim(),
        ""
    );

    let all = c.json(&["get", "configmaps", "--all-namespaces"]);
    assert!(
        all["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["metadata"]["namespace"] == "team")
    );

    c.ok(&["delete", "cm", "settings", "-n", "team"]);
    let err = c.fails(&["get", "cm", "settings", "-n", "team"]);
    assert!(err.contains("configmaps \"settings\" not found"), "{err}");
    // --cascade=orphan leaves the object to the garbage collector: marked for deletion,
    // kept while a finalizer remains (the `orphan` one is the collector's to remove, in
    // `skiff server`; `example.com/hold` is ours).
    let owner = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owner\n  namespace: team\n  finalizers: [example.com/hold]\n";
    assert!(
        c.kubectl_with(&["create", "-f", "-"], &[], Some(owner))
            .status
            .success()
    );
    c.ok(&[
        "delete",
        "cm",
        "owner",
        "-n",
        "team",
        "--cascade=orphan",
        "--wait=false",
    ]);
    let marked = c.json(&["get", "cm", "owner", "-n", "team"]);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let finalizers = marked["metadata"]["finalizers"].to_string();
    assert!(finalizers.contains("example.com/hold"), "{finalizers}");
    c.ok(&[
        "patch",
        "cm",
        "owner",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let err = c.fails(&["get", "cm", "owner", "-n", "team"]);
    assert!(err.contains("not found"), "{err}");
}

async fn patch_of_every_type(c: &mut Cluster) {
    let created = c.kubectl_with(&["create", "-f", "-"], &[], Some(MANIFEST));
    assert!(created.status.success());
    c.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"data":{"merged":"yes"}}"#,
    ]);
    c.ok(&["patch", "cm", "settings", "-n", "team", "--type=json", "-p", r#"[{"op":"replace","path":"/data/mode","value":"slow"},{"op":"test","path":"/data/merged","value":"yes"}]"#]);
    c.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "team",
        "--type=strategic",
        "-p",
        r#"{"data":{"strategic":"yes"}}"#,
    ]);
    let cm = c.json(&["get", "cm", "settings", "-n", "team"]);
    assert_eq!(cm["data"]["merged"], "yes");
    // A patch carrying a stale resourceVersion is refused (optimistic locking).
    let err = c.fails(&[
        "label",
        "cm",
        "settings",
        "-n",
        "team",
        "--resource-version=1",
        "stale=yes",
    ]);
    assert!(err.contains("the object has been modified"), "{err}");
    assert_eq!(cm["data"]["mode"], "slow");
    assert_eq!(cm["data"]["strategic"], "yes");
    // A failing JSON patch `test` changes nothing.
    let err = c.fails(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/mode","value":"fast"},{"op":"remove","path":"/data/mode"}]"#,
    ]);
    assert!(err.contains("invalid") || err.contains("Invalid"), "{err}");
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "slow"
    );
    // Strategic merge patch: metadata.finalizers is a union, as upstream.
    c.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/a"]}}"#,
    ]);
    c.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "team",
        "--type=strategic",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/b"]}}"#,
    ]);
    let finalizers = c.ok(&[
        "get",
        "cm",
        "settings",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert_eq!(finalizers, r#"["example.com/a","example.com/b"]"#);
    // Deleting an object with finalizers only marks it; removing them completes it.
    c.ok(&["delete", "cm", "settings", "-n", "team", "--wait=false"]);
    let marked = c.json(&["get", "cm", "settings", "-n", "team"]);
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    c.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let gone = c.fails(&["get", "cm", "settings", "-n", "team"]);
    assert!(gone.contains("not found"), "{gone}");
}

async fn apply_twice_then_unchanged(c: &mut Cluster) {
    let apply = |manifest: &str| {
        let out = c.kubectl_with(&["apply", "-f", "-"], &[], Some(manifest));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = apply(MANIFEST);
    assert!(first.contains("configmap/settings created"), "{first}");
    let changed = MANIFEST.replace("mode: fast", "mode: slow");
    let second = apply(&changed);
    assert!(second.contains("configmap/settings configured"), "{second}");
    let third = apply(&changed);
    // (A secret applied with stringData reads "configured" every time, upstream too: the
    // server folds stringData into data, so the client always sees a difference.)
    assert!(
        third.contains("configmap/settings unchanged")
            && third.contains("namespace/team unchanged"),
        "{third}"
    );
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "slow"
    );
    // Removing a key from the manifest removes it from the object (three-way merge).
    let fewer = changed.replace("  labels:\n    app: web\n", "");
    apply(&fewer);
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team",
            "-o",
            "jsonpath={.metadata.labels}"
        ]),
        ""
    );
}

async fn edit_through_kube_editor(c: &mut Cluster) {
    c.kubectl_with(&["create", "-f", "-"], &[], Some(MANIFEST));
    let editor = c.data_dir().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/mode: fast/mode: edited/' \"$1\"\n",
    )
    .expect("editor");
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let out = c.kubectl_with(
        &["edit", "cm", "settings", "-n", "team"],
        &[("KUBE_EDITOR", editor.to_str().expect("path"))],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configmap/settings edited"));
    assert_eq!(
        c.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "edited"
    );
}

async fn get_watch_sees_changes(c: &mut Cluster) {
    let ns = c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: watched\n"),
    );
    assert!(ns.status.success());
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args([
            "get",
            "configmaps",
            "-n",
            "watched",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // kubectl prints one JSON document per event: {"type": ..., "object": ...}.
        for event in serde_json::Deserializer::from_reader(stdout)
            .into_iter::<Value>()
            .map_while(Result::ok)
        {
            let name = event["object"]["metadata"]["name"].as_str().unwrap_or("?");
            // The controller manager publishes the cluster CA in every namespace.
            if name == "kube-root-ca.crt" {
                continue;
            }
            let line = format!("{} {name}", event["type"].as_str().unwrap_or("?"));
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watch is established once kubectl has listed (nothing); create until seen.
    let mut seen = Vec::new();
    c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n  namespace: watched\n"),
    );
    c.ok(&["label", "cm", "one", "-n", "watched", "x=y"]);
    c.ok(&["delete", "cm", "one", "-n", "watched"]);
    while seen.len() < 3 {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen, vec!["ADDED one", "MODIFIED one", "DELETED one"]);
}

async fn errors_are_statuses_users_recognise(c: &mut Cluster) {
    let err = c.fails(&["get", "cm", "nope"]);
    assert!(
        err.contains("Error from server (NotFound): configmaps \"nope\" not found"),
        "{err}"
    );
    let out = c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: missing\n"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespaces \"missing\" not found"));
    let out = c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{err}");
    // Kind rules: a selector that misses its template, a pod spec changed in place.
    let out = c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some(
            &WORKLOAD
                .split("---")
                .next()
                .unwrap_or_default()
                .replace("      labels: {app: web}", "      labels: {app: other}"),
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.template.metadata.labels: Invalid value: {\"app\":\"other\"}: `selector` does not match template `labels`"),
        "{err}"
    );
    c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: Pod\nmetadata:\n  name: solo\nspec:\n  containers:\n  - {name: solo, image: example/solo:1}\n"),
    );
    let err = c.fails(&[
        "patch",
        "pod",
        "solo",
        "-p",
        r#"{"spec":{"restartPolicy":"Never"}}"#,
    ]);
    assert!(
        err.contains("spec: Forbidden: pod updates may not change fields other than"),
        "{err}"
    );
    c.ok(&["set", "image", "pod/solo", "solo=example/solo:2"]);
    let out = c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndatta:\n  a: b\n"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("strict decoding error: unknown field \"datta\""),
        "{err}"
    );
    c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dup\n"),
    );
    let out = c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dup\n"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "(AlreadyExists): error when creating \"STDIN\": configmaps \"dup\" already exists"
    ));
    let raw = c.kubectl(&["get", "--raw", "/api/v1/nonsense"]);
    assert!(!raw.status.success());
    let status: Value = serde_json::from_slice(&raw.stdout).unwrap_or(Value::Null);
    if !status.is_null() {
        assert_eq!(status["kind"], "Status");
    }
}

async fn restart_keeps_objects_and_watches_resume(c: &mut Cluster) {
    c.kubectl_with(&["create", "-f", "-"], &[], Some(MANIFEST));
    let before = c.json(&["get", "cm", "settings", "-n", "team"]);
    let rv = before["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    c.restart();
    let after = c.json(&["get", "cm", "settings", "-n", "team"]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    // Changes after `rv` are replayed to a watch that resumes from it.
    c.ok(&[
        "patch",
        "cm",
        "settings",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"data":{"after":"restart"}}"#,
    ]);
    // (By name: the namespace also gets the kube-root-ca.crt the controller manager
    // publishes, at a moment of its own.)
    let path = format!(
        "/api/v1/namespaces/team/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1&fieldSelector=metadata.name%3Dsettings"
    );
    let events = c.ok(&["get", "--raw", &path]);
    let events: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "MODIFIED");
    assert_eq!(events[0]["object"]["data"]["after"], "restart");
    // A watch on one named object sees only that object.
    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n  namespace: team\n";
    assert!(
        c.kubectl_with(&["create", "-f", "-"], &[], Some(other))
            .status
            .success()
    );
    let path = format!(
        "/api/v1/watch/namespaces/team/configmaps/settings?resourceVersion={rv}&timeoutSeconds=1"
    );
    let names: Vec<String> = c
        .ok(&["get", "--raw", &path])
        .lines()
        .map(|l| {
            let event: Value = serde_json::from_str(l).expect("event");
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["settings"]);
}

const APPLIED: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: example/web:1
        env:
        - {name: A, value: '1'}
        - {name: B, value: '2'}
";

/// Server-side apply: ownership in managedFields, conflicts with another manager, force,
/// and fields a manager stops applying are removed.
async fn server_side_apply(c: &mut Cluster) {
    let apply = |manifest: &str, extra: &[&str]| {
        let mut args = vec!["apply", "--server-side", "-f", "-"];
        args.extend_from_slice(extra);
        c.kubectl_with(&args, &[], Some(manifest))
    };
    let out = apply(APPLIED, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web serverside-applied")
    );
    let managed = c.json(&[
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let entry = &managed["metadata"]["managedFields"][0];
    assert_eq!(entry["manager"], "kubectl");
    assert_eq!(entry["operation"], "Apply");
    let fields = &entry["fieldsV1"]["f:spec"];
    assert!(fields["f:replicas"].is_object(), "{entry}");
    assert!(
        fields["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"].is_object(),
        "{entry}"
    );
    // Another manager changing an owned field is refused with the owner named...
    let scaled =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 4}\n";
    let out = apply(scaled, &["--field-manager", "autoscaler"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"),
        "{err}"
    );
    // ...and taken over with --force-conflicts.
    let out = apply(
        scaled,
        &["--field-manager", "autoscaler", "--force-conflicts"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    // The first manager applies again without replicas and env B, with a new image:
    // replicas stays (the autoscaler owns it), B goes, the image changes.
    let second = APPLIED
        .replace("  replicas: 2\n", "")
        .replace("        - {name: B, value: '2'}\n", "")
        .replace("web:1", "web:2");
    let out = apply(&second, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = c.json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(d["spec"]["replicas"], 4);
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "example/web:2");
    assert_eq!(
        container["env"],
        serde_json::json!([{"name": "A", "value": "1"}])
    );
    // A dry run changes nothing; kubectl diff (a dry-run apply) sees the difference.
    let third = second.replace("web:2", "web:3");
    let out = apply(&third, &["--dry-run=server"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff = c.kubectl_with(&["diff", "--server-side", "-f", "-"], &[], Some(&third));
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("+        image: example/web:3"),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "example/web:2"
    );
    // A client-side apply, then a server-side apply of the same manifest, as users
    // migrate.
    let out = c.kubectl_with(&["apply", "-f", "-"], &[], Some(MANIFEST));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = apply(MANIFEST, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Applying the same again writes nothing: the resourceVersion stays.
    let rv = |c: &Cluster| {
        c.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "team",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = rv(c);
    let out = apply(MANIFEST, &[]);
    assert!(out.status.success());
    assert_eq!(rv(c), before);
}

/// `kubectl explain` reads the schemas from /openapi/v3.
async fn explain_reads_the_schemas(c: &mut Cluster) {
    let out = c.ok(&["explain", "deployment.spec.template.spec.containers.image"]);
    assert!(out.contains("KIND:       Deployment"), "{out}");
    assert!(out.contains("FIELD: image <string>"), "{out}");
    assert!(out.contains("Container image name."), "{out}");
    let out = c.ok(&["explain", "pods", "--recursive"]);
    assert!(out.contains("nodeName\t<string>"), "{out}");
    // The OpenAPI v2 document in protobuf, as client-go reads it: kubectl's own
    // explain format, and client-side validation of a `kind: List` file.
    let out = c.ok(&[
        "explain",
        "pods.spec.nodeName",
        "--output=plaintext-openapiv2",
    ]);
    assert!(out.contains("FIELD:    nodeName <string>"), "{out}");
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: listed}\n  data: {a: b}\n";
    let out = c.kubectl_with(&["apply", "-f", "-"], &[], Some(list));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.ok(&["get", "cm", "listed", "-o", "jsonpath={.data.a}"]),
        "b"
    );
}

/// `kubectl create <generator>` sends protobuf (client-go's typed clients do).
async fn create_generators_send_protobuf(c: &mut Cluster) {
    c.ok(&["create", "namespace", "gen"]);
    let create = |args: &[&str]| {
        let mut all = vec!["create", "-n", "gen"];
        all.extend_from_slice(args);
        c.ok(&all)
    };
    create(&["configmap", "cfg", "--from-literal=mode=fast"]);
    create(&["secret", "generic", "s", "--from-literal=key=value"]);
    create(&[
        "deployment",
        "web",
        "--image=example/web:1",
        "--replicas=0",
        "--port=80",
    ]);
    create(&["service", "nodeport", "web", "--tcp=80:8080"]);
    create(&["job", "once", "--image=example/job:1", "--", "echo", "hi"]);
    create(&["serviceaccount", "robot"]);
    create(&["role", "reader", "--verb=get", "--resource=pods"]);
    create(&[
        "rolebinding",
        "reader",
        "--role=reader",
        "--serviceaccount=gen:robot",
    ]);
    create(&[
        "poddisruptionbudget",
        "web",
        "--selector=app=web",
        "--max-unavailable=0",
    ]);
    let cm = c.json(&["get", "cm", "cfg", "-n", "gen"]);
    assert_eq!(cm["data"]["mode"], "fast");
    let secret = c.json(&["get", "secret", "s", "-n", "gen"]);
    assert_eq!(secret["data"]["key"], "dmFsdWU=");
    let d = c.json(&["get", "deploy", "web", "-n", "gen"]);
    // Explicit zeros of pointer fields survive; zero value fields are omitted.
    assert_eq!(d["spec"]["replicas"], 0);
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "example/web:1");
    assert_eq!(container["ports"][0]["containerPort"], 80);
    assert!(container.get("stdin").is_none(), "{container}");
    assert!(d["metadata"]["creationTimestamp"].as_str().is_some());
    let svc = c.json(&["get", "svc", "web", "-n", "gen"]);
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["targetPort"], 8080);
    assert!(
        (30000..=32767).contains(&port["nodePort"].as_i64().expect("nodePort")),
        "{port}"
    );
    let pdb = c.json(&["get", "pdb", "web", "-n", "gen"]);
    assert_eq!(pdb["spec"]["maxUnavailable"], 0);
    let job = c.json(&["get", "job", "once", "-n", "gen"]);
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!(["echo", "hi"])
    );
    let binding = c.json(&["get", "rolebinding", "reader", "-n", "gen"]);
    assert_eq!(binding["subjects"][0]["name"], "robot");
    // The creator is recorded as the field manager.
    let cm = c.json(&["get", "cm", "cfg", "-n", "gen", "--show-managed-fields"]);
    assert_eq!(
        cm["metadata"]["managedFields"][0]["manager"],
        "kubectl-create"
    );
}

/// The claims of a JWT (its middle part).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.trim().split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// `kubectl create token`: ES256 service account tokens with upstream's claims, the
/// audience and lifetime asked for, bound to a pod; bad requests get upstream's errors;
/// the issuer's discovery document and keys are served. `kubectl auth whoami` names
/// the certificate's user, the token's service account (until its pod is deleted), or
/// anonymous; a bad token is 401.
async fn service_account_tokens(c: &mut Cluster) {
    c.ok(&["create", "serviceaccount", "robot"]);
    let uid = c.ok(&["get", "sa", "robot", "-o", "jsonpath={.metadata.uid}"]);
    let token = c.ok(&["create", "token", "robot"]);
    let header = {
        use base64::Engine;
        let part = token.trim().split('.').next().expect("a JWT");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url header");
        serde_json::from_slice::<Value>(&bytes).expect("JSON header")
    };
    assert_eq!(header["alg"], "ES256");
    let claims = jwt_claims(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:default:robot");
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        claims["aud"],
        serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        3600
    );
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        uid.as_str()
    );
    let token = c.ok(&[
        "create",
        "token",
        "robot",
        "--audience",
        "vault",
        "--duration",
        "2h",
    ]);
    let claims = jwt_claims(&token);
    assert_eq!(claims["aud"], serde_json::json!(["vault"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        7200
    );
    // Bound to a pod: the pod is named in the token, and must be the one asked for.
    c.ok(&[
        "run",
        "holder",
        "--image=example.com/busybox:1",
        "--restart=Never",
        r#"--overrides={"spec":{"serviceAccountName":"robot"}}"#,
    ]);
    let pod_uid = c.ok(&["get", "pod", "holder", "-o", "jsonpath={.metadata.uid}"]);
    let bound = [
        "create",
        "token",
        "robot",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "holder",
    ];
    let claims = jwt_claims(&c.ok(&bound));
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "holder");
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], pod_uid.as_str());
    let mut wrong = bound.to_vec();
    wrong.extend(["--bound-object-uid", "00000000-0000-4000-8000-000000000000"]);
    let err = c.fails(&wrong);
    assert!(err.contains("does not match the UID in record"), "{err}");
    // Only the pod's own account's token may name the pod.
    c.ok(&["create", "serviceaccount", "other"]);
    let mut foreign = bound.to_vec();
    foreign[2] = "other";
    let err = c.fails(&foreign);
    assert!(
        err.contains("cannot bind token for serviceaccount \"other\" to pod running with different serviceaccount name."),
        "{err}"
    );
    c.ok(&["delete", "sa", "other"]);
    let err = c.fails(&["create", "token", "robot", "--duration", "5m"]);
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = c.fails(&["create", "token", "nobody"]);
    assert!(
        err.contains("serviceaccounts \"nobody\" not found"),
        "{err}"
    );
    // The issuer's discovery document and keys.
    let discovery: Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/.well-known/openid-configuration"]))
            .expect("JSON");
    assert_eq!(
        discovery["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    let keys: Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/openid/v1/jwks"])).expect("JSON");
    assert_eq!(keys["keys"][0]["crv"], "P-256");
    assert_eq!(keys["keys"][0]["kid"], header["kid"]);
    // Who the server says you are: the admin's certificate, a token, nobody.
    let me: Value = serde_json::from_str(&c.ok(&["auth", "whoami", "-o", "json"])).expect("JSON");
    assert_eq!(me["status"]["userInfo"]["username"], "admin", "{me}");
    assert_eq!(
        me["status"]["userInfo"]["groups"],
        serde_json::json!(["system:masters", "system:authenticated"])
    );
    let pod_token = c.ok(&bound).trim().to_string();
    // (Always with a token: without one kubectl asks for a user name.)
    let as_token = |token: &str| {
        let ca = c.data_dir().join("pki/ca.crt");
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig=/dev/null")
            .arg(format!("--server={}", c.server))
            .arg(format!("--certificate-authority={}", ca.display()));
        cmd.arg(format!("--token={token}"));
        cmd.args(["auth", "whoami", "-o", "json"]);
        let out = cmd.output().expect("kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = as_token(&pod_token);
    assert!(ok, "{err}");
    let me: Value = serde_json::from_str(&out).expect("JSON");
    let user = &me["status"]["userInfo"];
    assert_eq!(
        user["username"], "system:serviceaccount:default:robot",
        "{me}"
    );
    assert_eq!(
        user["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"],
        serde_json::json!(["holder"])
    );
    // No credentials at all (kubectl would ask for a password): anonymous, which RBAC
    // does not let ask who it is.
    let anonymous = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(c.data_dir().join("pki/ca.crt"))
        .args(["-X", "POST", "-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#)
        .arg(format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            c.server
        ))
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&anonymous.stdout);
    assert!(
        out.contains(r#"User \"system:anonymous\" cannot create resource \"selfsubjectreviews\""#),
        "{out}"
    );
    let (ok, _, err) = as_token("not.a.token");
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    // TokenReview: what a webhook or another server would ask.
    let review = |token: &str| -> Value {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token},
        });
        let file = body_file(c, "review.json", &body.to_string());
        serde_json::from_str(&c.ok(&[
            "create",
            "--raw",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "-f",
            &file,
        ]))
        .expect("JSON")
    };
    let reviewed = review(&pod_token);
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
    assert_eq!(
        reviewed["status"]["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(review("not.a.token")["status"]["authenticated"], false);
    // The pod goes: its token stops working.
    c.ok(&["delete", "pod", "holder", "--grace-period=0", "--force"]);
    let (ok, _, err) = as_token(&pod_token);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    c.ok(&["delete", "sa", "robot"]);
}

scenarios!(
    service_account_tokens,
    version_and_discovery,
    workloads_keep_spec_status_and_generation_apart,
    services_get_cluster_ips_and_node_ports,
    scale_binding_eviction_and_graceful_deletion,
    get_prints_the_upstream_columns,
    create_get_label_annotate_delete,
    patch_of_every_type,
    apply_twice_then_unchanged,
    edit_through_kube_editor,
    get_watch_sees_changes,
    errors_are_statuses_users_recognise,
    restart_keeps_objects_and_watches_resume,
    server_side_apply,
    explain_reads_the_schemas,
    create_generators_send_protobuf,
);
