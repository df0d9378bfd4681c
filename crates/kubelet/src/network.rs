//! The node's default pod network: when the CNI configuration directory holds no
//! network of someone else's, the kubelet writes a bridge network over the pod CIDR the
//! controller manager gave its Node, as kubenet did, so a fresh cluster runs pods
//! without a network add-on: skiff's own plugin (`skiff-cni`, linked to the binary by
//! `skiff agent`), or Debian's `bridge`, `host-local` and `portmap`. Its own file is
//! rewritten when the choice or the CIDR changes; other networks are left alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::json;

/// Which plugins the default network uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugins {
    /// skiff's own (`skiff-cni`).
    Skiff,
    /// Debian's containernetworking-plugins: bridge, host-local, portmap.
    Debian,
}

/// Where the default network goes, where its plugins must be, and its shape.
#[derive(Clone, Debug)]
pub struct DefaultCni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub plugins: Plugins,
    /// The node's bridge (`skiff0`).
    pub bridge: String,
    /// Destinations pods reach without masquerade besides their own subnet (the
    /// cluster's pod CIDR), for skiff's plugin.
    pub non_masquerade: Vec<String>,
}

pub const BRIDGE: &str = "skiff0";

/// The default bridge's name (for flags' defaults).
pub const fn network_bridge() -> &'static str {
    BRIDGE
}
pub const SKIFF_PLUGIN: &str = "skiff-cni";
const FILE: &str = "10-skiff.conflist";

/// Whether `dir` holds a network configuration the runtime would load, other than the
/// one this module writes (then the default network is not needed).
pub fn has_network(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            name != FILE
                && (name.ends_with(".conflist")
                    || name.ends_with(".conf")
                    || name.ends_with(".json"))
        })
}

impl DefaultCni {
    /// The network's name: `skiff` on the default bridge, else the bridge's (so the
    /// address records of two bridges never mix).
    fn name(&self) -> String {
        if self.bridge == BRIDGE {
            "skiff".to_string()
        } else {
            self.bridge.clone()
        }
    }

    /// The conflist for `subnet`.
    pub fn conflist(&self, subnet: &str) -> serde_json::Value {
        match self.plugins {
            Plugins::Skiff => json!({
                "cniVersion": "1.1.0",
                "name": self.name(),
                "plugins": [
                    {"type": SKIFF_PLUGIN, "bridge": self.bridge, "subnet": subnet,
                     "isGateway": true, "ipMasq": true, "hairpinMode": true,
                     "nonMasqueradeCIDRs": self.non_masquerade,
                     "capabilities": {"portMappings": true}},
                ],
            }),
            Plugins::Debian => json!({
                "cniVersion": "1.0.0",
                "name": self.name(),
                "plugins": [
                    {"type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": true,
                     "hairpinMode": true,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                ],
            }),
        }
    }

    /// The plugin the network needs first.
    fn main_plugin(&self) -> &'static str {
        match self.plugins {
            Plugins::Skiff => SKIFF_PLUGIN,
            Plugins::Debian => "bridge",
        }
    }
}

/// Waits for the Node's pod CIDR and writes the default network, unless the directory
/// has another or the plugins are missing (both said in the log).
pub async fn ensure(client: kube::Client, node: String, cni: DefaultCni) {
    if has_network(&cni.conf_dir) {
        return;
    }
    let plugin = cni.main_plugin();
    if !cni.bin_dirs.iter().any(|d| d.join(plugin).is_file()) {
        tracing::warn!(dirs = ?cni.bin_dirs, plugin, "no CNI network configured and no plugin to make one: pods cannot start until a network is installed");
        return;
    }
    let nodes: Api<Node> = Api::all(client);
    let cidr = loop {
        match nodes.get_opt(&node).await {
            Ok(Some(n)) => {
                if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                    break cidr;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the node for its pod CIDR"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if has_network(&cni.conf_dir) {
        return;
    }
    let path = cni.conf_dir.join(FILE);
    let content = cni.conflist(&cidr).to_string();
    if std::fs::read_to_string(&path).is_ok_and(|old| old == content) {
        return;
    }
    let written = std::fs::create_dir_all(&cni.conf_dir).and_then(|()| {
        let temporary = cni.conf_dir.join(format!(".{FILE}.tmp"));
        std::fs::write(&temporary, &content)?;
        std::fs::rename(&temporary, &path)
    });
    match written {
        Ok(()) => {
            tracing::info!(path = %path.display(), %cidr, plugin, "wrote the default pod network")
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "writing the default pod network")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_cni(plugins: Plugins, conf_dir: &Path) -> DefaultCni {
        DefaultCni {
            conf_dir: conf_dir.to_path_buf(),
            bin_dirs: vec![],
            plugins,
            bridge: BRIDGE.into(),
            non_masquerade: vec!["10.244.0.0/16".into()],
        }
    }

    #[test]
    fn both_plugin_sets_and_only_foreign_networks_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let skiff = default_cni(Plugins::Skiff, dir.path()).conflist("10.244.3.0/24");
        let plugin = &skiff["plugins"][0];
        assert_eq!(skiff["name"], "skiff");
        assert_eq!(plugin["type"], SKIFF_PLUGIN);
        assert_eq!(plugin["subnet"], "10.244.3.0/24");
        assert_eq!(plugin["nonMasqueradeCIDRs"][0], "10.244.0.0/16");
        assert_eq!(plugin["capabilities"]["portMappings"], true);
        let debian = default_cni(Plugins::Debian, dir.path()).conflist("10.244.3.0/24");
        assert_eq!(debian["plugins"][0]["type"], "bridge");
        assert_eq!(
            debian["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        assert_eq!(debian["plugins"][1]["type"], "portmap");

        // Its own file is rewritten at will; anyone else's network wins.
        std::fs::write(dir.path().join(FILE), skiff.to_string()).expect("write");
        assert!(!has_network(dir.path()));
        std::fs::write(dir.path().join("05-other.conf"), "{}").expect("write");
        assert!(has_network(dir.path()));
    }
}
