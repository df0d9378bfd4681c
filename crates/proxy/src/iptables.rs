//! The iptables form of the proxy's rules (upstream kube-proxy's iptables mode, IPv4),
//! for hosts whose tools expect it: `KUBE-SERVICES` and `KUBE-NODEPORTS` dispatch to a
//! `KUBE-SVC-*` chain per Service port, which picks a `KUBE-SEP-*` chain per endpoint
//! with `statistic` probabilities; `KUBE-EXT-*` for external traffic, `KUBE-SVL-*` for
//! `Local` traffic policies, `recent` for session affinity, masquerading by mark.
//! Applied with `iptables-restore --noflush`: a partial sync rewrites the changed
//! Services' chains and the dispatch chains (a list, as upstream's), nothing else.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::Error;
use crate::model::{Endpoint, PortKey, ServicePort};
use crate::nft::{Map, Rendered, Settings};

const MASQUERADE_MARK: &str = "0x4000";

/// Chains of the nat table that are always there.
const NAT_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];
/// Chains of the filter table that are always there.
const FILTER_CHAINS: &[&str] = &["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL"];
/// Jumps from the built-in chains: (table, chain, rule).
const JUMPS: &[(&str, &str, &str)] = &[
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    ("filter", "INPUT", "-j KUBE-FIREWALL"),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    ("filter", "OUTPUT", "-j KUBE-FIREWALL"),
];

/// Prefixes of the chains made per Service port and endpoint.
const PER_SERVICE: &[&str] = &["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-"];

fn hash(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02X}")).collect()
}

fn chain(prefix: &str, key: &PortKey) -> String {
    format!("{prefix}{}", hash(&key.to_string()))
}

fn endpoint_chain(key: &PortKey, e: &Endpoint) -> String {
    format!("KUBE-SEP-{}", hash(&format!("{key}__{}/{}", e.ip, e.port)))
}

/// The rules of one Service port. Chains are nat chains except `filter:`-prefixed
/// element keys, which are rules of the filter table's dispatch chains.
pub fn render(port: &ServicePort, settings: &Settings) -> Rendered {
    let mut out = Rendered::default();
    let key = &port.key;
    let proto = key.protocol.name();
    let comment = format!("-m comment --comment \"{key}\"");
    let svc = chain("KUBE-SVC-", key);
    let ext = chain("KUBE-EXT-", key);
    let svl = chain("KUBE-SVL-", key);
    let cluster = port.cluster_endpoints();
    let local = port.local_endpoints();
    for e in port.all_used_endpoints() {
        let mut rules = vec![format!("{comment} -s {}/32 -j KUBE-MARK-MASQ", e.ip)];
        let name = endpoint_chain(key, e);
        let recent = if port.affinity_seconds.is_some() {
            format!(" -m recent --name {name} --set --rsource")
        } else {
            String::new()
        };
        rules.push(format!(
            "{comment} -p {proto} -m {proto}{recent} -j DNAT --to-destination {}:{}",
            e.ip, e.port
        ));
        out.chains.insert(name, rules);
    }
    let balance = |endpoints: &[&Endpoint]| -> Vec<String> {
        let mut rules = Vec::new();
        if let Some(seconds) = port.affinity_seconds {
            for e in endpoints {
                let name = endpoint_chain(key, e);
                rules.push(format!(
                    "{comment} -m recent --name {name} --rcheck --seconds {seconds} --reap -j {name}"
                ));
            }
        }
        let n = endpoints.len();
        for (i, e) in endpoints.iter().enumerate() {
            let name = endpoint_chain(key, e);
            if i + 1 < n {
                let probability = 1.0 / (n - i) as f64;
                rules.push(format!(
                    "{comment} -m statistic --mode random --probability {probability:.10} -j {name}"
                ));
            } else {
                rules.push(format!("{comment} -j {name}"));
            }
        }
        rules
    };
    let matching =
        |ip: &std::net::Ipv4Addr| format!("-d {ip}/32 -p {proto} -m {proto} --dport {}", key.port);
    if !cluster.is_empty() {
        let mut rules = Vec::new();
        if let Some(cidr) = &settings.cluster_cidr {
            for ip in &port.cluster_ips {
                rules.push(format!(
                    "{comment} ! -s {cidr} {} -j KUBE-MARK-MASQ",
                    matching(ip)
                ));
            }
        }
        rules.extend(balance(&cluster));
        out.chains.insert(svc.clone(), rules);
    }
    for ip in &port.cluster_ips {
        if cluster.is_empty() {
            out.elements.insert(
                (
                    Map::NoEndpointServices,
                    format!("{comment} {}", matching(ip)),
                ),
                "-j REJECT".into(),
            );
        } else {
            out.elements.insert(
                (Map::ServiceIps, format!("{comment} {}", matching(ip))),
                format!("-j {svc}"),
            );
        }
    }
    if port.has_external() {
        let external = if port.external_local {
            let mut rules = Vec::new();
            if !cluster.is_empty() {
                if let Some(cidr) = &settings.cluster_cidr {
                    rules.push(format!("{comment} -s {cidr} -j {svc}"));
                }
                rules.push(format!(
                    "{comment} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                ));
                rules.push(format!("{comment} -m addrtype --src-type LOCAL -j {svc}"));
            }
            if local.is_empty() {
                rules.push(format!("{comment} -j DROP"));
            } else {
                out.chains.insert(svl.clone(), balance(&local));
                rules.push(format!("{comment} -j {svl}"));
            }
            out.chains.insert(ext.clone(), rules);
            Some(format!("-j {ext}"))
        } else if cluster.is_empty() {
            None
        } else {
            out.chains.insert(
                ext.clone(),
                vec![
                    format!("{comment} -j KUBE-MARK-MASQ"),
                    format!("{comment} -j {svc}"),
                ],
            );
            Some(format!("-j {ext}"))
        };
        for ip in port.external_ips.iter().chain(&port.load_balancer_ips) {
            match &external {
                Some(target) => out.elements.insert(
                    (Map::ServiceIps, format!("{comment} {}", matching(ip))),
                    target.clone(),
                ),
                None => out.elements.insert(
                    (
                        Map::NoEndpointServices,
                        format!("{comment} {}", matching(ip)),
                    ),
                    "-j REJECT".into(),
                ),
            };
        }
        if let Some(node_port) = port.node_port {
            let rule = format!("{comment} -p {proto} -m {proto} --dport {node_port}");
            match &external {
                Some(target) => out
                    .elements
                    .insert((Map::ServiceNodePorts, rule), target.clone()),
                None => out.elements.insert(
                    (
                        Map::NoEndpointNodePorts,
                        format!("-m addrtype --dst-type LOCAL {rule}"),
                    ),
                    "-j REJECT".into(),
                ),
            };
        }
    }
    out
}

/// An `iptables-restore --noflush` script: the dispatch chains from `all` (every Service
/// port after the sync), the per-Service chains of `changes` (old, new), and
/// `stale` chains to delete (a full sync: those found that nothing renders).
pub fn script(
    all: &[&Rendered],
    changes: &[(&Rendered, &Rendered)],
    stale: &[String],
    full: bool,
) -> String {
    let mut nat = String::from("*nat\n");
    let mut rules = String::new();
    for c in NAT_CHAINS {
        let _ = writeln!(nat, ":{c} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}"
    );
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN"
    );
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MASQUERADE --random-fully");
    let mut filter = String::from("*filter\n");
    let mut filter_rules = String::new();
    for c in FILTER_CHAINS {
        let _ = writeln!(filter, ":{c} - [0:0]");
    }
    let _ = writeln!(
        filter_rules,
        "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    );
    for rendered in all {
        for ((map, rule), target) in &rendered.elements {
            let line = match map {
                Map::ServiceIps => format!("-A KUBE-SERVICES {rule} {target}"),
                Map::ServiceNodePorts => format!("-A KUBE-NODEPORTS {rule} {target}"),
                Map::NoEndpointServices => {
                    let _ = writeln!(filter_rules, "-A KUBE-SERVICES {rule} {target}");
                    continue;
                }
                Map::NoEndpointNodePorts => {
                    let _ = writeln!(filter_rules, "-A KUBE-EXTERNAL-SERVICES {rule} {target}");
                    continue;
                }
            };
            let _ = writeln!(rules, "{line}");
        }
    }
    // Node ports last: only what no Service address matched.
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    let mut deleted: BTreeSet<String> = stale.iter().cloned().collect();
    for (old, new) in changes {
        for (name, chain_rules) in &new.chains {
            if !full && old.chains.get(name) == Some(chain_rules) {
                continue;
            }
            let _ = writeln!(nat, ":{name} - [0:0]");
            for rule in chain_rules {
                let _ = writeln!(rules, "-A {name} {rule}");
            }
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                deleted.insert(name.clone());
            }
        }
    }
    // Emptied, then deleted once nothing jumps to them.
    for name in &deleted {
        let _ = writeln!(nat, ":{name} - [0:0]");
    }
    for name in &deleted {
        let _ = writeln!(rules, "-X {name}");
    }
    format!("{nat}{rules}COMMIT\n{filter}{filter_rules}COMMIT\n")
}

async fn run(command: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(command)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| Error::Command { command, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|source| Error::Command { command, source })?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Command { command, source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(Error::Rules {
            command,
            message: stderr.lines().take(6).collect::<Vec<_>>().join("\n"),
        })
    }
}

/// The per-Service chains the nat table has now.
pub async fn existing_chains() -> Result<Vec<String>, Error> {
    let saved = run("iptables-save", &["-t", "nat"], None).await?;
    Ok(saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| PER_SERVICE.iter().any(|p| c.starts_with(p)))
        .map(str::to_string)
        .collect())
}

/// Applies a script, then makes sure the built-in chains jump to ours.
pub async fn apply(script: &str) -> Result<(), Error> {
    run("iptables-restore", &["-w", "--noflush"], Some(script)).await?;
    for (table, chain, rule) in JUMPS {
        let words = split(rule);
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend(words.iter().map(String::as_str));
        if run("iptables", &check, None).await.is_err() {
            let mut insert = vec!["-w", "-t", table, "-I", chain];
            insert.extend(words.iter().map(String::as_str));
            run("iptables", &insert, None).await?;
        }
    }
    Ok(())
}

/// Removes the jumps and every chain the proxy made (`skiff proxy --cleanup`).
pub async fn cleanup() -> Result<(), Error> {
    for (table, chain, rule) in JUMPS {
        let words = split(rule);
        let mut delete = vec!["-w", "-t", table, "-D", chain];
        delete.extend(words.iter().map(String::as_str));
        while run("iptables", &delete, None).await.is_ok() {}
    }
    let mut script = String::new();
    for (table, fixed) in [("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)] {
        let saved = run("iptables-save", &["-t", table], None).await?;
        let ours: Vec<&str> = saved
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| fixed.contains(c) || PER_SERVICE.iter().any(|p| c.starts_with(p)))
            .collect();
        if ours.is_empty() {
            continue;
        }
        let _ = writeln!(script, "*{table}");
        for c in &ours {
            let _ = writeln!(script, ":{c} - [0:0]");
        }
        for c in &ours {
            let _ = writeln!(script, "-X {c}");
        }
        let _ = writeln!(script, "COMMIT");
    }
    if !script.is_empty() {
        run("iptables-restore", &["-w", "--noflush"], Some(&script)).await?;
    }
    Ok(())
}

/// Splits a rule into words, keeping quoted comments whole.
fn split(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(n: usize) -> ServicePort {
        let endpoints: Vec<(u8, bool)> = (0..n).map(|i| (2 + i as u8, true)).collect();
        crate::model::example_port(&endpoints)
    }

    #[test]
    fn endpoints_share_traffic_evenly() {
        let settings = Settings {
            table: String::new(),
            cluster_cidr: None,
        };
        let r = render(&port(3), &settings);
        let svc = r
            .chains
            .iter()
            .find(|(n, _)| n.starts_with("KUBE-SVC-"))
            .expect("service chain");
        assert!(
            svc.0.len() <= 28,
            "iptables chain names are short: {}",
            svc.0
        );
        assert!(
            svc.1[0].contains("--probability 0.3333333333"),
            "{:?}",
            svc.1
        );
        assert!(
            svc.1[1].contains("--probability 0.5000000000"),
            "{:?}",
            svc.1
        );
        assert!(!svc.1[2].contains("statistic"), "{:?}", svc.1);
        let text = script(&[&r], &[(&Rendered::default(), &r)], &[], true);
        assert!(text.contains("-A KUBE-SERVICES -m comment --comment \"ns/web/tcp/p80\" -d 10.96.0.5/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-"), "{text}");
        assert!(text.contains("-A KUBE-NODEPORTS"), "{text}");
        // Gone: emptied and deleted.
        let gone = script(&[], &[(&r, &Rendered::default())], &[], false);
        assert!(gone.contains(&format!("-X {}", svc.0)), "{gone}");
    }

    #[test]
    fn quoted_comments_stay_one_word() {
        assert_eq!(
            split("-m comment --comment \"a b\" -j X"),
            vec!["-m", "comment", "--comment", "a b", "-j", "X"]
        );
    }
}
