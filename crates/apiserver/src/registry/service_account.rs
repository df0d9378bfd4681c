//! ServiceAccount admission, as upstream's plugin: a pod without a service account runs
//! as `default`, and unless the pod or its account opts out
//! (`automountServiceAccountToken: false`) it gets the `kube-api-access-XXXXX` projected
//! volume (a bound token for the API server, the cluster CA from the `kube-root-ca.crt`
//! ConfigMap, its namespace) mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container, so in-cluster
//! clients (client-go, kube-rs, the Python client) find their credentials where they
//! look. Mirror pods are left alone. Unlike upstream, a pod naming an account that does
//! not exist yet is admitted (the kubelet's token request fails until it exists): a
//! namespace's `default` account is created by the controller manager a moment after
//! the namespace, and `skiff apiserver` alone has none.

use serde_json::{Value, json};

use super::object::name_suffix;
use super::store::Registry;
use crate::status::ApiError;

pub(crate) const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const MIRROR: &str = "kubernetes.io/config.mirror";

impl Registry {
    pub(crate) async fn admit_service_account(
        &self,
        ns: &str,
        pod: &mut Value,
    ) -> Result<(), ApiError> {
        if pod
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(MIRROR))
            .is_some()
        {
            return Ok(());
        }
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let account = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .or_else(|| {
                spec.get("serviceAccount")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
            })
            .unwrap_or("default")
            .to_string();
        spec.insert("serviceAccountName".into(), json!(account));
        spec.insert("serviceAccount".into(), json!(account));
        let automount = match spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool)
        {
            Some(choice) => choice,
            None => {
                let accounts = super::builtin("", "v1", "serviceaccounts")?;
                match self.get(accounts, Some(ns), &account).await {
                    Ok(sa) => sa["automountServiceAccountToken"] != Value::Bool(false),
                    Err(e) if e.code == 404 => true,
                    Err(e) => return Err(e),
                }
            }
        };
        if !automount {
            return Ok(());
        }
        let mounted = |c: &Value| {
            c["volumeMounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["mountPath"] == MOUNT_PATH))
        };
        let lists = ["initContainers", "containers"];
        if lists.iter().any(|l| {
            spec.get(*l)
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(mounted))
        }) {
            // The pod mounts something of its own there: upstream leaves it be.
            return Ok(());
        }
        let name = format!("kube-api-access-{}", name_suffix());
        let volume = json!({
            "name": name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}},
                ],
            },
        });
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(volumes) => volumes.push(volume),
            None => {
                spec.insert("volumes".into(), json!([volume]));
            }
        }
        let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
        for list in lists {
            for container in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                match container
                    .get_mut("volumeMounts")
                    .and_then(Value::as_array_mut)
                {
                    Some(mounts) => mounts.push(mount.clone()),
                    None => container["volumeMounts"] = json!([mount.clone()]),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{WriteOptions, test_registry};
    use super::*;

    #[tokio::test]
    async fn pods_get_an_account_and_its_token_unless_they_opt_out() {
        let (_dir, registry) = test_registry();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i", "image": "busybox"}],
            "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}],
        }});
        registry
            .admit_service_account("ns", &mut pod)
            .await
            .expect("admit");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        let volume = &pod["spec"]["volumes"][0];
        let name = volume["name"].as_str().expect("name");
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        assert_eq!(
            volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        for path in [
            "/spec/initContainers/0/volumeMounts/0",
            "/spec/containers/0/volumeMounts/1",
        ] {
            let mount = pod.pointer(path).expect("mount");
            assert_eq!(mount["mountPath"], MOUNT_PATH);
            assert_eq!(mount["name"], name);
            assert_eq!(mount["readOnly"], true);
        }
        // The pod opts out.
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "automountServiceAccountToken": false, "containers": [{"name": "c"}]}});
        registry
            .admit_service_account("ns", &mut pod)
            .await
            .expect("admit");
        assert!(pod["spec"].get("volumes").is_none());
        // The account opts out.
        registry.ensure_namespace("ns").await.expect("namespace");
        let accounts = super::super::builtin("", "v1", "serviceaccounts").expect("kind");
        registry
            .create(
                accounts,
                Some("ns"),
                json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false}),
                WriteOptions::default(),
            )
            .await
            .expect("account");
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "quiet", "containers": [{"name": "c"}]}});
        registry
            .admit_service_account("ns", &mut pod)
            .await
            .expect("admit");
        assert!(pod["spec"].get("volumes").is_none());
        // Mirror pods are left alone.
        let mut pod = json!({"metadata": {"name": "p", "annotations": {MIRROR: "x"}}, "spec": {
            "containers": [{"name": "c"}]}});
        registry
            .admit_service_account("ns", &mut pod)
            .await
            .expect("admit");
        assert!(pod["spec"].get("serviceAccountName").is_none());
    }
}
