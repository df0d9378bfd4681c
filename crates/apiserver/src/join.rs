//! What a node needs to join with a token instead of the admin's credentials, as
//! kubeadm sets it up: bootstrap tokens (`<id>.<secret>`, each the Secret
//! `kube-system/bootstrap-token-<id>`) authenticate as `system:bootstrap:<id>` in
//! `system:bootstrappers`; the `kube-public/cluster-info` ConfigMap, readable
//! anonymously, holds the CA and the server's address for a joining node to check
//! against the CA hash it was given; and bindings let bootstrappers create node client
//! CSRs that the controller manager approves, and nodes renew their own.

use serde_json::{Value, json};

use crate::authn::{TokenError, UserInfo};
use crate::handler::State;
use crate::registry::store::{Registry, WriteOptions};
use crate::status::ApiError;

const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
const GROUP: &str = "system:bootstrappers";

/// `<id>.<secret>` of a token in the bootstrap token format (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub(crate) fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user of a bootstrap token; `None` when the token is not in the bootstrap format
/// (another authenticator's), an error when it is but does not authenticate.
pub(crate) async fn token_user(state: &State, token: &str) -> Result<Option<UserInfo>, TokenError> {
    let Some((id, secret)) = parse_token(token) else {
        return Ok(None);
    };
    let secrets = crate::registry::builtin("", "v1", "secrets").map_err(TokenError::Internal)?;
    let name = format!("bootstrap-token-{id}");
    let found = match state
        .registry
        .get(secrets, Some("kube-system"), &name)
        .await
    {
        Ok(found) => found,
        Err(e) if e.code == 404 => {
            return Err(TokenError::Invalid(format!("no bootstrap token {id:?}")));
        }
        Err(e) => return Err(TokenError::Internal(e)),
    };
    Ok(Some(user_of(&found, id, secret)?))
}

/// Upstream's checks of a bootstrap token's Secret, and the user it makes.
fn user_of(found: &Value, id: &str, secret: &str) -> Result<UserInfo, String> {
    use base64::Engine;
    let data = |key: &str| {
        found["data"][key]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    };
    if found["type"] != SECRET_TYPE {
        return Err(format!("bootstrap token {id:?} has the wrong type"));
    }
    if found["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("bootstrap token {id:?} is being deleted"));
    }
    if data("token-id") != id || !same(data("token-secret").as_bytes(), secret.as_bytes()) {
        return Err(format!("bootstrap token {id:?} has another secret"));
    }
    if data("usage-bootstrap-authentication") != "true" {
        return Err(format!("bootstrap token {id:?} is not for authentication"));
    }
    let expiration = data("expiration");
    if !expiration.is_empty() {
        let expired = time::OffsetDateTime::parse(
            &expiration,
            &time::format_description::well_known::Rfc3339,
        )
        .map_or(true, |at| at < time::OffsetDateTime::now_utc());
        if expired {
            return Err(format!("bootstrap token {id:?} has expired"));
        }
    }
    let mut groups = vec![GROUP.to_string()];
    for group in data("auth-extra-groups").split(',').map(str::trim) {
        if group.is_empty() {
            continue;
        }
        if !valid_extra_group(group) {
            return Err(format!(
                "bootstrap token {id:?} has an invalid extra group {group:?}"
            ));
        }
        groups.push(group.to_string());
    }
    groups.push("system:authenticated".into());
    Ok(UserInfo {
        username: format!("system:bootstrap:{id}"),
        groups,
        ..Default::default()
    })
}

/// `system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]`.
fn valid_extra_group(group: &str) -> bool {
    let Some(rest) = group.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
        && rest
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The kubeconfig `cluster-info` holds: the server and the CA, no credentials.
pub(crate) fn cluster_info_kubeconfig(server: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: \"\"
  cluster:
    certificate-authority-data: {ca}
    server: {server}
contexts: null
current-context: \"\"
preferences: {{}}
users: null
"
    )
}

/// Creates (or brings up to date) `cluster-info`, its anonymous read access, and the
/// bindings node bootstrap relies on.
pub(crate) async fn ensure(
    registry: &Registry,
    server: &str,
    ca_pem: &str,
) -> Result<(), ApiError> {
    let configmaps = crate::registry::builtin("", "v1", "configmaps")?;
    let kubeconfig = cluster_info_kubeconfig(server, ca_pem);
    let info = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    });
    match registry
        .get(configmaps, Some("kube-public"), "cluster-info")
        .await
    {
        Ok(mut live) if live["data"]["kubeconfig"] != kubeconfig => {
            live["data"]["kubeconfig"] = json!(kubeconfig);
            registry
                .update(
                    configmaps,
                    Some("kube-public"),
                    "cluster-info",
                    live,
                    WriteOptions::default(),
                )
                .await?;
        }
        Ok(_) => {}
        Err(e) if e.code == 404 => {
            create(registry, configmaps, Some("kube-public"), info).await?;
        }
        Err(e) => return Err(e),
    }
    let rbac = crate::authz::rbac::GROUP;
    // Anonymous users may read cluster-info (kubeadm's), the token cleaner may delete
    // bootstrap tokens (upstream's namespace_policy.go).
    namespaced_role(
        registry,
        "kube-public",
        "kubeadm:bootstrap-signer-clusterinfo",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}]),
        json!({"apiGroup": rbac, "kind": "User", "name": "system:anonymous"}),
    )
    .await?;
    namespaced_role(
        registry,
        "kube-system",
        "system:controller:token-cleaner",
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete", "get", "list", "watch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
        ]),
        json!({"kind": "ServiceAccount", "name": "token-cleaner", "namespace": "kube-system"}),
    )
    .await?;
    let bindings = crate::registry::builtin(rbac, "v1", "clusterrolebindings")?;
    for (name, role, group) in [
        (
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            GROUP,
        ),
        (
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            GROUP,
        ),
        (
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
    ] {
        create(
            registry,
            bindings,
            None,
            json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": rbac, "kind": "Group", "name": group}],
            }),
        )
        .await?;
    }
    Ok(())
}

/// A Role in `ns` with `rules`, bound (by a RoleBinding of the same name) to `subject`.
async fn namespaced_role(
    registry: &Registry,
    ns: &str,
    name: &str,
    rules: Value,
    subject: Value,
) -> Result<(), ApiError> {
    let rbac = crate::authz::rbac::GROUP;
    create(
        registry,
        crate::registry::builtin(rbac, "v1", "roles")?,
        Some(ns),
        json!({"metadata": {"name": name, "namespace": ns}, "rules": rules}),
    )
    .await?;
    create(
        registry,
        crate::registry::builtin(rbac, "v1", "rolebindings")?,
        Some(ns),
        json!({
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
            "subjects": [subject],
        }),
    )
    .await
}

/// Creates an object unless it exists (an admin may have changed it: kept as it is).
async fn create(
    registry: &Registry,
    r: &'static crate::registry::Resource,
    ns: Option<&str>,
    obj: Value,
) -> Result<(), ApiError> {
    match registry.create(r, ns, obj, WriteOptions::default()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn secret(fields: &[(&str, &str)]) -> Value {
        let data: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        json!({"type": SECRET_TYPE, "metadata": {"name": "bootstrap-token-abcdef"}, "data": data})
    }

    #[test]
    fn bootstrap_tokens_authenticate_as_upstream() {
        assert_eq!(
            parse_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        for bad in [
            "abcdef.0123456789ABCDEF",
            "abcde.0123456789abcdef",
            "abcdef0123456789abcdef",
            "",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
        let good = [
            ("token-id", "abcdef"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
            ("auth-extra-groups", "system:bootstrappers:worker"),
            ("expiration", "2999-01-01T00:00:00Z"),
        ];
        let user = user_of(&secret(&good), "abcdef", "0123456789abcdef").expect("user");
        assert_eq!(user.username, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:worker",
                "system:authenticated"
            ]
        );
        assert!(user_of(&secret(&good), "abcdef", "0123456789abcdee").is_err());
        let mut expired = good;
        expired[4] = ("expiration", "2000-01-01T00:00:00Z");
        assert!(user_of(&secret(&expired), "abcdef", "0123456789abcdef").is_err());
        let mut unusable = good;
        unusable[2] = ("usage-bootstrap-authentication", "false");
        assert!(user_of(&secret(&unusable), "abcdef", "0123456789abcdef").is_err());
        let mut admin = good;
        admin[3] = ("auth-extra-groups", "system:masters");
        assert!(user_of(&secret(&admin), "abcdef", "0123456789abcdef").is_err());
    }
}
