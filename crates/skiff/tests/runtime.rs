//! The container runtime end to end: the real `skiff runtime` binary driven through its
//! CRI socket by a tonic client (k8s-cri), with images the test builds itself from
//! Debian's busybox-static (an OCI image layout, gzipped layer) and a `docker save`
//! style archive, imported with `skiff images import`.

mod cri;

use std::path::Path;

use cri::*;

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
    let tool_id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();

    // Exported (a docker archive has no manifest: one is written) and imported into
    // another store, it is the same image under the same names.
    let exported = rt.dir.path().join("exported.tar");
    let data = rt.data();
    let out = rt.skiff(
        &["images", "export", "mirror.local/tool:2", "--output"],
        &[&exported, Path::new("--data-dir"), &data],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elsewhere = rt.dir.path().join("elsewhere");
    let out = rt.skiff(
        &["images", "import"],
        &[&exported, Path::new("--data-dir"), &elsewhere],
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains(&tool_id), "{printed}");
    assert!(
        printed.contains("docker.io/example/tool:1") && printed.contains("mirror.local/tool:2"),
        "{printed}"
    );
    let missing = rt.skiff(
        &["images", "export", "no/such:image", "--output"],
        &[&exported, Path::new("--data-dir"), &data],
    );
    assert!(!missing.status.success());

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_registry_on_loopback() {
    let registry = Registry::start();
    let layer = busybox_layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer).expect("gzip");
    let layer_gz = gz.finish().expect("gzip");
    let config = config(&sha(&layer), "pulled");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer_gz), "size": layer_gz.len()}],
    }))
    .expect("manifest");
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    registry
        .push(
            "test/busybox",
            "1",
            &[config.clone(), layer_gz.clone()],
            &manifest,
            manifest_type,
        )
        .await;
    // A multi-platform index whose arm64 image has another config (so another id):
    // the pull must pick linux/amd64.
    let arm_config = config_for(&sha(&layer), "arm64");
    let arm_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&arm_config), "size": arm_config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer_gz), "size": layer_gz.len()}],
    }))
    .expect("manifest");
    registry
        .push(
            "test/multi",
            "arm",
            &[arm_config.clone(), layer_gz.clone()],
            &arm_manifest,
            manifest_type,
        )
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": manifest_type, "digest": sha(&arm_manifest), "size": arm_manifest.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": manifest_type, "digest": sha(&manifest), "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .expect("index");
    registry
        .push(
            "test/multi",
            "2",
            &[config.clone(), layer_gz.clone()],
            &manifest,
            manifest_type,
        )
        .await;
    registry
        .push(
            "test/multi",
            "2",
            &[],
            &index,
            "application/vnd.oci.image.index.v1+json",
        )
        .await;

    let rt = Runtime::start();
    let channel = channel(&rt.socket()).await;
    let mut images = ImageServiceClient::new(channel);
    let puller = images.clone();
    let pull = |name: String| {
        let mut images = puller.clone();
        async move {
            images
                .pull_image(PullImageRequest {
                    image: spec(&name),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().image_ref)
        }
    };
    let address = &registry.address;
    let id = pull(format!("{address}/test/busybox:1"))
        .await
        .expect("PullImage");
    assert_eq!(id, sha(&config));
    let status = images
        .image_status(ImageStatusRequest {
            image: spec(&format!("{address}/test/busybox:1")),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
        .expect("the pulled image");
    assert_eq!(status.repo_tags, [format!("{address}/test/busybox:1")]);
    assert_eq!(
        status.repo_digests,
        [format!("{address}/test/busybox@{}", sha(&manifest))]
    );
    // A pulled image can be pulled again: the kubelet's image GC may collect it.
    assert!(!status.pinned, "{status:?}");
    // The index resolves to linux/amd64 (the same image); its digest is the repo digest.
    let multi = pull(format!("{address}/test/multi:2"))
        .await
        .expect("PullImage index");
    assert_eq!(multi, id);
    let by_digest = pull(format!("{address}/test/busybox@{}", sha(&manifest)))
        .await
        .expect("PullImage by digest");
    assert_eq!(by_digest, id);
    // What the registry does not have is a clear error, and nothing is left staged.
    let missing = pull(format!("{address}/test/busybox:absent"))
        .await
        .expect_err("no such tag");
    assert!(
        missing.message().contains("test/busybox:absent"),
        "{missing:?}"
    );
    let staged: Vec<_> = std::fs::read_dir(rt.data().join("images"))
        .expect("images dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".pull-"))
        .collect();
    assert!(staged.is_empty());
    let listed = images
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1, "only the amd64 image: {listed:?}");
}

/// Fills `path`'s filesystem: writes until there is no space left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5au8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

/// A layer of `size` bytes nothing compresses (xorshift noise).
fn noise_layer(size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    add(&mut tar, "noise", &noise);
    tar.into_inner().expect("layer")
}

/// A full disk: what cannot be written is refused with a clear error and nothing is
/// left half-made: no blob of the refused image, no container (record, directory,
/// mount or OCI runtime state); once there is room again the same requests work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_and_leaves_nothing_behind() {
    let rt = Runtime::start_on_tmpfs(24);
    let channel = channel(&rt.socket()).await;
    let mut client = RuntimeServiceClient::new(channel);
    let process = json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]});
    let busybox = oci_image("example.com/busybox:1", &[busybox_layer()], process.clone());
    let out = rt.import(&rt.file("busybox.tar", &busybox), &[]);
    assert!(out.status.success(), "{out:?}");
    let logs = rt.dir.path().join("logs");
    let cgroup = format!("skiff-test-full-{}", std::process::id());
    // On the node's network: no CNI needed.
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "full".into(),
            uid: "uid-full".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{cgroup}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
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
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;

    let filler = rt.data().join("filler");
    fill(&filler);
    let blobs = rt.blobs();
    let other = oci_image("example.com/noise:1", &[noise_layer(4 << 20)], process);
    let out = rt.import(&rt.file("noise.tar", &other), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !out.status.success() && stderr.contains("no space left on device"),
        "{out:?}"
    );
    assert_eq!(rt.blobs(), blobs, "nothing of the refused image is kept");

    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "hello".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "example.com/busybox:1".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), "echo hello".into()],
        log_path: "hello.log".into(),
        ..Default::default()
    };
    let create = CreateContainerRequest {
        pod_sandbox_id: sandbox.clone(),
        config: Some(config.clone()),
        sandbox_config: Some(pod.clone()),
    };
    let refused = client
        .create_container(create.clone())
        .await
        .expect_err("no room to unpack the image");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .to_lowercase()
            .contains("no space left on device"),
        "{refused:?}"
    );
    let listed = client
        .list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    let dirs: Vec<_> = std::fs::read_dir(rt.data().join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
    let data = rt.data().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&format!("{data}/containers")),
        "a root filesystem is still mounted"
    );

    // Room again: the same container runs, under the same name.
    std::fs::remove_file(&filler).expect("remove filler");
    let id = client
        .create_container(create)
        .await
        .expect("CreateContainer with room")
        .into_inner()
        .container_id;
    client
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    assert_eq!(wait_exited(&mut client, &id).await.exit_code, 0);
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .expect("StopPodSandbox");
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await
        .expect("RemovePodSandbox");
    // The pod cgroup is the kubelet's to remove; nothing of the runtime's is left in it.
    for dir in cgroup_dirs(&cgroup).iter().filter(|d| d.exists()) {
        std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
}
