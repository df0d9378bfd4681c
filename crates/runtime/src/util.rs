//! Small helpers the runtime's parts share: ids, clocks, atomic files.

use std::io::Write;
use std::path::Path;

/// A new sandbox or container id: 64 hex digits, as containerd's.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Nanoseconds since the Unix epoch (the CRI's timestamps).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// RFC 3339 with nanoseconds in UTC, as CRI log lines start.
pub fn rfc3339_nanos(nanos: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000000000Z".into(),
    }
}

/// Replaces `path` with `bytes` so readers see the old or the new content, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename itself must survive a power cut.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces; fields after it follow its ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start` (0: unknown, any).
pub fn same_process(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid).is_some_and(|t| start == 0 || t == start)
}

/// Whether `pid` has exited and waits for its parent to reap it.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.get(stat.rfind(')')? + 1..)?;
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_timestamps_have_nanoseconds() {
        assert_eq!(
            super::rfc3339_nanos(1_475_713_029_669_794_202),
            "2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(super::new_id().len(), 64);
    }
}
