//! Containers: CreateContainer unpacks the image, mounts its root with overlayfs, writes
//! the OCI spec and starts a monitor, which creates the container through the OCI
//! runtime (runc create: the process exists, waiting); StartContainer lets it run (runc
//! start). A container's phase comes from its files: `exit.json` (written by the
//! monitor) means exited, a start time means running, else created. Stop signals, waits
//! out the grace period, then kills; remove kills, deletes it from the OCI runtime,
//! unmounts its root and removes its directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerConfig;
use prost::Message;

use crate::engine::{
    self, CONFIG, CONTAINER_RECORD, Container, ContainerRecord, Engine, Failure, Result, Sandbox,
    internal, lock,
};
use crate::monitor::{self, Exit, Plan, Ready};

/// How long a kill may take before the runtime gives up waiting.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// ExecSync output beyond this is cut (containerd's limit).
const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// Where a container is in its life.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Created,
    Running,
    Exited(Exit, String),
    Unknown,
}

pub fn create(engine: &Engine, sandbox: &Sandbox, config: ContainerConfig) -> Result<String> {
    let metadata = config
        .metadata
        .clone()
        .ok_or_else(|| Failure::Invalid("config.metadata is required".into()))?;
    if metadata.name.is_empty() {
        return Err(Failure::Invalid("config.metadata.name is required".into()));
    }
    let sandbox_record = lock(&sandbox.record).clone();
    if !crate::sandbox::is_ready(&sandbox_record) {
        return Err(Failure::Precondition(format!(
            "pod sandbox {} is not ready",
            sandbox.id
        )));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Failure::Invalid("config.image.image is required".into()))?;
    // Image removal waits until this container is registered as the image's user.
    let _image_use = engine.image_use.read().unwrap_or_else(|p| p.into_inner());
    let image = engine
        .images
        .find(&image_name)
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| {
            Failure::NotFound(format!(
                "image {image_name:?} not found: pull or import it first"
            ))
        })?;
    let id = crate::util::new_id();
    let key = name_key(&sandbox.id, &config).unwrap_or_default();
    engine.reserve(&key, &id, "container")?;
    let dir = engine.container_dir(&id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| internal(format!("creating {}: {e}", dir.display())))?;
    let made = (|| -> Result<ContainerRecord> {
        std::fs::write(dir.join(CONFIG), config.encode_to_vec()).map_err(internal)?;
        let layers = engine
            .layers
            .unpack(&engine.images, &image)
            .map_err(|e| internal(format!("unpacking {image_name}: {e}")))?;
        let rootfs = dir.join("rootfs");
        crate::layers::mount_rootfs(&layers, &dir.join("upper"), &dir.join("work"), &rootfs)
            .map_err(|e| internal(e.to_string()))?;
        let image_config = crate::images::config_of(&engine.images, &image)
            .map_err(|e| internal(e.to_string()))?;
        let process = &image_config["config"];
        let cgroups_path = format!(
            "{}/{id}",
            sandbox_record.cgroup_parent.trim_end_matches('/')
        );
        let spec = crate::oci::spec(&crate::oci::Input {
            config: &config,
            sandbox: &sandbox.config,
            sandbox_dir: &sandbox.dir,
            host_network: sandbox_record.host_network,
            image: process,
            rootfs: &rootfs,
            cgroups_path: cgroups_path.clone(),
            min_oom_score_adj: engine.min_oom_score_adj,
            swap_accounting: engine.swap_accounting,
            target_pid: target_pid(engine, &config),
            pod_pid_namespace: crate::sandbox::pid_namespace(&sandbox.dir, &sandbox_record),
        })
        .map_err(|e| Failure::Invalid(e.0))?;
        let bytes = serde_json::to_vec_pretty(&spec).map_err(internal)?;
        std::fs::write(dir.join("config.json"), bytes).map_err(internal)?;
        let log_path = log_path(&sandbox.config, &config);
        let plan = Plan {
            oci_runtime: engine.settings.oci_runtime.clone(),
            oci_root: engine.oci_root(),
            id: id.clone(),
            log_path: log_path.clone(),
            memory_cgroup: engine.cgroups.v1_dir("memory", &cgroups_path),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
        };
        engine::write_record(&dir, monitor::PLAN, &plan)?;
        let (monitor_pid, pid) = spawn_monitor(engine, &dir)?;
        let monitor_start = crate::util::start_time(monitor_pid).unwrap_or(0);
        let record = ContainerRecord {
            sandbox_id: sandbox.id.clone(),
            image_id: image.id.clone(),
            image_name: image_name.clone(),
            created_at: crate::util::now_nanos(),
            started_at: 0,
            monitor_pid,
            monitor_start,
            pid,
            cgroups_path,
            start_error: None,
            stop_signal: process["StopSignal"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("SIGTERM")
                .to_string(),
            log_path,
            user: (
                spec["process"]["user"]["uid"].as_i64().unwrap_or(0),
                spec["process"]["user"]["gid"].as_i64().unwrap_or(0),
                spec["process"]["user"]["additionalGids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_i64())
                    .collect(),
            ),
        };
        engine::write_record(&dir, CONTAINER_RECORD, &record)?;
        Ok(record)
    })();
    match made {
        Ok(record) => {
            let container = Arc::new(Container {
                id: id.clone(),
                config,
                dir,
                record: Mutex::new(record),
                op: Default::default(),
            });
            lock(&engine.containers).insert(id.clone(), container);
            Ok(id)
        }
        Err(e) => {
            release(engine, &id, &dir);
            engine.release_name(&key, &id);
            Err(e)
        }
    }
}

/// The CRI log path: the container's `log_path` under the sandbox's `log_directory`.
fn log_path(sandbox: &k8s_cri::v1::PodSandboxConfig, config: &ContainerConfig) -> Option<PathBuf> {
    if sandbox.log_directory.is_empty() || config.log_path.is_empty() {
        return None;
    }
    Some(Path::new(&sandbox.log_directory).join(&config.log_path))
}

/// Starts the container's monitor and waits for its word: the container's pid, or why
/// the OCI runtime could not create it.
fn spawn_monitor(engine: &Engine, dir: &Path) -> Result<(i32, i32)> {
    let Some((program, args)) = engine.settings.monitor.split_first() else {
        return Err(internal("no monitor command configured"));
    };
    let log = std::fs::File::create(dir.join("monitor.log")).map_err(internal)?;
    let mut child = Command::new(program)
        .args(args)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            internal(format!(
                "starting the monitor {}: {e}",
                Path::new(program).display()
            ))
        })?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let monitor_pid = i32::try_from(child.id()).unwrap_or(0);
    // The monitor is our child while we run: reap it when it ends.
    let _ = std::thread::Builder::new()
        .name("monitor-reaper".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = child.wait();
        });
    let ready: Ready = serde_json::from_str(&line).map_err(|_| {
        let text = std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
        internal(format!("the container monitor failed: {}", text.trim()))
    })?;
    match (ready.pid, ready.error) {
        (Some(pid), _) => Ok((monitor_pid, pid)),
        (None, Some(error)) => Err(internal(format!("creating the container: {error}"))),
        (None, None) => Err(internal("the container monitor gave no pid")),
    }
}

fn read_exit(dir: &Path) -> Option<Exit> {
    let bytes = std::fs::read(dir.join(monitor::EXIT)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the monitor recorded for a container is still that process.
fn monitor_alive(record: &ContainerRecord) -> bool {
    record.monitor_pid > 0
        && crate::util::start_time(record.monitor_pid)
            .is_some_and(|t| record.monitor_start == 0 || t == record.monitor_start)
}

/// The process of the container a TARGET PID namespace mode names, if it runs.
fn target_pid(engine: &Engine, config: &ContainerConfig) -> Option<i32> {
    let options = config
        .linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()?;
    if options.pid != k8s_cri::v1::NamespaceMode::Target as i32 {
        return None;
    }
    let target = engine.container(&options.target_id).ok()?;
    (phase(&target) == Phase::Running).then(|| lock(&target.record).pid)
}

/// The key that makes a container's name unique within its sandbox.
pub fn name_key(sandbox: &str, config: &ContainerConfig) -> Option<String> {
    let m = config.metadata.as_ref()?;
    Some(format!("{sandbox}/{}_{}", m.name, m.attempt))
}

pub fn phase(container: &Container) -> Phase {
    if let Some(exit) = read_exit(&container.dir) {
        return Phase::Exited(exit, String::new());
    }
    let record = lock(&container.record).clone();
    if let Some(error) = record.start_error {
        let exit = Exit {
            exit_code: 128,
            finished_at: record.created_at,
            reason: "StartError".into(),
        };
        return Phase::Exited(exit, error);
    }
    if !monitor_alive(&record) {
        // The monitor may have written its file just now.
        return match read_exit(&container.dir) {
            Some(exit) => Phase::Exited(exit, String::new()),
            None => Phase::Unknown,
        };
    }
    if record.started_at > 0 {
        Phase::Running
    } else {
        Phase::Created
    }
}

pub fn start(engine: &Engine, container: &Container) -> Result<()> {
    match phase(container) {
        Phase::Created => {}
        Phase::Running => {
            return Err(Failure::Precondition(format!(
                "container {} is already running",
                container.id
            )));
        }
        _ => {
            return Err(Failure::Precondition(format!(
                "container {} is not in the created state",
                container.id
            )));
        }
    }
    let sandbox_id = lock(&container.record).sandbox_id.clone();
    if !engine
        .sandbox(&sandbox_id)
        .is_ok_and(|s| lock(&s.record).ready)
    {
        return Err(Failure::Precondition(format!(
            "pod sandbox {sandbox_id} of container {} is not ready",
            container.id
        )));
    }
    // Taken before: a quick container may exit (and its monitor record the end) before
    // `runc start` returns, and it must not seem to have ended before it started.
    let started = crate::util::now_nanos();
    let result = engine.oci(&["start", &container.id]);
    if result.is_err() {
        // What runc created must not linger: the process waiting to start, its monitor.
        let _ = engine.oci(&["delete", "--force", &container.id]);
        wait_exit(&container.dir, Duration::from_secs(5));
    }
    let mut record = lock(&container.record);
    match result {
        Ok(()) => record.started_at = started,
        Err(e) => record.start_error = Some(e.to_string()),
    }
    engine::write_record(&container.dir, CONTAINER_RECORD, &*record)?;
    match &record.start_error {
        Some(error) => Err(internal(format!("starting the container: {error}"))),
        None => Ok(()),
    }
}

/// Waits for the monitor's exit file; whether it came within `timeout`.
fn wait_exit(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if dir.join(monitor::EXIT).exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// StopContainer: the stop signal, `timeout` seconds of grace, then SIGKILL.
pub fn stop(engine: &Engine, container: &Container, timeout: i64) -> Result<()> {
    match phase(container) {
        Phase::Exited(..) => return Ok(()),
        Phase::Running if timeout > 0 => {
            let signal = lock(&container.record).stop_signal.clone();
            if engine.oci(&["kill", &container.id, &signal]).is_ok()
                && wait_exit(&container.dir, Duration::from_secs(timeout.unsigned_abs()))
            {
                return Ok(());
            }
        }
        _ => {}
    }
    kill_now(engine, container)
}

/// SIGKILL to every process of the container, and wait for the monitor to see it go.
pub fn kill_now(engine: &Engine, container: &Container) -> Result<()> {
    match phase(container) {
        Phase::Exited(..) => return Ok(()),
        Phase::Unknown => {
            // No monitor to see the end: make sure nothing is left, the OCI runtime's
            // way, and record an unknown exit (as containerd does).
            let _ = engine.oci(&["kill", "--all", &container.id, "KILL"]);
            let _ = engine.oci(&["delete", "--force", &container.id]);
            let exit = Exit {
                exit_code: 255,
                finished_at: crate::util::now_nanos(),
                reason: "Unknown".into(),
            };
            return engine::write_record(&container.dir, monitor::EXIT, &exit);
        }
        _ => {}
    }
    if let Err(e) = engine.oci(&["kill", "--all", &container.id, "KILL"]) {
        // It may have exited in between.
        if !wait_exit(&container.dir, Duration::from_millis(100)) {
            return Err(e);
        }
    }
    if wait_exit(&container.dir, KILL_WAIT) {
        Ok(())
    } else {
        Err(Failure::Timeout(format!(
            "container {} did not exit within {KILL_WAIT:?} of SIGKILL",
            container.id
        )))
    }
}

pub fn remove(engine: &Engine, container: &Container) -> Result<()> {
    kill_now(engine, container)?;
    release(engine, &container.id, &container.dir);
    engine
        .cpu_samples
        .forget(&lock(&container.record).cgroups_path);
    let sandbox_id = lock(&container.record).sandbox_id.clone();
    if let Some(key) = name_key(&sandbox_id, &container.config) {
        engine.release_name(&key, &container.id);
    }
    lock(&engine.containers).remove(&container.id);
    Ok(())
}

/// Deletes what the OCI runtime keeps of a container, unmounts its root and removes its
/// directory (also for creations that failed or did not finish).
pub fn release(engine: &Engine, id: &str, dir: &Path) {
    let _ = engine.oci(&["delete", "--force", id]);
    // A monitor still running writes its exit file once the process is gone: wait for
    // it, so it does not write into a directory being removed.
    let record: Option<ContainerRecord> = std::fs::read(dir.join(CONTAINER_RECORD))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if record.as_ref().is_some_and(monitor_alive) {
        wait_exit(dir, Duration::from_secs(5));
    }
    let _ = crate::layers::unmount(&dir.join("rootfs"));
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(container = %id, error = %e, "removing the container directory");
    }
}

/// ReopenContainerLog: asks the monitor to reopen the log file, and waits until it has.
pub fn reopen_log(container: &Container) -> Result<()> {
    if phase(container) != Phase::Running {
        return Err(Failure::Precondition(format!(
            "container {} is not running",
            container.id
        )));
    }
    let record = lock(&container.record).clone();
    let Some(path) = record.log_path else {
        return Ok(());
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(container.dir.join(monitor::CTL))
        .map_err(|e| Failure::Precondition(format!("the container's monitor is gone: {e}")))?;
    fifo.write_all(b"reopen\n").map_err(internal)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(internal(format!(
                "the log {} was not reopened",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// What ExecSync returns.
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// ExecSync: runs `cmd` in the container (its environment, user and namespaces) and
/// collects its output; past `timeout` seconds the process is killed.
pub async fn exec_sync(
    engine: Arc<Engine>,
    container: Arc<Container>,
    cmd: Vec<String>,
    timeout: i64,
) -> Result<ExecOutput> {
    if cmd.is_empty() {
        return Err(Failure::Invalid("cmd must not be empty".into()));
    }
    let check = container.clone();
    if tokio::task::spawn_blocking(move || phase(&check))
        .await
        .map_err(internal)?
        != Phase::Running
    {
        return Err(Failure::Precondition(format!(
            "container {} is not running",
            container.id
        )));
    }
    let pid_file = container
        .dir
        .join(format!("exec-{}.pid", &crate::util::new_id()[..16]));
    // If the request is cancelled, the command must not live on in the container.
    let mut guard = KillOnDrop(Some(pid_file.clone()));
    let child = tokio::process::Command::new(&engine.settings.oci_runtime)
        .arg("--root")
        .arg(engine.oci_root())
        .arg("exec")
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&container.id)
        .args(&cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            internal(format!(
                "running {}: {e}",
                engine.settings.oci_runtime.display()
            ))
        })?;
    let waited = if timeout > 0 {
        tokio::time::timeout(
            Duration::from_secs(timeout.unsigned_abs()),
            child.wait_with_output(),
        )
        .await
    } else {
        Ok(child.wait_with_output().await)
    };
    let output = match waited {
        Ok(output) => {
            guard.0 = None;
            let _ = std::fs::remove_file(&pid_file);
            output.map_err(internal)?
        }
        Err(_) => {
            // The OCI runtime's exec process died with the future; the guard kills its
            // child, which lives on in the container otherwise.
            drop(guard);
            return Err(Failure::Timeout(format!(
                "command {cmd:?} timed out after {timeout}s"
            )));
        }
    };
    let code = output.status.code().unwrap_or(255);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The OCI runtime failed before the command ran (no such executable, ...).
    if code == 255 && stderr.contains("exec failed") {
        return Err(internal(format!(
            "running {cmd:?} in container {}: {}",
            container.id,
            stderr.trim()
        )));
    }
    let mut stdout = output.stdout;
    let mut stderr = output.stderr;
    stdout.truncate(MAX_EXEC_OUTPUT);
    stderr.truncate(MAX_EXEC_OUTPUT);
    Ok(ExecOutput {
        stdout,
        stderr,
        exit_code: code,
    })
}

/// UpdateContainerResources: new CPU and memory limits for a created or running
/// container, through `runc update`; the spec on disk follows.
pub fn update_resources(
    engine: &Engine,
    container: &Container,
    resources: &k8s_cri::v1::LinuxContainerResources,
) -> Result<()> {
    match phase(container) {
        Phase::Created | Phase::Running => {}
        _ => {
            return Err(Failure::Precondition(format!(
                "container {} is not running",
                container.id
            )));
        }
    }
    let update = crate::oci::resources_of(resources, engine.swap_accounting);
    let file = container.dir.join("resources.json");
    std::fs::write(&file, serde_json::Value::Object(update.clone()).to_string())
        .map_err(internal)?;
    let file_arg = file.display().to_string();
    let result = engine.oci(&["update", "--resources", &file_arg, &container.id]);
    let _ = std::fs::remove_file(&file);
    result?;
    let spec_path = container.dir.join("config.json");
    if let Ok(text) = std::fs::read_to_string(&spec_path)
        && let Ok(mut spec) = serde_json::from_str::<serde_json::Value>(&text)
    {
        for (key, value) in update {
            spec["linux"]["resources"][key] = value;
        }
        let bytes = serde_json::to_vec_pretty(&spec).map_err(internal)?;
        crate::util::write_atomic(&spec_path, &bytes).map_err(internal)?;
    }
    Ok(())
}

/// Kills the process whose pid the file holds, and removes the file, when dropped
/// armed (an ExecSync that timed out or whose request went away).
pub struct KillOnDrop(pub Option<PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(pid_file) = self.0.take() else {
            return;
        };
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(&pid_file);
    }
}
