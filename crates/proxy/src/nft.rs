//! The nftables form of the proxy's rules (upstream kube-proxy's nftables mode, IPv4):
//! one table of our own, verdict maps from destination to a chain per Service port, whose
//! rules pick an endpoint and DNAT to it. A full sync replaces the table in one transaction; a partial
//! sync rewrites only what a changed Service port renders differently, so its cost does
//! not grow with the number of Services.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use sha2::Digest;

use crate::model::{Endpoint, PortKey, ServicePort};

/// Marks packets the masquerading chain SNATs (upstream's bit).
const MASQUERADE_MARK: &str = "0x4000";

/// Settings the rules depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub table: String,
    /// Pod addresses: service traffic from elsewhere is masqueraded so replies return
    /// through this node.
    pub cluster_cidr: Option<String>,
}

/// The map a Service port's element goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Map {
    ServiceIps,
    ServiceNodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
}

impl Map {
    fn name(self) -> &'static str {
        match self {
            Map::ServiceIps => "service-ips",
            Map::ServiceNodePorts => "service-nodeports",
            Map::NoEndpointServices => "no-endpoint-services",
            Map::NoEndpointNodePorts => "no-endpoint-nodeports",
        }
    }
}

/// Everything one Service port contributes to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Chain name -> its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Affinity sets: name -> timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// (map, key) -> verdict.
    pub elements: BTreeMap<(Map, String), String>,
}

/// A short stable hash that keeps chain names unique (upstream's base32 of sha256).
fn hash(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02X}")).collect()
}

fn chain_name(prefix: &str, key: &PortKey) -> String {
    let base = key.to_string();
    format!("{prefix}-{}-{base}", hash(&base))
}

fn endpoint_name(prefix: &str, key: &PortKey, endpoint: &Endpoint) -> String {
    let base = format!("{key}__{}/{}", endpoint.ip, endpoint.port);
    format!("{prefix}-{}-{base}", hash(&base))
}

/// The rules of one Service port.
pub fn render(port: &ServicePort, settings: &Settings) -> Rendered {
    let mut out = Rendered::default();
    let key = &port.key;
    let proto = key.protocol.name();
    let service_chain = chain_name("service", key);
    let external_chain = chain_name("external", key);
    let local_chain = chain_name("local", key);
    let cluster = port.cluster_endpoints();
    let local = port.local_endpoints();

    // Endpoints are picked by rules, not by a per-Service anonymous map or a chain
    // per endpoint: the kernel keeps a table's sets in a list, so thousands of
    // anonymous maps make every transaction slow, and every jump target is walked when
    // a transaction is checked for loops (docs/benchmarks.md).
    if let Some(timeout) = port.affinity_seconds {
        for e in port.all_used_endpoints() {
            out.sets.insert(endpoint_name("affinity", key, e), timeout);
        }
    }
    let balance = |endpoints: &[&Endpoint]| -> Vec<String> {
        let mut rules = Vec::new();
        // Hairpin: an endpoint reaching its own Service may come back to itself, and
        // must then see another source address. (Any endpoint of the Service is
        // masqueraded: one rule each, no set.)
        for e in endpoints {
            rules.push(format!("ip saddr {} jump mark-for-masquerade", e.ip));
        }
        let dnat = |e: &Endpoint| -> String {
            match port.affinity_seconds {
                Some(_) => format!(
                    "update @{} {{ ip saddr }} dnat to {}:{}",
                    endpoint_name("affinity", key, e),
                    e.ip,
                    e.port
                ),
                None => format!("dnat to {}:{}", e.ip, e.port),
            }
        };
        if port.affinity_seconds.is_some() {
            for e in endpoints {
                let set = endpoint_name("affinity", key, e);
                rules.push(format!("meta l4proto {proto} ip saddr @{set} {}", dnat(e)));
            }
        }
        // Each endpoint in turn with probability 1/(endpoints left): uniform overall.
        let n = endpoints.len();
        for (i, e) in endpoints.iter().enumerate() {
            if i + 1 < n {
                rules.push(format!(
                    "meta l4proto {proto} numgen random mod {} 0 {}",
                    n - i,
                    dnat(e)
                ));
            } else {
                rules.push(format!("meta l4proto {proto} {}", dnat(e)));
            }
        }
        rules
    };

    let reject = "goto reject-chain".to_string();
    if !cluster.is_empty() {
        let mut rules = Vec::new();
        if let Some(cidr) = &settings.cluster_cidr {
            for ip in &port.cluster_ips {
                rules.push(format!(
                    "ip daddr {ip} {proto} dport {} ip saddr != {cidr} jump mark-for-masquerade",
                    key.port
                ));
            }
        }
        rules.extend(balance(&cluster));
        out.chains.insert(service_chain.clone(), rules);
    }
    for ip in &port.cluster_ips {
        let element = element_key(*ip, proto, key.port);
        if cluster.is_empty() {
            out.elements
                .insert((Map::NoEndpointServices, element), reject.clone());
        } else {
            out.elements
                .insert((Map::ServiceIps, element), format!("goto {service_chain}"));
        }
    }

    if port.has_external() {
        // Where external traffic goes, or what happens to it when nothing takes it.
        let external = if port.external_local {
            // Pods and the node itself reach every endpoint (masqueraded from the node);
            // others only this node's, keeping their source address.
            let mut rules = Vec::new();
            if let Some(cidr) = &settings.cluster_cidr
                && !cluster.is_empty()
            {
                rules.push(format!("ip saddr {cidr} goto {service_chain}"));
            }
            if !cluster.is_empty() {
                rules.push("fib saddr type local jump mark-for-masquerade".into());
                rules.push(format!("fib saddr type local goto {service_chain}"));
            }
            if local.is_empty() {
                rules.push("drop".into());
            } else {
                out.chains.insert(local_chain.clone(), balance(&local));
                rules.push(format!("goto {local_chain}"));
            }
            out.chains.insert(external_chain.clone(), rules);
            Some(format!("goto {external_chain}"))
        } else if cluster.is_empty() {
            None
        } else {
            out.chains.insert(
                external_chain.clone(),
                vec![
                    "jump mark-for-masquerade".into(),
                    format!("goto {service_chain}"),
                ],
            );
            Some(format!("goto {external_chain}"))
        };
        let ips = port.external_ips.iter().chain(&port.load_balancer_ips);
        for ip in ips {
            let element = element_key(*ip, proto, key.port);
            match &external {
                Some(verdict) => out
                    .elements
                    .insert((Map::ServiceIps, element), verdict.clone()),
                None => out
                    .elements
                    .insert((Map::NoEndpointServices, element), reject.clone()),
            };
        }
        if let Some(node_port) = port.node_port {
            let element = format!("{proto} . {node_port}");
            match &external {
                Some(verdict) => out
                    .elements
                    .insert((Map::ServiceNodePorts, element), verdict.clone()),
                None => out
                    .elements
                    .insert((Map::NoEndpointNodePorts, element), reject.clone()),
            };
        }
    }
    out
}

fn element_key(ip: Ipv4Addr, proto: &str, port: u16) -> String {
    format!("{ip} . {proto} . {port}")
}

/// The table's fixed part: base chains, maps and helpers.
pub fn skeleton(settings: &Settings) -> String {
    let t = &settings.table;
    let mut s = String::new();
    let _ = writeln!(s, "add table ip {t}");
    let _ = writeln!(s, "delete table ip {t}");
    let _ = writeln!(
        s,
        "table ip {t} {{
  comment \"Kubernetes Services: rules of the skiff proxy\"
  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map service-nodeports {{ type inet_proto . inet_service : verdict; }}
  map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; }}
  chain reject-chain {{ reject; }}
  chain mark-for-masquerade {{ meta mark set meta mark or {MASQUERADE_MARK}; }}
  chain masquerading {{
    meta mark and {MASQUERADE_MARK} == 0 return
    meta mark set meta mark xor {MASQUERADE_MARK}
    masquerade fully-random
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
    fib daddr type local meta l4proto . th dport vmap @service-nodeports
  }}
  chain service-endpoints-check {{
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }}
  chain nodeport-endpoints-check {{
    fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports
  }}
  chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump masquerading; }}
  chain filter-input {{
    type filter hook input priority -10; policy accept;
    iifname != \"lo\" ip daddr 127.0.0.0/8 ct state != {{ established, related }} ct status & dnat == 0 drop
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }}
  chain filter-forward {{
    type filter hook forward priority -10; policy accept;
    ct state new jump service-endpoints-check
  }}
  chain filter-output {{
    type filter hook output priority -10; policy accept;
    ct state new jump service-endpoints-check
    ct state new jump nodeport-endpoints-check
  }}
}}"
    );
    s
}

/// The commands that turn `old` (as applied) into `new` for one Service port.
pub fn write_diff(s: &mut String, table: &str, old: &Rendered, new: &Rendered) {
    // New sets and chains first: rules and elements refer to them.
    for (set, timeout) in &new.sets {
        if old.sets.get(set) != Some(timeout) {
            if old.sets.contains_key(set) {
                // A changed timeout: sets cannot be altered, only replaced (the
                // chains using it are rewritten below).
                let _ = writeln!(s, "flush set ip {table} {set}");
            } else {
                let _ = writeln!(
                    s,
                    "add set ip {table} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
                );
            }
        }
    }
    for chain in new.chains.keys() {
        if !old.chains.contains_key(chain) {
            let _ = writeln!(s, "add chain ip {table} {chain}");
        }
    }
    for (chain, rules) in &new.chains {
        match old.chains.get(chain) {
            Some(before) if before == rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain ip {table} {chain}");
            }
            None => {}
        }
        for rule in rules {
            let _ = writeln!(s, "add rule ip {table} {chain} {rule}");
        }
    }
    for ((map, key), verdict) in &old.elements {
        if new.elements.get(&(*map, key.clone())) != Some(verdict) {
            let _ = writeln!(s, "delete element ip {table} {} {{ {key} }}", map.name());
        }
    }
    for ((map, key), verdict) in &new.elements {
        if old.elements.get(&(*map, key.clone())) != Some(verdict) {
            let _ = writeln!(
                s,
                "add element ip {table} {} {{ {key} : {verdict} }}",
                map.name()
            );
        }
    }
    // Chains no longer used: emptied first, so none still jumps to another when it
    // goes.
    let gone: BTreeSet<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for chain in &gone {
        let _ = writeln!(s, "flush chain ip {table} {chain}");
    }
    for chain in &gone {
        let _ = writeln!(s, "delete chain ip {table} {chain}");
    }
    for set in old.sets.keys() {
        if !new.sets.contains_key(set) {
            let _ = writeln!(s, "delete set ip {table} {set}");
        }
    }
}

/// Removes the proxy's table (`skiff proxy --cleanup`).
pub fn cleanup(table: &str) -> String {
    format!("add table ip {table}\ndelete table ip {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(endpoints: &[(u8, bool)]) -> ServicePort {
        crate::model::example_port(endpoints)
    }

    fn settings() -> Settings {
        Settings {
            table: "t".into(),
            cluster_cidr: Some("10.244.0.0/16".into()),
        }
    }

    #[test]
    fn a_service_balances_over_its_ready_endpoints() {
        let r = render(&port(&[(2, true), (3, true), (4, false)]), &settings());
        let service = r
            .chains
            .iter()
            .find(|(name, _)| name.starts_with("service-"))
            .expect("service chain");
        assert!(service.0.ends_with("-ns/web/tcp/p80"), "{}", service.0);
        assert_eq!(
            service.1[service.1.len() - 2],
            "meta l4proto tcp numgen random mod 2 0 dnat to 10.244.0.2:8080"
        );
        assert_eq!(
            service.1[service.1.len() - 1],
            "meta l4proto tcp dnat to 10.244.0.3:8080"
        );
        // No chain per endpoint.
        assert_eq!(r.chains.len(), 2, "{:?}", r.chains.keys());
        assert_eq!(
            r.elements[&(Map::ServiceIps, "10.96.0.5 . tcp . 80".into())],
            format!("goto {}", service.0)
        );
        assert!(
            r.elements[&(Map::ServiceNodePorts, "tcp . 30080".into())]
                .starts_with("goto external-")
        );
    }

    #[test]
    fn no_endpoints_rejects() {
        let r = render(&port(&[(4, false)]), &settings());
        assert!(r.chains.is_empty());
        assert_eq!(
            r.elements[&(Map::NoEndpointServices, "10.96.0.5 . tcp . 80".into())],
            "goto reject-chain"
        );
        assert_eq!(
            r.elements[&(Map::NoEndpointNodePorts, "tcp . 30080".into())],
            "goto reject-chain"
        );
    }

    #[test]
    fn an_unchanged_port_writes_nothing_and_a_removed_one_cleans_up() {
        let s = settings();
        let before = render(&port(&[(2, true), (3, true)]), &s);
        let mut text = String::new();
        write_diff(&mut text, "t", &before, &before);
        assert!(text.is_empty(), "{text}");
        let after = render(&port(&[(2, true)]), &s);
        write_diff(&mut text, "t", &before, &after);
        assert!(text.contains("flush chain ip t service-"), "{text}");
        assert!(!text.contains("delete chain"), "{text}");
        // The map element still points at the same chain: untouched.
        assert!(!text.contains("element"), "{text}");
        let mut gone = String::new();
        write_diff(&mut gone, "t", &after, &Rendered::default());
        assert!(gone.contains("delete element ip t service-ips { 10.96.0.5 . tcp . 80 }"));
        let flush = gone.find("flush chain ip t external-").expect("flush");
        let delete = gone.find("delete chain ip t service-").expect("delete");
        assert!(flush < delete, "{gone}");
    }
}

/// The rules as the kernel sees them: `nft -c` checks a script against the kernel
/// without committing it.
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::model::Protocol;

    fn check(script: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft (Debian's nftables) is installed by scripts/install-deps");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_kernel_accepts_every_kind_of_rule() {
        let settings = Settings {
            table: "skiff-proxy-check".into(),
            cluster_cidr: Some("10.244.0.0/16".into()),
        };
        let mut script = skeleton(&settings);
        let empty = Rendered::default();
        let endpoint = |n: u8, local: bool| Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, n),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local,
        };
        for (i, protocol) in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .enumerate()
        {
            let port = ServicePort {
                key: PortKey {
                    namespace: "ns".into(),
                    name: format!("svc{i}"),
                    protocol,
                    port: 80,
                },
                cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10 + i as u8)],
                node_port: Some(30080 + i as u16),
                external_ips: vec![Ipv4Addr::new(192, 0, 2, 50)],
                load_balancer_ips: vec![Ipv4Addr::new(192, 0, 2, 60)],
                affinity_seconds: (i == 0).then_some(600),
                external_local: i != 2,
                internal_local: false,
                endpoints: vec![endpoint(2, true), endpoint(3, false)],
            };
            let rendered = render(&port, &settings);
            write_diff(&mut script, &settings.table, &empty, &rendered);
        }
        // A Service with no endpoints rejects.
        let lonely = ServicePort {
            key: PortKey {
                namespace: "ns".into(),
                name: "lonely".into(),
                protocol: Protocol::Tcp,
                port: 81,
            },
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 20)],
            node_port: Some(30090),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints: Vec::new(),
        };
        write_diff(
            &mut script,
            &settings.table,
            &empty,
            &render(&lonely, &settings),
        );
        script.push_str(&cleanup(&settings.table));
        check(&script);
    }
}
