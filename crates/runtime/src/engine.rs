//! The runtime's state: sandboxes and containers, each a directory under the data
//! directory with its record (`sandbox.json`/`container.json`) and the CRI config it
//! was made from (`config.pb`, protobuf as received). The record is written last, so at
//! start a directory without one is a creation that did not finish and is undone;
//! everything else is loaded back, and running containers are found again through
//! their monitors' files. Operations here block (mounts, CNI plugins, the OCI runtime)
//! and run on the blocking pool; each object has an operation lock so a slow stop does
//! not hold up listing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cni::Cni;
use crate::images::ImageStore;
use crate::layers::Layers;

/// Why an operation failed, as the CRI reports it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Failure>;

pub fn internal(what: impl std::fmt::Display) -> Failure {
    Failure::Internal(what.to_string())
}

/// How the engine runs things: from the runtime's `Config`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub oci_runtime: PathBuf,
    pub cni: Cni,
    pub cgroup_parent: String,
    pub monitor: Vec<OsString>,
    /// The command of the process that holds a shared PID namespace.
    pub pause: Vec<OsString>,
    /// The command that waits for a detached exec (see monitor::exec_wait).
    pub exec_wait: Vec<OsString>,
}

/// A sandbox's record.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SandboxRecord {
    pub created_at: i64,
    pub ready: bool,
    pub host_network: bool,
    pub ips: Vec<String>,
    /// The pod cgroup (cgroupfs path) its containers go under.
    pub cgroup_parent: String,
    /// Whether the runtime made that cgroup (and so removes it).
    pub own_cgroup: bool,
    /// The CNI network's name and its ADD result, for DEL.
    pub network: Option<String>,
    pub cni_result: Option<serde_json::Value>,
    /// The process holding the pod's PID namespace when its containers share one
    /// (PID 1 there), and its start time.
    pub pause_pid: i32,
    pub pause_start: u64,
}

pub struct Sandbox {
    pub id: String,
    pub config: PodSandboxConfig,
    pub dir: PathBuf,
    pub record: Mutex<SandboxRecord>,
    /// Held (owned, moved into the blocking work) while an operation runs, so a
    /// cancelled request's work still excludes a retry.
    pub op: Arc<tokio::sync::Mutex<()>>,
}

/// A container's record; what its monitor wrote is read alongside.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerRecord {
    pub sandbox_id: String,
    pub image_id: String,
    pub image_name: String,
    pub created_at: i64,
    pub started_at: i64,
    pub monitor_pid: i32,
    /// The monitor's start time (clock ticks since boot, /proc/PID/stat), so a pid
    /// reused after a reboot or crash is not taken for the monitor.
    pub monitor_start: u64,
    pub pid: i32,
    pub cgroups_path: String,
    /// Set when StartContainer failed: the container never ran.
    pub start_error: Option<String>,
    /// The image's StopSignal (SIGTERM unless it names one).
    pub stop_signal: String,
    pub log_path: Option<PathBuf>,
    /// uid, gid and additional groups the process runs as.
    pub user: (i64, i64, Vec<i64>),
}

pub struct Container {
    pub id: String,
    pub config: ContainerConfig,
    pub dir: PathBuf,
    pub record: Mutex<ContainerRecord>,
    pub op: Arc<tokio::sync::Mutex<()>>,
}

pub struct Engine {
    pub settings: Settings,
    pub images: Arc<ImageStore>,
    pub layers: Layers,
    pub cgroups: crate::cgroups::Hierarchies,
    pub sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    pub containers: Mutex<HashMap<String, Arc<Container>>>,
    /// This process's oom_score_adj, the least a container may ask for.
    pub min_oom_score_adj: i64,
    /// Whether the memory cgroup accounts swap.
    pub swap_accounting: bool,
    pub cpu_samples: crate::stats::CpuSamples,
    /// Reserved names (sandbox and container name keys) and their ids: taken before a
    /// creation starts, so two concurrent requests cannot both make one name.
    pub names: Mutex<HashMap<String, String>>,
    /// Read-held while a container is being created from an image, write-held while
    /// images are removed, so removal never pulls layers from under a new container.
    pub image_use: std::sync::RwLock<()>,
}

pub const SANDBOX_RECORD: &str = "sandbox.json";
pub const CONTAINER_RECORD: &str = "container.json";
pub const CONFIG: &str = "config.pb";

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn write_record(dir: &Path, name: &str, record: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(internal)?;
    crate::util::write_atomic(&dir.join(name), &bytes)
        .map_err(|e| internal(format!("writing {}: {e}", dir.join(name).display())))
}

fn read_record<T: DeserializeOwned>(dir: &Path, name: &str) -> Option<T> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn read_config<T: Message + Default>(dir: &Path) -> Option<T> {
    let bytes = std::fs::read(dir.join(CONFIG)).ok()?;
    T::decode(bytes.as_slice()).ok()
}

impl Engine {
    pub fn open(
        settings: Settings,
        images: Arc<ImageStore>,
    ) -> std::result::Result<Engine, crate::Error> {
        let layers = Layers::open(&settings.data_dir.join("layers"))?;
        for dir in ["sandboxes", "containers"] {
            let path = settings.data_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| crate::Error::Io {
                what: "creating",
                path,
                source,
            })?;
        }
        let min_oom_score_adj = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let cgroups = crate::cgroups::Hierarchies::read();
        let swap_accounting = cgroups
            .v1_dir("memory", "/")
            .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists());
        let engine = Engine {
            cgroups,
            swap_accounting,
            cpu_samples: Default::default(),
            names: Mutex::new(HashMap::new()),
            image_use: std::sync::RwLock::new(()),
            settings,
            images,
            layers,
            sandboxes: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            min_oom_score_adj,
        };
        engine.load();
        Ok(engine)
    }

    pub fn oci_root(&self) -> PathBuf {
        self.settings.data_dir.join("oci")
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.settings.data_dir.join("sandboxes").join(id)
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.settings.data_dir.join("containers").join(id)
    }

    /// CNI GC of the configured network: the plugins release what they hold for
    /// sandboxes this runtime no longer has (lost with a reboot or a wiped directory),
    /// keeping every sandbox that joined a network and was not stopped.
    fn collect_network_garbage(&self) {
        let Ok(network) = self.settings.cni.network() else {
            return;
        };
        let valid: Vec<(String, String)> = lock(&self.sandboxes)
            .values()
            .filter(|s| s.dir.join("cni.json").exists())
            .map(|s| (s.id.clone(), crate::cni::IFNAME.to_string()))
            .collect();
        if let Err(e) = self.settings.cni.gc(&network, &valid) {
            tracing::warn!(error = %e, "CNI GC");
        }
    }

    /// Reads back what is on disk and undoes creations that did not finish.
    fn load(&self) {
        let entries = |kind: &str| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(self.settings.data_dir.join(kind))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
                .collect()
        };
        for (id, dir) in entries("sandboxes") {
            let record = read_record::<SandboxRecord>(&dir, SANDBOX_RECORD);
            let config = read_config::<PodSandboxConfig>(&dir);
            match (record, config) {
                (Some(mut record), Some(config)) => {
                    if record.ready && !crate::sandbox::namespaces_intact(&dir, &record) {
                        // The node rebooted: the namespaces and their network are gone.
                        tracing::info!(sandbox = %id, "namespaces gone (reboot?): not ready");
                        crate::sandbox::forget_namespaces(&dir, &mut record);
                        let _ = write_record(&dir, SANDBOX_RECORD, &record);
                    } else if record.ready
                        && let Err(e) = crate::sandbox::check_network(self, &id, &dir, &config)
                    {
                        // The kubelet makes the pod a new sandbox; stopping this one
                        // still releases its network.
                        tracing::warn!(sandbox = %id, error = %e, "network check failed: not ready");
                        record.ready = false;
                        let _ = write_record(&dir, SANDBOX_RECORD, &record);
                    }
                    if let Some(key) = crate::sandbox::name_key(&config) {
                        lock(&self.names).insert(key, id.clone());
                    }
                    let sandbox = Arc::new(Sandbox {
                        id: id.clone(),
                        config,
                        dir,
                        record: Mutex::new(record),
                        op: Default::default(),
                    });
                    lock(&self.sandboxes).insert(id, sandbox);
                }
                _ => {
                    tracing::info!(sandbox = %id, "undoing an unfinished sandbox creation");
                    crate::sandbox::release_dir(self, &id, &dir);
                }
            }
        }
        for (id, dir) in entries("containers") {
            let record = read_record::<ContainerRecord>(&dir, CONTAINER_RECORD);
            let config = read_config::<ContainerConfig>(&dir);
            match (record, config) {
                (Some(record), Some(config)) => {
                    if let Some(key) = crate::container::name_key(&record.sandbox_id, &config) {
                        lock(&self.names).insert(key, id.clone());
                    }
                    let container = Arc::new(Container {
                        id: id.clone(),
                        config,
                        dir,
                        record: Mutex::new(record),
                        op: Default::default(),
                    });
                    lock(&self.containers).insert(id, container);
                }
                _ => {
                    tracing::info!(container = %id, "undoing an unfinished container creation");
                    crate::container::release(self, &id, &dir);
                }
            }
        }
        self.collect_network_garbage();
        let sandboxes = lock(&self.sandboxes).len();
        let containers = lock(&self.containers).len();
        if sandboxes + containers > 0 {
            tracing::info!(sandboxes, containers, "state loaded from disk");
        }
    }

    pub fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>> {
        if id.is_empty() {
            return Err(Failure::Invalid("a pod sandbox id is required".into()));
        }
        let sandboxes = lock(&self.sandboxes);
        if let Some(sandbox) = sandboxes.get(id) {
            return Ok(sandbox.clone());
        }
        // A unique prefix will do, as crictl's users expect.
        let matching: Vec<&Arc<Sandbox>> = sandboxes
            .values()
            .filter(|s| s.id.starts_with(id))
            .collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(Failure::NotFound(format!("pod sandbox {id:?} not found"))),
        }
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        if id.is_empty() {
            return Err(Failure::Invalid("a container id is required".into()));
        }
        let containers = lock(&self.containers);
        if let Some(container) = containers.get(id) {
            return Ok(container.clone());
        }
        let matching: Vec<&Arc<Container>> = containers
            .values()
            .filter(|c| c.id.starts_with(id))
            .collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(Failure::NotFound(format!("container {id:?} not found"))),
        }
    }

    /// Reserves `key` for `id`; AlreadyExists names the holder.
    pub fn reserve(&self, key: &str, id: &str, what: &str) -> Result<()> {
        let mut names = lock(&self.names);
        if let Some(holder) = names.get(key) {
            return Err(Failure::AlreadyExists(format!(
                "the name {key} is reserved for {what} {holder}"
            )));
        }
        names.insert(key.to_string(), id.to_string());
        Ok(())
    }

    /// Releases `key` if `id` holds it.
    pub fn release_name(&self, key: &str, id: &str) {
        let mut names = lock(&self.names);
        if names.get(key).is_some_and(|holder| holder == id) {
            names.remove(key);
        }
    }

    pub fn containers_of(&self, sandbox: &str) -> Vec<Arc<Container>> {
        lock(&self.containers)
            .values()
            .filter(|c| lock(&c.record).sandbox_id == sandbox)
            .cloned()
            .collect()
    }

    /// Runs the OCI runtime with its state root; the error carries its output.
    pub fn oci(&self, args: &[&str]) -> Result<()> {
        let output = std::process::Command::new(&self.settings.oci_runtime)
            .arg("--root")
            .arg(self.oci_root())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                internal(format!(
                    "running {}: {e}",
                    self.settings.oci_runtime.display()
                ))
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(internal(format!(
                "{} {}: {}",
                self.settings.oci_runtime.display(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// Whether the OCI runtime can be run at all (RuntimeReady).
    pub fn oci_version(&self) -> std::result::Result<String, String> {
        let output = std::process::Command::new(&self.settings.oci_runtime)
            .arg("--version")
            .output()
            .map_err(|e| format!("{}: {e}", self.settings.oci_runtime.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.lines().next().unwrap_or_default().to_string())
    }
}
