//! Cluster DNS (`skiff dns`, upstream's CoreDNS with its `kubernetes` plugin):
//! Kubernetes' DNS-based service discovery answered from memory (`records.rs`, kept
//! current by watches of Services and EndpointSlices), everything else forwarded to the
//! host's resolvers (`server.rs`). `publish` makes the `kube-system/kube-dns` Service
//! that gives it the cluster's well-known address.

pub mod publish;
pub mod records;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;

use crate::records::{Records, SERVICE_NAME_LABEL};
use crate::server::Resolver;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the cluster domain {domain:?}: {message}")]
    Domain { domain: String, message: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the watches ended before the first list")]
    NotSynced,
}

/// The DNS server's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Where to answer, UDP and TCP (port 0: a free one, reported when ready).
    pub listen: SocketAddr,
    /// Resolvers for every other name.
    pub upstreams: Vec<SocketAddr>,
    /// Seconds answers may be cached (CoreDNS's `ttl`, 5 by default).
    pub ttl: u32,
}

type Key = (String, String);

/// One kind's objects, by the Service they concern, then by name.
type Grouped<K> = HashMap<Key, HashMap<String, K>>;

/// The watched objects records are made from.
#[derive(Default)]
struct Objects {
    services: Grouped<Service>,
    slices: Grouped<EndpointSlice>,
}

impl Objects {
    /// Rebuilds the records of Service `key`.
    fn refresh(&self, records: &RwLock<Records>, key: &Key) {
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .map(|s| s.values().collect())
            .unwrap_or_default();
        let service = self.services.get(key).and_then(|s| s.values().next());
        let mut records = records.write().unwrap_or_else(|e| e.into_inner());
        records.set(&key.0, &key.1, service, &slices);
    }
}

/// A Service: its own key, its name.
fn service_place(service: &Service) -> Option<(Key, String)> {
    let name = service.metadata.name.clone().unwrap_or_default();
    Some((
        (
            service.metadata.namespace.clone().unwrap_or_default(),
            name.clone(),
        ),
        name,
    ))
}

/// A slice: its Service's key (from its label), its own name.
fn slice_place(slice: &EndpointSlice) -> Option<(Key, String)> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        (
            slice.metadata.namespace.clone().unwrap_or_default(),
            service.clone(),
        ),
        slice.metadata.name.clone().unwrap_or_default(),
    ))
}

/// Runs the DNS server until dropped; `ready` gets the address it answers on once the
/// first lists are in (before that, queries wait rather than get wrong negatives).
pub async fn run(
    client: kube::Client,
    config: Config,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), Error> {
    let records = Records::new(&config.domain, config.ttl).map_err(|e| Error::Domain {
        domain: config.domain.clone(),
        message: e.to_string(),
    })?;
    let records = Arc::new(RwLock::new(records));
    let udp = tokio::net::UdpSocket::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = udp.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let objects = Arc::new(std::sync::Mutex::new(Objects::default()));
    let (services_synced, services_ready) = tokio::sync::oneshot::channel();
    let (slices_synced, slices_ready) = tokio::sync::oneshot::channel();
    let services = watch(
        kube::Api::<Service>::all(client.clone()),
        Watched {
            objects: objects.clone(),
            records: records.clone(),
            place: service_place,
            slot: |o| &mut o.services,
        },
        services_synced,
    );
    let slices = watch(
        kube::Api::<EndpointSlice>::all(client),
        Watched {
            objects,
            records: records.clone(),
            place: slice_place,
            slot: |o| &mut o.slices,
        },
        slices_synced,
    );
    let upstreams: Vec<SocketAddr> = config
        .upstreams
        .iter()
        .copied()
        .filter(|u| *u != addr)
        .collect();
    let resolver = Arc::new(Resolver { records, upstreams });
    let serve = async {
        if services_ready.await.is_err() || slices_ready.await.is_err() {
            return Err(Error::NotSynced);
        }
        tracing::info!(%addr, domain = %config.domain, upstreams = ?resolver.upstreams, "cluster DNS answering");
        if let Some(ready) = ready {
            let _ = ready.send(addr);
        }
        tokio::join!(
            server::serve_udp(udp, resolver.clone()),
            server::serve_tcp(tcp, resolver.clone())
        );
        Ok(())
    };
    tokio::select! {
        () = services => Err(Error::NotSynced),
        () = slices => Err(Error::NotSynced),
        result = serve => result,
    }
}

fn lock(objects: &std::sync::Mutex<Objects>) -> std::sync::MutexGuard<'_, Objects> {
    objects.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where one kind's watch keeps its objects.
struct Watched<K> {
    objects: Arc<std::sync::Mutex<Objects>>,
    records: Arc<RwLock<Records>>,
    /// The Service an object concerns and its own name (None: ignored).
    place: fn(&K) -> Option<(Key, String)>,
    slot: fn(&mut Objects) -> &mut Grouped<K>,
}

/// Keeps one kind's objects and the records of the Services they concern current;
/// `synced` fires after the first full list.
async fn watch<K>(api: kube::Api<K>, w: Watched<K>, synced: tokio::sync::oneshot::Sender<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    let mut synced = Some(synced);
    let mut listing: Grouped<K> = HashMap::new();
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(object)) => {
                let Some((key, name)) = (w.place)(&object) else {
                    continue;
                };
                let mut o = lock(&w.objects);
                (w.slot)(&mut o)
                    .entry(key.clone())
                    .or_default()
                    .insert(name, object);
                o.refresh(&w.records, &key);
            }
            Ok(watcher::Event::Delete(object)) => {
                let Some((key, name)) = (w.place)(&object) else {
                    continue;
                };
                let mut o = lock(&w.objects);
                let slot = (w.slot)(&mut o);
                if let Some(group) = slot.get_mut(&key) {
                    group.remove(&name);
                    if group.is_empty() {
                        slot.remove(&key);
                    }
                }
                o.refresh(&w.records, &key);
            }
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(object)) => {
                if let Some((key, name)) = (w.place)(&object) {
                    listing.entry(key).or_default().insert(name, object);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // The new list replaces the old; everything either names is redone.
                let mut o = lock(&w.objects);
                let slot = (w.slot)(&mut o);
                let mut keys: Vec<Key> = slot.keys().cloned().collect();
                keys.extend(listing.keys().cloned());
                *slot = std::mem::take(&mut listing);
                for key in &keys {
                    o.refresh(&w.records, key);
                }
                drop(o);
                if let Some(synced) = synced.take() {
                    let _ = synced.send(());
                }
            }
            Err(e) => tracing::warn!(error = %e, kind = %K::kind(&()), "DNS watch"),
        }
    }
}
