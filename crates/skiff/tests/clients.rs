//! End-to-end with client libraries: the official Python `kubernetes` client and
//! kube-rs, against the real `skiff server` on both backends.

mod common;

use common::Cluster;

async fn python_client(c: &mut Cluster) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&c.kubeconfig)
        .output()
        .expect("run python3 (is the kubernetes package installed? scripts/install-deps)");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
}

/// kube-rs, the client our own components use: an `Api<ConfigMap>` round trip with a
/// conflict, and a `watcher` that lists, then follows changes.
async fn kube_rs_client(c: &mut Cluster) {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
    use kube::runtime::watcher;
    use kube::{Api, Client, Config};

    let kubeconfig = kube::config::Kubeconfig::read_from(&c.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    let client = Client::try_from(config).expect("client");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    // The initial list completes (nothing there yet), then changes follow.
    loop {
        match stream.try_next().await.expect("watch").expect("event") {
            watcher::Event::InitDone => break,
            _ => continue,
        }
    }

    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-rs"},
        "data": {"k": "v"},
    }))
    .expect("configmap");
    let created = api
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let mut stale = created.clone();
    let patched = api
        .patch(
            "kube-rs",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "v2"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        patched
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("v2")
    );
    stale.data = Some([("k".to_string(), "lost".to_string())].into());
    match api.replace("kube-rs", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // kube-rs's event Recorder writes events.k8s.io/v1; the same event reads as core/v1.
    let recorder = kube::runtime::events::Recorder::new(client.clone(), "skiff-test".into());
    let reference = kube::Resource::object_ref(&created, &());
    recorder
        .publish(
            &kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Normal,
                reason: "Tested".into(),
                note: Some("recorded through events.k8s.io/v1".into()),
                action: "Testing".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .expect("publish event");
    let core_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let listed = core_events
        .list(&ListParams::default())
        .await
        .expect("list events");
    let event = listed
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("Tested"))
        .expect("the event, as core/v1");
    assert_eq!(
        event.message.as_deref(),
        Some("recorded through events.k8s.io/v1")
    );
    assert_eq!(event.involved_object.name.as_deref(), Some("kube-rs"));
    api.delete("kube-rs", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(20), stream.try_next())
            .await
            .expect("watch event in time")
            .expect("watch")
            .expect("event");
        // (Only kube-rs: the controller manager publishes kube-root-ca.crt here too.)
        let ours = |cm: &ConfigMap| cm.metadata.name.as_deref() == Some("kube-rs");
        match event {
            watcher::Event::Apply(cm) if ours(&cm) => {
                seen.push(format!("apply {}", cm.data.unwrap_or_default()["k"]))
            }
            watcher::Event::Delete(cm) if ours(&cm) => {
                seen.push(format!("delete {}", cm.metadata.name.unwrap_or_default()))
            }
            _ => {}
        }
    }
    assert_eq!(seen, vec!["apply v", "apply v2", "delete kube-rs"]);

    // A streaming list (sendInitialEvents): the namespaces arrive as InitApply events,
    // then InitDone on the server's initial-events-end bookmark.
    let mut streaming = watcher(
        namespaces.clone(),
        watcher::Config::default().streaming_lists(),
    )
    .boxed();
    let mut initial = Vec::new();
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(20), streaming.try_next())
            .await
            .expect("streaming list in time")
            .expect("watch")
            .expect("event");
        match event {
            watcher::Event::InitApply(ns) => initial.push(ns.metadata.name.unwrap_or_default()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert!(initial.contains(&"kube-system".to_string()), "{initial:?}");
}

/// curl with the admin certificate: HTTP/2 by ALPN, a YAML body, and the Statuses bad
/// bodies get.
async fn curl_http2_yaml_and_unsupported_bodies(c: &mut Cluster) {
    let pki = c.data_dir().join("pki");
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("admin.crt"))
            .arg("--key")
            .arg(pki.join("admin.key"))
            .args(args)
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "curl {:?}: {}",
            &args[..args.len().min(6)],
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = c.server.clone();
    assert_eq!(
        curl(&[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &format!("{base}/version")
        ]),
        "2"
    );
    assert_eq!(
        curl(&[
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &format!("{base}/version")
        ]),
        "1.1"
    );
    let url = format!("{base}/api/v1/namespaces/default/configmaps");
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n";
    let created: serde_json::Value = serde_json::from_str(&curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/yaml",
        "--data-binary",
        yaml,
        &url,
    ]))
    .expect("json");
    assert_eq!(created["data"]["a"], "b");
    let post = |content_type: &str, body: &str| -> serde_json::Value {
        let header = format!("Content-Type: {content_type}");
        serde_json::from_str(&curl(&[
            "-X",
            "POST",
            "-H",
            &header,
            "--data-binary",
            body,
            &url,
        ]))
        .expect("json")
    };
    let summary = |status: &serde_json::Value| {
        (
            status["kind"].as_str().map(str::to_string),
            status["code"].as_i64(),
            status["reason"].as_str().map(str::to_string),
        )
    };
    // A malformed protobuf body is a clear 400; an unknown format a 415.
    let malformed = post("application/vnd.kubernetes.protobuf", "k8s");
    assert_eq!(
        summary(&malformed),
        (Some("Status".into()), Some(400), Some("BadRequest".into()))
    );
    assert!(
        malformed["message"]
            .as_str()
            .is_some_and(|m| m.contains("protobuf")),
        "{malformed}"
    );
    let refused = post("application/cbor", "{}");
    assert_eq!(
        summary(&refused),
        (
            Some("Status".into()),
            Some(415),
            Some("UnsupportedMediaType".into())
        )
    );
    let too_big = c.data_dir().join("too-big.json");
    std::fs::write(&too_big, "x".repeat(4 << 20)).expect("write body");
    let body = format!("@{}", too_big.display());
    let refused: serde_json::Value = serde_json::from_str(&curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &url,
    ]))
    .expect("json");
    assert_eq!(refused["code"], 413);
}

scenarios!(
    python_client,
    kube_rs_client,
    curl_http2_yaml_and_unsupported_bodies
);
