//! The admin kubeconfig: the cluster CA, the server URL and the admin client certificate,
//! inline, so `kubectl --kubeconfig DATA_DIR/admin.kubeconfig` works from anywhere.

use std::path::Path;

use base64::Engine;

use crate::Error;
use crate::pki::{Pki, write_file};

pub fn write_admin(path: &Path, server: &str, pki: &Pki) -> Result<(), Error> {
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
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: admin
current-context: skiff
",
        ca = b64(&pki.ca_cert_pem),
        cert = b64(&pki.admin_cert_pem),
        key = b64(&pki.admin_key_pem),
    );
    write_file(path, yaml.as_bytes(), 0o600)
}
