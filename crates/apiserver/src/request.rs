//! What a request is about, parsed from its path and method the way upstream's
//! RequestInfoFactory does: `/api/v1/...` or `/apis/GROUP/VERSION/...`, then
//! `[watch/][namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]`.

use axum::http::Method;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestInfo {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// What follows a `proxy` subresource (`nodes/NAME/proxy/stats/summary`).
    pub proxy_path: Option<String>,
    pub verb: Verb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

/// Subresources of namespaces, which would otherwise read as resource names.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Parses a resource request; `None` for any other path (discovery, health, ...).
pub(crate) fn parse(method: &Method, path: &str, watch_param: bool) -> Option<RequestInfo> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        } else {
            // `namespaces/NAME[/status]`: the namespace object itself.
            namespace = None;
        }
    }
    let mut proxy_path = None;
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        [resource, name, "proxy", tail @ ..] => {
            proxy_path = Some(tail.join("/"));
            (*resource, Some(*name), Some("proxy"))
        }
        _ => return None,
    };
    if resource.is_empty() || name.is_some_and(str::is_empty) {
        return None;
    }
    let verb = match (method, name.is_some()) {
        (&Method::GET, _) if watch_path || watch_param => Verb::Watch,
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, _) => Verb::Create,
        (&Method::PUT, _) => Verb::Update,
        (&Method::PATCH, _) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => return None,
    };
    Some(RequestInfo {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: resource.to_string(),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
        proxy_path,
        verb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: Method, path: &str) -> RequestInfo {
        parse(&method, path, false).expect("a resource path")
    }

    #[test]
    fn proxy_paths_keep_their_tail() {
        let r = p(Method::GET, "/api/v1/nodes/n1/proxy/stats/summary");
        assert_eq!(
            (
                r.name.as_deref(),
                r.subresource.as_deref(),
                r.proxy_path.as_deref()
            ),
            (Some("n1"), Some("proxy"), Some("stats/summary"))
        );
        assert!(parse(&Method::GET, "/api/v1/nodes/n1/status/extra", false).is_none());
    }

    #[test]
    fn namespaced_paths() {
        let r = p(Method::GET, "/api/v1/namespaces/default/configmaps/cfg");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.verb),
            ("configmaps", Some("cfg"), Verb::Get)
        );
        let r = p(Method::GET, "/apis/apps/v1/namespaces/ns/deployments");
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.verb),
            ("apps", "v1", Verb::List)
        );
        let r = p(Method::POST, "/api/v1/namespaces/ns/pods/p/binding");
        assert_eq!(r.subresource.as_deref(), Some("binding"));
    }

    #[test]
    fn namespace_objects_and_their_subresources() {
        let r = p(Method::GET, "/api/v1/namespaces/default");
        assert_eq!(
            (r.namespace, r.resource.as_str(), r.name.as_deref()),
            (None, "namespaces", Some("default"))
        );
        let r = p(Method::PUT, "/api/v1/namespaces/default/finalize");
        assert_eq!(
            (r.resource.as_str(), r.subresource.as_deref()),
            ("namespaces", Some("finalize"))
        );
        assert_eq!(p(Method::GET, "/api/v1/namespaces").verb, Verb::List);
    }

    #[test]
    fn watches_by_path_or_parameter() {
        assert_eq!(
            p(Method::GET, "/api/v1/watch/namespaces/ns/configmaps").verb,
            Verb::Watch
        );
        assert_eq!(
            parse(&Method::GET, "/api/v1/configmaps", true).map(|r| r.verb),
            Some(Verb::Watch)
        );
    }

    #[test]
    fn other_paths_are_not_resources() {
        for path in [
            "/version",
            "/api",
            "/api/v1",
            "/apis/apps",
            "/healthz",
            "/api/v1/a/b/c/d",
        ] {
            assert!(parse(&Method::GET, path, false).is_none(), "{path}");
        }
        assert!(
            parse(&Method::DELETE, "/api/v1/namespaces/ns/configmaps", false)
                .is_some_and(|r| r.verb == Verb::DeleteCollection)
        );
    }
}
