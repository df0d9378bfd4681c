//! Unpacked layers and container root filesystems. Each layer blob is unpacked once into
//! its own read-only directory (`layers/<digest hex>`), in overlayfs's own format: a
//! `.wh.NAME` whiteout becomes a 0:0 character device and `.wh..wh..opq` the
//! `trusted.overlay.opaque` attribute, so a container's root is one overlay mount of the
//! image's layers under a private upper directory, as containerd's overlayfs snapshotter
//! does. Unpacking goes to a temporary directory renamed into place, so a layer
//! directory is complete or absent, and two unpacks of one layer race harmlessly.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use crate::images::{ImageError, ImageRecord, ImageStore};

/// A whiteout's prefix, and the name that makes its directory opaque (OCI image spec).
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

type Result<T> = std::result::Result<T, ImageError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

pub struct Layers {
    root: PathBuf,
}

impl Layers {
    pub fn open(root: &Path) -> Result<Layers> {
        std::fs::create_dir_all(root).map_err(io("creating", root))?;
        let layers = Layers {
            root: root.to_path_buf(),
        };
        // Interrupted unpacks leave temporary directories; nothing refers to them.
        for entry in std::fs::read_dir(root)
            .map_err(io("reading", root))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(layers)
    }

    fn dir(&self, digest: &str) -> PathBuf {
        self.root.join(digest.trim_start_matches("sha256:"))
    }

    /// The unpacked directories of `image`'s layers, lowest first, unpacking what is not
    /// yet there.
    pub fn unpack(&self, store: &ImageStore, image: &ImageRecord) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(image.layers.len());
        for (n, digest) in image.layers.iter().enumerate() {
            let dir = self.dir(digest);
            if !dir.exists() {
                let media = image.layer_media_types.get(n).map_or("", String::as_str);
                self.unpack_layer(store, digest, media, &dir)?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    fn unpack_layer(
        &self,
        store: &ImageStore,
        digest: &str,
        media: &str,
        dir: &Path,
    ) -> Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(format!(".tmp-{}-{n}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
        let blob = store.blob_path(digest);
        let result = File::open(&blob)
            .map_err(io("opening", &blob))
            .and_then(|file| unpack_tar(decompressed(file, media)?, &tmp))
            .and_then(|()| {
                std::fs::rename(&tmp, dir).or_else(|e| {
                    // Another unpack of the same layer won: use its copy.
                    if dir.exists() {
                        Ok(())
                    } else {
                        Err(io("renaming", dir)(e))
                    }
                })
            });
        // Gone after the rename; what a failure or a lost race left otherwise.
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    /// Removes unpacked layers no image in `images` has.
    pub fn remove_unused(&self, images: &[ImageRecord]) -> Result<usize> {
        let kept: std::collections::BTreeSet<PathBuf> = images
            .iter()
            .flat_map(|i| i.layers.iter())
            .map(|d| self.dir(d))
            .collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.root)
            .map_err(io("reading", &self.root))?
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') && !kept.contains(&path) {
                std::fs::remove_dir_all(&path).map_err(io("removing", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes and inodes the unpacked layers use.
    pub fn usage(&self) -> (u64, u64) {
        disk_usage(&self.root)
    }
}

fn decompressed(file: File, media: &str) -> Result<Box<dyn Read>> {
    let mut reader = BufReader::new(file);
    if media.ends_with("zstd") {
        return Err(ImageError::Format(format!(
            "layers compressed with zstd ({media}) are not supported"
        )));
    }
    // Media types lie often enough (docker archives say "tar" of gzipped layers): sniff.
    let gzipped = {
        use std::io::BufRead;
        let head = reader.fill_buf().map_err(ImageError::Tar)?;
        head.starts_with(&[0x1f, 0x8b])
    };
    Ok(if gzipped {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Unpacks one layer tar into `dest` (empty), turning whiteouts into overlayfs's form.
fn unpack_tar(reader: Box<dyn Read>, dest: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(ImageError::Tar)?;
    for entry in entries {
        let mut entry = entry.map_err(ImageError::Tar)?;
        let path = entry.path().map_err(ImageError::Tar)?.into_owned();
        let relative = normalize(&path);
        let Some(name) = relative
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
        else {
            continue; // the root itself
        };
        let parent = dest.join(relative.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            inside(dest, &parent)?;
            std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
            xattr::set(&parent, "trusted.overlay.opaque", b"y")
                .map_err(io("marking opaque", &parent))?;
            continue;
        }
        // aufs's own metadata (.wh..wh.plnk, .wh..wh.aufs, ...) is no whiteout.
        if name.starts_with(".wh..wh.") {
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            inside(dest, &parent)?;
            std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
            let target = parent.join(hidden);
            mknod(&target, SFlag::S_IFCHR, 0, 0)?;
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let special = match kind {
            tar::EntryType::Char => Some(SFlag::S_IFCHR),
            tar::EntryType::Block => Some(SFlag::S_IFBLK),
            tar::EntryType::Fifo => Some(SFlag::S_IFIFO),
            _ => None,
        };
        if let Some(flag) = special {
            inside(dest, &parent)?;
            std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
            let target = parent.join(&name);
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let mode = header.mode().unwrap_or(0o644);
            let _ = std::fs::remove_file(&target);
            mknod(&target, flag, major, minor)?;
            let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
            let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
            std::os::unix::fs::lchown(&target, uid, gid).map_err(io("chown", &target))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io("chmod", &target))?;
            continue;
        }
        entry.unpack_in(dest).map_err(|e| {
            // tar's message names the file; the cause is in its source.
            let cause = std::error::Error::source(&e).map(|s| s.to_string());
            let cause = cause.unwrap_or_else(|| e.to_string());
            ImageError::Format(format!("unpacking {}: {cause}", path.display()))
        })?;
    }
    Ok(())
}

/// `path` without `.`/`..`/root components (never above the layer's root).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Refuses a directory that resolves (through symlinks the layer made) outside `dest`.
fn inside(dest: &Path, dir: &Path) -> Result<()> {
    let mut existing = dir.to_path_buf();
    while !existing.exists() {
        if !existing.pop() {
            break;
        }
    }
    let real = existing
        .canonicalize()
        .map_err(io("resolving", &existing))?;
    let root = dest.canonicalize().map_err(io("resolving", dest))?;
    if real.starts_with(&root) {
        Ok(())
    } else {
        Err(ImageError::Format(format!(
            "layer entry {} escapes the layer",
            dir.display()
        )))
    }
}

fn mknod(path: &Path, kind: SFlag, major: u32, minor: u32) -> Result<()> {
    let dev = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(0o600), dev)
        .map_err(|e| io("mknod", path)(std::io::Error::from(e)))
}

/// Bytes and inodes under `dir` (hard links counted once per directory walk).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            inodes += 1;
            bytes += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// Mounts `layers` (lowest first) under `upper` at `target`: a container's root.
pub fn mount_rootfs(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    if layers.is_empty() {
        return Err(ImageError::Format("the image has no layers".into()));
    }
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| io("mounting overlay at", target)(std::io::Error::from(e)))
}

/// Unmounts `target` if something is mounted there (detaching a busy mount).
pub fn unmount(target: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
