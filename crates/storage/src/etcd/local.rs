//! A private etcd server on loopback, for tests and `skiff bench store`.
//!
//! Starts Debian's `etcd` binary on free loopback ports with its data in a temporary
//! directory, waits until it serves, and on drop kills it and removes the data. The
//! process gets `SIGKILL` if its parent dies (through `setpriv --pdeathsig`), so a crashed
//! test never leaves an etcd behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{EtcdConfig, EtcdStore};
use crate::{Error, Result, Store};

/// PEM files for serving etcd over TLS with client-certificate authentication.
#[derive(Clone, Debug)]
pub struct LocalTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub struct LocalEtcd {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
    tls: Option<LocalTls>,
}

impl LocalEtcd {
    /// Starts a plain-HTTP etcd.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Starts etcd; with `tls`, clients must present a certificate signed by its CA.
    /// The free ports it picks can be taken by another process before etcd binds them:
    /// then it tries again with others.
    pub async fn start_with(tls: Option<LocalTls>) -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::start_once(tls.clone()).await {
                Err(e) if attempt < 3 && format!("{e:?}").contains("address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(tls: Option<LocalTls>) -> Result<Self> {
        let binary = std::env::var("SKIFF_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let dir = tempfile::Builder::new()
            .prefix("skiff-etcd-")
            .tempdir()
            .map_err(|e| Error::etcd("creating a data directory", e))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log"))
            .map_err(|e| Error::etcd("creating the etcd log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::etcd("creating the etcd log", e))?;
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "--", &binary])
            .arg("--name=skiff-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=skiff-test={peer}"))
            // Room for the largest value the Store accepts plus the request around it.
            .arg("--max-request-bytes=2097152")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(tls) = &tls {
            command
                .arg(format!("--cert-file={}", tls.cert_file.display()))
                .arg(format!("--key-file={}", tls.key_file.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .spawn()
            .map_err(|e| Error::etcd("starting etcd (is etcd-server installed?)", e))?;
        let mut local = LocalEtcd {
            child,
            dir,
            endpoint,
            tls,
        };
        local.wait_ready().await?;
        Ok(local)
    }

    /// Client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The data directory, holding `etcd.log` too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client configuration for this server, storing keys under `prefix`.
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.as_bytes().to_vec(),
            ca_file: self.tls.as_ref().map(|t| t.ca_file.clone()),
            cert_file: self.tls.as_ref().map(|t| t.cert_file.clone()),
            key_file: self.tls.as_ref().map(|t| t.key_file.clone()),
        }
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let config = self.config("");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                return Err(Error::etcd(
                    "starting etcd",
                    format!("etcd exited with {status}: {log}"),
                ));
            }
            if let Ok(Ok(store)) =
                tokio::time::timeout(Duration::from_secs(2), EtcdStore::connect(&config)).await
                && let Ok(Ok(())) =
                    tokio::time::timeout(Duration::from_secs(2), store.health()).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::etcd("starting etcd", "not ready within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::etcd("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::etcd("finding a free port", e))
}
