//! A sandbox's namespaces without a process to hold them: a short-lived thread unshares
//! the network, UTS and IPC namespaces, sets the pod's hostname, and bind-mounts each
//! `/proc/thread-self/ns/*` onto a file in the sandbox directory, which keeps the
//! namespace alive after the thread exits. Containers join them by path; removing the
//! sandbox unmounts the files, and the namespaces go with their last user.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// The namespaces a sandbox can own, by their /proc name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Net,
    Uts,
    Ipc,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Uts => "uts",
            Kind::Ipc => "ipc",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
        }
    }
}

pub const ALL: [Kind; 3] = [Kind::Net, Kind::Uts, Kind::Ipc];

/// Creates `kinds` as files in `dir`; the UTS namespace gets `hostname`.
pub fn create(dir: &Path, kinds: &[Kind], hostname: &str) -> std::io::Result<()> {
    if kinds.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for kind in kinds {
        std::fs::File::create(dir.join(kind.name()))?;
    }
    let target = dir.to_path_buf();
    let kinds = kinds.to_vec();
    let hostname = hostname.to_string();
    // unshare(2) of these namespaces changes only the calling thread, which then exits.
    let made = std::thread::Builder::new()
        .name("sandbox-ns".into())
        .spawn(move || -> std::io::Result<()> {
            let flags = kinds.iter().fold(CloneFlags::empty(), |f, k| f | k.flag());
            nix::sched::unshare(flags)?;
            if kinds.contains(&Kind::Uts) && !hostname.is_empty() {
                nix::unistd::sethostname(&hostname)?;
            }
            for kind in &kinds {
                let source = format!("/proc/thread-self/ns/{}", kind.name());
                nix::mount::mount(
                    Some(source.as_str()),
                    &target.join(kind.name()),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
            Ok(())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?;
    if made.is_err() {
        remove(dir);
    }
    made
}

/// Keeps the namespace at `source` (a /proc/PID/ns file) alive by a bind mount at
/// `target`.
pub fn bind(source: &str, target: &Path) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(target)?;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

/// Unmounts and removes whatever namespace files `dir` holds (idempotent).
pub fn remove(dir: &Path) {
    for name in ALL.iter().map(|k| k.name()).chain(["pid"]) {
        let file = dir.join(name);
        if file.exists() {
            let _ = nix::mount::umount2(&file, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&file);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Starts `command` as PID 1 of a new PID namespace: a short-lived thread unshares its
/// children's PID namespace (which changes only that thread) and spawns it.
pub fn spawn_in_new_pid_namespace(
    command: &[std::ffi::OsString],
    sandbox_dir: &Path,
) -> std::io::Result<std::process::Child> {
    let Some((program, args)) = command.split_first() else {
        return Err(std::io::Error::other("no pause command configured"));
    };
    let program = program.clone();
    let mut args = args.to_vec();
    // Named after its sandbox, so it can be told apart (and found if left behind).
    args.push(sandbox_dir.as_os_str().to_owned());
    std::thread::Builder::new()
        .name("sandbox-pid-ns".into())
        .spawn(move || -> std::io::Result<std::process::Child> {
            nix::sched::unshare(CloneFlags::CLONE_NEWPID)?;
            std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        })?
        .join()
        .map_err(|_| std::io::Error::other("the PID namespace thread panicked"))?
}
