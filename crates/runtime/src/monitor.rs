//! The monitor: one small process per container (containerd's shim, CRI-O's conmon), so
//! containers outlive the runtime. It creates the container through the OCI runtime
//! with its own pipes as the container's stdout and stderr, becomes the container's
//! parent (a child subreaper), writes the output to the CRI log file, and when the
//! container exits records the exit code, the time and whether the kernel's OOM killer
//! ended it in `exit.json`. The runtime starts it with the container directory as its
//! only argument and reads one line from its stdout: `{"pid":N}` or `{"error":"..."}`.
//! `reopen` written to the `ctl` FIFO reopens the log file (ReopenContainerLog). The
//! container's stdin (when it has one) and its terminal (when it has one) stay with the
//! monitor, which serves them and the output to Attach clients on `attach.sock`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::attach;

/// What the runtime tells a monitor (`monitor.json` in the container directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The OCI runtime binary and its state root.
    pub oci_runtime: PathBuf,
    pub oci_root: PathBuf,
    pub id: String,
    pub log_path: Option<PathBuf>,
    /// The container's memory cgroup directory (cgroup v1), for OOM kills.
    pub memory_cgroup: Option<PathBuf>,
    /// A stdin the monitor holds open for Attach (`stdin_once`: closed when the first
    /// attached client's input ends).
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// A terminal (its master end sent by the OCI runtime over `console.sock`).
    #[serde(default)]
    pub tty: bool,
}

/// How a container ended (`exit.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub exit_code: i32,
    pub finished_at: i64,
    /// `Completed`, `Error` or `OOMKilled`, as the CRI reports.
    pub reason: String,
}

/// The first line a monitor writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub pid: Option<i32>,
    pub error: Option<String>,
}

pub const PLAN: &str = "monitor.json";
pub const EXIT: &str = "exit.json";
pub const CTL: &str = "ctl";
pub const PID: &str = "pid";
/// Where the OCI runtime sends a terminal's master end (relative to the directory).
const CONSOLE: &str = "console.sock";
/// A CRI log line's content is cut into partial (`P`) lines past this many bytes.
const MAX_LINE: usize = 16 * 1024;

/// The monitor process's `main`: returns its exit status.
pub fn main(dir: &Path) -> i32 {
    match run(dir) {
        Ok(()) => 0,
        Err(message) => {
            report(&Ready {
                pid: None,
                error: Some(message.clone()),
            });
            eprintln!("monitor: {message}");
            1
        }
    }
}

fn report(ready: &Ready) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, ready);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn run(dir: &Path) -> Result<(), String> {
    let plan: Plan = std::fs::read(dir.join(PLAN))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("reading {}: {e}", dir.join(PLAN).display()))?;
    // Out of the runtime's session (its signals) and the parent of what runc leaves.
    let _ = nix::unistd::setsid();
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;

    // Sockets are bound by relative paths: Unix socket paths stop at 108 bytes.
    let dir = &std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::env::set_current_dir(dir).map_err(|e| format!("entering {}: {e}", dir.display()))?;

    let log = Arc::new(Mutex::new(LogFile::open(plan.log_path.clone())?));
    let (out_read, out_write) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_read, err_write) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (stdin_read, stdin_write) = if plan.stdin && !plan.tty {
        let (read, write) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
        (Stdio::from(read), Some(File::from(OwnedFd::from(write))))
    } else {
        (Stdio::null(), None)
    };
    let console = if plan.tty {
        let _ = std::fs::remove_file(CONSOLE);
        Some(UnixListener::bind(CONSOLE).map_err(|e| format!("binding {CONSOLE}: {e}"))?)
    } else {
        None
    };
    let runc_log = dir.join("oci-runtime.log");
    let mut create = Command::new(&plan.oci_runtime);
    create
        .arg("--root")
        .arg(&plan.oci_root)
        .arg("--log")
        .arg(&runc_log)
        .arg("--log-format")
        .arg("json")
        .arg("create")
        .arg("--bundle")
        .arg(dir)
        .arg("--pid-file")
        .arg(dir.join(PID));
    if console.is_some() {
        create.arg("--console-socket").arg(CONSOLE);
    }
    let status = create
        .arg(&plan.id)
        .stdin(stdin_read)
        .stdout(out_write)
        .stderr(err_write)
        .status()
        .map_err(|e| format!("running {}: {e}", plan.oci_runtime.display()));
    // Our copies of the container's ends of its pipes go with the command.
    drop(create);
    let status = status?;
    if !status.success() {
        return Err(oci_error(&runc_log).unwrap_or_else(|| {
            let mut text = String::new();
            let _ = (&err_read).take(4096).read_to_string(&mut text);
            format!(
                "{} create failed ({status}): {}",
                plan.oci_runtime.display(),
                text.trim()
            )
        }));
    }
    // The terminal's master end came over the console socket during `create`.
    let terminal = match console {
        Some(listener) => {
            let _ = std::fs::remove_file(CONSOLE);
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("console socket: {e}"))?;
            let (stream, _) = listener
                .accept()
                .map_err(|e| format!("the OCI runtime sent no terminal: {e}"))?;
            let _ = stream.set_nonblocking(false);
            let master = crate::console::receive_terminal(&stream)
                .map_err(|e| format!("receiving the terminal: {e}"))?;
            Some(File::from(master))
        }
        None => None,
    };
    let pid: i32 = std::fs::read_to_string(dir.join(PID))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or("the OCI runtime wrote no pid file")?;
    let ctl = dir.join(CTL);
    let _ = std::fs::remove_file(&ctl);
    nix::unistd::mkfifo(&ctl, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("mkfifo {}: {e}", ctl.display()))?;
    report(&Ready {
        pid: Some(pid),
        error: None,
    });
    // Nothing more for the runtime: let its pipe close.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }

    // With a terminal, its output is the container's stdout and its input is stdin.
    let clone = |file: &File| file.try_clone().map_err(|e| format!("terminal: {e}"));
    let (input, output) = match &terminal {
        Some(master) => (
            plan.stdin.then(|| clone(master)).transpose()?,
            Some(clone(master)?),
        ),
        None => (stdin_write, None),
    };
    let hub = attach::Hub::new(input, terminal, plan.stdin_once);
    let _ = std::fs::remove_file(attach::SOCKET);
    match UnixListener::bind(attach::SOCKET) {
        Ok(listener) => hub.serve(listener),
        Err(e) => eprintln!("monitor: binding {}: {e}", attach::SOCKET),
    }
    let mut pumps = vec![
        spawn_pump(Box::new(out_read), attach::STDOUT, log.clone(), hub.clone()),
        spawn_pump(Box::new(err_read), attach::STDERR, log.clone(), hub.clone()),
    ];
    if let Some(output) = output {
        pumps.push(spawn_pump(
            Box::new(output),
            attach::STDOUT,
            log.clone(),
            hub.clone(),
        ));
    }
    {
        let log = log.clone();
        std::thread::spawn(move || control(&ctl, &log));
    }
    let code = wait_for(pid);
    let finished_at = crate::util::now_nanos();
    // Output still in the pipes belongs to the log; a daemon that kept them open must
    // not hold the exit back for long.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for pump in pumps {
        while !pump.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    hub.close(std::time::Duration::from_secs(2));
    let oom = plan.memory_cgroup.as_deref().is_some_and(oom_killed);
    let exit = Exit {
        exit_code: code,
        finished_at,
        reason: if oom {
            "OOMKilled".into()
        } else if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
    };
    let bytes = serde_json::to_vec(&exit).map_err(|e| e.to_string())?;
    crate::util::write_atomic(&dir.join(EXIT), &bytes).map_err(|e| format!("writing exit: {e}"))?;
    Ok(())
}

/// The OCI runtime's last error message from its JSON log.
fn oci_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        (entry["level"] == "error")
            .then(|| entry["msg"].as_str().map(String::from))
            .flatten()
    })
}

/// Reaps children until `pid` exits; its exit code (128 + signal when killed).
fn wait_for(pid: i32) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return code,
            Ok(WaitStatus::Signaled(p, signal, _)) if p.as_raw() == pid => {
                return 128 + signal as i32;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            // No children left: the container is gone without a status we saw.
            Err(_) => return 255,
        }
    }
}

/// Whether the OOM killer killed something in the container's memory cgroup.
fn oom_killed(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("memory.oom_control"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .is_some_and(|n| n > 0)
}

fn control(ctl: &Path, log: &Mutex<LogFile>) {
    // Opened read-write so the FIFO never reads end-of-file between writers.
    let Ok(fifo) = OpenOptions::new().read(true).write(true).open(ctl) else {
        return;
    };
    for line in BufReader::new(fifo).lines() {
        let Ok(line) = line else { return };
        if line.trim() == "reopen"
            && let Ok(mut log) = log.lock()
        {
            log.reopen();
        }
    }
}

fn spawn_pump(
    pipe: Box<dyn Read + Send>,
    stream: u8,
    log: Arc<Mutex<LogFile>>,
    hub: Arc<attach::Hub>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || pump(pipe, stream, &log, &hub))
}

/// Copies one stream into the log, a CRI log line per output line, and to whoever is
/// attached.
fn pump(mut pipe: impl Read, stream: u8, log: &Mutex<LogFile>, hub: &attach::Hub) {
    let name = if stream == attach::STDERR {
        "stderr"
    } else {
        "stdout"
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO from a terminal once no process holds it any more.
            Err(_) => break,
        };
        hub.output(stream, &buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            write_line(log, name, 'F', &pending[start..start + end]);
            start += end + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            write_line(log, name, 'P', &pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        write_line(log, name, 'F', &pending);
    }
}

fn write_line(log: &Mutex<LogFile>, stream: &str, tag: char, content: &[u8]) {
    let mut line = format!(
        "{} {stream} {tag} ",
        crate::util::rfc3339_nanos(crate::util::now_nanos())
    )
    .into_bytes();
    line.extend_from_slice(content);
    line.push(b'\n');
    if let Ok(mut log) = log.lock() {
        log.write(&line);
    }
}

/// The CRI log file (none when the kubelet asked for no log).
struct LogFile {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl LogFile {
    fn open(path: Option<PathBuf>) -> Result<LogFile, String> {
        let mut log = LogFile { path, file: None };
        if let Some(path) = &log.path {
            log.file =
                Some(open_log(path).map_err(|e| format!("opening log {}: {e}", path.display()))?);
        }
        Ok(log)
    }

    /// Opens the path anew; on failure, output keeps going to the old file.
    fn reopen(&mut self) {
        if let Some(path) = &self.path {
            match open_log(path) {
                Ok(file) => self.file = Some(file),
                Err(e) => eprintln!("monitor: reopening log {}: {e}", path.display()),
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        if let Some(file) = &mut self.file {
            let _ = file.write_all(line);
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// PID 1 of a pod's shared PID namespace: holds it while the pod lives and reaps the
/// orphans its containers leave, as the pause container does. Killed (SIGKILL) when the
/// sandbox stops, which ends every process in the namespace.
pub fn pause() -> ! {
    use nix::sys::wait::waitpid;
    loop {
        match waitpid(None, None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // No children now: orphans may come later.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// Waits for a detached exec (`runc exec -d`): runs `command`, then, as the child
/// subreaper the detached process is reparented to, waits for the pid `pid_file` names.
/// Prints one JSON line: `{"exitCode":N}`, or `{"error":"..."}` when the command failed.
pub fn exec_wait(pid_file: &Path, command: &[String]) -> i32 {
    let say = |value: serde_json::Value| {
        println!("{value}");
        0
    };
    if nix::sys::prctl::set_child_subreaper(true).is_err() {
        return say(serde_json::json!({"error": "cannot become a subreaper"}));
    }
    let Some((program, args)) = command.split_first() else {
        return say(serde_json::json!({"error": "no command"}));
    };
    let output = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(output) => output,
        Err(e) => return say(serde_json::json!({"error": format!("running {program}: {e}")})),
    };
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return say(serde_json::json!({"error": message}));
    }
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return say(serde_json::json!({"error": "the OCI runtime wrote no pid file"}));
    };
    say(serde_json::json!({"exitCode": wait_for(pid)}))
}
