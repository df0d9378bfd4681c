//! Label selectors (`labelSelector=`) and field selectors (`fieldSelector=`) as upstream
//! parses them: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! requirements joined by commas, all of which must hold.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(input: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(input) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(requirements))
    }

    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let invalid = || {
        format!(
            "unable to parse requirement: found '{part}', expected: key, !key, key=value, key!=value, key in (values), key notin (values)"
        )
    };
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key.trim())?));
    }
    for (op, make) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((k, v)) = part.split_once(op) {
            let value = v.trim();
            if !super::names::is_label_value(value) {
                return Err(format!("invalid label value: \"{value}\""));
            }
            return Ok(make(check_key(k.trim())?, value.to_string()));
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim();
        let (op, set) = if let Some(set) = rest.strip_prefix("notin") {
            ("notin", set)
        } else if let Some(set) = rest.strip_prefix("in") {
            ("in", set)
        } else {
            return Err(invalid());
        };
        let set = set.trim();
        let inner = set
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(invalid)?;
        let values: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let key = check_key(key)?;
        return Ok(if op == "in" {
            Requirement::In(key, values)
        } else {
            Requirement::NotIn(key, values)
        });
    }
    if part.contains(char::is_whitespace) || part.contains(['(', ')']) {
        return Err(invalid());
    }
    Ok(Requirement::Exists(check_key(part)?))
}

fn check_key(key: &str) -> Result<String, String> {
    if super::names::is_qualified_name(key) {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key \"{key}\""))
    }
}

/// A field selector (`=`, `==`, `!=`) over the fields upstream indexes for the kind:
/// `metadata.name` and `metadata.namespace` everywhere, and per kind the ones clients
/// rely on (`spec.nodeName` for the kubelet's pods, `involvedObject.*` for `kubectl
/// describe`'s events, ...). Values compare as strings (`true`, `3`); a missing field is
/// the empty string.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

/// Fields beyond metadata, by (group, kind), as upstream's field label conversions.
const FIELDS: &[((&str, &str), &[&str])] = &[
    (
        ("", "Pod"),
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    ),
    (
        ("", "Event"),
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    ),
    (
        ("events.k8s.io", "Event"),
        &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
    ),
    (("", "Namespace"), &["status.phase"]),
    (("", "Node"), &["spec.unschedulable"]),
    (("", "Secret"), &["type"]),
    (("", "Service"), &["spec.clusterIP", "spec.type"]),
    (("apps", "ReplicaSet"), &["status.replicas"]),
    (("batch", "Job"), &["status.successful"]),
    (("", "PersistentVolumeClaim"), &["status.phase"]),
    (("", "PersistentVolume"), &["status.phase"]),
];

impl FieldSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(r: &super::Resource, input: &str) -> Result<Self, String> {
        let supported = FIELDS
            .iter()
            .find(|((g, k), _)| *g == r.group && *k == r.kind)
            .map_or(&[][..], |(_, f)| *f);
        let mut terms = Vec::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace")
                && !supported.contains(&field)
            {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Adds `metadata.name=NAME` (a watch on one named object).
    pub fn and_name(mut self, name: &str) -> Self {
        self.0.push(("metadata.name".into(), true, name.into()));
        self
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            // An event's `source` is its component.
            let path = if field == "source" {
                "source.component"
            } else {
                field
            };
            let pointer = format!("/{}", path.replace('.', "/"));
            let actual = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_operator() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        let yes = [
            "",
            "app",
            "!missing",
            "app=web",
            "app==web",
            "app!=db",
            "tier in (front, back)",
            "tier notin (back)",
            "app=web,tier=front",
            "missing notin (x)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).expect(s).matches(Some(&l)), "{s}");
        }
        let no = [
            "missing",
            "!app",
            "app=db",
            "app!=web",
            "tier in (back)",
            "tier notin (front,back)",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).expect(s).matches(Some(&l)), "{s}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for s in [
            "app in front",
            "a b",
            "bad key=v",
            "app=has space",
            "k in (a",
        ] {
            assert!(LabelSelector::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn field_selectors_on_metadata_and_per_kind_fields() {
        let cm = crate::registry::builtin("", "v1", "configmaps").expect("configmaps");
        let pods = crate::registry::builtin("", "v1", "pods").expect("pods");
        let events = crate::registry::builtin("", "v1", "events").expect("events");
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}});
        let sel = |r, s: &str| FieldSelector::parse(r, s).expect(s);
        assert!(sel(cm, "metadata.name=a").matches(&obj));
        assert!(sel(cm, "metadata.namespace!=other").matches(&obj));
        assert!(!sel(cm, "metadata.name==b").matches(&obj));
        assert!(FieldSelector::parse(cm, "spec.nodeName=x").is_err());
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "hostNetwork": true},
            "status": {"phase": "Running"}});
        assert!(sel(pods, "spec.nodeName=n1,status.phase!=Failed").matches(&pod));
        assert!(sel(pods, "spec.hostNetwork=true").matches(&pod));
        assert!(!sel(pods, "spec.nodeName=").matches(&pod));
        let unscheduled = json!({"metadata": {"name": "q"}, "spec": {}});
        assert!(sel(pods, "spec.nodeName=").matches(&unscheduled));
        let event = json!({"involvedObject": {"kind": "Pod", "name": "p"}, "source": {"component": "kubelet"}});
        assert!(
            sel(
                events,
                "involvedObject.kind=Pod,involvedObject.name=p,source=kubelet"
            )
            .matches(&event)
        );
    }
}
