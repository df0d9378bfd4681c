//! The OCI runtime spec (`config.json`) of a container: the CRI request merged with the
//! image's config the way containerd's CRI plugin does it (Docker's entrypoint/cmd
//! rules, image env under the request's, the image user unless the request names one),
//! on top of the defaults every container gets: containerd's capability set, masked
//! and read-only /proc paths, a private /dev, the sandbox's hostname, hosts and
//! resolv.conf files, and the sandbox's namespaces joined by path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, MountPropagation, NamespaceMode, PodSandboxConfig};
use serde_json::{Value, json};

/// Capabilities a container gets unless it is privileged (containerd's and Docker's).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability this kernel knows (for privileged containers and "ALL").
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths hidden from unprivileged containers (containerd's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A request the spec cannot be built from; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What a container's spec is made of besides the CRI request.
pub struct Input<'a> {
    pub config: &'a ContainerConfig,
    pub sandbox: &'a PodSandboxConfig,
    /// The sandbox's directory: `ns/`, `hosts`, `resolv.conf`, `hostname`, `shm/`.
    pub sandbox_dir: &'a Path,
    pub host_network: bool,
    /// The image config's `config` object (Entrypoint, Cmd, Env, WorkingDir, User).
    pub image: &'a Value,
    /// The mounted root filesystem (for the image's /etc/passwd and /etc/group).
    pub rootfs: &'a Path,
    pub cgroups_path: String,
    /// This process's oom_score_adj: a container may not ask for less (no
    /// CAP_SYS_RESOURCE here; containerd's `restrict_oom_score_adj`).
    pub min_oom_score_adj: i64,
    /// Whether the memory controller accounts swap (memory.memsw.*): only then is swap
    /// limited with memory, as containerd does.
    pub swap_accounting: bool,
    /// The process of the container whose PID namespace a TARGET mode joins.
    pub target_pid: Option<i32>,
    /// The pod's shared PID namespace (POD mode), when the sandbox has one.
    pub pod_pid_namespace: Option<PathBuf>,
}

/// The uid, gid and additional groups a container runs as.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The process's argv: Docker's rules for command (entrypoint) and args (cmd).
pub fn argv(config: &ContainerConfig, image: &Value) -> Result<Vec<String>, Invalid> {
    let argv = if config.command.is_empty() {
        let mut argv = strings(&image["Entrypoint"]);
        if config.args.is_empty() {
            argv.extend(strings(&image["Cmd"]));
        } else {
            argv.extend(config.args.iter().cloned());
        }
        argv
    } else {
        let mut argv = config.command.clone();
        argv.extend(config.args.iter().cloned());
        argv
    };
    if argv.is_empty() {
        return Err(Invalid(
            "no command specified: the request has no command or args and the image no Entrypoint or Cmd".into(),
        ));
    }
    Ok(argv)
}

/// The environment: the image's, then the request's (which wins), with a PATH.
fn environment(config: &ContainerConfig, image: &Value, hostname: Option<&str>) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        if let Some(slot) = env.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value.to_string();
        } else {
            env.push((key.to_string(), value.to_string()));
        }
    };
    for entry in strings(&image["Env"]) {
        let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
        set(k, v);
    }
    // As containerd: HOSTNAME is the pod's, unless the request sets it.
    if let Some(hostname) = hostname.filter(|h| !h.is_empty()) {
        set("HOSTNAME", hostname);
    }
    // As containerd: a terminal is an xterm, unless the request says otherwise.
    if config.tty {
        set("TERM", "xterm");
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

/// Reads one of the image's account files (regular files only: a symlink could point
/// anywhere on the host).
fn account_file(rootfs: &Path, name: &str) -> String {
    let etc = rootfs.join("etc");
    if !etc.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return String::new();
    }
    let path = etc.join(name);
    match path.symlink_metadata() {
        Ok(meta) if meta.is_file() && meta.len() < (4 << 20) => {
            std::fs::read_to_string(&path).unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// A user name or number, looked up in the image's /etc/passwd.
fn passwd(rootfs: &Path, user: &str) -> Option<(u32, u32, String)> {
    for line in account_file(rootfs, "passwd").lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            continue;
        }
        if fields[0] == user || fields[2] == user {
            let uid = fields[2].parse().ok()?;
            let gid = fields[3].parse().ok()?;
            return Some((uid, gid, fields[0].to_string()));
        }
    }
    None
}

fn group_id(rootfs: &Path, group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    account_file(rootfs, "group").lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == group)
            .then(|| fields[2].parse().ok())
            .flatten()
    })
}

/// The groups /etc/group lists `name` in.
fn member_of(rootfs: &Path, name: &str) -> Vec<u32> {
    account_file(rootfs, "group")
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 4 && fields[3].split(',').any(|m| m == name))
                .then(|| fields[2].parse().ok())
                .flatten()
        })
        .collect()
}

/// Who the container runs as: the request's run_as_user/run_as_username/run_as_group,
/// else the image's `User` ("name", "uid", "name:group", "uid:gid").
pub fn user(config: &ContainerConfig, image: &Value, rootfs: &Path) -> Result<User, Invalid> {
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let image_user = image["User"].as_str().unwrap_or_default();
    let (image_name, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let requested_uid = security
        .and_then(|s| s.run_as_user.as_ref())
        .map(|u| u.value);
    let requested_name = security
        .map(|s| s.run_as_username.as_str())
        .filter(|n| !n.is_empty());
    let (uid, mut gid, name) = if let Some(uid) = requested_uid {
        let uid = u32::try_from(uid).map_err(|_| {
            Invalid(format!(
                "linux.security_context.run_as_user: {uid} is not a valid uid"
            ))
        })?;
        match passwd(rootfs, &uid.to_string()) {
            Some((_, gid, name)) => (uid, gid, Some(name)),
            None => (uid, 0, None),
        }
    } else {
        let wanted = requested_name.unwrap_or(image_name);
        if wanted.is_empty() {
            (0, 0, passwd(rootfs, "0").map(|(_, _, n)| n))
        } else if let Some((uid, gid, name)) = passwd(rootfs, wanted) {
            (uid, gid, Some(name))
        } else if let Ok(uid) = wanted.parse::<u32>() {
            (uid, 0, None)
        } else {
            return Err(Invalid(format!(
                "user {wanted:?} is not in the image's /etc/passwd"
            )));
        }
    };
    if requested_uid.is_none()
        && requested_name.is_none()
        && let Some(group) = image_group.filter(|g| !g.is_empty())
    {
        gid = group_id(rootfs, group)
            .ok_or_else(|| Invalid(format!("group {group:?} is not in the image's /etc/group")))?;
    }
    if let Some(group) = security.and_then(|s| s.run_as_group.as_ref()) {
        gid = u32::try_from(group.value).map_err(|_| {
            Invalid(format!(
                "linux.security_context.run_as_group: {} is not a valid gid",
                group.value
            ))
        })?;
    }
    let mut additional: Vec<u32> = name.map(|n| member_of(rootfs, &n)).unwrap_or_default();
    for group in security
        .map(|s| s.supplemental_groups.as_slice())
        .unwrap_or(&[])
    {
        let group = u32::try_from(*group).map_err(|_| {
            Invalid(format!(
                "linux.security_context.supplemental_groups: {group} is not a valid gid"
            ))
        })?;
        additional.push(group);
    }
    additional.sort_unstable();
    additional.dedup();
    additional.retain(|g| *g != gid);
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

fn capability_name(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The capability set: defaults (or all when privileged), plus adds, minus drops.
fn capabilities(config: &ContainerConfig, privileged: bool) -> Vec<String> {
    let mut caps: Vec<String> = if privileged {
        ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    let requested = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.capabilities.as_ref());
    // containerd's order: "ALL" in add, then "ALL" in drop, then the named adds,
    // then the named drops; so drop ALL + add X leaves exactly X.
    if let Some(requested) = requested {
        let all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        if all(&requested.add_capabilities) {
            caps = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        }
        if all(&requested.drop_capabilities) {
            caps.clear();
        }
        for add in &requested.add_capabilities {
            let add = capability_name(add);
            if add != "CAP_ALL" && !caps.contains(&add) {
                caps.push(add);
            }
        }
        for drop in &requested.drop_capabilities {
            let drop = capability_name(drop);
            caps.retain(|c| *c != drop);
        }
    }
    caps
}

fn bind(destination: &str, source: &Path, options: &[&str]) -> Value {
    json!({"destination": destination, "type": "bind", "source": source, "options": options})
}

/// The OCI `linux.resources` of a CRI request's resources (memory and CPU; devices
/// are the caller's), for the spec and for `runc update`.
pub fn resources_of(
    resources: &k8s_cri::v1::LinuxContainerResources,
    swap_accounting: bool,
) -> serde_json::Map<String, Value> {
    let mut cgroup = serde_json::Map::new();
    let mut memory = serde_json::Map::new();
    if resources.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), json!(resources.memory_limit_in_bytes));
        // Without an explicit swap limit, no swap beyond the memory limit (kubelet's
        // default on cgroup v1 with swap off).
        let swap = if resources.memory_swap_limit_in_bytes > 0 {
            resources.memory_swap_limit_in_bytes
        } else {
            resources.memory_limit_in_bytes
        };
        if swap_accounting {
            memory.insert("swap".into(), json!(swap));
        }
    }
    if !memory.is_empty() {
        cgroup.insert("memory".into(), Value::Object(memory));
    }
    let mut cpu = serde_json::Map::new();
    if resources.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(resources.cpu_shares));
    }
    if resources.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(resources.cpu_quota));
    }
    if resources.cpu_period > 0 {
        cpu.insert("period".into(), json!(resources.cpu_period));
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(resources.cpuset_cpus));
    }
    if !resources.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(resources.cpuset_mems));
    }
    if !cpu.is_empty() {
        cgroup.insert("cpu".into(), Value::Object(cpu));
    }
    cgroup
}

/// The whole spec.
pub fn spec(input: &Input) -> Result<Value, Invalid> {
    let config = input.config;
    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let resources = linux.resources.clone().unwrap_or_default();
    let namespaces = security.namespace_options.clone().unwrap_or_default();
    let privileged = security.privileged;
    let user = user(config, input.image, input.rootfs)?;
    let args = argv(config, input.image)?;
    let cwd = Some(config.working_dir.as_str())
        .filter(|w| !w.is_empty())
        .or(input.image["WorkingDir"].as_str().filter(|w| !w.is_empty()))
        .unwrap_or("/");
    if !cwd.starts_with('/') {
        return Err(Invalid(format!(
            "working_dir: {cwd:?} must be an absolute path"
        )));
    }
    let caps = capabilities(config, privileged);
    let oom_score_adj = resources.oom_score_adj.max(input.min_oom_score_adj);

    let sandbox = input.sandbox_dir;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
    ];
    let ipc_host = namespaces.ipc == NamespaceMode::Node as i32;
    let shm = if ipc_host {
        PathBuf::from("/dev/shm")
    } else {
        sandbox.join("shm")
    };
    let requested: Vec<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for (destination, source) in [
        ("/dev/shm", shm),
        ("/etc/hosts", sandbox.join("hosts")),
        ("/etc/resolv.conf", sandbox.join("resolv.conf")),
        ("/etc/hostname", sandbox.join("hostname")),
    ] {
        if !requested.contains(&destination) {
            let mut options = vec!["rbind", "rprivate"];
            if security.readonly_rootfs && destination != "/dev/shm" {
                options.push("ro");
            }
            mounts.push(bind(destination, &source, &options));
        }
    }
    let mut rootfs_propagation: Option<&str> = None;
    for mount in &config.mounts {
        if !mount.container_path.starts_with('/') {
            return Err(Invalid(format!(
                "mounts: container_path {:?} must be absolute",
                mount.container_path
            )));
        }
        let source = Path::new(&mount.host_path);
        if !source.is_absolute() {
            return Err(Invalid(format!(
                "mounts: host_path {:?} must be absolute",
                mount.host_path
            )));
        }
        // As containerd does: a missing host path becomes a directory.
        if !source.exists() {
            std::fs::create_dir_all(source).map_err(|e| {
                Invalid(format!(
                    "mounts: creating host_path {}: {e}",
                    source.display()
                ))
            })?;
        }
        let propagation = match MountPropagation::try_from(mount.propagation) {
            Ok(MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        };
        // The root must propagate too, or runc's private root stops the mount's events.
        match propagation {
            "rshared" => rootfs_propagation = Some("rshared"),
            "rslave" if rootfs_propagation.is_none() => rootfs_propagation = Some("rslave"),
            _ => {}
        }
        let mut options = vec!["rbind", propagation];
        if mount.readonly {
            options.push("ro");
        }
        mounts.push(bind(&mount.container_path, source, &options));
    }
    // Parents before children whatever the request's order (containerd's
    // orderedMounts): a mount at /etc must not hide /etc/resolv.conf.
    mounts.sort_by_key(|m| {
        Path::new(m["destination"].as_str().unwrap_or("/"))
            .components()
            .count()
    });

    let mut ns = vec![json!({"type": "mount"})];
    match NamespaceMode::try_from(namespaces.pid) {
        Ok(NamespaceMode::Node) => {}
        Ok(NamespaceMode::Container) => ns.push(json!({"type": "pid"})),
        // Another container's (kubectl debug --target).
        Ok(NamespaceMode::Target) => {
            let pid = input.target_pid.ok_or_else(|| {
                Invalid(format!(
                    "linux.security_context.namespace_options.target_id: container {:?} is not running",
                    namespaces.target_id
                ))
            })?;
            ns.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
        }
        _ => {
            let path = input.pod_pid_namespace.as_ref().ok_or_else(|| {
                Invalid(
                    "linux.security_context.namespace_options.pid: POD, but the pod sandbox has no shared PID namespace (its config asked for CONTAINER or NODE)".into(),
                )
            })?;
            ns.push(json!({"type": "pid", "path": path}));
        }
    }
    if !input.host_network {
        ns.push(json!({"type": "network", "path": sandbox.join("ns/net")}));
        ns.push(json!({"type": "uts", "path": sandbox.join("ns/uts")}));
    }
    if !ipc_host {
        ns.push(json!({"type": "ipc", "path": sandbox.join("ns/ipc")}));
    }

    let mut cgroup = resources_of(&resources, input.swap_accounting);
    let mut devices = Vec::new();
    let mut device_rules = vec![json!({"allow": privileged, "access": "rwm"})];
    for device in &config.devices {
        let host = Path::new(&device.host_path);
        let meta = std::fs::metadata(host)
            .map_err(|e| Invalid(format!("devices: {}: {e}", device.host_path)))?;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let kind = if meta.file_type().is_char_device() {
            "c"
        } else if meta.file_type().is_block_device() {
            "b"
        } else {
            return Err(Invalid(format!(
                "devices: {} is not a device",
                device.host_path
            )));
        };
        let rdev = meta.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let access = if device.permissions.is_empty() {
            "rwm"
        } else {
            device.permissions.as_str()
        };
        devices.push(
            json!({"path": device.container_path, "type": kind, "major": major,
                            "minor": minor, "fileMode": meta.mode() & 0o777,
                            "uid": meta.uid(), "gid": meta.gid()}),
        );
        device_rules.push(json!({"allow": true, "type": kind, "major": major,
                                 "minor": minor, "access": access}));
    }
    cgroup.insert("devices".into(), Value::Array(device_rules));

    let sysctl: BTreeMap<String, String> = input
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    let masked: Vec<String> = if privileged {
        Vec::new()
    } else if security.masked_paths.is_empty() {
        MASKED_PATHS.iter().map(|p| p.to_string()).collect()
    } else {
        security.masked_paths.clone()
    };
    let readonly: Vec<String> = if privileged {
        Vec::new()
    } else if security.readonly_paths.is_empty() {
        READONLY_PATHS.iter().map(|p| p.to_string()).collect()
    } else {
        security.readonly_paths.clone()
    };
    let hostname = if input.host_network {
        None
    } else {
        Some(input.sandbox.hostname.clone())
    };
    let annotations: BTreeMap<String, String> = config.annotations.clone().into_iter().collect();

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": config.tty,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
            "args": args,
            "env": environment(config, input.image, hostname.as_deref()),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": security.no_new_privs,
            "oomScoreAdj": oom_score_adj,
        },
        "root": {"path": "rootfs", "readonly": security.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "namespaces": ns,
            "cgroupsPath": input.cgroups_path,
            "resources": cgroup,
            "devices": devices,
            "sysctl": sysctl,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    });
    if let Some(hostname) = hostname.filter(|h| !h.is_empty()) {
        spec["hostname"] = json!(hostname);
    }
    let seccomp =
        crate::seccomp::profile(security.seccomp.as_ref(), privileged, &caps).map_err(Invalid)?;
    if let Some(seccomp) = seccomp {
        spec["linux"]["seccomp"] = seccomp;
    }
    if let Some(propagation) = rootfs_propagation {
        spec["linux"]["rootfsPropagation"] = json!(propagation);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{Capability, KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext};

    fn image() -> Value {
        json!({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["PATH=/bin", "A=1"],
               "WorkingDir": "/work", "User": "app"})
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app,other\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn docker_rules_for_command_and_args() {
        let image = image();
        let mut config = ContainerConfig::default();
        assert_eq!(
            argv(&config, &image).ok(),
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        config.args = vec!["date".into()];
        assert_eq!(
            argv(&config, &image).ok(),
            Some(vec!["/bin/sh".into(), "-c".into(), "date".into()])
        );
        config.command = vec!["/bin/true".into()];
        config.args.clear();
        assert_eq!(argv(&config, &image).ok(), Some(vec!["/bin/true".into()]));
        assert!(argv(&ContainerConfig::default(), &json!({})).is_err());
    }

    #[test]
    fn request_env_overrides_the_image_and_user_comes_from_passwd() {
        let root = rootfs();
        let mut config = ContainerConfig {
            envs: vec![KeyValue {
                key: "A".into(),
                value: "2".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            environment(&config, &image(), Some("web-0")),
            vec!["PATH=/bin", "A=2", "HOSTNAME=web-0"]
        );
        assert_eq!(
            user(&config, &image(), root.path()).ok(),
            Some(User {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![10]
            })
        );
        config.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_user: Some(k8s_cri::v1::Int64Value { value: 0 }),
                supplemental_groups: vec![5],
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["KILL".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            user(&config, &image(), root.path()).ok(),
            Some(User {
                uid: 0,
                gid: 0,
                additional_gids: vec![5]
            })
        );
        let caps = capabilities(&config, false);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        let unknown = json!({"User": "nobody-here"});
        assert!(user(&ContainerConfig::default(), &unknown, root.path()).is_err());
    }
}
