//! Discovery: `/api`, `/apis`, and the resource list of each group version, built from
//! the registry's catalog: the unaggregated (v1) formats every client understands, and
//! the aggregated one (apidiscovery.k8s.io/v2, `APIGroupDiscoveryList`) kubectl asks for
//! first, which carries every group's resources in one response.

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::registry::{CATALOG, Resource};

/// A kind served by a handler of its own and never stored: the review APIs, which are
/// only created (`kubectl api-resources` lists them, as upstream's discovery does).
struct Virtual {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const fn review(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Virtual {
    Virtual {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
    }
}

const VIRTUAL: [Virtual; 6] = [
    review(
        "authentication.k8s.io",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false,
    ),
    review(
        "authentication.k8s.io",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        false,
    ),
    review(
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true,
    ),
    review(
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
    ),
    review(
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false,
    ),
    review(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
    ),
];

/// Every (group, version) served, stored kinds' first.
fn group_versions(core: bool) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    let all = CATALOG
        .iter()
        .map(|r| (r.group, r.version))
        .chain(VIRTUAL.iter().map(|v| (v.group, v.version)));
    for (group, version) in all.filter(|(g, _)| g.is_empty() == core) {
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) if !versions.contains(&version) => versions.push(version),
            Some(_) => {}
            None => groups.push((group, vec![version])),
        }
    }
    groups
}

pub(crate) fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// Every non-core group with its versions.
pub(crate) fn api_groups() -> Value {
    let groups: Vec<Value> = group_versions(false)
        .into_iter()
        .map(|(g, v)| group(g, &v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn group(name: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": versions, "preferredVersion": versions[0]})
}

pub(crate) fn api_group(name: &str) -> Option<Value> {
    let (_, versions) = group_versions(name.is_empty())
        .into_iter()
        .find(|(g, _)| *g == name)?;
    let mut g = group(name, &versions);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<&Resource> = CATALOG
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let virtual_entries: Vec<Value> = VIRTUAL
        .iter()
        .filter(|v| v.group == group && v.version == version)
        .map(|v| {
            json!({"name": v.plural, "singularName": v.singular, "namespaced": v.namespaced,
                   "kind": v.kind, "verbs": ["create"]})
        })
        .collect();
    if resources.is_empty() && virtual_entries.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = resources
        .iter()
        .map(|r| {
            let mut entry = json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": r.verbs(),
            });
            if !r.short_names.is_empty() {
                entry["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                entry["categories"] = json!(r.categories);
            }
            entry
        })
        .chain(resources.iter().flat_map(|r| {
            r.subresources().into_iter().map(|sub| {
                json!({
                    "name": format!("{}/{}", r.plural, sub.name),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "group": sub.kind.0,
                    "version": sub.kind.1,
                    "kind": sub.kind.2,
                    "verbs": sub.verbs,
                })
            })
        }))
        .chain(virtual_entries)
        .collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The aggregated discovery version the client accepts (`v2`, or `v2beta1` for older
/// clients), if it asked for the aggregated format at all.
pub(crate) fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    // The first acceptable entry wins, as clients list their preference first.
    accept.split(',').find_map(|entry| {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        let aggregated = params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"as=APIGroupDiscoveryList");
        if !aggregated {
            return None;
        }
        if params.contains(&"v=v2") {
            Some("v2")
        } else if params.contains(&"v=v2beta1") {
            Some("v2beta1")
        } else {
            None
        }
    })
}

/// `APIGroupDiscoveryList` for `/api` (the core group) or `/apis` (all others).
pub(crate) fn aggregated(core: bool, version: &str) -> Value {
    let items: Vec<Value> = group_versions(core)
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = CATALOG
                        .iter()
                        .filter(|r| r.group == group && r.version == v)
                        .map(aggregated_resource)
                        .chain(VIRTUAL.iter().filter(|r| r.group == group && r.version == v).map(|r| {
                            json!({
                                "resource": r.plural,
                                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": ["create"],
                            })
                        }))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

fn aggregated_resource(r: &Resource) -> Value {
    let subresources: Vec<Value> = r
        .subresources()
        .into_iter()
        .map(|sub| {
            json!({
                "subresource": sub.name,
                "responseKind": {"group": sub.kind.0, "version": sub.kind.1, "kind": sub.kind.2},
                "verbs": sub.verbs,
            })
        })
        .collect();
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_review_apis_are_discovered() {
        let groups = api_groups();
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert!(
            names.contains(&"authorization.k8s.io") && names.contains(&"authentication.k8s.io")
        );
        let list = resource_list("authorization.k8s.io", "v1").expect("authorization/v1");
        let local = list["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["name"] == "localsubjectaccessreviews")
            .expect("localsubjectaccessreviews");
        assert_eq!(
            (local["namespaced"].clone(), local["verbs"].clone()),
            (json!(true), json!(["create"]))
        );
        assert!(api_group("authentication.k8s.io").is_some());
        let all = aggregated(false, "v2").to_string();
        assert!(all.contains("\"selfsubjectrulesreviews\""));
    }

    #[test]
    fn aggregated_discovery_is_chosen_by_accept_and_lists_subresources() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
                .parse()
                .expect("header"),
        );
        assert_eq!(wants_aggregated(&headers), Some("v2"));
        headers.insert(header::ACCEPT, "application/json".parse().expect("header"));
        assert_eq!(wants_aggregated(&headers), None);
        let apps = aggregated(false, "v2");
        let deployments = apps["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .and_then(|g| {
                g["versions"][0]["resources"]
                    .as_array()
                    .expect("resources")
                    .iter()
                    .find(|r| r["resource"] == "deployments")
                    .cloned()
            })
            .expect("deployments");
        assert_eq!(deployments["scope"], "Namespaced");
        let subs: Vec<&str> = deployments["subresources"]
            .as_array()
            .expect("subresources")
            .iter()
            .filter_map(|s| s["subresource"].as_str())
            .collect();
        assert_eq!(subs, ["status", "scale"]);
        assert!(
            aggregated(true, "v2")["items"][0]["metadata"]
                .get("name")
                .is_none()
        );
    }
}
