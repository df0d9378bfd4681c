//! CRI test harness: the real `skiff runtime` binary on a temporary data directory and
//! socket, a tonic CRI client, and OCI images built from Debian's busybox-static.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod pods;
pub mod streams;

#[allow(unused_imports)] // not every test binary uses them
pub use pods::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // not every test binary uses both clients
pub use k8s_cri::v1::image_service_client::ImageServiceClient;
pub use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1::*;
pub use serde_json::json;
use sha2::{Digest, Sha256};

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

pub fn sha(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The busybox applets the images link (tests run them by name).
pub const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "ls", "id", "hostname", "head", "dd", "ip", "true", "false",
    "kill", "ps", "wc", "grep", "env", "stat", "seq", "touch", "mkdir", "date", "httpd", "wget",
    "stty", "tty", "test", "tar", "tr", "nslookup", "rm", "timeout",
];

/// One layer: /bin/busybox, its applets as symlinks, and /etc/passwd and /etc/group
/// with root and `app` (1000:1000), as an uncompressed tar.
pub fn busybox_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let busybox = std::fs::read("/bin/busybox").expect("Debian's busybox-static");
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "bin/busybox", busybox.as_slice())
        .expect("busybox");
    for applet in APPLETS {
        let mut link = tar::Header::new_gnu();
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(1_700_000_000);
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        tar.append_link(&mut link, format!("bin/{applet}"), "busybox")
            .expect("applet");
    }
    add(
        &mut tar,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    );
    add(
        &mut tar,
        "etc/group",
        b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    );
    tar.into_inner().expect("layer")
}

/// Imports `example.com/busybox:1` into the store of a runtime with data directory
/// `data` (before it starts, as `skiff images import` does on a node without a
/// registry); the tarball goes in `dir`.
pub fn import_busybox(dir: &Path, data: &Path) {
    let image = oci_image(
        "example.com/busybox:1",
        &[busybox_layer()],
        json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
    );
    let tarball = dir.join("busybox.tar");
    std::fs::write(&tarball, image).expect("tarball");
    let imported = Command::new(SKIFF)
        .args(["images", "import"])
        .arg(&tarball)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("skiff images import");
    assert!(imported.status.success(), "{imported:?}");
}

/// An image config for `architecture` over one layer.
pub fn config_for(diff_id: &str, architecture: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": architecture, "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .expect("config")
}

/// An image config over one layer; `variant` makes configs (and so image ids) differ.
pub fn config(diff_id: &str, variant: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "User": "1000", "Env": ["PATH=/bin"],
                   "Labels": {"variant": variant}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .expect("config")
}

pub fn add(tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes).expect("entry");
}

/// An OCI image layout named `name`; `tamper` flips a byte of the layer after hashing.
pub fn oci_layout(name: &str, tamper: bool, variant: &str) -> Vec<u8> {
    let layer = busybox_layer();
    let diff_id = sha(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer).expect("gzip");
    let mut layer_gz = gz.finish().expect("gzip");
    let layer_digest = sha(&layer_gz);
    if tamper {
        let last = layer_gz.len() - 1;
        layer_gz[last] ^= 0xff;
    }
    let config = config(&diff_id, variant);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_gz.len()}],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
                       "size": manifest.len(), "annotations": {"io.containerd.image.name": name}}],
    }))
    .expect("index");
    let mut tar = tar::Builder::new(Vec::new());
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&mut tar, "index.json", &index);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    add(&mut tar, &blob(&sha(&config)), &config);
    add(&mut tar, &blob(&sha(&manifest)), &manifest);
    add(&mut tar, &blob(&layer_digest), &layer_gz);
    tar.into_inner().expect("layout")
}

/// A `docker save` archive of the same filesystem, tagged `tag`.
pub fn docker_archive(tag: &str) -> Vec<u8> {
    let layer = busybox_layer();
    let diff_id = sha(&layer);
    let config = config(&diff_id, "docker");
    let config_name = format!("{}.json", sha(&config).trim_start_matches("sha256:"));
    let manifest = serde_json::to_vec(&json!([
        {"Config": config_name, "RepoTags": [tag], "Layers": ["layer1/layer.tar"]}
    ]))
    .expect("manifest");
    let mut tar = tar::Builder::new(Vec::new());
    add(&mut tar, "manifest.json", &manifest);
    add(&mut tar, &config_name, &config);
    add(&mut tar, "layer1/layer.tar", &layer);
    tar.into_inner().expect("archive")
}

pub struct Runtime {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Runtime {
    pub fn start() -> Runtime {
        Runtime::start_with(&[])
    }

    /// With more `skiff runtime` flags.
    pub fn start_with(extra: &[&str]) -> Runtime {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut runtime = Runtime {
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        runtime.launch();
        runtime
    }

    /// On a data directory that is a tmpfs of `megabytes` (a disk that can fill up);
    /// unmounted when dropped, like every mount under the directory.
    pub fn start_on_tmpfs(megabytes: u32) -> Runtime {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&data)
            .status()
            .expect("mount");
        assert!(mounted.success(), "mounting a tmpfs");
        let mut runtime = Runtime {
            child: None,
            dir,
            extra: Vec::new(),
        };
        runtime.launch();
        runtime
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("runtime.log"))
            .expect("log");
        let child = Command::new(SKIFF)
            .args(["runtime", "--data-dir"])
            .arg(self.data())
            .arg("--listen")
            .arg(self.socket())
            .args(&self.extra)
            .stderr(log)
            .spawn()
            .expect("skiff runtime");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the CRI socket never appeared: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the runtime process (SIGKILL: no chance to tidy up) and starts it again
    /// on the same data directory.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runtime.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    pub fn skiff(&self, args: &[&str], extra: &[&Path]) -> std::process::Output {
        Command::new(SKIFF)
            .args(args)
            .args(extra)
            .output()
            .expect("skiff")
    }

    pub fn import(&self, file: &Path, extra: &[&str]) -> std::process::Output {
        let data = self.data();
        let mut args = vec!["images", "import"];
        args.extend(extra);
        Command::new(SKIFF)
            .args(&args)
            .arg(file)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("skiff images import")
    }

    pub fn blobs(&self) -> usize {
        std::fs::read_dir(self.data().join("images/blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Runtime {
    /// Stops the runtime, and whatever a failed test left running or mounted: the
    /// containers (through runc, which kills their processes; their monitors follow)
    /// and the mounts under the data directory (sandbox namespaces, /dev/shm, roots).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        sweep(self.dir.path(), &self.data());
    }
}

/// Sweeps a runtime's leftovers (see [`sweep`]) when dropped: for a runtime that runs
/// inside `skiff server`. `also` are directories to unmount everything under and
/// remove (a kubelet's volumes in the server's data directory).
pub struct Leftovers {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub also: Vec<PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        sweep(&self.dir, &self.data);
        for dir in &self.also {
            sweep(dir, &dir.join("none"));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes what a runtime with data directory `data` under `dir` left: its
/// containers (through runc, which kills their processes; their monitors follow), pause
/// processes, and mounts under `dir` (sandbox namespaces, /dev/shm, roots).
pub fn sweep(dir: &Path, data: &Path) {
    let root = data.join("oci");
    let listed = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output();
    if let Ok(listed) = listed {
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .output();
        }
    }
    let dir = dir.display().to_string();
    // Pause processes (named after their sandbox directory) a failed test left.
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("runtime-pause") && cmdline.contains(&dir) {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(entry.file_name())
                .output();
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines().rev() {
        if let Some(point) = line.split(' ').nth(4).filter(|p| p.starts_with(&dir)) {
            let _ = Command::new("umount").args(["-l", point]).output();
        }
    }
}

pub async fn channel(socket: &Path) -> tonic::transport::Channel {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect")
}

pub fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// An OCI image layout of `layers` (uncompressed tars, lowest first; each stored
/// gzipped) with `process` as the config's `config` object.
pub fn oci_image(name: &str, layers: &[Vec<u8>], process: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": process,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let gzipped: Vec<Vec<u8>> = layers
        .iter()
        .map(|layer| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, layer).expect("gzip");
            gz.finish().expect("gzip")
        })
        .collect();
    let descriptors: Vec<serde_json::Value> = gzipped
        .iter()
        .map(|l| {
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha(l), "size": l.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": descriptors,
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
                       "size": manifest.len(), "annotations": {"io.containerd.image.name": name}}],
    }))
    .expect("index");
    let mut tar = tar::Builder::new(Vec::new());
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&mut tar, "index.json", &index);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    add(&mut tar, &blob(&sha(&config)), &config);
    add(&mut tar, &blob(&sha(&manifest)), &manifest);
    for layer in &gzipped {
        add(&mut tar, &blob(&sha(layer)), layer);
    }
    tar.into_inner().expect("layout")
}

/// Debian's containerd 1.6 with its CRI plugin, in a temporary root, for checking the
/// tests' expectations against a real peer. `None` when containerd is not installed.
pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The network namespaces (containerd's fixed /var/run/netns) there were before.
    netns_before: Vec<String>,
}

/// The names in /var/run/netns.
fn netns_names() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

impl Containerd {
    pub fn start(cni_conf_dir: &Path, pause_image: &str) -> Option<Containerd> {
        if Command::new("containerd")
            .arg("--version")
            .output()
            .is_err()
        {
            return None;
        }
        let netns_before = netns_names();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
            cni = cni_conf_dir.display()
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stderr(log)
            .spawn()
            .expect("containerd");
        let containerd = Containerd {
            child,
            dir,
            netns_before,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(containerd.socket()).is_err() {
            assert!(Instant::now() < deadline, "containerd never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(containerd)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr images import` into the CRI plugin's namespace.
    pub fn import(&self, tarball: &Path) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tarball)
            .output()
            .expect("ctr")
    }
}

impl Drop for Containerd {
    /// Stops containerd; its shims and containers (left only by a failed test) and its
    /// mounts under the temporary root go too.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dir.path().display().to_string();
        // The runc shim keeps its containers under a fixed root; ours have bundles here.
        let root = "/run/containerd/runc/k8s.io";
        let listed = Command::new("runc")
            .args(["--root", root, "list", "-q"])
            .output();
        for id in listed
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
            .lines()
        {
            let state = Command::new("runc")
                .args(["--root", root, "state", id])
                .output();
            if state.is_ok_and(|s| String::from_utf8_lossy(&s.stdout).contains(&dir)) {
                let _ = Command::new("runc")
                    .args(["--root", root, "delete", "--force", id])
                    .output();
            }
        }
        // Sandboxes a failed test left keep their network namespaces (and veths).
        for name in netns_names() {
            if name.starts_with("cni-") && !self.netns_before.contains(&name) {
                let _ = Command::new("ip").args(["netns", "delete", &name]).output();
            }
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&dir) {
                let _ = Command::new("kill")
                    .arg("-9")
                    .arg(entry.file_name())
                    .output();
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines().rev() {
            if let Some(point) = line.split(' ').nth(4).filter(|p| p.starts_with(&dir)) {
                let _ = Command::new("umount").args(["-l", point]).output();
            }
        }
    }
}

pub fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// cgroup v1 mount points by controller, from mountinfo (never hard-coded).
pub fn cgroup_mounts() -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            let (kind, _, options) = (right.next()?, right.next()?, right.next()?);
            let mount = left.split(' ').nth(4)?;
            match kind {
                "cgroup" => Some((options.to_string(), PathBuf::from(mount))),
                "cgroup2" => Some(("unified".to_string(), PathBuf::from(mount))),
                _ => None,
            }
        })
        .collect()
}

pub fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .map(|(_, m)| m.join(cgroup.trim_start_matches('/')))
        .collect()
}

pub fn cgroup_dir(controller: &str, cgroup: &str) -> PathBuf {
    let (_, mount) = cgroup_mounts()
        .into_iter()
        .find(|(options, _)| options.split(',').any(|o| o == controller))
        .expect("controller mounted");
    mount.join(cgroup.trim_start_matches('/'))
}

/// Debian's docker-registry (distribution 2.8) on a free 127.0.0.1 port, storing in a
/// temporary directory; images are pushed to it with oci-client.
pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    pub address: String,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::fs::File::create(dir.path().join("access.log")).expect("log"))
            .stderr(std::fs::File::create(dir.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("docker-registry (Debian's docker-registry package) is installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "the registry never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            child,
            dir,
            address,
        }
    }

    fn client() -> oci_client::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        })
    }

    /// Pushes `blobs` to `repository`, then `manifest` (of `media_type`) as `tag`.
    pub async fn push(
        &self,
        repository: &str,
        tag: &str,
        blobs: &[Vec<u8>],
        manifest: &[u8],
        media_type: &str,
    ) {
        let client = Registry::client();
        let reference: oci_client::Reference = format!("{}/{repository}:{tag}", self.address)
            .parse()
            .expect("reference");
        let auth = oci_client::secrets::RegistryAuth::Anonymous;
        client
            .store_auth_if_needed(reference.resolve_registry(), &auth)
            .await;
        for blob in blobs {
            client
                .push_blob(&reference, blob.clone(), &sha(blob))
                .await
                .expect("push blob");
        }
        let content_type = http::HeaderValue::from_str(media_type).expect("media type");
        client
            .push_manifest_raw(&reference, manifest.to_vec(), content_type)
            .await
            .expect("push manifest");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CRI runtime client.
pub type Client = RuntimeServiceClient<tonic::transport::Channel>;

/// Creates and starts a container; its id.
pub async fn run(
    client: &mut Client,
    sandbox: &str,
    config: &PodSandboxConfig,
    container: ContainerConfig,
) -> String {
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(container),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

pub async fn status(client: &mut Client, id: &str) -> ContainerStatus {
    client
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status")
}

pub async fn wait_exited(client: &mut Client, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = status(client, id).await;
        if status.state == ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(Instant::now() < deadline, "container {id} never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ExecSync of `cmd` in `id`.
pub async fn exec(
    client: &mut Client,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    client
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

/// A bridge and its CNI configuration, removed at the end.
pub struct Network {
    pub bridge: String,
    dir: tempfile::TempDir,
}

impl Network {
    pub fn new(bridge: &str, subnet: &str) -> Network {
        Network::with_plugins(bridge, subnet, &[])
    }

    /// The bridge network with `more` plugins chained after it (portmap for hostPort).
    pub fn with_plugins(bridge: &str, subnet: &str, more: &[serde_json::Value]) -> Network {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut plugins = vec![
            json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                         "hairpinMode": true,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                                  "routes": [{"dst": "0.0.0.0/0"}],
                                  "dataDir": dir.path().join("ipam")}}),
        ];
        plugins.extend(more.iter().cloned());
        let conflist = json!({
            "cniVersion": "1.0.0", "name": format!("{bridge}-net"),
            "plugins": plugins,
        });
        std::fs::create_dir_all(dir.path().join("net.d")).expect("net.d");
        std::fs::write(
            dir.path().join("net.d/10-net.conflist"),
            conflist.to_string(),
        )
        .expect("conflist");
        Network {
            bridge: bridge.into(),
            dir,
        }
    }

    pub fn conf_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("net.d")
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
