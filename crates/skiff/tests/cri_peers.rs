//! One CRI lifecycle, two runtimes: the same client code drives skiff's runtime and
//! Debian's containerd 1.6 (CRI plugin, runc, `restrict_oom_score_adj`), each on a CNI
//! bridge network of its own, so the answers skiff gives are checked against what a
//! real peer gives for the same requests: sandbox and container states, exit codes and
//! reasons, OOM kills, the CRI log format, ExecSync, streamed exec and attach,
//! idempotent stop and remove.

mod cri;

use std::path::Path;

use cri::*;

fn images() -> Vec<(&'static str, Vec<u8>)> {
    let process = json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]});
    let pause = json!({"Entrypoint": ["/bin/sleep", "2000000000"], "Env": ["PATH=/bin"]});
    vec![
        (
            "example.com/busybox:1",
            oci_image("example.com/busybox:1", &[busybox_layer()], process),
        ),
        (
            "skiff.test/pause:1",
            oci_image("skiff.test/pause:1", &[busybox_layer()], pause),
        ),
    ]
}

fn container(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "example.com/busybox:1".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The lifecycle both runtimes must get through the same way; `who` names the runtime
/// in failures.
async fn lifecycle(who: &str, socket: &Path, subnet_prefix: &str, logs: &Path, cgroup: &str) {
    let channel = channel(socket).await;
    let mut client = RuntimeServiceClient::new(channel);
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "peer-0".into(),
            uid: "uid-peer-0".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "peer-0".into(),
        log_directory: logs.display().to_string(),
        // A pod cgroup named as the kubelet does (both runtimes nest containers in it).
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{who}: RunPodSandbox: {e:?}"))
        .into_inner()
        .pod_sandbox_id;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32, "{who}");
    let ip = status.network.expect("network").ip;
    assert!(ip.starts_with(subnet_prefix), "{who}: pod IP {ip}");

    let hello = run(
        &mut client,
        &sandbox,
        &pod,
        container("hello", "echo hello; echo oops >&2; hostname; exit 3"),
    )
    .await;
    let done = wait_exited(&mut client, &hello).await;
    assert_eq!(
        (done.exit_code, done.reason.as_str()),
        (3, "Error"),
        "{who}"
    );
    // containerd 1.6 may record a quick container's start after its end.
    assert!(
        done.started_at > 0 && (who != "skiff" || done.finished_at >= done.started_at),
        "{who}: {done:?}"
    );
    let log = std::fs::read_to_string(logs.join("hello.log")).expect("log");
    for expected in ["stdout F hello", "stderr F oops", "stdout F peer-0"] {
        assert!(log.contains(expected), "{who}: {expected:?} in {log}");
    }
    let first = log.lines().next().unwrap_or_default();
    let stamp = first.split(' ').next().unwrap_or_default();
    assert!(
        stamp.ends_with('Z') && stamp.len() >= 20,
        "{who}: timestamp {stamp}"
    );

    let sleeper = run(
        &mut client,
        &sandbox,
        &pod,
        container("sleeper", "sleep 1000"),
    )
    .await;
    let out = client
        .exec_sync(ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo hi; echo there >&2; exit 7".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        (out.exit_code, out.stdout.as_slice(), out.stderr.as_slice()),
        (7, b"hi\n".as_slice(), b"there\n".as_slice()),
        "{who}"
    );
    // The streaming server, as the kubelet proxies kubectl's exec and attach
    // (containerd 1.6 predates v5.channel.k8s.io).
    let protocol = "v4.channel.k8s.io";
    streams::streaming_exec(&mut client, &sleeper, protocol).await;
    streams::attach(
        &mut client,
        &sandbox,
        &pod,
        container("attach", ""),
        protocol,
    )
    .await;
    client
        .stop_container(StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
    let stopped = wait_exited(&mut client, &sleeper).await;
    assert_eq!(stopped.exit_code, 137, "{who}");
    // Stopping a stopped container is fine.
    client
        .stop_container(StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 1,
        })
        .await
        .unwrap_or_else(|e| panic!("{who}: second StopContainer: {e:?}"));

    let mut hog = container("hog", "dd if=/dev/zero of=/dev/null bs=64M count=1");
    if let Some(linux) = hog.linux.as_mut() {
        linux.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        });
    }
    let hog = run(&mut client, &sandbox, &pod, hog).await;
    let oom = wait_exited(&mut client, &hog).await;
    assert_eq!(
        (oom.exit_code, oom.reason.as_str()),
        (137, "OOMKilled"),
        "{who}"
    );

    client
        .remove_container(RemoveContainerRequest {
            container_id: hello.clone(),
        })
        .await
        .expect("RemoveContainer");
    let gone = client
        .container_status(ContainerStatusRequest {
            container_id: hello.clone(),
            verbose: false,
        })
        .await
        .expect_err("a removed container");
    assert_eq!(gone.code(), tonic::Code::NotFound, "{who}: {gone:?}");
    client
        .remove_container(RemoveContainerRequest {
            container_id: hello.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("{who}: second RemoveContainer: {e:?}"));

    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(
        status.state,
        PodSandboxState::SandboxNotready as i32,
        "{who}"
    );
    for _ in 0..2 {
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{who}: RemovePodSandbox: {e:?}"));
    }
    let left = client
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{who}: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_and_containerd_answer_the_same_lifecycle_alike() {
    let pid = std::process::id();
    let octet = 10 + pid % 200;
    let skiff_net = Network::new(
        &format!("sks{}", pid % 100_000),
        &format!("10.232.{octet}.0/24"),
    );
    let containerd_net = Network::new(
        &format!("skc{}", pid % 100_000),
        &format!("10.233.{octet}.0/24"),
    );

    let skiff_conf = skiff_net.conf_dir().display().to_string();
    // Declared first, dropped last: after the runtimes and their containers are gone.
    let _cgroups = CgroupGuard(format!("/skiff-peer-{pid}"));
    let rt = Runtime::start_with(&[
        "--cni-conf-dir",
        &skiff_conf,
        "--cgroup-parent",
        &format!("/skiff-peer-{pid}"),
    ]);
    let containerd = Containerd::start(&containerd_net.conf_dir(), "skiff.test/pause:1")
        .expect("containerd (Debian's containerd package) is installed");
    for (name, image) in images() {
        let file = rt.file(&format!("{}.tar", name.replace(['/', ':'], "_")), &image);
        let out = rt.import(&file, &[]);
        assert!(
            out.status.success(),
            "skiff import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = containerd.import(&file);
        assert!(
            out.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let logs = tempfile::tempdir().expect("logs");
    for who in ["skiff", "containerd"] {
        std::fs::create_dir_all(logs.path().join(who)).expect("log directory");
    }
    lifecycle(
        "skiff",
        &rt.socket(),
        &format!("10.232.{octet}."),
        &logs.path().join("skiff"),
        &format!("/skiff-peer-{pid}/skiff"),
    )
    .await;
    lifecycle(
        "containerd",
        &containerd.socket(),
        &format!("10.233.{octet}."),
        &logs.path().join("containerd"),
        &format!("/skiff-peer-{pid}/containerd"),
    )
    .await;
}
