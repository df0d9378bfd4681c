//! Pod volumes, set up on the node before the containers start and bind-mounted into
//! them through CRI mounts: emptyDir (a directory, or a tmpfs with `medium: Memory`
//! and its `sizeLimit`), hostPath (with its `type` checks and creation), configMap,
//! secret, downwardAPI and projected (files written as upstream's atomic writer does:
//! a timestamped directory, `..data` pointing at it, each file a link through `..data`,
//! so a running container sees an update switch at once), and persistentVolumeClaim
//! (the bound PersistentVolume's hostPath or local path); projected service account
//! tokens come from `tokens.rs`. Everything lives under
//! `<root>/pods/<uid>/volumes/` and goes when the pod does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::Api;

/// Where a pod's volumes are on the node, by volume name, and whether containers may
/// only read them (the kubelet's own files: configMap, secret, downwardAPI, projected).
pub type Prepared = HashMap<String, (PathBuf, bool)>;

/// A volume name is a DNS-1123 label: it becomes a directory name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// Gives a volume to the pod's fsGroup as upstream's `SetVolumeOwnership` does: every
/// file and directory (links not followed) gets the group, group read (and write unless
/// `read_only`), directories the setgid bit so new files inherit the group. Only ever
/// run where no container can write (a new emptyDir before its containers start, the
/// kubelet's own files before `..data` switches to them), so nothing can be swapped for
/// a link under the walk.
fn set_ownership(dir: &Path, gid: u32, read_only: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mask = if read_only { 0o440 } else { 0o660 };
    let meta = std::fs::symlink_metadata(dir)?;
    std::os::unix::fs::lchown(dir, None, Some(gid))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mut mode = meta.mode() & 0o7777 | mask;
    if meta.is_dir() {
        mode |= 0o2000 | 0o110;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            set_ownership(&entry?.path(), gid, read_only)?;
        }
    }
    Ok(())
}

/// Sets up (or refreshes) every volume of the pod; why one cannot be, otherwise.
pub async fn prepare(client: &kube::Client, root: &Path, pod: &Pod) -> Result<Prepared, String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let base = pod_dir(root, &uid).join("volumes");
    let mut prepared = Prepared::new();
    // fsGroup owns emptyDirs and the kubelet's own files (not host paths or PVs).
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.fs_group)
        .map(|group| u32::try_from(group).map_err(|_| format!("fsGroup {group} is out of range")))
        .transpose()?;
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if !valid_name(&volume.name) {
            return Err(format!(
                "volume name {:?} must be a DNS-1123 label",
                volume.name
            ));
        }
        let path = prepare_one(client, &base, &namespace, pod, volume, fs_group)
            .await
            .map_err(|e| {
                format!(
                    "MountVolume.SetUp failed for volume \"{}\": {e}",
                    volume.name
                )
            })?;
        let files = volume.empty_dir.is_none()
            && volume.host_path.is_none()
            && volume.persistent_volume_claim.is_none();
        prepared.insert(volume.name.clone(), (path, files));
    }
    Ok(prepared)
}

async fn prepare_one(
    client: &kube::Client,
    base: &Path,
    namespace: &str,
    pod: &Pod,
    volume: &Volume,
    fs_group: Option<u32>,
) -> Result<PathBuf, String> {
    let io = |e: std::io::Error| e.to_string();
    if let Some(empty) = &volume.empty_dir {
        let dir = base.join("kubernetes.io~empty-dir").join(&volume.name);
        let fresh = !dir.exists();
        if fresh {
            std::fs::create_dir_all(&dir).map_err(io)?;
            set_mode(&dir, 0o777)?;
        }
        if empty.medium.as_deref() == Some("Memory") && !is_mount_point(&dir) {
            let size = empty
                .size_limit
                .as_ref()
                .and_then(|q| skiff_api::quantity::value(&q.0))
                .map(|bytes| format!(",size={bytes}"))
                .unwrap_or_default();
            let options = format!("mode=1777{size}");
            nix::mount::mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))?;
        }
        // Once, while it is new and empty (upstream sets it up once per pod).
        if let Some(gid) = fs_group
            && fresh
        {
            set_ownership(&dir, gid, false)
                .map_err(|e| format!("setting its ownership to fsGroup {gid}: {e}"))?;
        }
        return Ok(dir);
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        check_host_path(&path, host.type_.as_deref().unwrap_or(""))?;
        return Ok(path);
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        let pvc = claims
            .get(&claim.claim_name)
            .await
            .map_err(|e| format!("persistentvolumeclaim \"{}\": {e}", claim.claim_name))?;
        let bound = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                format!(
                    "persistentvolumeclaim \"{}\" is not bound",
                    claim.claim_name
                )
            })?;
        let pv = Api::<PersistentVolume>::all(client.clone())
            .get(&bound)
            .await
            .map_err(|e| format!("persistentvolume \"{bound}\": {e}"))?;
        // The volume must be bound to this very claim.
        let claim_uid = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.clone());
        if claim_uid.is_none() || claim_uid != pvc.metadata.uid {
            return Err(format!(
                "persistentvolume \"{bound}\" has a claimRef that does not match persistentvolumeclaim \"{}\"",
                claim.claim_name
            ));
        }
        let spec = pv.spec.unwrap_or_default();
        let path = spec
            .host_path
            .map(|h| h.path)
            .or(spec.local.map(|l| l.path))
            .ok_or_else(|| format!("persistentvolume \"{bound}\" is neither hostPath nor local"))?;
        let path = PathBuf::from(path);
        if !path.exists() {
            std::fs::create_dir_all(&path).map_err(io)?;
        }
        return Ok(path);
    }
    // The rest are files the kubelet writes.
    let (kind, files) = if let Some(source) = &volume.config_map {
        let data = config_map(client, namespace, &source.name, source.optional).await?;
        (
            "configmap",
            select(
                &data,
                source.items.as_deref(),
                source.default_mode,
                &source.name,
                source.optional,
            )?,
        )
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let data = secret(client, namespace, &name, source.optional).await?;
        (
            "secret",
            select(
                &data,
                source.items.as_deref(),
                source.default_mode.or(Some(0o644)),
                &name,
                source.optional,
            )?,
        )
    } else if let Some(source) = &volume.downward_api {
        (
            "downward-api",
            downward(
                pod,
                source.items.as_deref().unwrap_or_default(),
                source.default_mode,
            )?,
        )
    } else if let Some(source) = &volume.projected {
        let mut files = BTreeMap::new();
        for part in source.sources.iter().flatten() {
            if let Some(cm) = &part.config_map {
                let data = config_map(client, namespace, &cm.name, cm.optional).await?;
                files.extend(select(
                    &data,
                    cm.items.as_deref(),
                    source.default_mode,
                    &cm.name,
                    cm.optional,
                )?);
            }
            if let Some(s) = &part.secret {
                let data = secret(client, namespace, &s.name, s.optional).await?;
                files.extend(select(
                    &data,
                    s.items.as_deref(),
                    source.default_mode,
                    &s.name,
                    s.optional,
                )?);
            }
            if let Some(d) = &part.downward_api {
                files.extend(downward(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    source.default_mode,
                )?);
            }
            if let Some(t) = &part.service_account_token {
                let token = crate::tokens::token(client, pod, t).await?;
                let mode = u32::try_from(source.default_mode.unwrap_or(0o644)).unwrap_or(0o644);
                files.insert(t.path.clone(), (token.into_bytes(), mode));
            }
        }
        ("projected", files)
    } else {
        return Err("this volume type is not supported by skiff's kubelet yet".into());
    };
    let dir = base
        .join(format!("kubernetes.io~{kind}"))
        .join(&volume.name);
    // Secrets never touch the disk (upstream backs them with memory too).
    if matches!(kind, "secret" | "projected") && !is_mount_point(&dir) {
        std::fs::create_dir_all(&dir).map_err(io)?;
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))?;
    }
    write_atomically(&dir, &files, fs_group)?;
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn is_mount_point(dir: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = dir.display().to_string();
    text.lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// hostPath's `type`: what must already be there, or what to create.
fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path);
    let is = |check: &dyn Fn(&std::fs::Metadata) -> bool| meta.as_ref().is_ok_and(check);
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if !path.exists() => {
            std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
            set_mode(path, 0o755)
        }
        "DirectoryOrCreate" if is(&|m| m.is_dir()) => Ok(()),
        // As upstream: the file, not its directory.
        "FileOrCreate" if !path.exists() => {
            std::fs::File::create(path).map_err(|e| e.to_string())?;
            set_mode(path, 0o644)
        }
        "FileOrCreate" if is(&|m| m.is_file()) => Ok(()),
        "Directory" if is(&|m| m.is_dir()) => Ok(()),
        "File" if is(&|m| m.is_file()) => Ok(()),
        "Socket" if is(&|m| m.file_type().is_socket()) => Ok(()),
        "CharDevice" if is(&|m| m.file_type().is_char_device()) => Ok(()),
        "BlockDevice" if is(&|m| m.file_type().is_block_device()) => Ok(()),
        other => Err(format!(
            "hostPath type check failed: {} is not a {other}",
            path.display()
        )),
    }
}

/// A ConfigMap's data (binaryData too); `None` for a missing optional one.
async fn config_map(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(Some(data))
        }
        None if optional == Some(true) => Ok(None),
        None => Err(format!("configmap \"{name}\" not found")),
    }
}

async fn secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(s) => Ok(Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        )),
        None if optional == Some(true) => Ok(None),
        None => Err(format!("secret \"{name}\" not found")),
    }
}

/// The files of a ConfigMap or Secret: every key, or the `items` chosen (path, mode).
fn select(
    data: &Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, String> {
    let mode = |m: Option<i32>| u32::try_from(m.or(default_mode).unwrap_or(0o644)).unwrap_or(0o644);
    let Some(data) = data else {
        return Ok(BTreeMap::new());
    };
    let mut files = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.get(&item.key) {
                    Some(bytes) => {
                        files.insert(item.path.clone(), (bytes.clone(), mode(item.mode)));
                    }
                    None if optional == Some(true) => {}
                    None => {
                        return Err(format!(
                            "configmap or secret \"{name}\" has no key \"{}\"",
                            item.key
                        ));
                    }
                }
            }
        }
        _ => {
            for (key, bytes) in data {
                files.insert(key.clone(), (bytes.clone(), mode(None)));
            }
        }
    }
    Ok(files)
}

/// downwardAPI files: the pod's fields and labels/annotations (`key="value"` lines).
fn downward(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, String> {
    let map_text = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut files = BTreeMap::new();
    for item in items {
        let Some(field) = &item.field_ref else {
            // resourceFieldRef needs a container; written empty rather than wrong.
            files.insert(item.path.clone(), (Vec::new(), 0o644));
            continue;
        };
        let meta = &pod.metadata;
        let text = match field.field_path.as_str() {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => map_text(&meta.labels),
            "metadata.annotations" => map_text(&meta.annotations),
            other => crate::spec::metadata_key(pod, other)
                .ok_or_else(|| format!("unsupported fieldPath {other:?}"))?,
        };
        let mode = u32::try_from(item.mode.or(default_mode).unwrap_or(0o644)).unwrap_or(0o644);
        files.insert(item.path.clone(), (text.into_bytes(), mode));
    }
    Ok(files)
}

/// Writes `files` as upstream's AtomicWriter: a fresh `..<time>` directory, `..data`
/// switched to it with one rename, a link per top-level name through `..data`, and the
/// previous directory removed. Nothing is rewritten when nothing changed.
fn write_atomically(
    dir: &Path,
    files: &BTreeMap<String, (Vec<u8>, u32)>,
    fs_group: Option<u32>,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let data = dir.join("..data");
    // `..data` names a `..<stamp>` directory beside it; anything else is not ours.
    let current = std::fs::read_link(&data)
        .ok()
        .filter(|t| {
            let t = t.to_string_lossy();
            t.starts_with("..") && !t.contains('/') && t != ".." && t != "..data"
        })
        .map(|t| dir.join(t));
    if let Some(current) = &current
        && files.iter().all(|(path, (bytes, _))| {
            std::fs::read(current.join(path)).is_ok_and(|old| old == *bytes)
        })
        && count_files(current) == files.len()
    {
        return Ok(());
    }
    for path in files.keys() {
        if path.starts_with('/') || path.split('/').any(|p| p == ".." || p.starts_with("..")) {
            return Err(format!("invalid path {path:?}"));
        }
    }
    let stamp = format!("..{}", crate::status_now_nanos());
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh).map_err(io)?;
    for (path, (bytes, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&target, bytes).map_err(io)?;
        set_mode(&target, *mode)?;
    }
    // The group owns the files before containers see them.
    if let Some(gid) = fs_group {
        set_ownership(&fresh, gid, true).map_err(io)?;
        std::os::unix::fs::lchown(dir, None, Some(gid)).map_err(io)?;
    }
    let link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&stamp, &link).map_err(io)?;
    std::fs::rename(&link, &data).map_err(io)?;
    // Top-level names link through ..data; stale ones go.
    let tops: std::collections::BTreeSet<&str> =
        files.keys().filter_map(|p| p.split('/').next()).collect();
    for top in &tops {
        let entry = dir.join(top);
        if std::fs::symlink_metadata(&entry).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &entry).map_err(io)?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !tops.contains(name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(current) = current {
        let _ = std::fs::remove_dir_all(current);
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        // Never through a link.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            count += count_files(&path);
        } else {
            count += 1;
        }
    }
    count
}

/// The CRI mounts of one container.
pub fn mounts(
    container: &k8s_openapi::api::core::v1::Container,
    prepared: &Prepared,
) -> Result<Vec<cri::Mount>, String> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let (base, read_only) = prepared
            .get(&mount.name)
            .ok_or_else(|| format!("volumeMount {:?}: no volume of that name", mount.name))?;
        let host = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.starts_with('/') || sub.split('/').any(|p| p == "..") => {
                return Err(format!(
                    "subPath {sub:?} must be a relative path inside the volume"
                ));
            }
            Some(sub) => {
                // The path, through whatever links the volume holds, must stay in it.
                let root = base.canonicalize().map_err(|e| e.to_string())?;
                let path = base.join(sub);
                let inside = |p: &Path| p.canonicalize().is_ok_and(|c| c.starts_with(&root));
                let existing = path.ancestors().find(|p| p.exists()).unwrap_or(base);
                if !inside(existing) {
                    return Err(format!("subPath {sub:?} leaves the volume"));
                }
                if !path.exists() {
                    std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
                }
                if !inside(&path) {
                    return Err(format!("subPath {sub:?} leaves the volume"));
                }
                path
            }
            None => base.clone(),
        };
        mounts.push(cri::Mount {
            container_path: mount.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: *read_only || mount.read_only == Some(true),
            propagation: match mount.mount_propagation.as_deref() {
                Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer as i32,
                Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional as i32,
                _ => cri::MountPropagation::PropagationPrivate as i32,
            },
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// Removes a pod's volumes (tmpfs unmounted first, host paths left alone).
pub fn remove(root: &Path, uid: &str) {
    crate::tokens::forget(uid);
    let dir = pod_dir(root, uid);
    if !dir.exists() {
        return;
    }
    let wanted = dir.display().to_string();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in text.lines().filter_map(|l| l.split(' ').nth(4)) {
        if point.starts_with(&wanted) {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pod directories of pods the kubelet no longer has (made before `listed_at`).
pub fn remove_orphans(
    root: &Path,
    wanted: &std::collections::HashSet<String>,
    listed_at: std::time::SystemTime,
) {
    for entry in std::fs::read_dir(root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let uid = entry.file_name().to_string_lossy().to_string();
        // Made before the pods were listed (a pod that came since is no orphan).
        let older = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < listed_at);
        if !wanted.contains(&uid) && older {
            remove(root, &uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, (Vec<u8>, u32)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644)))
            .collect()
    }

    #[test]
    fn names_must_be_labels() {
        assert!(valid_name("cache-1"));
        for bad in ["", "../../etc", "Upper", "-x", "a/b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn atomic_writes_switch_data_and_never_follow_a_planted_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volume = dir.path().join("vol");
        write_atomically(&volume, &files(&[("a", "1"), ("b", "2")]), None).expect("write");
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "1");
        write_atomically(&volume, &files(&[("a", "3")]), None).expect("update");
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "3");
        assert!(!volume.join("b").exists(), "a key that went is gone");
        // A container that can write the volume points ..data elsewhere: the kubelet
        // must not remove what it points at.
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(&victim).expect("victim");
        std::fs::write(victim.join("keep"), "x").expect("keep");
        std::fs::remove_file(volume.join("..data")).expect("unlink");
        std::os::unix::fs::symlink("../victim", volume.join("..data")).expect("plant");
        write_atomically(&volume, &files(&[("a", "4")]), None).expect("rewrite");
        assert!(victim.join("keep").exists());
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "4");
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volume = dir.path().join("vol");
        std::fs::create_dir_all(&volume).expect("vol");
        std::os::unix::fs::symlink("/", volume.join("escape")).expect("link");
        let prepared: Prepared = [("v".to_string(), (volume.clone(), false))].into();
        let container = |sub: &str| {
            serde_json::from_value::<k8s_openapi::api::core::v1::Container>(serde_json::json!({
                "name": "c",
                "volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": sub}],
            }))
            .expect("container")
        };
        let inside = mounts(&container("data/deep"), &prepared).expect("inside");
        assert_eq!(
            inside[0].host_path,
            volume.join("data/deep").display().to_string()
        );
        for bad in ["escape", "escape/etc", "../x"] {
            assert!(mounts(&container(bad), &prepared).is_err(), "{bad}");
        }
        assert!(!Path::new("/etc/deep-skiff-test").exists());
    }
}
