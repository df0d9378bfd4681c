//! RBAC's escalation prevention: a user may write a Role or ClusterRole only with rules
//! they hold themselves (or with the `escalate` verb on it), and bind a role only if
//! they hold its rules (or have the `bind` verb on it), as upstream's policy-based RBAC
//! storage checks every create and update. `system:masters` may do anything.

use serde_json::Value;

use super::rules::{compact_string, covers, go_quoted};
use super::{Attributes, Authorizer, PRIVILEGED_GROUP, ResourceAttributes, forbidden_error};
use crate::authn::UserInfo;
use crate::status::ApiError;

/// Whether a write changes only what the garbage collector may change (owners and
/// finalizers), which needs no permissions beyond the write itself.
fn only_gc_fields(new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "managedFields",
            ] {
                meta.remove(field);
            }
        }
        v
    };
    strip(new) == strip(old)
}

/// Checks a write of `obj` (a Role, ClusterRole, RoleBinding or ClusterRoleBinding,
/// `plural` says which) by `user` in `namespace` ("" for the cluster-scoped kinds).
pub(crate) fn check(
    authorizer: &Authorizer,
    user: &UserInfo,
    plural: &str,
    namespace: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
        return Ok(());
    }
    if old.is_some_and(|old| only_gc_fields(obj, old)) {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let allowed = |verb: &str, resource: &str, target: &str| {
        let attrs = Attributes {
            verb: verb.into(),
            path: String::new(),
            resource: Some(ResourceAttributes {
                group: super::rbac::GROUP.into(),
                version: "v1".into(),
                resource: resource.into(),
                subresource: String::new(),
                namespace: namespace.into(),
                name: target.into(),
            }),
        };
        authorizer.authorize(user, &attrs).is_ok()
    };
    let forbid = |why: String| forbidden_error(super::rbac::GROUP, plural, name, &why);
    let wanted = match plural {
        "roles" | "clusterroles" => {
            if allowed("escalate", plural, name) {
                return Ok(());
            }
            if plural == "clusterroles" && obj.get("aggregationRule").is_some_and(|a| !a.is_null())
            {
                return Err(forbid(
                    "must have cluster-admin privileges to use the aggregationRule".into(),
                ));
            }
            serde_json::from_value(obj.get("rules").cloned().unwrap_or(Value::Null))
                .unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref: k8s_openapi::api::rbac::v1::RoleRef =
                match serde_json::from_value(obj.get("roleRef").cloned().unwrap_or(Value::Null)) {
                    Ok(r) => r,
                    Err(_) => return Ok(()), // validation reports a malformed roleRef
                };
            let ref_plural = if role_ref.kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if allowed("bind", ref_plural, &role_ref.name) {
                return Ok(());
            }
            match authorizer.rbac.role_rules(&role_ref, namespace) {
                Some(rules) => rules.to_vec(),
                None => {
                    let kind = role_ref.kind.to_lowercase();
                    return Err(ApiError::not_found(&crate::status::Subject {
                        group: super::rbac::GROUP,
                        resource: if kind == "role" {
                            "roles"
                        } else {
                            "clusterroles"
                        },
                        name: &role_ref.name,
                    }));
                }
            }
        }
        _ => return Ok(()),
    };
    let (owner, errors) = authorizer.rules_for(user, namespace);
    if let Err(missing) = covers(&owner, &wanted) {
        let lines: Vec<String> = missing.iter().map(compact_string).collect();
        let mut why = format!(
            "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.username,
            go_quoted(&user.groups),
            lines.join("\n")
        );
        if !errors.is_empty() {
            why += &format!("; resolution errors: [{}]", errors.join(", "));
        }
        return Err(forbid(why));
    }
    Ok(())
}
