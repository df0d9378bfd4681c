//! PullImage: images from OCI and Docker v2 registries (oci-client), over HTTPS, or plain
//! HTTP for registries on loopback addresses (as Docker allows), anonymously or with
//! the CRI's AuthConfig (basic, or a bearer token). The top-level manifest (an index is
//! resolved to linux/amd64), the config and the layers are fetched, each checked against
//! its digest while written, into a temporary OCI image layout, which the store then
//! imports with the same checks as `skiff images import`; nothing is recorded unless
//! every blob arrived whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::images::{ImageError, ImageStore};
use crate::reference::Reference;

/// Manifest media types a pull accepts (OCI and Docker, single and multi-platform).
const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Credentials for one pull, as the CRI's AuthConfig carries them.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// `base64(user:password)`, as in a Docker config.
    pub auth: String,
    pub registry_token: String,
    pub identity_token: String,
}

impl Credentials {
    fn registry_auth(&self) -> RegistryAuth {
        use base64::Engine;
        if !self.registry_token.is_empty() {
            return RegistryAuth::Bearer(self.registry_token.clone());
        }
        if !self.username.is_empty() {
            return RegistryAuth::Basic(self.username.clone(), self.password.clone());
        }
        if !self.auth.is_empty()
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&self.auth)
            && let Some((user, password)) = String::from_utf8_lossy(&decoded).split_once(':')
        {
            return RegistryAuth::Basic(user.to_string(), password.to_string());
        }
        if !self.identity_token.is_empty() {
            return RegistryAuth::Bearer(self.identity_token.clone());
        }
        RegistryAuth::Anonymous
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Format(format!("{what}: {e}"))
}

/// Why a pull failed, as far as the caller must tell apart.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry could not be reached or failed (connection, timeout, 5xx).
    #[error("{0}")]
    Unreachable(String),
    /// The registry refused the credentials (401/403).
    #[error("{0}")]
    Denied(String),
    /// The registry has no such image.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn classify(what: &str, e: oci_client::errors::OciDistributionError) -> PullError {
    use oci_client::errors::OciDistributionError as E;
    let message = format!("{what}: {e}");
    match &e {
        E::RequestError(_) => PullError::Unreachable(message),
        E::ServerError { code, .. } if *code >= 500 => PullError::Unreachable(message),
        E::ServerError {
            code: 401 | 403, ..
        }
        | E::AuthenticationFailure(_)
        | E::UnauthorizedError { .. } => PullError::Denied(message),
        E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => {
            PullError::NotFound(message)
        }
        E::RegistryError { envelope, .. } => {
            let codes = format!("{envelope:?}");
            if codes.contains("Unknown") || codes.contains("NotFound") {
                PullError::NotFound(message)
            } else if codes.contains("Unauthorized") || codes.contains("Denied") {
                PullError::Denied(message)
            } else {
                PullError::Image(ImageError::Format(message))
            }
        }
        _ => PullError::Image(ImageError::Format(message)),
    }
}

/// A descriptor's digest, refused unless it is `sha256:` and 64 hex digits (it names
/// files).
fn valid_digest(digest: &str) -> Result<&str, ImageError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(digest)
    } else {
        Err(ImageError::Format(format!(
            "the registry named a blob {digest:?}: not a sha256 digest"
        )))
    }
}

/// Whether a registry host is a loopback address (plain HTTP allowed).
fn loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Pulls `name` into `store`; the image's id.
pub async fn pull(
    store: Arc<ImageStore>,
    name: &str,
    credentials: &Credentials,
) -> Result<String, PullError> {
    let wanted = Reference::parse(name).map_err(ImageError::from)?;
    let text = wanted
        .digested()
        .or_else(|| wanted.tagged())
        .ok_or_else(|| ImageError::Format(format!("{name}: neither a tag nor a digest")))?;
    let reference: oci_client::Reference = text
        .parse()
        .map_err(|e| failed(&format!("parsing {text}"), e))?;
    let registry = reference.resolve_registry().to_string();
    let protocol = if loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = oci_client::Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        // A stalled registry must not hold a pull (and the kubelet's queue) forever.
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    let auth = credentials.registry_auth();
    let pulled = |what: String| {
        let text = text.clone();
        move |e: oci_client::errors::OciDistributionError| {
            classify(&format!("pulling {what} of {text}"), e)
        }
    };

    let staging = tempfile_dir(store.root())?;
    let result = async {
        let (top, top_digest) = client
            .pull_manifest_raw(&reference, &auth, ACCEPTED)
            .await
            .map_err(pulled("the manifest".into()))?;
        valid_digest(&top_digest)?;
        check_digest(&top, &top_digest, "the manifest")?;
        let top_json: Value =
            serde_json::from_slice(&top).map_err(|e| failed("the manifest", e))?;
        let mut blobs: Vec<(String, PathBuf)> = Vec::new();
        blobs.push((top_digest.clone(), write_blob(&staging.0, &top)?));
        let top_media = media_type(&top_json, "application/vnd.oci.image.manifest.v1+json");
        let manifest_json = if top_json["manifests"].is_array() {
            let chosen = top_json["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                .ok_or_else(|| ImageError::Format(format!("{text} has no linux/amd64 image")))?;
            let digest = valid_digest(chosen["digest"].as_str().unwrap_or_default())?.to_string();
            let by_digest = reference.clone_with_digest(digest.clone());
            let (manifest, _) = client
                .pull_manifest_raw(&by_digest, &auth, ACCEPTED)
                .await
                .map_err(pulled("the platform manifest".into()))?;
            check_digest(&manifest, &digest, "the platform manifest")?;
            blobs.push((digest, write_blob(&staging.0, &manifest)?));
            serde_json::from_slice::<Value>(&manifest).map_err(|e| failed("the manifest", e))?
        } else {
            top_json.clone()
        };
        let descriptors = std::iter::once(&manifest_json["config"])
            .chain(manifest_json["layers"].as_array().into_iter().flatten());
        let mut seen = std::collections::HashSet::new();
        for descriptor in descriptors {
            let digest = valid_digest(descriptor["digest"].as_str().unwrap_or_default())?.to_string();
            if !seen.insert(digest.clone()) {
                continue;
            }
            let oci = OciDescriptor {
                media_type: descriptor["mediaType"].as_str().unwrap_or_default().to_string(),
                digest: digest.clone(),
                size: descriptor["size"].as_i64().unwrap_or(0),
                ..Default::default()
            };
            let path = staging.0.join(digest.trim_start_matches("sha256:"));
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
                .map_err(|e| failed("staging a blob", e))?;
            // pull_blob checks the content against the digest as it arrives.
            client
                .pull_blob(&reference, &oci, file)
                .await
                .map_err(pulled(format!("blob {digest}")))?;
            blobs.push((digest, path));
        }
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": top_media, "digest": top_digest, "size": top.len(),
            "annotations": {"io.containerd.image.name": wanted.tagged().or_else(|| wanted.digested()).unwrap_or_default()},
        }]});
        let layout = staging.0.join("layout.tar");
        write_layout(&layout, &index, &blobs)?;
        let store = store.clone();
        let imported = tokio::task::spawn_blocking(move || store.import_pulled(&layout))
            .await
            .map_err(|e| failed("importing", e))??;
        imported
            .into_iter()
            .next()
            .map(|i| i.id)
            .ok_or_else(|| PullError::Image(ImageError::Format(format!("{text}: nothing imported"))))
    }
    .await;
    drop(staging);
    let id = result?;
    // A pull by digest records the digest as the image's repo digest.
    if let Some(digested) = wanted.digested() {
        tracing::debug!(image = %digested, %id, "pulled by digest");
    }
    Ok(id)
}

fn media_type(manifest: &Value, default: &str) -> String {
    manifest["mediaType"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| {
            if manifest["manifests"].is_array() {
                "application/vnd.oci.image.index.v1+json".into()
            } else {
                default.into()
            }
        })
}

fn check_digest(bytes: &[u8], digest: &str, what: &str) -> Result<(), ImageError> {
    let actual = sha256(bytes);
    if actual == digest {
        Ok(())
    } else {
        Err(ImageError::Digest {
            what: what.to_string(),
            expected: digest.to_string(),
            actual,
        })
    }
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<PathBuf, ImageError> {
    let path = dir.join(sha256(bytes).trim_start_matches("sha256:"));
    std::fs::write(&path, bytes).map_err(|e| failed("staging a blob", e))?;
    Ok(path)
}

fn write_layout(path: &Path, index: &Value, blobs: &[(String, PathBuf)]) -> Result<(), ImageError> {
    let file = std::fs::File::create(path).map_err(|e| failed("staging the image", e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    use crate::export::add;
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add(&mut tar, "index.json", index.to_string().as_bytes())?;
    for (digest, file) in blobs {
        let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        tar.append_path_with_name(file, name)
            .map_err(ImageError::Tar)?;
    }
    tar.into_inner()
        .map_err(ImageError::Tar)?
        .flush()
        .map_err(ImageError::Tar)
}

/// Removes what interrupted pulls left (at start).
pub fn clean_staging(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(".pull-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A temporary directory beside the store (same filesystem), removed when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(root: &Path) -> Result<Staging, ImageError> {
    let dir = root.join(format!(".pull-{}", &crate::util::new_id()[..16]));
    std::fs::create_dir_all(&dir).map_err(|e| failed("staging", e))?;
    Ok(Staging(dir))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(super::loopback("127.0.0.1:5000"));
        assert!(super::loopback("localhost:5000"));
        assert!(super::loopback("[::1]:5000"));
        assert!(!super::loopback("registry.example.com"));
        assert!(!super::loopback("10.0.0.1:5000"));
    }
}
