//! Name and label validation, with upstream's messages (apimachinery's
//! `validation.IsDNS1123Label` and friends), so `kubectl` users see familiar errors.

use crate::status::FieldError;

#[derive(Clone, Copy, Debug)]
pub(crate) enum NameRule {
    /// RFC 1123 label: namespaces, services.
    DnsLabel,
    /// RFC 1123 subdomain: most objects.
    DnsSubdomain,
    /// Anything that is a path segment (RBAC objects: `system:node` is a name).
    PathSegment,
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

impl NameRule {
    pub fn check(self, field: &str, name: &str) -> Option<FieldError> {
        match self {
            NameRule::DnsLabel if !is_label(name) => {
                let detail = if name.len() > 63 {
                    "must be no more than 63 characters"
                } else {
                    LABEL_MSG
                };
                Some(FieldError::invalid(field, name, detail))
            }
            NameRule::DnsSubdomain if !is_subdomain(name) => {
                let detail = if name.len() > 253 {
                    "must be no more than 253 characters"
                } else {
                    SUBDOMAIN_MSG
                };
                Some(FieldError::invalid(field, name, detail))
            }
            NameRule::PathSegment => {
                if name == "." || name == ".." {
                    return Some(FieldError::invalid(
                        field,
                        name,
                        &format!("may not be '{name}'"),
                    ));
                }
                ["/", "%"]
                    .iter()
                    .find(|bad| name.contains(*bad))
                    .map(|bad| {
                        FieldError::invalid(field, name, &format!("may not contain '{bad}'"))
                    })
            }
            _ => None,
        }
    }
}

/// Checks `metadata.labels`: qualified-name keys and label values.
pub(crate) fn check_labels(labels: &serde_json::Map<String, serde_json::Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in labels {
        if !is_qualified_name(key) {
            errors.push(FieldError::invalid("metadata.labels", key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"));
        }
        match value.as_str() {
            Some(v) if is_label_value(v) => {}
            _ => {
                let shown = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string);
                errors.push(FieldError::invalid("metadata.labels", &shown, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
            }
        }
    }
    errors
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub(crate) fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_subdomain(prefix) && is_name_part(name),
        None => is_name_part(s),
    }
}

pub(crate) fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1123() {
        assert!(
            NameRule::DnsLabel
                .check("metadata.name", "kube-system")
                .is_none()
        );
        assert!(NameRule::DnsLabel.check("metadata.name", "a.b").is_some());
        assert!(
            NameRule::DnsSubdomain
                .check("metadata.name", "a.b-c")
                .is_none()
        );
        for bad in ["", "Upper", "-lead", "trail-", "a_b", &"x".repeat(254)] {
            assert!(
                NameRule::DnsSubdomain.check("metadata.name", bad).is_some(),
                "{bad}"
            );
        }
        let e = NameRule::DnsSubdomain
            .check("metadata.name", "Bad")
            .expect("invalid");
        assert!(
            e.describe().starts_with(
                "metadata.name: Invalid value: \"Bad\": a lowercase RFC 1123 subdomain"
            )
        );
    }

    #[test]
    fn label_keys_and_values() {
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(is_qualified_name("tier"));
        assert!(!is_qualified_name("a/b/c"));
        assert!(!is_qualified_name("-x"));
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_3"));
        assert!(!is_label_value("has space"));
    }
}
