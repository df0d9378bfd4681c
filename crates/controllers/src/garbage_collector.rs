//! The garbage collector: objects point at their owners (`metadata.ownerReferences`);
//! when every owner is gone the object is deleted (background propagation). Owners
//! deleted in the foreground (finalizer `foregroundDeletion`, set by the API server)
//! wait until their dependents are gone; owners deleted with Orphan (finalizer
//! `orphan`) first release their dependents by removing the references to themselves.
//!
//! This first version works in passes over every kind's metadata (LISTs at
//! resourceVersion 0, served from the API server's watch cache) every two seconds,
//! rather than keeping upstream's dependency graph from watches.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::resources::{Kind, discover};
use crate::shared::Shared;
use crate::{Error, ignore_not_found};

const PERIOD: Duration = Duration::from_secs(2);
const REDISCOVER: Duration = Duration::from_secs(60);
const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

struct Object {
    kind: usize,
    namespace: Option<String>,
    name: String,
    uid: String,
    owners: Vec<OwnerReference>,
    finalizers: Vec<String>,
    deleting: bool,
}

pub async fn run(client: kube::Client, pods: Shared<Pod>) -> Result<(), Error> {
    let pods = pods.store();
    pods.wait_until_ready().await.ok();
    let mut kinds: Vec<Kind> = Vec::new();
    let mut discovered: Option<Instant> = None;
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if discovered.is_none_or(|d| d.elapsed() > REDISCOVER) {
            match discover(&client).await {
                Ok(found) => {
                    kinds = found;
                    discovered = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector discovery");
                    continue;
                }
            }
        }
        if let Err(e) = pass(&client, &kinds, &pods).await {
            tracing::warn!(error = %e, "garbage collection pass");
        }
    }
}

fn api(client: &kube::Client, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    match (kind.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &kind.resource),
        _ => Api::all_with(client.clone(), &kind.resource),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn pass(client: &kube::Client, kinds: &[Kind], pods: &Store<Pod>) -> Result<(), kube::Error> {
    let mut objects = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        // Pods, by far the most numerous, come from the shared informer, not a list.
        if kind.resource.group.is_empty() && kind.resource.plural == "pods" {
            for pod in pods.state() {
                let meta = &pod.metadata;
                objects.push(Object {
                    kind: i,
                    namespace: meta.namespace.clone(),
                    name: meta.name.clone().unwrap_or_default(),
                    uid: meta.uid.clone().unwrap_or_default(),
                    owners: meta.owner_references.clone().unwrap_or_default(),
                    finalizers: meta.finalizers.clone().unwrap_or_default(),
                    deleting: meta.deletion_timestamp.is_some(),
                });
            }
            continue;
        }
        let list = api(client, kind, None)
            .list_metadata(&ListParams::default().match_any())
            .await?;
        for item in list.items {
            let meta = item.metadata;
            objects.push(Object {
                kind: i,
                namespace: meta.namespace,
                name: meta.name.unwrap_or_default(),
                uid: meta.uid.unwrap_or_default(),
                owners: meta.owner_references.unwrap_or_default(),
                finalizers: meta.finalizers.unwrap_or_default(),
                deleting: meta.deletion_timestamp.is_some(),
            });
        }
    }
    let uids: HashSet<&str> = objects.iter().map(|o| o.uid.as_str()).collect();
    let mut dependents: HashMap<&str, Vec<&Object>> = HashMap::new();
    for o in &objects {
        for owner in &o.owners {
            dependents.entry(owner.uid.as_str()).or_default().push(o);
        }
    }
    for owner in objects.iter().filter(|o| o.deleting) {
        let deps = dependents
            .get(owner.uid.as_str())
            .map_or(&[][..], Vec::as_slice);
        if owner.finalizers.iter().any(|f| f == ORPHAN) {
            for d in deps {
                release(client, &kinds[d.kind], d, &owner.uid).await?;
            }
            remove_finalizer(client, &kinds[owner.kind], owner, ORPHAN).await?;
        } else if owner.finalizers.iter().any(|f| f == FOREGROUND) {
            if deps.is_empty() {
                remove_finalizer(client, &kinds[owner.kind], owner, FOREGROUND).await?;
            }
            for d in deps.iter().filter(|d| !d.deleting) {
                delete(client, &kinds[d.kind], d, DeleteParams::foreground()).await?;
            }
        }
    }
    for o in objects
        .iter()
        .filter(|o| !o.deleting && !o.owners.is_empty())
    {
        if o.owners.iter().any(|r| uids.contains(r.uid.as_str())) {
            continue;
        }
        // Listed before its owner was? Ask for each owner before deleting.
        let mut absent = true;
        for r in &o.owners {
            if owner_exists(client, kinds, o, r).await? {
                absent = false;
                break;
            }
        }
        if absent {
            tracing::info!(
                object = %o.name,
                namespace = o.namespace.as_deref().unwrap_or_default(),
                "deleting: its owners are gone"
            );
            delete(client, &kinds[o.kind], o, DeleteParams::background()).await?;
        }
    }
    Ok(())
}

async fn owner_exists(
    client: &kube::Client,
    kinds: &[Kind],
    dependent: &Object,
    owner: &OwnerReference,
) -> Result<bool, kube::Error> {
    let Some(kind) = kinds
        .iter()
        .find(|k| k.resource.api_version == owner.api_version && k.resource.kind == owner.kind)
    else {
        // A kind this server does not serve: leave the dependent alone.
        return Ok(true);
    };
    match api(client, kind, dependent.namespace.as_deref())
        .get_metadata_opt(&owner.name)
        .await?
    {
        Some(found) => Ok(found.metadata.uid.as_deref() == Some(owner.uid.as_str())),
        None => Ok(false),
    }
}

async fn delete(
    client: &kube::Client,
    kind: &Kind,
    o: &Object,
    mut params: DeleteParams,
) -> Result<(), kube::Error> {
    params.preconditions = Some(Preconditions {
        uid: Some(o.uid.clone()),
        resource_version: None,
    });
    match api(client, kind, o.namespace.as_deref())
        .delete(&o.name, &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) || matches!(&e, kube::Error::Api(s) if s.code == 409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the reference to `owner_uid` from a dependent (an orphaning owner).
async fn release(
    client: &kube::Client,
    kind: &Kind,
    o: &Object,
    owner_uid: &str,
) -> Result<(), kube::Error> {
    drop_from_metadata_list(client, kind, o, "ownerReferences", |r| {
        r["uid"] != owner_uid
    })
    .await
}

async fn remove_finalizer(
    client: &kube::Client,
    kind: &Kind,
    o: &Object,
    finalizer: &str,
) -> Result<(), kube::Error> {
    drop_from_metadata_list(client, kind, o, "finalizers", |f| f != finalizer).await
}

/// Rewrites the list `metadata.FIELD` keeping the items `keep` accepts, by
/// compare-and-swap on the version read.
async fn drop_from_metadata_list(
    client: &kube::Client,
    kind: &Kind,
    o: &Object,
    field: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), kube::Error> {
    let api = api(client, kind, o.namespace.as_deref());
    let Some(current) = api.get_opt(&o.name).await? else {
        return Ok(());
    };
    let meta = serde_json::to_value(&current.metadata).map_err(kube::Error::SerdeError)?;
    let kept: Vec<&serde_json::Value> = meta[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| keep(item))
        .collect();
    // An emptied list is left out by the API server, as upstream's omitempty.
    let patch = json!({"metadata": {field: kept, "resourceVersion": meta["resourceVersion"]}});
    ignore_not_found(
        api.patch(&o.name, &PatchParams::default(), &Patch::Merge(patch))
            .await,
    )
}
