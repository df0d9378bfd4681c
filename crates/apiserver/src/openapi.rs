//! OpenAPI v3: `/openapi/v3` lists one document per group version, and each document
//! describes every path with its operations and parameters, and every kind's schema.
//! kubectl reads the paths to learn that the server validates fields itself (the
//! `fieldValidation` parameter on PATCH), the schemas for `kubectl explain`, and the
//! list extensions (`x-kubernetes-patch-merge-key`, `x-kubernetes-list-type`) to compute
//! client-side apply patches.
//!
//! The schemas come from `k8s-openapi` (generated from upstream's own OpenAPI, with the
//! descriptions); the extensions it leaves out are added here from the catalog's patch
//! strategies, the same table strategic merge patch and server-side apply use.

use serde_json::{Map, Value, json};

use crate::registry::{CATALOG, Resource};

/// The group versions served, as OpenAPI v3 path keys (`api/v1`, `apis/GROUP/VERSION`).
fn group_versions() -> Vec<(String, &'static str, &'static str)> {
    let mut out: Vec<(String, &str, &str)> = Vec::new();
    for r in CATALOG {
        let key = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        if !out.iter().any(|(k, _, _)| *k == key) {
            out.push((key, r.group, r.version));
        }
    }
    out
}

/// The documents only change with the binary: built once.
static DOCUMENTS: std::sync::OnceLock<(Value, Map<String, Value>)> = std::sync::OnceLock::new();

fn documents() -> &'static (Value, Map<String, Value>) {
    DOCUMENTS.get_or_init(|| {
        let documents: Map<String, Value> = group_versions()
            .into_iter()
            .filter_map(|(key, _, _)| build_document(&key).map(|d| (key, d)))
            .collect();
        (build_root(&documents), documents)
    })
}

pub(crate) fn root() -> Value {
    documents().0.clone()
}

pub(crate) fn document(key: &str) -> Option<Value> {
    documents().1.get(key).cloned()
}

/// `/openapi/v3`: each document's URL, with a hash of its content so clients may cache it.
fn build_root(documents: &Map<String, Value>) -> Value {
    let paths: Map<String, Value> = documents
        .iter()
        .map(|(key, doc)| {
            let hash = fnv1a(doc.to_string().as_bytes());
            let url = format!("/openapi/v3/{key}?hash={hash:016X}");
            (key.clone(), json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn build_document(key: &str) -> Option<Value> {
    let (_, group, version) = group_versions().into_iter().find(|(k, _, _)| k == key)?;
    let mut paths = Map::new();
    for r in CATALOG
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = format!("/{key}");
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let (collection, item) = if r.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", r.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            )
        } else {
            (
                format!("{base}/{}", r.plural),
                format!("{base}/{}/{{name}}", r.plural),
            )
        };
        paths.insert(
            collection,
            json!({
                "get": operation(r, "list", &gvk, &[]),
                "post": operation(r, "create", &gvk, &["dryRun", "fieldManager", "fieldValidation"]),
                "delete": operation(r, "deletecollection", &gvk, &["dryRun"]),
            }),
        );
        paths.insert(
            item,
            json!({
                "get": operation(r, "read", &gvk, &[]),
                "put": operation(r, "replace", &gvk, &["dryRun", "fieldManager", "fieldValidation"]),
                "patch": operation(r, "patch", &gvk, &["dryRun", "fieldManager", "fieldValidation", "force"]),
                "delete": operation(r, "delete", &gvk, &["dryRun"]),
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::KUBERNETES_VERSION.0, crate::KUBERNETES_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas_for(group, version)},
    }))
}

/// Every kind's schema and those it references, by upstream name
/// (`io.k8s.api.core.v1.Pod`), annotated with the Kubernetes extensions.
static DEFINITIONS: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

const REF_PREFIX: &str = "#/components/schemas/";

fn definitions() -> &'static Map<String, Value> {
    DEFINITIONS.get_or_init(|| {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let roots: Vec<(&Resource, Value)> = CATALOG
            .iter()
            .map(|r| (r, (r.schema)(&mut generator)))
            .collect();
        // Kinds only a subresource or a review endpoint takes.
        {
            use k8s_openapi::api::{authentication::v1 as authn, authorization::v1 as authz};
            let _ = generator.subschema_for::<authn::TokenRequest>();
            let _ = generator.subschema_for::<authn::TokenReview>();
            let _ = generator.subschema_for::<authn::SelfSubjectReview>();
            let _ = generator.subschema_for::<authz::SubjectAccessReview>();
            let _ = generator.subschema_for::<authz::LocalSubjectAccessReview>();
            let _ = generator.subschema_for::<authz::SelfSubjectAccessReview>();
            let _ = generator.subschema_for::<authz::SelfSubjectRulesReview>();
        }
        let mut defs = generator.take_definitions(true);
        for (r, reference) in roots {
            let Some(name) = ref_name(&reference) else {
                continue;
            };
            if let Some(def) = defs.get_mut(&name).and_then(Value::as_object_mut) {
                let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
                def.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
            }
            let strategies = crate::registry::smp::METADATA
                .iter()
                .chain(r.patch_strategies.iter());
            for (path, key) in strategies {
                annotate_list(&mut defs, &name, path, *key);
            }
        }
        defs
    })
}

/// `/openapi/v2` (Swagger 2.0): every path and every schema in one document, for tools
/// that still read it (kubectl validates `kind: List` files with it). Built once.
pub(crate) fn v2() -> &'static Value {
    static V2: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    V2.get_or_init(|| {
        let mut paths = Map::new();
        for doc in documents().1.values() {
            if let Some(p) = doc["paths"].as_object() {
                for (path, item) in p {
                    let mut item = item.clone();
                    // v2 parameters carry their type directly.
                    for op in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                        for param in op["parameters"].as_array_mut().into_iter().flatten() {
                            if let Some(schema) = param.as_object_mut().and_then(|p| p.remove("schema")) {
                                param["type"] = schema["type"].clone();
                                param["uniqueItems"] = schema["uniqueItems"].clone();
                            }
                        }
                    }
                    paths.insert(path.clone(), item);
                }
            }
        }
        let mut definitions = serde_json::to_string(definitions())
            .map(|s| s.replace(REF_PREFIX, "#/definitions/"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .unwrap_or_else(|| json!({}));
        inline_single_all_of(&mut definitions);
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::KUBERNETES_VERSION.0, crate::KUBERNETES_VERSION.1)},
            "paths": paths,
            "definitions": definitions,
        })
    })
}

/// Swagger 2.0 puts a description next to `$ref` (OpenAPI 3.0 needs `allOf` for that),
/// and v2 readers only follow `$ref`.
fn inline_single_all_of(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let single = map
                .get("allOf")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].get("$ref"))
                .cloned();
            if let Some(reference) = single {
                map.remove("allOf");
                map.insert("$ref".into(), reference);
            }
            map.values_mut().for_each(inline_single_all_of);
        }
        Value::Array(items) => items.iter_mut().for_each(inline_single_all_of),
        _ => {}
    }
}

/// `/openapi/v2` as gnostic protobuf, the form client-go asks for. Built once.
pub(crate) fn v2_protobuf() -> &'static [u8] {
    static V2: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    V2.get_or_init(|| crate::proto::openapi_v2::encode(v2()))
}

/// Every schema the server knows, by upstream name.
pub(crate) fn all_definitions() -> &'static Map<String, Value> {
    definitions()
}

/// The definition a schema points at (`$ref`, or the single `allOf` OpenAPI 3.0 uses
/// when the reference has a description of its own).
fn ref_name(schema: &Value) -> Option<String> {
    let reference = schema
        .get("$ref")
        .or_else(|| schema.pointer("/allOf/0/$ref"))?
        .as_str()?;
    reference.strip_prefix(REF_PREFIX).map(str::to_string)
}

/// Marks the list at `path` (field names from the kind's root; list elements not
/// counted) with its strategy: merged by `key`, or a set of scalars.
fn annotate_list(defs: &mut Map<String, Value>, root: &str, path: &str, key: Option<&str>) {
    let mut name = root.to_string();
    let mut fields = path.split('.').peekable();
    while let Some(field) = fields.next() {
        let Some(property) = defs
            .get(&name)
            .and_then(|d| d.pointer(&format!("/properties/{field}")))
        else {
            return;
        };
        if fields.peek().is_some() {
            let target = property.get("items").unwrap_or(property);
            match ref_name(target) {
                Some(next) => name = next,
                None => return,
            }
            continue;
        }
        let Some(property) = defs
            .get_mut(&name)
            .and_then(|d| d.pointer_mut(&format!("/properties/{field}")))
            .and_then(Value::as_object_mut)
        else {
            return;
        };
        property.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        match key {
            Some(key) => {
                property.insert("x-kubernetes-patch-merge-key".into(), json!(key));
                property.insert("x-kubernetes-list-type".into(), json!("map"));
                property.insert("x-kubernetes-list-map-keys".into(), json!([key]));
            }
            None => {
                property.insert("x-kubernetes-list-type".into(), json!("set"));
            }
        }
    }
}

/// The schemas one group version's document carries: its kinds' and everything they
/// reference.
fn schemas_for(group: &str, version: &str) -> Value {
    let defs = definitions();
    let mut wanted: Vec<String> = CATALOG
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .filter_map(|r| {
            defs.iter()
                .find(|(_, d)| {
                    d["x-kubernetes-group-version-kind"]
                        .as_array()
                        .is_some_and(|g| {
                            g.iter().any(|g| {
                                g["kind"] == r.kind
                                    && g["group"] == r.group
                                    && g["version"] == r.version
                            })
                        })
                })
                .map(|(n, _)| n.clone())
        })
        .collect();
    let mut out = Map::new();
    while let Some(name) = wanted.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(def) = defs.get(&name) else {
            continue;
        };
        collect_refs(def, &mut wanted);
        out.insert(name, def.clone());
    }
    Value::Object(out)
}

fn collect_refs(schema: &Value, into: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                match (
                    k.as_str(),
                    v.as_str().and_then(|r| r.strip_prefix(REF_PREFIX)),
                ) {
                    ("$ref", Some(name)) => into.push(name.to_string()),
                    _ => collect_refs(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

fn operation(r: &Resource, action: &str, gvk: &Value, query: &[&str]) -> Value {
    let parameters: Vec<Value> = query
        .iter()
        .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    json!({
        "operationId": format!("{action}{}", r.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": if action == "read" { "get" } else { action },
        "x-kubernetes-group-version-kind": gvk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swagger_v2_has_every_path_and_definition_with_v2_references() {
        let doc = v2();
        assert_eq!(doc["swagger"], "2.0");
        assert!(
            doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"].is_object()
        );
        assert!(doc["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
        let text = doc.to_string();
        assert!(!text.contains("#/components/schemas/"));
        assert!(text.contains("#/definitions/io.k8s.api.core.v1.PodSpec"));
        let spec = &doc["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert_eq!(spec["$ref"], "#/definitions/io.k8s.api.core.v1.PodSpec");
        assert!(spec.get("allOf").is_none());
    }

    #[test]
    fn kinds_have_schemas_with_their_group_version_kind_and_list_extensions() {
        let doc = document("apis/apps/v1").expect("apps/v1");
        let schemas = &doc["components"]["schemas"];
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(deployment["description"].as_str().is_some());
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        let ports = &schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        let finalizers =
            &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["finalizers"];
        assert_eq!(finalizers["x-kubernetes-list-type"], "set");
        // Every reference resolves inside the document.
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for name in refs {
            assert!(schemas.get(&name).is_some(), "{name} missing");
        }
    }

    #[test]
    fn every_group_version_has_a_document_with_field_validation_on_patch() {
        let root = root();
        let paths = root["paths"].as_object().expect("paths");
        assert!(paths.contains_key("api/v1"));
        for key in paths.keys() {
            let doc = document(key).expect("document");
            let patch =
                doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"].clone();
            if key == "api/v1" {
                assert_eq!(
                    patch["x-kubernetes-group-version-kind"]["kind"],
                    "ConfigMap"
                );
                assert!(
                    patch["parameters"]
                        .as_array()
                        .expect("params")
                        .iter()
                        .any(|p| p["name"] == "fieldValidation")
                );
            }
        }
    }
}
