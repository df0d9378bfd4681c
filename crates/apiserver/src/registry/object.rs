//! Helpers over objects as JSON values: metadata access, the stored encoding (no
//! resourceVersion inside; it is the key's mod revision), server-owned fields.

use bytes::Bytes;
use rand::Rng;
use serde_json::{Map, Value, json};
use skiff_storage::{KeyValue, Revision};

use super::Resource;
use crate::status::ApiError;

/// The object stored under a key, as `r` serves it, with its resourceVersion.
pub(crate) fn decode(r: &Resource, kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    if let Some(convert) = r.from_storage {
        obj = convert(obj);
    }
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

pub(crate) fn set_resource_version(obj: &mut Value, revision: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The bytes to store for an object `r` serves (in its storage form).
pub(crate) fn encode(r: &Resource, obj: &Value) -> Result<Bytes, ApiError> {
    let mut obj = match r.to_storage {
        Some(convert) => convert(obj.clone()),
        None => obj.clone(),
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(ApiError::internal)
}

pub(crate) fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub(crate) fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

pub(crate) fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        (b[8] & 0x3) | 0x8,
        &hex[17..20],
        &hex[20..32]
    )
}

/// Upstream's generateName suffix: five characters from an alphabet without vowels.
pub(crate) fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(crate) fn parse_revision(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: \"{rv}\"")))
}

pub(crate) fn copy_field(from: &Value, to: &mut Value, field: &str) {
    match from.get(field) {
        Some(v) => to[field] = v.clone(),
        None => {
            if let Some(o) = to.as_object_mut() {
                o.remove(field);
            }
        }
    }
}

pub(crate) fn without_meta_and_status(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(o) = obj.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    obj
}

pub(crate) fn success_status(r: &Resource, name: &str, uid: Option<&str>) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": r.group, "kind": r.plural, "uid": uid.unwrap_or_default()},
    })
}
