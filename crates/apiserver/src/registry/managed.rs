//! Field ownership (`metadata.managedFields`), as structured-merge-diff tracks it
//! upstream: every write records which manager set which fields, so server-side apply
//! can tell a manager's own fields from someone else's (a conflict) and remove the fields
//! a manager stops applying.
//!
//! An object's fields are paths: field names, list elements by their merge key
//! (`k:{"name":"web"}`), set elements by value (`v:"x"`), or by index when a list has
//! no key. The list strategies are the catalog's patch strategies (the same table
//! strategic merge patch and the OpenAPI extensions use); other lists are atomic, owned
//! as a whole, as are label selectors. Ownership is serialised as upstream's `FieldsV1`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::Resource;
use super::smp::METADATA;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Element {
    Field(String),
    /// A list element by its key fields: canonical JSON of an object (sorted keys).
    Key(String),
    /// A set element by value: its JSON.
    Value(String),
    Index(usize),
}

pub(crate) type Path = Vec<Element>;
pub(crate) type FieldSet = BTreeSet<Path>;

/// How a list's elements are identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// By these fields (upstream's `listMapKey`s).
    Map(&'static [&'static str]),
    Set,
    Atomic,
}

/// Lists whose elements server-side apply tells apart by more than the strategic merge
/// patch key: ports by number and protocol (DNS serves 53/UDP and 53/TCP), spread
/// constraints by key and policy. Matched on the end of the field path.
const MULTI_KEYS: &[(&str, &[&str])] = &[
    ("containers.ports", &["containerPort", "protocol"]),
    ("initContainers.ports", &["containerPort", "protocol"]),
    (
        "topologySpreadConstraints",
        &["topologyKey", "whenUnsatisfiable"],
    ),
];

/// Key fields upstream defaults, so an element without one still matches.
fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| json!("TCP"))
}

/// Struct and map fields that are atomic upstream (`+structType=atomic` label
/// selectors, `+mapType=atomic` selectors and node selectors): one owner for all of it.
const ATOMIC_FIELDS: &[&str] = &[
    "selector",
    "labelSelector",
    "namespaceSelector",
    "nodeSelector",
];

/// The shape knowledge of one kind: its list strategies and atomic structs.
#[derive(Clone, Copy)]
pub(crate) struct Shape<'a> {
    r: &'a Resource,
}

impl<'a> Shape<'a> {
    pub fn of(r: &'a Resource) -> Self {
        Shape { r }
    }

    pub fn list(&self, path: &str) -> ListKind {
        if self.r.kind == "Service" && path == "spec.ports" {
            return ListKind::Map(&["port", "protocol"]);
        }
        if let Some((_, keys)) = MULTI_KEYS.iter().find(|(suffix, _)| {
            path.strip_suffix(suffix)
                .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
        }) {
            return ListKind::Map(keys);
        }
        METADATA
            .iter()
            .chain(self.r.patch_strategies.iter())
            .find(|(p, _)| *p == path)
            .map_or(ListKind::Atomic, |(_, key)| match key {
                Some(key) => ListKind::Map(std::slice::from_ref(key)),
                None => ListKind::Set,
            })
    }

    pub fn atomic_struct(&self, path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        ATOMIC_FIELDS.contains(&last)
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The canonical key of a list element: `{"name":"web"}`,
/// `{"containerPort":53,"protocol":"UDP"}` (fields sorted). `None` when a key field is
/// missing and has no default.
pub(crate) fn element_key(item: &Value, keys: &[&str]) -> Option<String> {
    let mut fields: Vec<(&str, Value)> = Vec::new();
    for key in keys {
        let value = item.get(*key).cloned().or_else(|| key_default(key))?;
        fields.push((key, value));
    }
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String((*k).into())))
        .collect();
    Some(format!("{{{}}}", body.join(",")))
}

/// Whether a list element has the key `key` (canonical JSON), defaults included.
pub(crate) fn has_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter()
        .all(|(f, v)| item.get(f).cloned().or_else(|| key_default(f)).as_ref() == Some(v))
}

/// Fields the server owns or that identify the object: never anyone's.
const STRIPPED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// Which top-level part of an object a write's ownership covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole object.
    All,
    /// All but `status` (the main resource of a kind with a status subresource).
    NotStatus,
    /// Only `status` (the status subresource).
    Status,
}

/// Every owned leaf of an object with its value (element membership has `Null`).
pub(crate) fn leaves(obj: &Value, shape: Shape<'_>, scope: Scope) -> BTreeMap<Path, Value> {
    let mut out = BTreeMap::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        let keep = match (scope, k.as_str()) {
            (_, "apiVersion" | "kind") => false,
            (Scope::Status, field) => field == "status",
            (Scope::NotStatus, field) => field != "status",
            (Scope::All, _) => true,
        };
        if !keep {
            continue;
        }
        let path = vec![Element::Field(k.clone())];
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                for (mk, mv) in meta {
                    if STRIPPED_META.contains(&mk.as_str()) {
                        continue;
                    }
                    let mut p = path.clone();
                    p.push(Element::Field(mk.clone()));
                    walk(mv, &join("metadata", mk), p, shape, &mut out);
                }
            }
            continue;
        }
        walk(v, k, path, shape, &mut out);
    }
    out
}

fn walk(
    v: &Value,
    field_path: &str,
    path: Path,
    shape: Shape<'_>,
    out: &mut BTreeMap<Path, Value>,
) {
    match v {
        Value::Object(map) if !map.is_empty() && !shape.atomic_struct(field_path) => {
            for (k, child) in map {
                let mut p = path.clone();
                p.push(Element::Field(k.clone()));
                walk(child, &join(field_path, k), p, shape, out);
            }
        }
        Value::Array(items) if !items.is_empty() => match shape.list(field_path) {
            ListKind::Atomic => {
                out.insert(path, v.clone());
            }
            ListKind::Set => {
                for item in items {
                    let mut p = path.clone();
                    p.push(Element::Value(item.to_string()));
                    out.insert(p, Value::Null);
                }
            }
            ListKind::Map(keys) => {
                for (i, item) in items.iter().enumerate() {
                    let mut p = path.clone();
                    match element_key(item, keys) {
                        Some(k) => p.push(Element::Key(k)),
                        None => p.push(Element::Index(i)),
                    }
                    out.insert(p.clone(), Value::Null);
                    if let Some(fields) = item.as_object() {
                        for (k, child) in fields {
                            let mut cp = p.clone();
                            cp.push(Element::Field(k.clone()));
                            walk(child, &join(field_path, k), cp, shape, out);
                        }
                    }
                }
            }
        },
        _ => {
            out.insert(path, v.clone());
        }
    }
}

pub(crate) fn field_set(obj: &Value, shape: Shape<'_>, scope: Scope) -> FieldSet {
    leaves(obj, shape, scope).into_keys().collect()
}

/// What changed between two versions of an object.
#[derive(Default)]
pub(crate) struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    pub fn of(old: &Value, new: &Value, shape: Shape<'_>, scope: Scope) -> Self {
        let o = leaves(old, shape, scope);
        let n = leaves(new, shape, scope);
        let mut c = Comparison::default();
        for (path, value) in &n {
            match o.get(path) {
                None => {
                    c.added.insert(path.clone());
                }
                Some(old) if old != value => {
                    c.modified.insert(path.clone());
                }
                Some(_) => {}
            }
        }
        c.removed = o.into_keys().filter(|p| !n.contains_key(p)).collect();
        c
    }

    pub fn changed(&self) -> FieldSet {
        self.added.union(&self.modified).cloned().collect()
    }
}

/// A manager's identity: its name, the operation (`Apply` or `Update`), and the
/// subresource it wrote through.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ManagerKey {
    pub manager: String,
    pub operation: String,
    pub subresource: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Managed {
    pub api_version: String,
    pub time: Option<String>,
    pub set: FieldSet,
}

pub(crate) type Managers = BTreeMap<ManagerKey, Managed>;

/// The managers recorded in an object's `metadata.managedFields`. Entries this server
/// cannot read are dropped (upstream resets them too).
pub(crate) fn decode(obj: &Value) -> Option<Managers> {
    let entries = obj.pointer("/metadata/managedFields")?.as_array()?;
    let mut out = Managers::new();
    for entry in entries {
        let Some(manager) = entry.get("manager").and_then(Value::as_str) else {
            continue;
        };
        let key = ManagerKey {
            manager: manager.to_string(),
            operation: str_field(entry, "operation"),
            subresource: str_field(entry, "subresource"),
        };
        let mut set = FieldSet::new();
        if let Some(fields) = entry.get("fieldsV1") {
            decode_fields(fields, &mut Vec::new(), &mut set);
        }
        out.insert(
            key,
            Managed {
                api_version: str_field(entry, "apiVersion"),
                time: entry
                    .get("time")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                set,
            },
        );
    }
    Some(out)
}

fn str_field(entry: &Value, field: &str) -> String {
    entry
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn decode_fields(node: &Value, path: &mut Path, out: &mut FieldSet) {
    let Some(map) = node.as_object() else {
        return;
    };
    if map.is_empty() && !path.is_empty() {
        out.insert(path.clone());
        return;
    }
    for (k, child) in map {
        if k == "." {
            out.insert(path.clone());
            continue;
        }
        let element = match k.split_once(':') {
            Some(("f", name)) => Element::Field(name.to_string()),
            Some(("k", key)) => Element::Key(canonical(key)),
            Some(("v", value)) => Element::Value(canonical(value)),
            Some(("i", index)) => match index.parse() {
                Ok(i) => Element::Index(i),
                Err(_) => continue,
            },
            _ => continue,
        };
        path.push(element);
        decode_fields(child, path, out);
        path.pop();
    }
}

/// JSON re-encoded compactly with sorted keys, so keys compare equal however a client
/// spelled them.
fn canonical(json: &str) -> String {
    serde_json::from_str::<Value>(json).map_or_else(|_| json.to_string(), |v| v.to_string())
}

/// `FieldsV1`: a tree of `f:`/`k:`/`v:`/`i:` steps, `.` marking a member that also has
/// children.
pub(crate) fn encode_fields(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    fn to_json(node: &Node) -> Value {
        let mut map: Map<String, Value> = node
            .children
            .iter()
            .map(|(k, child)| (k.clone(), to_json(child)))
            .collect();
        if node.member && !map.is_empty() {
            map.insert(".".into(), json!({}));
        }
        Value::Object(map)
    }
    let mut root = Node::default();
    for path in set {
        let mut node = &mut root;
        for element in path {
            node = node.children.entry(step(element)).or_default();
        }
        node.member = true;
    }
    to_json(&root)
}

fn step(element: &Element) -> String {
    match element {
        Element::Field(f) => format!("f:{f}"),
        Element::Key(k) => format!("k:{k}"),
        Element::Value(v) => format!("v:{v}"),
        Element::Index(i) => format!("i:{i}"),
    }
}

/// Writes the managers into `metadata.managedFields` (removed when there are none), in
/// upstream's order: by operation, time, then manager.
pub(crate) fn encode(obj: &mut Value, managers: &Managers) {
    let mut entries: Vec<(&ManagerKey, &Managed)> =
        managers.iter().filter(|(_, m)| !m.set.is_empty()).collect();
    entries.sort_by(|(a, am), (b, bm)| {
        (&a.operation, &am.time, &a.manager, &a.subresource).cmp(&(
            &b.operation,
            &bm.time,
            &b.manager,
            &b.subresource,
        ))
    });
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(key, m)| {
            let mut entry = json!({
                "manager": key.manager,
                "operation": key.operation,
                "apiVersion": m.api_version,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode_fields(&m.set),
            });
            if let Some(time) = &m.time {
                entry["time"] = json!(time);
            }
            if !key.subresource.is_empty() {
                entry["subresource"] = json!(key.subresource);
            }
            entry
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(entries));
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="web"].image`.
pub(crate) fn path_string(path: &Path) -> String {
    let mut out = String::new();
    for element in path {
        match element {
            Element::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Element::Key(k) => {
                let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                out.push_str(&format!("[{}]", fields.join(",")));
            }
            Element::Value(v) => out.push_str(&format!("[={v}]")),
            Element::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Records an ordinary write (create, update, patch) by `manager`: it now owns what it
/// added or changed; others lose what it changed or removed.
pub(crate) fn track_update(
    managers: &mut Managers,
    comparison: &Comparison,
    key: ManagerKey,
    api_version: &str,
    now: &str,
) {
    let changed = comparison.changed();
    for (k, m) in managers.iter_mut() {
        if *k != key {
            m.set
                .retain(|p| !changed.contains(p) && !comparison.removed.contains(p));
        }
    }
    let entry = managers.entry(key).or_insert_with(|| Managed {
        api_version: api_version.to_string(),
        time: None,
        set: FieldSet::new(),
    });
    let touched = !changed.is_empty() || !comparison.removed.is_empty();
    entry.set.retain(|p| !comparison.removed.contains(p));
    entry.set.extend(changed);
    if touched || entry.time.is_none() {
        entry.time = Some(now.to_string());
        entry.api_version = api_version.to_string();
    }
    managers.retain(|_, m| !m.set.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trips_with_members_that_have_children() {
        let set: FieldSet = [
            vec![Element::Field("data".into()), Element::Field("a".into())],
            vec![
                Element::Field("spec".into()),
                Element::Field("containers".into()),
                Element::Key(r#"{"name":"web"}"#.into()),
            ],
            vec![
                Element::Field("spec".into()),
                Element::Field("containers".into()),
                Element::Key(r#"{"name":"web"}"#.into()),
                Element::Field("image".into()),
            ],
            vec![
                Element::Field("metadata".into()),
                Element::Field("finalizers".into()),
                Element::Value(r#""x""#.into()),
            ],
        ]
        .into_iter()
        .collect();
        let encoded = encode_fields(&set);
        assert_eq!(
            encoded,
            json!({
                "f:data": {"f:a": {}},
                "f:metadata": {"f:finalizers": {"v:\"x\"": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}},
            })
        );
        let mut decoded = FieldSet::new();
        decode_fields(&encoded, &mut Vec::new(), &mut decoded);
        assert_eq!(decoded, set);
        let image = set.iter().find(|p| p.len() == 4).cloned().expect("path");
        assert_eq!(path_string(&image), ".spec.containers[name=\"web\"].image");
    }
}
