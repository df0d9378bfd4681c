//! `skiff server`: the all-in-one control plane. Today it opens the datastore the API
//! server will sit on (embedded by default, etcd with `--etcd-endpoints`), checks it, and
//! runs until SIGINT/SIGTERM, closing it cleanly. The API server, controllers and the
//! node agent are added here as they land (docs/status.md).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use skiff_storage::Store;
use skiff_storage::embedded::{Config as EmbeddedConfig, Embedded};
use skiff_storage::etcd::{EtcdConfig, EtcdStore};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where cluster state lives (the embedded store, certificates, kubeconfigs).
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    /// Use this etcd cluster instead of the embedded store (comma-separated client URLs).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix inside etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// PEM CA bundle for etcd's serving certificates.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// PEM client certificate for etcd.
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// PEM client key for etcd.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let store = open_store(&args).await?;
    let revision = store.current_revision().await?;
    store.health().await.context("datastore health check")?;
    eprintln!(
        "skiff server: datastore ready at revision {revision}; the API server is not built yet (see docs/status.md). Ctrl-C stops."
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    drop(store);
    Ok(())
}

async fn open_store(args: &ServerArgs) -> Result<Arc<dyn Store>> {
    if args.etcd_endpoints.is_empty() {
        let config = EmbeddedConfig::new(args.data_dir.join("db"));
        let store = tokio::task::spawn_blocking(move || Embedded::open(&config))
            .await?
            .context("opening the embedded datastore")?;
        tracing::info!(path = %store.path().display(), "embedded datastore");
        Ok(Arc::new(store))
    } else {
        let config = EtcdConfig {
            endpoints: args.etcd_endpoints.clone(),
            prefix: args.etcd_prefix.clone().into_bytes(),
            ca_file: args.etcd_cafile.clone(),
            cert_file: args.etcd_certfile.clone(),
            key_file: args.etcd_keyfile.clone(),
        };
        let store = EtcdStore::connect(&config)
            .await
            .context("connecting to etcd")?;
        tracing::info!(endpoints = ?args.etcd_endpoints, "etcd datastore");
        Ok(Arc::new(store))
    }
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
