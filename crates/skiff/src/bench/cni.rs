//! `skiff bench cni`: what connecting a pod costs, skiff's CNI plugin against Debian's
//! bridge + host-local + portmap, both run as the runtime runs them (`skiff_runtime::cni`,
//! one process per plugin and command) on network namespaces, bridges and NAT tables of
//! the bench's own, removed at the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use skiff_runtime::cni::{Attachment, Cni};

use super::stats::{Samples, ms};

#[derive(clap::Args)]
pub struct CniBench {
    /// Pods connected and disconnected per plugin set (one at a time).
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Where Debian's plugins are.
    #[arg(long, default_value = "/usr/lib/cni")]
    debian_plugins: PathBuf,
}

/// What the bench made, removed when it ends (also on errors).
struct Cleanup {
    namespaces: Vec<String>,
    bridges: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
        for bridge in &self.bridges {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", bridge])
                .output();
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "ip", &format!("cni-{bridge}")])
                .output();
        }
    }
}

fn run_set(cni: &Cni, namespaces: &[String]) -> Result<(Samples, Samples)> {
    let network = cni.network().map_err(anyhow::Error::msg)?;
    let bar = super::store::progress(namespaces.len() * 2, &format!("{} pods", network.name));
    let (mut adds, mut dels) = (
        Samples::with_capacity(namespaces.len()),
        Samples::with_capacity(namespaces.len()),
    );
    let mut results = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let id = format!("bench-{i:04}");
        let netns = Path::new("/var/run/netns").join(ns);
        let at = attachment(&id, &netns);
        let started = Instant::now();
        let result = cni.add(&network, &at)?;
        adds.push(started.elapsed());
        results.push(result);
        bar.inc(1);
    }
    for (i, (ns, result)) in namespaces.iter().zip(&results).enumerate() {
        let id = format!("bench-{i:04}");
        let netns = Path::new("/var/run/netns").join(ns);
        let at = attachment(&id, &netns);
        let started = Instant::now();
        cni.del(&network, &at, Some(result))?;
        dels.push(started.elapsed());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((adds, dels))
}

fn attachment<'a>(id: &'a str, netns: &'a Path) -> Attachment<'a> {
    Attachment {
        container_id: id,
        netns,
        pod_namespace: "bench",
        pod_name: id,
        pod_uid: id,
        port_mappings: Vec::new(),
    }
}

impl CniBench {
    pub async fn run(self) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pid = std::process::id() % 10_000;
        let mut cleanup = Cleanup {
            namespaces: Vec::new(),
            bridges: vec![format!("skbs{pid}"), format!("skbd{pid}")],
        };
        for i in 0..self.pods {
            let name = format!("skiff-bench-{pid}-{i}");
            let out = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .context("ip netns add")?;
            anyhow::ensure!(
                out.status.success(),
                "ip netns add: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cleanup.namespaces.push(name);
        }
        let plugins = dir.path().join("bin");
        std::fs::create_dir_all(&plugins)?;
        std::os::unix::fs::symlink(std::env::current_exe()?, plugins.join("skiff-cni"))?;
        let subnet = "10.239.0.0/16";
        let sets = [
            (
                "skiff-cni",
                json!({"cniVersion": "1.1.0", "name": "bench-skiff", "plugins": [
                    {"type": "skiff-cni", "bridge": cleanup.bridges[0], "subnet": subnet,
                     "dataDir": dir.path().join("ipam"),
                     "capabilities": {"portMappings": true}}]}),
            ),
            (
                "bridge + host-local + portmap",
                json!({"cniVersion": "1.0.0", "name": "bench-debian", "plugins": [
                    {"type": "bridge", "bridge": cleanup.bridges[1], "isGateway": true,
                     "ipMasq": true, "hairpinMode": true,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                              "routes": [{"dst": "0.0.0.0/0"}],
                              "dataDir": dir.path().join("host-local")}},
                    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]}),
            ),
        ];
        println!(
            "| CNI plugins, {} pods one at a time | ADD median | ADD p99 | DEL median | DEL p99 |",
            self.pods
        );
        println!("|---|---:|---:|---:|---:|");
        for (label, conflist) in sets {
            let conf_dir = dir
                .path()
                .join(format!("net-{}", conflist["name"].as_str().unwrap_or("x")));
            std::fs::create_dir_all(&conf_dir)?;
            std::fs::write(conf_dir.join("10-bench.conflist"), conflist.to_string())?;
            let cni = Cni {
                conf_dir,
                bin_dirs: vec![plugins.clone(), self.debian_plugins.clone()],
            };
            let (mut adds, mut dels) = run_set(&cni, &cleanup.namespaces)?;
            println!(
                "| {label} | {} | {} | {} | {} |",
                ms(adds.percentile(50.0)),
                ms(adds.percentile(99.0)),
                ms(dels.percentile(50.0)),
                ms(dels.percentile(99.0))
            );
        }
        Ok(())
    }
}
