//! Each controller with an identity of its own, as upstream's
//! `--use-service-account-credentials`: the ServiceAccount `kube-system/<account>`
//! (created if missing) and a bound token for it (TokenRequest, an hour, renewed at 80%)
//! that the controller's client reads from a private file (kube-rs re-reads token files
//! every minute). The API server's `system:controller:<account>` roles say what each may
//! do. Lists, watches and discovery go out with the controller manager's own identity,
//! as upstream's controllers list and watch through its shared informers; gets by name
//! and writes with the controller's.

use std::future::Future;
use std::path::{Path, PathBuf};
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
    /// The server, its CA and the user agent; no credentials.
    config: kube::Config,
    dir: PathBuf,
}

impl ServiceAccountClients {
    /// `dir` holds the tokens (created with mode 0700; the caller removes it).
    pub fn new(root: kube::Client, mut config: kube::Config, dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        config.auth_info = kube::config::AuthInfo::default();
        Ok(ServiceAccountClients {
            root,
            config,
            dir: dir.to_path_buf(),
        })
    }

    /// A client acting as `account`, and the task that keeps its token fresh (it must
    /// run as long as the client is used).
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
        let path = self.dir.join(account);
        let lifetime = refresh(&accounts, account, &path).await?;
        let mut config = self.config.clone();
        config.auth_info.token_file = Some(path.display().to_string());
        let writer = kube::Client::try_from(config)?;
        let client = split(self.root.clone(), writer);
        let account = account.to_string();
        let renew = async move {
            let mut wait = lifetime.mul_f64(0.8);
            loop {
                tokio::time::sleep(wait).await;
                wait = match refresh(&accounts, &account, &path).await {
                    Ok(lifetime) => lifetime.mul_f64(0.8),
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

/// A client that lists and watches as `reader` and does the rest as `writer`.
fn split(reader: kube::Client, writer: kube::Client) -> kube::Client {
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let collection = request.method() == http::Method::GET && !names_one(request.uri().path());
        let client = if collection {
            reader.clone()
        } else {
            writer.clone()
        };
        async move { client.send(request).await }
    });
    kube::Client::new(service, "default")
}

/// Requests a token for `account` and writes it to `path`; how long it lives.
async fn refresh(
    accounts: &Api<ServiceAccount>,
    account: &str,
    path: &Path,
) -> Result<Duration, kube::Error> {
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
    write_private(path, status.token.as_bytes()).map_err(|e| kube::Error::Service(e.into()))?;
    // The lifetime the server granted (it may shorten what was asked).
    let granted =
        status.expiration_timestamp.0.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    let granted = u64::try_from(granted)
        .unwrap_or(0)
        .clamp(60, u64::try_from(LIFETIME).unwrap_or(3600));
    Ok(Duration::from_secs(granted))
}

/// Writes a file only its owner reads, atomically.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    std::fs::rename(&tmp, path)
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
