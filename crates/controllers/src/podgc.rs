//! PodGC: force-deletes pods bound to nodes that no longer exist, terminating pods that
//! were never scheduled, and the oldest finished pods beyond a threshold (upstream's
//! `--terminated-pod-gc-threshold`, 12,500).

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};

use kube::runtime::reflector::Store;

use crate::Error;
use crate::shared::Shared;

const PERIOD: Duration = Duration::from_secs(20);
const TERMINATED_THRESHOLD: usize = 12_500;

pub async fn run(client: kube::Client, pods: Shared<Pod>) -> Result<(), Error> {
    let pods = pods.store();
    crate::shared::passes_over(&pods, PERIOD, "pod garbage collection", || {
        pass(&client, &pods)
    })
    .await
}

async fn pass(client: &kube::Client, pods: &Store<Pod>) -> Result<(), kube::Error> {
    let nodes: HashSet<String> = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default().match_any())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let pods = pods.state();
    let mut doomed: Vec<&Pod> = Vec::new();
    let mut finished: Vec<&Pod> = Vec::new();
    for pod in pods.iter().map(|p| &**p) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        match node {
            Some(node) if !nodes.contains(node) => doomed.push(pod),
            None if pod.metadata.deletion_timestamp.is_some() => doomed.push(pod),
            _ if matches!(phase, Some("Succeeded" | "Failed")) => finished.push(pod),
            _ => {}
        }
    }
    if finished.len() > TERMINATED_THRESHOLD {
        finished.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let excess = finished.len() - TERMINATED_THRESHOLD;
        doomed.extend(finished.into_iter().take(excess));
    }
    for pod in doomed {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        tracing::info!(pod = %format!("{ns}/{name}"), "garbage-collecting a pod");
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
