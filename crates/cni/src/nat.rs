//! The network's NAT in one nftables table: pods whose traffic leaves the cluster's
//! addresses are masqueraded, and host ports are DNATed to their pod. The rules are fixed
//! and written with chains flushed first (so no call can duplicate them), once per boot
//! and version: a stamp in the network's directory says the table has them, and ADD
//! then adds its elements alone (the rules cost 30-40 ms of nft per call). Pods and
//! ports are elements of sets and maps that ADD adds and DEL/GC remove, so a call
//! touches only its own pod.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::config::{NetConf, PortMapping};
use crate::{Error, code};

/// The mark of host-port traffic that must leave with the node's address (from the
/// node itself or a pod of this bridge, which would otherwise get the answer from the
/// pod directly). kube-proxy uses 0x4000; this is its own.
const MASQ_MARK: &str = "0x2000";

/// The table, its sets and maps, and its rules for `conf`.
pub fn base(conf: &NetConf) -> String {
    let t = format!("ip {}", conf.table);
    let mut script = format!(
        "add table {t}\n\
         add set {t} pods {{ type ipv4_addr ; }}\n\
         add map {t} hostports {{ type inet_proto . inet_service : ipv4_addr . inet_service ; }}\n\
         add map {t} hostports-ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ; }}\n\
         add chain {t} prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         add chain {t} output {{ type nat hook output priority -100 ; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         add chain {t} hostports\n\
         flush chain {t} prerouting\n\
         flush chain {t} output\n\
         flush chain {t} postrouting\n\
         flush chain {t} hostports\n\
         add rule {t} prerouting fib daddr type local jump hostports\n\
         add rule {t} output fib daddr type local jump hostports\n"
    );
    let sources = format!("{{ 127.0.0.0/8, {} }}", conf.subnet);
    script.push_str(&format!(
        "add rule {t} hostports ip saddr {sources} ip daddr . meta l4proto . th dport @hostports-ip meta mark set meta mark | {MASQ_MARK}\n\
         add rule {t} hostports ip saddr {sources} meta l4proto . th dport @hostports meta mark set meta mark | {MASQ_MARK}\n\
         add rule {t} hostports dnat ip to ip daddr . meta l4proto . th dport map @hostports-ip\n\
         add rule {t} hostports dnat ip to meta l4proto . th dport map @hostports\n\
         add rule {t} postrouting meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade\n"
    ));
    if conf.ip_masq {
        let mut kept = vec![conf.subnet.to_string(), "224.0.0.0/4".to_string()];
        kept.extend(conf.non_masquerade.iter().map(|n| n.to_string()));
        script.push_str(&format!(
            "add rule {t} postrouting ip saddr @pods ip daddr != {{ {} }} masquerade\n",
            kept.join(", ")
        ));
    }
    script
}

/// The elements of one pod: its address (when masquerading) and its host ports.
fn elements(conf: &NetConf, ip: Ipv4Addr, mappings: &[PortMapping]) -> Vec<(String, String)> {
    let mut elements = Vec::new();
    if conf.ip_masq {
        elements.push(("pods".to_string(), ip.to_string()));
    }
    for m in mappings {
        let protocol = m.protocol.to_lowercase();
        let target = format!("{ip} . {}", m.container_port);
        match m.host_ip.filter(|h| !h.is_unspecified()) {
            Some(host) => elements.push((
                "hostports-ip".into(),
                format!("{host} . {protocol} . {} : {target}", m.host_port),
            )),
            None => elements.push((
                "hostports".into(),
                format!("{protocol} . {} : {target}", m.host_port),
            )),
        }
    }
    elements
}

/// The statements that add the pod's elements.
fn additions(conf: &NetConf, ip: Ipv4Addr, mappings: &[PortMapping]) -> String {
    elements(conf, ip, mappings)
        .into_iter()
        .map(|(set, element)| format!("add element ip {} {set} {{ {element} }}\n", conf.table))
        .collect()
}

/// The script that gives the pod its NAT, rules included.
pub fn add(conf: &NetConf, ip: Ipv4Addr, mappings: &[PortMapping]) -> String {
    format!("{}{}", base(conf), additions(conf, ip, mappings))
}

/// What says the table has `base`: this boot's id and the rules' digest.
fn stamp(base: &str) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let digest = Sha256::digest(base.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}\n{hex}\n", boot.trim())
}

/// Gives the pod its NAT: its elements alone when `dir`'s stamp says this boot's
/// table has these rules, else rules and elements (then stamped). The caller holds
/// the network's lock.
pub fn program(
    conf: &NetConf,
    ip: Ipv4Addr,
    mappings: &[PortMapping],
    dir: &Path,
) -> Result<(), Error> {
    let base = base(conf);
    let stamp = stamp(&base);
    let marker = dir.join("nat-rules");
    let additions = additions(conf, ip, mappings);
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == stamp)
        && (additions.is_empty() || apply(&additions).is_ok())
    {
        return Ok(());
    }
    // No stamp, an old one, or the table was removed under it: everything.
    apply(&format!("{base}{additions}"))?;
    let temporary = dir.join(".nat-rules.tmp");
    std::fs::write(&temporary, &stamp)
        .and_then(|()| std::fs::rename(&temporary, &marker))
        .map_err(|e| {
            Error::new(
                code::IO,
                format!("writing {}", marker.display()),
                e.to_string(),
            )
        })
}

/// One statement per element to take away (a map's key, without its value).
pub fn remove(conf: &NetConf, ip: Ipv4Addr, mappings: &[PortMapping]) -> Vec<String> {
    elements(conf, ip, mappings)
        .into_iter()
        .map(|(set, element)| {
            let key = element.split(" : ").next().unwrap_or(&element).to_string();
            format!("delete element ip {} {set} {{ {key} }}\n", conf.table)
        })
        .collect()
}

/// The nft command: from PATH, or the usual system directories when the runtime
/// called the plugin without a PATH.
fn nft() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| "nft".into())
}

/// Runs `script` in one nft transaction.
pub fn apply(script: &str) -> Result<(), Error> {
    let fail = |e: String| Error::new(code::IO, "programming nftables", e);
    let mut child = Command::new(nft())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "running nft: {e} (is Debian's nftables installed?)"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// Takes the pod's elements away; ones already gone are not an error.
pub fn release(conf: &NetConf, ip: Ipv4Addr, mappings: &[PortMapping]) {
    let statements = remove(conf, ip, mappings);
    if statements.is_empty() || apply(&statements.concat()).is_ok() {
        return;
    }
    // Some were gone (or the table is): the rest one by one.
    for statement in statements {
        let _ = apply(&statement);
    }
}

/// Lets the node's own 127.0.0.1 traffic to a host port be routed to the bridge, as
/// the portmap plugin does.
pub fn route_localnet(bridge: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    std::fs::write(&path, "1")
        .map_err(|e| Error::new(code::IO, format!("writing {path}"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_sets_and_elements() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","subnet":"10.7.0.0/24","bridge":"br7",
                 "nonMasqueradeCIDRs":["10.0.0.0/8"]}"#,
        )
        .expect("conf");
        let mappings = vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: None,
            },
            PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: "udp".into(),
                host_ip: Some(Ipv4Addr::new(127, 0, 0, 1)),
            },
        ];
        let ip = Ipv4Addr::new(10, 7, 0, 9);
        let script = add(&conf, ip, &mappings);
        assert!(script.contains("add table ip cni-br7\n"), "{script}");
        assert!(script.contains(
            "ip saddr @pods ip daddr != { 10.7.0.0/24, 224.0.0.0/4, 10.0.0.0/8 } masquerade"
        ));
        assert!(script.contains("add element ip cni-br7 pods { 10.7.0.9 }"));
        assert!(script.contains("add element ip cni-br7 hostports { tcp . 8080 : 10.7.0.9 . 80 }"));
        assert!(script.contains(
            "add element ip cni-br7 hostports-ip { 127.0.0.1 . udp . 5353 : 10.7.0.9 . 53 }"
        ));
        // Every chain is flushed before its rules are added again: ADD is repeatable.
        for chain in ["prerouting", "output", "postrouting", "hostports"] {
            let flush = script
                .find(&format!("flush chain ip cni-br7 {chain}\n"))
                .expect(chain);
            let rule = script
                .find(&format!("add rule ip cni-br7 {chain} "))
                .expect(chain);
            assert!(flush < rule, "{chain}");
        }
        assert_eq!(
            remove(&conf, ip, &mappings),
            vec![
                "delete element ip cni-br7 pods { 10.7.0.9 }\n",
                "delete element ip cni-br7 hostports { tcp . 8080 }\n",
                "delete element ip cni-br7 hostports-ip { 127.0.0.1 . udp . 5353 }\n",
            ]
        );
    }

    /// The scripts are valid for this machine's nft (checked, not applied).
    #[test]
    fn nft_accepts_the_script() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","subnet":"10.7.0.0/24","bridge":"br7"}"#,
        )
        .expect("conf");
        let script = add(
            &conf,
            Ipv4Addr::new(10, 7, 0, 9),
            &[PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "sctp".into(),
                host_ip: None,
            }],
        );
        let Ok(mut child) = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!("nft is not installed: skipped");
            return;
        };
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
}
