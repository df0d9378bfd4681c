//! ClusterIP and NodePort allocation for Services, done by the API server as upstream.
//!
//! Each allocated address or port is a key of its own (`/registry/ranges/serviceips/IP`,
//! `/registry/ranges/servicenodeports/PORT`), reserved with create-if-absent, the way
//! upstream's IPAddress objects do it: two Services can never get the same IP, and no
//! global bitmap is rewritten per allocation. The reservation is made before the Service
//! is stored and released if that fails or when the Service is deleted.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bytes::Bytes;
use rand::Rng;
use serde_json::{Value, json};
use skiff_storage::{KeyRange, Revision};

use super::store::Registry;
use crate::status::{ApiError, FieldError};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
/// Upstream's default `--service-node-port-range`.
pub(crate) const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The service CIDR (IPv4).
#[derive(Clone, Copy, Debug)]
pub struct ServiceCidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl ServiceCidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text}: expected ADDRESS/PREFIX"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{text}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{text}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{text}: the prefix must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceCidr {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The n-th address (1 = the first usable one, the `kubernetes` Service's).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & (u32::MAX << (32 - self.prefix))) == u32::from(self.base)
    }
}

/// What a Service holds, to release on failure or deletion.
#[derive(Default)]
pub(crate) struct Reserved {
    ip: Option<Ipv4Addr>,
    ports: Vec<u16>,
}

fn invalid(name: &str, field: &str, value: &str, detail: &str) -> ApiError {
    ApiError::invalid(
        "Service",
        "",
        name,
        vec![FieldError::invalid(field, value, detail)],
    )
}

impl Registry {
    async fn reserve(&self, key: String, owner: &str) -> Result<bool, ApiError> {
        match self
            .store
            .create(key.as_bytes(), Bytes::from(owner.to_string()))
            .await
        {
            Ok(_) => Ok(true),
            Err(skiff_storage::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    /// Reserves a free NodePort: a random start, then probing.
    async fn free_node_port(&self, owner: &str) -> Result<u16, ApiError> {
        let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
        let start = rand::rng().random_range(0..span);
        for j in 0..span {
            let port = NODE_PORTS.start() + ((start + j) % span) as u16;
            if self.reserve(format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::internal(
            "failed to allocate a node port: range is full",
        ))
    }

    /// Releases `key` if `owner` holds it (never another Service's).
    async fn unreserve(&self, key: String, owner: &str) {
        let held = match self.store.get(key.as_bytes(), None).await {
            Ok(Some(kv)) if kv.value == owner.as_bytes() => kv,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(key, error = %e, "reading a service allocation failed");
                return;
            }
        };
        if let Err(e) = self
            .store
            .delete(key.as_bytes(), Some(held.mod_revision))
            .await
            && !matches!(e, skiff_storage::Error::NotFound { .. })
        {
            tracing::warn!(key, error = %e, "releasing a service allocation failed");
        }
    }

    /// Gives a new Service its ClusterIP and NodePorts (keeping any the client asked for,
    /// if free).
    pub(crate) async fn allocate_service(
        &self,
        svc: &mut Value,
        owner: &str,
    ) -> Result<Reserved, ApiError> {
        let mut reserved = Reserved::default();
        let result = self.allocate_into(svc, owner, &mut reserved).await;
        if let Err(e) = result {
            self.release(&reserved, owner).await;
            return Err(e);
        }
        Ok(reserved)
    }

    async fn allocate_into(
        &self,
        svc: &mut Value,
        owner: &str,
        reserved: &mut Reserved,
    ) -> Result<(), ApiError> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if kind == "ExternalName" {
            return Ok(());
        }
        let cidr = self.service_cidr;
        match svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
        {
            Some("None") => {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
            Some(requested) => {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid(
                        &name,
                        "spec.clusterIPs",
                        requested,
                        "must be a valid IP address",
                    )
                })?;
                if !cidr.contains(ip) {
                    return Err(invalid(
                        &name,
                        "spec.clusterIPs",
                        requested,
                        &format!(
                            "failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {}/{}",
                            cidr.base, cidr.prefix
                        ),
                    ));
                }
                if !self.reserve(format!("{IP_PREFIX}{ip}"), owner).await? {
                    return Err(invalid(
                        &name,
                        "spec.clusterIPs",
                        requested,
                        &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                }
                reserved.ip = Some(ip);
            }
            None => {
                // Random start, then probe: O(1) expected while the range is not full.
                let usable = cidr.size() - 2;
                let start = rand::rng().random_range(0..usable);
                let mut found = None;
                for i in 0..usable {
                    // Skip the first address: it belongs to the `kubernetes` Service.
                    let n = 2 + (start + i) % (usable - 1);
                    let ip = cidr.nth(n);
                    if self.reserve(format!("{IP_PREFIX}{ip}"), owner).await? {
                        found = Some(ip);
                        break;
                    }
                }
                let ip = found.ok_or_else(|| {
                    ApiError::internal("failed to allocate a service IP: range is full")
                })?;
                reserved.ip = Some(ip);
            }
        }
        if let Some(ip) = reserved.ip {
            svc["spec"]["clusterIP"] = json!(ip.to_string());
            svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
        if svc.pointer("/spec/internalTrafficPolicy").is_none() {
            svc["spec"]["internalTrafficPolicy"] = json!("Cluster");
        }
        if kind == "NodePort" || kind == "LoadBalancer" {
            if svc.pointer("/spec/externalTrafficPolicy").is_none() {
                svc["spec"]["externalTrafficPolicy"] = json!("Cluster");
            }
            let count = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..count {
                let port = match svc["spec"]["ports"][i]["nodePort"].as_i64() {
                    Some(requested) => {
                        let port = u16::try_from(requested).ok().filter(|p| NODE_PORTS.contains(p)).ok_or_else(|| {
                            invalid(&name, &format!("spec.ports[{i}].nodePort"), &requested.to_string(), "provided port is not in the valid range. The range of valid ports is 30000-32767")
                        })?;
                        if !self.reserve(format!("{PORT_PREFIX}{port}"), owner).await? {
                            return Err(invalid(
                                &name,
                                &format!("spec.ports[{i}].nodePort"),
                                &port.to_string(),
                                "provided port is already allocated",
                            ));
                        }
                        port
                    }
                    None => self.free_node_port(owner).await?,
                };
                reserved.ports.push(port);
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
            }
        }
        Ok(())
    }

    pub(crate) async fn release(&self, reserved: &Reserved, owner: &str) {
        if let Some(ip) = reserved.ip {
            self.unreserve(format!("{IP_PREFIX}{ip}"), owner).await;
        }
        for port in &reserved.ports {
            self.unreserve(format!("{PORT_PREFIX}{port}"), owner).await;
        }
    }

    /// What a Service's spec holds.
    fn held(svc: &Value) -> Reserved {
        Reserved {
            ip: svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|ip| ip.parse().ok()),
            ports: svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ports| {
                    ports
                        .iter()
                        .filter_map(|p| p["nodePort"].as_u64())
                        .filter_map(|p| u16::try_from(p).ok())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// On update: reserves what the new spec holds that the old one did not (a
    /// ClusterIP after leaving ExternalName, new or changed NodePorts, NodePorts for a
    /// Service that became NodePort/LoadBalancer). Returns (added, to release once the
    /// update is stored).
    pub(crate) async fn update_service_allocations(
        &self,
        old: &Value,
        new: &mut Value,
        owner: &str,
    ) -> Result<(Reserved, Reserved), ApiError> {
        let before = Self::held(old);
        let mut added = Reserved::default();
        let name = new
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = new
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let result: Result<(), ApiError> = async {
            if kind != "ExternalName"
                && before.ip.is_none()
                && new.pointer("/spec/clusterIP").and_then(Value::as_str) != Some("None")
            {
                // Gains a ClusterIP: allocate as on create (ports are handled below).
                let mut probe = new.clone();
                if let Some(spec) = probe.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("type".into(), json!("ClusterIP"));
                }
                let mut reserved = Reserved::default();
                self.allocate_into(&mut probe, owner, &mut reserved).await?;
                added.ip = reserved.ip;
                for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                    if let Some(v) = probe.pointer(&format!("/spec/{field}")) {
                        new["spec"][field] = v.clone();
                    }
                }
            }
            let wants_ports = kind == "NodePort" || kind == "LoadBalancer";
            let count = new
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..count {
                match new["spec"]["ports"][i]["nodePort"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                {
                    Some(port) if before.ports.contains(&port) || added.ports.contains(&port) => {}
                    Some(port) => {
                        if !NODE_PORTS.contains(&port)
                            || !self.reserve(format!("{PORT_PREFIX}{port}"), owner).await?
                        {
                            return Err(invalid(
                                &name,
                                &format!("spec.ports[{i}].nodePort"),
                                &port.to_string(),
                                "provided port is already allocated or out of range (30000-32767)",
                            ));
                        }
                        added.ports.push(port);
                    }
                    None if wants_ports => {
                        let port = self.free_node_port(owner).await?;
                        added.ports.push(port);
                        new["spec"]["ports"][i]["nodePort"] = json!(port);
                    }
                    None => {}
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.release(&added, owner).await;
            return Err(e);
        }
        let after = Self::held(new);
        let removed = Reserved {
            ip: before.ip.filter(|ip| after.ip != Some(*ip)),
            ports: before
                .ports
                .into_iter()
                .filter(|p| !after.ports.contains(p))
                .collect(),
        };
        Ok((added, removed))
    }

    /// Releases what a deleted Service held.
    pub(crate) async fn release_service(&self, svc: &Value, owner: &str) {
        self.release(&Self::held(svc), owner).await;
    }

    /// On update: the ClusterIP cannot change, and what the client left out is kept.
    pub(crate) fn carry_over_allocations(
        old: &Value,
        new: &mut Value,
        name: &str,
    ) -> Result<(), ApiError> {
        let old_ip = old
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("");
        match new.pointer("/spec/clusterIP").and_then(Value::as_str) {
            None | Some("") => {
                for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                    if let Some(v) = old.pointer(&format!("/spec/{field}")) {
                        new["spec"][field] = v.clone();
                    }
                }
            }
            Some(ip) if ip != old_ip => {
                return Err(invalid(
                    name,
                    "spec.clusterIPs[0]",
                    ip,
                    "may not change once set",
                ));
            }
            Some(_) => {}
        }
        let old_ports = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut().filter(|p| p.get("nodePort").is_none()) {
                let same = old_ports.iter().find(|o| {
                    o.get("port") == port.get("port") && o.get("protocol") == port.get("protocol")
                });
                if let Some(node_port) = same.and_then(|o| o.get("nodePort")) {
                    port["nodePort"] = node_port.clone();
                }
            }
        }
        Ok(())
    }
}

/// Reservations that looked leaked on the previous repair pass, with the revision they
/// had then: only those still the same a pass later are released (a reservation is made
/// just before its Service is stored, so one pass alone cannot tell a leak from a
/// create in flight).
#[derive(Default)]
pub(crate) struct Suspects(HashMap<Vec<u8>, Revision>);

/// What a repair pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Repaired {
    pub released: usize,
    pub restored: usize,
}

impl Registry {
    /// Upstream's allocation repair loop, in one pass: releases reservations no Service
    /// holds (left by a crash between reserving and storing, or a failed release), and
    /// restores reservations a stored Service holds but that are missing (a restored
    /// backup), so allocation can never hand out an address twice.
    pub(crate) async fn repair_allocations(
        &self,
        suspects: &mut Suspects,
    ) -> Result<Repaired, ApiError> {
        let services = super::builtin("", "v1", "services")?;
        let mut report = Repaired::default();
        let mut next = Suspects::default();
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            let reservations = self.range_all(prefix).await?;
            for kv in reservations {
                let owner = String::from_utf8_lossy(&kv.value).into_owned();
                let held = match self.store.get(owner.as_bytes(), None).await {
                    Ok(Some(svc)) => {
                        let svc = super::object::decode(services, &svc)?;
                        let holds = Registry::held(&svc);
                        let item = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                        if prefix == IP_PREFIX {
                            holds.ip.is_some_and(|ip| ip.to_string() == item)
                        } else {
                            holds.ports.iter().any(|p| p.to_string() == item)
                        }
                    }
                    Ok(None) => false,
                    Err(e) => return Err(ApiError::internal(e)),
                };
                if held {
                    continue;
                }
                if suspects.0.get(&kv.key) == Some(&kv.mod_revision) {
                    match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                        Ok(_) => {
                            report.released += 1;
                            tracing::info!(key = %String::from_utf8_lossy(&kv.key), %owner, "released a leaked service allocation");
                        }
                        Err(
                            skiff_storage::Error::NotFound { .. }
                            | skiff_storage::Error::Conflict { .. },
                        ) => {}
                        Err(e) => return Err(ApiError::internal(e)),
                    }
                } else {
                    next.0.insert(kv.key.clone(), kv.mod_revision);
                }
            }
        }
        for kv in self.range_all(&services.key_prefix(None)).await? {
            let owner = String::from_utf8_lossy(&kv.key).into_owned();
            let svc = super::object::decode(services, &kv)?;
            let holds = Registry::held(&svc);
            let keys = holds
                .ip
                .filter(|ip| self.service_cidr.contains(*ip))
                .map(|ip| format!("{IP_PREFIX}{ip}"))
                .into_iter()
                .chain(holds.ports.iter().map(|p| format!("{PORT_PREFIX}{p}")));
            for key in keys {
                if self.reserve(key.clone(), &owner).await? {
                    report.restored += 1;
                    tracing::info!(%key, %owner, "restored a missing service allocation");
                }
            }
        }
        *suspects = next;
        Ok(report)
    }

    async fn range_all(&self, prefix: &str) -> Result<Vec<skiff_storage::KeyValue>, ApiError> {
        skiff_storage::range_all(self.store.as_ref(), &KeyRange::prefix(prefix))
            .await
            .map(|all| all.kvs)
            .map_err(ApiError::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repair_releases_leaks_after_two_passes_and_restores_missing_reservations() {
        let (_dir, registry) = crate::registry::store::test_registry();
        registry
            .ensure_namespace("default")
            .await
            .expect("namespace");
        let services = super::super::builtin("", "v1", "services").expect("services");
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let created = registry
            .create(services, Some("default"), svc, Default::default())
            .await
            .expect("create")
            .object;
        let ip = created["spec"]["clusterIP"]
            .as_str()
            .expect("ip")
            .to_string();
        let leaked = format!("{IP_PREFIX}10.96.0.77");
        registry
            .store
            .create(
                leaked.as_bytes(),
                Bytes::from("/registry/services/specs/default/gone"),
            )
            .await
            .expect("plant a leak");
        registry
            .store
            .delete(format!("{IP_PREFIX}{ip}").as_bytes(), None)
            .await
            .expect("lose a reservation");
        let mut suspects = Suspects::default();
        let first = registry
            .repair_allocations(&mut suspects)
            .await
            .expect("repair");
        assert_eq!(
            first,
            Repaired {
                released: 0,
                restored: 1
            }
        );
        let second = registry
            .repair_allocations(&mut suspects)
            .await
            .expect("repair");
        assert_eq!(
            second,
            Repaired {
                released: 1,
                restored: 0
            }
        );
        let kept = registry
            .store
            .get(format!("{IP_PREFIX}{ip}").as_bytes(), None)
            .await
            .expect("get");
        assert!(kept.is_some());
        assert!(
            registry
                .store
                .get(leaked.as_bytes(), None)
                .await
                .expect("get")
                .is_none()
        );
        let third = registry
            .repair_allocations(&mut suspects)
            .await
            .expect("repair");
        assert_eq!(third, Repaired::default());
    }

    #[test]
    fn cidrs_parse_and_count() {
        let cidr = ServiceCidr::parse("10.96.5.7/12").expect("cidr");
        assert_eq!(cidr.base, Ipv4Addr::new(10, 96, 0, 0));
        assert_eq!(cidr.nth(1), Ipv4Addr::new(10, 96, 0, 1));
        assert!(cidr.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert!(ServiceCidr::parse("10.0.0.0/31").is_err());
        assert!(ServiceCidr::parse("nonsense").is_err());
    }
}
