//! The kubelet end to end: `skiff server` (API server, scheduler, controllers), `skiff
//! runtime` on a CNI bridge network the test owns, and `skiff kubelet` between them, all
//! real processes driven with kubectl. The node registers and stays Ready through its
//! Lease; pods the scheduler binds to it run in real containers with the environment
//! upstream builds (fields, ConfigMap keys, `$(VAR)` in commands), report status as
//! upstream fills it (phases, conditions, container states, restarts, CrashLoopBackOff,
//! configuration and image errors), survive a kubelet restart untouched, and leave
//! nothing in the runtime once deleted.

mod common;
mod cri;

use std::time::Duration;

use common::{Backend, Cluster, wait_for};
use cri::*;

const PODS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: greeting}
data: {word: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: app
    image: example.com/busybox:1
    command: [sh, -c, "trap 'echo bye; exit 0' TERM; echo $(GREETING) from $(POD_NAME); while true; do sleep 0.1; done"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: greeting, key: word}}}
---
apiVersion: v1
kind: Pod
metadata: {name: init}
spec:
  restartPolicy: OnFailure
  initContainers:
  - {name: prep, image: example.com/busybox:1, command: [sh, -c, "echo prepared"]}
  containers:
  - {name: main, image: example.com/busybox:1, command: [sh, -c, "exit 0"]}
---
apiVersion: v1
kind: Pod
metadata: {name: fails}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: example.com/busybox:1, command: [sh, -c, "exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: example.com/busybox:1, command: [sh, -c, "exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unconfigured}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: example.com/busybox:1
    command: [sleep, "3600"]
    env:
    - {name: X, valueFrom: {configMapKeyRef: {name: nope, key: k}}}
---
apiVersion: v1
kind: Pod
metadata: {name: absent}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: example.com/absent:1, imagePullPolicy: Never}
"#;

fn text(c: &Cluster, args: &[&str]) -> String {
    let out = c.kubectl(args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn phase(c: &Cluster, pod: &str) -> String {
    text(c, &["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
}

/// The first container status of a pod (`initContainerStatuses` when `init`).
fn container(c: &Cluster, pod: &str, init: bool) -> serde_json::Value {
    let pod = c.json(&["get", "pod", pod]);
    let key = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    pod["status"][key][0].clone()
}

fn condition(pod: &serde_json::Value, kind: &str) -> serde_json::Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_runs_the_pods_bound_to_its_node() {
    let pid = std::process::id();
    let parent = format!("/skiff-kubelet-test-{pid}");
    let _cgroups = CgroupGuard(parent.clone());
    let subnet = format!("10.234.{}.0/24", 10 + pid % 200);
    let network = Network::new(&format!("skk{}", pid % 100_000), &subnet);
    let net_dir = network.conf_dir().display().to_string();
    let rt = Runtime::start_with(&["--cni-conf-dir", &net_dir, "--cgroup-parent", &parent]);
    let image = oci_image(
        "example.com/busybox:1",
        &[busybox_layer()],
        json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
    );
    let imported = rt.import(&rt.file("busybox.tar", &image), &[]);
    assert!(imported.status.success(), "{imported:?}");
    let c = Cluster::start(Backend::Embedded).await;
    let logs = rt.dir.path().join("pod-logs");
    let node = format!("node-{pid}");
    let kubelet_args = [
        "kubelet".to_string(),
        "--node-name".into(),
        node.clone(),
        "--cri-socket".into(),
        rt.socket().display().to_string(),
        "--pod-log-dir".into(),
        logs.display().to_string(),
        "--node-ip".into(),
        "127.0.0.1".into(),
    ];
    let args: Vec<&str> = kubelet_args.iter().map(String::as_str).collect();
    let mut kubelet = c.spawn_component(&args);

    // The node registers, holds its Lease and is Ready.
    wait_for("the node to be Ready", || {
        text(
            &c,
            &[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        ) == "True"
    });
    let registered = c.json(&["get", "node", &node]);
    let labels = &registered["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], node.as_str());
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    let status = &registered["status"];
    assert_eq!(status["capacity"]["pods"], "110", "{status}");
    assert!(
        status["allocatable"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with("Ki"))
    );
    assert!(
        status["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("skiff://")),
        "{status}"
    );
    assert!(
        status["nodeInfo"]["kubeletVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("v1.")),
        "{status}"
    );
    assert_eq!(
        status["addresses"][0],
        json!({"type": "InternalIP", "address": "127.0.0.1"})
    );
    assert_eq!(
        condition(&registered, "MemoryPressure")["reason"],
        "KubeletHasSufficientMemory"
    );
    assert_eq!(
        condition(&registered, "Ready")["message"],
        "kubelet is posting ready status"
    );
    let lease = c.json(&["get", "lease", &node, "-n", "kube-node-lease"]);
    assert_eq!(lease["spec"]["holderIdentity"], node.as_str());
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    let nodes = c.ok(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(&node) && l.contains(" Ready ")),
        "{nodes}"
    );

    // Pods the scheduler binds here run and report what upstream reports.
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(PODS));
    assert!(applied.status.success(), "{applied:?}");
    wait_for("web to be Running and Ready", || {
        let pod = c.json(&["get", "pod", "web"]);
        pod["status"]["phase"] == "Running" && condition(&pod, "Ready")["status"] == "True"
    });
    let web = c.json(&["get", "pod", "web"]);
    assert_eq!(web["spec"]["nodeName"], node.as_str());
    let ip = web["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ip.starts_with(subnet.trim_end_matches("0/24")),
        "pod IP {ip} in {subnet}"
    );
    assert_eq!(web["status"]["hostIP"], "127.0.0.1");
    assert_eq!(web["status"]["qosClass"], "BestEffort");
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "PodScheduled",
    ] {
        assert_eq!(condition(&web, kind)["status"], "True", "{kind}: {web}");
    }
    let app = &web["status"]["containerStatuses"][0];
    let container_id = app["containerID"].as_str().unwrap_or_default().to_string();
    assert!(container_id.starts_with("skiff://"), "{app}");
    assert!(app["state"]["running"]["startedAt"].is_string(), "{app}");
    assert_eq!(
        (app["restartCount"].clone(), app["ready"].clone()),
        (json!(0), json!(true))
    );
    assert_eq!(app["image"], "example.com/busybox:1");
    assert!(
        app["imageID"].as_str().is_some_and(|i| !i.is_empty()),
        "{app}"
    );
    let uid = web["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let log = logs.join(format!("default_web_{uid}/app/0.log"));
    let line = wait_for_text(&log, "hello from web").await;
    assert!(line.contains(" stdout F hello from web"), "{line}");
    let wide = c.ok(&["get", "pod", "web", "-o", "wide"]);
    assert!(
        wide.contains("Running") && wide.contains(&ip) && wide.contains(&node),
        "{wide}"
    );

    wait_for("init to succeed", || phase(&c, "init") == "Succeeded");
    let prep = container(&c, "init", true);
    assert_eq!(prep["state"]["terminated"]["reason"], "Completed", "{prep}");
    assert_eq!(
        condition(&c.json(&["get", "pod", "init"]), "Initialized")["status"],
        "True"
    );
    wait_for("fails to fail", || phase(&c, "fails") == "Failed");
    let failed = container(&c, "fails", false);
    assert_eq!(
        (
            failed["state"]["terminated"]["exitCode"].clone(),
            failed["state"]["terminated"]["reason"].clone()
        ),
        (json!(3), json!("Error")),
        "{failed}"
    );
    wait_for("crash to loop", || {
        container(&c, "crash", false)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let crash = container(&c, "crash", false);
    assert!(
        crash["restartCount"].as_i64().is_some_and(|n| n >= 1),
        "{crash}"
    );
    assert_eq!(crash["lastState"]["terminated"]["exitCode"], 1, "{crash}");
    assert!(
        crash["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m
                .starts_with("back-off 10s restarting failed container=main pod=crash_default(")),
        "{crash}"
    );
    assert_eq!(phase(&c, "crash"), "Running");
    wait_for("a configuration error", || {
        container(&c, "unconfigured", false)["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    assert_eq!(
        container(&c, "unconfigured", false)["state"]["waiting"]["message"],
        "configmap \"nope\" not found"
    );
    wait_for("an image that must not be pulled", || {
        container(&c, "absent", false)["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    });
    assert_eq!(phase(&c, "absent"), "Pending");

    // A restarted kubelet leaves running containers alone.
    kubelet.kill();
    let mut kubelet = c.spawn_component(&args);
    wait_for("the kubelet to register again", || {
        kubelet.log().contains("node registered")
    });
    // It has the pod again within its resync; watch it for a while.
    for _ in 0..10 {
        let app = container(&c, "web", false);
        assert_eq!(
            app["containerID"],
            container_id.as_str(),
            "{}",
            kubelet.log()
        );
        assert_eq!(app["restartCount"], 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Deleting a pod stops it gracefully (SIGTERM first) and removes it everywhere.
    c.ok(&["delete", "pod", "web", "--timeout=60s"]);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.contains(" stdout F bye"),
        "SIGTERM reached the container: {out}"
    );
    c.ok(&["delete", "pods", "--all", "--timeout=60s"]);
    let channel = channel(&rt.socket()).await;
    let mut runtime = RuntimeServiceClient::new(channel);
    let left = runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(left.is_empty(), "{left:?}\n{}", kubelet.log());
    kubelet.kill();
}
