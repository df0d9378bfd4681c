//! Pod sandboxes: the namespaces a pod's containers share (network, UTS, IPC, held by
//! bind mounts: see ns.rs), the network CNI puts in them, the pod's hostname, hosts and
//! resolv.conf files, a /dev/shm shared by its containers, and the pod cgroup. Stop
//! releases the network and namespaces; remove also removes the containers, the
//! directory and a pod cgroup the runtime made. Both may be called again.

use std::path::Path;
use std::sync::{Arc, Mutex};

use k8s_cri::v1::{NamespaceMode, PodSandboxConfig};
use nix::mount::MsFlags;
use prost::Message;

use crate::cni::{self, Attachment};
use crate::engine::{
    self, CONFIG, Engine, Failure, Result, SANDBOX_RECORD, Sandbox, SandboxRecord, internal, lock,
};
use crate::ns;

const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                     fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
                     ff02::2\tip6-allrouters\n";
/// /dev/shm of a pod, as Docker's and containerd's default.
const SHM_SIZE: &str = "size=65536k";

fn host_network(config: &PodSandboxConfig) -> bool {
    namespace_mode(config, |n| n.network) == NamespaceMode::Node as i32
}

fn host_ipc(config: &PodSandboxConfig) -> bool {
    namespace_mode(config, |n| n.ipc) == NamespaceMode::Node as i32
}

fn namespace_mode(
    config: &PodSandboxConfig,
    pick: impl Fn(&k8s_cri::v1::NamespaceOption) -> i32,
) -> i32 {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map_or(NamespaceMode::Pod as i32, pick)
}

/// The key that makes a sandbox's name unique (kubelet's sandbox name parts).
pub fn name_key(config: &PodSandboxConfig) -> Option<String> {
    let m = config.metadata.as_ref()?;
    Some(format!(
        "{}_{}_{}_{}",
        m.name, m.namespace, m.uid, m.attempt
    ))
}

/// Whether the namespace files are still mounted namespaces (not after a reboot, when
/// only the empty files under the data directory are left).
pub fn namespaces_intact(dir: &Path, record: &SandboxRecord) -> bool {
    if record.host_network {
        return true;
    }
    nix::sys::statfs::statfs(&dir.join("ns/net"))
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// CNI CHECK of the network a sandbox joined: whether it is still as ADD left it.
pub fn check_network(
    engine: &Engine,
    id: &str,
    dir: &Path,
    config: &PodSandboxConfig,
) -> Result<()> {
    let Some((network, result)) = joined_network(dir) else {
        return Ok(());
    };
    let netns = dir.join("ns/net");
    engine
        .settings
        .cni
        .check(&network, &attachment(config, id, &netns), result.as_ref())
        .map_err(|e| Failure::Precondition(e.to_string()))
}

/// After a reboot: nothing is left to release; the sandbox is not ready.
pub fn forget_namespaces(dir: &Path, record: &mut SandboxRecord) {
    ns::remove(&dir.join("ns"));
    let _ = crate::layers::unmount(&dir.join("shm"));
    let _ = std::fs::remove_file(dir.join("cni.json"));
    record.ready = false;
    record.network = None;
    record.cni_result = None;
    record.ips.clear();
    record.pause_pid = 0;
}

pub fn run(engine: &Engine, config: PodSandboxConfig) -> Result<String> {
    let metadata = config
        .metadata
        .clone()
        .ok_or_else(|| Failure::Invalid("config.metadata is required".into()))?;
    if metadata.name.is_empty() || metadata.namespace.is_empty() || metadata.uid.is_empty() {
        return Err(Failure::Invalid(
            "config.metadata needs a name, a namespace and a uid".into(),
        ));
    }
    let key = name_key(&config).unwrap_or_default();
    let id = crate::util::new_id();
    engine.reserve(&key, &id, "pod sandbox")?;
    let dir = engine.sandbox_dir(&id);
    let made = std::fs::create_dir_all(&dir)
        .map_err(|e| internal(format!("creating {}: {e}", dir.display())))
        .and_then(|()| set_up(engine, &id, &dir, &config));
    match made {
        Ok(record) => {
            let sandbox = Arc::new(Sandbox {
                id: id.clone(),
                config,
                dir,
                record: Mutex::new(record),
                op: Default::default(),
            });
            lock(&engine.sandboxes).insert(id.clone(), sandbox);
            Ok(id)
        }
        Err(e) => {
            release_dir(engine, &id, &dir);
            engine.release_name(&key, &id);
            Err(e)
        }
    }
}

/// Everything a sandbox is, in order; the record is written last.
fn set_up(
    engine: &Engine,
    id: &str,
    dir: &Path,
    config: &PodSandboxConfig,
) -> Result<SandboxRecord> {
    let host_network = host_network(config);
    let hostname = if host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_string())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    std::fs::write(dir.join(CONFIG), config.encode_to_vec()).map_err(internal)?;
    if !host_ipc(config) {
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(internal)?;
        nix::mount::mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=1777,{SHM_SIZE}").as_str()),
        )
        .map_err(|e| internal(format!("mounting the pod's /dev/shm: {e}")))?;
    }
    let mut kinds = Vec::new();
    if !host_network {
        kinds.extend([ns::Kind::Net, ns::Kind::Uts]);
    }
    if !host_ipc(config) {
        kinds.push(ns::Kind::Ipc);
    }
    ns::create(&dir.join("ns"), &kinds, &hostname)
        .map_err(|e| internal(format!("creating the pod's namespaces: {e}")))?;

    let mut record = SandboxRecord {
        created_at: crate::util::now_nanos(),
        ready: true,
        host_network,
        ..Default::default()
    };
    if namespace_mode(config, |n| n.pid) == NamespaceMode::Pod as i32 {
        // Containers share one PID namespace: a pause process holds it as its PID 1.
        let mut pause = ns::spawn_in_new_pid_namespace(&engine.settings.pause, dir)
            .map_err(|e| internal(format!("starting the pod's PID namespace: {e}")))?;
        record.pause_pid = i32::try_from(pause.id()).unwrap_or(0);
        record.pause_start = crate::util::start_time(record.pause_pid).unwrap_or(0);
        let _ = std::thread::Builder::new()
            .name("pause-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = pause.wait();
            });
        // Recorded now, so a later failure of this creation stops it.
        write_pause(dir, &record);
        // Containers join the namespace by this file, never by a pid that could be
        // reused once the pause process is gone.
        ns::bind(
            &format!("/proc/{}/ns/pid", record.pause_pid),
            &dir.join("ns/pid"),
        )
        .map_err(|e| internal(format!("holding the pod's PID namespace: {e}")))?;
    }
    if !host_network {
        let netns = dir.join("ns/net");
        loopback(engine, id, &netns)?;
        let network = engine
            .settings
            .cni
            .network()
            .map_err(|e| Failure::Precondition(format!("pod network is not ready: {e}")))?;
        // Recorded before ADD so a failed ADD is undone by DEL.
        record.network = Some(network.name.clone());
        write_cni_state(dir, &network, None)?;
        let result = engine
            .settings
            .cni
            .add(&network, &attachment(config, id, &netns))
            .map_err(|e| internal(e.to_string()))?;
        record.ips = cni::ips(&result);
        record.cni_result = Some(result.clone());
        write_cni_state(dir, &network, Some(&result))?;
    }

    let mut hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| HOSTS.to_string())
    } else {
        HOSTS.to_string()
    };
    if let Some(ip) = record.ips.first() {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    std::fs::write(dir.join("hosts"), hosts).map_err(internal)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n")).map_err(internal)?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(config)).map_err(internal)?;

    let parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .filter(|p| !p.is_empty());
    record.own_cgroup = parent.is_none();
    record.cgroup_parent = parent.unwrap_or_else(|| {
        format!(
            "{}/pod-{id}",
            engine.settings.cgroup_parent.trim_end_matches('/')
        )
    });
    engine::write_record(dir, SANDBOX_RECORD, &record)?;
    Ok(record)
}

/// Brings the pod's loopback interface up through CNI's loopback plugin, as containerd
/// does.
fn loopback(engine: &Engine, id: &str, netns: &Path) -> Result<()> {
    let network = cni::Network {
        name: "cni-loopback".into(),
        // The version every loopback plugin (also pre-1.0 ones) accepts, as containerd.
        cni_version: "0.3.1".into(),
        plugins: vec![serde_json::json!({"type": "loopback"})],
        disable_check: true,
    };
    let at = Attachment {
        container_id: id,
        netns,
        pod_namespace: "",
        pod_name: "",
        pod_uid: "",
        port_mappings: Vec::new(),
    };
    engine
        .settings
        .cni
        .add(&network, &at)
        .map(drop)
        .map_err(|e| Failure::Precondition(e.to_string()))
}

fn attachment<'a>(config: &'a PodSandboxConfig, id: &'a str, netns: &'a Path) -> Attachment<'a> {
    let m = config.metadata.as_ref();
    Attachment {
        container_id: id,
        netns,
        pod_namespace: m.map_or("", |m| m.namespace.as_str()),
        pod_name: m.map_or("", |m| m.name.as_str()),
        pod_uid: m.map_or("", |m| m.uid.as_str()),
        port_mappings: cni::port_mappings(config),
    }
}

/// The network name and ADD result, where an interrupted runtime finds them.
fn write_cni_state(
    dir: &Path,
    network: &cni::Network,
    result: Option<&serde_json::Value>,
) -> Result<()> {
    let state = serde_json::json!({
        "network": network.name, "cniVersion": network.cni_version,
        "plugins": network.plugins, "disableCheck": network.disable_check, "result": result,
    });
    crate::util::write_atomic(&dir.join("cni.json"), state.to_string().as_bytes()).map_err(internal)
}

/// The network a sandbox joined, as it was configured then (libcni's cached config: DEL
/// must run the plugins ADD ran, whatever the config directory holds now), and the ADD
/// result.
fn joined_network(dir: &Path) -> Option<(cni::Network, Option<serde_json::Value>)> {
    let bytes = std::fs::read(dir.join("cni.json")).ok()?;
    let state: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let network = cni::Network {
        name: state["network"].as_str()?.to_string(),
        cni_version: state["cniVersion"].as_str()?.to_string(),
        plugins: state["plugins"].as_array()?.clone(),
        disable_check: state["disableCheck"] == serde_json::json!(true),
    };
    let result = Some(state["result"].clone()).filter(|r| !r.is_null());
    Some((network, result))
}

/// resolv.conf from the CRI's DNS config, or the node's when there is none.
fn resolv_conf(config: &PodSandboxConfig) -> String {
    let Some(dns) = config
        .dns_config
        .as_ref()
        .filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
    else {
        return std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    };
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    text
}

/// Stops the sandbox's containers, then releases its network and namespaces.
pub fn stop(engine: &Engine, sandbox: &Sandbox) -> Result<()> {
    for container in engine.containers_of(&sandbox.id) {
        let _op = container.op.blocking_lock();
        crate::container::kill_now(engine, &container)?;
    }
    if let Some((network, result)) = joined_network(&sandbox.dir) {
        let netns = sandbox.dir.join("ns/net");
        // A failed DEL is the kubelet's to retry: the addresses must not leak.
        engine
            .settings
            .cni
            .del(
                &network,
                &attachment(&sandbox.config, &sandbox.id, &netns),
                result.as_ref(),
            )
            .map_err(|e| internal(e.to_string()))?;
        let _ = std::fs::remove_file(sandbox.dir.join("cni.json"));
    }
    ns::remove(&sandbox.dir.join("ns"));
    let _ = crate::layers::unmount(&sandbox.dir.join("shm"));
    let mut record = lock(&sandbox.record);
    stop_pause(&record);
    if record.ready || record.network.is_some() || record.pause_pid != 0 {
        record.pause_pid = 0;
        record.ready = false;
        record.network = None;
        record.cni_result = None;
        record.ips.clear();
        engine::write_record(&sandbox.dir, SANDBOX_RECORD, &*record)?;
    }
    Ok(())
}

pub fn remove(engine: &Engine, sandbox: &Sandbox) -> Result<()> {
    stop(engine, sandbox)?;
    for container in engine.containers_of(&sandbox.id) {
        let _op = container.op.blocking_lock();
        crate::container::remove(engine, &container)?;
    }
    let record = lock(&sandbox.record).clone();
    if record.own_cgroup {
        engine.cgroups.remove(&record.cgroup_parent);
    }
    release_dir(engine, &sandbox.id, &sandbox.dir);
    if let Some(key) = name_key(&sandbox.config) {
        engine.release_name(&key, &sandbox.id);
    }
    lock(&engine.sandboxes).remove(&sandbox.id);
    Ok(())
}

/// Unmounts what a sandbox directory may hold and removes it: a creation that failed
/// or did not finish. If CNI ADD ran (cni.json names the network), DEL releases what
/// it may have taken.
pub fn release_dir(engine: &Engine, id: &str, dir: &Path) {
    if let Some(pause) = std::fs::read(dir.join("pause.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<SandboxRecord>(&b).ok())
    {
        stop_pause(&pause);
    }
    let config: Option<PodSandboxConfig> = std::fs::read(dir.join(CONFIG))
        .ok()
        .and_then(|b| PodSandboxConfig::decode(b.as_slice()).ok());
    if let (Some((network, result)), Some(config)) = (joined_network(dir), config) {
        let netns = dir.join("ns/net");
        if let Err(e) =
            engine
                .settings
                .cni
                .del(&network, &attachment(&config, id, &netns), result.as_ref())
        {
            tracing::warn!(sandbox = %id, error = %e, "releasing the network of a failed sandbox");
        }
    }
    ns::remove(&dir.join("ns"));
    let _ = crate::layers::unmount(&dir.join("shm"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Notes the pause process where a failed creation's cleanup finds it.
fn write_pause(dir: &Path, record: &SandboxRecord) {
    if let Ok(bytes) = serde_json::to_vec(record) {
        let _ = std::fs::write(dir.join("pause.json"), bytes);
    }
}

/// Kills the process holding the pod's PID namespace (which ends every process in it).
fn stop_pause(record: &SandboxRecord) {
    if crate::util::same_process(record.pause_pid, record.pause_start) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(record.pause_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Gone (or only waiting to be reaped) before the sandbox is reported stopped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::util::same_process(record.pause_pid, record.pause_start)
            && !crate::util::is_zombie(record.pause_pid)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// The pod's shared PID namespace, if it has a live one.
pub fn pid_namespace(dir: &Path, record: &SandboxRecord) -> Option<std::path::PathBuf> {
    crate::util::same_process(record.pause_pid, record.pause_start).then(|| dir.join("ns/pid"))
}

/// Ready, and (for a shared PID namespace) its PID 1 still alive: without it the
/// namespace takes no new process, so the kubelet must make the sandbox again.
pub fn is_ready(record: &SandboxRecord) -> bool {
    record.ready
        && (record.pause_pid == 0
            || crate::util::same_process(record.pause_pid, record.pause_start))
}
