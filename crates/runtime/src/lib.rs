//! The Skiff container runtime: a CRI v1 server (the `runtime.v1` ImageService and
//! RuntimeService over gRPC on a Unix socket), so the kubelet, `crictl` or any CRI
//! client can drive it. Images are imported into a content-addressed store; pod
//! sandboxes are namespaces held by bind mounts with a CNI network; containers are
//! OCI bundles on an overlayfs root, run by an OCI runtime (runc by default) under a
//! monitor process each, so they outlive the runtime.
//!
//! - `images.rs`, `reference.rs`, `export.rs`, `pull.rs`: the image store, image names,
//!   export, registry pulls.
//! - `layers.rs`: unpacked layers and overlay root filesystems.
//! - `engine.rs`: sandboxes and containers, their records on disk, reload at start.
//! - `sandbox.rs`, `ns.rs`, `cni.rs`: pod sandboxes, their namespaces and network.
//! - `container.rs`, `oci.rs`, `seccomp.rs`, `monitor.rs`: containers, their OCI spec
//!   and seccomp profile, their monitor.
//! - `cgroups.rs`, `stats.rs`: where the cgroup hierarchies are; statistics from them.
//! - `cri.rs`, `runtime_service.rs`: the gRPC services; `streaming.rs`: the HTTP server
//!   behind Exec (WebSocket channel protocol).

mod attach;
mod cgroups;
pub mod cni;
mod console;
mod container;
mod cri;
mod engine;
pub mod export;
pub mod images;
mod layers;
pub mod monitor;
mod ns;
mod oci;
pub mod pull;
pub mod reference;
mod runtime_service;
mod sandbox;
mod seccomp;
mod stats;
mod streaming;
pub use streaming::spdy;
mod util;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

pub use images::{ImageStore, Imported};

/// Where the runtime keeps its state and where it listens.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The Unix socket CRI clients connect to.
    pub listen: PathBuf,
    /// The OCI runtime binary (runc's command line).
    pub oci_runtime: PathBuf,
    /// Where CNI network configurations are, and the plugins.
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The cgroup pods go under when the request names none.
    pub cgroup_parent: String,
    /// The command that runs a container's monitor ([`monitor::main`]); the container
    /// directory is appended.
    pub monitor: Vec<OsString>,
    /// The command that runs [`monitor::pause`], PID 1 of a pod's shared PID namespace.
    pub pause: Vec<OsString>,
    /// The command that runs [`monitor::exec_wait`] (execs with a terminal).
    pub exec_wait: Vec<OsString>,
    /// Where the streaming server (Exec URLs) listens; port 0 picks a free one.
    pub streaming_address: std::net::SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: "/var/lib/skiff/runtime".into(),
            listen: "/run/skiff/cri.sock".into(),
            oci_runtime: "runc".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cgroup_parent: "/skiff".into(),
            monitor: Vec::new(),
            pause: Vec::new(),
            exec_wait: Vec::new(),
            streaming_address: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another runtime is serving on {}", .0.display())]
    InUse(PathBuf),
    #[error("serving CRI: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error("starting the streaming server on {0}: {1}")]
    Streaming(std::net::SocketAddr, #[source] std::io::Error),
}

/// Serves CRI on `config.listen` until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // One runtime per data directory, decided before anything is cleaned up: a second
    // one must not undo the first one's creations in flight.
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
        what: "creating",
        path: config.data_dir.clone(),
        source,
    })?;
    let lock_path = config.data_dir.join("runtime.lock");
    let _lock = std::fs::File::create(&lock_path).map_err(|source| Error::Io {
        what: "creating",
        path: lock_path.clone(),
        source,
    })?;
    if _lock.try_lock().is_err() {
        return Err(Error::InUse(config.listen.clone()));
    }
    // Registry pulls use rustls with the ring provider (the one the whole binary uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = ImageStore::open(&config.data_dir.join("images"))?;
    pull::clean_staging(store.root());
    let collected = store.collect_garbage()?;
    if collected > 0 {
        tracing::info!(files = collected, "removed what interrupted imports left");
    }
    let settings = engine::Settings {
        data_dir: config.data_dir.clone(),
        oci_runtime: config.oci_runtime.clone(),
        cni: cni::Cni {
            conf_dir: config.cni_conf_dir.clone(),
            bin_dirs: config.cni_bin_dirs.clone(),
        },
        cgroup_parent: config.cgroup_parent.clone(),
        monitor: config.monitor.clone(),
        pause: config.pause.clone(),
        exec_wait: config.exec_wait.clone(),
    };
    let engine =
        tokio::task::spawn_blocking(move || engine::Engine::open(settings, Arc::new(store)))
            .await
            .map_err(|e| Error::Io {
                what: "loading state from",
                path: config.data_dir.clone(),
                source: std::io::Error::other(e),
            })??;
    let io = |what, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    if let Some(parent) = config.listen.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    // A live runtime keeps its socket; one left by a crash would make bind fail.
    if tokio::net::UnixStream::connect(&config.listen)
        .await
        .is_ok()
    {
        return Err(Error::InUse(config.listen.clone()));
    }
    match std::fs::remove_file(&config.listen) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", &config.listen)(e)),
    }
    let listener =
        tokio::net::UnixListener::bind(&config.listen).map_err(io("binding", &config.listen))?;
    tracing::info!(socket = %config.listen.display(), "CRI runtime listening");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let engine = Arc::new(engine);
    // One shutdown signal for both servers.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let streams = streaming::start(
        engine.clone(),
        config.streaming_address,
        wait(stopped.clone()),
    )
    .await
    .map_err(|e| Error::Streaming(config.streaming_address, e))?;
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let result = cri::router(engine, streams)
        .serve_with_incoming_shutdown(incoming, wait(stopped))
        .await;
    let _ = std::fs::remove_file(&config.listen);
    Ok(result?)
}
