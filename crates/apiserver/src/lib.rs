//! The Skiff API server: the Kubernetes REST API over a [`skiff_storage::Store`].
//!
//! The only component that touches the datastore. It serves HTTPS only (HTTP/1.1 and
//! HTTP/2 by ALPN) with a cluster CA it creates on first start, and writes an admin
//! kubeconfig that kubectl can use as is.
//!
//! Layout: [`pki`] (certificates), [`kubeconfig`], `serve` (the TLS accept loop),
//! `authn`, `audit` and `authz` (who asks, the audit log, whether they may: middleware
//! in that order), `join` (bootstrap tokens and `cluster-info` for joining nodes), `handler` (parses a request into a [`request::RequestInfo`] and
//! dispatches), `discovery`, `registry` (one generic store for every resource,
//! configured by a small per-resource strategy, with admission), [`encryption`] (a
//! datastore wrapper), `status` (every error as a `metav1.Status`).

mod audit;
mod authn;
mod authz;
mod discovery;
pub mod encryption;
#[cfg(test)]
mod fuzz;
mod handler;
mod join;
pub mod kubeconfig;
mod kubelet;
mod metrics;
mod openapi;
pub mod pki;
mod proto;
mod registry;
mod request;
mod rotation;
mod serve;
mod status;
mod table;
mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use skiff_storage::Store;

/// The Kubernetes version whose API this server speaks.
pub use skiff_api::KUBERNETES_VERSION;

#[derive(Clone, Debug)]
pub struct Config {
    /// Certificates and the admin kubeconfig live here.
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    /// 0 picks a free port.
    pub secure_port: u16,
    /// Where ClusterIPs come from; the first address is the `kubernetes` Service's.
    pub service_cidr: ServiceCidr,
    /// Events not seen for this long are deleted (upstream's `--event-ttl`).
    pub event_ttl: std::time::Duration,
    /// The `iss` of service account tokens (`--service-account-issuer`).
    pub service_account_issuer: String,
    /// The authorizers, asked in order (`--authorization-mode`, default Node,RBAC).
    pub authorization_modes: Vec<AuthorizationMode>,
    /// Static bearer tokens (`--token-auth-file`: `token,user,uid,"group1,group2"`).
    pub token_auth_file: Option<PathBuf>,
    /// Requests without credentials are `system:anonymous` (else 401).
    pub anonymous_auth: bool,
    /// Encryption at rest (`--encryption-provider-config`, an EncryptionConfiguration).
    pub encryption_provider_config: Option<PathBuf>,
    /// The audit log (`--audit-log-path`; none: no auditing).
    pub audit_log_path: Option<PathBuf>,
    /// Its policy (`--audit-policy-file`; none: everything at Metadata).
    pub audit_policy_file: Option<PathBuf>,
}

pub use authz::Mode as AuthorizationMode;

pub use registry::service_ips::ServiceCidr;

/// Handed to whoever started the server once it is serving.
#[derive(Clone, Debug)]
pub struct Ready {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context} {}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating certificates")]
    Pki(#[source] rcgen::Error),
    #[error("configuring TLS")]
    Tls(#[source] rustls::Error),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("datastore")]
    Store(#[from] skiff_storage::Error),
    #[error("creating the cluster's built-in objects: {0}")]
    Bootstrap(String),
}

impl Error {
    pub(crate) fn io(context: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn pki(source: rcgen::Error) -> Self {
        Error::Pki(source)
    }
}

/// Runs the API server until `shutdown` resolves. `ready` is told the address and the
/// kubeconfig path once the listener accepts connections.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    ready: tokio::sync::oneshot::Sender<Ready>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let addr = SocketAddr::new(config.bind_address, config.secure_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let names = serving_names(config.bind_address);
    let data_dir = config.data_dir.clone();
    let pki = tokio::task::spawn_blocking(move || pki::Pki::ensure(&data_dir, &names))
        .await
        .map_err(|e| {
            Error::io(
                "creating certificates",
                &config.data_dir,
                std::io::Error::other(e),
            )
        })??;
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    let server_url = format!("https://{}", client_addr(addr));
    kubeconfig::write_admin(&kubeconfig, &server_url, &pki)?;
    let (tls, serving) = serve::tls_config(&pki)?;
    let kubelets = kubelet::Client::new(&pki)?;
    let renewal = rotation::Renewal {
        data_dir: config.data_dir.clone(),
        bind: config.bind_address,
        server_url: server_url.clone(),
        serving,
        kubelet_client: kubelets.identity.clone(),
        serving_pem: pki.serving_cert_pem.clone(),
        kubelet_client_pem: pki.kubelet_client_cert_pem.clone(),
        admin_pem: pki.admin_cert_pem.clone(),
    };
    use rcgen::PublicKeyData;
    let key = &pki.service_account_key;
    let issuer = tokens::Issuer::new(
        &key.serialize_der(),
        &key.subject_public_key_info(),
        key.public_key_raw(),
        &config.service_account_issuer,
    )
    .map_err(|e| Error::Bootstrap(format!("the service account key: {e}")))?;
    let store: Arc<dyn Store> = match &config.encryption_provider_config {
        Some(path) => {
            let encryption = encryption::EncryptionConfig::load(path).map_err(Error::Bootstrap)?;
            tracing::info!(config = %path.display(), "encrypting resources at rest");
            Arc::new(encryption::EncryptedStore::new(store, encryption))
        }
        None => store,
    };
    let state = handler::State::new(store, &config, addr, kubelets, issuer).await?;
    // cluster-info names the address joining nodes reach.
    let reached = match advertised(config.bind_address) {
        ip if ip.is_unspecified() => client_addr(addr),
        ip => SocketAddr::new(ip, addr.port()),
    };
    join::ensure(
        &state.registry,
        &format!("https://{reached}"),
        &pki.ca_cert_pem,
    )
    .await
    .map_err(|e| Error::Bootstrap(e.message))?;
    if let Err(e) = state.registry.expire_events(config.event_ttl).await {
        tracing::warn!(error = %e.message, "expiring events");
    }
    let expiry = tokio::spawn(handler::expire_events(state.clone(), config.event_ttl));
    let repair = tokio::spawn(handler::repair_allocations(state.clone()));
    let renewal = tokio::spawn(renewal.run());
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "API server listening");
    let _ = ready.send(Ready { addr, kubeconfig });
    serve::serve(listener, tls, state, shutdown).await;
    expiry.abort();
    repair.abort();
    renewal.abort();
    Ok(())
}

/// The address clients should dial: loopback when bound to every address.
fn client_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// The address other machines reach the server at: the bind address, or, bound to every
/// address, the one this machine's default route leaves by.
fn advertised(bind: IpAddr) -> IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(bind)
}

pub(crate) fn serving_names(bind: IpAddr) -> pki::ServingNames {
    let mut dns: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && !dns.iter().any(|d| d == host) {
            dns.push(host.to_string());
        }
    }
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    let reached = advertised(bind);
    if !reached.is_unspecified() && !ips.contains(&reached) {
        ips.push(reached);
    }
    pki::ServingNames { dns, ips }
}
