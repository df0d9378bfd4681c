//! `skiff bench ...`: load generators that print medians and tails, for
//! docs/benchmarks.md. Performance targets live here, never in timed tests.

mod api;
mod cni;
mod cri;
mod network;
mod pods;
mod scheduler;
mod stats;
mod store;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// The datastore: the embedded backend and etcd, side by side.
    Store(store::StoreBench),
    /// Any Kubernetes API server (or a private `skiff server` with --spawn).
    Api(api::ApiBench),
    /// Scheduling throughput with fake nodes.
    Scheduler(scheduler::SchedulerBench),
    /// The CRI pod cycle against container runtimes (skiff's, containerd).
    Cri(cri::CriBench),
    /// Pod startup latency through API server, scheduler, kubelet and runtime.
    Pods(pods::PodsBench),
    /// Service rule syncs (nftables) and request latency through a ClusterIP.
    Proxy(network::ProxyBench),
    /// Cluster DNS queries per second and latency.
    Dns(network::DnsBench),
    /// Connecting pods: skiff's CNI plugin against Debian's.
    Cni(cni::CniBench),
}

impl Bench {
    pub async fn run(self) -> Result<()> {
        match self {
            Bench::Store(bench) => bench.run().await,
            Bench::Api(bench) => bench.run().await,
            Bench::Scheduler(bench) => bench.run().await,
            Bench::Cri(bench) => bench.run().await,
            Bench::Pods(bench) => bench.run().await,
            Bench::Proxy(bench) => bench.run().await,
            Bench::Dns(bench) => bench.run().await,
            Bench::Cni(bench) => bench.run().await,
        }
    }
}
