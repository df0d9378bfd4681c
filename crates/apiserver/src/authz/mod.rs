//! Authorization, as kube-apiserver's chain runs it: every request, once authenticated,
//! is described as upstream's authorizer attributes (a verb on a resource of a group in
//! a namespace, or a verb on a URL path) and asked of the configured authorizers in
//! turn; the first to allow it wins, and a request none allows is 403 Forbidden with
//! upstream's message. Members of `system:masters` are always allowed, as upstream.
//!
//! Modes (`--authorization-mode`): `Node` and `RBAC` (the default `Node,RBAC`; [`node`],
//! [`rbac`]), `AlwaysAllow`, `AlwaysDeny`. The access reviews (`kubectl auth can-i`) are in [`reviews`]; the
//! default roles and bindings in [`policy`]; the escalation check on RBAC writes in
//! [`escalation`].

mod controller_policy;
pub(crate) mod escalation;
pub(crate) mod graph;
pub(crate) mod node;
pub(crate) mod policy;
pub(crate) mod rbac;
pub(crate) mod reviews;
pub(crate) mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State as AxumState};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::json;

use crate::authn::UserInfo;
use crate::handler::State;
use crate::request::{self, Verb};
use crate::status::ApiError;

/// A change seen by [`follow`]: a whole snapshot of the kind, or one key's change.
pub(crate) enum Change<'a> {
    Snapshot(&'a [skiff_storage::KeyValue], skiff_storage::Revision),
    Put(&'a skiff_storage::KeyValue),
    Deleted(&'a skiff_storage::KeyValue),
}

/// Follows every object under `prefix` through the watch cache, for as long as the
/// server runs: a snapshot, then each change; a new snapshot whenever the watch ends (a
/// slow reader's queue overflowed, or the datastore watch restarted). The authorizers'
/// in-memory views (upstream's informers) are kept this way.
pub(crate) async fn follow(
    cache: Arc<crate::registry::watch_cache::WatchCache>,
    prefix: String,
    mut on: impl FnMut(Change<'_>),
) {
    use crate::registry::watch_cache::From;
    loop {
        let range = skiff_storage::KeyRange::prefix(prefix.clone());
        let sub = match cache.watch(&prefix, range, From::Cached).await {
            Ok(Some(sub)) => sub,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "following objects for authorization");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Some(snapshot) = &sub.snapshot {
            on(Change::Snapshot(&snapshot.kvs, snapshot.revision));
        }
        let deliver =
            |event: &skiff_storage::Event, on: &mut dyn FnMut(Change<'_>)| match event.kind {
                skiff_storage::EventKind::Deleted => on(Change::Deleted(&event.kv)),
                _ => on(Change::Put(&event.kv)),
            };
        for event in &sub.backlog {
            deliver(event, &mut on);
        }
        let mut events = sub.events;
        while let Some(event) = events.recv().await {
            deliver(&event, &mut on);
        }
    }
}

/// The group whose members may do anything (upstream's `system:masters`).
pub(crate) const PRIVILEGED_GROUP: &str = "system:masters";

/// What a request asks to do, as upstream's `authorizer.Attributes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub verb: String,
    /// The URL path of a non-resource request.
    pub path: String,
    pub resource: Option<ResourceAttributes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResourceAttributes {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    pub(crate) fn namespace(&self) -> &str {
        self.resource
            .as_ref()
            .map(|r| r.namespace.as_str())
            .unwrap_or_default()
    }

    /// The attributes of an HTTP request, as upstream's RequestInfoFactory derives them.
    pub(crate) fn of(method: &Method, path: &str, query: &HashMap<String, String>) -> Attributes {
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let Some(info) = request::parse(method, path, watch) else {
            let verb = if *method == Method::HEAD {
                "get".to_string()
            } else {
                method.as_str().to_lowercase()
            };
            return Attributes {
                verb,
                path: path.to_string(),
                resource: None,
            };
        };
        let mut verb = match info.verb {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        };
        let subresource = info.subresource.unwrap_or_default();
        // A WebSocket upgrade to exec, attach or port-forward is a GET that creates a
        // stream: it needs `create`, as upstream since 1.31.
        if verb == "get" && matches!(subresource.as_str(), "exec" | "attach" | "portforward") {
            verb = "create";
        }
        let mut name = info.name.unwrap_or_default();
        // A list or watch of one object by field selector is about that name.
        if name.is_empty()
            && matches!(verb, "list" | "watch")
            && let Some(selector) = query.get("fieldSelector")
            && let Some(single) = selector
                .strip_prefix("metadata.name=")
                .or_else(|| selector.strip_prefix("metadata.name=="))
            && !single.contains(',')
        {
            name = single.to_string();
        }
        Attributes {
            verb: verb.to_string(),
            path: path.to_string(),
            resource: Some(ResourceAttributes {
                group: info.group,
                version: info.version,
                resource: info.resource,
                subresource,
                namespace: info.namespace.unwrap_or_default(),
                name,
            }),
        }
    }
}

/// An authorizer `--authorization-mode` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Kubelets: what their pods use, their own Node and Lease ([`node`]).
    Node,
    AlwaysAllow,
    AlwaysDeny,
    Rbac,
}

impl Mode {
    /// `--authorization-mode`'s comma-separated list.
    pub fn parse_list(list: &str) -> Result<Vec<Mode>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| match m {
                "AlwaysAllow" => Ok(Mode::AlwaysAllow),
                "AlwaysDeny" => Ok(Mode::AlwaysDeny),
                "RBAC" => Ok(Mode::Rbac),
                "Node" => Ok(Mode::Node),
                other => Err(format!(
                    "authorization mode {other:?} is not supported (supported: Node, RBAC, AlwaysAllow, AlwaysDeny)"
                )),
            })
            .collect()
    }
}

/// The configured authorizers.
#[derive(Clone)]
pub(crate) struct Authorizer {
    modes: Vec<Mode>,
    pub rbac: Arc<rbac::Index>,
    pub node: Option<Arc<node::NodeAuthorizer>>,
}

/// Why a request was not allowed (empty: no authorizer had an opinion).
pub(crate) struct Denied(pub String);

impl Authorizer {
    pub(crate) fn new(
        modes: Vec<Mode>,
        rbac: Arc<rbac::Index>,
        graph: Option<Arc<graph::Graph>>,
    ) -> Authorizer {
        Authorizer {
            modes,
            rbac,
            node: graph.map(|g| Arc::new(node::NodeAuthorizer::new(g))),
        }
    }

    pub(crate) fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), Denied> {
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Ok(());
        }
        let mut reasons = Vec::new();
        for mode in &self.modes {
            match mode {
                Mode::AlwaysAllow => return Ok(()),
                Mode::AlwaysDeny => return Err(Denied(join(reasons))),
                Mode::Node => match self.node.as_ref().map(|n| n.authorize(user, attrs)) {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(reason)) if !reason.is_empty() => reasons.push(reason),
                    _ => {}
                },
                Mode::Rbac => match self.rbac.allows(user, attrs) {
                    Ok(()) => return Ok(()),
                    Err(reason) if !reason.is_empty() => reasons.push(reason),
                    Err(_) => {}
                },
            }
        }
        Err(Denied(join(reasons)))
    }

    /// What `user` may do in `namespace`, for SelfSubjectRulesReview: the rules, and
    /// whether the list is complete (errors met gathering them).
    pub(crate) fn rules_for(
        &self,
        user: &UserInfo,
        namespace: &str,
    ) -> (Vec<PolicyRule>, Vec<String>) {
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP)
            || self.modes.contains(&Mode::AlwaysAllow)
        {
            let all = vec!["*".to_string()];
            return (
                vec![
                    PolicyRule {
                        verbs: all.clone(),
                        api_groups: Some(all.clone()),
                        resources: Some(all.clone()),
                        ..Default::default()
                    },
                    PolicyRule {
                        verbs: all.clone(),
                        non_resource_urls: Some(all),
                        ..Default::default()
                    },
                ],
                Vec::new(),
            );
        }
        if !self.modes.contains(&Mode::Rbac) {
            return (Vec::new(), Vec::new());
        }
        let gathered = self.rbac.rules_for(user, namespace);
        (gathered.rules, gathered.errors)
    }
}

fn join(reasons: Vec<String>) -> String {
    reasons.join(", ")
}

/// Upstream's forbidden error: `pods "p" is forbidden: User "bob" cannot get resource
/// "pods" in API group "" in the namespace "default"`.
pub(crate) fn forbidden(user: &UserInfo, attrs: &Attributes, reason: &str) -> ApiError {
    let username = &user.username;
    let mut message = match &attrs.resource {
        None => format!(
            "User {username:?} cannot {} path {:?}",
            attrs.verb, attrs.path
        ),
        Some(r) => {
            let resource = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            if r.namespace.is_empty() {
                format!(
                    "User {username:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                    attrs.verb, r.group
                )
            } else {
                format!(
                    "User {username:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                    attrs.verb, r.group, r.namespace
                )
            }
        }
    };
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    let (group, resource, name) = match &attrs.resource {
        Some(r) => (r.group.as_str(), r.resource.as_str(), r.name.as_str()),
        None => ("", "", ""),
    };
    forbidden_error(group, resource, name, &message)
}

/// apimachinery's NewForbidden.
pub(crate) fn forbidden_error(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let message = match (qualified.is_empty(), name.is_empty()) {
        (true, _) => format!("forbidden: {why}"),
        (false, true) => format!("{qualified} is forbidden: {why}"),
        (false, false) => format!("{qualified} {name:?} is forbidden: {why}"),
    };
    let mut details = json!({});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if !resource.is_empty() {
        details["kind"] = json!(resource);
    }
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Some(details),
    }
}

/// The middleware, after authentication: impersonation (`kubectl --as`), then 403
/// unless an authorizer allows the request.
pub(crate) async fn layer(
    AxumState(state): AxumState<State>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut user = request
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_else(UserInfo::anonymous);
    match impersonate(&state.authorizer, &user, request.headers()) {
        Ok(Some(other)) => {
            user = other;
            request.extensions_mut().insert(user.clone());
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    let Query(query) =
        Query::<HashMap<String, String>>::try_from_uri(request.uri()).unwrap_or_default();
    let attrs = Attributes::of(request.method(), request.uri().path(), &query);
    match state.authorizer.authorize(&user, &attrs) {
        Ok(()) => next.run(request).await,
        Err(Denied(reason)) => {
            tracing::debug!(user = %user.username, verb = %attrs.verb, path = %attrs.path, "forbidden");
            forbidden(&user, &attrs, &reason).into_response()
        }
    }
}

/// Upstream's impersonation filter: `Impersonate-User`, `-Group`, `-Uid` and
/// `-Extra-KEY` headers make the request act as another user, if the caller may
/// `impersonate` each of them (users, groups, serviceaccounts, uids, userextras).
fn impersonate(
    authorizer: &Authorizer,
    caller: &UserInfo,
    headers: &axum::http::HeaderMap,
) -> Result<Option<UserInfo>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let username = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-")
            && let Ok(value) = value.to_str()
        {
            let key = percent_decode(key);
            extra.entry(key).or_default().push(value.to_string());
        }
    }
    let Some(username) = username else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(None);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, a uid or extras without impersonating a user",
        ));
    };
    let check = |verb_on: ResourceAttributes| -> Result<(), ApiError> {
        let attrs = Attributes {
            verb: "impersonate".into(),
            path: String::new(),
            resource: Some(verb_on),
        };
        authorizer
            .authorize(caller, &attrs)
            .map_err(|Denied(reason)| forbidden(caller, &attrs, &reason))
    };
    let target =
        |group: &str, resource: &str, sub: &str, ns: &str, name: &str| ResourceAttributes {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        };
    let mut user = UserInfo {
        username: username.clone(),
        uid: uid.clone().unwrap_or_default(),
        groups: groups.clone(),
        extra: extra.clone(),
    };
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, name)) => {
            check(target("", "serviceaccounts", "", ns, name))?;
            if groups.is_empty() {
                user.groups = vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => check(target("", "users", "", "", &username))?,
    }
    for group in &groups {
        check(target("", "groups", "", "", group))?;
    }
    if let Some(uid) = &uid {
        check(target("authentication.k8s.io", "uids", "", "", uid))?;
    }
    for (key, values) in &extra {
        for value in values {
            check(target(
                "authentication.k8s.io",
                "userextras",
                key,
                "",
                value,
            ))?;
        }
    }
    let (add, skip) = if username == "system:anonymous" {
        ("system:unauthenticated", "system:authenticated")
    } else {
        ("system:authenticated", "system:unauthenticated")
    };
    if !user.groups.iter().any(|g| g == add || g == skip) {
        user.groups.push(add.into());
    }
    Ok(Some(user))
}

/// `%XX` escapes of an `Impersonate-Extra-` key.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_follow_upstream() {
        let a = Attributes::of(&Method::GET, "/api/v1/namespaces/ns/pods", &q(&[]));
        let r = a.resource.clone().expect("resource");
        assert_eq!(
            (a.verb.as_str(), r.resource.as_str(), r.namespace.as_str()),
            ("list", "pods", "ns")
        );
        let a = Attributes::of(
            &Method::GET,
            "/api/v1/namespaces/ns/secrets",
            &q(&[("watch", "true"), ("fieldSelector", "metadata.name=s1")]),
        );
        assert_eq!(
            (a.verb.as_str(), a.resource.map(|r| r.name)),
            ("watch", Some("s1".into()))
        );
        let a = Attributes::of(&Method::GET, "/api/v1/namespaces/ns/pods/p/exec", &q(&[]));
        assert_eq!(a.verb, "create");
        let a = Attributes::of(&Method::GET, "/healthz", &q(&[]));
        assert_eq!(
            (a.verb.as_str(), a.path.as_str(), a.resource),
            ("get", "/healthz", None)
        );
        let a = Attributes::of(
            &Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &q(&[]),
        );
        assert_eq!(
            a.resource.map(|r| (r.group, r.resource)),
            Some((
                "authorization.k8s.io".into(),
                "selfsubjectaccessreviews".into()
            ))
        );
    }

    #[test]
    fn forbidden_messages_are_upstreams() {
        let user = UserInfo {
            username: "bob".into(),
            ..Default::default()
        };
        let a = Attributes::of(&Method::GET, "/api/v1/namespaces/default/pods", &q(&[]));
        assert_eq!(
            forbidden(&user, &a, "").message,
            r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        let a = Attributes::of(
            &Method::GET,
            "/apis/apps/v1/namespaces/x/deployments/d/scale",
            &q(&[]),
        );
        assert_eq!(
            forbidden(&user, &a, "").message,
            r#"deployments.apps "d" is forbidden: User "bob" cannot get resource "deployments/scale" in API group "apps" in the namespace "x""#
        );
        let a = Attributes::of(&Method::GET, "/api/v1/nodes", &q(&[]));
        assert!(
            forbidden(&user, &a, "")
                .message
                .ends_with("at the cluster scope")
        );
        let a = Attributes::of(&Method::GET, "/metrics", &q(&[]));
        assert_eq!(
            forbidden(&user, &a, "").message,
            r#"forbidden: User "bob" cannot get path "/metrics""#
        );
    }
}
