//! The `kube-system/kube-dns` Service (kubeadm's name and labels, so tools that look
//! for it find it) at the cluster's DNS address, with Endpoints naming where this DNS
//! server answers. The Service has no selector: the server is not a pod, so its
//! address is written here as the API server's own is for `kubernetes`; the endpoints
//! controller mirrors it into an EndpointSlice the proxy programs.

use std::net::IpAddr;

use kube::api::{Patch, PatchParams};
use serde_json::json;

/// Where the DNS Service points.
#[derive(Clone, Debug)]
pub struct Publish {
    /// The Service's ClusterIP (kubelets' `--cluster-dns`).
    pub cluster_ip: String,
    /// The address and port the server answers on.
    pub address: IpAddr,
    pub port: u16,
}

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kube-dns";
const MANAGER: &str = "skiff-dns";

/// Creates or updates the Service and its Endpoints (server-side apply).
pub async fn publish(client: kube::Client, publish: &Publish) -> Result<(), kube::Error> {
    let params = PatchParams::apply(MANAGER).force();
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), NAMESPACE);
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
        },
        "spec": {
            "clusterIP": publish.cluster_ip,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": publish.port},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": publish.port},
            ],
        },
    });
    services
        .patch(NAME, &params, &Patch::Apply(&service))
        .await?;
    let endpoints: kube::Api<k8s_openapi::api::core::v1::Endpoints> =
        kube::Api::namespaced(client, NAMESPACE);
    let object = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {"k8s-app": "kube-dns"}},
        "subsets": [{
            "addresses": [{"ip": publish.address.to_string()}],
            "ports": [
                {"name": "dns", "port": publish.port, "protocol": "UDP"},
                {"name": "dns-tcp", "port": publish.port, "protocol": "TCP"},
            ],
        }],
    });
    endpoints
        .patch(NAME, &params, &Patch::Apply(&object))
        .await?;
    Ok(())
}
