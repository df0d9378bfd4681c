//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`): a field the
//! kind does not have is an error, a warning, or dropped silently.
//!
//! The typed `k8s-openapi` decode drops unknown fields, so decoding and re-encoding an
//! object and comparing the two finds them: any field of the input missing from the
//! round trip is unknown. `null` values are not fields (clients send them for "unset").

use serde_json::Value;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(format!(
                "fieldValidation parameter unsupported: \"{other}\", must be one of: Ignore, Warn, Strict"
            )),
        }
    }
}

/// Paths (`.spec.foo`, upstream's spelling) present in `input` but not in `round_trip`.
pub(crate) fn unknown_fields(input: &Value, round_trip: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, round_trip, String::new(), &mut out);
    out
}

fn walk(input: &Value, known: &Value, path: String, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                if value.is_null() {
                    continue;
                }
                let child = format!("{path}.{key}");
                match b.get(key) {
                    Some(k) => walk(value, k, child, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_fields_lost_in_the_round_trip() {
        let input = json!({"metadata": {"name": "a", "bogus": 1, "labels": null}, "data": {"k": "v"}, "extra": [1],
                           "list": [{"x": 1, "y": 2}]});
        let known = json!({"metadata": {"name": "a"}, "data": {"k": "v"}, "list": [{"x": 1}]});
        let mut found = unknown_fields(&input, &known);
        found.sort();
        assert_eq!(found, vec![".extra", ".list[0].y", ".metadata.bogus"]);
    }

    #[test]
    fn parses_the_parameter() {
        assert_eq!(
            FieldValidation::parse(Some("Strict")),
            Ok(FieldValidation::Strict)
        );
        assert_eq!(FieldValidation::parse(None), Ok(FieldValidation::Warn));
        assert!(FieldValidation::parse(Some("strict")).is_err());
    }
}
