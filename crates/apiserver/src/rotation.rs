//! Certificates renewed while the server runs, so nothing expires silently after a year
//! of uptime: every 12 hours the PKI is checked ([`Pki::ensure`] reissues any leaf within
//! 30 days of expiry), and a new serving or kubelet-client certificate is swapped in for
//! the connections that follow; the admin kubeconfig is rewritten with a new admin
//! certificate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::Error;
use crate::pki::Pki;

/// How often the certificates are checked.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// A certificate and key that can be replaced while in use, for either end of TLS.
#[derive(Debug)]
pub(crate) struct Swappable(RwLock<Arc<CertifiedKey>>);

impl Swappable {
    pub(crate) fn new(key: CertifiedKey) -> Arc<Swappable> {
        Arc::new(Swappable(RwLock::new(Arc::new(key))))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.0.read() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, key: CertifiedKey) {
        match self.0.write() {
            Ok(mut current) => *current = Arc::new(key),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
    }
}

impl rustls::server::ResolvesServerCert for Swappable {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Swappable {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A certificate chain (PEM blocks, leaf first) and its key, ready for rustls.
pub(crate) fn certified_key(chain: &[&str], key: &str) -> Result<CertifiedKey, Error> {
    let pem_err =
        |e: rustls::pki_types::pem::Error| Error::Tls(rustls::Error::General(e.to_string()));
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(pem_err)?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(pem_err)?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(Error::Tls)?;
    Ok(CertifiedKey::new(certs, signing))
}

/// What the renewal loop keeps up to date.
pub(crate) struct Renewal {
    pub data_dir: PathBuf,
    pub bind: IpAddr,
    pub server_url: String,
    pub serving: Arc<Swappable>,
    pub kubelet_client: Arc<Swappable>,
    /// The PEMs in use now.
    pub serving_pem: String,
    pub kubelet_client_pem: String,
    pub admin_pem: String,
}

impl Renewal {
    /// Checks every 12 hours until the server stops.
    pub(crate) async fn run(mut self) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            if let Err(e) = self.check().await {
                tracing::warn!(error = %e, "checking the server's certificates");
            }
        }
    }

    async fn check(&mut self) -> Result<(), Error> {
        let (dir, bind) = (self.data_dir.clone(), self.bind);
        let pki =
            tokio::task::spawn_blocking(move || Pki::ensure(&dir, &crate::serving_names(bind)))
                .await
                .map_err(|e| Error::Bootstrap(format!("the certificate check stopped: {e}")))??;
        if pki.serving_cert_pem != self.serving_pem {
            self.serving.replace(certified_key(
                &[&pki.serving_cert_pem, &pki.ca_cert_pem],
                &pki.serving_key_pem,
            )?);
            self.serving_pem = pki.serving_cert_pem.clone();
            tracing::info!("renewed the serving certificate");
        }
        if pki.kubelet_client_cert_pem != self.kubelet_client_pem {
            self.kubelet_client.replace(certified_key(
                &[&pki.kubelet_client_cert_pem],
                &pki.kubelet_client_key_pem,
            )?);
            self.kubelet_client_pem = pki.kubelet_client_cert_pem.clone();
            tracing::info!("renewed the kubelet client certificate");
        }
        if pki.admin_cert_pem != self.admin_pem {
            let path = self.data_dir.join("admin.kubeconfig");
            crate::kubeconfig::write_admin(&path, &self.server_url, &pki)?;
            self.admin_pem = pki.admin_cert_pem.clone();
            tracing::info!(path = %path.display(), "renewed the admin certificate");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(name: &str) -> (CertifiedKey, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .and_then(|p| p.self_signed(&key))
            .expect("certificate");
        let pem = cert.pem();
        (
            certified_key(&[&pem], &key.serialize_pem()).expect("key"),
            pem,
        )
    }

    #[test]
    fn a_swapped_certificate_is_served_from_then_on() {
        let (first, _) = key_for("one");
        let (second, _) = key_for("two");
        let second_der = second.cert[0].clone();
        let swappable = Swappable::new(first);
        let before = rustls::client::ResolvesClientCert::resolve(&*swappable, &[], &[])
            .expect("a certificate");
        swappable.replace(second);
        let after = rustls::client::ResolvesClientCert::resolve(&*swappable, &[], &[])
            .expect("a certificate");
        assert_ne!(before.cert[0], after.cert[0]);
        assert_eq!(after.cert[0], second_der);
    }
}
