//! Where the cgroup hierarchies are mounted, read from /proc/self/mountinfo (never
//! hard-coded: this machine kind has v1 controllers in separate mounts and cgroup2 at
//! /sys/fs/cgroup/unified). The OCI runtime creates a container's cgroups; the runtime
//! reads them (OOM kills, stats) and removes the pod cgroups it made itself.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct Hierarchies {
    /// v1 hierarchies: their controllers (or `name=...`) and mount point.
    pub v1: Vec<(Vec<String>, PathBuf)>,
    pub unified: Option<PathBuf>,
}

impl Hierarchies {
    pub fn read() -> Hierarchies {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Hierarchies::parse(&text)
    }

    pub fn parse(mountinfo: &str) -> Hierarchies {
        let mut found = Hierarchies::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let rest: Vec<&str> = right.split(' ').collect();
            if fields.len() < 5 || rest.len() < 3 || fields[3] != "/" {
                continue;
            }
            let mount = PathBuf::from(fields[4]);
            match rest[0] {
                "cgroup" => {
                    let controllers: Vec<String> = rest[2]
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("relatime"))
                        .map(String::from)
                        .collect();
                    if !controllers.is_empty() {
                        found.v1.push((controllers, mount));
                    }
                }
                "cgroup2" if found.unified.is_none() => found.unified = Some(mount),
                _ => {}
            }
        }
        found
    }

    /// The directory of `cgroup` (a cgroupfs path like `/skiff/pod/ctr`) in the v1
    /// hierarchy of `controller`.
    pub fn v1_dir(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        self.v1
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
            .map(|(_, mount)| mount.join(cgroup.trim_start_matches('/')))
    }

    /// Every directory `cgroup` has (v1 hierarchies and cgroup2).
    pub fn dirs(&self, cgroup: &str) -> Vec<PathBuf> {
        let relative = cgroup.trim_start_matches('/');
        self.v1
            .iter()
            .map(|(_, mount)| mount.join(relative))
            .chain(self.unified.iter().map(|m| m.join(relative)))
            .collect()
    }

    /// Removes `cgroup`'s directories (children first); they must be empty of tasks.
    pub fn remove(&self, cgroup: &str) {
        if cgroup.trim_matches('/').is_empty() {
            return;
        }
        for dir in self.dirs(cgroup) {
            remove_tree(&dir);
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    #[test]
    fn hybrid_layout_from_mountinfo() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let h = super::Hierarchies::parse(text);
        assert_eq!(h.v1.len(), 3);
        assert_eq!(
            h.v1_dir("memory", "/skiff/a/b"),
            Some("/sys/fs/cgroup/memory/skiff/a/b".into())
        );
        assert_eq!(h.unified, Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(h.dirs("/x").len(), 4);
    }
}
