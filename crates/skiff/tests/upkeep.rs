//! What the kubelet keeps for pods and what it cleans up after them, end to end with
//! the real kubelet, runtime and kubectl: the managed `/etc/hosts` (the pod's names and
//! its hostAliases), fsGroup ownership of volumes, restart counts that survive a lost
//! sandbox, and garbage collection of unused images and of gone pods' logs.

mod common;
mod cri;
mod node;

use std::time::Duration;

use common::wait_for;
use cri::*;
use node::*;

const NAMED: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: token}
stringData: {key: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: named}
spec:
  terminationGracePeriodSeconds: 1
  hostname: box
  subdomain: crew
  hostAliases:
  - {ip: 10.1.2.3, hostnames: [foo.local, bar]}
  securityContext: {runAsUser: 1000, fsGroup: 2000}
  containers:
  - name: main
    image: example.com/busybox:1
    command: [sh, -c, "touch /data/made; exec sleep 3600"]
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: token, mountPath: /etc/token}
    - {name: api, mountPath: /var/run/secrets/kubernetes.io/serviceaccount}
  volumes:
  - {name: data, emptyDir: {}}
  - {name: token, secret: {secretName: token, defaultMode: 0440}}
  - name: api
    projected:
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3600}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
"#;

/// The pod's `/etc/hosts` has its own names and hostAliases as upstream writes them;
/// with `fsGroup`, a non-root container reads its group-only secret and what it writes
/// in an emptyDir belongs to the group; a projected service account token is there; a
/// sandbox that is lost and recreated keeps the
/// restart count going; a changed image restarts the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_names_their_group_and_keep_restart_counts() {
    let n = TestNode::start(1).await;
    let c = &n.c;
    let _kubelet = n.kubelet();
    n.wait_ready();
    let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(NAMED));
    assert!(applied.status.success(), "{applied:?}");
    wait_for("the pod to run", || phase(c, "named") == "Running");
    let sh = |script: &str| {
        let out = c.kubectl(&["exec", "named", "--", "sh", "-c", script]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let pod_ip = text(
        c,
        &["get", "pod", "named", "-o", "jsonpath={.status.podIP}"],
    );
    let hosts = sh("cat /etc/hosts").1;
    assert!(
        hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"),
        "{hosts}"
    );
    assert!(
        hosts.contains(&format!(
            "\n{pod_ip}\tbox.crew.default.svc.cluster.local\tbox\n"
        )),
        "{hosts}"
    );
    assert!(
        hosts.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar"),
        "{hosts}"
    );
    assert_eq!(sh("hostname"), (Some(0), "box".into()));
    // fsGroup: a supplementary group of the container, the owner of its volumes.
    let (_, groups) = sh("id -G");
    assert!(groups.split(' ').any(|g| g == "2000"), "{groups}");
    assert_eq!(sh("id -u"), (Some(0), "1000".into()));
    assert_eq!(sh("cat /etc/token/key"), (Some(0), "s3cret".into()));
    assert_eq!(
        sh("stat -L -c '%g %a' /etc/token/key"),
        (Some(0), "2000 440".into())
    );
    assert_eq!(sh("stat -c %g /data/made"), (Some(0), "2000".into()));
    // A projected service account token from the TokenRequest API, bound to the pod.
    let (_, token) = sh("cat /var/run/secrets/kubernetes.io/serviceaccount/token");
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = token.split('.').nth(1).expect("a JWT");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON claims")
    };
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "named");
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        3600
    );
    assert_eq!(
        sh("cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"),
        (Some(0), "default".into())
    );
    assert_eq!(sh("stat -c %g /data"), (Some(0), "2000".into()));
    // The sandbox goes away under the pod: a new one, and the count goes on.
    let uid = text(
        c,
        &["get", "pod", "named", "-o", "jsonpath={.metadata.uid}"],
    );
    let mut runtime = RuntimeServiceClient::new(channel(&n.rt.socket()).await);
    let sandboxes = runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    let old = sandboxes
        .iter()
        .find(|s| s.metadata.as_ref().is_some_and(|m| m.uid == uid))
        .expect("the pod's sandbox")
        .id
        .clone();
    runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: old.clone(),
        })
        .await
        .expect("StopPodSandbox");
    let status = || c.json(&["get", "pod", "named"])["status"]["containerStatuses"][0].clone();
    wait_for("the container to run again in a new sandbox", || {
        let status = status();
        status["restartCount"] == 1 && status["state"]["running"].is_object()
    });
    wait_for("the pod's hosts file in the new sandbox", || {
        sh("cat /etc/hosts").1.contains("10.1.2.3\tfoo.local\tbar")
    });
    // A new image (the same one by its id) restarts the container with it.
    let image_id = status()["imageID"].as_str().unwrap_or_default().to_string();
    let id = image_id.rsplit('@').next().unwrap_or_default().to_string();
    assert!(id.starts_with("sha256:"), "{image_id}");
    c.ok(&["set", "image", "pod/named", &format!("main={id}")]);
    wait_for("the container to restart with the new image", || {
        let status = status();
        status["restartCount"] == 2
            && status["state"]["running"].is_object()
            && status["image"] == id.as_str()
    });
    c.ok(&["delete", "pod", "named", "--timeout=60s"]);
    wait_for("the pod's logs to go", || {
        !n.logs.join(format!("default_named_{uid}")).exists()
    });
}

/// A pushed image, its layer gzipped; `variant` makes its id its own.
async fn push(registry: &Registry, name: &str, variant: &str) -> String {
    let layer = busybox_layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer).expect("gzip");
    let layer_gz = gz.finish().expect("gzip");
    let config = config(&sha(&layer), variant);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer_gz), "size": layer_gz.len()}],
    }))
    .expect("manifest");
    registry
        .push(
            name,
            "1",
            &[config.clone(), layer_gz],
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await;
    sha(&config)
}

const PULLED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: "IMAGE", command: [sleep, "3600"]}
"#;

/// Image garbage collection with thresholds every disk meets: the image of a deleted
/// pod goes, the image a running pod uses and the imported (pinned) image stay; the
/// deleted pod's log directory goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_images_and_gone_pods_logs_are_collected() {
    let registry = Registry::start();
    let kept = push(&registry, "test/kept", "kept").await;
    let gone = push(&registry, "test/gone", "gone").await;
    let n = TestNode::start(2).await;
    let c = &n.c;
    let kubelet = n.kubelet_with(&[
        "--image-gc-high-threshold",
        "0",
        "--image-gc-low-threshold",
        "0",
        "--minimum-image-ttl-duration",
        "0s",
        "--image-gc-period",
        "1s",
    ]);
    n.wait_ready();
    for (name, repository) in [("kept", "test/kept"), ("gone", "test/gone")] {
        let manifest = PULLED
            .replace("NAME", name)
            .replace("IMAGE", &format!("{}/{repository}:1", registry.address));
        let applied = c.kubectl_with(&["apply", "-f", "-"], &[], Some(&manifest));
        assert!(applied.status.success(), "{applied:?}");
    }
    wait_for("both pods to run", || {
        phase(c, "kept") == "Running" && phase(c, "gone") == "Running"
    });
    let images = ImageServiceClient::new(channel(&n.rt.socket()).await);
    let ids = || {
        let mut images = images.clone();
        async move {
            images
                .list_images(ListImagesRequest::default())
                .await
                .expect("ListImages")
                .into_inner()
                .images
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        }
    };
    let before = ids().await;
    assert!(
        before.contains(&kept) && before.contains(&gone),
        "{before:?}"
    );
    let uid = text(c, &["get", "pod", "gone", "-o", "jsonpath={.metadata.uid}"]);
    let logs = n.logs.join(format!("default_gone_{uid}"));
    assert!(logs.exists(), "{}", logs.display());
    c.ok(&["delete", "pod", "gone", "--timeout=60s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = ids().await;
        if !now.contains(&gone) {
            assert!(now.contains(&kept), "the image in use stays: {now:?}");
            assert_eq!(now.len(), 2, "the imported busybox stays: {now:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unused image was never collected: {now:?}\n{}",
            kubelet.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!logs.exists(), "the deleted pod's logs go");
    assert_eq!(phase(c, "kept"), "Running");
    c.ok(&["delete", "pod", "kept", "--timeout=60s"]);
}
