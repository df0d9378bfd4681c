//! Pod networking through CNI (spec 1.0): the network is the first configuration in
//! the config directory by file name (`.conflist`, or a single-plugin `.conf`/`.json`),
//! plugins are executables found in the bin directories, called with the `CNI_*`
//! environment and the plugin's configuration on stdin. ADD runs the chain in order,
//! each plugin getting the previous one's result; DEL runs it in reverse with the ADD
//! result as prevResult; CHECK (spec 0.4.0 and later, unless the list sets
//! `disableCheck`) runs it in order with the ADD result, when a restarted runtime
//! verifies the networks it finds. STATUS and GC (spec 1.1 and later) run through the
//! chain for the runtime's NetworkReady condition and, at start, to let plugins release
//! what sandboxes the runtime no longer has held. Plugins that declare the
//! `portMappings` capability get the sandbox's host ports in `runtimeConfig`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The interface name inside the pod, as every Kubernetes runtime uses.
pub const IFNAME: &str = "eth0";

#[derive(Clone, Debug)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

/// One network configuration list.
#[derive(Clone, Debug)]
pub struct Network {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The list's `disableCheck`: the runtime must not call CHECK.
    pub disable_check: bool,
}

/// A plugin's failure: the spec's error object, or why it could not run.
#[derive(Debug, thiserror::Error)]
#[error("CNI {command} of network {network:?} (plugin {plugin}): {message}")]
pub struct CniError {
    pub command: &'static str,
    pub network: String,
    pub plugin: String,
    pub message: String,
}

/// Who the network is for: what CNI_ARGS and the runtime config carry.
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
    pub port_mappings: Vec<Value>,
}

impl Cni {
    /// The network pods join; an error says why there is none (NetworkReady false).
    pub fn network(&self) -> Result<Network, String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(|e| {
                format!(
                    "reading CNI config directory {}: {e}",
                    self.conf_dir.display()
                )
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let mut problems = Vec::new();
        for file in files {
            match load(&file) {
                Ok(network) => return Ok(network),
                Err(e) => problems.push(format!("{}: {e}", file.display())),
            }
        }
        if problems.is_empty() {
            Err(format!(
                "no CNI network configuration in {}",
                self.conf_dir.display()
            ))
        } else {
            Err(problems.join("; "))
        }
    }

    fn plugin_path(&self, kind: &str) -> Option<PathBuf> {
        if kind.contains('/') {
            return None;
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
    }

    /// Runs ADD through the chain; the final result.
    pub fn add(&self, network: &Network, at: &Attachment) -> Result<Value, CniError> {
        let mut previous: Option<Value> = None;
        for plugin in &network.plugins {
            let result = self.exec(network, plugin, "ADD", Some(at), previous.as_ref())?;
            previous = Some(result);
        }
        Ok(previous.unwrap_or_else(|| json!({"cniVersion": network.cni_version})))
    }

    /// Runs CHECK through the chain in order, every plugin given ADD's final result;
    /// nothing to run where the spec version has no CHECK or the list disables it.
    pub fn check(
        &self,
        network: &Network,
        at: &Attachment,
        result: Option<&Value>,
    ) -> Result<(), CniError> {
        if network.disable_check || !at_least(&network.cni_version, 0, 4) {
            return Ok(());
        }
        for plugin in &network.plugins {
            self.exec(network, plugin, "CHECK", Some(at), result)?;
        }
        Ok(())
    }

    /// Runs DEL through the chain in reverse; missing resources are not errors.
    pub fn del(
        &self,
        network: &Network,
        at: &Attachment,
        previous: Option<&Value>,
    ) -> Result<(), CniError> {
        for plugin in network.plugins.iter().rev() {
            self.exec(network, plugin, "DEL", Some(at), previous)?;
        }
        Ok(())
    }

    /// STATUS through the chain: whether the network can take pods now (nothing to ask
    /// before spec 1.1).
    pub fn status(&self, network: &Network) -> Result<(), CniError> {
        if !at_least(&network.cni_version, 1, 1) {
            return Ok(());
        }
        for plugin in &network.plugins {
            self.exec(network, plugin, "STATUS", None, None)?;
        }
        Ok(())
    }

    /// GC through the chain: plugins release whatever is held for attachments other
    /// than `valid` (container ID, interface) (nothing to ask before spec 1.1).
    pub fn gc(&self, network: &Network, valid: &[(String, String)]) -> Result<(), CniError> {
        if !at_least(&network.cni_version, 1, 1) {
            return Ok(());
        }
        let attachments: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        for plugin in &network.plugins {
            let mut plugin = plugin.clone();
            plugin["cni.dev/valid-attachments"] = json!(attachments);
            self.exec(network, &plugin, "GC", None, None)?;
        }
        Ok(())
    }

    fn exec(
        &self,
        network: &Network,
        plugin: &Value,
        command: &'static str,
        at: Option<&Attachment>,
        previous: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let fail = |message: String| CniError {
            command,
            network: network.name.clone(),
            plugin: kind.clone(),
            message,
        };
        let path = self.plugin_path(&kind).ok_or_else(|| {
            fail(format!(
                "no plugin {kind:?} in {}",
                self.bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })?;
        let mut config = plugin.clone();
        config["name"] = json!(network.name);
        config["cniVersion"] = json!(network.cni_version);
        if let Some(previous) = previous {
            config["prevResult"] = previous.clone();
        }
        let paths = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let mut command_line = Command::new(&path);
        command_line
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", paths);
        // STATUS and GC are about the network, not a container.
        if let Some(at) = at {
            if plugin["capabilities"]["portMappings"] == json!(true) && !at.port_mappings.is_empty()
            {
                config["runtimeConfig"]["portMappings"] = json!(at.port_mappings);
            }
            let args = format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                at.pod_namespace, at.pod_name, at.container_id, at.pod_uid
            );
            command_line
                .env("CNI_CONTAINERID", at.container_id)
                .env("CNI_NETNS", at.netns)
                .env("CNI_IFNAME", IFNAME)
                .env("CNI_ARGS", args);
        }
        let mut child = command_line
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("running {}: {e}", path.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = serde_json::to_vec(&config).unwrap_or_default();
            if let Err(e) = stdin.write_all(&bytes) {
                // Reap it before reporting: no zombie plugins.
                drop(stdin);
                let output = child.wait_with_output();
                let detail = output
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                return Err(fail(format!("writing its configuration: {e} {detail}")));
            }
        }
        let output = child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting for it: {e}")))?;
        let stdout: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if !output.status.success() {
            let message = match stdout["msg"].as_str() {
                Some(msg) => {
                    let details = stdout["details"].as_str().unwrap_or_default();
                    format!("{msg} (code {}) {details}", stdout["code"])
                        .trim()
                        .to_string()
                }
                None => format!(
                    "{} {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            };
            return Err(fail(message));
        }
        // ADD must answer with a result; an answer that is none would leave a pod
        // without an address and no error.
        if command == "ADD" && !stdout.is_object() {
            return Err(fail(format!(
                "ADD returned no result: {:?}",
                String::from_utf8_lossy(&output.stdout)
            )));
        }
        Ok(stdout)
    }
}

fn load(file: &Path) -> Result<Network, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let config: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let name = config["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("no name")?
        .to_string();
    let cni_version = config["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
    let plugins = match config["plugins"].as_array() {
        Some(plugins) => plugins.clone(),
        None if config["type"].is_string() => vec![config.clone()],
        None => return Err("neither plugins nor type".into()),
    };
    if plugins.is_empty() || plugins.iter().any(|p| !p["type"].is_string()) {
        return Err("a plugin without a type".into());
    }
    Ok(Network {
        name,
        cni_version,
        plugins,
        disable_check: config["disableCheck"] == json!(true),
    })
}

/// Whether a spec version is at least `major.minor` (CHECK came with 0.4, STATUS and
/// GC with 1.1).
fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// The pod's IP addresses in a result (spec 1.0 `ips`; 0.x had a version per address).
pub fn ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect()
}

/// The host ports of a sandbox as the portmap plugin takes them.
pub fn port_mappings(config: &k8s_cri::v1::PodSandboxConfig) -> Vec<Value> {
    config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match k8s_cri::v1::Protocol::try_from(p.protocol) {
                Ok(k8s_cri::v1::Protocol::Udp) => "udp",
                Ok(k8s_cri::v1::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            let mut mapping = json!({"hostPort": p.host_port, "containerPort": p.container_port,
                                     "protocol": protocol});
            if !p.host_ip.is_empty() {
                mapping["hostIP"] = json!(p.host_ip);
            }
            mapping
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_valid_configuration_by_name_and_ips_without_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("05-broken.conflist"), "{").expect("write");
        std::fs::write(
            dir.path().join("10-net.conf"),
            r#"{"cniVersion":"1.0.0","name":"net","type":"bridge"}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("README"), "not a config").expect("write");
        let cni = Cni {
            conf_dir: dir.path().to_path_buf(),
            bin_dirs: vec![],
        };
        let network = cni.network().expect("network");
        assert_eq!(network.name, "net");
        assert_eq!(network.plugins.len(), 1);
        let result = json!({"ips": [{"address": "10.1.0.5/24"}, {"address": "fd00::5/64"}]});
        assert_eq!(ips(&result), vec!["10.1.0.5", "fd00::5"]);
        let empty = tempfile::tempdir().expect("tempdir");
        let none = Cni {
            conf_dir: empty.path().to_path_buf(),
            bin_dirs: vec![],
        };
        assert!(none.network().is_err());
    }
}
