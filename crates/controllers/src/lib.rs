//! The Skiff controller manager: control loops, each an API client (kube-rs watchers and
//! reflectors, as any operator), each driving one kind of object toward what it asks for.
//! The loops are listed explicitly in [`run`]; each lives in its own module:
//!
//! - `deployment.rs`: rolls Deployments out through ReplicaSets.
//! - `replicaset.rs`: keeps `spec.replicas` pods per ReplicaSet.
//! - `daemonset.rs`: one pod per eligible node.
//! - `statefulset.rs`: ordered pods with stable names and their own claims.
//! - `endpoints.rs`: Endpoints and EndpointSlices of Services from their ready pods.
//! - `namespace.rs`: empties a terminating namespace, then finalizes it.
//! - `serviceaccount.rs`: a `default` ServiceAccount in every namespace.
//! - `root_ca_publisher.rs`: the `kube-root-ca.crt` ConfigMap in every namespace.
//! - `node_lifecycle.rs`: unreachable nodes tainted and their pods evicted; pod CIDRs.
//! - `garbage_collector.rs`: deletes objects whose owners are gone, and carries out
//!   foreground and orphan deletions.
//! - `job.rs` (with TTL after finished), `cronjob.rs`: batch workloads.
//! - `podgc.rs`: pods of deleted nodes, never-scheduled terminating pods, old finished pods.
//! - `disruption.rs`: PodDisruptionBudget status, which evictions spend.
//! - `resourcequota.rs`: ResourceQuota usage.
//! - `clusterrole_aggregation.rs`: the rules of aggregated ClusterRoles (admin, edit,
//!   view).
//! - `certificates.rs`: node client CertificateSigningRequests approved, approved ones
//!   signed with the cluster CA; `token_cleaner.rs`: expired bootstrap tokens deleted.
//!
//! `events.rs` writes their Events, `queue.rs` holds the work queue and sync loop.

mod adoption;
pub mod certificates;
mod clusterrole_aggregation;
pub mod credentials;
mod cronjob;
mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
mod events;
mod garbage_collector;
mod job;
mod namespace;
mod node_lifecycle;
mod podgc;
mod queue;
mod replicaset;
mod resourcequota;
mod resources;
mod root_ca_publisher;
mod serviceaccount;
mod shared;
mod statefulset;
mod token_cleaner;

use std::future::Future;
use std::pin::Pin;

/// Which controllers run, and the node lifecycle settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub controllers: Vec<String>,
    /// How long a node may go without renewing its Lease before it is Ready=Unknown
    /// (upstream's `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace_period: std::time::Duration,
    /// Pod CIDRs for nodes are carved from this (upstream's `--cluster-cidr`).
    pub cluster_cidr: String,
    /// The cluster CA (PEM) the root CA publisher puts in every namespace (none: that
    /// controller does not run).
    pub root_ca: Option<String>,
    /// The CA the CSR signer issues certificates with (none: that controller does not
    /// run).
    pub signing: Option<certificates::Signing>,
    /// Whose credentials the controllers use.
    pub credentials: Credentials,
}

/// Where the controllers' clients come from.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// Every controller shares the controller manager's client.
    #[default]
    Shared,
    /// Each controller acts as its own service account (upstream's
    /// `--use-service-account-credentials`): `config` reaches the server (its
    /// credentials are ignored).
    ServiceAccounts { config: Box<kube::Config> },
}

pub const ALL: &[&str] = &[
    "clusterrole-aggregation",
    "cronjob",
    "csrapproving",
    "csrsigning",
    "daemonset",
    "deployment",
    "disruption",
    "endpoints",
    "replicaset",
    "resourcequota",
    "root-ca-cert-publisher",
    "namespace",
    "nodelifecycle",
    "serviceaccount",
    "statefulset",
    "garbagecollector",
    "job",
    "podgc",
    "tokencleaner",
];

impl Default for Config {
    fn default() -> Self {
        Config {
            controllers: ALL.iter().map(|c| c.to_string()).collect(),
            node_monitor_grace_period: std::time::Duration::from_secs(40),
            cluster_cidr: "10.244.0.0/16".into(),
            root_ca: None,
            signing: None,
            credentials: Credentials::Shared,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown controller {0:?} (known: {ALL:?})")]
    Unknown(String),
    #[error("controller credentials: {0}")]
    Credentials(String),
    #[error("{controller}: {source}")]
    Controller {
        controller: &'static str,
        #[source]
        source: kube::Error,
    },
}

type Loop = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Whether a pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// An object's controller: the owner reference with `controller: true`.
pub(crate) fn controller_of(
    meta: &kube::api::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// A write whose object is already gone has nothing left to do.
pub(crate) fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `new` differs from `old` in any of `keys`, an absent field counting as 0,
/// `[]` or `""` (what a status omits when it is empty).
pub(crate) fn status_changed(
    old: &serde_json::Value,
    new: &serde_json::Value,
    keys: &[&str],
) -> bool {
    keys.iter().any(|k| {
        let (o, n) = (&old[*k], &new[*k]);
        o != n && !(o.is_null() && (n == 0 || n == &serde_json::json!([]) || n == ""))
    })
}

/// Merge-patches an object's status; an object already gone is fine.
pub(crate) async fn write_status<K>(
    api: &kube::Api<K>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = kube::api::Patch::Merge(serde_json::json!({ "status": status }));
    ignore_not_found(
        api.patch_status(name, &kube::api::PatchParams::default(), &patch)
            .await,
    )
}

/// Deletes a pod (gracefully), if it is still there.
pub(crate) async fn delete_pod(
    api: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<(), kube::Error> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    ignore_not_found(api.delete(name, &kube::api::DeleteParams::default()).await)
}

/// Runs the configured controllers until one of them fails.
pub async fn run(client: kube::Client, config: Config) -> Result<(), Error> {
    let mut loops: Vec<Loop> = Vec::new();
    // One pod watch for every controller that follows pods.
    let (pods, pod_driver) = shared::Shared::<k8s_openapi::api::core::v1::Pod>::new(&client);
    loops.push(Box::pin(async move {
        pod_driver.await;
        Ok(())
    }));
    let accounts = match &config.credentials {
        Credentials::Shared => None,
        Credentials::ServiceAccounts { config } => Some(
            credentials::ServiceAccountClients::new(client.clone(), (**config).clone())
                .map_err(|e| Error::Credentials(e.to_string()))?,
        ),
    };
    if let Some(unknown) = config
        .controllers
        .iter()
        .find(|name| !ALL.contains(&name.as_str()))
    {
        return Err(Error::Unknown(unknown.clone()));
    }
    // One client (and one token) per account: two controllers may share one.
    let mut made: std::collections::HashMap<&str, kube::Client> = Default::default();
    for name in &config.controllers {
        let client = match &accounts {
            None => client.clone(),
            Some(_) if made.contains_key(credentials::account_of(name)) => {
                made[credentials::account_of(name)].clone()
            }
            Some(accounts) => {
                let account = credentials::account_of(name);
                // A transient failure (the API server restarting) is retried a while.
                let mut attempt = 0;
                let (client, renew) = loop {
                    match accounts.client(account).await {
                        Ok(made) => break made,
                        Err(e) if attempt < 30 => {
                            attempt += 1;
                            tracing::warn!(%account, error = %e, "making a controller's credentials; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(Error::Credentials(format!("{account}: {e}"))),
                    }
                };
                loops.push(Box::pin(async move {
                    renew.await;
                    Ok(())
                }));
                made.insert(account, client.clone());
                client
            }
        };
        let pods = pods.clone();
        loops.push(match name.as_str() {
            "clusterrole-aggregation" => Box::pin(clusterrole_aggregation::run(client)),
            "cronjob" => Box::pin(cronjob::run(client)),
            "csrapproving" => Box::pin(certificates::run_approver(client)),
            "csrsigning" => match config.signing.clone() {
                Some(signing) => Box::pin(certificates::run_signer(client, signing)),
                None => {
                    tracing::warn!("no signing CA given: certificate requests are not signed");
                    continue;
                }
            },
            "tokencleaner" => Box::pin(token_cleaner::run(client)),
            "daemonset" => Box::pin(daemonset::run(client, pods)),
            "deployment" => Box::pin(deployment::run(client, pods)),
            "disruption" => Box::pin(disruption::run(client, pods)),
            "job" => Box::pin(job::run(client, pods)),
            "podgc" => Box::pin(podgc::run(client, pods)),
            "endpoints" => Box::pin(endpoints::run(client, pods)),
            "replicaset" => Box::pin(replicaset::run(client, pods)),
            "resourcequota" => Box::pin(resourcequota::run(client, pods)),
            "namespace" => Box::pin(namespace::run(client)),
            "nodelifecycle" => Box::pin(node_lifecycle::run(
                client,
                node_lifecycle::Settings {
                    grace: config.node_monitor_grace_period,
                    cluster_cidr: node_lifecycle::parse_cidr(&config.cluster_cidr),
                },
                pods,
            )),
            "serviceaccount" => Box::pin(serviceaccount::run(client)),
            "root-ca-cert-publisher" => match config.root_ca.clone() {
                Some(ca) => Box::pin(root_ca_publisher::run(client, ca)),
                None => {
                    tracing::warn!("no root CA known: kube-root-ca.crt is not published");
                    continue;
                }
            },
            "statefulset" => Box::pin(statefulset::run(client, pods)),
            "garbagecollector" => Box::pin(garbage_collector::run(client, pods)),
            other => return Err(Error::Unknown(other.to_string())),
        });
    }
    tracing::info!(controllers = ?config.controllers, "starting controllers");
    let (result, _, _) = futures::future::select_all(loops).await;
    result
}
