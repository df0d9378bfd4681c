//! The node side of kubelet tests: a control plane, `skiff runtime` on a CNI bridge
//! network of the test's own with the busybox image imported, and the kubelet started
//! apart, with the kubectl helpers the tests share.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::time::Duration;

use crate::common::{self, Backend, Cluster, wait_for};
use crate::cri::*;

pub fn text(c: &Cluster, args: &[&str]) -> String {
    let out = c.kubectl(args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits for a Node's Ready condition to be True.
pub fn wait_node_ready(c: &Cluster, node: &str) {
    wait_for(&format!("node {node} to be Ready"), || {
        text(
            c,
            &[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        ) == "True"
    });
}

pub fn phase(c: &Cluster, pod: &str) -> String {
    text(c, &["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
}

/// The first container status of a pod (`initContainerStatuses` when `init`).
pub fn container(c: &Cluster, pod: &str, init: bool) -> serde_json::Value {
    let pod = c.json(&["get", "pod", pod]);
    let key = if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    pod["status"][key][0].clone()
}

pub fn condition(pod: &serde_json::Value, kind: &str) -> serde_json::Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .cloned()
        .unwrap_or_default()
}

/// A node for a test: `skiff runtime` on a CNI bridge network of the test's own with
/// the busybox image imported, and a control plane; the kubelet is started apart.
/// Fields drop in order: the control plane, the runtime, the network, the cgroups.
pub struct TestNode {
    pub c: Cluster,
    pub rt: Runtime,
    _network: Network,
    _cgroups: CgroupGuard,
    pub name: String,
    pub subnet: String,
    pub logs: std::path::PathBuf,
}

impl TestNode {
    pub async fn start(tag: u32) -> TestNode {
        TestNode::start_with(tag, &[]).await
    }

    /// A node whose control plane gets `server` flags.
    pub async fn start_with(tag: u32, server: &[&str]) -> TestNode {
        let pid = std::process::id() + tag;
        let parent = format!("/skiff-kubelet-test-{pid}");
        let cgroups = CgroupGuard(parent.clone());
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
        let c = Cluster::start_with(Backend::Embedded, server).await;
        let logs = rt.dir.path().join("pod-logs");
        TestNode {
            c,
            rt,
            _network: network,
            _cgroups: cgroups,
            name: format!("node-{pid}"),
            subnet,
            logs,
        }
    }

    pub fn kubelet(&self) -> common::Component {
        self.kubelet_with(&[])
    }

    /// The kubelet, with `extra` flags.
    pub fn kubelet_with(&self, extra: &[&str]) -> common::Component {
        spawn_kubelet(
            &self.c,
            &self.name,
            &self.rt.socket(),
            self.rt.dir.path(),
            &self.logs,
            extra,
        )
    }

    pub fn wait_ready(&self) {
        wait_node_ready(&self.c, &self.name);
    }

    /// The CNI configuration directory of the node's network.
    pub fn cni_conf_dir(&self) -> std::path::PathBuf {
        self._network.conf_dir()
    }
}

/// `skiff kubelet` as node `name` on the runtime at `socket`: its root under `dir`,
/// pod logs in `logs`, the kubelet API on a free port for the cluster's CA, `extra` flags.
pub fn spawn_kubelet(
    c: &Cluster,
    name: &str,
    socket: &std::path::Path,
    dir: &std::path::Path,
    logs: &std::path::Path,
    extra: &[&str],
) -> common::Component {
    let socket = socket.display().to_string();
    let logs = logs.display().to_string();
    let ca = c.data_dir().join("pki/ca.crt").display().to_string();
    let root = dir.join("kubelet").display().to_string();
    let mut args = vec![
        "kubelet",
        "--root-dir",
        &root,
        "--client-ca-file",
        &ca,
        "--kubelet-port",
        "0",
        "--node-name",
        name,
        "--cri-socket",
        &socket,
        "--pod-log-dir",
        &logs,
        "--node-ip",
        "127.0.0.1",
    ];
    // Eviction by the host disk's fill level is not what most tests are about.
    if !extra.contains(&"--eviction-hard") {
        args.extend_from_slice(&["--eviction-hard", "memory.available<1Mi"]);
    }
    args.extend_from_slice(extra);
    c.spawn_component(&args)
}

/// Waits until the runtime at `socket` has no sandbox left (30 s at most).
pub async fn no_sandboxes_left(socket: &std::path::Path, log: impl Fn() -> String) {
    let mut runtime = RuntimeServiceClient::new(channel(socket).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = runtime
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandboxes left: {left:?}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
