//! `/openapi/v2` in protobuf: the form client-go asks for (gnostic's `openapi.v2.Document`),
//! which kubectl reads to validate objects client-side when the server cannot
//! (`kind: List` files, for example). Only what clients read is encoded: the title and
//! version, and every definition with its type, properties, items, references,
//! description, required fields and `x-kubernetes-*` extensions.
//!
//! Field numbers follow gnostic's OpenAPIv2.proto (package `openapi.v2`).

use serde_json::Value;

/// Protobuf encoding, written by hand: a handful of message types.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u32, build: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        build(&mut inner);
        self.bytes(field, &inner.0);
    }

    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.varint(u64::from(field) << 3);
            self.varint(1);
        }
    }
}

/// The gnostic Document for a Swagger 2.0 JSON document.
pub(crate) fn encode(doc: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    w.message(2, |info| {
        info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
        info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    });
    // Paths are left empty: clients read the definitions.
    w.message(8, |_| {});
    if let Some(definitions) = doc["definitions"].as_object() {
        w.message(9, |defs| {
            for (name, schema) in definitions {
                defs.message(1, |named| named_schema(named, name, schema));
            }
        });
    }
    w.0
}

/// `NamedSchema { name = 1; value = 2 }`.
fn named_schema(w: &mut Writer, name: &str, schema: &Value) {
    w.string(1, name);
    w.message(2, |s| encode_schema(s, schema));
}

/// `Schema`, the fields clients use.
fn encode_schema(w: &mut Writer, schema: &Value) {
    let Some(map) = schema.as_object() else {
        return;
    };
    w.string(
        1,
        map.get("$ref").and_then(Value::as_str).unwrap_or_default(),
    );
    w.string(
        2,
        map.get("format")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    w.string(
        3,
        map.get("title").and_then(Value::as_str).unwrap_or_default(),
    );
    w.string(
        4,
        map.get("description")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    for required in map
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = required.as_str() {
            w.bytes(19, r.as_bytes());
        }
    }
    for value in map
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(20, |any| any.string(2, &value.to_string()));
    }
    match map.get("additionalProperties") {
        Some(Value::Bool(b)) => w.message(21, |item| item.boolean(2, *b)),
        Some(schema @ Value::Object(_)) => {
            w.message(21, |item| item.message(1, |s| encode_schema(s, schema)));
        }
        _ => {}
    }
    let types: Vec<&str> = match map.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        w.message(22, |item| {
            for t in types {
                item.bytes(1, t.as_bytes());
            }
        });
    }
    match map.get("items") {
        Some(items @ Value::Object(_)) => {
            w.message(23, |item| item.message(1, |s| encode_schema(s, items)));
        }
        Some(Value::Array(items)) => w.message(23, |item| {
            for schema in items {
                item.message(1, |s| encode_schema(s, schema));
            }
        }),
        _ => {}
    }
    for schema in map
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(24, |s| encode_schema(s, schema));
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        w.message(25, |props| {
            for (name, schema) in properties {
                props.message(1, |named| named_schema(named, name, schema));
            }
        });
    }
    // Extensions are `NamedAny { name = 1; value = Any { yaml = 2 } }`; JSON is YAML.
    for (name, value) in map.iter().filter(|(k, _)| k.starts_with("x-")) {
        w.message(31, |named| {
            named.string(1, name);
            named.message(2, |any| any.string(2, &value.to_string()));
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::wire::{Reader, WireValue};
    use super::*;

    fn fields(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some((n, v)) = r.next().expect("well formed") {
            if let WireValue::Bytes(b) = v {
                out.push((n, b.to_vec()));
            }
        }
        out
    }

    #[test]
    fn definitions_are_named_schemas_with_types_properties_and_extensions() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "definitions": {"io.k8s.api.core.v1.ConfigMap": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}],
                "properties": {"data": {"type": "object", "additionalProperties": {"type": "string"}}},
            }},
        });
        let bytes = encode(&doc);
        let top = fields(&bytes);
        assert_eq!(top[0], (1, b"2.0".to_vec()));
        let definitions = &top.iter().find(|(n, _)| *n == 9).expect("definitions").1;
        let named = &fields(definitions)[0].1;
        let named = fields(named);
        assert_eq!(named[0], (1, b"io.k8s.api.core.v1.ConfigMap".to_vec()));
        let schema = fields(&named[1].1);
        let numbers: Vec<u64> = schema.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![22, 25, 31]);
        let extension = fields(&schema[2].1);
        assert_eq!(extension[0].1, b"x-kubernetes-group-version-kind".to_vec());
        let yaml = fields(&extension[1].1);
        assert!(String::from_utf8_lossy(&yaml[0].1).contains("\"kind\":\"ConfigMap\""));
    }
}
