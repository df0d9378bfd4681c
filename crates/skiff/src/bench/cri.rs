//! `skiff bench cri`: the full CRI pod cycle (RunPodSandbox, CreateContainer,
//! StartContainer, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox)
//! timed against one or more CRI runtimes, sequentially and N at a time, next to a bare
//! `runc run` of /bin/true (the floor any runtime on runc stands on). `--spawn` starts
//! the runtimes itself: skiff's (this binary) and, when installed, containerd, each in
//! a temporary root with its own CNI bridge network and a busybox image built here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::stats::{Samples, ms};

pub(super) const IMAGE: &str = "skiff.bench/busybox:1";
const PAUSE: &str = "skiff.bench/pause:1";
const STEPS: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

#[derive(clap::Args)]
pub struct CriBench {
    /// A CRI socket to measure, as NAME=PATH or PATH (repeatable). The image must be
    /// there already.
    #[arg(long)]
    endpoint: Vec<String>,
    /// Start skiff's runtime and (when installed) containerd in temporary roots, with
    /// CNI networks and images, and measure both.
    #[arg(long)]
    spawn: bool,
    /// The image the containers run (`sleep 3600` must work in it).
    #[arg(long, default_value = IMAGE)]
    image: String,
    /// Pod cycles per mode.
    #[arg(long, default_value_t = 40)]
    pods: usize,
    /// Cycles in flight at once in the concurrent mode.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Pods in the node's network namespace (no CNI).
    #[arg(long)]
    host_network: bool,
    /// The OCI runtime for the bare `run /bin/true` measurement.
    #[arg(long, default_value = "runc")]
    oci_runtime: PathBuf,
}

type Client = RuntimeServiceClient<tonic::transport::Channel>;

impl CriBench {
    pub async fn run(self) -> Result<()> {
        let scratch = tempfile::tempdir()?;
        let mut targets: Vec<(String, PathBuf)> = self
            .endpoint
            .iter()
            .map(|e| match e.split_once('=') {
                Some((name, path)) => (name.to_string(), PathBuf::from(path)),
                None => (e.clone(), PathBuf::from(e)),
            })
            .collect();
        let mut spawned = Vec::new();
        if self.spawn {
            spawned = spawn(scratch.path())?;
            targets.extend(spawned.iter().map(|s| (s.name.clone(), s.socket.clone())));
        }
        if targets.is_empty() {
            bail!("nothing to measure: give --endpoint or --spawn");
        }
        println!(
            "{} pod cycles per mode, {} at a time in the concurrent mode, {}",
            self.pods,
            self.parallel,
            if self.host_network {
                "host network"
            } else {
                "CNI network"
            }
        );
        println!(
            "{:<12} {:<14} {:>11} {:>11} {:>9}",
            "runtime", "mode", "p50 cycle", "p99 cycle", "pods/s"
        );
        let mut steps_report = Vec::new();
        for (name, socket) in &targets {
            let logs = scratch.path().join("logs").join(name);
            std::fs::create_dir_all(&logs)?;
            let client = RuntimeServiceClient::new(crate::runtime::connect(socket).await?);
            for (mode, parallel) in [("sequential", 1), ("concurrent", self.parallel)] {
                let started = Instant::now();
                let (mut cycles, steps) = self.cycles(&client, name, &logs, parallel).await?;
                let elapsed = started.elapsed();
                let rate = self.pods as f64 / elapsed.as_secs_f64();
                let label = if parallel == 1 {
                    mode.to_string()
                } else {
                    format!("{parallel} at a time")
                };
                println!(
                    "{name:<12} {label:<14} {:>11} {:>11} {rate:>9.1}",
                    ms(cycles.percentile(50.0)),
                    ms(cycles.percentile(99.0)),
                );
                if parallel == 1 {
                    steps_report.push((name.clone(), steps));
                }
            }
        }
        println!("\np50 per step, sequential:");
        print!("{:<18}", "step");
        for (name, _) in &steps_report {
            print!(" {name:>12}");
        }
        println!();
        for (i, step) in STEPS.iter().enumerate() {
            print!("{step:<18}");
            for (_, steps) in steps_report.iter_mut() {
                print!(" {:>12}", ms(steps[i].percentile(50.0)));
            }
            println!();
        }
        match bare_run(&self.oci_runtime, scratch.path(), 20) {
            Ok(mut samples) => println!(
                "\nbare `{} run` of /bin/true (no CRI, no network): p50 {}, p99 {}",
                self.oci_runtime.display(),
                ms(samples.percentile(50.0)),
                ms(samples.percentile(99.0))
            ),
            Err(e) => println!("\nbare OCI runtime run not measured: {e:#}"),
        }
        drop(spawned);
        remove_cgroup(&bench_cgroup());
        Ok(())
    }

    /// `self.pods` cycles, `parallel` in flight; cycle times and per-step times.
    async fn cycles(
        &self,
        client: &Client,
        runtime: &str,
        logs: &Path,
        parallel: usize,
    ) -> Result<(Samples, Vec<Samples>)> {
        let mut tasks = tokio::task::JoinSet::new();
        let parallel = parallel.max(1);
        for worker in 0..parallel {
            let count = self.pods / parallel + usize::from(worker < self.pods % parallel);
            let mut client = client.clone();
            let image = self.image.clone();
            let logs = logs.to_path_buf();
            let host_network = self.host_network;
            let tag = format!("{runtime}-{parallel}-{worker}");
            tasks.spawn(async move {
                let mut cycles = Samples::with_capacity(count);
                let mut steps: Vec<Samples> = STEPS.iter().map(|_| Samples::default()).collect();
                for n in 0..count {
                    let started = Instant::now();
                    cycle(
                        &mut client,
                        &image,
                        &logs,
                        host_network,
                        &format!("{tag}-{n}"),
                        &mut steps,
                    )
                    .await?;
                    cycles.push(started.elapsed());
                }
                anyhow::Ok((cycles, steps))
            });
        }
        let mut cycles = Samples::default();
        let mut steps: Vec<Samples> = STEPS.iter().map(|_| Samples::default()).collect();
        while let Some(done) = tasks.join_next().await {
            let (c, s) = done??;
            cycles.extend(c);
            for (all, one) in steps.iter_mut().zip(s) {
                all.extend(one);
            }
        }
        Ok((cycles, steps))
    }
}

/// One pod's whole life through the CRI.
async fn cycle(
    client: &mut Client,
    image: &str,
    logs: &Path,
    host_network: bool,
    name: &str,
    steps: &mut [Samples],
) -> Result<()> {
    let mut timed = Instant::now();
    let mut lap = |steps: &mut [Samples], i: usize| {
        steps[i].push(timed.elapsed());
        timed = Instant::now();
    };
    let network = if host_network {
        NamespaceMode::Node
    } else {
        NamespaceMode::Pod
    };
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            // A pod cgroup as the kubelet names one; the bench removes the tree at the end.
            cgroup_parent: format!("{}/{name}", bench_cgroup()),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
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
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    lap(steps, 0);
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: pod
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    lap(steps, 1);
    client
        .start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .context("StartContainer")?;
    lap(steps, 2);
    client
        .stop_container(StopContainerRequest {
            container_id: container.clone(),
            timeout: 0,
        })
        .await
        .context("StopContainer")?;
    lap(steps, 3);
    client
        .remove_container(RemoveContainerRequest {
            container_id: container,
        })
        .await
        .context("RemoveContainer")?;
    lap(steps, 4);
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .context("StopPodSandbox")?;
    lap(steps, 5);
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await
        .context("RemovePodSandbox")?;
    lap(steps, 6);
    Ok(())
}

/// `runc run` of /bin/true from a prepared bundle, `n` times.
fn bare_run(oci_runtime: &Path, scratch: &Path, n: usize) -> Result<Samples> {
    let bundle = scratch.join("bare");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("/bin/busybox")?;
    std::os::unix::fs::symlink("busybox", bin.join("true"))?;
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
                    "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bare",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                                 {"type": "mount"}, {"type": "network"}],
                  "cgroupsPath": format!("/skiff-bench-bare-{}", std::process::id())},
    });
    std::fs::write(bundle.join("config.json"), spec.to_string())?;
    let root = scratch.join("bare-state");
    let mut samples = Samples::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let status = Command::new(oci_runtime)
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("bare-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", oci_runtime.display()))?;
        if !status.success() {
            bail!("{} run failed: {status}", oci_runtime.display());
        }
        samples.push(started.elapsed());
    }
    remove_cgroup(&format!("/skiff-bench-bare-{}", std::process::id()));
    Ok(samples)
}

/// The cgroup the bench's pods go under.
fn bench_cgroup() -> String {
    format!("/skiff-bench-{}", std::process::id())
}

/// Removes `cgroup` and what is under it in every hierarchy (from mountinfo).
fn remove_cgroup(cgroup: &str) {
    fn remove_tree(dir: &Path) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.starts_with("cgroup")
            && let Some(mount) = left.split(' ').nth(4)
        {
            remove_tree(&Path::new(mount).join(cgroup.trim_start_matches('/')));
        }
    }
}

/// A runtime the bench started, stopped (and its network removed) when dropped.
pub(super) struct Spawned {
    pub(super) name: String,
    pub(super) socket: PathBuf,
    child: Child,
    bridge: String,
    dir: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let dir = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines().rev() {
            if let Some(point) = line.split(' ').nth(4).filter(|p| p.starts_with(&dir)) {
                let _ = Command::new("umount").args(["-l", point]).output();
            }
        }
    }
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn tar_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes)?;
    Ok(())
}

/// An OCI image layout with one layer (busybox and the applets the bench runs).
fn busybox_image(name: &str, process: serde_json::Value) -> Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    tar_file(
        &mut layer,
        "bin/busybox",
        &std::fs::read("/bin/busybox").context("/bin/busybox (Debian's busybox-static)")?,
        0o755,
    )?;
    for applet in ["sh", "sleep", "true"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(0);
        layer.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
    }
    let layer = layer.into_inner()?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": process,
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(&layer), "size": layer.len()}],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
                       "size": manifest.len(), "annotations": {"io.containerd.image.name": name}}],
    }))?;
    let mut tar = tar::Builder::new(Vec::new());
    tar_file(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    tar_file(&mut tar, "index.json", &index, 0o644)?;
    for blob in [&config, &manifest, &layer] {
        let path = format!("blobs/sha256/{}", sha(blob).trim_start_matches("sha256:"));
        tar_file(&mut tar, &path, blob, 0o644)?;
    }
    Ok(tar.into_inner()?)
}

fn cni_conf(dir: &Path, bridge: &str, subnet: &str) -> Result<PathBuf> {
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let conflist = json!({
        "cniVersion": "1.0.0", "name": format!("{bridge}-net"),
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                              "dataDir": dir.join("ipam")}}],
    });
    std::fs::write(conf_dir.join("10-bench.conflist"), conflist.to_string())?;
    Ok(conf_dir)
}

fn wait_for_socket(socket: &Path, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// skiff's runtime and containerd (if installed), each with a network and the images.
pub(super) fn spawn(scratch: &Path) -> Result<Vec<Spawned>> {
    let pid = std::process::id();
    let image = busybox_image(IMAGE, json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}))?;
    let pause = busybox_image(
        PAUSE,
        json!({"Entrypoint": ["/bin/sleep", "2000000000"], "Env": ["PATH=/bin"]}),
    )?;
    let image_file = scratch.join("image.tar");
    let pause_file = scratch.join("pause.tar");
    std::fs::write(&image_file, image)?;
    std::fs::write(&pause_file, pause)?;
    let exe = std::env::current_exe()?;
    let mut spawned = Vec::new();

    let dir = scratch.join("skiff");
    let bridge = format!("skbs{}", pid % 100_000);
    let conf = cni_conf(&dir, &bridge, "10.234.0.0/16")?;
    let status = Command::new(&exe)
        .args(["images", "import"])
        .arg(&image_file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("importing the bench image into skiff's runtime failed");
    }
    let socket = dir.join("cri.sock");
    let child = Command::new(&exe)
        .args(["runtime", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(&socket)
        .arg("--cni-conf-dir")
        .arg(&conf)
        .stderr(std::fs::File::create(dir.join("runtime.log"))?)
        .spawn()
        .context("starting skiff runtime")?;
    spawned.push(Spawned {
        name: "skiff".into(),
        socket: socket.clone(),
        child,
        bridge,
        dir: dir.clone(),
    });
    wait_for_socket(&socket, "skiff runtime")?;

    if Command::new("containerd").arg("--version").output().is_ok() {
        let dir = scratch.join("containerd");
        let bridge = format!("skbc{}", pid % 100_000);
        let conf = cni_conf(&dir, &bridge, "10.235.0.0/16")?;
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{d}/containerd.sock\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{PAUSE}\"\n  restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n",
            conf.display()
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let socket = dir.join("containerd.sock");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stderr(std::fs::File::create(dir.join("containerd.log"))?)
            .spawn()
            .context("starting containerd")?;
        spawned.push(Spawned {
            name: "containerd".into(),
            socket: socket.clone(),
            child,
            bridge,
            dir: dir.clone(),
        });
        wait_for_socket(&socket, "containerd")?;
        for file in [&image_file, &pause_file] {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(file)
                .output()?;
            if !out.status.success() {
                bail!("ctr import: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    } else {
        println!("containerd is not installed: measuring skiff's runtime alone");
    }
    Ok(spawned)
}
