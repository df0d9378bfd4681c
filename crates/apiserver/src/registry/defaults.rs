//! Defaulting: the values upstream fills in when a client leaves a field out
//! (k8s.io/kubernetes `pkg/apis/*/v1/defaults.go`), applied on every write before
//! validation. Pod templates inside workloads get the pod defaults too.

use serde_json::{Value, json};

pub(super) use skiff_api::defaults::pod as pod_defaults;
pub(super) use skiff_api::defaults::set as default;

pub(super) fn no_defaults(_: &mut Value) {}

pub(super) fn namespace_defaults(obj: &mut Value) {
    if obj.pointer("/spec/finalizers").is_none() {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
    }
    if obj.pointer("/status/phase").is_none() {
        obj["status"] = json!({"phase": "Active"});
    }
}

/// `stringData` is a write-only convenience: merged into `data` (base64) and dropped,
/// as upstream does on every write.
pub(super) fn secret_defaults(obj: &mut Value) {
    use base64::Engine;
    if obj
        .get("type")
        .is_none_or(|t| t.as_str().is_none_or(str::is_empty))
    {
        obj["type"] = json!("Opaque");
    }
    let string_data = obj.as_object_mut().and_then(|o| o.remove("stringData"));
    if let Some(Value::Object(string_data)) = string_data {
        if !obj.get("data").is_some_and(Value::is_object) {
            obj["data"] = json!({});
        }
        for (key, value) in string_data {
            if let Some(text) = value.as_str() {
                obj["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
    }
}

pub(super) fn service_defaults(obj: &mut Value) {
    default(obj, "/spec/type", json!("ClusterIP"));
    default(obj, "/spec/sessionAffinity", json!("None"));
    if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for port in ports {
            default(port, "/protocol", json!("TCP"));
            // Zero means unset for these value fields upstream (protobuf clients always
            // send them).
            if let Some(fields) = port.as_object_mut() {
                if fields.get("nodePort").and_then(Value::as_i64) == Some(0) {
                    fields.remove("nodePort");
                }
                if matches!(fields.get("targetPort"), Some(v) if v == 0 || v == "") {
                    fields.remove("targetPort");
                }
            }
            if port.get("targetPort").is_none()
                && let Some(p) = port.get("port").cloned()
            {
                port["targetPort"] = p;
            }
        }
    }
}

/// The pod template of a workload (`spec.template`).
fn template_defaults(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        skiff_api::defaults::pod_spec(spec);
    }
}

pub(super) fn deployment_defaults(obj: &mut Value) {
    template_defaults(obj);
    default(obj, "/spec/replicas", json!(1));
    default(obj, "/spec/revisionHistoryLimit", json!(10));
    default(obj, "/spec/progressDeadlineSeconds", json!(600));
    default(obj, "/spec/strategy/type", json!("RollingUpdate"));
    if obj.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
        default(
            obj,
            "/spec/strategy/rollingUpdate",
            json!({"maxUnavailable": "25%", "maxSurge": "25%"}),
        );
    }
}

pub(super) fn replica_set_defaults(obj: &mut Value) {
    default(obj, "/spec/replicas", json!(1));
    template_defaults(obj);
}

pub(super) fn stateful_set_defaults(obj: &mut Value) {
    default(obj, "/spec/replicas", json!(1));
    default(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
    default(obj, "/spec/revisionHistoryLimit", json!(10));
    default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
    if obj
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("RollingUpdate")
    {
        default(
            obj,
            "/spec/updateStrategy/rollingUpdate/partition",
            json!(0),
        );
    }
    default(
        obj,
        "/spec/persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    template_defaults(obj);
}

pub(super) fn daemon_set_defaults(obj: &mut Value) {
    default(obj, "/spec/revisionHistoryLimit", json!(10));
    default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
    if obj
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("RollingUpdate")
    {
        default(
            obj,
            "/spec/updateStrategy/rollingUpdate/maxUnavailable",
            json!(1),
        );
        default(obj, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
    }
    template_defaults(obj);
}

/// Jobs: counts and policies, and (unless `manualSelector`) a selector on labels the
/// server generates from the Job's uid, as upstream's Job strategy does on create.
pub(super) fn job_defaults(obj: &mut Value) {
    if obj.pointer("/spec/completions").is_none() && obj.pointer("/spec/parallelism").is_none() {
        default(obj, "/spec/completions", json!(1));
    }
    default(obj, "/spec/parallelism", json!(1));
    default(obj, "/spec/backoffLimit", json!(6));
    default(obj, "/spec/completionMode", json!("NonIndexed"));
    default(obj, "/spec/suspend", json!(false));
    default(obj, "/spec/manualSelector", json!(false));
    default(
        obj,
        "/spec/podReplacementPolicy",
        json!("TerminatingOrFailed"),
    );
    let manual = obj.pointer("/spec/manualSelector") == Some(&json!(true));
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let (false, None, Some(uid), Some(name)) = (manual, obj.pointer("/spec/selector"), uid, name)
    {
        obj["spec"]["selector"] =
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        default(obj, "/spec/template/metadata/labels", json!({}));
        if let Some(labels) = obj
            .pointer_mut("/spec/template/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            for (k, v) in [
                ("batch.kubernetes.io/controller-uid", &uid),
                ("batch.kubernetes.io/job-name", &name),
                ("controller-uid", &uid),
                ("job-name", &name),
            ] {
                labels.insert(k.into(), json!(v));
            }
        }
    }
    template_defaults(obj);
}

pub(super) fn cron_job_defaults(obj: &mut Value) {
    default(obj, "/spec/concurrencyPolicy", json!("Allow"));
    default(obj, "/spec/suspend", json!(false));
    default(obj, "/spec/successfulJobsHistoryLimit", json!(3));
    default(obj, "/spec/failedJobsHistoryLimit", json!(1));
    if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
        skiff_api::defaults::pod_spec(spec);
    }
}

pub(super) fn priority_class_defaults(obj: &mut Value) {
    default(obj, "/preemptionPolicy", json!("PreemptLowerPriority"));
}

pub(super) fn persistent_volume_defaults(obj: &mut Value) {
    default(obj, "/spec/persistentVolumeReclaimPolicy", json!("Retain"));
    default(obj, "/spec/volumeMode", json!("Filesystem"));
    default(obj, "/status/phase", json!("Pending"));
}

pub(super) fn persistent_volume_claim_defaults(obj: &mut Value) {
    default(obj, "/spec/volumeMode", json!("Filesystem"));
    default(obj, "/status/phase", json!("Pending"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_templates_get_pod_defaults_and_jobs_a_generated_selector() {
        let mut job = json!({
            "metadata": {"name": "once", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]}}},
        });
        job_defaults(&mut job);
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "once"
        );
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
        use skiff_api::defaults::image_pull_policy;
        assert_eq!(image_pull_policy("registry:5000/app:1.2"), "IfNotPresent");
        assert_eq!(image_pull_policy("registry:5000/app"), "Always");
    }
}
