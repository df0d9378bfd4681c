//! Kind-specific validation beyond the typed decode: the rules users meet most often
//! upstream (k8s.io/kubernetes `pkg/apis/*/validation`), each reported as a field error
//! with upstream's wording so `kubectl` prints what users expect.

use serde_json::{Map, Value};

use super::NameRule;
use super::Resource;
use crate::status::FieldError;

fn required(field: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueRequired",
        message: "Required value".into(),
    }
}

fn immutable(field: &str, value: &Value) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {}: field is immutable", go_value(value)),
    }
}

fn forbidden(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {message}"),
    }
}

/// A value as upstream prints it in messages: strings quoted, the rest as JSON.
fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The errors of writing `obj` (replacing `old` on an update).
pub(crate) fn check(r: &Resource, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match (r.group, r.kind) {
        ("", "Pod") => {
            pod_spec(obj.get("spec"), "spec", &mut errors);
            if let Some(old) = old {
                pod_update(old, obj, &mut errors);
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            workload(obj, old, &mut errors);
        }
        ("batch", "Job") => {
            job(obj, &mut errors);
            if let Some(old) = old {
                same(old, obj, "/spec/selector", "spec.selector", &mut errors);
            }
        }
        ("batch", "CronJob") => {
            if obj
                .pointer("/spec/schedule")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errors.push(required("spec.schedule"));
            }
            pod_spec(
                obj.pointer("/spec/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
                &mut errors,
            );
        }
        ("", "ConfigMap" | "Secret") => {
            if let Some(old) = old
                && old.get("immutable") == Some(&Value::Bool(true))
            {
                for field in ["data", "binaryData"] {
                    if old.get(field) != obj.get(field) {
                        errors.push(forbidden(
                            field,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if obj.get("immutable") != Some(&Value::Bool(true)) {
                    errors.push(forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        ("", "Service") => service(obj, &mut errors),
        ("", "Namespace") => {
            if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
                errors.extend(super::pod_security::check_namespace_labels(labels));
            }
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            errors.extend(super::certificates::check(obj, old))
        }
        ("scheduling.k8s.io", "PriorityClass") => priority_class(obj, old, &mut errors),
        ("rbac.authorization.k8s.io", kind @ ("RoleBinding" | "ClusterRoleBinding")) => {
            binding(kind, obj, old, &mut errors)
        }
        _ => {}
    }
    errors
}

/// Upstream's binding validation: a roleRef to a role of RBAC's group (a
/// ClusterRoleBinding only to a ClusterRole) that never changes, and subjects of the
/// known kinds (a service account with its namespace).
fn binding(kind: &str, obj: &Value, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
    let text = |v: &Value, f: &str| {
        v.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let ref_kind = text(&role_ref, "kind");
    let allowed: &[&str] = if kind == "RoleBinding" {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !allowed.contains(&ref_kind.as_str()) {
        let quoted: Vec<String> = allowed.iter().map(|k| format!("{k:?}")).collect();
        errors.push(FieldError {
            field: "roleRef.kind".into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {ref_kind:?}: supported values: {}",
                quoted.join(", ")
            ),
        });
    }
    if text(&role_ref, "apiGroup") != "rbac.authorization.k8s.io" {
        errors.push(FieldError {
            field: "roleRef.apiGroup".into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {:?}: supported values: \"rbac.authorization.k8s.io\"",
                text(&role_ref, "apiGroup")
            ),
        });
    }
    if text(&role_ref, "name").is_empty() {
        errors.push(required("roleRef.name"));
    }
    if let Some(old) = old
        && old.get("roleRef") != obj.get("roleRef")
    {
        errors.push(FieldError {
            field: "roleRef".into(),
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {}: cannot change roleRef",
                go_value(&role_ref)
            ),
        });
    }
    for (i, subject) in obj
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let subject_kind = text(subject, "kind");
        if text(subject, "name").is_empty() {
            errors.push(required(format!("subjects[{i}].name")));
        }
        match subject_kind.as_str() {
            "ServiceAccount" => {
                if kind == "ClusterRoleBinding" && text(subject, "namespace").is_empty() {
                    errors.push(required(format!("subjects[{i}].namespace")));
                }
            }
            "User" | "Group" => {}
            other => errors.push(FieldError {
                field: format!("subjects[{i}].kind"),
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""
                ),
            }),
        }
    }
}

/// Upstream's PriorityClass validation: user classes stay at or below 1,000,000,000 and
/// out of the `system-` prefix (the two system classes excepted); value and preemption
/// policy never change.
fn priority_class(obj: &Value, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    let global = obj.get("globalDefault").and_then(Value::as_bool) == Some(true);
    let system = matches!(
        (name, value, global),
        ("system-node-critical", 2_000_001_000, false)
            | ("system-cluster-critical", 2_000_000_000, false)
    );
    if !system {
        if name.starts_with("system-") {
            errors.push(forbidden(
                "metadata.name",
                "priority class names with 'system-' prefix are reserved for system use only",
            ));
        } else if value > HIGHEST_USER_DEFINABLE {
            errors.push(forbidden(
                "value",
                &format!(
                    "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"
                ),
            ));
        }
    }
    if let Some(old) = old {
        if old.get("value") != obj.get("value") {
            errors.push(forbidden("value", "may not be changed in an update."));
        }
        if old.get("preemptionPolicy") != obj.get("preemptionPolicy") {
            errors.push(immutable(
                "preemptionPolicy",
                obj.get("preemptionPolicy").unwrap_or(&Value::Null),
            ));
        }
    }
}

fn same(old: &Value, obj: &Value, pointer: &str, field: &str, errors: &mut Vec<FieldError>) {
    let (before, after) = (old.pointer(pointer), obj.pointer(pointer));
    if before != after {
        errors.push(immutable(field, after.unwrap_or(&Value::Null)));
    }
}

fn pod_spec(spec: Option<&Value>, at: &str, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errors.push(required(at));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        errors.push(required(format!("{at}.containers")));
    }
    let mut names: Vec<&str> = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("{at}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => errors.push(required(format!("{field}.name"))),
                Some(name) if names.contains(&name) => errors.push(FieldError {
                    field: format!("{field}.name"),
                    reason: "FieldValueDuplicate",
                    message: format!("Duplicate value: {name:?}"),
                }),
                Some(name) => {
                    errors.extend(NameRule::DnsLabel.check(&format!("{field}.name"), name));
                    names.push(name);
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errors.push(required(format!("{field}.image")));
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        errors.push(FieldError {
            field: format!("{at}.restartPolicy"),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
}

/// Upstream lets a pod's spec change only in a few places once it exists.
fn pod_update(old: &Value, obj: &Value, errors: &mut Vec<FieldError>) {
    let mutable = |spec: Option<&Value>| -> Value {
        let mut spec = spec.cloned().unwrap_or(Value::Null);
        if let Some(s) = spec.as_object_mut() {
            for field in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                s.remove(field);
            }
            for list in ["containers", "initContainers"] {
                if let Some(containers) = s.get_mut(list).and_then(Value::as_array_mut) {
                    for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
        spec
    };
    if mutable(old.get("spec")) != mutable(obj.get("spec")) {
        errors.push(forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

/// A label selector's `matchLabels` and `matchExpressions` against a set of labels.
fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    let match_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<&Value> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => labels.get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => labels.get(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => labels.contains_key(key),
                Some("DoesNotExist") => !labels.contains_key(key),
                _ => false,
            }
        });
    match_labels && expressions
}

fn selector_is_empty(selector: &Value) -> bool {
    selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
        && selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
}

fn workload(obj: &Value, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    match obj.pointer("/spec/selector") {
        None => errors.push(required("spec.selector")),
        Some(selector) if selector_is_empty(selector) => errors.push(FieldError {
            field: "spec.selector".into(),
            reason: "FieldValueInvalid",
            message: "Invalid value: \"null\": empty selector is invalid for deployment".into(),
        }),
        Some(selector) => {
            let empty = Map::new();
            let labels = obj
                .pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            if !selector_matches(selector, labels) {
                errors.push(FieldError {
                    field: "spec.template.metadata.labels".into(),
                    reason: "FieldValueInvalid",
                    message: format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        Value::Object(labels.clone())
                    ),
                });
            }
        }
    }
    if let Some(replicas) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        errors.push(FieldError {
            field: "spec.replicas".into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        });
    }
    pod_spec(
        obj.pointer("/spec/template/spec"),
        "spec.template.spec",
        errors,
    );
    if let Some(old) = old {
        same(old, obj, "/spec/selector", "spec.selector", errors);
    }
}

fn job(obj: &Value, errors: &mut Vec<FieldError>) {
    let spec = obj.pointer("/spec/template/spec");
    pod_spec(spec, "spec.template.spec", errors);
    match spec
        .and_then(|s| s.get("restartPolicy"))
        .and_then(Value::as_str)
    {
        Some("OnFailure" | "Never") => {}
        _ => errors.push(FieldError {
            field: "spec.template.spec.restartPolicy".into(),
            reason: "FieldValueRequired",
            message: "Required value: valid values: \"OnFailure\", \"Never\"".into(),
        }),
    }
}

fn service(obj: &Value, errors: &mut Vec<FieldError>) {
    let external_name = obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    if !external_name
        && obj.pointer("/spec/clusterIP") != Some(&Value::from("None"))
        && ports.is_none_or(Vec::is_empty)
    {
        errors.push(required("spec.ports"));
    }
    for (i, port) in ports.into_iter().flatten().enumerate() {
        match port.get("port").and_then(Value::as_i64) {
            Some(1..=65535) => {}
            Some(p) => errors.push(FieldError {
                field: format!("spec.ports[{i}].port"),
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {p}: must be between 1 and 65535, inclusive"),
            }),
            None => errors.push(required(format!("spec.ports[{i}].port"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::builtin;

    #[test]
    fn workloads_need_a_selector_matching_their_template_and_keep_it() {
        let r = builtin("apps", "v1", "deployments").expect("deployments");
        let d = json!({"spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}},
        }});
        let errors = check(r, &d, None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.template.metadata.labels");
        let mut good = d.clone();
        good["spec"]["template"]["metadata"]["labels"]["app"] = json!("web");
        assert!(check(r, &good, None).is_empty());
        let mut moved = good.clone();
        moved["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
        moved["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
        let errors = check(r, &moved, Some(&good));
        assert_eq!(errors[0].field, "spec.selector");
        assert!(errors[0].message.ends_with("field is immutable"));
    }

    #[test]
    fn pods_need_containers_and_change_only_images_after_creation() {
        let r = builtin("", "v1", "pods").expect("pods");
        assert_eq!(
            check(r, &json!({"spec": {}}), None)[0].field,
            "spec.containers"
        );
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "a"}], "nodeName": "n1"}});
        let mut image = pod.clone();
        image["spec"]["containers"][0]["image"] = json!("b");
        assert!(check(r, &image, Some(&pod)).is_empty());
        let mut node = pod.clone();
        node["spec"]["nodeName"] = json!("n2");
        assert_eq!(check(r, &node, Some(&pod))[0].reason, "FieldValueForbidden");
        let dup = json!({"spec": {"containers": [{"name": "c", "image": "a"}, {"name": "c", "image": "b"}]}});
        assert_eq!(check(r, &dup, None)[0].reason, "FieldValueDuplicate");
    }
}
