//! What the proxy programs, computed from Services and EndpointSlices without I/O: one
//! [`ServicePort`] per port of a Service that has a data path (not headless, not
//! ExternalName), with the endpoints of that port gathered from every slice of the
//! Service, and upstream's choice of which endpoints take cluster and node-local
//! traffic (ready ones; serving-and-terminating ones only when none is ready).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(text: Option<&str>) -> Option<Protocol> {
        match text.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name nftables and conntrack use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Names one port of one Service: `namespace/name/protocol/port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/p{}",
            self.namespace,
            self.name,
            self.protocol.name(),
            self.port
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Whether it runs on this proxy's node.
    pub local: bool,
}

/// One port of a Service with what the proxy needs to program it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub key: PortKey,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP`: how long a client sticks to its endpoint.
    pub affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local` (for node ports, external and load balancer IPs).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// Every endpoint of the port, sorted and without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Whether traffic from outside the node comes in (node port, external or load
    /// balancer IPs).
    pub fn has_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// The endpoints cluster traffic goes to (upstream's CategorizeEndpoints): the
    /// ready ones, or when none is ready the serving terminating ones; only this node's
    /// with `internalTrafficPolicy: Local`.
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        usable(
            self.endpoints
                .iter()
                .filter(|e| !self.internal_local || e.local),
        )
    }

    /// The endpoints external traffic with `externalTrafficPolicy: Local` goes to.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter().filter(|e| e.local))
    }

    /// Every endpoint either kind of traffic may go to.
    pub fn all_used_endpoints(&self) -> Vec<&Endpoint> {
        let mut all = self.cluster_endpoints();
        if self.external_local && self.has_external() {
            for e in self.local_endpoints() {
                if !all.contains(&e) {
                    all.push(e);
                }
            }
        }
        all
    }
}

fn usable<'a>(endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<_> = endpoints.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints.filter(|e| e.serving && e.terminating).collect()
}

/// Whether the proxy programs `service` at all: not headless, not ExternalName, not
/// handed to another proxy (`service.kubernetes.io/service-proxy-name`).
pub fn proxied(service: &Service) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return false;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    if service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key("service.kubernetes.io/service-proxy-name"))
    {
        return false;
    }
    !cluster_ips(service).is_empty()
}

fn cluster_ips(service: &Service) -> Vec<Ipv4Addr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_ref());
    }
    ips.into_iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// The ports of `service` with their endpoints from `slices` (the Service's own
/// EndpointSlices, any order). `node` is this proxy's node name.
pub fn service_ports(service: &Service, slices: &[&EndpointSlice], node: &str) -> Vec<ServicePort> {
    if !proxied(service) {
        return Vec::new();
    }
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let parse_ips = |list: Option<&Vec<String>>| -> Vec<Ipv4Addr> {
        list.into_iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect()
    };
    let external_ips = parse_ips(spec.external_ips.as_ref());
    let load_balancer_ips: Vec<Ipv4Addr> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .collect();
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10_800)
    });
    let cluster_ips = cluster_ips(service);
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        let port_name = port.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let target = slice.ports.iter().flatten().find(|p| {
                p.name.clone().unwrap_or_default() == port_name
                    && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
            });
            let Some(target) = target
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse().ok()) else {
                    continue;
                };
                let conditions = endpoint.conditions.as_ref();
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                endpoints.push(Endpoint {
                    ip,
                    port: target,
                    ready,
                    serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    local: endpoint.node_name.as_deref() == Some(node),
                });
            }
        }
        endpoints.sort();
        // The same address in two slices (a move between slices): keep the first.
        endpoints.dedup_by(|b, a| a.ip == b.ip && a.port == b.port);
        let node_port = port
            .node_port
            .filter(|_| matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")))
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        ports.push(ServicePort {
            key: PortKey {
                namespace: namespace.clone(),
                name: name.clone(),
                protocol,
                port: number,
            },
            cluster_ips: cluster_ips.clone(),
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            affinity_seconds,
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            endpoints,
        });
    }
    ports
}

/// Groups slices by the Service they belong to (`namespace`, `name`).
pub fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<(String, String), Vec<&'a EndpointSlice>> {
    let mut grouped: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        grouped
            .entry((namespace, service.clone()))
            .or_default()
            .push(slice);
    }
    grouped
}

/// `ns/web/tcp/p80` at 10.96.0.5 with node port 30080 and endpoints 10.244.0.N:8080
/// (N, ready), all on this node: the rules' unit tests start from it.
#[cfg(test)]
pub(crate) fn example_port(endpoints: &[(u8, bool)]) -> ServicePort {
    ServicePort {
        key: PortKey {
            namespace: "ns".into(),
            name: "web".into(),
            protocol: Protocol::Tcp,
            port: 80,
        },
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 5)],
        node_port: Some(30080),
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        affinity_seconds: None,
        external_local: false,
        internal_local: false,
        endpoints: endpoints
            .iter()
            .map(|(n, ready)| Endpoint {
                ip: Ipv4Addr::new(10, 244, 0, *n),
                port: 8080,
                ready: *ready,
                serving: *ready,
                terminating: false,
                local: true,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "web"},
            "spec": spec,
        }))
        .expect("service")
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "web-x",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .expect("slice")
    }

    #[test]
    fn ready_endpoints_first_then_terminating_serving_ones() {
        let svc = service(serde_json::json!({
            "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "type": "NodePort",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
        }));
        let s = slice(serde_json::json!([
            {"addresses": ["10.244.0.2"], "conditions": {"ready": true}, "nodeName": "n1"},
            {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.0.4"], "conditions": {"ready": false}},
        ]));
        let ports = service_ports(&svc, &[&s], "n1");
        assert_eq!(ports.len(), 1);
        let port = &ports[0];
        assert_eq!(port.key.to_string(), "ns/web/tcp/p80");
        assert_eq!(port.node_port, Some(30080));
        let ips: Vec<_> = port.cluster_endpoints().iter().map(|e| e.ip).collect();
        assert_eq!(ips, vec![Ipv4Addr::new(10, 244, 0, 2)]);
        // Without the ready one, the serving terminating one takes traffic.
        let s = slice(serde_json::json!([
            {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.0.4"], "conditions": {"ready": false}},
        ]));
        let ports = service_ports(&svc, &[&s], "n1");
        let ips: Vec<_> = ports[0].cluster_endpoints().iter().map(|e| e.ip).collect();
        assert_eq!(ips, vec![Ipv4Addr::new(10, 244, 0, 3)]);
        assert!(ports[0].local_endpoints().is_empty());
    }

    #[test]
    fn headless_and_external_name_services_have_no_ports() {
        let headless = service(serde_json::json!({
            "clusterIP": "None", "ports": [{"port": 80}],
        }));
        assert!(service_ports(&headless, &[], "n1").is_empty());
        let external = service(serde_json::json!({
            "type": "ExternalName", "externalName": "example.com",
        }));
        assert!(service_ports(&external, &[], "n1").is_empty());
    }

    #[test]
    fn ports_match_slices_by_name_and_protocol() {
        let svc = service(serde_json::json!({
            "clusterIP": "10.96.0.5",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "protocol": "UDP"}],
            "sessionAffinity": "ClientIP",
        }));
        let s = slice(serde_json::json!([{"addresses": ["10.244.0.2"]}]));
        let ports = service_ports(&svc, &[&s], "n1");
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].endpoints.len(), 1);
        assert_eq!(ports[0].endpoints[0].port, 8080);
        assert_eq!(ports[0].affinity_seconds, Some(10_800));
        assert!(ports[1].endpoints.is_empty(), "no slice port named dns/UDP");
        assert_eq!(ports[1].key.protocol, Protocol::Udp);
    }
}
