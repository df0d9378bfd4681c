//! What a call gives the plugin: the `CNI_*` environment and the network configuration
//! on stdin, read into types once, so every command works on checked values and a bad
//! field is refused with the spec's error code and the field's name.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::{Error, code};

/// The spec versions this plugin speaks (results are written in the caller's).
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The command and the container it is about.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

impl Env {
    /// Reads the environment through `var`; the variables a command needs must be set.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Env, Error> {
        let command = var("CNI_COMMAND").unwrap_or_default();
        let env = Env {
            container_id: var("CNI_CONTAINERID").unwrap_or_default(),
            netns: var("CNI_NETNS")
                .filter(|n| !n.is_empty())
                .map(PathBuf::from),
            ifname: var("CNI_IFNAME").unwrap_or_default(),
            command,
        };
        let needs = |name: &str, value: &str| {
            if value.is_empty() {
                Err(Error::new(
                    code::INVALID_ENV,
                    format!("{name} is required for {}", env.command),
                    "",
                ))
            } else {
                Ok(())
            }
        };
        match env.command.as_str() {
            "ADD" | "CHECK" => {
                needs("CNI_CONTAINERID", &env.container_id)?;
                needs("CNI_IFNAME", &env.ifname)?;
                if env.netns.is_none() {
                    needs("CNI_NETNS", "")?;
                }
            }
            "DEL" => {
                needs("CNI_CONTAINERID", &env.container_id)?;
                needs("CNI_IFNAME", &env.ifname)?;
            }
            "VERSION" | "STATUS" | "GC" => {}
            "" => {
                return Err(Error::new(
                    code::INVALID_ENV,
                    "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime",
                    "",
                ));
            }
            other => {
                return Err(Error::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "",
                ));
            }
        }
        Ok(env)
    }
}

/// A host port to forward to the pod (the `portMappings` capability).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

fn tcp() -> String {
    "tcp".into()
}

/// A route the pod gets (`gw` absent: through the gateway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

/// One network's configuration, as the plugin's entry of the conflist gives it.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The node's bridge (created when missing).
    pub bridge: String,
    /// The node's pod subnet: addresses come from here.
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub range_start: Option<Ipv4Addr>,
    pub range_end: Option<Ipv4Addr>,
    pub routes: Vec<Route>,
    pub mtu: Option<u32>,
    /// The bridge holds the gateway address and the host forwards.
    pub is_gateway: bool,
    /// Traffic from pods to addresses outside the subnet and `non_masquerade` leaves
    /// with the node's address.
    pub ip_masq: bool,
    pub non_masquerade: Vec<Ipv4Net>,
    pub hairpin_mode: bool,
    /// Where the address allocator keeps its records.
    pub data_dir: PathBuf,
    /// The nftables table of this network's masquerade and host port rules.
    pub table: String,
    pub port_mappings: Vec<PortMapping>,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments`: (container ID, interface) pairs to keep.
    pub valid_attachments: Vec<(String, String)>,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        code::INVALID_CONFIG,
        format!("invalid network configuration: {field}: {why}"),
        "",
    )
}

fn address(value: &Value, field: &str) -> Result<Option<Ipv4Addr>, Error> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => text.parse().map(Some).map_err(|_| {
            invalid(
                field,
                format!("{text:?} is not an IPv4 address (this plugin is IPv4 only)"),
            )
        }),
        _ => Err(invalid(field, "must be a string")),
    }
}

fn net(value: &Value, field: &str) -> Result<Ipv4Net, Error> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid(field, "must be a CIDR string"))?;
    text.parse().map_err(|_| {
        invalid(
            field,
            format!("{text:?} is not an IPv4 CIDR (this plugin is IPv4 only)"),
        )
    })
}

fn flag(config: &Value, field: &str, default: bool) -> Result<bool, Error> {
    match &config[field] {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b),
        _ => Err(invalid(field, "must be true or false")),
    }
}

/// Whether `version` is one this plugin speaks.
pub fn supported(version: &str) -> bool {
    SUPPORTED.contains(&version)
}

/// Whether `version` is at least `major.minor`.
pub fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<NetConf, Error> {
        let config: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                code::DECODE,
                "the network configuration is not JSON",
                e.to_string(),
            )
        })?;
        let cni_version = config["cniVersion"].as_str().unwrap_or("0.3.0").to_string();
        if !supported(&cni_version) {
            return Err(Error::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {cni_version:?}"),
                format!("this plugin supports {}", SUPPORTED.join(", ")),
            ));
        }
        let name = config["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("name", "required"))?
            .to_string();
        let bridge = match &config["bridge"] {
            Value::Null => "skiff0".to_string(),
            Value::String(b) if !b.is_empty() && b.len() <= 15 && !b.contains('/') => b.clone(),
            _ => {
                return Err(invalid(
                    "bridge",
                    "must be an interface name (1-15 characters)",
                ));
            }
        };
        let subnet = net(&config["subnet"], "subnet")?.trunc();
        if subnet.prefix_len() > 30 {
            return Err(invalid(
                "subnet",
                "needs room for a gateway and pods (/30 or wider)",
            ));
        }
        let first = u32::from(subnet.network()) + 1;
        let gateway = address(&config["gateway"], "gateway")?.unwrap_or(Ipv4Addr::from(first));
        let inside = |ip: Option<Ipv4Addr>, field: &str| match ip {
            Some(ip) if !subnet.contains(&ip) => Err(invalid(
                field,
                format!("{ip} is outside the subnet {subnet}"),
            )),
            _ => Ok(ip),
        };
        inside(Some(gateway), "gateway")?;
        let range_start = inside(address(&config["rangeStart"], "rangeStart")?, "rangeStart")?;
        let range_end = inside(address(&config["rangeEnd"], "rangeEnd")?, "rangeEnd")?;
        let routes = match &config["routes"] {
            Value::Null => vec![Route {
                dst: Ipv4Net::default(),
                gw: None,
            }],
            Value::Array(routes) => routes
                .iter()
                .enumerate()
                .map(|(i, route)| {
                    Ok(Route {
                        dst: net(&route["dst"], &format!("routes[{i}].dst"))?,
                        gw: address(&route["gw"], &format!("routes[{i}].gw"))?,
                    })
                })
                .collect::<Result<_, Error>>()?,
            _ => return Err(invalid("routes", "must be a list")),
        };
        let mtu = match &config["mtu"] {
            Value::Null => None,
            value => Some(
                value
                    .as_u64()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| invalid("mtu", "must be a number from 68 to 65535"))?
                    as u32,
            ),
        };
        let non_masquerade = match &config["nonMasqueradeCIDRs"] {
            Value::Null => Vec::new(),
            Value::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, cidr)| net(cidr, &format!("nonMasqueradeCIDRs[{i}]")))
                .collect::<Result<_, Error>>()?,
            _ => return Err(invalid("nonMasqueradeCIDRs", "must be a list")),
        };
        let data_dir = match &config["dataDir"] {
            Value::Null => PathBuf::from("/var/lib/cni/skiff"),
            Value::String(dir) if dir.starts_with('/') => PathBuf::from(dir),
            _ => return Err(invalid("dataDir", "must be an absolute path")),
        };
        let table = match &config["nftTable"] {
            Value::Null => format!("cni-{bridge}"),
            Value::String(t)
                if !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                t.clone()
            }
            _ => return Err(invalid("nftTable", "letters, digits, - and _ only")),
        };
        let port_mappings = match &config["runtimeConfig"]["portMappings"] {
            Value::Null => Vec::new(),
            value => serde_json::from_value::<Vec<PortMapping>>(value.clone())
                .map_err(|e| invalid("runtimeConfig.portMappings", e))?,
        };
        for (i, mapping) in port_mappings.iter().enumerate() {
            if !matches!(
                mapping.protocol.to_lowercase().as_str(),
                "tcp" | "udp" | "sctp"
            ) {
                return Err(invalid(
                    &format!("runtimeConfig.portMappings[{i}].protocol"),
                    format!("{:?} is not tcp, udp or sctp", mapping.protocol),
                ));
            }
            if mapping.host_port == 0 || mapping.container_port == 0 {
                return Err(invalid(
                    &format!("runtimeConfig.portMappings[{i}]"),
                    "ports must be 1-65535",
                ));
            }
        }
        let valid_attachments = config["cni.dev/valid-attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["containerID"].as_str()?.to_string(),
                    a["ifname"].as_str()?.to_string(),
                ))
            })
            .collect();
        Ok(NetConf {
            cni_version,
            name,
            bridge,
            subnet,
            gateway,
            range_start,
            range_end,
            routes,
            mtu,
            is_gateway: flag(&config, "isGateway", true)?,
            ip_masq: flag(&config, "ipMasq", true)?,
            non_masquerade,
            hairpin_mode: flag(&config, "hairpinMode", true)?,
            data_dir,
            table,
            port_mappings,
            prev_result: Some(config["prevResult"].clone()).filter(Value::is_object),
            valid_attachments,
        })
    }

    /// The directory of this network's address records.
    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checked_fields() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"pods","type":"skiff-cni","subnet":"10.9.0.7/24",
                 "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}"#,
        )
        .expect("valid");
        assert_eq!(conf.subnet.to_string(), "10.9.0.0/24");
        assert_eq!(conf.gateway, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(conf.bridge, "skiff0");
        assert_eq!(conf.table, "cni-skiff0");
        assert_eq!(conf.routes[0].dst.to_string(), "0.0.0.0/0");
        assert!(conf.ip_masq && conf.is_gateway && conf.hairpin_mode);
        assert_eq!(conf.port_mappings[0].host_port, 8080);
        assert_eq!(conf.ipam_dir(), PathBuf::from("/var/lib/cni/skiff/pods"));

        let refused = |json: &str, code: u32, words: &str| {
            let e = NetConf::parse(json.as_bytes()).expect_err(json);
            assert_eq!(e.code, code, "{json}: {e}");
            assert!(e.msg.contains(words), "{json}: {}", e.msg);
        };
        refused(r#"{"cniVersion":"9.0.0","name":"n"}"#, 1, "9.0.0");
        refused(r#"{"cniVersion":"1.0.0","name":"n"}"#, 7, "subnet");
        refused(
            r#"{"cniVersion":"1.0.0","name":"n","subnet":"fd00::/64"}"#,
            7,
            "IPv4",
        );
        refused(
            r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","gateway":"10.1.0.1"}"#,
            7,
            "gateway",
        );
        refused(
            r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","routes":[{"dst":"x"}]}"#,
            7,
            "routes[0].dst",
        );
        refused(
            r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24",
                "runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"icmp"}]}}"#,
            7,
            "portMappings[0].protocol",
        );
        refused("{", 6, "JSON");
    }

    #[test]
    fn environment_needs_what_the_command_uses() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(Env::read(vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
        let e = Env::read(vars(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")]))
            .expect_err("no ifname");
        assert_eq!(e.code, 4);
        assert!(
            Env::read(vars(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0")
            ]))
            .is_ok()
        );
        assert_eq!(Env::read(vars(&[])).expect_err("none").code, 4);
        assert!(at_least("1.1.0", 1, 1) && !at_least("1.0.0", 1, 1) && at_least("0.4.0", 0, 4));
    }
}
