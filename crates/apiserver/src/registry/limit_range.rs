//! Upstream's LimitRanger admission: the LimitRanges of a namespace give a new pod's
//! containers the default requests and limits they lack (noted in the
//! `kubernetes.io/limit-ranger` annotation), then refuse a pod or claim outside their
//! minimums, maximums and limit/request ratios, with upstream's messages
//! (`minimum memory usage per Container is 100Mi, but request is 50Mi`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use skiff_api::quantity;

use super::builtin;
use super::object::meta_str;
use super::store::Registry;
use crate::status::ApiError;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// LimitRange defaulting (upstream's `SetDefaults_LimitRangeItem`): for a Container
/// item, the default limit is the max where unset, and the default request the default
/// limit, else the min.
pub(crate) fn limit_range_defaults(obj: &mut Value) {
    let Some(items) = obj
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for item in items.iter_mut().filter(|i| i["type"] == "Container") {
        let fill = |item: &mut Value, into: &str, from: &str| {
            let source = item[from].as_object().cloned().unwrap_or_default();
            if source.is_empty() {
                return;
            }
            if !item[into].is_object() {
                item[into] = json!({});
            }
            for (k, v) in source {
                if item[into].get(&k).is_none() {
                    item[into][&k] = v;
                }
            }
        };
        fill(item, "default", "max");
        fill(item, "defaultRequest", "default");
        fill(item, "defaultRequest", "min");
    }
}

/// A container's `resources.requests` or `limits`.
fn resources<'a>(container: &'a Value, part: &str) -> Option<&'a Map<String, Value>> {
    container["resources"][part].as_object()
}

/// Quantities by resource name, summed over `containers`.
fn sum(containers: &[&Value], part: &str) -> BTreeMap<String, (i64, String)> {
    let mut out: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for c in containers {
        for (k, v) in resources(c, part).into_iter().flatten() {
            let amount = v
                .as_str()
                .and_then(|q| quantity::of_resource(k, q))
                .unwrap_or(0);
            let entry = out.entry(k.clone()).or_insert((0, String::new()));
            entry.0 += amount;
            entry.1 = quantity::format_resource(k, entry.0);
        }
    }
    out
}

fn single(container: &Value, part: &str) -> BTreeMap<String, (i64, String)> {
    sum(&[container], part)
}

/// Upstream's min, max and ratio checks of one item's constraints against observed
/// requests and limits (amount, as printed).
fn check(
    kind: &str,
    item: &Value,
    requests: &BTreeMap<String, (i64, String)>,
    limits: &BTreeMap<String, (i64, String)>,
    errors: &mut Vec<String>,
) {
    let bound = |field: &str| -> Vec<(String, i64, String)> {
        item[field]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let text = v.as_str()?;
                        Some((k.clone(), quantity::of_resource(k, text)?, text.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for (resource, min, text) in bound("min") {
        match (requests.get(&resource), limits.get(&resource)) {
            (None, _) => errors.push(format!(
                "minimum {resource} usage per {kind} is {text}.  No request is specified"
            )),
            (Some((req, shown)), _) if *req < min => errors.push(format!(
                "minimum {resource} usage per {kind} is {text}, but request is {shown}"
            )),
            (_, Some((lim, shown))) if *lim < min => errors.push(format!(
                "minimum {resource} usage per {kind} is {text}, but limit is {shown}"
            )),
            _ => {}
        }
    }
    for (resource, max, text) in bound("max") {
        match (requests.get(&resource), limits.get(&resource)) {
            (_, None) => errors.push(format!(
                "maximum {resource} usage per {kind} is {text}.  No limit is specified"
            )),
            (_, Some((lim, shown))) if *lim > max => errors.push(format!(
                "maximum {resource} usage per {kind} is {text}, but limit is {shown}"
            )),
            (Some((req, shown)), _) if *req > max => errors.push(format!(
                "maximum {resource} usage per {kind} is {text}, but request is {shown}"
            )),
            _ => {}
        }
    }
    for (resource, _, text) in bound("maxLimitRequestRatio") {
        let Some(ratio) = item["maxLimitRequestRatio"][&resource]
            .as_str()
            .and_then(quantity::milli_value)
        else {
            continue;
        };
        let req = requests.get(&resource).map_or(0, |r| r.0);
        let lim = limits.get(&resource).map_or(0, |l| l.0);
        if req == 0 {
            errors.push(format!("{resource} max limit to request ratio per {kind} is {text}, but no request is specified or request is 0"));
        } else if lim == 0 {
            errors.push(format!("{resource} max limit to request ratio per {kind} is {text}, but no limit is specified or limit is 0"));
        } else {
            #[allow(clippy::cast_precision_loss)]
            let observed = lim as f64 / req as f64;
            #[allow(clippy::cast_precision_loss)]
            if observed * 1000.0 > ratio as f64 {
                errors.push(format!("{resource} max limit to request ratio per {kind} is {text}, but provided ratio is {observed:.6}"));
            }
        }
    }
}

/// Fills in a container's defaults; what was set, for the annotation.
fn default_container(container: &mut Value, item: &Value, prefix: &str, notes: &mut Vec<String>) {
    let name = container["name"].as_str().unwrap_or_default().to_string();
    let mut set = |part: &str, from: &str| -> Vec<String> {
        let defaults = item[from].as_object().cloned().unwrap_or_default();
        let mut added = Vec::new();
        for (k, v) in defaults {
            if !container["resources"].is_object() {
                container["resources"] = json!({});
            }
            if !container["resources"][part].is_object() {
                container["resources"][part] = json!({});
            }
            if container["resources"][part].get(&k).is_none() {
                container["resources"][part][&k] = v;
                added.push(k);
            }
        }
        added.sort();
        added
    };
    let requests = set("requests", "defaultRequest");
    let limits = set("limits", "default");
    if !requests.is_empty() {
        notes.push(format!(
            "{} request for {prefix} {name}",
            requests.join(", ")
        ));
    }
    if !limits.is_empty() {
        notes.push(format!("{} limit for {prefix} {name}", limits.join(", ")));
    }
}

fn refuse(plural: &str, name: &str, mut errors: Vec<String>) -> Result<(), ApiError> {
    errors.sort();
    errors.dedup();
    let why = match errors.len() {
        0 => return Ok(()),
        1 => errors.remove(0),
        _ => format!("[{}]", errors.join(", ")),
    };
    Err(ApiError::forbidden(format!(
        "{plural} \"{name}\" is forbidden: {why}"
    )))
}

impl Registry {
    /// LimitRanger for a pod being created or a claim being written in `ns`.
    pub(crate) async fn admit_limit_ranges(
        &self,
        plural: &str,
        ns: &str,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let kinds = builtin("", "v1", "limitranges")?;
        let ranges = self.policy_objects(kinds, ns).await?;
        if ranges.is_empty() {
            return Ok(());
        }
        // Defaulted as written today, also those stored before these defaults existed.
        let items: Vec<Value> = ranges
            .into_iter()
            .flat_map(|mut r| {
                limit_range_defaults(&mut r);
                r["spec"]["limits"].as_array().cloned().unwrap_or_default()
            })
            .collect();
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        let mut errors = Vec::new();
        match plural {
            "pods" => {
                // Upstream's pod defaulting comes first: a resource with a limit and no
                // request requests its limit (not the range's default request).
                for list in ["containers", "initContainers"] {
                    for c in obj["spec"][list].as_array_mut().into_iter().flatten() {
                        let limits = c["resources"]["limits"]
                            .as_object()
                            .cloned()
                            .unwrap_or_default();
                        for (k, v) in limits {
                            if c["resources"]["requests"].get(&k).is_none() {
                                if !c["resources"]["requests"].is_object() {
                                    c["resources"]["requests"] = json!({});
                                }
                                c["resources"]["requests"][&k] = v;
                            }
                        }
                    }
                }
                let mut notes = Vec::new();
                for item in items.iter().filter(|i| i["type"] == "Container") {
                    for (list, prefix) in [
                        ("containers", "container"),
                        ("initContainers", "init container"),
                    ] {
                        for c in obj["spec"][list].as_array_mut().into_iter().flatten() {
                            default_container(c, item, prefix, &mut notes);
                        }
                    }
                }
                if !notes.is_empty() {
                    if !obj["metadata"]["annotations"].is_object() {
                        obj["metadata"]["annotations"] = json!({});
                    }
                    obj["metadata"]["annotations"][ANNOTATION] =
                        json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
                }
                let containers: Vec<&Value> = ["containers", "initContainers"]
                    .iter()
                    .flat_map(|l| obj["spec"][*l].as_array().into_iter().flatten())
                    .collect();
                for item in &items {
                    match item["type"].as_str() {
                        Some("Container") => {
                            for c in &containers {
                                check(
                                    "Container",
                                    item,
                                    &single(c, "requests"),
                                    &single(c, "limits"),
                                    &mut errors,
                                );
                            }
                        }
                        Some("Pod") => {
                            let regular: Vec<&Value> = obj["spec"]["containers"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .collect();
                            check(
                                "Pod",
                                item,
                                &sum(&regular, "requests"),
                                &sum(&regular, "limits"),
                                &mut errors,
                            );
                        }
                        _ => {}
                    }
                }
                refuse("pods", &name, errors)
            }
            "persistentvolumeclaims" => {
                let requests = single(&obj["spec"], "requests");
                for item in items
                    .iter()
                    .filter(|i| i["type"] == "PersistentVolumeClaim")
                {
                    // A claim has no limits: its maximum applies to its request.
                    let mut item = item.clone();
                    if let Some(o) = item.as_object_mut() {
                        o.remove("maxLimitRequestRatio");
                    }
                    let max = item.as_object_mut().and_then(|o| o.remove("max"));
                    check(
                        "PersistentVolumeClaim",
                        &item,
                        &requests,
                        &BTreeMap::new(),
                        &mut errors,
                    );
                    for (resource, bound) in max
                        .as_ref()
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                    {
                        let text = bound.as_str().unwrap_or_default();
                        let Some(max) = quantity::of_resource(resource, text) else {
                            continue;
                        };
                        match requests.get(resource) {
                            None => errors.push(format!("maximum {resource} usage per PersistentVolumeClaim is {text}.  No request is specified")),
                            Some((req, shown)) if *req > max => errors.push(format!("maximum {resource} usage per PersistentVolumeClaim is {text}, but request is {shown}")),
                            _ => {}
                        }
                    }
                }
                refuse("persistentvolumeclaims", &name, errors)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_ranges_default_and_check_as_upstream() {
        let mut range = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]}});
        limit_range_defaults(&mut range);
        let item = &range["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "1", "memory": "64Mi"})
        );

        let mut c = json!({"name": "app", "resources": {"limits": {"memory": "128Mi"}}});
        let mut notes = Vec::new();
        default_container(&mut c, item, "container", &mut notes);
        assert_eq!(
            notes,
            [
                "cpu, memory request for container app",
                "cpu limit for container app"
            ]
        );
        assert_eq!(c["resources"]["requests"]["memory"], "64Mi");
        assert_eq!(c["resources"]["limits"]["memory"], "128Mi");

        let mut errors = Vec::new();
        let small = json!({"resources": {"requests": {"memory": "32Mi", "cpu": "100m"}, "limits": {"cpu": "2"}}});
        check(
            "Container",
            item,
            &single(&small, "requests"),
            &single(&small, "limits"),
            &mut errors,
        );
        assert_eq!(
            errors,
            [
                "minimum memory usage per Container is 64Mi, but request is 32Mi",
                "maximum cpu usage per Container is 1, but limit is 2",
            ]
        );
        let ratio = json!({"maxLimitRequestRatio": {"cpu": "2"}});
        let mut errors = Vec::new();
        let c = json!({"resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "300m"}}});
        check(
            "Container",
            &ratio,
            &single(&c, "requests"),
            &single(&c, "limits"),
            &mut errors,
        );
        assert_eq!(
            errors,
            ["cpu max limit to request ratio per Container is 2, but provided ratio is 3.000000"]
        );
    }
}
