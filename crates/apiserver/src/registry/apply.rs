//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): a manager sends the
//! whole of its intent, the server merges it into the live object, refuses (409) to
//! change fields another manager owns unless forced, and removes fields this manager
//! applied before and no longer applies when nobody else owns them.
//!
//! Follows structured-merge-diff's `Updater.Apply`: merge, update ownership with
//! conflict detection, then prune. Ownership is in `managed.rs`.

use serde_json::{Map, Value, json};

use super::Resource;
use super::managed;
use super::managed::{
    Comparison, Element, FieldSet, ListKind, Managed, ManagerKey, Managers, Path, Scope, Shape,
    element_key, field_set, has_key, path_string,
};
use super::object::now;
use super::store::{MAX_RETRIES, Part, Registry, WriteOptions, Written, subject};
use crate::status::ApiError;

/// Merges an applied configuration into a live object: maps field by field, keyed
/// lists element by element, sets by union; anything else is replaced.
pub(crate) fn merge(live: &Value, config: &Value, field_path: &str, shape: Shape<'_>) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if !shape.atomic_struct(field_path) => {
            let mut out = l.clone();
            for (k, v) in c {
                if v.is_null() {
                    out.remove(k);
                    continue;
                }
                let child_path = if field_path.is_empty() {
                    k.clone()
                } else {
                    format!("{field_path}.{k}")
                };
                let merged = match l.get(k) {
                    Some(old) => merge(old, v, &child_path, shape),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => match shape.list(field_path) {
            ListKind::Atomic => config.clone(),
            ListKind::Set => {
                let mut out = l.clone();
                for item in c {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            ListKind::Map(keys) => {
                // The applied order wins; an element only the live list has stays just
                // before the applied element it preceded (upstream's merge order).
                let live_keys: Vec<Option<String>> =
                    l.iter().map(|o| element_key(o, keys)).collect();
                let mut emitted = vec![false; l.len()];
                let mut out = Vec::with_capacity(l.len() + c.len());
                for item in c {
                    let id = element_key(item, keys);
                    let position = id
                        .as_ref()
                        .and_then(|id| live_keys.iter().position(|k| k.as_ref() == Some(id)));
                    match position {
                        Some(p) => {
                            for (i, old) in l.iter().enumerate().take(p) {
                                let applied = live_keys[i].as_ref().is_some_and(|k| {
                                    c.iter().any(|ci| element_key(ci, keys).as_ref() == Some(k))
                                });
                                if !emitted[i] && !applied {
                                    out.push(old.clone());
                                    emitted[i] = true;
                                }
                            }
                            emitted[p] = true;
                            out.push(merge(&l[p], item, field_path, shape));
                        }
                        None => out.push(item.clone()),
                    }
                }
                for (i, old) in l.iter().enumerate() {
                    if !emitted[i] {
                        out.push(old.clone());
                    }
                }
                Value::Array(out)
            }
        },
        _ => config.clone(),
    }
}

/// Removes the field or list element at `path`.
fn remove(obj: &mut Value, path: &[Element]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = obj;
    for element in parents {
        let next = match element {
            Element::Field(f) => node.get_mut(f.as_str()),
            Element::Index(i) => node.get_mut(*i),
            Element::Key(k) => find_keyed(node, k),
            Element::Value(v) => {
                let value = serde_json::from_str::<Value>(v).ok();
                node.as_array_mut()
                    .and_then(|items| items.iter_mut().find(|i| Some(&**i) == value.as_ref()))
            }
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match last {
        Element::Field(f) => {
            if let Some(map) = node.as_object_mut() {
                map.remove(f);
            }
        }
        Element::Index(i) => {
            if let Some(items) = node.as_array_mut()
                && *i < items.len()
            {
                items.remove(*i);
            }
        }
        Element::Key(k) => {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            if let Some(items) = node.as_array_mut() {
                items.retain(|item| !has_key(item, &key));
            }
        }
        Element::Value(v) => {
            if let (Some(items), Ok(value)) =
                (node.as_array_mut(), serde_json::from_str::<Value>(v))
            {
                items.retain(|item| *item != value);
            }
        }
    }
}

fn find_keyed<'a>(node: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let key: Map<String, Value> = serde_json::from_str(key).ok()?;
    node.as_array_mut()?
        .iter_mut()
        .find(|item| has_key(item, &key))
}

/// What one apply needs to know besides the objects.
pub(crate) struct ApplyRequest<'a> {
    pub key: ManagerKey,
    pub api_version: &'a str,
    pub now: &'a str,
    pub force: bool,
    pub shape: Shape<'a>,
    pub scope: Scope,
}

/// Applies `config` to `live` (an empty object when creating): the merged object and
/// the new ownership, or a 409 naming each conflicting field and its owner.
pub(crate) fn apply(
    live: &Value,
    config: &Value,
    mut managers: Managers,
    req: &ApplyRequest<'_>,
) -> Result<(Value, Managers), ApiError> {
    let mut merged = merge(live, config, "", req.shape);
    let comparison = Comparison::of(live, &merged, req.shape, req.scope);
    let changed = comparison.changed();
    let mut conflicts: Vec<(ManagerKey, String, Path)> = Vec::new();
    for (k, m) in &managers {
        if *k == req.key {
            continue;
        }
        for path in m.set.intersection(&changed) {
            conflicts.push((k.clone(), m.api_version.clone(), path.clone()));
        }
    }
    if !conflicts.is_empty() && !req.force {
        return Err(conflict_error(&conflicts));
    }
    for (k, m) in managers.iter_mut() {
        if *k != req.key {
            m.set
                .retain(|p| !changed.contains(p) && !comparison.removed.contains(p));
        }
    }
    let applied = field_set(config, req.shape, req.scope);
    let (last, previous_time) = managers
        .remove(&req.key)
        .map(|m| (m.set, m.time))
        .unwrap_or_default();
    // Prune: what this manager applied before and no longer does, unless someone else
    // owns it or something beneath it.
    let kept: FieldSet = managers
        .values()
        .flat_map(|m| m.set.iter())
        .chain(applied.iter())
        .cloned()
        .collect();
    let doomed: Vec<&Path> = last
        .difference(&applied)
        .filter(|p| !kept.iter().any(|k| k.starts_with(p)))
        .collect();
    // Parents first: removing a list element removes its fields with it. Elements known
    // by index go last to first, so earlier removals do not shift later ones.
    let (by_index, by_name): (Vec<&Path>, Vec<&Path>) = doomed
        .into_iter()
        .partition(|p| matches!(p.last(), Some(Element::Index(_))));
    for path in by_name.into_iter().chain(by_index.into_iter().rev()) {
        remove(&mut merged, path);
    }
    if !applied.is_empty() {
        // An apply that changes nothing keeps the time too, so it writes nothing.
        let time = match previous_time {
            Some(time) if merged == *live => time,
            _ => req.now.to_string(),
        };
        managers.insert(
            req.key.clone(),
            Managed {
                api_version: req.api_version.to_string(),
                time: Some(time),
                set: applied,
            },
        );
    }
    managers.retain(|_, m| !m.set.is_empty());
    Ok((merged, managers))
}

/// How upstream names a manager in a conflict: `"kubectl-client-side-apply" using
/// apps/v1` for an update, just the name for an apply.
fn print_manager(key: &ManagerKey, api_version: &str) -> String {
    let mut out = format!("{:?}", key.manager);
    if !key.subresource.is_empty() {
        out.push_str(&format!(" with subresource {:?}", key.subresource));
    }
    if key.operation == "Update" {
        out.push_str(&format!(" using {api_version}"));
    }
    out
}

fn conflict_error(conflicts: &[(ManagerKey, String, Path)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(k, v, p)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {}", print_manager(k, v)),
                "field": path_string(p),
            })
        })
        .collect();
    let message = match conflicts {
        [(k, v, p)] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            print_manager(k, v),
            path_string(p)
        ),
        _ => {
            let mut lines = Vec::new();
            let mut managers: Vec<String> = conflicts
                .iter()
                .map(|(k, v, _)| print_manager(k, v))
                .collect();
            managers.dedup();
            for manager in managers {
                lines.push(format!("conflicts with {manager}:"));
                for (k, v, p) in conflicts {
                    if print_manager(k, v) == manager {
                        lines.push(format!("- {}", path_string(p)));
                    }
                }
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
    }
}

impl Registry {
    /// Server-side apply of `config` (the request body, YAML or JSON) by `manager`:
    /// creates the object when it does not exist (the bool says so).
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        config: Value,
        manager: &str,
        force: bool,
        opts: WriteOptions,
    ) -> Result<(Written, bool), ApiError> {
        let mut config = config;
        let Some(meta) = config
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        else {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON or YAML object",
            ));
        };
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {
                meta.insert("name".into(), json!(name));
            }
        }
        if meta.contains_key("managedFields") {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let (scope, subresource) = opts.part.ownership(r);
        let api_version = r.api_version();
        let now = now();
        let req = ApplyRequest {
            key: ManagerKey {
                manager: manager.to_string(),
                operation: "Apply".into(),
                subresource: subresource.into(),
            },
            api_version: &api_version,
            now: &now,
            force,
            shape: Shape::of(r),
            scope,
        };
        let opts = WriteOptions {
            applied: true,
            ..opts
        };
        for _ in 0..MAX_RETRIES {
            match self.stored(r, ns, name).await {
                Err(e) if e.code == 404 && opts.part == Part::Main => {
                    let (mut obj, managers) = apply(&json!({}), &config, Managers::new(), &req)?;
                    managed::encode(&mut obj, &managers);
                    match self.create(r, ns, obj, opts.clone()).await {
                        Err(e) if e.reason == "AlreadyExists" => continue,
                        other => return other.map(|w| (w, true)),
                    }
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            let written = self
                .guaranteed_update(r, ns, name, None, opts.clone(), |current| {
                    let managers = managed::decode(current).unwrap_or_default();
                    let mut live = current.clone();
                    if let Some(meta) = live.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("managedFields");
                    }
                    let (mut obj, managers) = apply(&live, &config, managers, &req)?;
                    managed::encode(&mut obj, &managers);
                    Ok(obj)
                })
                .await;
            return match written {
                // Deleted between the read and the write: apply creates it.
                Err(e) if e.code == 404 && opts.part == Part::Main => continue,
                other => other.map(|w| (w, false)),
            };
        }
        Err(ApiError::conflict(&subject(r, name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtin;

    fn key(manager: &str, operation: &str) -> ManagerKey {
        ManagerKey {
            manager: manager.into(),
            operation: operation.into(),
            subresource: String::new(),
        }
    }

    fn req<'a>(r: &'a crate::registry::Resource, manager: &str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest {
            key: key(manager, "Apply"),
            api_version: "apps/v1",
            now: "2026-01-01T00:00:00Z",
            force,
            shape: Shape::of(r),
            scope: Scope::NotStatus,
        }
    }

    fn deployment(replicas: i64, image: &str, extra_env: bool) -> Value {
        let mut env = vec![json!({"name": "A", "value": "1"})];
        if extra_env {
            env.push(json!({"name": "B", "value": "2"}));
        }
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "c", "image": image, "env": env}]}},
            },
        })
    }

    #[test]
    fn apply_owns_merges_conflicts_and_prunes() {
        let r = builtin("apps", "v1", "deployments").expect("deployments");
        let (obj, managers) = apply(
            &json!({}),
            &deployment(2, "a", true),
            Managers::new(),
            &req(r, "one", false),
        )
        .expect("create");
        let owned = &managers[&key("one", "Apply")].set;
        assert!(owned.contains(&vec![
            Element::Field("spec".into()),
            Element::Field("selector".into())
        ]));
        // Another manager changing a field "one" owns conflicts...
        let mut other = deployment(2, "b", true);
        other["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .expect("container")
            .remove("env");
        other["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("replicas");
        let err =
            apply(&obj, &other, managers.clone(), &req(r, "two", false)).expect_err("conflict");
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains(r#"conflict with "one": .spec.template.spec.containers[name="c"].image"#),
            "{}",
            err.message
        );
        // ...setting it to the same value shares it, and force takes it over.
        let (obj, managers) = apply(&obj, &other, managers, &req(r, "two", true)).expect("forced");
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["image"],
            "b"
        );
        let image = vec![
            Element::Field("spec".into()),
            Element::Field("template".into()),
            Element::Field("spec".into()),
            Element::Field("containers".into()),
            Element::Key(r#"{"name":"c"}"#.into()),
            Element::Field("image".into()),
        ];
        assert!(!managers[&key("one", "Apply")].set.contains(&image));
        assert!(managers[&key("two", "Apply")].set.contains(&image));
        // "one" stops applying env B and replicas: B goes, replicas goes (nobody else owns
        // it), env A stays.
        let mut fewer = deployment(2, "b", false);
        fewer["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("replicas");
        let (obj, _) = apply(&obj, &fewer, managers, &req(r, "one", false)).expect("prune");
        let env = &obj["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env, &json!([{"name": "A", "value": "1"}]));
        assert!(obj["spec"].get("replicas").is_none());
    }

    #[test]
    fn ports_are_told_apart_by_protocol_and_reapplying_changes_nothing() {
        let r = builtin("", "v1", "services").expect("services");
        let config = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"},
            "spec": {"selector": {"k8s-app": "dns"}, "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]},
        });
        let mut request = req(r, "one", false);
        request.scope = Scope::All;
        let (obj, managers) =
            apply(&json!({}), &config, Managers::new(), &request).expect("create");
        request.now = "2026-02-02T00:00:00Z";
        let (again, managers_again) =
            apply(&obj, &config, managers.clone(), &request).expect("again");
        assert_eq!(again, obj);
        assert_eq!(again["spec"]["ports"].as_array().map(Vec::len), Some(2));
        let time = |m: &Managers| m[&key("one", "Apply")].time.clone();
        assert_eq!(time(&managers), time(&managers_again));
        let fields = managed::encode_fields(&managers[&key("one", "Apply")].set);
        assert!(
            fields["f:spec"]["f:ports"]["k:{\"port\":53,\"protocol\":\"UDP\"}"].is_object(),
            "{fields}"
        );
        // The selector is owned whole.
        assert_eq!(fields["f:spec"]["f:selector"], json!({}));
    }

    #[test]
    fn new_keyed_elements_land_where_the_configuration_puts_them() {
        let r = builtin("apps", "v1", "deployments").expect("deployments");
        let live = deployment(1, "a", true);
        let mut config = live.clone();
        config["spec"]["template"]["spec"]["containers"][0]["env"] = json!([
            {"name": "FIRST", "value": "0"},
            {"name": "A", "value": "1"},
            {"name": "B", "value": "2"},
        ]);
        let (obj, _) =
            apply(&live, &config, Managers::new(), &req(r, "one", false)).expect("apply");
        let names: Vec<&str> = obj["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, ["FIRST", "A", "B"]);
    }
}
