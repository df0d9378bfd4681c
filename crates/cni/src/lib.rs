//! Skiff's CNI plugin (spec 1.1, speaking 0.3.0 to 1.1.0): the `skiff` binary runs it
//! when called as `skiff-cni`, the name `skiff agent` and `skiff server` link it under in
//! the CNI bin directory. A bridge per node holds the gateway address; every pod gets a
//! veth pair, an address from the node's pod subnet (`ipam.rs`, persistent), routes,
//! hairpin on its bridge port, masquerade for traffic leaving the cluster's addresses
//! and its host ports (`nat.rs`). ADD, DEL, CHECK, VERSION, STATUS and GC; DEL and GC
//! undo from the allocator's records, so they work when the pod's namespace is gone.
//!
//! A plugin's stdout is its answer: results and errors are written there as the spec's
//! JSON, nothing else is.

pub mod config;
pub mod ipam;
pub mod link;
pub mod nat;

use std::io::{Read, Write};
use std::net::Ipv4Addr;

use serde_json::{Value, json};

pub use config::{Env, NetConf, PortMapping};

/// The spec's error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
}

/// A failure as the spec reports it.
#[derive(Debug, thiserror::Error)]
#[error("{msg} (code {code}){}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct Error {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Error {
        Error {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// The plugin's entry point: reads the environment and stdin, writes the answer to
/// stdout, returns the exit status.
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| config::supported(v))
        .unwrap_or_else(|| "1.1.0".to_string());
    let answer = match read {
        Err(e) => Err(Error::new(code::IO, "reading stdin", e.to_string())),
        Ok(_) => Env::read(|name| std::env::var(name).ok()).and_then(|env| run(&env, &stdin)),
    };
    let (status, output) = match answer {
        Ok(Some(result)) => (0, result),
        Ok(None) => (0, Value::Null),
        Err(e) => (
            1,
            json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}),
        ),
    };
    if !output.is_null() {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &output);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    status
}

/// Runs one command; its result (none for DEL, STATUS and GC).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, Error> {
    if env.command == "VERSION" {
        let asked = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| "1.1.0".to_string());
        return Ok(Some(json!({
            "cniVersion": asked,
            "supportedVersions": config::SUPPORTED,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command.as_str() {
        "ADD" => add(env, &conf).map(Some),
        "DEL" => del(env, &conf).map(|()| None),
        "CHECK" => check(env, &conf).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        "GC" => gc(&conf).map(|()| None),
        other => Err(Error::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "",
        )),
    }
}

fn add(env: &Env, conf: &NetConf) -> Result<Value, Error> {
    let netns = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::new(code::INVALID_ENV, "CNI_NETNS is required for ADD", ""))?;
    if !netns.exists() {
        return Err(Error::new(
            code::UNKNOWN_CONTAINER,
            format!("the network namespace {} does not exist", netns.display()),
            "",
        ));
    }
    // The lock is held through the whole ADD: one pod of a network at a time, so the
    // bridge and the NAT table are made once.
    let allocator = ipam::Allocator::open(&conf.ipam_dir())?;
    let record = ipam::Record {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        port_mappings: conf.port_mappings.clone(),
    };
    let ip = allocator.allocate(conf, &record)?;
    let undo = |e: Error| {
        let _ = link::del(conf, &env.container_id, &env.ifname);
        let _ = allocator.release(&env.container_id, &env.ifname);
        e
    };
    if conf.is_gateway {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| Error::new(code::IO, "enabling IPv4 forwarding", e.to_string()))
            .map_err(undo)?;
    }
    let attached = link::add(conf, &env.container_id, &env.ifname, netns, ip).map_err(undo)?;
    // One transaction: when it fails nothing of it is there to take back (and the
    // elements it names may be another pod's, as with a host port taken).
    nat::program(conf, ip, &conf.port_mappings, &conf.ipam_dir()).map_err(|mut e| {
        if e.details.contains("File exists") && !conf.port_mappings.is_empty() {
            e.msg = "a host port of this pod is already forwarded to another pod".into();
        }
        undo(e)
    })?;
    if !conf.port_mappings.is_empty() {
        nat::route_localnet(&conf.bridge).map_err(undo)?;
    }
    Ok(result(conf, env, ip, &attached))
}

/// The spec's result for `ip` in `conf`'s version.
fn result(conf: &NetConf, env: &Env, ip: Ipv4Addr, attached: &link::Attached) -> Value {
    let legacy = !config::at_least(&conf.cni_version, 1, 0);
    let mut address = json!({
        "address": format!("{ip}/{}", conf.subnet.prefix_len()),
        "gateway": conf.gateway.to_string(),
        "interface": 2,
    });
    if legacy {
        address["version"] = json!("4");
    }
    let routes: Vec<Value> = conf
        .routes
        .iter()
        .map(|r| json!({"dst": r.dst.to_string(), "gw": r.gw.unwrap_or(conf.gateway).to_string()}))
        .collect();
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": conf.bridge, "mac": attached.bridge_mac},
            {"name": attached.host_veth, "mac": attached.host_mac},
            {"name": env.ifname, "mac": attached.pod_mac,
             "sandbox": env.netns.as_ref().map(|n| n.display().to_string()).unwrap_or_default()},
        ],
        "ips": [address],
        "routes": routes,
        "dns": {},
    })
}

/// Undoes what ADD did for one attachment, from its record.
fn undo_attachment(
    conf: &NetConf,
    allocator: &ipam::Allocator,
    container: &str,
    ifname: &str,
) -> Result<(), Error> {
    let held = allocator.find(container, ifname);
    link::del(conf, container, ifname)?;
    if let Some((ip, record)) = &held {
        nat::release(conf, *ip, &record.port_mappings);
    }
    allocator.release(container, ifname)?;
    Ok(())
}

fn del(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let allocator = ipam::Allocator::open(&conf.ipam_dir())?;
    undo_attachment(conf, &allocator, &env.container_id, &env.ifname)
}

fn check(env: &Env, conf: &NetConf) -> Result<(), Error> {
    if !config::at_least(&conf.cni_version, 0, 4) {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK needs CNI 0.4.0 or later, not {}", conf.cni_version),
            "",
        ));
    }
    let previous = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::new(code::INVALID_CONFIG, "CHECK needs prevResult", ""))?;
    let netns = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::new(code::INVALID_ENV, "CNI_NETNS is required for CHECK", ""))?;
    let allocator = ipam::Allocator::open(&conf.ipam_dir())?;
    let (ip, _) = allocator
        .find(&env.container_id, &env.ifname)
        .ok_or_else(|| {
            Error::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {} holds no address of network {:?}",
                    env.container_id, conf.name
                ),
                "",
            )
        })?;
    let listed = previous["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["address"].as_str())
        .any(|a| a.split('/').next() == Some(ip.to_string().as_str()));
    if !listed {
        return Err(Error::new(
            code::IO,
            "check",
            format!("prevResult does not list the pod's address {ip}"),
        ));
    }
    link::check(conf, &env.container_id, &env.ifname, netns, ip)
}

fn status(conf: &NetConf) -> Result<(), Error> {
    let unavailable = |e: Error| Error::new(code::NOT_AVAILABLE, e.msg, e.details);
    link::ready(conf).map_err(unavailable)?;
    // No records yet: nothing is held (and asking makes no directory).
    if !conf.ipam_dir().exists() {
        return Ok(());
    }
    let allocator = ipam::Allocator::open(&conf.ipam_dir()).map_err(unavailable)?;
    if allocator.free(conf) == 0 {
        return Err(Error::new(
            code::NOT_AVAILABLE,
            format!(
                "no free address in {} for network {:?}",
                conf.subnet, conf.name
            ),
            "",
        ));
    }
    Ok(())
}

/// Releases every attachment the runtime no longer has.
fn gc(conf: &NetConf) -> Result<(), Error> {
    if !conf.ipam_dir().exists() {
        return Ok(());
    }
    let allocator = ipam::Allocator::open(&conf.ipam_dir())?;
    for (_, record) in allocator.all() {
        let valid = conf
            .valid_attachments
            .iter()
            .any(|(id, ifname)| *id == record.container_id && *ifname == record.ifname);
        if !valid {
            undo_attachment(conf, &allocator, &record.container_id, &record.ifname)?;
        }
    }
    Ok(())
}
