//! The container runtime end to end: the real `skiff runtime` binary driven through its
//! CRI socket by a tonic client (k8s-cri), with images the test builds itself from
//! Debian's busybox-static (an OCI image layout, gzipped layer) and a `docker save`
//! style archive, imported with `skiff images import`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn sha(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// One layer: /bin/busybox and /bin/sh -> busybox, as an uncompressed tar.
fn busybox_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let busybox = std::fs::read("/bin/busybox").expect("Debian's busybox-static");
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "bin/busybox", busybox.as_slice())
        .expect("busybox");
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    tar.append_link(&mut link, "bin/sh", "busybox").expect("sh");
    tar.into_inner().expect("layer")
}

/// An image config over one layer; `variant` makes configs (and so image ids) differ.
fn config(diff_id: &str, variant: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "User": "1000", "Env": ["PATH=/bin"],
                   "Labels": {"variant": variant}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .expect("config")
}

fn add(tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes).expect("entry");
}

/// An OCI image layout named `name`; `tamper` flips a byte of the layer after hashing.
fn oci_layout(name: &str, tamper: bool, variant: &str) -> Vec<u8> {
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
fn docker_archive(tag: &str) -> Vec<u8> {
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

struct Runtime {
    child: Child,
    dir: tempfile::TempDir,
}

impl Runtime {
    fn start() -> Runtime {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(SKIFF)
            .args(["runtime", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(dir.path().join("cri.sock"))
            .stderr(Stdio::null())
            .spawn()
            .expect("skiff runtime");
        let runtime = Runtime { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !runtime.socket().exists() {
            assert!(Instant::now() < deadline, "the CRI socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        runtime
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    fn skiff(&self, args: &[&str], extra: &[&Path]) -> std::process::Output {
        Command::new(SKIFF)
            .args(args)
            .args(extra)
            .output()
            .expect("skiff")
    }

    fn import(&self, file: &Path, extra: &[&str]) -> std::process::Output {
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

    fn blobs(&self) -> usize {
        std::fs::read_dir(self.data().join("images/blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn channel(socket: &Path) -> tonic::transport::Channel {
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

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_imported_verified_listed_and_removed_through_the_cri() {
    let rt = Runtime::start();
    let channel = channel(&rt.socket()).await;
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let version = runtime
        .version(VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(
        (
            version.runtime_name.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("skiff", "v1")
    );
    let status = runtime
        .status(StatusRequest::default())
        .await
        .expect("Status")
        .into_inner();
    let conditions = status.status.expect("status").conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    );

    // Two OCI images sharing their (gzipped) layer, and a docker archive.
    for (file, name, variant) in [
        ("oci.tar", "docker.io/library/busybox:test", "a"),
        ("other.tar", "docker.io/library/busybox:other", "b"),
    ] {
        let oci = rt.file(file, &oci_layout(name, false, variant));
        let out = rt.import(&oci, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(name));
    }
    let archive = rt.file("docker.tar", &docker_archive("example/tool:1"));
    let out = rt.import(&archive, &["--tag", "mirror.local/tool:2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let listed = images
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    let tags: Vec<&str> = listed
        .iter()
        .flat_map(|i| i.repo_tags.iter().map(String::as_str))
        .collect();
    for tag in [
        "docker.io/library/busybox:test",
        "docker.io/example/tool:1",
        "mirror.local/tool:2",
    ] {
        assert!(tags.contains(&tag), "{tags:?}");
    }
    // Short names resolve as Docker's do; the config's user is reported.
    let status = images
        .image_status(ImageStatusRequest {
            image: spec("busybox:test"),
            verbose: true,
        })
        .await
        .expect("ImageStatus")
        .into_inner();
    let image = status.image.expect("busybox:test found");
    assert_eq!(image.uid.map(|u| u.value), Some(1000));
    assert!(image.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    assert!(
        status.info["info"].contains("diff_ids"),
        "{:?}",
        status.info
    );
    // An image that is not there is an empty answer, not an error.
    let missing = images
        .image_status(ImageStatusRequest {
            image: spec("nothing:here"),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner();
    assert!(missing.image.is_none());

    // `skiff images ls` goes through the socket.
    let socket = rt.socket();
    let out = rt.skiff(&["images", "ls", "--endpoint"], &[&socket]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("IMAGE"), "{table}");
    assert!(table.contains("mirror.local/tool:2"), "{table}");

    // A tampered layer is refused, and nothing refers to it.
    let before = rt.blobs();
    let bad = rt.file("bad.tar", &oci_layout("docker.io/library/bad:1", true, "c"));
    let out = rt.import(&bad, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(
        images
            .image_status(ImageStatusRequest {
                image: spec("bad:1"),
                verbose: false
            })
            .await
            .expect("ImageStatus")
            .into_inner()
            .image
            .is_none()
    );
    assert_eq!(rt.blobs(), before, "a refused import left blobs behind");

    // Removal frees the blobs only that image used; removing again succeeds.
    let usage = images
        .image_fs_info(ImageFsInfoRequest::default())
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let used = usage.image_filesystems[0]
        .used_bytes
        .as_ref()
        .expect("used")
        .value;
    assert!(used > 1_000_000, "{used}");
    let blobs = rt.blobs();
    for _ in 0..2 {
        images
            .remove_image(RemoveImageRequest {
                image: spec("busybox:test"),
            })
            .await
            .expect("RemoveImage");
    }
    // Its config and manifest go; the layer stays for busybox:other.
    assert_eq!(rt.blobs(), blobs - 2);
    let other = images
        .image_status(ImageStatusRequest {
            image: spec("docker.io/busybox:other"),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner();
    assert!(other.image.is_some_and(|i| i.pinned));
    let left = images
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    assert!(left.iter().all(|i| {
        !i.repo_tags
            .contains(&"docker.io/library/busybox:test".to_string())
    }));

    // What needs sandboxes says so.
    let err = runtime
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .expect_err("not yet");
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // A second runtime does not take a live runtime's socket.
    let socket = rt.socket();
    let second = rt.skiff(
        &["runtime", "--data-dir"],
        &[&rt.data(), Path::new("--listen"), &socket],
    );
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another runtime is serving on"), "{err}");
    assert!(socket.exists());
}
