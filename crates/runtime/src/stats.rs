//! Container and pod statistics from cgroups (v1 controllers, found through mountinfo):
//! CPU time from cpuacct.usage, memory from memory.usage_in_bytes and memory.stat
//! (working set = usage - inactive file, as cAdvisor and the kubelet compute it), the
//! process count from pids.current, the writable layer's disk use, and a pod's network
//! counters from /proc/PID/net/dev of one of its processes. CPU rate (nano cores) needs
//! two samples: the engine keeps the last one per cgroup, as containerd does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use k8s_cri::v1::*;

use crate::cgroups::Hierarchies;
use crate::engine::{Container, Engine, Sandbox, lock};

/// The previous CPU sample per cgroup: (time ns, usage ns).
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// The rate since the previous sample of `cgroup` (none on the first).
    fn rate(&self, cgroup: &str, now: i64, usage: u64) -> Option<u64> {
        let mut samples = lock(&self.0);
        let previous = samples.insert(cgroup.to_string(), (now, usage));
        let (then, before) = previous?;
        let elapsed = u64::try_from(now - then).ok().filter(|e| *e > 0)?;
        let used = usage.checked_sub(before)?;
        Some(
            u64::try_from(u128::from(used) * 1_000_000_000 / u128::from(elapsed))
                .unwrap_or(u64::MAX),
        )
    }

    pub fn forget(&self, cgroup: &str) {
        lock(&self.0).remove(cgroup);
    }
}

/// A number from a cgroup file, or from one `key value` line of it.
fn read_u64(dir: &Path, file: &str, key: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    match key {
        None => text.trim().parse().ok(),
        Some(key) => text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        }),
    }
}

fn value(v: Option<u64>) -> Option<UInt64Value> {
    v.map(|value| UInt64Value { value })
}

fn cpu(cgroups: &Hierarchies, samples: &CpuSamples, cgroup: &str, now: i64) -> Option<CpuUsage> {
    let dir = cgroups.v1_dir("cpuacct", cgroup)?;
    let usage = read_u64(&dir, "cpuacct.usage", None)?;
    Some(CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: value(Some(usage)),
        usage_nano_cores: value(samples.rate(cgroup, now, usage)),
    })
}

fn memory(cgroups: &Hierarchies, cgroup: &str, now: i64) -> Option<MemoryUsage> {
    let dir = cgroups.v1_dir("memory", cgroup)?;
    let usage = read_u64(&dir, "memory.usage_in_bytes", None)?;
    let stat = |key| read_u64(&dir, "memory.stat", Some(key));
    let inactive_file = stat("total_inactive_file").unwrap_or(0);
    let working_set = usage.saturating_sub(inactive_file);
    // A limit at the page-aligned maximum means none.
    let limit = read_u64(&dir, "memory.limit_in_bytes", None).filter(|l| *l < (1 << 62));
    Some(MemoryUsage {
        timestamp: now,
        working_set_bytes: value(Some(working_set)),
        available_bytes: value(limit.map(|l| l.saturating_sub(working_set))),
        usage_bytes: value(Some(usage)),
        rss_bytes: value(stat("total_rss")),
        page_faults: value(stat("total_pgfault")),
        major_page_faults: value(stat("total_pgmajfault")),
    })
}

pub fn container(engine: &Engine, container: &Container) -> ContainerStats {
    let now = crate::util::now_nanos();
    let record = lock(&container.record).clone();
    let (bytes, inodes) = crate::layers::disk_usage(&container.dir.join("upper"));
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: container.id.clone(),
            metadata: container.config.metadata.clone(),
            labels: container.config.labels.clone(),
            annotations: container.config.annotations.clone(),
        }),
        cpu: cpu(
            &engine.cgroups,
            &engine.cpu_samples,
            &record.cgroups_path,
            now,
        ),
        memory: memory(&engine.cgroups, &record.cgroups_path, now),
        writable_layer: Some(FilesystemUsage {
            timestamp: now,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: container.dir.join("upper").display().to_string(),
            }),
            used_bytes: value(Some(bytes)),
            inodes_used: value(Some(inodes)),
        }),
        swap: None,
    }
}

/// Receive and transmit counters of `pid`'s network namespace.
fn network(pid: i32, now: i64) -> Option<NetworkUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut interfaces = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let n: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        if n.len() < 11 {
            continue;
        }
        interfaces.push(NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: value(Some(n[0])),
            rx_errors: value(Some(n[2])),
            tx_bytes: value(Some(n[8])),
            tx_errors: value(Some(n[10])),
        });
    }
    let default = interfaces
        .iter()
        .position(|i| i.name == crate::cni::IFNAME)
        .map(|i| interfaces.remove(i));
    Some(NetworkUsage {
        timestamp: now,
        default_interface: default,
        interfaces,
    })
}

pub fn sandbox(engine: &Engine, sandbox: &Sandbox) -> PodSandboxStats {
    let now = crate::util::now_nanos();
    let record = lock(&sandbox.record).clone();
    let members = engine.containers_of(&sandbox.id);
    let running: Vec<_> = members
        .iter()
        .filter(|c| crate::container::phase(c) == crate::container::Phase::Running)
        .collect();
    let containers: Vec<ContainerStats> = running.iter().map(|c| container(engine, c)).collect();
    let network = if record.host_network {
        None
    } else {
        running
            .iter()
            .find_map(|c| network(lock(&c.record).pid, now))
    };
    let process = engine
        .cgroups
        .v1_dir("pids", &record.cgroup_parent)
        .and_then(|d| read_u64(&d, "pids.current", None))
        .map(|count| ProcessUsage {
            timestamp: now,
            process_count: value(Some(count)),
        });
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: sandbox.id.clone(),
            metadata: sandbox.config.metadata.clone(),
            labels: sandbox.config.labels.clone(),
            annotations: sandbox.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cpu(
                &engine.cgroups,
                &engine.cpu_samples,
                &record.cgroup_parent,
                now,
            ),
            memory: memory(&engine.cgroups, &record.cgroup_parent, now),
            network,
            process,
            containers,
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_rate_needs_two_samples() {
        let samples = super::CpuSamples::default();
        assert_eq!(samples.rate("/a", 1_000_000_000, 5_000), None);
        // Half a core over two seconds.
        assert_eq!(
            samples.rate("/a", 3_000_000_000, 1_000_005_000),
            Some(500_000_000)
        );
    }
}
