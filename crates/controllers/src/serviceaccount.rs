//! The ServiceAccount controller: every namespace that is not terminating has a
//! `default` ServiceAccount (recreated if deleted).

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::Error;

/// The name of every namespace that is not terminating, each time it changes (and all
/// of them at every relist): what per-namespace publishers react to.
pub(crate) fn active_namespaces(
    client: &kube::Client,
) -> futures::stream::BoxStream<'static, String> {
    watcher::watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|ns| async move {
        let ns = ns.ok()?;
        if ns.metadata.deletion_timestamp.is_some() {
            return None;
        }
        ns.metadata.name
    })
    .boxed()
}

pub async fn run(client: kube::Client) -> Result<(), Error> {
    let namespaces = active_namespaces(&client);
    let deleted = watcher::watcher(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default().fields("metadata.name=default"),
    )
    .default_backoff()
    .filter_map(|event| async move {
        match event {
            Ok(Event::Delete(sa)) => sa.metadata.namespace,
            _ => None,
        }
    });
    let mut names = futures::stream::select(namespaces, deleted.boxed());
    while let Some(ns) = names.next().await {
        ensure_default(&client, &ns).await;
    }
    Ok(())
}

async fn ensure_default(client: &kube::Client, ns: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    // A list by name, as upstream reads from its cache (the controller's role may create
    // accounts, not get them).
    let by_name = kube::api::ListParams::default().fields("metadata.name=default");
    match api
        .list_metadata(&by_name)
        .await
        .map(|l| l.items.is_empty())
    {
        Ok(false) => return,
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(namespace = %ns, error = %e, "reading the default service account");
            return;
        }
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => tracing::debug!(namespace = %ns, "created the default service account"),
        // Exists already, or the namespace is terminating.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
        Err(e) => {
            tracing::warn!(namespace = %ns, error = %e, "creating the default service account")
        }
    }
}
