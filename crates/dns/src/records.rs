//! The cluster's DNS records, as the Kubernetes DNS specification (schema 1.1.0) defines
//! them, held in memory and answered without I/O. Built from Services and their
//! EndpointSlices one Service at a time, so a change costs what that Service has.
//!
//! Names under the cluster domain: `svc.ns.svc.zone` (A/AAAA to the ClusterIP, or to
//! every ready endpoint of a headless Service; CNAME for ExternalName),
//! `host.svc.ns.svc.zone` (a headless endpoint by hostname or dashed address),
//! `_port._proto.svc.ns.svc.zone` (SRV), `a-b-c-d.ns.pod.zone` (pods, as CoreDNS's
//! `pods insecure`), `dns-version.zone` (TXT), and PTR records for every address named.
//! A name that exists without records of the asked type is NODATA; a name that does
//! not exist is NXDOMAIN; both carry the zone's SOA.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The version of the Kubernetes DNS schema served (`dns-version` TXT).
const SCHEMA_VERSION: &str = "1.1.0";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Port {
    name: String,
    /// `tcp`, `udp` or `sctp`.
    protocol: String,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    ip: IpAddr,
    /// The endpoint's hostname, or its dashed address.
    host: String,
    ports: Vec<Port>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless(Vec<Endpoint>),
    ExternalName(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceRecords {
    kind: Kind,
    ports: Vec<Port>,
}

/// What a query gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Authoritative records (answers, additionals).
    Answer(Vec<Record>, Vec<Record>),
    /// The name exists, not with this type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// An ExternalName Service: its CNAME; the target is another resolver's.
    Alias(Box<Record>, Name),
    /// Not this server's: ask the upstream resolvers.
    Forward,
}

/// Every record of the cluster domain.
pub struct Records {
    zone: Name,
    ttl: u32,
    services: HashMap<(String, String), ServiceRecords>,
    /// Services per namespace (a namespace with Services is a name that exists).
    namespaces: HashMap<String, usize>,
    /// Address -> the names pointing at it, per Service that named it.
    ptr: HashMap<IpAddr, BTreeMap<(String, String), Name>>,
    /// The addresses each Service named, to take back without a walk of `ptr`.
    ptr_of: HashMap<(String, String), Vec<IpAddr>>,
}

fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn protocol(text: Option<&str>) -> String {
    text.unwrap_or("TCP").to_ascii_lowercase()
}

impl Records {
    /// Records for `domain` (`cluster.local`) with `ttl` seconds on every answer.
    pub fn new(domain: &str, ttl: u32) -> Result<Records, hickory_proto::ProtoError> {
        let mut zone = Name::from_ascii(domain)?.to_lowercase();
        zone.set_fqdn(true);
        Ok(Records {
            zone,
            ttl,
            services: HashMap::new(),
            namespaces: HashMap::new(),
            ptr: HashMap::new(),
            ptr_of: HashMap::new(),
        })
    }

    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// How many Services have records.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    fn name(&self, labels: &[&str]) -> Option<Name> {
        let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        name.set_fqdn(false);
        name.append_domain(&self.zone).ok()
    }

    fn service_name(&self, namespace: &str, service: &str) -> Option<Name> {
        self.name(&[service, namespace, "svc"])
    }

    /// Replaces the records of Service `namespace/name` (`service` None: it is gone)
    /// with what it and its `slices` say.
    pub fn set(
        &mut self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[&EndpointSlice],
    ) {
        let key = (namespace.to_string(), name.to_string());
        if self.services.remove(&key).is_some()
            && let Some(count) = self.namespaces.get_mut(namespace)
        {
            *count -= 1;
            if *count == 0 {
                self.namespaces.remove(namespace);
            }
        }
        for ip in self.ptr_of.remove(&key).unwrap_or_default() {
            if let Some(names) = self.ptr.get_mut(&ip) {
                names.remove(&key);
                if names.is_empty() {
                    self.ptr.remove(&ip);
                }
            }
        }
        let Some(records) = service.and_then(|s| build(s, slices)) else {
            return;
        };
        // PTR: the ClusterIPs name the Service; headless endpoints name themselves.
        let named: Vec<(IpAddr, Name)> = match &records.kind {
            Kind::ClusterIp(ips) => self
                .service_name(namespace, name)
                .map(|n| ips.iter().map(|ip| (*ip, n.clone())).collect())
                .unwrap_or_default(),
            Kind::Headless(endpoints) => endpoints
                .iter()
                .filter_map(|e| Some((e.ip, self.name(&[&e.host, name, namespace, "svc"])?)))
                .collect(),
            Kind::ExternalName(_) => Vec::new(),
        };
        for (ip, n) in named {
            self.ptr.entry(ip).or_default().insert(key.clone(), n);
            self.ptr_of.entry(key.clone()).or_default().push(ip);
        }
        *self.namespaces.entry(namespace.to_string()).or_default() += 1;
        self.services.insert(key, records);
    }

    /// The zone's SOA record (the authority of negative answers).
    pub fn soa(&self) -> Record {
        let mname = self
            .name(&["ns", "dns"])
            .unwrap_or_else(|| self.zone.clone());
        let rname = self
            .name(&["hostmaster"])
            .unwrap_or_else(|| self.zone.clone());
        Record::from_rdata(
            self.zone.clone(),
            self.ttl,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, self.ttl)),
        )
    }

    fn record(&self, name: Name, data: RData) -> Record {
        Record::from_rdata(name, self.ttl, data)
    }

    fn address(&self, name: &Name, ip: IpAddr) -> Record {
        match ip {
            IpAddr::V4(v4) => self.record(name.clone(), RData::A(A(v4))),
            IpAddr::V6(v6) => self.record(name.clone(), RData::AAAA(AAAA(v6))),
        }
    }

    /// Address records of `ips` at `name` for `qtype` (A or AAAA).
    fn addresses(&self, name: &Name, ips: &[IpAddr], qtype: RecordType) -> Resolution {
        let records: Vec<Record> = ips
            .iter()
            .filter(|ip| match qtype {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                RecordType::ANY => true,
                _ => false,
            })
            .map(|ip| self.address(name, *ip))
            .collect();
        if records.is_empty() {
            Resolution::NoData
        } else {
            Resolution::Answer(records, Vec::new())
        }
    }

    /// Answers `qname` `qtype`.
    pub fn resolve(&self, qname: &Name, qtype: RecordType) -> Resolution {
        let qname = qname.to_lowercase();
        if !self.zone.zone_of(&qname) {
            return self.reverse(&qname, qtype);
        }
        let depth = qname.num_labels() as usize - self.zone.num_labels() as usize;
        let labels: Vec<String> = qname
            .iter()
            .take(depth)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        match labels.as_slice() {
            [] => match qtype {
                RecordType::SOA => Resolution::Answer(vec![self.soa()], Vec::new()),
                RecordType::NS => match self.name(&["ns", "dns"]) {
                    Some(ns) => Resolution::Answer(
                        vec![self.record(qname.clone(), RData::NS(NS(ns)))],
                        Vec::new(),
                    ),
                    None => Resolution::NoData,
                },
                _ => Resolution::NoData,
            },
            ["dns-version"] => match qtype {
                RecordType::TXT | RecordType::ANY => Resolution::Answer(
                    vec![self.record(
                        qname.clone(),
                        RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
                    )],
                    Vec::new(),
                ),
                _ => Resolution::NoData,
            },
            ["svc"] | ["pod"] => Resolution::NoData,
            [namespace, "svc"] => {
                if self.namespaces.contains_key(*namespace) {
                    Resolution::NoData
                } else {
                    Resolution::NxDomain
                }
            }
            [service, namespace, "svc"] => self.service(&qname, namespace, service, qtype),
            [first, service, namespace, "svc"] => {
                let Some(records) = self
                    .services
                    .get(&(namespace.to_string(), service.to_string()))
                else {
                    return Resolution::NxDomain;
                };
                if let Some(proto) = first.strip_prefix('_') {
                    // `_tcp.svc.ns.svc`: there if a port speaks it (an empty
                    // non-terminal above the SRV names).
                    let exists = ports_of(records)
                        .iter()
                        .any(|p| p.protocol == proto && !p.name.is_empty());
                    return if exists {
                        Resolution::NoData
                    } else {
                        Resolution::NxDomain
                    };
                }
                let Kind::Headless(endpoints) = &records.kind else {
                    return Resolution::NxDomain;
                };
                let ips: Vec<IpAddr> = endpoints
                    .iter()
                    .filter(|e| e.host == *first)
                    .map(|e| e.ip)
                    .collect();
                if ips.is_empty() {
                    return Resolution::NxDomain;
                }
                self.addresses(&qname, &ips, qtype)
            }
            [port, proto, service, namespace, "svc"] => {
                let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_'))
                else {
                    return Resolution::NxDomain;
                };
                self.srv(&qname, namespace, service, Some((port, proto)), qtype)
            }
            [ip, namespace, "pod"] => {
                // Any namespace, any address written with dashes (CoreDNS's `pods insecure`).
                let _ = namespace;
                let parsed: Option<IpAddr> = ip
                    .replace('-', ".")
                    .parse()
                    .ok()
                    .or_else(|| ip.replace('-', ":").parse().ok());
                match parsed {
                    Some(address) => self.addresses(&qname, &[address], qtype),
                    None => Resolution::NxDomain,
                }
            }
            [_namespace, "pod"] => Resolution::NoData,
            _ => Resolution::NxDomain,
        }
    }

    fn service(
        &self,
        qname: &Name,
        namespace: &str,
        service: &str,
        qtype: RecordType,
    ) -> Resolution {
        let Some(records) = self
            .services
            .get(&(namespace.to_string(), service.to_string()))
        else {
            return Resolution::NxDomain;
        };
        match &records.kind {
            Kind::ExternalName(target) => {
                let Ok(mut target) = Name::from_ascii(target) else {
                    return Resolution::NoData;
                };
                target.set_fqdn(true);
                let cname = self.record(qname.clone(), RData::CNAME(CNAME(target.clone())));
                if qtype == RecordType::CNAME {
                    return Resolution::Answer(vec![cname], Vec::new());
                }
                Resolution::Alias(Box::new(cname), target)
            }
            _ if qtype == RecordType::SRV => self.srv(qname, namespace, service, None, qtype),
            Kind::ClusterIp(ips) => self.addresses(qname, ips, qtype),
            Kind::Headless(endpoints) => {
                let ips: Vec<IpAddr> = endpoints.iter().map(|e| e.ip).collect();
                self.addresses(qname, &ips, qtype)
            }
        }
    }

    /// SRV records of a Service's named ports (`only`: one port and protocol).
    fn srv(
        &self,
        qname: &Name,
        namespace: &str,
        service: &str,
        only: Option<(&str, &str)>,
        qtype: RecordType,
    ) -> Resolution {
        let Some(records) = self
            .services
            .get(&(namespace.to_string(), service.to_string()))
        else {
            return Resolution::NxDomain;
        };
        let wanted = |p: &Port| {
            !p.name.is_empty()
                && only.is_none_or(|(name, proto)| p.name == name && p.protocol == proto)
        };
        if !ports_of(records).iter().any(wanted) {
            return if only.is_some() {
                Resolution::NxDomain
            } else {
                Resolution::NoData
            };
        }
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Resolution::NoData;
        }
        let Some(service_name) = self.service_name(namespace, service) else {
            return Resolution::NoData;
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match &records.kind {
            Kind::ClusterIp(ips) => {
                for p in records.ports.iter().filter(|p| wanted(p)) {
                    answers.push(self.record(
                        qname.clone(),
                        RData::SRV(SRV::new(0, 100, p.port, service_name.clone())),
                    ));
                }
                for ip in ips {
                    additionals.push(self.address(&service_name, *ip));
                }
            }
            Kind::Headless(endpoints) => {
                let targets: Vec<(&Endpoint, &Port)> = endpoints
                    .iter()
                    .flat_map(|e| e.ports.iter().filter(|p| wanted(p)).map(move |p| (e, p)))
                    .collect();
                let weight = (100 / targets.len().max(1)).max(1) as u16;
                for (e, p) in targets {
                    let Some(host) = self.name(&[&e.host, service, namespace, "svc"]) else {
                        continue;
                    };
                    answers.push(self.record(
                        qname.clone(),
                        RData::SRV(SRV::new(0, weight, p.port, host.clone())),
                    ));
                    let a = self.address(&host, e.ip);
                    if !additionals.contains(&a) {
                        additionals.push(a);
                    }
                }
            }
            Kind::ExternalName(_) => return Resolution::NoData,
        }
        if answers.is_empty() {
            Resolution::NoData
        } else {
            Resolution::Answer(answers, additionals)
        }
    }

    /// PTR records for addresses the cluster named; other reverse names are forwarded.
    fn reverse(&self, qname: &Name, qtype: RecordType) -> Resolution {
        let Some(ip) = reverse_address(qname) else {
            return Resolution::Forward;
        };
        let Some(names) = self.ptr.get(&ip) else {
            return Resolution::Forward;
        };
        if qtype != RecordType::PTR && qtype != RecordType::ANY {
            return Resolution::NoData;
        }
        let answers = names
            .values()
            .map(|n| self.record(qname.clone(), RData::PTR(PTR(n.clone()))))
            .collect();
        Resolution::Answer(answers, Vec::new())
    }
}

/// The address of an `in-addr.arpa` or `ip6.arpa` name.
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    match labels.as_slice() {
        [d, c, b, a, arpa1, arpa2] if arpa1 == "in-addr" && arpa2 == "arpa" => {
            format!("{a}.{b}.{c}.{d}").parse().ok()
        }
        [nibbles @ .., ip6, arpa] if ip6 == "ip6" && arpa == "arpa" && nibbles.len() == 32 => {
            let hex: String = nibbles.iter().rev().map(String::as_str).collect();
            let groups: Vec<&str> = (0..8).map(|i| &hex[i * 4..i * 4 + 4]).collect();
            groups.join(":").parse().ok()
        }
        _ => None,
    }
}

fn ports_of(records: &ServiceRecords) -> Vec<Port> {
    match &records.kind {
        Kind::Headless(endpoints) => {
            let mut ports: Vec<Port> = endpoints.iter().flat_map(|e| e.ports.clone()).collect();
            ports.dedup();
            ports
        }
        _ => records.ports.clone(),
    }
}

/// The records of one Service, or None when it has none (no ClusterIP to speak of).
fn build(service: &Service, slices: &[&EndpointSlice]) -> Option<ServiceRecords> {
    let spec = service.spec.as_ref()?;
    let ports: Vec<Port> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol(p.protocol.as_deref()),
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.clone().filter(|t| !t.is_empty())?;
        return Some(ServiceRecords {
            kind: Kind::ExternalName(target),
            ports,
        });
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if !headless {
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                spec.cluster_ip
                    .as_ref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            return None;
        }
        return Some(ServiceRecords {
            kind: Kind::ClusterIp(ips),
            ports,
        });
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for slice in slices {
        let slice_ports: Vec<Port> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(Port {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: protocol(p.protocol.as_deref()),
                    port: u16::try_from(p.port?).ok()?,
                })
            })
            .collect();
        for e in &slice.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            for address in &e.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                if endpoints.iter().any(|x| x.ip == ip) {
                    continue;
                }
                endpoints.push(Endpoint {
                    ip,
                    host: e
                        .hostname
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| dashed(&ip)),
                    ports: slice_ports.clone(),
                });
            }
        }
    }
    endpoints.sort_by_key(|e| e.ip);
    Some(ServiceRecords {
        kind: Kind::Headless(endpoints),
        ports,
    })
}

#[cfg(test)]
mod tests;
