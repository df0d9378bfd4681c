//! The endpoints controllers: for every Service with a selector, the Endpoints object
//! and an EndpointSlice listing the matching pods' IPs (ready ones as addresses, others
//! as not ready, terminating ones flagged), with each service port resolved against the
//! pod's container ports (named target ports included). Services without a selector
//! keep the Endpoints someone else writes (the API server's `kubernetes` Service); those
//! are mirrored into an EndpointSlice, as upstream's mirroring controller does.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use serde_json::{Value, json};

use crate::queue::{WorkQueue, Workers, drive, meta_key, reflect};
use crate::shared::Shared;
use crate::{Error, pod_ready};

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// A service port resolved for a pod: (name, target port, protocol).
type ResolvedPorts = Vec<(String, i32, String)>;
/// Ready and not-ready addresses of the pods sharing one port resolution.
type Addresses = (Vec<Value>, Vec<Value>);

#[derive(Clone)]
struct Context {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    queue: WorkQueue,
}

pub async fn run(client: kube::Client, shared_pods: Shared<Pod>) -> Result<(), Error> {
    let (services, s_writer) = reflector::store();
    let pods = shared_pods.store();
    let (endpoints, e_writer) = reflector::store();
    let ctx = Context {
        client: client.clone(),
        services,
        pods,
        endpoints,
        queue: WorkQueue::gated(),
    };
    let service_events = reflect(&client, s_writer);
    let pod_events = shared_pods.subscribe();
    let endpoint_events = reflect(&client, e_writer);
    let mut workers = Workers::default();
    let worker_ctx = ctx.clone();
    workers.sync_loop(1, &ctx.queue, "endpoints", move |key| {
        let ctx = worker_ctx.clone();
        async move { sync(&ctx, &key).await.map(|()| None) }
    });
    let q = ctx.queue.clone();
    let services = service_events.for_each(move |s| {
        if let Ok(s) = s {
            q.add(&meta_key(&s.metadata));
        }
        futures::future::ready(())
    });
    // A pod change may concern any Service of its namespace.
    let (q, store) = (ctx.queue.clone(), ctx.services.clone());
    let pods = pod_events.for_each(move |p| {
        {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            for s in store.state() {
                // Services without a selector do not follow pods (their Endpoints are
                // written by someone else and only mirrored to slices).
                let selects = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|sel| !sel.is_empty());
                if selects && s.metadata.namespace.as_deref() == Some(ns.as_str()) {
                    q.add(&meta_key(&s.metadata));
                }
            }
        }
        futures::future::ready(())
    });
    let q = ctx.queue.clone();
    let endpoints = endpoint_events.for_each(move |e| {
        if let Ok(e) = e {
            q.add(&meta_key(&e.metadata));
        }
        futures::future::ready(())
    });
    // Syncs start once every cache has its first list; all objects are looked at
    // again every minute.
    drive(
        &ctx.queue,
        vec![
            Box::new(ctx.services.clone()),
            Box::new(ctx.pods.clone()),
            Box::new(ctx.endpoints.clone()),
        ],
        ctx.services.clone(),
        futures::future::join3(services, pods, endpoints),
    )
    .await;
    Ok(())
}

/// The port a service port targets on this pod: a number, or a named container port.
fn target_port(pod: &Pod, port: &k8s_openapi::api::core::v1::ServicePort) -> Option<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

async fn sync(ctx: &Context, key: &str) -> Result<(), kube::Error> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let Some(service) = ctx.services.get(&ObjectRef::new(name).within(ns)) else {
        return remove_leftovers(ctx, ns, name).await;
    };
    let spec = service.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
        return mirror(ctx, &service).await;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(());
    }
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.clone().unwrap_or_default();
    // Group pods by their resolved ports (named target ports may differ per pod).
    let mut subsets: BTreeMap<ResolvedPorts, Addresses> = BTreeMap::new();
    let mut slice_endpoints = Vec::new();
    let mut slice_ports: Option<ResolvedPorts> = None;
    let mut pods: Vec<_> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in pods {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let resolved: ResolvedPorts = ports
            .iter()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    target_port(&pod, p)?,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let is_ready = pod_ready(&pod) && !terminating;
        let target = json!({"kind": "Pod", "name": pod.metadata.name, "namespace": ns, "uid": pod.metadata.uid});
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let mut address = json!({"ip": ip, "targetRef": target});
        if let Some(node) = &node {
            address["nodeName"] = json!(node);
        }
        // A pod whose subdomain is this Service is named by its hostname (the DNS
        // record `hostname.service.namespace.svc`), as upstream's ShouldSetHostname.
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| s.subdomain.as_deref() == Some(name))
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty());
        if let Some(hostname) = &hostname {
            address["hostname"] = json!(hostname);
        }
        let entry = subsets.entry(resolved.clone()).or_default();
        if is_ready || (publish_not_ready && !terminating) {
            entry.0.push(address);
        } else if !terminating {
            entry.1.push(address);
        }
        slice_ports.get_or_insert(resolved);
        let mut endpoint = json!({
            "addresses": [ip],
            "conditions": {"ready": is_ready || publish_not_ready, "serving": pod_ready(&pod), "terminating": terminating},
            "targetRef": target,
        });
        if let Some(node) = node {
            endpoint["nodeName"] = json!(node);
        }
        if let Some(hostname) = hostname {
            endpoint["hostname"] = json!(hostname);
        }
        slice_endpoints.push(endpoint);
    }
    let subsets: Vec<Value> = subsets
        .into_iter()
        .filter(|(_, (ready, not_ready))| !ready.is_empty() || !not_ready.is_empty())
        .map(|(ports, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            let mut subset = json!({"ports": ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect();
    let labels = service.metadata.labels.clone().unwrap_or_default();
    let mut endpoint_labels = labels.clone();
    endpoint_labels.insert(MANAGED.into(), "endpoints-controller".into());
    write_endpoints(ctx, ns, name, &endpoint_labels, subsets).await?;
    let ports: Vec<Value> = slice_ports
        .unwrap_or_else(|| {
            ports
                .iter()
                .map(|p| {
                    (
                        p.name.clone().unwrap_or_default(),
                        p.port,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
                .collect()
        })
        .into_iter()
        .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
        .collect();
    write_slice(
        ctx,
        ns,
        name,
        "endpointslice-controller.k8s.io",
        &labels,
        slice_endpoints,
        ports,
    )
    .await
}

/// Marks what this controller wrote, so only those are removed with their Service.
const MANAGED: &str = "endpoints.skiff.dev/managed-by";

/// A Service is gone: the Endpoints and slice this controller made for it go too.
async fn remove_leftovers(ctx: &Context, ns: &str, name: &str) -> Result<(), kube::Error> {
    let ours = ctx
        .endpoints
        .get(&ObjectRef::new(name).within(ns))
        .is_some_and(|e| {
            e.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(MANAGED))
        });
    let params = kube::api::DeleteParams::default();
    if ours {
        let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    match slices.delete(&format!("{name}-slice"), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn write_endpoints(
    ctx: &Context,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    subsets: Vec<Value>,
) -> Result<(), kube::Error> {
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let existing = ctx.endpoints.get(&ObjectRef::new(name).within(ns));
    let desired: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "subsets": subsets,
    }))
    .map_err(kube::Error::SerdeError)?;
    match existing {
        Some(current) => {
            let same = serde_json::to_value(&current.subsets).ok()
                == serde_json::to_value(&desired.subsets).ok()
                && current.metadata.labels.clone().unwrap_or_default() == *labels;
            if same {
                return Ok(());
            }
            let mut updated = desired;
            updated.metadata.resource_version = current.metadata.resource_version.clone();
            match api.replace(name, &PostParams::default(), &updated).await {
                Ok(_) => Ok(()),
                // The store was stale: the next event syncs again.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        None => match api.create(&PostParams::default(), &desired).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        },
    }
}

async fn write_slice(
    ctx: &Context,
    ns: &str,
    service: &str,
    manager: &str,
    labels: &BTreeMap<String, String>,
    endpoints: Vec<Value>,
    ports: Vec<Value>,
) -> Result<(), kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let name = format!("{service}-slice");
    let mut labels = labels.clone();
    labels.insert(SERVICE_NAME.into(), service.into());
    labels.insert(MANAGED_BY.into(), manager.into());
    let mut desired: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.get_opt(&name).await? {
        Some(current) => {
            let same = serde_json::to_value(&current.endpoints).ok()
                == serde_json::to_value(&desired.endpoints).ok()
                && serde_json::to_value(&current.ports).ok()
                    == serde_json::to_value(&desired.ports).ok()
                && current.metadata.labels == desired.metadata.labels;
            if same {
                return Ok(());
            }
            desired.metadata.resource_version = current.metadata.resource_version;
            match api.replace(&name, &PostParams::default(), &desired).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        None => match api.create(&PostParams::default(), &desired).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// A Service without a selector: its Endpoints (written by someone else) mirrored into
/// an EndpointSlice.
async fn mirror(ctx: &Context, service: &Service) -> Result<(), kube::Error> {
    let ns = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let Some(endpoints) = ctx.endpoints.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    let mut slice_endpoints = Vec::new();
    let mut ports = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        for address in subset.addresses.iter().flatten() {
            slice_endpoints.push(json!({"addresses": [address.ip], "conditions": {"ready": true, "serving": true, "terminating": false}}));
        }
        for port in subset.ports.iter().flatten() {
            ports.push(json!({"name": port.name.clone().unwrap_or_default(), "port": port.port, "protocol": port.protocol.clone().unwrap_or_else(|| "TCP".into())}));
        }
    }
    let labels = service.metadata.labels.clone().unwrap_or_default();
    write_slice(
        ctx,
        ns,
        name,
        "endpointslicemirroring-controller.k8s.io",
        &labels,
        slice_endpoints,
        ports,
    )
    .await
}
