//! Kubeconfigs: the cluster CA, the server URL and a client certificate, inline, so
//! `kubectl --kubeconfig DATA_DIR/admin.kubeconfig` works from anywhere; the same for
//! each component's own identity.

use std::path::Path;

use base64::Engine;

use crate::Error;
use crate::pki::{ClientCertificate, Pki, write_file};

pub fn write_admin(path: &Path, server: &str, pki: &Pki) -> Result<(), Error> {
    write_client(
        path,
        server,
        "admin",
        &ClientCertificate {
            ca_pem: pki.ca_cert_pem.clone(),
            cert_pem: pki.admin_cert_pem.clone(),
            key_pem: pki.admin_key_pem.clone(),
        },
    )
}

/// A kubeconfig for one client certificate (a component's identity).
pub fn write_client(
    path: &Path,
    server: &str,
    user: &str,
    cert: &ClientCertificate,
) -> Result<(), Error> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: {user}
current-context: skiff
",
        ca = b64(&cert.ca_pem),
        cert = b64(&cert.cert_pem),
        key = b64(&cert.key_pem),
    );
    write_file(path, yaml.as_bytes(), 0o600)
}
