//! Pod volumes, set up on the node before the containers start and bind-mounted into
//! them through CRI mounts: emptyDir (a directory, or a tmpfs with `medium: Memory`
//! and its `sizeLimit`), hostPath (with its `type` checks and creation), configMap,
//! secret, downwardAPI and projected (files written as upstream's atomic writer does:
//! a timestamped directory, `..data` pointing at it, each file a link through `..data`,
//! so a running container sees an update switch at once), and persistentVolumeClaim
//! (the bound PersistentVolume's hostPath or local path). Everything lives under
//! `<root>/pods/<uid>/volumes/` and goes when the pod does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::Api;

/// Where a pod's volumes are on the node, by volume name.
pub type Prepared = HashMap<String, PathBuf>;

pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// Sets up (or refreshes) every volume of the pod; why one cannot be, otherwise.
pub async fn prepare(client: &kube::Client, root: &Path, pod: &Pod) -> Result<Prepared, String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let base = pod_dir(root, &uid).join("volumes");
    let mut prepared = Prepared::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(client, &base, &namespace, pod, volume)
            .await
            .map_err(|e| {
                format!(
                    "MountVolume.SetUp failed for volume \"{}\": {e}",
                    volume.name
                )
            })?;
        prepared.insert(volume.name.clone(), path);
    }
    Ok(prepared)
}

async fn prepare_one(
    client: &kube::Client,
    base: &Path,
    namespace: &str,
    pod: &Pod,
    volume: &Volume,
) -> Result<PathBuf, String> {
    let io = |e: std::io::Error| e.to_string();
    if let Some(empty) = &volume.empty_dir {
        let dir = base.join("kubernetes.io~empty-dir").join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(io)?;
        set_mode(&dir, 0o777)?;
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
            // serviceAccountToken: the API server cannot issue tokens yet (issue 8).
        }
        ("projected", files)
    } else {
        return Err("this volume type is not supported by skiff's kubelet yet".into());
    };
    let dir = base
        .join(format!("kubernetes.io~{kind}"))
        .join(&volume.name);
    write_atomically(&dir, &files)?;
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
        "DirectoryOrCreate" => {
            if !path.exists() {
                std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
                set_mode(path, 0o755)?;
            }
            Ok(())
        }
        "FileOrCreate" => {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::File::create(path).map_err(|e| e.to_string())?;
                set_mode(path, 0o644)?;
            }
            Ok(())
        }
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
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
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
fn write_atomically(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let data = dir.join("..data");
    let current = std::fs::read_link(&data).ok().map(|t| dir.join(t));
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
        if path.is_dir() {
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
        let base = prepared
            .get(&mount.name)
            .ok_or_else(|| format!("volumeMount {:?}: no volume of that name", mount.name))?;
        let host = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.starts_with('/') || sub.split('/').any(|p| p == "..") => {
                return Err(format!(
                    "subPath {sub:?} must be a relative path inside the volume"
                ));
            }
            Some(sub) => {
                let path = base.join(sub);
                if !path.exists() {
                    std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
                }
                path
            }
            None => base.clone(),
        };
        mounts.push(cri::Mount {
            container_path: mount.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: mount.read_only == Some(true),
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

/// Pod directories of pods the kubelet no longer has.
pub fn remove_orphans(root: &Path, wanted: &std::collections::HashSet<String>) {
    for entry in std::fs::read_dir(root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let uid = entry.file_name().to_string_lossy().to_string();
        if !wanted.contains(&uid) {
            remove(root, &uid);
        }
    }
}
