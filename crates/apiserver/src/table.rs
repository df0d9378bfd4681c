//! `as=Table` responses: the rows and columns `kubectl get` prints, computed by the
//! server as upstream does (NAME, the kind's own columns, AGE), so kubectl shows the
//! same columns it shows against any Kubernetes.

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::registry::Resource;

/// One printed column: a header, its OpenAPI type, and how to fill it.
#[derive(Clone, Copy)]
pub(crate) struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub description: &'static str,
    pub priority: i32,
    pub cell: fn(&Value) -> Value,
}

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether the client asked for a Table (kubectl: `application/json;as=Table;v=v1;g=meta.k8s.io`).
pub(crate) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&"as=Table")
                && params.contains(&"g=meta.k8s.io")
                && (params.contains(&"v=v1") || params.contains(&"v=v1beta1"))
        })
}

/// The AGE column, for kinds that print columns after it.
pub(crate) const AGE: Column = Column {
    name: "Age",
    kind: "string",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
    cell: age_cell,
};

fn age_cell(obj: &Value) -> Value {
    json!(human_duration_since(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
    ))
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    description: "Name must be unique within a namespace.",
    priority: 0,
    cell: name_cell,
};

fn name_cell(obj: &Value) -> Value {
    obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))
}

/// NAME (hidden for some kinds), the kind's columns, and AGE unless it placed it.
fn columns(r: &Resource) -> Vec<Column> {
    let mut out = vec![Column {
        priority: if r.hide_name { 1 } else { 0 },
        ..NAME
    }];
    out.extend(r.columns.iter().copied());
    if !r.hide_name && !r.columns.iter().any(|c| c.name == "Age") {
        out.push(AGE);
    }
    out
}

fn definitions(columns: &[Column]) -> Vec<Value> {
    columns
        .iter()
        .map(|c| {
            let format = if c.name == "Name" { "name" } else { "" };
            json!({"name": c.name, "type": c.kind, "format": format, "description": c.description, "priority": c.priority})
        })
        .collect()
}

fn row(columns: &[Column], obj: &Value, include: IncludeObject) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(obj)).collect();
    let mut row = serde_json::Map::new();
    row.insert("cells".into(), Value::Array(cells));
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            let mut partial = serde_json::Map::new();
            partial.insert("kind".into(), json!("PartialObjectMetadata"));
            partial.insert("apiVersion".into(), json!("meta.k8s.io/v1"));
            let metadata = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
            partial.insert("metadata".into(), metadata);
            row.insert("object".into(), Value::Object(partial));
        }
        IncludeObject::Object => {
            row.insert("object".into(), obj.clone());
        }
    }
    Value::Object(row)
}

/// A list as a Table.
pub(crate) fn from_list(r: &Resource, list: &Value, include: IncludeObject) -> Value {
    let items = list["items"].as_array().map_or(&[][..], Vec::as_slice);
    table(
        r,
        list.get("metadata").cloned().unwrap_or(json!({})),
        items,
        include,
    )
}

/// One object as a Table (a get, or a watch event).
pub(crate) fn from_object(r: &Resource, obj: &Value, include: IncludeObject) -> Value {
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(json!(""));
    table(
        r,
        json!({"resourceVersion": rv}),
        std::slice::from_ref(obj),
        include,
    )
}

fn table(r: &Resource, metadata: Value, objects: &[Value], include: IncludeObject) -> Value {
    let columns = columns(r);
    let rows: Vec<Value> = objects.iter().map(|o| row(&columns, o, include)).collect();
    // Built by moving the rows in: `json!` would copy each by serialising it.
    let mut table = serde_json::Map::new();
    table.insert("kind".into(), json!("Table"));
    table.insert("apiVersion".into(), json!("meta.k8s.io/v1"));
    table.insert("metadata".into(), metadata);
    table.insert(
        "columnDefinitions".into(),
        Value::Array(definitions(&columns)),
    );
    table.insert("rows".into(), Value::Array(rows));
    Value::Object(table)
}

/// Time since `at` (RFC 3339) in upstream's `HumanDuration` format.
pub(crate) fn human_duration_since(created: Option<&str>) -> String {
    let Some(created) = created.and_then(|c| {
        time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
    }) else {
        return "<unknown>".into();
    };
    human_duration((time::OffsetDateTime::now_utc() - created).whole_seconds())
}

pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        for (seconds, text) in [
            (-5, "<invalid>"),
            (0, "0s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn accept_header_asks_for_tables() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json".parse().expect("header"));
        assert!(wanted(&headers));
        headers.insert(header::ACCEPT, "application/json".parse().expect("header"));
        assert!(!wanted(&headers));
    }
}
