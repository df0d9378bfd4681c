//! Strategic merge patch, the patch type `kubectl apply`, `edit` and `patch` send for
//! built-in kinds (apimachinery's `strategicpatch`).
//!
//! Like a merge patch, except that a list field may declare a strategy: `merge` lists of
//! objects are merged element by element by their merge key (`containers` by `name`),
//! `merge` lists of scalars are unions (`metadata.finalizers`), and every other list is
//! replaced. Directives refine it: `$patch: replace|delete|merge` on a map or list
//! element, `$retainKeys`, `$deleteFromPrimitiveList/FIELD`, `$setElementOrder/FIELD`.
//! The strategies are a property of the kind's Go types upstream; here each kind lists
//! them in its catalog row ([`Strategies`]).

use serde_json::{Map, Value};

/// A field path (field names from the object's root, list elements not counted) and its
/// list strategy: `Some(key)` merges objects by that key, `None` unions scalars.
pub(crate) type Strategies = &'static [(&'static str, Option<&'static str>)];

/// Strategies every kind has, through ObjectMeta.
pub(crate) const METADATA: Strategies = &[
    ("metadata.finalizers", None),
    ("metadata.ownerReferences", Some("uid")),
];

const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PatchError(pub String);

/// Applies `patch` to `original` under the kind's `strategies`.
pub(crate) fn apply(
    original: &Value,
    patch: &Value,
    strategies: Strategies,
) -> Result<Value, PatchError> {
    let lookup = |path: &str| -> Option<Option<&'static str>> {
        METADATA
            .iter()
            .chain(strategies.iter())
            .find(|(p, _)| *p == path)
            .map(|(_, k)| *k)
    };
    merge_value(Some(original), patch, "", &lookup).map(|v| v.unwrap_or(Value::Null))
}

type Lookup<'a> = dyn Fn(&str) -> Option<Option<&'static str>> + 'a;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merges a patch value into an original value; `None` means "delete this field".
fn merge_value(
    original: Option<&Value>,
    patch: &Value,
    path: &str,
    lookup: &Lookup<'_>,
) -> Result<Option<Value>, PatchError> {
    match patch {
        Value::Null => Ok(None),
        Value::Object(p) => {
            let empty = Map::new();
            let o = original.and_then(Value::as_object).unwrap_or(&empty);
            merge_map(o, p, path, lookup)
        }
        other => Ok(Some(other.clone())),
    }
}

fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &str,
    lookup: &Lookup<'_>,
) -> Result<Option<Value>, PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            return Ok(Some(Value::Object(strip_directives(replaced))));
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError(format!("Unknown patch type: {other}"))),
    }
    let mut out = original.clone();
    if let Some(retain) = patch.get("$retainKeys") {
        let keys: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keys.contains(&k.as_str()));
    }
    // Removals from scalar lists first, so a patch may remove and add in one go.
    for (key, values) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let remove = values
                .as_array()
                .ok_or_else(|| PatchError(format!("{key} must be a list")))?;
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        let field_path = join(path, key);
        let merged = match (out.get(key), value) {
            (Some(Value::Array(o)), Value::Array(p)) => match lookup(&field_path) {
                Some(merge_key) => Some(Value::Array(merge_list(
                    o,
                    p,
                    merge_key,
                    &field_path,
                    lookup,
                )?)),
                None => Some(Value::Array(p.iter().cloned().map(strip_value).collect())),
            },
            (None, Value::Array(p)) if lookup(&field_path).is_some() => Some(Value::Array(
                merge_list(&[], p, lookup(&field_path).flatten(), &field_path, lookup)?,
            )),
            (current, value) => merge_value(current, value, &field_path, lookup)?,
        };
        match merged {
            Some(v) => {
                out.insert(key.clone(), v);
            }
            None => {
                out.remove(key);
            }
        }
    }
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            let order = order
                .as_array()
                .ok_or_else(|| PatchError(format!("{key} must be a list")))?;
            let merge_key = lookup(&join(path, field)).flatten();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                reorder(list, order, merge_key);
            }
        }
    }
    Ok(Some(Value::Object(out)))
}

/// Merges a `merge`-strategy list: objects by `merge_key`, scalars as a union.
fn merge_list(
    original: &[Value],
    patch: &[Value],
    merge_key: Option<&str>,
    path: &str,
    lookup: &Lookup<'_>,
) -> Result<Vec<Value>, PatchError> {
    let Some(merge_key) = merge_key else {
        let mut out = original.to_vec();
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(out);
    };
    // A `$patch: replace` element replaces the whole list with the patch's elements.
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .map(strip_value)
            .collect());
    }
    let mut out = original.to_vec();
    for element in patch {
        let key = element.get(merge_key).ok_or_else(|| {
            PatchError(format!(
                "map: {element} does not contain declared merge key: {merge_key}"
            ))
        })?;
        let position = out.iter().position(|o| o.get(merge_key) == Some(key));
        let delete = element.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(merged) = merge_value(Some(&out[i]), element, path, lookup)? {
                    out[i] = merged;
                }
            }
            (None, false) => {
                if let Some(added) = merge_value(None, element, path, lookup)? {
                    out.push(added);
                }
            }
        }
    }
    Ok(out)
}

/// Orders `list` as `order` lists its elements (by merge key for objects); elements the
/// order does not name keep their relative order after the named ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], merge_key: Option<&str>) {
    let key_of = |v: &Value| -> Value {
        match merge_key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&key_of).collect();
    let mut ordered: Vec<Value> = Vec::with_capacity(list.len());
    for w in &wanted {
        if let Some(i) = list.iter().position(|v| key_of(v) == *w) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

/// Removes directives from a value that is taken as a whole.
fn strip_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        other => other,
    }
}

fn strip_directives(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, strip_value(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD: Strategies = &[
        ("spec.containers", Some("name")),
        ("spec.containers.env", Some("name")),
    ];

    fn patch(o: Value, p: Value) -> Value {
        apply(&o, &p, POD).expect("patch applies")
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        assert_eq!(
            patch(
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
                json!({"b": {"c": null, "e": 4}})
            ),
            json!({"a": 1, "b": {"d": 3, "e": 4}})
        );
    }

    #[test]
    fn lists_with_merge_keys_merge_by_key() {
        let original = json!({"spec": {"containers": [
            {"name": "app", "image": "v1", "env": [{"name": "A", "value": "1"}]},
            {"name": "sidecar", "image": "s1"},
        ]}});
        let out = patch(
            original,
            json!({"spec": {"containers": [
                {"name": "app", "image": "v2", "env": [{"name": "B", "value": "2"}]},
            ]}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "app", "image": "v2", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "s1"},
            ]}})
        );
    }

    #[test]
    fn patch_directives_delete_and_replace() {
        let original =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "m": {"x": 1}});
        assert_eq!(
            patch(
                original.clone(),
                json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})
            ),
            json!({"spec": {"containers": [{"name": "b"}]}, "m": {"x": 1}})
        );
        assert_eq!(
            patch(
                original.clone(),
                json!({"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}})
            ),
            json!({"spec": {"containers": [{"name": "c"}]}, "m": {"x": 1}})
        );
        assert_eq!(
            patch(original, json!({"m": {"$patch": "replace", "y": 2}})),
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "m": {"y": 2}})
        );
    }

    #[test]
    fn scalar_lists_with_a_strategy_are_unions_others_are_replaced() {
        let original = json!({"metadata": {"finalizers": ["a", "b"]}, "list": [1, 2]});
        assert_eq!(
            patch(
                original.clone(),
                json!({"metadata": {"finalizers": ["c", "a"]}, "list": [3]})
            ),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}, "list": [3]})
        );
        assert_eq!(
            patch(
                original,
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
            ),
            json!({"metadata": {"finalizers": ["b"]}, "list": [1, 2]})
        );
    }

    #[test]
    fn set_element_order_and_retain_keys() {
        let original = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "strategy": {"type": "Rolling", "rolling": {"x": 1}}});
        let out = patch(
            original,
            json!({
                "spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "b", "image": "i"}]},
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            }),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "b", "image": "i"}, {"name": "a"}]}, "strategy": {"type": "Recreate"}})
        );
    }

    #[test]
    fn a_merge_list_element_without_its_key_is_an_error() {
        let err = apply(
            &json!({"spec": {"containers": []}}),
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            POD,
        );
        assert!(err.is_err());
    }
}
