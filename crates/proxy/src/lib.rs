//! The service proxy (`skiff proxy`, upstream's kube-proxy): watches Services and
//! EndpointSlices and programs the kernel so a Service's virtual addresses (ClusterIP,
//! node ports, external and load balancer IPs) reach its ready endpoints. Rules live in
//! an nftables table of their own (`nft.rs`); a change to one Service rewrites only that
//! Service's part of it, and the whole table is replaced at start and every hour.
//! `iptables.rs` writes the same rules as upstream's iptables mode, for `--proxy-mode
//! iptables`.
//! Rules stay when the proxy stops (traffic keeps flowing across restarts);
//! `skiff proxy --cleanup` removes them.

pub mod conntrack;
pub mod iptables;
pub mod model;
pub mod nft;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::io::AsyncWriteExt;

use crate::model::{PortKey, ServicePort};
use crate::nft::{Rendered, Settings};

/// The table upstream's nftables mode would call `kube-proxy`.
pub const DEFAULT_TABLE: &str = "skiff-proxy";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{command} refused the rules: {message}")]
    Rules {
        command: &'static str,
        message: String,
    },
    #[error("running {command}: {source}")]
    Command {
        command: &'static str,
        source: std::io::Error,
    },
}

/// How the kernel is programmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// An nftables table of the proxy's own (the default, as upstream recommends).
    #[default]
    Nftables,
    /// iptables chains (`KUBE-SERVICES`, ...) through `iptables-restore`.
    Iptables,
}

/// The proxy's settings (`skiff proxy`'s flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// This node's name: `Local` traffic policies use its endpoints only.
    pub node_name: String,
    /// The pods' address range: service traffic from elsewhere is masqueraded.
    pub cluster_cidr: Option<String>,
    /// The nftables table the rules go in.
    pub table: String,
    /// The least time between two syncs (changes in between are batched).
    pub min_sync_period: Duration,
    /// How often the whole table is rewritten, whatever changed.
    pub full_sync_period: Duration,
}

impl Config {
    pub fn new(node_name: impl Into<String>) -> Config {
        Config {
            mode: Mode::Nftables,
            node_name: node_name.into(),
            cluster_cidr: None,
            table: DEFAULT_TABLE.into(),
            min_sync_period: Duration::from_millis(100),
            full_sync_period: Duration::from_secs(3600),
        }
    }
}

/// A Service's namespace and name.
type ServiceName = (String, String);

/// What a sync is to look at: every Service, or only those named.
#[derive(Debug, Default)]
pub struct Dirty {
    pub all: bool,
    pub services: BTreeSet<(String, String)>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty()
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy)]
pub struct SyncStats {
    pub full: bool,
    /// Service ports looked at.
    pub ports: usize,
    /// Bytes of nft commands sent (0: nothing changed, nft not run).
    pub script_bytes: usize,
    pub elapsed: Duration,
}

/// The rules as applied, and how to change them.
pub struct Proxier {
    mode: Mode,
    settings: Settings,
    node: String,
    /// Each applied Service port with its model (for conntrack clean-up) and rules.
    applied: BTreeMap<PortKey, (ServicePort, Rendered)>,
    /// The ports applied for each Service.
    ports_of: HashMap<(String, String), Vec<PortKey>>,
    /// Replace the whole table at the next sync (at start, and after a failure).
    needs_full: bool,
}

impl Proxier {
    pub fn new(config: &Config) -> Proxier {
        Proxier {
            mode: config.mode,
            settings: Settings {
                table: config.table.clone(),
                cluster_cidr: config.cluster_cidr.clone(),
            },
            node: config.node_name.clone(),
            applied: BTreeMap::new(),
            ports_of: HashMap::new(),
            needs_full: true,
        }
    }

    /// Brings the rules of the `dirty` Services (all of them after a failure or at
    /// start) in line with `services` and `slices`, the current objects.
    pub async fn sync(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        dirty: &Dirty,
    ) -> Result<SyncStats, Error> {
        let started = Instant::now();
        let full = self.needs_full || dirty.all;
        let by_name: HashMap<(String, String), &Service> = services
            .iter()
            .map(|s| (service_name(&s.metadata), s.as_ref()))
            .collect();
        let names: BTreeSet<(String, String)> = if full {
            by_name
                .keys()
                .chain(self.ports_of.keys())
                .cloned()
                .collect()
        } else {
            dirty.services.clone()
        };
        let grouped = model::slices_by_service(
            slices
                .iter()
                .map(|s| s.as_ref())
                .filter(|s| full || names.contains(&slice_service(s))),
        );
        let mut script = String::new();
        let mut next: Vec<(ServiceName, Vec<(ServicePort, Rendered)>)> = Vec::new();
        let empty = Rendered::default();
        let mut ports = 0;
        for name in &names {
            let slices = grouped.get(name).map(Vec::as_slice).unwrap_or_default();
            let rendered: Vec<(ServicePort, Rendered)> = by_name
                .get(name)
                .map(|s| model::service_ports(s, slices, &self.node))
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let r = match self.mode {
                        Mode::Nftables => nft::render(&p, &self.settings),
                        Mode::Iptables => iptables::render(&p, &self.settings),
                    };
                    (p, r)
                })
                .collect();
            ports += rendered.len();
            if !full && self.mode == Mode::Nftables {
                let old_keys = self.ports_of.get(name).cloned().unwrap_or_default();
                for (port, new) in &rendered {
                    let old = self
                        .applied
                        .get(&port.key)
                        .map(|(_, r)| r)
                        .unwrap_or(&empty);
                    nft::write_diff(&mut script, &self.settings.table, old, new);
                }
                for key in old_keys {
                    if !rendered.iter().any(|(p, _)| p.key == key)
                        && let Some((_, old)) = self.applied.get(&key)
                    {
                        nft::write_diff(&mut script, &self.settings.table, old, &empty);
                    }
                }
            }
            next.push((name.clone(), rendered));
        }
        if full && self.mode == Mode::Nftables {
            let all: BTreeMap<&PortKey, &Rendered> = next
                .iter()
                .flat_map(|(_, ports)| ports.iter().map(|(p, r)| (&p.key, r)))
                .collect();
            script = nft::skeleton(&self.settings);
            for rendered in all.values() {
                nft::write_diff(&mut script, &self.settings.table, &empty, rendered);
            }
        }
        let applied = match self.mode {
            Mode::Nftables if script.is_empty() => Ok(()),
            Mode::Nftables => apply(&script).await,
            Mode::Iptables => match self.iptables_script(&next, full).await {
                Ok(Some(text)) => {
                    script = text;
                    iptables::apply(&script).await
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = applied {
            self.needs_full = true;
            return Err(e);
        }
        // What changed for UDP flows conntrack remembers.
        let mut stale = Vec::new();
        for (name, rendered) in &next {
            let old_keys = self.ports_of.remove(name).unwrap_or_default();
            let mut old: BTreeMap<PortKey, (ServicePort, Rendered)> = old_keys
                .into_iter()
                .filter_map(|k| self.applied.remove(&k).map(|v| (k, v)))
                .collect();
            for (port, _) in rendered {
                stale.extend(conntrack::stale_flows(
                    old.get(&port.key).map(|(p, _)| p),
                    Some(port),
                ));
            }
            for (key, (port, _)) in &old {
                if !rendered.iter().any(|(p, _)| &p.key == key) {
                    stale.extend(conntrack::stale_flows(Some(port), None));
                }
            }
            old.clear();
            if !rendered.is_empty() {
                self.ports_of.insert(
                    name.clone(),
                    rendered.iter().map(|(p, _)| p.key.clone()).collect(),
                );
            }
            for (port, r) in rendered.iter().cloned() {
                self.applied.insert(port.key.clone(), (port, r));
            }
        }
        if full {
            // Services gone while the table was replaced have nothing left.
            self.ports_of.retain(|name, _| by_name.contains_key(name));
        }
        self.needs_full = false;
        if !stale.is_empty() {
            tokio::spawn(conntrack::clear(stale));
        }
        Ok(SyncStats {
            full,
            ports,
            script_bytes: script.len(),
            elapsed: started.elapsed(),
        })
    }
}

impl Proxier {
    /// The iptables script for a sync whose new renderings are `next` (None: nothing
    /// changed). The dispatch chains are written whole from every Service port.
    async fn iptables_script(
        &self,
        next: &[(ServiceName, Vec<(ServicePort, Rendered)>)],
        full: bool,
    ) -> Result<Option<String>, Error> {
        let empty = Rendered::default();
        let mut changes: Vec<(&Rendered, &Rendered)> = Vec::new();
        for (name, ports) in next {
            for (port, new) in ports {
                let old = self
                    .applied
                    .get(&port.key)
                    .map(|(_, r)| r)
                    .unwrap_or(&empty);
                if full || old != new {
                    changes.push((old, new));
                }
            }
            for key in self.ports_of.get(name).into_iter().flatten() {
                if !ports.iter().any(|(p, _)| &p.key == key)
                    && let Some((_, old)) = self.applied.get(key)
                {
                    changes.push((old, &empty));
                }
            }
        }
        if !full && changes.is_empty() {
            return Ok(None);
        }
        let next_names: BTreeSet<&ServiceName> = next.iter().map(|(n, _)| n).collect();
        let mut all: Vec<&Rendered> = next
            .iter()
            .flat_map(|(_, ports)| ports.iter().map(|(_, r)| r))
            .collect();
        if !full {
            for (name, keys) in &self.ports_of {
                if next_names.contains(name) {
                    continue;
                }
                all.extend(
                    keys.iter()
                        .filter_map(|k| self.applied.get(k).map(|(_, r)| r)),
                );
            }
        }
        let stale = if full {
            let wanted: BTreeSet<&String> = all.iter().flat_map(|r| r.chains.keys()).collect();
            iptables::existing_chains()
                .await?
                .into_iter()
                .filter(|c| !wanted.contains(c))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Some(iptables::script(&all, &changes, &stale, full)))
    }
}

fn service_name(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn slice_service(slice: &EndpointSlice) -> (String, String) {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(model::SERVICE_NAME_LABEL))
        .cloned()
        .unwrap_or_default();
    (
        slice.metadata.namespace.clone().unwrap_or_default(),
        service,
    )
}

/// Runs `nft -f -` on `script` (one atomic transaction).
pub async fn apply(script: &str) -> Result<(), Error> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| Error::Command {
            command: "nft",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|source| Error::Command {
                command: "nft",
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Command {
            command: "nft",
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // nft names the failing line; keep the message readable.
        let message: String = stderr.lines().take(6).collect::<Vec<_>>().join("\n");
        Err(Error::Rules {
            command: "nft",
            message,
        })
    }
}

/// Removes every rule the proxy made in `mode`, or in either (`skiff proxy
/// --cleanup`).
pub async fn cleanup(table: &str, mode: Option<Mode>) -> Result<(), Error> {
    if mode != Some(Mode::Iptables) {
        apply(&nft::cleanup(table)).await?;
    }
    if mode != Some(Mode::Nftables) {
        iptables::cleanup().await?;
    }
    Ok(())
}

/// The kernel settings Service traffic needs: forwarding, bridged traffic through the
/// packet filter (so replies between pods on one bridge are un-NATed), and routing of
/// DNATed loopback traffic (node ports on 127.0.0.1).
fn kernel_settings() {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ("/proc/sys/net/ipv4/conf/all/route_localnet", "1"),
    ] {
        if let Err(e) = std::fs::write(path, value) {
            tracing::warn!(path, error = %e, "setting a kernel parameter Service traffic needs");
        }
    }
}

/// Runs the proxy until the future is dropped.
pub async fn run(client: kube::Client, config: Config) -> Result<(), Error> {
    kernel_settings();
    let dirty = Arc::new(Mutex::new(Dirty {
        all: true,
        services: BTreeSet::new(),
    }));
    let wake = Arc::new(tokio::sync::Notify::new());
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let service_events = watch(
        kube::Api::all(client.clone()),
        services_writer,
        dirty.clone(),
        wake.clone(),
        |s: &Service| service_name(&s.metadata),
    );
    let slice_events = watch(
        kube::Api::all(client),
        slices_writer,
        dirty.clone(),
        wake.clone(),
        slice_service,
    );
    let sync = sync_loop(config, services, slices, dirty, wake);
    tokio::select! {
        () = service_events => {}
        () = slice_events => {}
        result = sync => result?,
    }
    Ok(())
}

/// Keeps a store of `api`'s objects, marking the Service each change concerns.
async fn watch<K>(
    api: kube::Api<K>,
    writer: reflector::store::Writer<K>,
    dirty: Arc<Mutex<Dirty>>,
    wake: Arc<tokio::sync::Notify>,
    service_of: fn(&K) -> (String, String),
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    let events = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    events
        .for_each(|event| {
            let mark = |d: &mut Dirty| match &event {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    d.services.insert(service_of(o));
                    true
                }
                // A new list may miss deletions: look at everything.
                Ok(watcher::Event::InitDone) => {
                    d.all = true;
                    true
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "proxy watch");
                    false
                }
            };
            let marked = match dirty.lock() {
                Ok(mut d) => mark(&mut d),
                Err(poisoned) => mark(&mut poisoned.into_inner()),
            };
            if marked {
                wake.notify_one();
            }
            futures::future::ready(())
        })
        .await;
}

async fn sync_loop(
    config: Config,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    dirty: Arc<Mutex<Dirty>>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<(), Error> {
    // Nothing is programmed from a half-loaded cache (it would reject traffic to
    // Services whose endpoints are not listed yet).
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    let mut proxier = Proxier::new(&config);
    let mut last_sync: Option<Instant> = None;
    let mut next_full = tokio::time::Instant::now() + config.full_sync_period;
    let mut failures = 0u32;
    loop {
        let pending = !lock(&dirty).is_empty();
        if !pending {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep_until(next_full) => lock(&dirty).all = true,
            }
        }
        if let Some(last) = last_sync {
            let wait = config.min_sync_period.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let work = std::mem::take(&mut *lock(&dirty));
        if work.is_empty() {
            continue;
        }
        last_sync = Some(Instant::now());
        if work.all {
            next_full = tokio::time::Instant::now() + config.full_sync_period;
        }
        match proxier
            .sync(&services.state(), &slices.state(), &work)
            .await
        {
            Ok(stats) => {
                failures = 0;
                if stats.script_bytes > 0 {
                    tracing::info!(
                        full = stats.full,
                        ports = stats.ports,
                        bytes = stats.script_bytes,
                        ms = stats.elapsed.as_millis() as u64,
                        "synced Service rules"
                    );
                }
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "syncing Service rules (the whole table is rewritten next time)");
                lock(&dirty).all = true;
                // Retry with a back-off: 1 s doubling to a minute.
                let delay = Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn lock(dirty: &Mutex<Dirty>) -> std::sync::MutexGuard<'_, Dirty> {
    dirty.lock().unwrap_or_else(|e| e.into_inner())
}
