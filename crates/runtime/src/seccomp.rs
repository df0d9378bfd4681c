//! Seccomp for containers, from the CRI's SecurityProfile: `Unconfined` (and no profile
//! at all) installs none, `Localhost` reads an OCI/Docker-format profile from the node,
//! and `RuntimeDefault` is skiff's default: every system call allowed except those
//! Docker's and containerd's default profiles keep from containers (kernel modules,
//! keyrings, clocks, reboot, swap, accounting, mount and namespace calls, tracing other
//! processes, BPF, perf, ...), the privileged ones allowed again when the container has
//! the capability they need, as in those profiles. Unlike theirs (an allow list), this
//! is a deny list: a system call newer than this list is allowed.

use std::path::Path;

use k8s_cri::v1::SecurityProfile;
use k8s_cri::v1::security_profile::ProfileType;
use serde_json::{Value, json};

/// Denied unless the container has the capability (`None`: always denied).
const DENIED: &[(&str, Option<&str>)] = &[
    ("acct", Some("CAP_SYS_PACCT")),
    ("add_key", None),
    ("bpf", Some("CAP_SYS_ADMIN")),
    ("clock_adjtime", Some("CAP_SYS_TIME")),
    ("clock_settime", Some("CAP_SYS_TIME")),
    ("create_module", Some("CAP_SYS_MODULE")),
    ("delete_module", Some("CAP_SYS_MODULE")),
    ("finit_module", Some("CAP_SYS_MODULE")),
    ("get_kernel_syms", None),
    ("get_mempolicy", Some("CAP_SYS_NICE")),
    ("init_module", Some("CAP_SYS_MODULE")),
    ("ioperm", Some("CAP_SYS_RAWIO")),
    ("iopl", Some("CAP_SYS_RAWIO")),
    ("kcmp", Some("CAP_SYS_PTRACE")),
    ("kexec_file_load", Some("CAP_SYS_BOOT")),
    ("kexec_load", Some("CAP_SYS_BOOT")),
    ("keyctl", None),
    ("lookup_dcookie", Some("CAP_SYS_ADMIN")),
    ("mbind", Some("CAP_SYS_NICE")),
    ("mount", Some("CAP_SYS_ADMIN")),
    ("mount_setattr", Some("CAP_SYS_ADMIN")),
    ("move_mount", Some("CAP_SYS_ADMIN")),
    ("move_pages", Some("CAP_SYS_NICE")),
    ("name_to_handle_at", Some("CAP_SYS_ADMIN")),
    ("nfsservctl", None),
    ("open_by_handle_at", Some("CAP_DAC_READ_SEARCH")),
    ("open_tree", Some("CAP_SYS_ADMIN")),
    ("fsconfig", Some("CAP_SYS_ADMIN")),
    ("fsmount", Some("CAP_SYS_ADMIN")),
    ("fsopen", Some("CAP_SYS_ADMIN")),
    ("fspick", Some("CAP_SYS_ADMIN")),
    ("perf_event_open", Some("CAP_PERFMON")),
    ("pivot_root", Some("CAP_SYS_ADMIN")),
    ("process_vm_readv", Some("CAP_SYS_PTRACE")),
    ("process_vm_writev", Some("CAP_SYS_PTRACE")),
    ("ptrace", Some("CAP_SYS_PTRACE")),
    ("query_module", None),
    ("quotactl", Some("CAP_SYS_ADMIN")),
    ("quotactl_fd", Some("CAP_SYS_ADMIN")),
    ("reboot", Some("CAP_SYS_BOOT")),
    ("request_key", None),
    ("set_mempolicy", Some("CAP_SYS_NICE")),
    ("setdomainname", Some("CAP_SYS_ADMIN")),
    ("sethostname", Some("CAP_SYS_ADMIN")),
    ("setns", Some("CAP_SYS_ADMIN")),
    ("settimeofday", Some("CAP_SYS_TIME")),
    ("stime", Some("CAP_SYS_TIME")),
    ("swapoff", Some("CAP_SYS_ADMIN")),
    ("swapon", Some("CAP_SYS_ADMIN")),
    ("syslog", Some("CAP_SYSLOG")),
    ("_sysctl", None),
    ("sysfs", None),
    ("umount", Some("CAP_SYS_ADMIN")),
    ("umount2", Some("CAP_SYS_ADMIN")),
    ("unshare", Some("CAP_SYS_ADMIN")),
    ("uselib", None),
    ("userfaultfd", Some("CAP_SYS_PTRACE")),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// The `linux.seccomp` object for a container, or none.
pub fn profile(
    requested: Option<&SecurityProfile>,
    privileged: bool,
    capabilities: &[String],
) -> Result<Option<Value>, String> {
    let Some(requested) = requested else {
        return Ok(None);
    };
    if privileged {
        return Ok(None);
    }
    match ProfileType::try_from(requested.profile_type) {
        Ok(ProfileType::Unconfined) => Ok(None),
        Ok(ProfileType::Localhost) => localhost(&requested.localhost_ref).map(Some),
        _ => Ok(Some(runtime_default(capabilities))),
    }
}

fn runtime_default(capabilities: &[String]) -> Value {
    let denied: Vec<&str> = DENIED
        .iter()
        .filter(|(_, cap)| cap.is_none_or(|cap| !capabilities.iter().any(|c| c == cap)))
        .map(|(name, _)| *name)
        .collect();
    let mut syscalls = vec![json!({"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1})];
    // clone/clone3 making namespaces needs CAP_SYS_ADMIN, as in Docker's profile
    // (clone3's flags are behind a pointer: it answers ENOSYS so libc falls back).
    if !capabilities.iter().any(|c| c == "CAP_SYS_ADMIN") {
        // CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: one rule each
        // (rules for one call are alternatives).
        for flag in [
            0x0002_0000u64,
            0x0200_0000,
            0x0400_0000,
            0x0800_0000,
            0x1000_0000,
            0x2000_0000,
            0x4000_0000,
        ] {
            syscalls.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}

/// A profile file on the node (OCI or Docker format; Docker's capability conditions
/// are not evaluated).
fn localhost(path: &str) -> Result<Value, String> {
    let path = path.strip_prefix("localhost/").unwrap_or(path);
    if !Path::new(path).is_absolute() {
        return Err(format!(
            "linux.security_context.seccomp.localhost_ref: {path:?} must be an absolute path"
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("linux.security_context.seccomp: reading {path}: {e}"))?;
    let profile: Value = serde_json::from_str(&text)
        .map_err(|e| format!("linux.security_context.seccomp: {path} is not JSON: {e}"))?;
    if !profile["defaultAction"].is_string() {
        return Err(format!(
            "linux.security_context.seccomp: {path} has no defaultAction"
        ));
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_lift_their_calls_and_unconfined_installs_nothing() {
        let default = SecurityProfile::default();
        let profile = profile(Some(&default), false, &["CAP_SYS_TIME".to_string()])
            .expect("profile")
            .expect("a filter");
        let denied = profile["syscalls"][0]["names"]
            .as_array()
            .expect("names")
            .clone();
        assert!(denied.contains(&json!("mount")) && denied.contains(&json!("keyctl")));
        assert!(!denied.contains(&json!("clock_settime")));
        let unconfined = SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            ..Default::default()
        };
        assert_eq!(super::profile(Some(&unconfined), false, &[]), Ok(None));
        assert_eq!(super::profile(Some(&default), true, &[]), Ok(None));
        assert_eq!(super::profile(None, false, &[]), Ok(None));
    }
}
