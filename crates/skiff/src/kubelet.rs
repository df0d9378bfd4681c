//! `skiff kubelet`: the node agent against any API server, driving a CRI runtime over
//! its socket (skiff's own `skiff runtime`, or containerd).

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args, Clone)]
pub struct KubeletArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The CRI runtime's socket.
    #[arg(long, default_value = "/run/skiff/cri.sock")]
    pub cri_socket: PathBuf,
    /// Where container logs go (`<ns>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// The node's InternalIP (default: the address of the default route's interface).
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// Pods the node accepts.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Cluster DNS server addresses for ClusterFirst pods (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Extra node labels, `key=value,...`.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Where pods' volumes live.
    #[arg(long, default_value = "/var/lib/skiff/kubelet")]
    pub root_dir: PathBuf,
    /// The kubelet API's port (0: a free one, reported in the Node's status).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// PEM CA bundle the API's clients must present a certificate from (the cluster
    /// CA); without it the kubelet API is not served.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Seconds the node's Lease lasts; the kubelet renews it every quarter of that.
    #[arg(long, default_value_t = 40)]
    pub node_lease_duration_seconds: i32,
    /// Seconds between node status computations (posted when something changed, and at
    /// least every five minutes).
    #[arg(long, default_value_t = 10)]
    pub node_status_update_frequency: u64,
    /// A directory of static pod manifests (one Pod per YAML or JSON file) the kubelet
    /// runs without the scheduler, shown in the API as mirror pods.
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// Seconds between reads of the static pod directory.
    #[arg(long, default_value_t = 20)]
    pub file_check_frequency: u64,
    /// Hard eviction thresholds, `signal<quantity|percent%` comma-separated (signals:
    /// memory.available, nodefs.available, nodefs.inodesFree, imagefs.available; an
    /// empty value turns eviction off).
    #[arg(
        long,
        default_value = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%"
    )]
    pub eviction_hard: String,
    /// Seconds a pressure condition stays after its threshold clears.
    #[arg(long, default_value_t = 300)]
    pub eviction_pressure_transition_period: u64,
    /// Percent of the image filesystem in use from which unused images are removed
    /// (100: never).
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,
    /// Percent of the image filesystem in use image collection frees down to.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
    /// How long an unused image is kept at least (a Go duration: 2m, 90s, 1h30m).
    #[arg(long, default_value = "2m", value_parser = parse_go_duration)]
    pub minimum_image_ttl_duration: std::time::Duration,
    /// How often the image filesystem is checked for collection (upstream: fixed at
    /// 5 minutes).
    #[arg(long, default_value = "5m", value_parser = parse_go_duration)]
    pub image_gc_period: std::time::Duration,
}

/// A Go duration (`1h30m`, `2m0s`, `90s`, `500ms`).
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 2m, 90s, 1h30m)");
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn config(args: &KubeletArgs) -> Result<skiff_kubelet::Config> {
    let mut node_labels = std::collections::BTreeMap::new();
    for label in &args.node_labels {
        let (key, value) = label
            .split_once('=')
            .with_context(|| format!("node label {label:?} is not key=value"))?;
        node_labels.insert(key.to_string(), value.to_string());
    }
    Ok(skiff_kubelet::Config {
        node_name: args.node_name.clone().unwrap_or_else(host_name),
        cri_socket: args.cri_socket.clone(),
        pod_log_dir: args.pod_log_dir.clone(),
        node_ip: args.node_ip,
        max_pods: args.max_pods,
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        node_labels,
        root_dir: args.root_dir.clone(),
        node_lease_duration_seconds: args.node_lease_duration_seconds.max(4),
        static_pod_path: args.pod_manifest_path.clone(),
        eviction_hard: skiff_kubelet::eviction::parse(&args.eviction_hard)
            .map_err(anyhow::Error::msg)
            .context("--eviction-hard")?,
        eviction_pressure_transition_period: std::time::Duration::from_secs(
            args.eviction_pressure_transition_period,
        ),
        file_check_frequency: std::time::Duration::from_secs(args.file_check_frequency.max(1)),
        image_gc: image_policy(
            args.image_gc_high_threshold,
            args.image_gc_low_threshold,
            args.minimum_image_ttl_duration,
            args.image_gc_period,
        )?,
        node_status_update_frequency: std::time::Duration::from_secs(
            args.node_status_update_frequency.max(1),
        ),
        api: args
            .client_ca_file
            .clone()
            .map(|client_ca| skiff_kubelet::ApiConfig {
                address: std::net::SocketAddr::new(
                    std::net::Ipv4Addr::UNSPECIFIED.into(),
                    args.kubelet_port,
                ),
                client_ca,
            }),
        ..Default::default()
    })
}

/// The image collection policy the flags give (upstream's checks).
pub fn image_policy(
    high: u8,
    low: u8,
    minimum_age: std::time::Duration,
    period: std::time::Duration,
) -> Result<skiff_kubelet::ImagePolicy> {
    if low > high {
        anyhow::bail!(
            "--image-gc-low-threshold ({low}) must not be above --image-gc-high-threshold ({high})"
        );
    }
    Ok(skiff_kubelet::ImagePolicy {
        high_threshold: high,
        low_threshold: low,
        minimum_age,
        period: period.max(std::time::Duration::from_secs(1)),
    })
}

pub async fn run(args: KubeletArgs) -> Result<()> {
    let client = crate::scheduler::client(&args.kubeconfig, "kubelet").await?;
    let config = config(&args)?;
    skiff_kubelet::run(client, config, crate::server::shutdown_signal_quiet())
        .await
        .context("kubelet")
}

#[cfg(test)]
mod tests {
    #[test]
    fn go_durations_parse() {
        let d = super::parse_go_duration;
        assert_eq!(d("2m0s"), Ok(std::time::Duration::from_secs(120)));
        assert_eq!(d("1h30m"), Ok(std::time::Duration::from_secs(5400)));
        assert_eq!(d("0"), Ok(std::time::Duration::ZERO));
        assert_eq!(d("1.5s"), Ok(std::time::Duration::from_millis(1500)));
        assert!(d("10").is_err());
        assert!(d("").is_err());
        assert!(d("5x").is_err());
    }
}
