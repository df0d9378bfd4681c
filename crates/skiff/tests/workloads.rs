//! What users do with running pods, end to end through the real kubelet and runtime:
//! `kubectl port-forward` (kubectl tunnels SPDY through a WebSocket to the API server,
//! which carries it to the kubelet and the runtime's streaming server), the kubelet
//! API's /pods, /stats/summary and metrics through `nodes/proxy`, static pods, `kubectl cp`
//! both ways (tar over exec), the same with containerd as the runtime; a Deployment, a
//! Job and a memory hog run to their ends, and a node whose kubelet stops goes
//! unknown and comes back with its containers untouched.

mod common;
mod cri;
mod node;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backend, Cluster, wait_for};
use cri::*;
use node::*;

const SERVER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: example.com/busybox:1
    command: [sh, -c, "mkdir -p /www && echo hello from the pod > /www/index.html && seq 1 200000 > /www/big && exec httpd -f -p 8080 -h /www"]
"#;

/// Waits until the server pod's httpd answers (once its shell has written the files).
fn wait_httpd(c: &Cluster) {
    wait_for("httpd to listen", || {
        let get = [
            "exec",
            "server",
            "--",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:8080/",
        ];
        c.kubectl(&get).status.success()
    });
}

/// `kubectl port-forward` running in the background; killed on drop.
struct PortForward {
    child: std::process::Child,
    port: u16,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl PortForward {
    /// Starts `kubectl port-forward pod/{pod} :{remote}` and waits for its local port.
    fn start(c: &common::Cluster, pod: &str, remote: u16) -> PortForward {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(["port-forward", &format!("pod/{pod}"), &format!(":{remote}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let errors = child.stderr.take().expect("stderr");
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(errors).lines().map_while(Result::ok) {
                let mut all = collected.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
        // "Forwarding from 127.0.0.1:38213 -> 8080"
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line).expect("kubectl output");
        let port = line
            .split(" -> ")
            .next()
            .and_then(|from| from.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok());
        let Some(port) = port.filter(|_| read > 0) else {
            let _ = child.kill();
            let _ = child.wait();
            let errors = stderr.lock().map(|e| e.clone()).unwrap_or_default();
            panic!("kubectl port-forward printed {line:?}; stderr: {errors}");
        };
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
        });
        PortForward {
            child,
            port,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// One HTTP/1.0 GET through the forward: the body.
    fn get(&self, path: &str) -> String {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(tcp, "GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").expect("request");
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).expect("response");
        let response = String::from_utf8_lossy(&response).into_owned();
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                body.to_string()
            }
            _ => panic!("GET {path}: {response:?}\nkubectl: {}", self.stderr()),
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_cp_and_node_stats_reach_into_a_pod() {
    let n = TestNode::start(7).await;
    let c = &n.c;
    let _kubelet = n.kubelet();
    n.wait_ready();
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(SERVER));
    assert!(applied.status.success(), "{applied:?}");
    wait_for("the server pod to run", || phase(c, "server") == "Running");
    // httpd listens once the shell has written its files.
    wait_httpd(c);

    // port-forward: several connections, one after another and at once, small and big.
    let forward = PortForward::start(c, "server", 8080);
    for _ in 0..3 {
        assert_eq!(forward.get("/index.html"), "hello from the pod\n");
    }
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    let port = forward.port;
    let parallel: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                write!(tcp, "GET /big HTTP/1.0\r\n\r\n").expect("request");
                let mut response = Vec::new();
                tcp.read_to_end(&mut response).expect("response");
                response
            })
        })
        .collect();
    for handle in parallel {
        let response = String::from_utf8(handle.join().expect("thread")).expect("text");
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b);
        assert!(
            body == Some(expected.as_str()),
            "{} bytes back; kubectl: {}",
            response.len(),
            forward.stderr()
        );
    }
    drop(forward);

    // A port nothing listens on: the connection ends and kubectl says why.
    let nothing = PortForward::start(c, "server", 9999);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", nothing.port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = write!(tcp, "GET / HTTP/1.0\r\n\r\n");
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response);
    assert!(response.is_empty(), "{response:?}");
    wait_for("kubectl to report the refused port", || {
        nothing.stderr().contains("error forwarding port 9999")
    });
    drop(nothing);

    // A pod that is not running cannot be forwarded to.
    let out = c.kubectl(&["port-forward", "pod/absent", ":80"]);
    assert!(!out.status.success());

    // kubectl cp: into the pod and back out.
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("notes.txt");
    std::fs::write(&local, "copied in\n").expect("write");
    let local_arg = local.display().to_string();
    c.ok(&["cp", &local_arg, "server:/www/notes.txt"]);
    let inside = c.ok(&["exec", "server", "--", "cat", "/www/notes.txt"]);
    assert_eq!(inside, "copied in\n");
    let back = dir.path().join("index.html");
    c.ok(&["cp", "server:/www/index.html", &back.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(&back).expect("copied out"),
        "hello from the pod\n"
    );

    // The node's kubelet API through the API server's nodes/proxy: what runs and what
    // it uses.
    let raw = |path: &str| {
        c.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/{path}", n.name),
        ])
    };
    let listed: serde_json::Value = serde_json::from_str(&raw("pods")).expect("PodList");
    assert_eq!(listed["kind"], "PodList");
    assert!(
        listed["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|p| p["metadata"]["name"] == "server")),
        "{listed}"
    );
    let summary: serde_json::Value = serde_json::from_str(&raw("stats/summary")).expect("Summary");
    let node = &summary["node"];
    assert_eq!(node["nodeName"], n.name.as_str());
    for number in [
        &node["memory"]["availableBytes"],
        &node["memory"]["workingSetBytes"],
        &node["cpu"]["usageCoreNanoSeconds"],
        &node["fs"]["capacityBytes"],
        &node["fs"]["availableBytes"],
        &node["runtime"]["imageFs"]["usedBytes"],
    ] {
        assert!(number.as_u64().is_some_and(|n| n > 0), "{number} in {node}");
    }
    let pod = summary["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == "server"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(pod["podRef"]["namespace"], "default", "{summary}");
    let httpd = &pod["containers"][0];
    assert_eq!(httpd["name"], "httpd", "{pod}");
    assert!(
        httpd["memory"]["workingSetBytes"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "{pod}"
    );
    assert!(
        httpd["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "{pod}"
    );
    assert!(httpd["startTime"].is_string(), "{pod}");
    assert!(pod["network"]["rxBytes"].as_u64().is_some(), "{pod}");
    let resource = raw("metrics/resource");
    assert!(
        resource.contains("container_memory_working_set_bytes{container=\"httpd\",namespace=\"default\",pod=\"server\"} "),
        "{resource}"
    );
    assert!(
        resource.contains("\nnode_cpu_usage_seconds_total "),
        "{resource}"
    );
    assert!(raw("metrics").contains("kubelet_running_pods "));
    let missing = c.kubectl(&["get", "--raw", "/api/v1/nodes/nowhere/proxy/pods"]);
    assert!(!missing.status.success());

    c.ok(&["delete", "pod", "server", "--wait=false"]);
    wait_for("the pod to go", || {
        !c.kubectl(&["get", "pod", "server"]).status.success()
    });
}

/// The kubelet drives Debian's containerd 1.6 through the same CRI: a pod runs, its
/// logs, exec and port-forward (containerd's own SPDY streaming server) work, and
/// deleting it leaves containerd with nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_drives_containerd_too() {
    let pid = std::process::id();
    let network = Network::new(
        &format!("skd{}", pid % 100_000),
        &format!("10.235.{}.0/24", 10 + pid % 200),
    );
    let Some(containerd) = Containerd::start(&network.conf_dir(), "skiff.test/pause:1") else {
        panic!("containerd (Debian's containerd package) is installed");
    };
    let images = tempfile::tempdir().expect("images");
    for (name, config) in [
        (
            "example.com/busybox:1",
            json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
        ),
        (
            "skiff.test/pause:1",
            json!({"Entrypoint": ["/bin/sleep", "2000000000"], "Env": ["PATH=/bin"]}),
        ),
    ] {
        let file = images
            .path()
            .join(format!("{}.tar", name.replace(['/', ':'], "_")));
        std::fs::write(&file, oci_image(name, &[busybox_layer()], config)).expect("image");
        let out = containerd.import(&file);
        assert!(out.status.success(), "ctr import: {out:?}");
    }
    let c = Cluster::start(Backend::Embedded).await;
    let node = format!("containerd-{pid}");
    let _kubelet = spawn_kubelet(
        &c,
        &node,
        &containerd.socket(),
        containerd.dir.path(),
        &containerd.dir.path().join("pods"),
        &[],
    );
    wait_node_ready(&c, &node);
    let info = c.json(&["get", "node", &node]);
    assert!(
        info["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("containerd://")),
        "{info}"
    );
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(SERVER));
    assert!(applied.status.success(), "{applied:?}");
    wait_for("the server pod to run", || phase(&c, "server") == "Running");
    let pod = c.json(&["get", "pod", "server"]);
    let status = &pod["status"]["containerStatuses"][0];
    assert!(
        status["containerID"]
            .as_str()
            .is_some_and(|id| id.starts_with("containerd://")),
        "{status}"
    );
    assert!(
        pod["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.235.")),
        "{pod}"
    );
    wait_httpd(&c);
    let forward = PortForward::start(&c, "server", 8080);
    assert_eq!(forward.get("/index.html"), "hello from the pod\n");
    drop(forward);
    c.ok(&["delete", "pod", "server"]);
    no_sandboxes_left(&containerd.socket(), || c.log()).await;
}

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 300}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 300}
      containers:
      - name: c
        image: example.com/busybox:1
        command: [sh, -c, "touch /ready; exec sleep 3600"]
        readinessProbe: {exec: {command: [test, -e, /ready]}, periodSeconds: 1}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: example.com/busybox:1, command: [sh, -c, "echo job done"]}
---
apiVersion: v1
kind: Pod
metadata: {name: deadline}
spec:
  activeDeadlineSeconds: 2
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: example.com/busybox:1, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: farewell}
spec:
  restartPolicy: Never
  containers:
  - {name: file, image: example.com/busybox:1, command: [sh, -c, "echo goodbye > /dev/termination-log; exit 3"]}
  - name: logs
    image: example.com/busybox:1
    command: [sh, -c, "echo first; echo oops; exit 1"]
    terminationMessagePolicy: FallbackToLogsOnError
---
apiVersion: v1
kind: Pod
metadata: {name: rootless}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: root, image: example.com/busybox:1, command: [sleep, "3600"]}
  - name: user
    image: example.com/busybox:1
    command: [sleep, "3600"]
    securityContext: {runAsUser: 1000}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: example.com/busybox:1
    command: [sh, -c, "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]
    resources: {limits: {memory: 32Mi}}
"#;

/// The running containers of the Deployment's pods: pod name -> (container id, restarts).
fn web_containers(c: &Cluster) -> std::collections::BTreeMap<String, (String, u64)> {
    let pods = c.json(&["get", "pods", "-l", "app=web"]);
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let status = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                (
                    status["containerID"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    status["restartCount"].as_u64().unwrap_or_default(),
                ),
            )
        })
        .collect()
}

fn node_ready(c: &Cluster, node: &str) -> String {
    let node = c.json(&["get", "node", node]);
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_run_to_their_ends_and_outlive_a_kubelet_stop() {
    let n = TestNode::start_with(8, &["--node-monitor-grace-period", "5"]).await;
    let c = &n.c;
    let fast = [
        "--node-lease-duration-seconds",
        "4",
        "--node-status-update-frequency",
        "1",
    ];
    let mut kubelet = n.kubelet_with(&fast);
    n.wait_ready();
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(WORKLOADS));
    assert!(applied.status.success(), "{applied:?}");

    // The Deployment rolls out: three pods Running and Ready.
    let rollout = c.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(rollout.status.success(), "{rollout:?}\n{}", kubelet.log());
    let ready = c.json(&["get", "deployment", "web"]);
    assert_eq!(ready["status"]["readyReplicas"], 3, "{ready}");
    let before = web_containers(c);
    assert_eq!(before.len(), 3, "{before:?}");

    // The Job completes; its pod Succeeded and said so.
    let done = c.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "--timeout=120s",
    ]);
    assert!(done.status.success(), "{done:?}");
    let pods = c.json(&["get", "pods", "-l", "job-name=once"]);
    let job_pod = &pods["items"][0];
    assert_eq!(job_pod["status"]["phase"], "Succeeded", "{job_pod}");
    let name = job_pod["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(c.ok(&["logs", name]), "job done\n");

    // The memory hog is OOMKilled and reported so.
    wait_for("the hog to fail", || phase(c, "hog") == "Failed");
    let hog = container(c, "hog", false);
    assert_eq!(hog["state"]["terminated"]["reason"], "OOMKilled", "{hog}");
    assert_eq!(hog["state"]["terminated"]["exitCode"], 137, "{hog}");

    // A pod past its activeDeadlineSeconds is failed and stopped.
    wait_for("the deadline pod to fail", || {
        phase(c, "deadline") == "Failed"
    });
    let deadline = c.json(&["get", "pod", "deadline"]);
    assert_eq!(
        deadline["status"]["reason"], "DeadlineExceeded",
        "{deadline}"
    );
    assert_eq!(
        deadline["status"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    wait_for("the deadline pod's container to stop", || {
        container(c, "deadline", false)["state"]["running"].is_null()
    });

    // Termination messages: the file at terminationMessagePath, or the log's tail.
    wait_for("the farewell pod to fail", || {
        phase(c, "farewell") == "Failed"
    });
    let farewell = c.json(&["get", "pod", "farewell"]);
    let message = |name: &str| {
        farewell["status"]["containerStatuses"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name))
            .map(|s| s["state"]["terminated"]["message"].clone())
            .unwrap_or_default()
    };
    assert_eq!(message("file"), "goodbye\n", "{farewell}");
    assert_eq!(message("logs"), "first\noops\n", "{farewell}");

    // runAsNonRoot: the image's root user is refused, a non-root runAsUser runs.
    wait_for("the non-root check", || {
        let pod = c.json(&["get", "pod", "rootless"]);
        let statuses = pod["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let by_name = |n: &str| {
            statuses
                .iter()
                .find(|s| s["name"] == n)
                .cloned()
                .unwrap_or_default()
        };
        by_name("root")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
            && !by_name("user")["state"]["running"].is_null()
    });
    let rootless = c.json(&["get", "pod", "rootless"]);
    let root = rootless["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "root"))
        .cloned()
        .unwrap_or_default();
    assert!(
        root["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(
                "container has runAsNonRoot and image will run as root (pod: \"rootless_default("
            )),
        "{root}"
    );

    // The kubelet stops: the node goes Unknown (its Lease is not renewed) and the pods,
    // which tolerate that for five minutes, stay.
    kubelet.kill();
    wait_for("the node to go Unknown", || {
        node_ready(c, &n.name) == "Unknown"
    });
    assert_eq!(web_containers(c).len(), 3);

    // It comes back: the node is Ready again and the same containers run on.
    let _kubelet = n.kubelet_with(&fast);
    n.wait_ready();
    let rollout = c.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(rollout.status.success(), "{rollout:?}");
    assert_eq!(web_containers(c), before);

    c.ok(&["delete", "deployment", "web"]);
    c.ok(&["delete", "job", "once"]);
    c.ok(&["delete", "pod", "hog", "deadline", "rootless", "farewell"]);
    no_sandboxes_left(&n.rt.socket(), || c.log()).await;
}

const STATIC_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: keeper, namespace: kube-system, labels: {tier: node}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: example.com/busybox:1, command: [sh, -c, "echo VERSION; exec sleep 3600"]}
"#;

/// The mirror pod of a static pod, once it runs: (uid, config hash, container id).
fn running_mirror(c: &Cluster, name: &str) -> Option<(String, String, String)> {
    let out = c.kubectl(&["get", "pod", name, "-n", "kube-system", "-o", "json"]);
    let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let status = &pod["status"]["containerStatuses"][0];
    if pod["status"]["phase"] != "Running" || status["state"]["running"].is_null() {
        return None;
    }
    Some((
        pod["metadata"]["uid"].as_str()?.to_string(),
        pod["metadata"]["annotations"]["kubernetes.io/config.mirror"]
            .as_str()?
            .to_string(),
        status["containerID"].as_str()?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_run_from_manifests_and_show_as_mirror_pods() {
    let n = TestNode::start(9).await;
    let c = &n.c;
    let manifests = tempfile::tempdir().expect("manifests");
    let manifest = manifests.path().join("keeper.yaml");
    std::fs::write(&manifest, STATIC_POD.replace("VERSION", "one")).expect("manifest");
    // Editors leave hidden files; they are not pods.
    std::fs::write(manifests.path().join(".keeper.yaml.swp"), "junk").expect("swap file");
    let dir = manifests.path().display().to_string();
    let _kubelet = n.kubelet_with(&["--pod-manifest-path", &dir, "--file-check-frequency", "1"]);
    n.wait_ready();

    // The pod runs without the scheduler and the API shows it as a mirror pod.
    let mirror = format!("keeper-{}", n.name);
    let mut first = None;
    wait_for("the static pod's mirror to run", || {
        first = running_mirror(c, &mirror);
        first.is_some()
    });
    let (uid, hash, container) = first.unwrap_or_default();
    let pod = c.json(&["get", "pod", &mirror, "-n", "kube-system"]);
    assert_eq!(pod["spec"]["nodeName"], n.name.as_str());
    assert_eq!(pod["metadata"]["labels"]["tier"], "node");
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Node"), Some(n.name.as_str()))
    );
    assert_eq!(c.ok(&["logs", &mirror, "-n", "kube-system"]), "one\n");
    // The kubelet lists the static pod itself (its own uid, not the mirror's).
    let listed = c.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/pods", n.name),
    ]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("PodList");
    assert!(
        listed["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|p| p["metadata"]["uid"] == hash.as_str())),
        "{listed}"
    );

    // Deleting the mirror does not stop the pod: a new mirror shows the same container.
    c.ok(&["delete", "pod", &mirror, "-n", "kube-system"]);
    wait_for("a new mirror pod", || {
        running_mirror(c, &mirror)
            .is_some_and(|(u, h, id)| u != uid && h == hash && id == container)
    });

    // An edited manifest is a new pod: the old container goes, a new one runs.
    std::fs::write(&manifest, STATIC_POD.replace("VERSION", "two")).expect("manifest");
    wait_for("the edited static pod to run", || {
        running_mirror(c, &mirror).is_some_and(|(_, h, id)| h != hash && id != container)
    });
    assert_eq!(c.ok(&["logs", &mirror, "-n", "kube-system"]), "two\n");

    // A removed manifest stops the pod and takes the mirror away.
    std::fs::remove_file(&manifest).expect("remove manifest");
    wait_for("the mirror pod to go", || {
        !c.kubectl(&["get", "pod", &mirror, "-n", "kube-system"])
            .status
            .success()
    });
    no_sandboxes_left(&n.rt.socket(), || c.log()).await;
}

fn node_condition(c: &Cluster, node: &str, kind: &str) -> serde_json::Value {
    let node = c.json(&["get", "node", node]);
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_default()
}

/// Pods bound to `node` directly: the scheduler places nothing on a node tainted
/// `memory-pressure`, so only pods bound by name reach its kubelet (as upstream's
/// eviction tests bind theirs).
fn pressed(node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: best}}
spec:
  nodeName: {node}
  containers:
  - {{name: c, image: example.com/busybox:1, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: burst}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: example.com/busybox:1
    command: [sleep, "3600"]
    resources: {{requests: {{memory: 1Mi}}}}
"#
    )
}

/// A memory threshold the node always meets (available below 100% of capacity): the
/// node reports MemoryPressure (and is tainted so the scheduler sends it nothing),
/// refuses a BestEffort pod at admission and evicts a running one, as upstream's
/// eviction manager does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pressure_refuses_and_evicts_pods() {
    let n = TestNode::start(10).await;
    let c = &n.c;
    let _kubelet = n.kubelet_with(&[
        "--eviction-hard",
        "memory.available<100%",
        "--node-status-update-frequency",
        "1",
    ]);
    n.wait_ready();
    wait_for("MemoryPressure", || {
        node_condition(c, &n.name, "MemoryPressure")["status"] == "True"
    });
    assert_eq!(
        node_condition(c, &n.name, "MemoryPressure")["reason"],
        "KubeletHasInsufficientMemory"
    );
    wait_for("the memory-pressure taint", || {
        c.json(&["get", "node", &n.name])["spec"]["taints"]
            .as_array()
            .is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule"
                })
            })
    });
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(&pressed(&n.name)));
    assert!(applied.status.success(), "{applied:?}");

    // BestEffort: refused at admission.
    wait_for("the BestEffort pod to be refused", || {
        phase(c, "best") == "Failed"
    });
    let best = c.json(&["get", "pod", "best"]);
    assert_eq!(best["status"]["reason"], "Evicted", "{best}");
    assert!(
        best["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("MemoryPressure")),
        "{best}"
    );

    // Burstable: admitted, then evicted by the eviction manager.
    wait_for("the Burstable pod to be evicted", || {
        phase(c, "burst") == "Failed"
    });
    let burst = c.json(&["get", "pod", "burst"]);
    assert_eq!(burst["status"]["reason"], "Evicted", "{burst}");
    assert!(
        burst["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The node was low on resource: memory.")),
        "{burst}"
    );
    let disruption = burst["status"]["conditions"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == "DisruptionTarget"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(disruption["reason"], "TerminationByKubelet", "{burst}");
    // Its containers are stopped.
    wait_for("the evicted pod's containers to stop", || {
        container(c, "burst", false)["state"]["running"].is_null()
    });

    c.ok(&["delete", "pod", "best", "burst"]);
    no_sandboxes_left(&n.rt.socket(), || c.log()).await;
}
