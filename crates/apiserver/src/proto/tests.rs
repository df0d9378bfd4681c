//! Bodies encoded by prost with the `k8s-pb` types (an encoder independent of ours), as
//! client-go would send them.

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::json;

use super::*;

fn envelope(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

/// Go writes value-type fields even when empty: so does this helper's ObjectMeta.
fn object_meta(name: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: Some(name.into()),
        generate_name: Some(String::new()),
        namespace: Some(String::new()),
        resource_version: Some(String::new()),
        creation_timestamp: Some(meta::Time {
            seconds: Some(0),
            nanos: Some(0),
        }),
        labels: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    }
}

#[test]
fn config_maps_and_secrets() {
    let cm = core::ConfigMap {
        metadata: Some(object_meta("settings")),
        data: [("mode".to_string(), "fast".to_string())].into(),
        binary_data: [("blob".to_string(), vec![0u8, 1, 2])].into(),
        immutable: Some(false),
    };
    let json = to_json(&envelope("v1", "ConfigMap", &cm)).expect("decode");
    assert_eq!(
        json,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": {"app": "web"}},
            "data": {"mode": "fast"},
            "binaryData": {"blob": "AAEC"},
            "immutable": false,
        })
    );
    let secret = core::Secret {
        metadata: Some(object_meta("token")),
        data: [("key".to_string(), b"value".to_vec())].into(),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let json = to_json(&envelope("v1", "Secret", &secret)).expect("decode");
    assert_eq!(json["data"]["key"], "dmFsdWU=");
    assert_eq!(json["type"], "Opaque");
}

#[test]
fn deployments_with_quantities_int_or_strings_and_times() {
    let container = core::Container {
        name: Some("web".into()),
        image: Some("example/web:1".into()),
        command: vec!["serve".into(), String::new()],
        ports: vec![core::ContainerPort {
            container_port: Some(8080),
            protocol: Some("TCP".into()),
            host_port: Some(0),
            ..Default::default()
        }],
        resources: Some(core::ResourceRequirements {
            limits: [(
                "memory".to_string(),
                Quantity {
                    string: Some("64Mi".into()),
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut template_meta = object_meta("");
    template_meta.name = Some(String::new());
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..object_meta("web")
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("25%".into()),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(2),
                        str_val: Some(String::new()),
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus::default()),
    };
    let json = to_json(&envelope("apps/v1", "Deployment", &deployment)).expect("decode");
    assert_eq!(
        json["metadata"]["creationTimestamp"],
        "2023-11-14T22:13:20Z"
    );
    // A pointer field set to zero stays: replicas 0 is not "default to 1".
    assert_eq!(json["spec"]["replicas"], 0);
    let c = &json["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["serve", ""]));
    // hostPort is a value in Go: zero is unset.
    assert_eq!(
        c["ports"][0],
        json!({"containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
    let rolling = &json["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling, &json!({"maxUnavailable": "25%", "maxSurge": 2}));
    assert_eq!(
        json["spec"]["template"]["metadata"],
        json!({"labels": {"app": "web"}})
    );
    assert_eq!(json["status"], json!({}));
    // The result is a valid Deployment.
    serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(json).expect("typed");
}

#[test]
fn services_pod_ips_and_unset_int_or_strings() {
    let service = core::Service {
        metadata: Some(object_meta("web")),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(0),
                    str_val: Some(String::new()),
                }),
                node_port: Some(0),
                ..Default::default()
            }],
            cluster_ips: vec!["10.96.0.10".into()],
            ..Default::default()
        }),
        status: None,
    };
    let json = to_json(&envelope("v1", "Service", &service)).expect("decode");
    let port = &json["spec"]["ports"][0];
    assert_eq!(port, &json!({"port": 80, "targetPort": 0}));
    assert_eq!(json["spec"]["clusterIPs"], json!(["10.96.0.10"]));
}

#[test]
fn an_explicit_empty_storage_class_survives() {
    let claim = core::PersistentVolumeClaim {
        metadata: Some(object_meta("data")),
        spec: Some(core::PersistentVolumeClaimSpec {
            storage_class_name: Some(String::new()),
            volume_name: Some(String::new()),
            ..Default::default()
        }),
        status: None,
    };
    let json = to_json(&envelope("v1", "PersistentVolumeClaim", &claim)).expect("decode");
    assert_eq!(json["spec"], json!({"storageClassName": ""}));
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    assert!(to_json(b"not protobuf").is_err());
    let mut truncated = envelope("v1", "ConfigMap", &core::ConfigMap::default());
    truncated.truncate(truncated.len() - 1);
    let _ = to_json(&truncated);
    assert!(to_json(&envelope("v1", "NoSuchKind", &core::ConfigMap::default())).is_err());
    let mut garbage = MAGIC.to_vec();
    garbage.extend([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(to_json(&garbage).is_err());
    // Deep nesting is refused before it exhausts the stack.
    let mut nested = Vec::new();
    for _ in 0..200 {
        let mut outer = vec![0x0a];
        let mut len = nested.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                outer.push(byte);
                break;
            }
            outer.push(byte | 0x80);
        }
        outer.extend(nested);
        nested = outer;
    }
    let _ = decode_message(
        &nested,
        "k8s.io.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement",
        0,
    );
}

#[test]
fn durations_print_as_go_does() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500_000_000), "1.5s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(150_000_000), "150ms");
    assert_eq!(go_duration(90_000_000_000), "1m30s");
}
