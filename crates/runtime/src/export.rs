//! `skiff images export`: one image out of the store as an OCI image layout tarball,
//! which `skiff images import`, `ctr images import` and skopeo read back. The manifest is
//! the one imported; a docker-archive import has none, so one is written (same config
//! and layers, so the same image id).

use std::io::Write;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::images::{ImageError, ImageStore};

fn tar_error(e: std::io::Error) -> ImageError {
    ImageError::Tar(e)
}

/// Appends a file of `bytes` at `path`, owned by root, mode 0644, mtime 0 (so equal
/// content makes equal tarballs).
pub(crate) fn add(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    bytes: &[u8],
) -> Result<(), ImageError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes).map_err(tar_error)
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Writes the image `name` names as an OCI layout tar to `out`.
pub fn export(store: &ImageStore, name: &str, out: impl Write) -> Result<(), ImageError> {
    let image = store
        .find(name)?
        .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
    let size_of = |digest: &str| -> Result<u64, ImageError> {
        let path = store.blob_path(digest);
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|source| ImageError::Io {
                what: "reading",
                path,
                source,
            })
    };
    let (manifest_digest, manifest) = match &image.manifest {
        Some(digest) => (digest.clone(), store.blob(digest)?),
        None => {
            let mut layers = Vec::new();
            for (n, layer) in image.layers.iter().enumerate() {
                let media = image.layer_media_types.get(n).map_or("", String::as_str);
                let media = if media.contains("gzip") {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                };
                layers.push(json!({"mediaType": media, "digest": layer, "size": size_of(layer)?}));
            }
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": image.id, "size": size_of(&image.id)?},
                "layers": layers,
            }))
            .map_err(|e| ImageError::Format(e.to_string()))?;
            let digest = format!("sha256:{:x}", Sha256::digest(&manifest));
            (digest, manifest)
        }
    };
    let manifest_json: Value =
        serde_json::from_slice(&manifest).map_err(|e| ImageError::Format(e.to_string()))?;
    let media = manifest_json["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json");
    let descriptor = |tag: Option<&str>| {
        let mut d = json!({"mediaType": media, "digest": manifest_digest, "size": manifest.len(),
                           "platform": {"architecture": "amd64", "os": "linux"}});
        if let Some(tag) = tag {
            let short = tag.rsplit_once(':').map_or(tag, |(_, t)| t);
            d["annotations"] = json!({"io.containerd.image.name": tag,
                                      "org.opencontainers.image.ref.name": short});
        }
        d
    };
    let manifests: Vec<Value> = if image.repo_tags.is_empty() {
        vec![descriptor(None)]
    } else {
        image
            .repo_tags
            .iter()
            .map(|t| descriptor(Some(t)))
            .collect()
    };
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests}))
        .map_err(|e| ImageError::Format(e.to_string()))?;

    let mut tar = tar::Builder::new(out);
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add(&mut tar, "index.json", &index)?;
    add(&mut tar, &blob_name(&manifest_digest), &manifest)?;
    for digest in std::iter::once(&image.id).chain(image.layers.iter()) {
        let path = store.blob_path(digest);
        tar.append_path_with_name(&path, blob_name(digest))
            .map_err(tar_error)?;
    }
    tar.into_inner()
        .map_err(tar_error)?
        .flush()
        .map_err(tar_error)?;
    Ok(())
}
