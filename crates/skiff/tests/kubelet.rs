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
mod node;

use std::time::Duration;

use common::{Backend, Cluster, wait_for};
use cri::*;
use node::*;

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
  - {name: main, image: example.com/busybox:1, command: [sh, -c, "echo crashing; exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: example.com/busybox:1, command: [cat], stdin: true, stdinOnce: true}
---
apiVersion: v1
kind: Pod
metadata: {name: counter}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: example.com/busybox:1, command: [sh, -c, "for i in 1 2 3; do echo line $i; sleep 0.3; done"]}
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_runs_the_pods_bound_to_its_node() {
    let n = TestNode::start(0).await;
    let (c, rt, node, logs, subnet) = (&n.c, &n.rt, &n.name, &n.logs, &n.subnet);
    let mut kubelet = n.kubelet();

    // The node registers, holds its Lease and is Ready.
    n.wait_ready();
    let registered = c.json(&["get", "node", node]);
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
    let lease = c.json(&["get", "lease", node, "-n", "kube-node-lease"]);
    assert_eq!(lease["spec"]["holderIdentity"], node.as_str());
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    let nodes = c.ok(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(node.as_str()) && l.contains(" Ready ")),
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
        wide.contains("Running") && wide.contains(&ip) && wide.contains(node.as_str()),
        "{wide}"
    );

    // Logs through the API server and the kubelet API, as kubectl asks for them.
    assert_eq!(c.ok(&["logs", "web"]), "hello from web\n");
    let stamped = c.ok(&["logs", "web", "--timestamps"]);
    assert!(
        stamped.starts_with("20") && stamped.ends_with(" hello from web\n"),
        "{stamped}"
    );
    let err = c.fails(&["logs", "web", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    // Exec and attach: kubectl's WebSocket goes through the API server and the kubelet
    // to the runtime.
    let out = c.kubectl(&["exec", "web", "--", "sh", "-c", "echo $POD_NAME; exit 3"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(3), "web\n"),
        "{out:?}"
    );
    // The API server's Service as variables, as in-cluster clients look for it.
    let service = c.ok(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT $KUBERNETES_PORT",
    ]);
    let ip = text(
        c,
        &[
            "get",
            "service",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert_eq!(service, format!("{ip}:443 tcp://{ip}:443\n"));
    let out = c.kubectl_with(&["exec", "-i", "web", "--", "cat"], &[], Some("piped\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n", "{out:?}");
    wait_for("talker to run", || phase(c, "talker") == "Running");
    let out = c.kubectl_with(&["attach", "-i", "talker"], &[], Some("hello\n"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello\n"),
        "{out:?}"
    );
    wait_for("talker to end with its input", || {
        phase(c, "talker") == "Succeeded"
    });
    wait_for("counter to start", || phase(c, "counter") != "Pending");
    let followed = c.ok(&["logs", "-f", "counter"]);
    assert_eq!(followed, "line 1\nline 2\nline 3\n");
    assert_eq!(c.ok(&["logs", "counter", "--tail=1"]), "line 3\n");
    wait_for("init to succeed", || phase(c, "init") == "Succeeded");
    let prep = container(c, "init", true);
    assert_eq!(prep["state"]["terminated"]["reason"], "Completed", "{prep}");
    assert_eq!(
        condition(&c.json(&["get", "pod", "init"]), "Initialized")["status"],
        "True"
    );
    wait_for("fails to fail", || phase(c, "fails") == "Failed");
    let failed = container(c, "fails", false);
    assert_eq!(
        (
            failed["state"]["terminated"]["exitCode"].clone(),
            failed["state"]["terminated"]["reason"].clone()
        ),
        (json!(3), json!("Error")),
        "{failed}"
    );
    wait_for("crash to loop", || {
        container(c, "crash", false)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let crash = container(c, "crash", false);
    assert!(
        crash["restartCount"].as_i64().is_some_and(|n| n >= 1),
        "{crash}"
    );
    assert_eq!(crash["lastState"]["terminated"]["exitCode"], 1, "{crash}");
    // The first restart is immediate, then the delay doubles from 10 s (a slow
    // machine may see a later round than the first).
    let restarts = crash["restartCount"].as_u64().unwrap_or(1).clamp(1, 3);
    let delay = 10 * (1u64 << (restarts - 1));
    assert!(
        crash["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!(
                "back-off {delay}s restarting failed container=main pod=crash_default("
            ))),
        "{crash}"
    );
    assert_eq!(phase(c, "crash"), "Running");
    let previous = c.ok(&["logs", "crash", "--previous"]);
    assert_eq!(previous, "crashing\n");
    wait_for("a configuration error", || {
        container(c, "unconfigured", false)["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    assert_eq!(
        container(c, "unconfigured", false)["state"]["waiting"]["message"],
        "configmap \"nope\" not found"
    );
    wait_for("an image that must not be pulled", || {
        container(c, "absent", false)["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    });
    assert_eq!(phase(c, "absent"), "Pending");

    // A kubelet that stops (SIGTERM, so it shuts down in order) and starts again
    // leaves running containers alone.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &kubelet.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let _ = kubelet.child.wait();
    let mut kubelet = n.kubelet();
    wait_for("the kubelet to register again", || {
        kubelet.log().contains("node registered")
    });
    // It has the pod again within its resync; watch it for a while.
    for _ in 0..10 {
        let app = container(c, "web", false);
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
    // The pods are gone from the API; their sandboxes go right after.
    no_sandboxes_left(&rt.socket(), || kubelet.log()).await;
    kubelet.kill();
}

/// The flags that keep an all-in-one server's node agent inside the test's directories.
fn agent_flags(pid: u32, dir: &std::path::Path, cni_conf_dir: &std::path::Path) -> Vec<String> {
    [
        ("--node-name", format!("aio-{pid}")),
        ("--node-ip", "127.0.0.1".to_string()),
        ("--cri-socket", dir.join("cri.sock").display().to_string()),
        (
            "--runtime-data-dir",
            dir.join("runtime").display().to_string(),
        ),
        ("--pod-log-dir", dir.join("logs").display().to_string()),
        ("--cni-conf-dir", cni_conf_dir.display().to_string()),
        // The plugin link goes here, not into the host's /opt/cni/bin.
        ("--cni-bin-dir", dir.join("cni-bin").display().to_string()),
        ("--cni-bin-dir", "/usr/lib/cni".to_string()),
        ("--cgroup-parent", format!("/skiff-aio-test-{pid}")),
        ("--kubelet-port", "0".to_string()),
        // Not the host disk's fill level: the eviction tests set their own.
        ("--eviction-hard", "memory.available<1Mi".to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    // Services are tests/networking.rs's.
    .chain(["--disable-proxy".to_string()])
    .collect()
}

/// `skiff server` is a whole one-node cluster: its agent runs the runtime and the
/// kubelet in process, the node becomes Ready, a pod runs and is deleted cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_server_runs_a_one_node_cluster() {
    let pid = std::process::id();
    let _cgroups = CgroupGuard(format!("/skiff-aio-test-{pid}"));
    let network = Network::new(
        &format!("ska{}", pid % 100_000),
        &format!("10.235.{}.0/24", 10 + pid % 200),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // Images go into the runtime's store before it starts, as `skiff images import`
    // does on a node without a registry.
    import_busybox(dir.path(), &dir.path().join("runtime"));
    let flags = agent_flags(pid, dir.path(), &network.conf_dir());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = Cluster::start_all_in_one(Backend::Embedded, &flags).await;
    let node = format!("aio-{pid}");
    wait_node_ready(&c, &node);
    // The pod prints what ServiceAccount admission mounted for it: its namespace, its
    // token and the cluster CA.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: hello}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: c, image: example.com/busybox:1, command: [sh, -c, 'cd /var/run/secrets/kubernetes.io/serviceaccount && cat namespace && echo && cat token && echo && cat ca.crt']}\n";
    let created = c.kubectl_with(&["apply", "-f", "-"], &[], Some(pod));
    assert!(created.status.success(), "{created:?}");
    wait_for("hello to succeed", || phase(&c, "hello") == "Succeeded");
    let hello = container(&c, "hello", false);
    assert_eq!(
        hello["state"]["terminated"]["reason"], "Completed",
        "{hello}"
    );
    let printed = c.ok(&["logs", "hello"]);
    let mut lines = printed.lines();
    assert_eq!(lines.next(), Some("default"), "{printed}");
    let token = lines.next().unwrap_or_default().to_string();
    let ca: Vec<&str> = lines.collect();
    let cluster_ca = std::fs::read_to_string(c.data_dir().join("pki/ca.crt")).expect("CA");
    assert_eq!(ca.join("\n").trim(), cluster_ca.trim());
    // The token is the pod's service account's, bound to the pod.
    let me = std::process::Command::new("kubectl")
        .arg("--kubeconfig=/dev/null")
        .arg(format!("--server={}", c.server))
        .arg(format!("--certificate-authority={}", c.data_dir().join("pki/ca.crt").display()))
        .arg(format!("--token={token}"))
        .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.extra.authentication\\.kubernetes\\.io/pod-name}"])
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&me.stdout),
        "system:serviceaccount:default:default [\"hello\"]",
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    c.ok(&["delete", "pod", "hello", "--timeout=60s"]);
    no_sandboxes_left(&dir.path().join("cri.sock"), || c.log()).await;
}

/// A node whose CNI directory holds no network gets the default one over the pod CIDR
/// the controller manager gave it (skiff's plugin, linked to the binary), and becomes
/// Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_network_gets_the_default_one() {
    let pid = std::process::id() + 1;
    let _cgroups = CgroupGuard(format!("/skiff-aio-test-{pid}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cni = dir.path().join("net.d");
    let flags = agent_flags(pid, dir.path(), &cni);
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend(["--cluster-cidr", "10.236.0.0/16"]);
    let c = Cluster::start_all_in_one(Backend::Embedded, &flags).await;
    let node = format!("aio-{pid}");
    wait_node_ready(&c, &node);
    let cidr = text(
        &c,
        &["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"],
    );
    assert!(cidr.starts_with("10.236."), "{cidr}");
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cni.join("10-skiff.conflist")).expect("the default network"),
    )
    .expect("JSON");
    assert_eq!(written["plugins"][0]["type"], "skiff-cni");
    assert_eq!(written["plugins"][0]["subnet"], cidr.as_str());
    assert_eq!(
        written["plugins"][0]["nonMasqueradeCIDRs"][0],
        "10.236.0.0/16"
    );
    let link = std::fs::read_link(dir.path().join("cni-bin/skiff-cni")).expect("plugin link");
    assert!(link.ends_with("skiff"), "{}", link.display());
}

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: example.com/busybox:1
    command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: gate
    image: example.com/busybox:1
    command: [sh, -c, "mkdir -p /tmp; while true; do sleep 0.2; done"]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1, failureThreshold: 1}
    livenessProbe: {exec: {command: [sh, -c, "test ! -f /tmp/dead"]}, periodSeconds: 1, failureThreshold: 1}
    lifecycle:
      postStart: {exec: {command: [sh, -c, "echo started > /poststart"]}}
      preStop: {exec: {command: [sh, -c, "echo stopping > /proc/1/fd/1"]}}
"#;

/// On the node's network (the node's address is 127.0.0.1 in tests): a gRPC liveness
/// probe against the test's own `grpc.health.v1` server.
const GRPC_PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: grpc-probed}
spec:
  terminationGracePeriodSeconds: 1
  hostNetwork: true
  containers:
  - name: main
    image: example.com/busybox:1
    command: [sleep, "3600"]
    livenessProbe: {grpc: {port: GRPCPORT, service: skiff}, periodSeconds: 1, failureThreshold: 2}
"#;

/// Probes: readiness (httpGet to a named port, exec) decides container and pod
/// readiness, liveness (tcpSocket, exec, gRPC) kills a container that fails it (after
/// its preStop hook), and the restart policy brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_decide_readiness_and_restart_unhealthy_containers() {
    let n = TestNode::start(2).await;
    let c = &n.c;
    let _kubelet = n.kubelet();
    n.wait_ready();
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(PROBED));
    assert!(applied.status.success(), "{applied:?}");
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("skiff", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into())
        .expect("a port for the health server");
    let grpc_port = incoming.local_addr().expect("its address").port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(incoming),
    );
    let manifest = GRPC_PROBED.replace("GRPCPORT", &grpc_port.to_string());
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(&manifest));
    assert!(applied.status.success(), "{applied:?}");
    let status_of = |name: &str| {
        let pod = c.json(&["get", "pod", "probed"]);
        pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|list| list.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_default()
    };
    wait_for("web to pass its HTTP readiness probe", || {
        status_of("web")["ready"] == true
    });
    let pod = c.json(&["get", "pod", "probed"]);
    assert_eq!(pod["status"]["phase"], "Running");
    let ready = condition(&pod, "Ready");
    assert_eq!(
        (ready["status"].clone(), ready["message"].clone()),
        (
            json!("False"),
            json!("containers with unready status: [gate]")
        ),
        "{pod}"
    );
    let gate = status_of("gate");
    assert_eq!(gate["started"], true, "{gate}");
    let id = gate["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("skiff://"))
        .expect("a container id")
        .to_string();
    let channel = channel(&n.rt.socket()).await;
    let mut runtime = RuntimeServiceClient::new(channel);
    let touched = exec(&mut runtime, &id, &["touch", "/tmp/ready"], 5)
        .await
        .expect("touch");
    assert_eq!(touched.exit_code, 0, "{touched:?}");
    wait_for("the pod to be Ready", || {
        condition(&c.json(&["get", "pod", "probed"]), "Ready")["status"] == "True"
    });
    // Failing its liveness probe gets the container killed and restarted afresh (its
    // readiness file gone with the old container).
    let touched = exec(&mut runtime, &id, &["touch", "/tmp/dead"], 5)
        .await
        .expect("touch");
    assert_eq!(touched.exit_code, 0, "{touched:?}");
    wait_for("gate to be restarted", || {
        let gate = status_of("gate");
        gate["restartCount"] == 1 && gate["state"]["running"].is_object()
    });
    let gate = status_of("gate");
    assert_eq!(gate["lastState"]["terminated"]["exitCode"], 137, "{gate}");
    assert_eq!(gate["ready"], false, "{gate}");
    assert_eq!(status_of("web")["restartCount"], 0);
    let uid = text(
        c,
        &["get", "pod", "probed", "-o", "jsonpath={.metadata.uid}"],
    );
    let first = std::fs::read_to_string(n.logs.join(format!("default_probed_{uid}/gate/0.log")))
        .unwrap_or_default();
    assert!(
        first.contains(" stdout F stopping"),
        "preStop ran before the liveness kill: {first}"
    );
    // gRPC: the health service answering NOT_SERVING gets the container restarted.
    let grpc_status =
        || c.json(&["get", "pod", "grpc-probed"])["status"]["containerStatuses"][0].clone();
    wait_for("the gRPC-probed pod to run", || {
        grpc_status()["state"]["running"].is_object()
    });
    assert_eq!(grpc_status()["restartCount"], 0);
    health
        .set_service_status("skiff", tonic_health::ServingStatus::NotServing)
        .await;
    wait_for("the gRPC liveness probe to restart the container", || {
        grpc_status()["restartCount"] == 1
    });
    health
        .set_service_status("skiff", tonic_health::ServingStatus::Serving)
        .await;
    wait_for("the restarted container to run", || {
        grpc_status()["state"]["running"].is_object()
    });
    c.ok(&["delete", "pod", "grpc-probed", "--timeout=60s"]);
    server.abort();
    // Lifecycle hooks: postStart ran in the new container, preStop runs before the
    // stop (its output is the container's).
    let poststart = c.ok(&["exec", "probed", "-c", "gate", "--", "cat", "/poststart"]);
    assert_eq!(poststart, "started\n");
    c.ok(&["delete", "pod", "probed", "--timeout=60s"]);
    let log = std::fs::read_to_string(n.logs.join(format!("default_probed_{uid}/gate/1.log")))
        .unwrap_or_default();
    assert!(log.contains(" stdout F stopping"), "preStop ran: {log}");
}

const VOLUMES: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: fast, app.conf: "level=1"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: volumes, labels: {app: vol}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: writer
    image: example.com/busybox:1
    command: [sh, -c, "echo shared > /data/note; while true; do sleep 0.2; done"]
    volumeMounts: [{name: scratch, mountPath: /data}]
  - name: reader
    image: example.com/busybox:1
    command: [sh, -c, "while true; do sleep 0.2; done"]
    volumeMounts:
    - {name: scratch, mountPath: /shared, readOnly: true}
    - {name: scratch, mountPath: /sub, subPath: nested}
    - {name: settings, mountPath: /etc/settings}
    - {name: creds, mountPath: /etc/creds}
    - {name: info, mountPath: /etc/info}
    - {name: host, mountPath: /host}
    - {name: memory, mountPath: /cache}
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: memory, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
  - {name: settings, configMap: {name: settings, items: [{key: mode, path: mode.txt}]}}
  - {name: creds, secret: {secretName: creds, defaultMode: 0400}}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
  - {name: host, hostPath: {path: HOSTDIR, type: DirectoryOrCreate}}
"#;

/// Volumes: an emptyDir shared by two containers (read-only in one, with a subPath), a
/// memory-backed emptyDir with its size limit, ConfigMap (chosen items, updates reach
/// the running container), Secret (mode), downward API and hostPath volumes; all of
/// the pod's volumes go with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_set_up_mounted_refreshed_and_removed() {
    let n = TestNode::start(4).await;
    let c = &n.c;
    let _kubelet = n.kubelet();
    n.wait_ready();
    let host_dir = n.rt.dir.path().join("host-volume");
    let manifest = VOLUMES.replace("HOSTDIR", &host_dir.display().to_string());
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(&manifest));
    assert!(applied.status.success(), "{applied:?}");
    wait_for("the pod to run", || phase(c, "volumes") == "Running");
    let sh = |script: &str| {
        let out = c.kubectl(&["exec", "volumes", "-c", "reader", "--", "sh", "-c", script]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    wait_for("the writer's file in the shared emptyDir", || {
        sh("cat /shared/note").1 == "shared"
    });
    assert_eq!(sh("cat /etc/settings/mode.txt"), (Some(0), "fast".into()));
    assert_eq!(sh("ls /etc/settings"), (Some(0), "mode.txt".into()));
    assert_eq!(sh("cat /etc/creds/password"), (Some(0), "s3cret".into()));
    assert_eq!(
        sh("stat -L -c %a /etc/creds/password"),
        (Some(0), "400".into())
    );
    assert_eq!(sh("cat /etc/info/labels"), (Some(0), "app=\"vol\"".into()));
    assert_eq!(sh("cat /etc/info/name"), (Some(0), "volumes".into()));
    assert_eq!(sh("touch /host/from-pod").0, Some(0));
    assert!(host_dir.join("from-pod").exists());
    let (_, mounts) = sh("grep ' /cache ' /proc/mounts");
    assert!(
        mounts.contains("tmpfs") && mounts.contains("size=16384k"),
        "{mounts}"
    );
    assert_ne!(sh("touch /shared/x").0, Some(0), "the mount is read-only");
    assert_eq!(sh("touch /sub/y && ls /shared/nested").1, "y");
    c.ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"mode":"slow"}}"#,
    ]);
    wait_for("the ConfigMap update to reach the container", || {
        sh("cat /etc/settings/mode.txt").1 == "slow"
    });
    let uid = text(
        c,
        &["get", "pod", "volumes", "-o", "jsonpath={.metadata.uid}"],
    );
    let pod_dir = n.rt.dir.path().join("kubelet/pods").join(&uid);
    assert!(pod_dir.exists(), "{}", pod_dir.display());
    c.ok(&["delete", "pod", "volumes", "--timeout=60s"]);
    wait_for("the pod's volumes to go", || !pod_dir.exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mountinfo.contains(&pod_dir.display().to_string()),
        "the tmpfs is unmounted"
    );
}
