//! The node's default pod network: when the CNI configuration directory holds no
//! network, the kubelet writes a bridge network over the pod CIDR the controller manager
//! gave its Node (Debian's `bridge`, `host-local` and `portmap` plugins), as kubenet
//! did, so a fresh one-node cluster runs pods without a network add-on. A directory
//! that already has a network is left alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::json;

/// Where the default network goes and where its plugins must be.
#[derive(Clone, Debug)]
pub struct DefaultCni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

pub const BRIDGE: &str = "skiff0";
const FILE: &str = "10-skiff.conflist";

/// Whether `dir` holds a network configuration the runtime would load.
fn has_network(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json")
        })
}

/// The conflist for `subnet`.
pub fn conflist(subnet: &str) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "skiff",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// Waits for the Node's pod CIDR and writes the default network, unless the directory
/// has one or the plugins are missing (both said in the log).
pub async fn ensure(client: kube::Client, node: String, cni: DefaultCni) {
    if has_network(&cni.conf_dir) {
        return;
    }
    if !cni.bin_dirs.iter().any(|d| d.join("bridge").is_file()) {
        tracing::warn!(dirs = ?cni.bin_dirs, "no CNI network configured and no bridge plugin to make one: pods cannot start until a network is installed");
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
    let written = std::fs::create_dir_all(&cni.conf_dir).and_then(|()| {
        let temporary = cni.conf_dir.join(format!(".{FILE}.tmp"));
        std::fs::write(&temporary, conflist(&cidr).to_string())?;
        std::fs::rename(&temporary, &path)
    });
    match written {
        Ok(()) => tracing::info!(path = %path.display(), %cidr, "wrote the default pod network"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "writing the default pod network")
        }
    }
}
