//! The audit log: who did what, as upstream's audit backend writes it (`--audit-log-path`,
//! one `audit.k8s.io/v1` Event per line) under a policy (`--audit-policy-file`, an
//! `audit.k8s.io/v1` Policy whose first matching rule gives a request's level: `None`,
//! `Metadata`, `Request`, or `RequestResponse`, logged here as `Request`). One event per
//! request at stage `ResponseComplete` (`ResponseStarted` for watches and streams),
//! with the user, source address, verb, object and response code; `Request` adds the
//! request body. Events are written by a thread of their own so requests never wait on
//! the disk; if it falls 10,000 events behind, new events are dropped and counted.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Query, Request, State as AxumState};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::authn::UserInfo;
use crate::authz::Attributes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub(crate) enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GroupResources {
    group: String,
    resources: Vec<String>,
    resource_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

#[derive(Deserialize)]
struct PolicyFile {
    kind: Option<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// An audit policy: its rules, first match wins, no match is `None`.
pub(crate) struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub(crate) fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile =
            serde_saphyr::from_str(text).map_err(|e| format!("not an audit Policy: {e}"))?;
        if file.kind.as_deref() != Some("Policy") {
            return Err("kind must be Policy (audit.k8s.io/v1)".into());
        }
        Ok(Policy { rules: file.rules })
    }

    /// Everything at Metadata (the policy when only a log path is given).
    fn metadata() -> Policy {
        Policy {
            rules: vec![Rule {
                level: Level::Metadata,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
            }],
        }
    }

    pub(crate) fn level(&self, user: &UserInfo, attrs: &Attributes) -> Level {
        self.rules
            .iter()
            .find(|r| r.matches(user, attrs))
            .map_or(Level::None, |r| r.level)
    }
}

impl Rule {
    fn matches(&self, user: &UserInfo, attrs: &Attributes) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.username) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&attrs.verb) {
            return false;
        }
        let resource_rule = !self.resources.is_empty() || !self.namespaces.is_empty();
        let url_rule = !self.non_resource_urls.is_empty();
        match &attrs.resource {
            Some(r) => {
                if url_rule && !resource_rule {
                    return false;
                }
                if !self.namespaces.is_empty() && !self.namespaces.contains(&r.namespace) {
                    return false;
                }
                self.resources.is_empty() || self.resources.iter().any(|gr| gr.matches(r))
            }
            None => {
                if resource_rule && !url_rule {
                    return false;
                }
                !url_rule
                    || self.non_resource_urls.iter().any(|u| {
                        u == "*"
                            || *u == attrs.path
                            || u.strip_suffix('*')
                                .is_some_and(|p| attrs.path.starts_with(p))
                    })
            }
        }
    }
}

impl GroupResources {
    fn matches(&self, r: &crate::authz::ResourceAttributes) -> bool {
        if self.group != r.group {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        if !self.resource_names.is_empty() && !self.resource_names.contains(&r.name) {
            return false;
        }
        let combined = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        self.resources.iter().any(|res| {
            *res == combined
                || res == "*"
                || (!r.subresource.is_empty()
                    && res.strip_prefix("*/") == Some(r.subresource.as_str()))
                || res.strip_suffix("/*") == Some(r.resource.as_str())
        })
    }
}

/// The audit backend: the policy and the writer thread's queue.
pub(crate) struct Auditor {
    policy: Policy,
    queue: std::sync::mpsc::SyncSender<String>,
    dropped: AtomicU64,
}

impl Auditor {
    /// Opens (appends to) the log and starts its writer.
    pub(crate) fn start(log: &Path, policy: Option<&Path>) -> Result<Arc<Auditor>, String> {
        let policy = match policy {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                Policy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Policy::metadata(),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening the audit log {}: {e}", log.display()))?;
        let (queue, lines) = std::sync::mpsc::sync_channel::<String>(10_000);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(line) = lines.recv() {
                    let _ = writeln!(out, "{line}");
                    while let Ok(more) = lines.try_recv() {
                        let _ = writeln!(out, "{more}");
                    }
                    if let Err(e) = out.flush() {
                        tracing::warn!(error = %e, "writing the audit log");
                    }
                }
            })
            .map_err(|e| format!("starting the audit writer: {e}"))?;
        Ok(Arc::new(Auditor {
            policy,
            queue,
            dropped: AtomicU64::new(0),
        }))
    }

    fn write(&self, event: Value) {
        if self.queue.try_send(event.to_string()).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "the audit log is behind: events dropped");
            }
        }
    }
}

/// The peer address of a connection, for `sourceIPs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub std::net::SocketAddr);

fn now_micros() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Annotations a handler adds to its request's audit event (a response extension).
#[derive(Clone, Debug, Default)]
pub(crate) struct Annotations(pub Vec<(String, String)>);

/// The middleware, after authentication: one event per request its policy logs.
pub(crate) async fn layer(
    AxumState(auditor): AxumState<Option<Arc<Auditor>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auditor) = auditor else {
        return next.run(request).await;
    };
    let received = now_micros();
    let user = request
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_else(UserInfo::anonymous);
    let Query(query) =
        Query::<HashMap<String, String>>::try_from_uri(request.uri()).unwrap_or_default();
    let attrs = Attributes::of(request.method(), request.uri().path(), &query);
    let level = auditor.policy.level(&user, &attrs);
    if level == Level::None {
        return next.run(request).await;
    }
    let source = request
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip().to_string());
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let uri = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_string(), |pq| pq.to_string());
    let mut request_object = None;
    let request = if level >= Level::Request
        && matches!(
            attrs.verb.as_str(),
            "create" | "update" | "patch" | "delete"
        ) {
        let (parts, body) = request.into_parts();
        let protobuf = parts
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::proto::is_protobuf);
        match axum::body::to_bytes(body, 3 * 1024 * 1024).await {
            Ok(bytes) => {
                request_object = if protobuf {
                    crate::proto::to_json(&bytes).ok()
                } else {
                    serde_json::from_slice::<Value>(&bytes).ok()
                };
                Request::from_parts(parts, Body::from(bytes))
            }
            Err(_) => Request::from_parts(parts, Body::empty()),
        }
    } else {
        request
    };
    let response = next.run(request).await;
    let streaming =
        attrs.verb == "watch" || response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS;
    let mut event = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": format!("{level:?}").replace("RequestResponse", "Request"),
        "auditID": crate::registry::object::new_uid(),
        "stage": if streaming { "ResponseStarted" } else { "ResponseComplete" },
        "requestURI": uri,
        "verb": attrs.verb,
        "user": user.to_json(),
        "sourceIPs": source.into_iter().collect::<Vec<_>>(),
        "responseStatus": {"metadata": {}, "code": response.status().as_u16()},
        "requestReceivedTimestamp": received,
        "stageTimestamp": now_micros(),
    });
    if let Some(agent) = user_agent {
        event["userAgent"] = json!(agent);
    }
    if let Some(Annotations(annotations)) = response.extensions().get::<Annotations>() {
        let map: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        event["annotations"] = Value::Object(map);
    }
    if let Some(r) = &attrs.resource {
        let mut object = json!({"resource": r.resource, "apiVersion": r.version});
        for (field, value) in [
            ("namespace", &r.namespace),
            ("name", &r.name),
            ("apiGroup", &r.group),
            ("subresource", &r.subresource),
        ] {
            if !value.is_empty() {
                object[field] = json!(value);
            }
        }
        event["objectRef"] = object;
    }
    if let Some(object) = request_object {
        // A create names its object in the body, as upstream fills objectRef from it.
        if let Some(name) = object.pointer("/metadata/name").and_then(Value::as_str)
            && event["objectRef"].is_object()
            && event["objectRef"].get("name").is_none()
        {
            event["objectRef"]["name"] = json!(name);
        }
        event["requestObject"] = object;
    }
    auditor.write(event);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn attrs(method: Method, path: &str) -> Attributes {
        Attributes::of(&method, path, &HashMap::new())
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy = Policy::parse(
            "apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: None
  users: [system:kube-proxy]
- level: None
  nonResourceURLs: [/healthz*, /version]
- level: Request
  resources:
  - group: \"\"
    resources: [secrets, pods/*]
- level: Metadata
  namespaces: [team]
- level: Metadata
  verbs: [delete]
",
        )
        .expect("policy");
        let bob = UserInfo {
            username: "bob".into(),
            ..Default::default()
        };
        let proxy = UserInfo {
            username: "system:kube-proxy".into(),
            ..Default::default()
        };
        let level = |u: &UserInfo, m: Method, p: &str| policy.level(u, &attrs(m, p));
        assert_eq!(
            level(&proxy, Method::GET, "/api/v1/namespaces/team/secrets"),
            Level::None
        );
        assert_eq!(level(&bob, Method::GET, "/healthz/etcd"), Level::None);
        assert_eq!(
            level(&bob, Method::GET, "/api/v1/namespaces/x/secrets/s"),
            Level::Request
        );
        assert_eq!(
            level(&bob, Method::GET, "/api/v1/namespaces/x/pods/p/log"),
            Level::Request
        );
        // "pods/*" is the pods and all their subresources, as upstream matches it.
        assert_eq!(
            level(&bob, Method::GET, "/api/v1/namespaces/x/pods/p"),
            Level::Request
        );
        assert_eq!(
            level(&bob, Method::GET, "/api/v1/namespaces/x/services/s"),
            Level::None
        );
        assert_eq!(
            level(&bob, Method::GET, "/api/v1/namespaces/team/configmaps"),
            Level::Metadata
        );
        assert_eq!(
            level(&bob, Method::DELETE, "/api/v1/namespaces/x/configmaps/c"),
            Level::Metadata
        );
        assert_eq!(level(&bob, Method::GET, "/metrics"), Level::None);
        assert!(Policy::parse("kind: Nope\n").is_err());
    }
}
