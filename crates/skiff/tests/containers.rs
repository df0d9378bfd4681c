//! Pods and containers end to end: the real `skiff runtime` binary, driven through its
//! CRI socket by a tonic client, runs busybox images (built here from Debian's
//! busybox-static) in real containers with runc, on a real CNI bridge network
//! (Debian's containernetworking-plugins) on a bridge and subnet this test owns and
//! removes. It checks what a kubelet relies on: logs in the CRI format, exit codes,
//! OOM kills, pids limits, stop grace periods, exec, a container outliving a runtime
//! restart (and CNI CHECK after it), log reopening, layer whiteouts and hard links, clear errors for bad
//! requests, and that removal leaves no mount, process, cgroup or veth behind.

mod cri;

use cri::*;

/// The cgroups the test made outside its temporary directory, removed however it ends.
struct HostState {
    cgroups: Vec<String>,
}

impl Drop for HostState {
    fn drop(&mut self) {
        for cgroup in &self.cgroups {
            for dir in cgroup_dirs(cgroup) {
                remove_tree(&dir);
            }
        }
    }
}

fn image(name: &str, layers: &[Vec<u8>]) -> Vec<u8> {
    oci_image(
        name,
        layers,
        json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/"}),
    )
}

/// A second layer over busybox: whiteouts, an opaque directory and a hard link.
fn layers_with_whiteouts() -> Vec<Vec<u8>> {
    let mut lower = tar::Builder::new(Vec::new());
    for path in ["data/a", "data/b", "data/dir/x"] {
        add(&mut lower, path, path.as_bytes());
    }
    let mut upper = tar::Builder::new(Vec::new());
    add(&mut upper, "data/.wh.a", b"");
    add(&mut upper, "data/dir/.wh..wh..opq", b"");
    add(&mut upper, "data/dir/y", b"y");
    add(&mut upper, "data/h1", b"linked");
    let mut link = tar::Header::new_gnu();
    link.set_uid(0);
    link.set_gid(0);
    link.set_mtime(1_700_000_000);
    link.set_entry_type(tar::EntryType::Link);
    link.set_size(0);
    link.set_mode(0o644);
    upper
        .append_link(&mut link, "data/h2", "data/h1")
        .expect("hard link");
    vec![
        busybox_layer(),
        lower.into_inner().expect("lower"),
        upper.into_inner().expect("upper"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_containers_run_through_the_cri() {
    let pid = std::process::id();
    let bridge = format!("skt{}", pid % 100_000);
    let parent = format!("/skiff-test-{pid}");
    let limited = format!("/skiff-test-{pid}-limited");
    let _host = HostState {
        cgroups: vec![parent.clone(), limited.clone()],
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let subnet = format!("10.231.{}.0/24", 10 + pid % 200);
    let network = Network::new(&bridge, &subnet);
    let logs = scratch.path().join("logs");

    let net_dir = network.conf_dir().display().to_string();
    let mut rt = Runtime::start_with(&["--cni-conf-dir", &net_dir, "--cgroup-parent", &parent]);
    let channel = channel(&rt.socket()).await;
    let mut client = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let conditions = client
        .status(StatusRequest::default())
        .await
        .expect("Status")
        .into_inner()
        .status
        .expect("status")
        .conditions;
    assert!(
        conditions.iter().all(|c| c.status),
        "runtime and network ready: {conditions:?}"
    );

    for (file, name, layers) in [
        (
            "busybox.tar",
            "example.com/busybox:1",
            vec![busybox_layer()],
        ),
        (
            "layered.tar",
            "example.com/layered:1",
            layers_with_whiteouts(),
        ),
    ] {
        let out = rt.import(&rt.file(file, &image(name, &layers)), &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let busybox = "example.com/busybox:1";

    // A sandbox on the CNI network.
    let pod = sandbox_config("web-0", &logs, "");
    let sandbox = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let sandbox_status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(sandbox_status.state, PodSandboxState::SandboxReady as i32);
    let ip = sandbox_status.network.expect("network").ip;
    let prefix = subnet.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "pod IP {ip} in {subnet}");
    let again = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("a second sandbox of the same name");
    assert_eq!(again.code(), tonic::Code::AlreadyExists);

    // Output, exit code, hostname, DNS, env and the pod's address.
    let hello = run(
        &mut client,
        &sandbox,
        &pod,
        container_config(
            "hello",
            busybox,
            "echo $GREETING $FROM_IMAGE; echo oops >&2; hostname; cat /etc/resolv.conf; \
             ip -4 addr show eth0; id -u; exit 3",
        ),
    )
    .await;
    let done = wait_exited(&mut client, &hello).await;
    assert_eq!((done.exit_code, done.reason.as_str()), (3, "Error"));
    assert!(done.finished_at >= done.started_at && done.started_at > done.created_at);
    let log = std::fs::read_to_string(logs.join("hello.log")).expect("log");
    // Each stream in order; the two streams' lines interleave as they came.
    let line = log
        .lines()
        .find(|l| l.contains(" stdout "))
        .expect("a line");
    let parts: Vec<&str> = line.splitn(4, ' ').collect();
    assert!(parts[0].ends_with('Z') && parts[0].contains('T'), "{line}");
    assert_eq!(&parts[1..], ["stdout", "F", "hello yes"], "{log}");
    for expected in [
        "stderr F oops",
        "stdout F web-0",
        "stdout F nameserver 10.96.0.10",
        "stdout F search default.svc.cluster.local",
        "stdout F 0",
    ] {
        assert!(log.contains(expected), "{expected:?} in {log}");
    }
    assert!(
        log.contains(&format!("inet {ip}/24")),
        "pod address in {log}"
    );

    // Layers: whiteouts hide, opaque directories hide what is below, links stay links.
    let layered = run(
        &mut client,
        &sandbox,
        &pod,
        container_config(
            "layered",
            "example.com/layered:1",
            "ls /data; echo --; ls /data/dir; stat -c %h /data/h1",
        ),
    )
    .await;
    assert_eq!(wait_exited(&mut client, &layered).await.exit_code, 0);
    let log = std::fs::read_to_string(logs.join("layered.log")).expect("log");
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
        .collect();
    assert_eq!(lines, ["b", "dir", "h1", "h2", "--", "y", "2"], "{log}");

    // drop ALL + add one leaves exactly that one (containerd's order).
    let mut caps = container_config("caps", busybox, "grep CapEff /proc/self/status");
    if let Some(security) = caps
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        security.capabilities = Some(Capability {
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
    }
    let caps = run(&mut client, &sandbox, &pod, caps).await;
    assert_eq!(wait_exited(&mut client, &caps).await.exit_code, 0);
    let log = std::fs::read_to_string(logs.join("caps.log")).expect("log");
    assert!(log.contains("CapEff:\t0000000000000400"), "{log}");

    // The sandbox asked for no PID mode, so POD: containers that ask for POD share one
    // PID namespace, whose PID 1 is the pod's pause process.
    let mut shared = container_config("shared", busybox, "sleep 1001");
    let mut peek = container_config("peek", busybox, "ps -o pid,args");
    for config in [&mut shared, &mut peek] {
        if let Some(security) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            security.namespace_options = None;
        }
    }
    let shared = run(&mut client, &sandbox, &pod, shared).await;
    let peek = run(&mut client, &sandbox, &pod, peek).await;
    assert_eq!(wait_exited(&mut client, &peek).await.exit_code, 0);
    let log = std::fs::read_to_string(logs.join("peek.log")).expect("log");
    assert!(
        log.contains("sleep 1001"),
        "the other container's process: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("runtime-pause") && l.split_whitespace().nth(3) == Some("1")),
        "PID 1 is the pause process: {log}"
    );
    let pauses = processes_named("runtime-pause");
    assert!(!pauses.is_empty());
    for id in [&shared, &peek] {
        client
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .expect("RemoveContainer");
    }

    // RuntimeDefault installs a seccomp filter that refuses what Docker's profile
    // refuses (unshare without CAP_SYS_ADMIN is refused by the kernel anyway; keyctl
    // and the like by the filter); Unconfined installs none.
    for (name, profile) in [
        (
            "confined",
            k8s_cri::v1::security_profile::ProfileType::RuntimeDefault,
        ),
        (
            "unconfined",
            k8s_cri::v1::security_profile::ProfileType::Unconfined,
        ),
    ] {
        let mut config = container_config(name, busybox, "grep Seccomp: /proc/self/status");
        if let Some(security) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            security.seccomp = Some(SecurityProfile {
                profile_type: profile as i32,
                ..Default::default()
            });
        }
        let id = run(&mut client, &sandbox, &pod, config).await;
        assert_eq!(wait_exited(&mut client, &id).await.exit_code, 0);
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).expect("log");
        let mode = if name == "confined" { "2" } else { "0" };
        assert!(log.contains(&format!("Seccomp:\t{mode}")), "{name}: {log}");
    }

    // Exec, with exit codes, a timeout and a command that does not exist.
    let sleeper = run(
        &mut client,
        &sandbox,
        &pod,
        container_config("sleeper", busybox, "sleep 1000"),
    )
    .await;
    assert_eq!(
        status(&mut client, &sleeper).await.state,
        ContainerState::ContainerRunning as i32
    );
    let out = exec(&mut client, &sleeper, &["cat", "/etc/hostname"], 10)
        .await
        .expect("ExecSync");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, b"web-0\n".as_slice())
    );
    let out = exec(
        &mut client,
        &sleeper,
        &["sh", "-c", "echo err >&2; exit 7"],
        10,
    )
    .await
    .expect("ExecSync");
    assert_eq!(
        (out.exit_code, out.stderr.as_slice()),
        (7, b"err\n".as_slice())
    );
    let timed_out = exec(&mut client, &sleeper, &["sleep", "30"], 1)
        .await
        .expect_err("timeout");
    assert_eq!(
        timed_out.code(),
        tonic::Code::DeadlineExceeded,
        "{timed_out:?}"
    );
    let missing = exec(&mut client, &sleeper, &["/no/such/binary"], 10)
        .await
        .expect_err("no binary");
    assert!(missing.message().contains("/no/such/binary"), "{missing:?}");
    streams::streaming_exec(&mut client, &sleeper, "v5.channel.k8s.io").await;
    streams::attach(
        &mut client,
        &sandbox,
        &pod,
        container_config("attach", busybox, ""),
        "v5.channel.k8s.io",
    )
    .await;
    // Stdin for a container created without one is refused (containerd drops it).
    let refused = client
        .attach(AttachRequest {
            container_id: sleeper.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("no stdin");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let web = run(
        &mut client,
        &sandbox,
        &pod,
        container_config(
            "web",
            busybox,
            "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        ),
    )
    .await;
    streams::port_forward(&mut client, &sandbox, &web).await;
    // The timed-out sleep was killed: only the container's own sleep is left.
    let out = exec(&mut client, &sleeper, &["ps", "-o", "args"], 10)
        .await
        .expect("ps");
    let ps = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!ps.contains("sleep 30"), "{ps}");

    // Statistics from cgroups, and new limits for a running container.
    let stats = client
        .container_stats(ContainerStatsRequest {
            container_id: sleeper.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let cpu = stats
        .cpu
        .expect("cpu")
        .usage_core_nano_seconds
        .expect("cpu time")
        .value;
    let memory = stats
        .memory
        .expect("memory")
        .working_set_bytes
        .expect("working set")
        .value;
    assert!(cpu > 0 && memory > 0, "cpu {cpu} ns, memory {memory} bytes");
    assert!(stats.writable_layer.is_some());
    client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: sleeper.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    let cgroup = format!("{parent}/pod-{sandbox}/{sleeper}");
    let limit =
        std::fs::read_to_string(cgroup_dir("memory", &cgroup).join("memory.limit_in_bytes"))
            .expect("memory limit");
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let quota = std::fs::read_to_string(cgroup_dir("cpu", &cgroup).join("cpu.cfs_quota_us"))
        .expect("cpu quota");
    assert_eq!(quota.trim(), "50000");
    let pod_stats = client
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    let linux = pod_stats
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == sandbox))
        .and_then(|s| s.linux.clone())
        .expect("the pod's stats");
    let interface = linux
        .network
        .and_then(|n| n.default_interface)
        .expect("eth0 counters");
    assert_eq!(interface.name, "eth0");
    assert!(
        linux
            .process
            .and_then(|p| p.process_count)
            .is_some_and(|c| c.value >= 1)
    );
    assert!(
        linux
            .containers
            .iter()
            .any(|c| c.attributes.as_ref().is_some_and(|a| a.id == sleeper))
    );

    // Stop: PID 1 ignores SIGTERM without a handler, so the grace period ends in SIGKILL;
    // a handler that exits ends it early.
    client
        .stop_container(StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
    assert_eq!(status(&mut client, &sleeper).await.exit_code, 137);
    let polite = run(
        &mut client,
        &sandbox,
        &pod,
        container_config(
            "polite",
            busybox,
            "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ),
    )
    .await;
    wait_for_text(&logs.join("polite.log"), "ready").await;
    client
        .stop_container(StopContainerRequest {
            container_id: polite.clone(),
            timeout: 30,
        })
        .await
        .expect("StopContainer");
    let stopped = status(&mut client, &polite).await;
    assert_eq!(
        (stopped.exit_code, stopped.reason.as_str()),
        (0, "Completed")
    );
    assert!(
        std::fs::read_to_string(logs.join("polite.log"))
            .unwrap_or_default()
            .contains("stdout F bye")
    );

    // Memory limit: the OOM killer ends it, and the status says so.
    let mut hog = container_config(
        "hog",
        busybox,
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    if let Some(linux) = hog.linux.as_mut() {
        linux.resources = Some(LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        });
    }
    let hog = run(&mut client, &sandbox, &pod, hog).await;
    let oom = wait_exited(&mut client, &hog).await;
    assert_eq!((oom.exit_code, oom.reason.as_str()), (137, "OOMKilled"));

    // Unknown images, missing commands and missing metadata are refused, leaving nothing.
    let before = std::fs::read_dir(rt.data().join("containers"))
        .expect("dir")
        .count();
    let unknown = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(container_config("nope", "example.com/absent:1", "true")),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("unknown image");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let mut missing = container_config("missing", busybox, "");
    missing.command = vec!["/bin/not-there".into()];
    let missing = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(missing),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("missing command");
    assert!(missing.message().contains("/bin/not-there"), "{missing:?}");
    let nameless = client
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .expect_err("no config");
    assert_eq!(nameless.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        std::fs::read_dir(rt.data().join("containers"))
            .expect("dir")
            .count(),
        before,
        "a refused container left its directory"
    );

    // A container keeps running while the runtime restarts, and is found again.
    let ticker = run(
        &mut client,
        &sandbox,
        &pod,
        container_config(
            "ticker",
            busybox,
            "while true; do echo tick; sleep 0.05; done",
        ),
    )
    .await;
    wait_for_text(&logs.join("ticker.log"), "tick").await;
    // A sandbox whose network breaks meanwhile (its eth0 deleted): the restarted
    // runtime's CNI CHECK finds it, so it is not ready; the intact one is.
    let broken_pod = sandbox_config("broken-0", &logs, &limited);
    let broken = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(broken_pod),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let netns = rt.data().join("sandboxes").join(&broken).join("ns/net");
    let deleted = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "link", "del", "eth0"])
        .output()
        .expect("nsenter");
    assert!(deleted.status.success(), "{deleted:?}");
    rt.restart();
    let channel = cri::channel(&rt.socket()).await;
    let mut client = RuntimeServiceClient::new(channel.clone());
    for (id, state) in [
        (&sandbox, PodSandboxState::SandboxReady),
        (&broken, PodSandboxState::SandboxNotready),
    ] {
        let status = client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("status");
        assert_eq!(status.state, state as i32, "{id}: {}", rt.log());
    }
    let listed = client
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                label_selector: [("container".to_string(), "ticker".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [ticker.as_str()]
    );
    let out = exec(&mut client, &ticker, &["echo", "still here"], 10)
        .await
        .expect("ExecSync");
    assert_eq!(out.stdout, b"still here\n");

    // Log rotation: the kubelet renames the file, then asks for a new one.
    let rotated = logs.join("ticker.log.1");
    std::fs::rename(logs.join("ticker.log"), &rotated).expect("rename");
    client
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    wait_for_text(&logs.join("ticker.log"), "stdout F tick").await;

    // A pids limit set on the pod cgroup (as the kubelet does) holds.
    let pids = cgroup_dir("pids", &limited);
    std::fs::create_dir_all(&pids).expect("pids cgroup");
    std::fs::write(pids.join("pids.max"), "8").expect("pids.max");
    let small = sandbox_config("small-0", &logs, &limited);
    let small_id = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(small.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let forker = run(
        &mut client,
        &small_id,
        &small,
        container_config(
            "forker",
            busybox,
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do sleep 60 & done",
        ),
    )
    .await;
    wait_for_text(&logs.join("forker.log"), "can't fork").await;
    let events =
        std::fs::read_to_string(pids.join(&forker).join("pids.events")).unwrap_or_default();
    let current: u32 = std::fs::read_to_string(pids.join(&forker).join("pids.current"))
        .expect("pids.current")
        .trim()
        .parse()
        .expect("number");
    assert!(current <= 8, "{current} processes under a limit of 8");
    assert!(
        events.starts_with("max ") && !events.starts_with("max 0"),
        "{events}"
    );

    // Removing everything leaves nothing behind.
    for id in [&sandbox, &small_id, &broken] {
        client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .expect("StopPodSandbox");
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .expect("RemovePodSandbox");
    }
    let remaining = client
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(remaining.is_empty(), "{remaining:?}");
    let (mounts, processes) = leftovers(&rt.data());
    // Killed; a zombie for a moment at most, until its parent reaps it.
    let pauses_left: Vec<&u32> = pauses
        .iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect();
    assert!(
        pauses_left.is_empty(),
        "pause processes left: {pauses_left:?}"
    );
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(processes.is_empty(), "processes left: {processes:?}");
    for dir in cgroup_dirs(&parent) {
        let children: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert!(children.is_empty(), "cgroups left: {children:?}");
    }
    let ports = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge])
        .output()
        .expect("ip");
    assert!(
        String::from_utf8_lossy(&ports.stdout).trim().is_empty(),
        "veths left on {bridge}: {}",
        String::from_utf8_lossy(&ports.stdout)
    );
    // The busybox image is free to go now.
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: busybox.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
    drop(rt);
}
