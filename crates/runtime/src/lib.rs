//! The Skiff container runtime: a CRI v1 server (the `runtime.v1` ImageService and
//! RuntimeService over gRPC on a Unix socket), so the kubelet, `crictl` or any CRI
//! client can drive it. This first part keeps images: OCI-layout and docker-archive
//! tarballs imported into a content-addressed store with every digest verified, listed,
//! inspected and removed through the CRI. Pulling, pod sandboxes and containers come
//! next (issue 5); their RPCs answer `Unimplemented` until then.
//!
//! - `images.rs`: the content-addressed store and the tarball importers.
//! - `reference.rs`: image names as Docker and containerd normalize them.
//! - `cri.rs`: the gRPC services.

mod cri;
pub mod images;
pub mod reference;

use std::path::PathBuf;

pub use images::{ImageStore, Imported};

/// Where the runtime keeps its state and where it listens.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The Unix socket CRI clients connect to.
    pub listen: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: "/var/lib/skiff/runtime".into(),
            listen: "/run/skiff/cri.sock".into(),
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
}

/// Serves CRI on `config.listen` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let store = ImageStore::open(&config.data_dir.join("images"))?;
    let collected = store.collect_garbage()?;
    if collected > 0 {
        tracing::info!(files = collected, "removed what interrupted imports left");
    }
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
    let result = cri::router(store)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(&config.listen);
    Ok(result?)
}
