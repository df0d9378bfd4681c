//! Resource use of the node and its pods, in the shape of the kubelet's Summary API
//! (`stats/v1alpha1`: what `/stats/summary` serves, metrics-server and users read,
//! and what `/metrics/resource` is derived from). Pods and containers come from the
//! runtime (CRI ListPodSandboxStats, so containerd works alike); the node from the
//! host: CPU from /proc/stat, memory from /proc/meminfo (working set = used less
//! inactive file pages, as cAdvisor counts it; available = capacity - working set, the
//! eviction signal), the node filesystem from statvfs of the kubelet's root, the image
//! filesystem from the runtime (CRI ImageFsInfo).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use k8s_cri::v1 as cri;
use serde_json::{Value, json};

use crate::cri::Runtime;
use crate::spec::{POD_NAME, POD_NAMESPACE, POD_UID};

/// The node's previous CPU sample (time ns, usage ns): rates need two.
#[derive(Default)]
pub struct NodeSamples(Mutex<Option<(i64, u64)>>);

impl NodeSamples {
    fn rate(&self, now: i64, usage: u64) -> Option<u64> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.replace((now, usage));
        let (then, before) = previous?;
        let elapsed = u64::try_from(now - then).ok().filter(|e| *e > 0)?;
        let used = usage.checked_sub(before)?;
        u64::try_from(u128::from(used) * 1_000_000_000 / u128::from(elapsed)).ok()
    }
}

/// An RFC 3339 time from nanoseconds since the epoch.
fn time(nanos: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn number(v: &Option<cri::UInt64Value>) -> Value {
    v.as_ref().map_or(Value::Null, |v| json!(v.value))
}

/// Drops null members (upstream's omitempty pointers).
fn compact(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    value
}

fn cpu(usage: &Option<cri::CpuUsage>) -> Value {
    usage.as_ref().map_or(Value::Null, |u| {
        compact(json!({
            "time": time(u.timestamp),
            "usageNanoCores": number(&u.usage_nano_cores),
            "usageCoreNanoSeconds": number(&u.usage_core_nano_seconds),
        }))
    })
}

fn memory(usage: &Option<cri::MemoryUsage>) -> Value {
    usage.as_ref().map_or(Value::Null, |m| {
        compact(json!({
            "time": time(m.timestamp),
            "availableBytes": number(&m.available_bytes),
            "usageBytes": number(&m.usage_bytes),
            "workingSetBytes": number(&m.working_set_bytes),
            "rssBytes": number(&m.rss_bytes),
            "pageFaults": number(&m.page_faults),
            "majorPageFaults": number(&m.major_page_faults),
        }))
    })
}

fn interface(i: &cri::NetworkInterfaceUsage) -> Value {
    compact(json!({
        "name": i.name,
        "rxBytes": number(&i.rx_bytes),
        "rxErrors": number(&i.rx_errors),
        "txBytes": number(&i.tx_bytes),
        "txErrors": number(&i.tx_errors),
    }))
}

fn network(usage: &Option<cri::NetworkUsage>) -> Value {
    let Some(n) = usage else {
        return Value::Null;
    };
    let mut all: Vec<Value> = n.default_interface.iter().map(interface).collect();
    all.extend(n.interfaces.iter().map(interface));
    let mut value = n
        .default_interface
        .as_ref()
        .map_or_else(|| json!({}), interface);
    value["time"] = json!(time(n.timestamp));
    value["interfaces"] = json!(all);
    value
}

/// Capacity, availability and inodes of the filesystem holding `path`.
pub(crate) fn filesystem(path: &Path, now: i64) -> Value {
    let Ok(fs) = nix::sys::statvfs::statvfs(path) else {
        return Value::Null;
    };
    let block = fs.fragment_size().max(1);
    let capacity = fs.blocks() * block;
    let free = fs.blocks_free() * block;
    let available = fs.blocks_available() * block;
    let (inodes, inodes_free) = (fs.files(), fs.files_free());
    json!({
        "time": time(now),
        "availableBytes": available,
        "capacityBytes": capacity,
        "usedBytes": capacity.saturating_sub(free),
        "inodesFree": inodes_free,
        "inodes": inodes,
        "inodesUsed": inodes.saturating_sub(inodes_free),
    })
}

/// `key: value kB` lines of /proc/meminfo, in bytes.
fn meminfo() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (key, rest) = l.split_once(':')?;
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.to_string(), kb * 1024))
        })
        .collect()
}

/// The node's CPU time in nanoseconds (all CPUs, not idle or waiting) and its boot
/// time in seconds, from /proc/stat.
fn proc_stat() -> (Option<u64>, Option<i64>) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // /proc/stat counts in USER_HZ, which Linux fixes at 100 for userspace.
    let ticks = 100;
    let busy = text.lines().find_map(|l| {
        let rest = l.strip_prefix("cpu ")?;
        let n: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| n.get(*i)).sum();
        Some(busy * (1_000_000_000 / ticks))
    });
    let boot = text
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok());
    (busy, boot)
}

/// The node's own numbers.
fn node_stats(
    node: &str,
    root_dir: &Path,
    samples: &NodeSamples,
    image_fs: Value,
    now: i64,
) -> Value {
    let (busy, boot) = proc_stat();
    let cpu = busy.map_or(Value::Null, |usage| {
        compact(json!({
            "time": time(now),
            "usageNanoCores": samples.rate(now, usage),
            "usageCoreNanoSeconds": usage,
        }))
    });
    let mem = meminfo();
    let memory = mem.get("MemTotal").map_or(Value::Null, |total| {
        let free = mem.get("MemFree").copied().unwrap_or(0);
        let usage = total.saturating_sub(free);
        let inactive_file = mem.get("Inactive(file)").copied().unwrap_or(0);
        let working_set = usage.saturating_sub(inactive_file);
        json!({
            "time": time(now),
            "availableBytes": total.saturating_sub(working_set),
            "usageBytes": usage,
            "workingSetBytes": working_set,
            "rssBytes": mem.get("AnonPages").copied().unwrap_or(0),
        })
    });
    let processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0);
    let max_pid: Option<u64> = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok());
    compact(json!({
        "nodeName": node,
        "startTime": boot.map(|b| time(b * 1_000_000_000)),
        "cpu": cpu,
        "memory": memory,
        "fs": filesystem(root_dir, now),
        "runtime": {"imageFs": image_fs},
        "rlimit": {"time": time(now), "maxpid": max_pid, "curproc": processes},
    }))
}

/// The Summary: the node, then every pod with a ready sandbox and its containers.
pub async fn summary(
    runtime: &Runtime,
    node: &str,
    root_dir: &Path,
    pod_log_dir: &Path,
    samples: &NodeSamples,
) -> Result<Value, tonic::Status> {
    let now = crate::status_now_nanos();
    let image_fs = match runtime.image_fs().await? {
        Some(usage) => {
            let mut fs = match usage.fs_id.as_ref().map(|id| Path::new(&id.mountpoint)) {
                Some(mountpoint) if mountpoint.exists() => filesystem(mountpoint, now),
                _ => json!({"time": time(now)}),
            };
            fs["usedBytes"] = number(&usage.used_bytes);
            fs["inodesUsed"] = number(&usage.inodes_used);
            compact(fs)
        }
        None => Value::Null,
    };
    let ready: HashMap<String, i64> = runtime
        .all_sandboxes()
        .await?
        .into_iter()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .map(|s| (s.id, s.created_at))
        .collect();
    let started: HashMap<String, i64> = runtime
        .all_containers()
        .await?
        .into_iter()
        .map(|c| (c.id, c.created_at))
        .collect();
    // The log filesystem is the same for every container: looked at once.
    let logs_fs = filesystem(pod_log_dir, now);
    let mut pods = Vec::new();
    for stats in runtime.sandbox_stats().await? {
        let Some(attributes) = stats.attributes.as_ref() else {
            continue;
        };
        let Some(created) = ready.get(&attributes.id) else {
            continue;
        };
        let label = |key: &str| attributes.labels.get(key).cloned().unwrap_or_default();
        let (name, namespace, uid) = (label(POD_NAME), label(POD_NAMESPACE), label(POD_UID));
        let linux = stats.linux.clone().unwrap_or_default();
        let logs_dir = pod_log_dir.join(format!("{namespace}_{name}_{uid}"));
        let mut ephemeral = 0u64;
        let containers: Vec<Value> = linux
            .containers
            .iter()
            .map(|c| {
                let id = c
                    .attributes
                    .as_ref()
                    .map(|a| a.id.clone())
                    .unwrap_or_default();
                let container = c
                    .attributes
                    .as_ref()
                    .and_then(|a| a.metadata.as_ref())
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let rootfs = c.writable_layer.as_ref().map_or(Value::Null, |l| {
                    let mut fs = image_fs.clone();
                    if !fs.is_object() {
                        fs = json!({});
                    }
                    fs["time"] = json!(time(l.timestamp));
                    fs["usedBytes"] = number(&l.used_bytes);
                    fs["inodesUsed"] = number(&l.inodes_used);
                    compact(fs)
                });
                let log_bytes = dir_size(&logs_dir.join(&container));
                ephemeral += rootfs["usedBytes"].as_u64().unwrap_or(0) + log_bytes;
                let mut logs = logs_fs.clone();
                if logs.is_object() {
                    logs["usedBytes"] = json!(log_bytes);
                }
                compact(json!({
                    "name": container,
                    "startTime": started.get(&id).map(|t| time(*t)),
                    "cpu": cpu(&c.cpu),
                    "memory": memory(&c.memory),
                    "rootfs": rootfs,
                    "logs": logs,
                }))
            })
            .collect();
        let process = linux.process.as_ref().map_or(
            Value::Null,
            |p| json!({"process_count": number(&p.process_count)}),
        );
        pods.push(compact(json!({
            "podRef": {"name": name, "namespace": namespace, "uid": uid},
            "startTime": time(*created),
            "containers": containers,
            "cpu": cpu(&linux.cpu),
            "memory": memory(&linux.memory),
            "network": network(&linux.network),
            "ephemeral-storage": {"time": time(now), "usedBytes": ephemeral},
            "process_stats": process,
        })));
    }
    pods.sort_by_key(|p| {
        (
            p["podRef"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            p["podRef"]["name"].as_str().unwrap_or_default().to_string(),
        )
    });
    Ok(json!({
        "node": node_stats(node, root_dir, samples, image_fs, now),
        "pods": pods,
    }))
}

/// Bytes of the regular files under `dir` (log directories: small and shallow).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// `/metrics/resource`: the Summary's CPU and memory as upstream's Prometheus series.
pub fn resource_metrics(summary: &Value) -> String {
    let mut out = String::new();
    let millis = |t: &Value| {
        t.as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_millisecond())
    };
    let seconds = |ns: &Value| ns.as_u64().map(|n| n as f64 / 1e9);
    let labels = |pod: &Value, container: Option<&str>| {
        let r = &pod["podRef"];
        let (ns, name) = (
            r["namespace"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
        );
        match container {
            Some(c) => format!("{{container=\"{c}\",namespace=\"{ns}\",pod=\"{name}\"}}"),
            None => format!("{{namespace=\"{ns}\",pod=\"{name}\"}}"),
        }
    };
    let empty = Vec::new();
    let pods = summary["pods"].as_array().unwrap_or(&empty);
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64, i64)>| {
        out.push_str(&format!(
            "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}\n"
        ));
        for (labels, value, at) in samples {
            if at > 0 {
                out.push_str(&format!("{name}{labels} {value} {at}\n"));
            } else {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        }
    };
    let per_container = |f: &dyn Fn(&Value) -> Option<(f64, i64)>| -> Vec<(String, f64, i64)> {
        pods.iter()
            .flat_map(|p| {
                p["containers"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(move |c| {
                        let (v, at) = f(c)?;
                        Some((labels(p, c["name"].as_str()), v, at))
                    })
            })
            .collect()
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        per_container(&|c| {
            Some((
                seconds(&c["cpu"]["usageCoreNanoSeconds"])?,
                millis(&c["cpu"]["time"]),
            ))
        }),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        per_container(&|c| {
            Some((
                c["memory"]["workingSetBytes"].as_f64()?,
                millis(&c["memory"]["time"]),
            ))
        }),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        per_container(&|c| {
            let ms = millis(&c["startTime"]);
            (ms > 0).then(|| (ms as f64 / 1000.0, ms))
        }),
    );
    let node = &summary["node"];
    let node_samples = |v: Option<f64>, t: &Value| {
        v.map(|v| (String::new(), v, millis(t)))
            .into_iter()
            .collect()
    };
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        node_samples(
            seconds(&node["cpu"]["usageCoreNanoSeconds"]),
            &node["cpu"]["time"],
        ),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        node_samples(
            node["memory"]["workingSetBytes"].as_f64(),
            &node["memory"]["time"],
        ),
    );
    let per_pod = |f: &dyn Fn(&Value) -> Option<(f64, i64)>| -> Vec<(String, f64, i64)> {
        pods.iter()
            .filter_map(|p| {
                let (v, at) = f(p)?;
                Some((labels(p, None), v, at))
            })
            .collect()
    };
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        per_pod(&|p| {
            Some((
                seconds(&p["cpu"]["usageCoreNanoSeconds"])?,
                millis(&p["cpu"]["time"]),
            ))
        }),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        per_pod(&|p| {
            Some((
                p["memory"]["workingSetBytes"].as_f64()?,
                millis(&p["memory"]["time"]),
            ))
        }),
    );
    family(
        "resource_scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
        vec![(String::new(), 0.0, 0)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cpu_rate_needs_two_samples() {
        let samples = NodeSamples::default();
        assert_eq!(samples.rate(1_000_000_000, 10), None);
        assert_eq!(samples.rate(2_000_000_000, 500_000_010), Some(500_000_000));
    }

    #[test]
    fn resource_metrics_follow_the_summary() {
        let summary = json!({
            "node": {"cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 2_500_000_000u64},
                     "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 1024}},
            "pods": [{"podRef": {"name": "web", "namespace": "default", "uid": "u"},
                      "cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 1_000_000_000u64},
                      "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 2048},
                      "containers": [{"name": "app", "startTime": "2026-01-01T00:00:00Z",
                                      "cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 500_000_000u64},
                                      "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 512}}]}],
        });
        let text = resource_metrics(&summary);
        assert!(
            text.contains("node_cpu_usage_seconds_total 2.5 1767225600000\n"),
            "{text}"
        );
        assert!(text.contains("container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 0.5 1767225600000\n"), "{text}");
        assert!(text.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 2048 1767225600000\n"), "{text}");
        assert!(text.contains("container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1767225600 1767225600000\n"), "{text}");
        assert!(
            text.contains("# TYPE node_memory_working_set_bytes gauge\n"),
            "{text}"
        );
    }
}
