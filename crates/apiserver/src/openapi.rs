//! OpenAPI v3 discovery, as far as clients need it today: `/openapi/v3` lists one
//! document per group version, and each document describes every path with its
//! operations, parameters and `x-kubernetes-group-version-kind`. kubectl reads it to
//! learn that the server validates fields itself (the `fieldValidation` parameter on
//! PATCH), and then sends `fieldValidation=Strict` instead of validating client-side.
//! Schemas for `kubectl explain` are not produced yet (docs/status.md).

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
        "components": {"schemas": {}},
    }))
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
