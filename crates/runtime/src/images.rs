//! The image store: blobs named by their sha256 digest under `blobs/sha256/`, and an
//! index of images (`images.json`: id = config digest, names, manifest and layer
//! digests). Every blob is hashed as it is written and every digest a manifest or index
//! names is checked against what was written, so a corrupt or tampered tarball is
//! refused before anything refers to it. Writers (the runtime, `skiff images import`)
//! take an exclusive lock on `lock`; the index is replaced atomically by rename, so
//! readers never see half of it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::reference::Reference;

const INDEX: &str = "images.json";
/// The most a JSON blob (index, manifest, config) may weigh before it is parsed.
const MAX_JSON: u64 = 4 << 20;
/// The platform image indexes resolve to.
const OS: &str = "linux";
const ARCH: &str = "amd64";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the tarball")]
    Tar(#[source] std::io::Error),
    #[error("{0}")]
    Format(String),
    #[error("digest mismatch for {what}: expected {expected}, content is {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    Reference(#[from] crate::reference::InvalidReference),
}

type Result<T> = std::result::Result<T, ImageError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// One image as the index records it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The config's digest (`sha256:...`), as containerd and the CRI identify images.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The manifest's digest (absent for docker-archive imports, which have none).
    pub manifest: Option<String>,
    /// Layer blobs, lowest first (compressed or not, as imported).
    pub layers: Vec<String>,
    /// Each layer's media type (gzip, zstd or plain tar), for unpacking.
    #[serde(default)]
    pub layer_media_types: Vec<String>,
    /// The image index the manifest was chosen from, kept for pinned references.
    #[serde(default)]
    pub index: Option<String>,
    /// Bytes of the config and layers.
    pub size: u64,
    /// Pulled from a registry (it can be pulled again, so the kubelet may collect it);
    /// imported images are pinned.
    #[serde(default)]
    pub pulled: bool,
}

/// What one import added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    pub id: String,
    pub names: Vec<String>,
}

pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore> {
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io("creating", &blobs))?;
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    /// A blob's content.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        std::fs::read(&path).map_err(io("reading", &path))
    }

    fn lock(&self) -> Result<File> {
        let path = self.root.join("lock");
        let file = File::create(&path).map_err(io("creating", &path))?;
        file.lock().map_err(io("locking", &path))?;
        Ok(file)
    }

    /// Removes what an interrupted import left: temporary files and blobs no image uses.
    /// Run by the server at start, under the store's lock.
    pub fn collect_garbage(&self) -> Result<usize> {
        let _lock = self.lock()?;
        let images = self.list()?;
        let kept: BTreeSet<String> = images
            .iter()
            .flat_map(blobs_of)
            .map(|d| d.trim_start_matches("sha256:").to_string())
            .collect();
        let dir = self.root.join("blobs/sha256");
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(io("reading", &dir))? {
            let entry = entry.map_err(io("reading", &dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !kept.contains(&name) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every image, by id.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let path = self.root.join(INDEX);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::Format(format!("{} is corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    fn save(&self, images: &[ImageRecord]) -> Result<()> {
        let path = self.root.join(INDEX);
        let tmp = self.root.join(format!("{INDEX}.tmp"));
        let bytes = serde_json::to_vec_pretty(images)
            .map_err(|e| ImageError::Format(format!("encoding the index: {e}")))?;
        let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(&bytes).map_err(io("writing", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))
    }

    /// The image a CRI client names: an id (or a unique prefix of one), a name (`busybox`,
    /// `docker.io/library/busybox:latest`) or a name with a digest.
    pub fn find(&self, name: &str) -> Result<Option<ImageRecord>> {
        let images = self.list()?;
        Ok(find_in(&images, name).cloned())
    }

    /// Removes an image and the blobs no other image uses.
    pub fn remove(&self, name: &str) -> Result<ImageRecord> {
        let _lock = self.lock()?;
        let mut images = self.list()?;
        let Some(found) = find_in(&images, name).cloned() else {
            return Err(ImageError::NotFound(name.to_string()));
        };
        images.retain(|i| i.id != found.id);
        self.save(&images)?;
        let kept: BTreeSet<&String> = images.iter().flat_map(blobs_of).collect();
        for blob in blobs_of(&found) {
            if !kept.contains(blob) {
                let path = self.blob_path(blob);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(io("removing", &path)(e));
                }
            }
        }
        Ok(found)
    }

    /// Bytes and files the blobs take.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let dir = self.root.join("blobs/sha256");
        let mut bytes = 0;
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).map_err(io("reading", &dir))? {
            let entry = entry.map_err(io("reading", &dir))?;
            if let Ok(meta) = entry.metadata() {
                bytes += meta.len();
                files += 1;
            }
        }
        Ok((bytes, files))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports the images of an OCI image layout or a `docker save` archive (plain or
    /// gzipped tar). `names` tag every imported image too.
    pub fn import(&self, tarball: &Path, names: &[String]) -> Result<Vec<Imported>> {
        self.import_as(tarball, names, false)
    }

    /// Imports a pull's layout: its images are marked as pulled (unless they were
    /// imported before, which keeps them pinned).
    pub fn import_pulled(&self, tarball: &Path) -> Result<Vec<Imported>> {
        self.import_as(tarball, &[], true)
    }

    fn import_as(&self, tarball: &Path, names: &[String], pulled: bool) -> Result<Vec<Imported>> {
        let extra: Vec<Reference> = names
            .iter()
            .map(|n| Reference::parse(n))
            .collect::<std::result::Result<_, _>>()?;
        let _lock = self.lock()?;
        let mut images = self.list()?;
        let files = match self.store_entries(tarball) {
            Ok(files) => files,
            Err((e, written)) => {
                self.sweep(written.iter(), &images);
                return Err(e);
            }
        };
        let parsed = if files.contains_key("index.json") {
            self.oci_layout(&files)
        } else if files.contains_key("manifest.json") {
            self.docker_archive(&files)
        } else {
            Err(ImageError::Format(
                "neither an OCI image layout (index.json) nor a docker archive (manifest.json)"
                    .into(),
            ))
        };
        let written: Vec<String> = files.values().map(|(d, _)| d.clone()).collect();
        let mut found = match parsed {
            Ok(found) if !extra.is_empty() && found.len() > 1 => {
                self.sweep(written.iter(), &images);
                return Err(ImageError::Format(format!(
                    "--tag names one image, the tarball holds {}",
                    found.len()
                )));
            }
            Ok(found) => found,
            Err(e) => {
                // A bad tarball leaves nothing behind.
                self.sweep(written.iter(), &images);
                return Err(e);
            }
        };
        for image in &mut found {
            for name in &extra {
                if let Some(tag) = name.tagged() {
                    image.repo_tags.push(tag);
                }
            }
            image.repo_tags.sort();
            image.repo_tags.dedup();
            image.pulled = pulled;
        }
        let mut imported = Vec::new();
        for image in found {
            // A name moves to the image imported under it, as `docker load` does.
            for other in images.iter_mut().filter(|i| i.id != image.id) {
                other.repo_tags.retain(|t| !image.repo_tags.contains(t));
            }
            match images.iter_mut().find(|i| i.id == image.id) {
                Some(existing) => {
                    existing.pulled &= pulled;
                    existing.repo_tags.extend(image.repo_tags.iter().cloned());
                    existing.repo_tags.sort();
                    existing.repo_tags.dedup();
                    existing
                        .repo_digests
                        .extend(image.repo_digests.iter().cloned());
                    existing.repo_digests.sort();
                    existing.repo_digests.dedup();
                }
                None => images.push(image.clone()),
            }
            imported.push(Imported {
                id: image.id.clone(),
                names: image.repo_tags.clone(),
            });
        }
        if let Err(e) = self.save(&images) {
            self.sweep(written.iter(), &self.list().unwrap_or_default());
            return Err(e);
        }
        // The layout's own files (index.json, ...) and anything no image uses go.
        self.sweep(written.iter(), &images);
        Ok(imported)
    }

    /// Removes the blobs among `written` that no image in `images` uses.
    fn sweep<'a>(&self, written: impl Iterator<Item = &'a String>, images: &[ImageRecord]) {
        let kept: BTreeSet<&String> = images.iter().flat_map(blobs_of).collect();
        for digest in written {
            if !kept.contains(digest) {
                let _ = std::fs::remove_file(self.blob_path(digest));
            }
        }
    }

    /// Writes every regular file of the tarball as a blob (hashing it on the way);
    /// returns each file's path in the tarball with its digest and size.
    /// On failure, the digests already written come back with the error.
    #[allow(clippy::type_complexity)]
    fn store_entries(
        &self,
        tarball: &Path,
    ) -> std::result::Result<HashMap<String, (String, u64)>, (ImageError, Vec<String>)> {
        let mut written = Vec::new();
        match self.store_entries_into(tarball, &mut written) {
            Ok(files) => Ok(files),
            Err(e) => Err((e, written)),
        }
    }

    fn store_entries_into(
        &self,
        tarball: &Path,
        written: &mut Vec<String>,
    ) -> Result<HashMap<String, (String, u64)>> {
        let file = File::open(tarball).map_err(io("opening", tarball))?;
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 2];
        let gzipped = reader
            .by_ref()
            .take(2)
            .read(&mut magic)
            .map_err(io("reading", tarball))?
            == 2
            && magic == [0x1f, 0x8b];
        let file = File::open(tarball).map_err(io("opening", tarball))?;
        let reader: Box<dyn Read> = if gzipped {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        let mut archive = tar::Archive::new(reader);
        let mut files = HashMap::new();
        // Older `docker save` links repeated layers: path -> target, resolved below.
        let mut links: Vec<(String, String)> = Vec::new();
        for entry in archive.entries().map_err(ImageError::Tar)? {
            let mut entry = entry.map_err(ImageError::Tar)?;
            let path = entry.path().map_err(ImageError::Tar)?;
            let path = path.to_string_lossy().trim_start_matches("./").to_string();
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name().map_err(ImageError::Tar)? {
                    let target = target.to_string_lossy().to_string();
                    // A symlink's target is relative to its directory.
                    let target = match (kind.is_symlink(), path.rsplit_once('/')) {
                        (true, Some((dir, _))) if !target.starts_with('/') => {
                            normalize(&format!("{dir}/{target}"))
                        }
                        _ => normalize(&target),
                    };
                    links.push((path, target));
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let (digest, size) = self.write_blob(&mut entry)?;
            written.push(digest.clone());
            files.insert(path, (digest, size));
        }
        for (path, target) in links {
            if let Some(found) = files.get(&target).cloned() {
                files.insert(path, found);
            }
        }
        Ok(files)
    }

    fn write_blob(&self, content: &mut impl Read) -> Result<(String, u64)> {
        let dir = self.root.join("blobs/sha256");
        let tmp = tempfile_in(&dir);
        let result = self.write_blob_via(content, &tmp);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_blob_via(&self, content: &mut impl Read, tmp: &Path) -> Result<(String, u64)> {
        let tmp = tmp.to_path_buf();
        let mut out = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = content.read(&mut buf).map_err(ImageError::Tar)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("writing", &tmp))?;
            size += n as u64;
        }
        out.sync_all().map_err(io("syncing", &tmp))?;
        let digest = format!("sha256:{}", hex(&hasher.finalize()));
        let path = self.blob_path(&digest);
        std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
        Ok((digest, size))
    }

    /// The blob a path in the tarball holds, checked against the digest expected of it.
    fn checked<'a>(
        &self,
        files: &'a HashMap<String, (String, u64)>,
        descriptor: &Value,
        what: &str,
    ) -> Result<&'a (String, u64)> {
        let digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Format(format!("{what}: a descriptor without a digest")))?;
        let hex_part = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::Format(format!("{what}: unsupported digest {digest}")))?;
        let path = format!("blobs/sha256/{hex_part}");
        let found = files
            .get(&path)
            .ok_or_else(|| ImageError::Format(format!("{what}: {path} is missing")))?;
        if found.0 != digest {
            return Err(ImageError::Digest {
                what: what.to_string(),
                expected: digest.to_string(),
                actual: found.0.clone(),
            });
        }
        // The descriptor's size must be the content's, as the image spec requires.
        if let Some(size) = descriptor["size"].as_u64()
            && size != found.1
        {
            return Err(ImageError::Format(format!(
                "{what}: the descriptor says {size} bytes, the content is {}",
                found.1
            )));
        }
        Ok(found)
    }

    fn json_blob(&self, digest: &str, what: &str) -> Result<Value> {
        let path = self.blob_path(digest);
        let size = std::fs::metadata(&path)
            .map_err(io("reading", &path))?
            .len();
        if size > MAX_JSON {
            return Err(ImageError::Format(format!(
                "{what} is {size} bytes, more than JSON of an image may be ({MAX_JSON})"
            )));
        }
        serde_json::from_slice(&self.blob(digest)?)
            .map_err(|e| ImageError::Format(format!("{what} is not JSON: {e}")))
    }

    fn oci_layout(&self, files: &HashMap<String, (String, u64)>) -> Result<Vec<ImageRecord>> {
        let index = self.json_blob(&files["index.json"].0, "index.json")?;
        let mut images = Vec::new();
        for descriptor in index["manifests"].as_array().into_iter().flatten() {
            // Per-platform manifests listed directly: only this platform's.
            let platform = &descriptor["platform"];
            if platform.is_object() && (platform["os"] != OS || platform["architecture"] != ARCH) {
                continue;
            }
            let annotations = &descriptor["annotations"];
            let name = annotations["io.containerd.image.name"]
                .as_str()
                .or_else(|| {
                    annotations["org.opencontainers.image.ref.name"]
                        .as_str()
                        .filter(|n| n.contains(':') || n.contains('/'))
                })
                .map(Reference::parse)
                .transpose()?;
            let top = descriptor["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let manifest_digest = self.resolve_platform(files, descriptor)?;
            let manifest = self.json_blob(&manifest_digest, "the manifest")?;
            let mut record = self.record_from_manifest(files, &manifest)?;
            record.manifest = Some(manifest_digest.clone());
            if top != manifest_digest {
                record.index = Some(top.clone());
            }
            if let Some(name) = name {
                record.repo_tags.extend(name.tagged());
                // As containerd: the digest a pull by name resolves to, the index's for a
                // multi-platform image.
                record
                    .repo_digests
                    .push(format!("{}@{top}", name.repository));
            }
            images.push(record);
        }
        if images.is_empty() {
            return Err(ImageError::Format("index.json lists no manifests".into()));
        }
        Ok(images)
    }

    /// An image index resolves to its linux/amd64 manifest; a manifest is itself.
    fn resolve_platform(
        &self,
        files: &HashMap<String, (String, u64)>,
        descriptor: &Value,
    ) -> Result<String> {
        self.checked(files, descriptor, "a manifest")?;
        let digest = descriptor["digest"].as_str().unwrap_or_default();
        let media = descriptor["mediaType"].as_str().unwrap_or_default();
        let blob = self.json_blob(digest, "a manifest")?;
        let is_index = media.ends_with("image.index.v1+json")
            || media.ends_with("manifest.list.v2+json")
            || blob["manifests"].is_array();
        if !is_index {
            return Ok(digest.to_string());
        }
        let chosen = blob["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["os"] == OS && m["platform"]["architecture"] == ARCH)
            .ok_or_else(|| {
                ImageError::Format(format!("the image index has no {OS}/{ARCH} manifest"))
            })?;
        self.resolve_platform(files, chosen)
    }

    fn record_from_manifest(
        &self,
        files: &HashMap<String, (String, u64)>,
        manifest: &Value,
    ) -> Result<ImageRecord> {
        let (config, config_size) = self.checked(files, &manifest["config"], "the image config")?;
        let mut size = *config_size;
        let mut layers = Vec::new();
        let mut layer_media_types = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let (digest, layer_size) = self.checked(files, layer, "a layer")?;
            size += layer_size;
            layers.push(digest.clone());
            layer_media_types.push(layer["mediaType"].as_str().unwrap_or_default().to_string());
        }
        let diff_ids = self.json_blob(config, "the image config")?["rootfs"]["diff_ids"]
            .as_array()
            .map_or(0, Vec::len);
        if diff_ids != layers.len() {
            return Err(ImageError::Format(format!(
                "the config lists {diff_ids} layers (diff_ids), the manifest {}",
                layers.len()
            )));
        }
        Ok(ImageRecord {
            id: config.clone(),
            layers,
            layer_media_types,
            size,
            ..Default::default()
        })
    }

    fn docker_archive(&self, files: &HashMap<String, (String, u64)>) -> Result<Vec<ImageRecord>> {
        let manifest = self.json_blob(&files["manifest.json"].0, "manifest.json")?;
        let mut images = Vec::new();
        for entry in manifest.as_array().into_iter().flatten() {
            let lookup = |path: &str| {
                files.get(path).ok_or_else(|| {
                    ImageError::Format(format!("manifest.json names {path}, which is missing"))
                })
            };
            let config_path = entry["Config"]
                .as_str()
                .ok_or_else(|| ImageError::Format("manifest.json entry without Config".into()))?;
            let (config, config_size) = lookup(config_path)?;
            let mut size = *config_size;
            let mut layers = Vec::new();
            for layer in entry["Layers"].as_array().into_iter().flatten() {
                let (digest, layer_size) = lookup(layer.as_str().unwrap_or_default())?;
                size += layer_size;
                layers.push(digest.clone());
            }
            // The layers are the uncompressed tars: their digests are the config's diff ids.
            let config_json = self.json_blob(config, "the image config")?;
            let diff_ids: Vec<&str> = config_json["rootfs"]["diff_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if diff_ids != layers.iter().map(String::as_str).collect::<Vec<_>>() {
                return Err(ImageError::Digest {
                    what: "the layers (against the config's diff_ids)".into(),
                    expected: diff_ids.join(","),
                    actual: layers.join(","),
                });
            }
            let mut repo_tags = Vec::new();
            for tag in entry["RepoTags"].as_array().into_iter().flatten() {
                repo_tags.extend(Reference::parse(tag.as_str().unwrap_or_default())?.tagged());
            }
            let layer_media_types =
                vec!["application/vnd.docker.image.rootfs.diff.tar".to_string(); layers.len()];
            images.push(ImageRecord {
                id: config.clone(),
                repo_tags,
                layers,
                layer_media_types,
                size,
                ..Default::default()
            });
        }
        if images.is_empty() {
            return Err(ImageError::Format("manifest.json lists no images".into()));
        }
        Ok(images)
    }
}

fn blobs_of(image: &ImageRecord) -> impl Iterator<Item = &String> {
    std::iter::once(&image.id)
        .chain(image.manifest.iter())
        .chain(image.index.iter())
        .chain(image.layers.iter())
}

fn find_in<'a>(images: &'a [ImageRecord], name: &str) -> Option<&'a ImageRecord> {
    if let Some(image) = images.iter().find(|i| i.id == name) {
        return Some(image);
    }
    let hexish = name.strip_prefix("sha256:").unwrap_or(name);
    if hexish.len() >= 12 && hexish.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matching: Vec<&ImageRecord> = images
            .iter()
            .filter(|i| i.id.trim_start_matches("sha256:").starts_with(hexish))
            .collect();
        if matching.len() == 1 {
            return Some(matching[0]);
        }
    }
    let reference = Reference::parse(name).ok()?;
    if let Some(pinned) = reference.digested() {
        return images.iter().find(|i| i.repo_digests.contains(&pinned));
    }
    let tagged = reference.tagged()?;
    images.iter().find(|i| i.repo_tags.contains(&tagged))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh temporary path in `dir` (same filesystem as the blobs, for the rename).
fn tempfile_in(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}", std::process::id()))
}

/// The image config of `image` (for verbose ImageStatus).
pub fn config_of(store: &ImageStore, image: &ImageRecord) -> Result<Value> {
    store.json_blob(&image.id, "the image config")
}

/// A tar path with `.` and `..` resolved (never above the archive's root).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}
