//! Subresources beyond `status`: `scale` (autoscaling/v1 Scale over `spec.replicas`),
//! `pods/binding` (how the scheduler assigns a node) and `pods/eviction` (a delete that
//! respects PodDisruptionBudgets).

use serde_json::{Value, json};

use super::Resource;
use super::delete::DeleteOptions;
use super::object::{meta_str, success_status};
use super::selector::LabelSelector;
use super::store::{ListOptions, Part, PatchType, Registry, WriteOptions, Written, subject};
use crate::status::ApiError;

/// A write to a Scale: a replacement body or a patch.
pub(crate) enum ScaleChange {
    Replace(Value),
    Patch(PatchType, Value),
}

/// A `metav1.LabelSelector` in its string form (`a=b,c in (d)`), as Scale reports it.
pub(crate) fn selector_string(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return String::new();
    };
    let mut parts: Vec<String> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for e in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match e.get("operator").and_then(Value::as_str) {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_string(),
            Some("DoesNotExist") => format!("!{key}"),
            _ => continue,
        });
    }
    parts.join(",")
}

fn to_scale(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(obj.pointer("/spec/selector")),
        },
    })
}

impl Registry {
    pub async fn get_scale(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        Ok(to_scale(&self.get(r, ns, name).await?))
    }

    /// Changes `spec.replicas` through the Scale view of the object.
    pub async fn write_scale(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        change: ScaleChange,
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        let opts = WriteOptions {
            part: Part::Main,
            ..opts
        };
        let written = self
            .guaranteed_update(r, ns, name, None, opts, |current| {
                let scale = to_scale(current);
                let desired = match &change {
                    ScaleChange::Replace(body) => body.clone(),
                    ScaleChange::Patch(PatchType::Json, patch) => {
                        let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                            .map_err(|e| {
                                ApiError::bad_request(format!("error decoding json patch: {e}"))
                            })?;
                        let mut scale = scale.clone();
                        json_patch::patch(&mut scale, &ops)
                            .map_err(|e| ApiError::bad_request(e.to_string()))?;
                        scale
                    }
                    ScaleChange::Patch(_, patch) => {
                        let mut scale = scale.clone();
                        json_patch::merge(&mut scale, patch);
                        scale
                    }
                };
                if meta_str(&desired, "resourceVersion").is_some_and(|rv| {
                    !rv.is_empty() && Some(rv) != meta_str(&scale, "resourceVersion")
                }) {
                    return Err(ApiError::conflict(&subject(r, name)));
                }
                let replicas = match desired.pointer("/spec/replicas") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v.as_i64().ok_or_else(|| {
                        ApiError::bad_request(format!("spec.replicas must be an integer, not {v}"))
                    })?,
                };
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "Scale",
                        "autoscaling",
                        name,
                        vec![crate::status::FieldError::invalid(
                            "spec.replicas",
                            &replicas.to_string(),
                            "must be greater than or equal to 0",
                        )],
                    ));
                }
                let mut obj = current.clone();
                obj["spec"]["replicas"] = json!(replicas);
                Ok(obj)
            })
            .await?;
        Ok(Written {
            object: to_scale(&written.object),
            warnings: written.warnings,
            audit: written.audit,
        })
    }

    /// `pods/binding`: assigns a pending pod to a node, once.
    pub async fn bind_pod(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        binding: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Binding",
                    "",
                    name,
                    vec![crate::status::FieldError::invalid(
                        "target.name",
                        "",
                        "must not be empty",
                    )],
                )
            })?
            .to_string();
        if binding
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| n != name)
        {
            return Err(ApiError::bad_request(
                "the name of the binding does not match the name of the pod",
            ));
        }
        let binding_uid = binding
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        let opts = WriteOptions {
            part: Part::Internal,
            dry_run,
            ..Default::default()
        };
        self.guaranteed_update(r, ns, name, None, opts, |current| {
            if let Some(assigned) = current.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                return Err(ApiError {
                    code: 409,
                    reason: "Conflict",
                    message: format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{assigned}\""),
                    details: Some(json!({"name": name, "kind": "pods/binding"})),
                });
            }
            let binding_conflict = |why: &str| ApiError {
                code: 409,
                reason: "Conflict",
                message: format!("Operation cannot be fulfilled on pods/binding \"{name}\": {why}"),
                details: Some(json!({"name": name, "kind": "pods/binding"})),
            };
            if binding_uid.as_deref().is_some_and(|uid| Some(uid) != current.pointer("/metadata/uid").and_then(Value::as_str)) {
                return Err(binding_conflict("the UID in the binding does not match the pod"));
            }
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(binding_conflict("pod is being deleted, cannot be assigned to a host"));
            }
            let mut pod = current.clone();
            pod["spec"]["nodeName"] = json!(node);
            if let Some(annotations) = binding.pointer("/metadata/annotations").and_then(Value::as_object) {
                for (k, v) in annotations {
                    pod["metadata"]["annotations"][k] = v.clone();
                }
            }
            let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": super::object::now()});
            let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c.get("type") != Some(&json!("PodScheduled"))).collect();
            conditions.push(condition);
            pod["status"]["conditions"] = json!(conditions);
            Ok(pod)
        })
        .await?;
        Ok(success_status(r, name, None))
    }

    /// `pods/eviction`: deletes the pod unless a PodDisruptionBudget selecting it allows
    /// no disruption now (429, as upstream).
    pub async fn evict_pod(
        &self,
        r: &Resource,
        ns: &str,
        name: &str,
        eviction: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let pod = self.get(r, Some(ns), name).await?;
        let budgets = super::builtin("policy", "v1", "poddisruptionbudgets")?;
        let list = self
            .list(budgets, Some(ns), &ListOptions::default())
            .await?;
        let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
        let matching: Vec<&Value> = list["items"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|pdb| {
                pdb.pointer("/spec/selector").is_some()
                    && LabelSelector::parse(&selector_string(pdb.pointer("/spec/selector")))
                        .is_ok_and(|s| s.matches(labels))
            })
            .collect();
        let too_many = |message: String| ApiError {
            code: 429,
            reason: "TooManyRequests",
            message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            details: Some(json!({"causes": [{"reason": "DisruptionBudget", "message": message}]})),
        };
        if matching.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = matching.first() {
            let pdb_name = meta_str(pdb, "name").unwrap_or_default().to_string();
            let generation = pdb
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let observed = pdb
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if observed < generation {
                return Err(too_many(format!(
                    "The disruption budget {pdb_name} is still being processed by the server."
                )));
            }
            let allowed = pdb
                .pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if allowed < 1 {
                return Err(too_many(format!(
                    "The disruption budget {pdb_name} does not allow a disruption now"
                )));
            }
            // Use up one disruption with a compare-and-swap on the budget, so parallel
            // evictions cannot all spend the same allowance (a lost race is a 429).
            if !dry_run {
                let expected = pdb
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|rv| rv.parse().ok());
                let opts = WriteOptions {
                    part: Part::Internal,
                    ..Default::default()
                };
                let spent = self
                    .guaranteed_update(budgets, Some(ns), &pdb_name, expected, opts, |current| {
                        let mut pdb = current.clone();
                        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
                        pdb["status"]["disruptedPods"][name] = json!(super::object::now());
                        Ok(pdb)
                    })
                    .await;
                if let Err(e) = spent {
                    return Err(if e.code == 409 {
                        too_many(format!(
                            "The disruption budget {pdb_name} changed; try again"
                        ))
                    } else {
                        e
                    });
                }
            }
        }
        let options = DeleteOptions {
            grace_period_seconds: eviction
                .pointer("/deleteOptions/gracePeriodSeconds")
                .and_then(Value::as_i64),
            dry_run,
            ..Default::default()
        };
        self.delete(r, Some(ns), name, &options).await?;
        Ok(success_status(r, name, meta_str(&pod, "uid")))
    }
}
