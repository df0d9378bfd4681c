//! `skiff bench proxy` and `skiff bench dns`: the data path's costs.
//!
//! The proxy bench re-runs itself in a network namespace of its own (`unshare -n`), so
//! its thousands of Services never touch the host's packet filter: it programs N
//! Services with E endpoints each through the real proxier and `nft`, times a full
//! sync and one-Service changes, then times TCP requests to an endpoint directly and
//! through a ClusterIP (DNAT on the 10,000-Service table).
//!
//! The DNS bench serves records for N Services on a loopback port and sends queries
//! from concurrent clients (closed loop): queries per second and latency tails.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::stats::{Samples, ms};

#[derive(clap::Args)]
pub struct ProxyBench {
    /// Service counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// One-Service changes timed per count.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// TCP requests timed each way (direct and through the proxy).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Already in a private network namespace (set by the bench itself).
    #[arg(long, hide = true)]
    isolated: bool,
}

fn address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(n)
}

/// Service `i` (ClusterIP 10.96.0.0/12 + i + 1) and its slice of `endpoints`
/// addresses from 10.244.0.0/16; `generation` shifts the endpoints (a change).
fn service(i: usize, endpoints: usize, generation: u32) -> (Arc<Service>, Arc<EndpointSlice>) {
    let cluster_ip = address(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
    let name = format!("svc-{i}");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": name},
        "spec": {"clusterIP": cluster_ip.to_string(), "clusterIPs": [cluster_ip.to_string()],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))
    .unwrap_or_default();
    let base = u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i * endpoints) as u32 + generation;
    let addresses: Vec<serde_json::Value> = (0..endpoints)
        .map(|e| {
            json!({"addresses": [address(base + e as u32).to_string()],
                   "conditions": {"ready": true}})
        })
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("{name}-abc"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses,
    }))
    .unwrap_or_default();
    (Arc::new(service), Arc::new(slice))
}

impl ProxyBench {
    pub async fn run(self) -> Result<()> {
        if !self.isolated {
            // Again, in a network namespace of its own.
            let exe = std::env::current_exe().context("the skiff binary")?;
            let mut args: Vec<String> = std::env::args().skip(1).collect();
            args.push("--isolated".into());
            let status = std::process::Command::new("unshare")
                .arg("--net")
                .arg("--")
                .arg(exe)
                .args(args)
                .status()
                .context("running unshare (util-linux)")?;
            anyhow::ensure!(status.success(), "the bench failed");
            return Ok(());
        }
        run_ip(&["link", "set", "lo", "up"])?;
        println!(
            "| Services x endpoints | full sync (median of 3) | one Service changed (median) | p99 | script bytes (full / one) |"
        );
        println!("|---|---|---|---|---|");
        let mut last = None;
        for &count in &self.services {
            let config = skiff_proxy::Config::new("bench-node");
            let mut proxier = skiff_proxy::Proxier::new(&config);
            let mut services = Vec::with_capacity(count);
            let mut slices = Vec::with_capacity(count);
            for i in 0..count {
                let (s, e) = service(i, self.endpoints, 0);
                services.push(s);
                slices.push(e);
            }
            let mut full = Samples::default();
            let mut full_bytes = 0;
            for _ in 0..3 {
                let dirty = skiff_proxy::Dirty {
                    all: true,
                    services: BTreeSet::new(),
                };
                let stats = proxier.sync(&services, &slices, &dirty).await?;
                full.push(stats.elapsed);
                full_bytes = stats.script_bytes;
            }
            let mut one = Samples::default();
            let mut one_bytes = 0;
            let bar = super::store::progress(self.changes, &format!("{count} Services: changes"));
            for n in 0..self.changes {
                let i = (n * 7919) % count;
                let (_, changed) = service(i, self.endpoints, 1 + n as u32);
                slices[i] = changed;
                let dirty = skiff_proxy::Dirty {
                    all: false,
                    services: [("bench".to_string(), format!("svc-{i}"))].into(),
                };
                let stats = proxier.sync(&services, &slices, &dirty).await?;
                one.push(stats.elapsed);
                one_bytes = stats.script_bytes;
                bar.inc(1);
            }
            bar.finish_and_clear();
            println!(
                "| {count} x {} | {} | {} | {} | {full_bytes} / {one_bytes} |",
                self.endpoints,
                ms(full.percentile(50.0)),
                ms(one.percentile(50.0)),
                ms(one.percentile(99.0)),
            );
            last = Some((services, slices));
        }
        if let Some((services, slices)) = last
            && self.requests > 0
        {
            self.latency(&services, &slices)?;
        }
        Ok(())
    }

    /// TCP request latency to endpoint 0 of Service 0, directly and through its
    /// ClusterIP, with every Service's rules in place. The Service is narrowed to that
    /// one endpoint, which this namespace owns on its loopback.
    fn latency(&self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Result<()> {
        let cluster_ip = services
            .first()
            .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
            .context("no Service")?;
        let endpoint = slices
            .first()
            .and_then(|s| s.endpoints.first()?.addresses.first().cloned())
            .context("no endpoint")?;
        run_ip(&["addr", "add", &format!("{endpoint}/32"), "dev", "lo"])?;
        // Somewhere for the service range to go before DNAT (a node has its default
        // route; this namespace has nothing).
        run_ip(&["route", "add", "10.96.0.0/12", "dev", "lo"])?;
        let listener = std::net::TcpListener::bind((endpoint.as_str(), 8080))?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buf = [0u8; 256];
                if stream.read(&mut buf).is_ok() {
                    let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nok");
                }
            }
        });
        let mut one = (*slices[0]).clone();
        one.endpoints.truncate(1);
        let mut slices = slices.to_vec();
        slices[0] = Arc::new(one);
        let runtime = tokio::runtime::Handle::current();
        let mut proxier = skiff_proxy::Proxier::new(&skiff_proxy::Config::new("bench-node"));
        let all = skiff_proxy::Dirty {
            all: true,
            services: BTreeSet::new(),
        };
        tokio::task::block_in_place(|| runtime.block_on(proxier.sync(services, &slices, &all)))?;
        let time = |target: &str| -> Result<Samples> {
            let addr: SocketAddr = target.parse()?;
            let mut samples = Samples::with_capacity(self.requests);
            for _ in 0..self.requests {
                let started = Instant::now();
                let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                tcp.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut response = Vec::new();
                tcp.read_to_end(&mut response)?;
                anyhow::ensure!(response.ends_with(b"ok"), "no answer from {target}");
                samples.push(started.elapsed());
            }
            Ok(samples)
        };
        let mut direct = tokio::task::block_in_place(|| time(&format!("{endpoint}:8080")))?;
        let mut proxied = tokio::task::block_in_place(|| time(&format!("{cluster_ip}:80")))?;
        let ratio = proxied.percentile(50.0).as_secs_f64() / direct.percentile(50.0).as_secs_f64();
        println!();
        println!(
            "| TCP request (connect, request, response; {} each, {} Services) | median | p99 |",
            self.requests,
            services.len()
        );
        println!("|---|---|---|");
        println!(
            "| direct to the endpoint | {} | {} |",
            ms(direct.percentile(50.0)),
            ms(direct.percentile(99.0))
        );
        println!(
            "| through the ClusterIP ({ratio:.2}x) | {} | {} |",
            ms(proxied.percentile(50.0)),
            ms(proxied.percentile(99.0))
        );
        Ok(())
    }
}

fn run_ip(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    anyhow::ensure!(status.success(), "ip {args:?} failed");
    Ok(())
}

#[derive(clap::Args)]
pub struct DnsBench {
    /// Services with records.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Queries to send.
    #[arg(long, default_value_t = 200_000)]
    queries: usize,
    /// Concurrent clients (each waits for its answer before the next query).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Also load the same server with Debian's `dnsperf` (the same names, `--clients`
    /// queries outstanding).
    #[arg(long)]
    dnsperf: bool,
}

impl DnsBench {
    pub async fn run(self) -> Result<()> {
        let mut records = skiff_dns::records::Records::new("cluster.local", 5)?;
        for i in 0..self.services {
            let (service, slice) = service(i, 1, 0);
            records.set("bench", &format!("svc-{i}"), Some(&service), &[&slice]);
        }
        let resolver = Arc::new(skiff_dns::server::Resolver {
            records: Arc::new(std::sync::RwLock::new(records)),
            upstreams: Vec::new(),
        });
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let server = socket.local_addr()?;
        let serving = tokio::spawn(skiff_dns::server::serve_udp(socket, resolver));
        let per_client = self.queries / self.clients.max(1);
        let bar = super::store::progress(per_client * self.clients, "DNS queries");
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client in 0..self.clients {
            let services = self.services;
            let bar = bar.clone();
            tasks.push(tokio::spawn(async move {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
                socket.connect(server).await?;
                let mut samples = Samples::with_capacity(per_client);
                let mut buf = vec![0u8; 1500];
                for n in 0..per_client {
                    // Nine in ten names exist; the rest are NXDOMAIN (search-path misses).
                    let i = (client * per_client + n) * 7919 % services.max(1);
                    let name = if n % 10 == 9 {
                        format!("svc-{i}.bench.svc.cluster.local.bench.svc.cluster.local.")
                    } else {
                        format!("svc-{i}.bench.svc.cluster.local.")
                    };
                    let query = dns_query(n as u16, &name);
                    let sent = Instant::now();
                    socket.send(&query).await?;
                    let got =
                        tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await;
                    anyhow::ensure!(matches!(got, Ok(Ok(n)) if n > 12), "no answer for {name}");
                    samples.push(sent.elapsed());
                    bar.inc(1);
                }
                Ok::<Samples, anyhow::Error>(samples)
            }));
        }
        let mut all = Samples::default();
        for task in tasks {
            all.extend(task.await??);
        }
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        println!(
            "| DNS ({} Services, {} clients, 10% NXDOMAIN) | queries/s | median | p99 |",
            self.services, self.clients
        );
        println!("|---|---|---|---|");
        println!(
            "| {} queries, in-process clients | {:.0} | {} | {} |",
            all.len(),
            all.len() as f64 / elapsed.as_secs_f64(),
            ms(all.percentile(50.0)),
            ms(all.percentile(99.0))
        );
        if self.dnsperf {
            let (rate, mut samples) = self.dnsperf(server).await?;
            println!(
                "| {} queries, dnsperf | {rate:.0} | {} | {} |",
                samples.len(),
                ms(samples.percentile(50.0)),
                ms(samples.percentile(99.0))
            );
        }
        serving.abort();
        Ok(())
    }

    /// Runs dnsperf once through a file of the same names: its queries/s and the
    /// latencies it reports per query (`-v`).
    async fn dnsperf(&self, server: std::net::SocketAddr) -> Result<(f64, Samples)> {
        let mut names = String::new();
        for n in 0..self.queries {
            let i = n * 7919 % self.services.max(1);
            if n % 10 == 9 {
                names.push_str(&format!(
                    "svc-{i}.bench.svc.cluster.local.bench.svc.cluster.local A\n"
                ));
            } else {
                names.push_str(&format!("svc-{i}.bench.svc.cluster.local A\n"));
            }
        }
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), names)?;
        let out = tokio::process::Command::new("dnsperf")
            .args([
                "-s",
                &server.ip().to_string(),
                "-p",
                &server.port().to_string(),
            ])
            .arg("-d")
            .arg(file.path())
            .args(["-n", "1", "-q", &self.clients.to_string(), "-v"])
            .output()
            .await
            .context("running dnsperf (Debian's dnsperf package)")?;
        anyhow::ensure!(
            out.status.success(),
            "dnsperf: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut samples = Samples::with_capacity(self.queries);
        // `> NOERROR svc-1.bench.svc.cluster.local A 0.000123`: the latency last.
        for line in text.lines().filter(|l| l.starts_with("> ")) {
            if let Some(seconds) = line
                .split_whitespace()
                .last()
                .and_then(|s| s.parse::<f64>().ok())
            {
                samples.push(Duration::from_secs_f64(seconds));
            }
        }
        let rate = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Queries per second:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_default();
        anyhow::ensure!(samples.len() > 0, "dnsperf reported no queries:\n{text}");
        Ok((rate, samples))
    }
}

/// A standard A query for `name` (absolute, dot-terminated).
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}
