//! Each controller with an identity of its own, as upstream's
//! `--use-service-account-credentials`: the ServiceAccount `kube-system/<account>`
//! (created if missing) and a bound token for it (TokenRequest, an hour, renewed at 80%,
//! kept in memory and sent with each of the controller's requests). The API server's `system:controller:<account>` roles say what each may
//! do. Lists, watches and discovery go out with the controller manager's own identity,
//! as upstream's controllers list and watch through its shared informers; gets by name
//! and writes with the controller's.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, PostParams};

const NAMESPACE: &str = "kube-system";
const LIFETIME: i64 = 3600;

/// The service account upstream runs a controller as.
pub fn account_of(controller: &str) -> &str {
    match controller {
        "clusterrole-aggregation" => "clusterrole-aggregation-controller",
        "cronjob" => "cronjob-controller",
        "csrapproving" | "csrsigning" => "certificate-controller",
        "daemonset" => "daemon-set-controller",
        "deployment" => "deployment-controller",
        "disruption" => "disruption-controller",
        "endpoints" => "endpoint-controller",
        "garbagecollector" => "generic-garbage-collector",
        "job" => "job-controller",
        "namespace" => "namespace-controller",
        "nodelifecycle" => "node-controller",
        "podgc" => "pod-garbage-collector",
        "replicaset" => "replicaset-controller",
        "resourcequota" => "resourcequota-controller",
        "root-ca-cert-publisher" => "root-ca-cert-publisher",
        "serviceaccount" => "service-account-controller",
        "statefulset" => "statefulset-controller",
        "tokencleaner" => "token-cleaner",
        other => other,
    }
}

/// Makes clients for service accounts from the controller manager's own.
pub struct ServiceAccountClients {
    root: kube::Client,
    /// Reaches the server with no credentials (each request gets its account's token).
    anonymous: kube::Client,
}

impl ServiceAccountClients {
    /// `config` reaches the server; its credentials are not used.
    pub fn new(root: kube::Client, mut config: kube::Config) -> Result<Self, kube::Error> {
        config.auth_info = kube::config::AuthInfo::default();
        Ok(ServiceAccountClients {
            root,
            anonymous: kube::Client::try_from(config)?,
        })
    }

    /// A client acting as `account`, and the task that keeps its token fresh (it must
    /// run as long as the client is used). The token stays in memory.
    pub async fn client(
        &self,
        account: &str,
    ) -> Result<(kube::Client, impl Future<Output = ()> + Send + 'static), kube::Error> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.root.clone(), NAMESPACE);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(account.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        let (token, lifetime) = request_token(&accounts, account).await?;
        let token = Arc::new(RwLock::new(token));
        let client = split(self.root.clone(), self.anonymous.clone(), token.clone());
        let account = account.to_string();
        let renew = async move {
            let mut wait = lifetime.mul_f64(0.8);
            loop {
                tokio::time::sleep(wait).await;
                wait = match request_token(&accounts, &account).await {
                    Ok((fresh, lifetime)) => {
                        if let Ok(mut current) = token.write() {
                            *current = fresh;
                        }
                        lifetime.mul_f64(0.8)
                    }
                    Err(e) => {
                        tracing::warn!(%account, error = %e, "renewing a controller's token; retrying");
                        Duration::from_secs(10)
                    }
                };
            }
        };
        Ok((client, renew))
    }
}

/// Whether a GET names one object (`.../pods/NAME`, `.../namespaces/NAME`) rather than
/// a collection (a list or watch) or discovery.
fn names_one(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") if segments.len() > 2 => &segments[2..],
        Some(&"apis") if segments.len() > 3 => &segments[3..],
        _ => return false,
    };
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" {
        &rest[2..]
    } else {
        rest
    };
    rest.len() >= 2
}

/// A client that lists and watches as `reader` and does the rest through `writer` with
/// the bearer `token`.
fn split(reader: kube::Client, writer: kube::Client, token: Arc<RwLock<String>>) -> kube::Client {
    let service = tower::service_fn(move |mut request: http::Request<kube::client::Body>| {
        let collection = request.method() == http::Method::GET && !names_one(request.uri().path());
        let client = if collection {
            reader.clone()
        } else {
            let bearer = token
                .read()
                .ok()
                .and_then(|t| http::HeaderValue::from_str(&format!("Bearer {t}")).ok());
            if let Some(mut bearer) = bearer {
                bearer.set_sensitive(true);
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, bearer);
            }
            writer.clone()
        };
        async move { client.send(request).await }
    });
    kube::Client::new(service, "default")
}

/// A token for `account`, and how long it lives.
async fn request_token(
    accounts: &Api<ServiceAccount>,
    account: &str,
) -> Result<(String, Duration), kube::Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(LIFETIME),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued: TokenRequest = accounts
        .create_subresource("token", account, &PostParams::default(), &request)
        .await?;
    let status = issued.status.ok_or_else(|| {
        kube::Error::Service(
            format!("the token request for {account} came back without a token").into(),
        )
    })?;
    // The lifetime the server granted (it may shorten what was asked).
    let granted =
        status.expiration_timestamp.0.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    let granted = u64::try_from(granted)
        .unwrap_or(0)
        .clamp(60, u64::try_from(LIFETIME).unwrap_or(3600));
    Ok((status.token, Duration::from_secs(granted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gets_by_name_are_told_from_lists() {
        for one in [
            "/api/v1/namespaces/t1",
            "/api/v1/namespaces/t1/pods/p",
            "/api/v1/nodes/n1",
            "/apis/apps/v1/namespaces/t1/deployments/d/scale",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        ] {
            assert!(names_one(one), "{one}");
        }
        for many in [
            "/api",
            "/apis/apps/v1",
            "/api/v1/namespaces",
            "/api/v1/namespaces/t1/pods",
            "/apis/apps/v1/deployments",
            "/api/v1/nodes",
        ] {
            assert!(!names_one(many), "{many}");
        }
    }
}
