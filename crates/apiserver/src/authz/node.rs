//! The Node authorizer and NodeRestriction admission, as upstream: a kubelet
//! (`system:node:NAME` in `system:nodes`) may read only the secrets, configmaps, claims,
//! volumes and service account tokens of pods bound to its node ([`super::graph`]), only
//! its own Lease, and otherwise what the `system:node` role lists; and it may change
//! only its own Node, the status of pods bound to it, mirror pods of its own, and delete
//! or evict only pods bound to it.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;

use super::graph::{Graph, Ref};
use super::{Attributes, forbidden_error, rules};
use crate::authn::UserInfo;
use crate::status::ApiError;

pub(crate) const NODES_GROUP: &str = "system:nodes";
const MIRROR: &str = "kubernetes.io/config.mirror";

/// The node a user is the kubelet of.
pub(crate) fn node_of(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    user.username
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
}

pub(crate) struct NodeAuthorizer {
    pub graph: Arc<Graph>,
    rules: Vec<PolicyRule>,
}

impl NodeAuthorizer {
    pub(crate) fn new(graph: Arc<Graph>) -> NodeAuthorizer {
        NodeAuthorizer {
            graph,
            rules: super::policy::node_rules(),
        }
    }

    /// `None`: no opinion (not a node, or nothing this authorizer allows), with why.
    pub(crate) fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
        let Some(node) = node_of(user) else {
            return Err(String::new());
        };
        let by_rules = || {
            if self.rules.iter().any(|r| rules::allows(r, attrs)) {
                Ok(())
            } else {
                Err(String::new())
            }
        };
        let Some(r) = &attrs.resource else {
            return by_rules();
        };
        let related = |object: Ref| {
            if self.graph.related(node, &object) {
                Ok(())
            } else {
                Err(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        };
        let readable = || -> Result<(), String> {
            if !matches!(attrs.verb.as_str(), "get" | "list" | "watch") {
                return Err("can only read resources of this type".into());
            }
            if !r.subresource.is_empty() {
                return Err("cannot read subresource".into());
            }
            if r.name.is_empty() {
                return Err("No Object name found".into());
            }
            Ok(())
        };
        let (ns, name) = (r.namespace.clone(), r.name.clone());
        match (
            r.group.as_str(),
            r.resource.as_str(),
            r.subresource.as_str(),
        ) {
            ("", "secrets", _) => readable().and_then(|()| related(Ref::Secret(ns, name))),
            ("", "configmaps", _) => readable().and_then(|()| related(Ref::ConfigMap(ns, name))),
            ("", "persistentvolumeclaims", "") => {
                readable().and_then(|()| related(Ref::Claim(ns, name)))
            }
            ("", "persistentvolumes", _) => {
                if attrs.verb != "get" || !r.subresource.is_empty() || name.is_empty() {
                    return Err("can only get individual resources of this type".into());
                }
                related(Ref::Volume(name))
            }
            ("", "serviceaccounts", "token") => {
                if attrs.verb != "create" || name.is_empty() {
                    return Err("can only create tokens for individual service accounts".into());
                }
                related(Ref::ServiceAccount(ns, name))
            }
            ("coordination.k8s.io", "leases", _) => {
                if ns != "kube-node-lease" || name != node || !r.subresource.is_empty() {
                    return Err(
                        "can only access node lease with the same name as the requesting node"
                            .into(),
                    );
                }
                if matches!(
                    attrs.verb.as_str(),
                    "get" | "create" | "update" | "patch" | "delete"
                ) {
                    Ok(())
                } else {
                    Err("can only get, create, update, patch, or delete a node lease".into())
                }
            }
            _ => by_rules(),
        }
    }
}

fn forbid(plural: &str, name: &str, why: String) -> ApiError {
    forbidden_error("", plural, name, &why)
}

/// NodeRestriction on a write a node makes to a pod or Node (`old`: the stored object
/// of an update; `subresource`: the request's).
pub(crate) fn admit_write(
    node: &str,
    plural: &str,
    subresource: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let bound = |o: &Value| o.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
    match plural {
        "nodes" if name != node => Err(forbid(
            "nodes",
            name,
            format!("node {node:?} is not allowed to modify node {name:?}"),
        )),
        "pods" => match old {
            None => {
                let mirror = obj
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(MIRROR))
                    .is_some();
                if !mirror {
                    return Err(forbid(
                        "pods",
                        name,
                        format!(
                            "pod does not have \"{MIRROR}\" annotation, node {node:?} can only create mirror pods"
                        ),
                    ));
                }
                if !bound(obj) {
                    return Err(forbid(
                        "pods",
                        name,
                        format!(
                            "node {node:?} can only create pods with spec.nodeName set to itself"
                        ),
                    ));
                }
                Ok(())
            }
            Some(old) => {
                if subresource != "status" {
                    return Err(forbid(
                        "pods",
                        name,
                        format!("node {node:?} can only update pod status"),
                    ));
                }
                if !bound(old) {
                    return Err(forbid(
                        "pods",
                        name,
                        format!(
                            "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                        ),
                    ));
                }
                Ok(())
            }
        },
        _ => Ok(()),
    }
}

/// NodeRestriction on a node deleting or evicting `current` (a pod or a Node).
pub(crate) fn admit_delete(node: &str, plural: &str, current: &Value) -> Result<(), ApiError> {
    let name = current
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match plural {
        "nodes" if name != node => Err(forbid(
            "nodes",
            name,
            format!("node {node:?} is not allowed to modify node {name:?}"),
        )),
        "pods" if current.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) => {
            Err(forbid(
                "pods",
                name,
                format!("node {node:?} can only delete pods with spec.nodeName set to itself"),
            ))
        }
        _ => Ok(()),
    }
}
