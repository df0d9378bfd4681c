//! The root CA publisher: every namespace that is not terminating has the
//! `kube-root-ca.crt` ConfigMap holding the cluster CA (`ca.crt`), kept as it should be
//! when edited or deleted, as upstream's controller does. Pods' service account volumes
//! read it to verify the API server.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::Error;

const NAME: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub async fn run(client: kube::Client, ca: String) -> Result<(), Error> {
    let namespaces = crate::serviceaccount::active_namespaces(&client);
    // The ConfigMap changed or went: put it right.
    let published = watcher::watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={NAME}")),
    )
    .default_backoff()
    .filter_map(|event| async move {
        match event {
            Ok(Event::Apply(cm) | Event::Delete(cm)) => cm.metadata.namespace,
            _ => None,
        }
    });
    let mut names = futures::stream::select(namespaces, published.boxed());
    while let Some(ns) = names.next().await {
        publish(&client, &ns, &ca).await;
    }
    Ok(())
}

async fn publish(client: &kube::Client, ns: &str, ca: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<String, String> = [("ca.crt".to_string(), ca.to_string())].into();
    // A list by name, as upstream reads from its cache (the publisher's role may create
    // and update ConfigMaps, not get them).
    let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={NAME}"));
    let found = api.list(&by_name).await.map(|l| l.items.into_iter().next());
    let result = match found {
        Ok(Some(cm)) if cm.data.as_ref() == Some(&data) => return,
        // An update (the role's verb), on the version read.
        Ok(Some(mut cm)) => {
            cm.data = Some(data);
            api.replace(NAME, &PostParams::default(), &cm)
                .await
                .map(|_| ())
        }
        Ok(None) => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    namespace: Some(ns.into()),
                    annotations: Some(
                        [(
                            "kubernetes.io/description".to_string(),
                            DESCRIPTION.to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.map(|_| ())
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::debug!(namespace = %ns, "published the root CA"),
        // Exists already, or the namespace is terminating.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
        Err(e) => tracing::warn!(namespace = %ns, error = %e, "publishing the root CA"),
    }
}
