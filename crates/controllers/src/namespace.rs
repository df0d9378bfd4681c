//! The namespace controller: a namespace being deleted (with the `kubernetes` finalizer
//! the API server put on it) is emptied of every namespaced object, then finalized, so
//! the API server removes it.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;

use crate::Error;
use crate::queue::{WorkQueue, Workers};
use crate::resources::discover;

pub async fn run(client: kube::Client) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let queue = WorkQueue::default();
    let mut workers = Workers::default();
    {
        let (queue, client) = (queue.clone(), client.clone());
        workers.spawn(async move {
            loop {
                let name = queue.next().await;
                match sync(&client, &name).await {
                    Ok(true) => {}
                    Ok(false) => queue.add_after(&name, Duration::from_secs(1)),
                    Err(e) => {
                        tracing::warn!(namespace = %name, error = %e, "emptying a namespace");
                        queue.add_after(&name, Duration::from_secs(2));
                    }
                }
                queue.done(&name);
            }
        });
    }
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .boxed();
    while let Some(event) = events.next().await {
        if let Ok(ns) = event
            && ns.metadata.deletion_timestamp.is_some()
        {
            queue.add(ns.metadata.name.as_deref().unwrap_or_default());
        }
    }
    Ok(())
}

/// One pass over a terminating namespace; `true` once it is finalized (or gone).
async fn sync(client: &kube::Client, name: &str) -> Result<bool, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let Some(ns) = api.get_opt(name).await? else {
        return Ok(true);
    };
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == "kubernetes") {
        return Ok(true);
    }
    let mut remaining = 0;
    for kind in discover(client).await? {
        if !kind.namespaced || !kind.deletable {
            continue;
        }
        let objects: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), name, &kind.resource);
        let listed = objects.list_metadata(&ListParams::default()).await?;
        for object in &listed.items {
            if object.metadata.deletion_timestamp.is_some() {
                remaining += 1;
                continue;
            }
            let object_name = object.metadata.name.as_deref().unwrap_or_default();
            match objects
                .delete(object_name, &DeleteParams::background())
                .await
            {
                Ok(either) => {
                    if either.is_left() {
                        remaining += 1;
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        tracing::debug!(namespace = %name, remaining, "waiting for objects to go");
        return Ok(false);
    }
    let mut finalized = ns.clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(
            finalizers
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect(),
        );
    }
    api.replace_subresource::<Namespace>("finalize", name, &PostParams::default(), &finalized)
        .await?;
    tracing::info!(namespace = %name, "namespace emptied and finalized");
    Ok(true)
}
