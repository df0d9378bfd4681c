//! Garbage collection of what pods leave behind, as upstream's kubelet does it:
//! unused images when the image filesystem fills past the high threshold (least
//! recently used first, down to the low threshold; pinned images, images in use by any
//! container and images seen for less than the minimum age are kept), and on demand
//! when disk pressure would otherwise evict pods; and the log directories of pods that
//! are gone. Dead containers are pruned by the pod workers (the newest two of each
//! name stay, as status needs).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cri::Runtime;

/// When images are collected (`--image-gc-high-threshold`, `--image-gc-low-threshold`,
/// `--minimum-image-ttl-duration`).
#[derive(Clone, Debug)]
pub struct ImagePolicy {
    /// Disk use (percent) from which images are collected; 100 turns collection off.
    pub high_threshold: u8,
    /// Disk use (percent) collection frees down to.
    pub low_threshold: u8,
    /// Images seen for less than this are kept.
    pub minimum_age: Duration,
    /// How often the image filesystem is checked.
    pub period: Duration,
}

impl Default for ImagePolicy {
    fn default() -> ImagePolicy {
        ImagePolicy {
            high_threshold: 85,
            low_threshold: 80,
            minimum_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// When an image was first seen and last in use (never: collected first).
struct Seen {
    first: Instant,
    last_used: Option<Instant>,
}

/// An image the kubelet made sure of for a container start is not collected for the
/// minimum age, within these bounds (it is in use only once the container exists).
const STARTING: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(60));

pub struct ImageGc {
    runtime: Runtime,
    policy: ImagePolicy,
    seen: Mutex<HashMap<String, Seen>>,
}

/// An image that may go: its id, size and last use.
struct Candidate {
    id: String,
    size: u64,
    last_used: Option<Instant>,
}

impl ImageGc {
    pub fn new(runtime: Runtime, policy: ImagePolicy) -> ImageGc {
        ImageGc {
            runtime,
            policy,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Marks an image (by id) as about to be used by a container being created.
    pub fn touch(&self, id: &str) {
        let now = Instant::now();
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_insert(Seen {
                first: now,
                last_used: None,
            })
            .last_used = Some(now);
    }

    /// Checks the image filesystem every period and frees space when it is over the
    /// high threshold.
    pub async fn run(&self) {
        if self.policy.high_threshold >= 100 {
            return;
        }
        loop {
            tokio::time::sleep(self.policy.period).await;
            if let Err(message) = self.collect().await {
                tracing::warn!(%message, "image garbage collection");
            }
        }
    }

    /// One round: when the disk is used over the high threshold, unused images go until
    /// it is down to the low one.
    async fn collect(&self) -> Result<(), String> {
        let candidates = self.detect().await?;
        let usage = self
            .runtime
            .image_fs()
            .await
            .map_err(|e| e.message().to_string())?
            .and_then(|u| u.fs_id)
            .map(|id| crate::stats::filesystem(Path::new(&id.mountpoint), 0));
        let Some(usage) = usage else {
            return Err("the runtime reports no image filesystem".into());
        };
        let capacity = usage["capacityBytes"].as_u64().unwrap_or(0);
        let available = usage["availableBytes"].as_u64().unwrap_or(0);
        if capacity == 0 {
            return Err("the image filesystem has no capacity".into());
        }
        let used_percent = 100 - available.saturating_mul(100) / capacity;
        if used_percent < u64::from(self.policy.high_threshold) {
            return Ok(());
        }
        let goal = capacity * (100 - u64::from(self.policy.low_threshold)) / 100;
        let wanted = goal.saturating_sub(available);
        tracing::info!(
            used_percent,
            high = self.policy.high_threshold,
            wanted,
            "image filesystem over its high threshold: removing unused images"
        );
        let freed = self.free(candidates, wanted).await;
        if freed < wanted {
            return Err(format!(
                "Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {freed} bytes eligible to free."
            ));
        }
        Ok(())
    }

    /// Removes every unused image old enough (node-level reclaim before evicting for
    /// disk); the bytes freed.
    pub async fn delete_unused(&self) -> u64 {
        match self.detect().await {
            Ok(candidates) => self.free(candidates, u64::MAX).await,
            Err(message) => {
                tracing::warn!(%message, "listing images to reclaim disk");
                0
            }
        }
    }

    /// Lists images and containers: records first sights and uses, and returns the
    /// images that could go (unpinned, unused, old enough), least recently used first.
    async fn detect(&self) -> Result<Vec<Candidate>, String> {
        let images = self
            .runtime
            .list_images()
            .await
            .map_err(|e| e.message().to_string())?;
        let containers = self
            .runtime
            .all_containers()
            .await
            .map_err(|e| e.message().to_string())?;
        let mut used: HashSet<&str> = HashSet::new();
        for container in &containers {
            used.insert(container.image_ref.as_str());
            if let Some(spec) = &container.image {
                used.insert(spec.image.as_str());
            }
        }
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|id, _| images.iter().any(|i| &i.id == id));
        let mut candidates = Vec::new();
        for image in &images {
            let entry = seen.entry(image.id.clone()).or_insert(Seen {
                first: now,
                last_used: None,
            });
            let in_use = std::iter::once(&image.id)
                .chain(&image.repo_tags)
                .chain(&image.repo_digests)
                .any(|name| used.contains(name.as_str()));
            if in_use {
                entry.last_used = Some(now);
                continue;
            }
            let starting = entry.last_used.is_some_and(|used| {
                now.duration_since(used) < self.policy.minimum_age.clamp(STARTING.0, STARTING.1)
            });
            if image.pinned || starting || now.duration_since(entry.first) < self.policy.minimum_age
            {
                continue;
            }
            candidates.push(Candidate {
                id: image.id.clone(),
                size: image.size,
                last_used: entry.last_used,
            });
        }
        candidates.sort_by_key(|c| c.last_used);
        Ok(candidates)
    }

    /// Removes candidates in order until `wanted` bytes are freed; the bytes freed.
    async fn free(&self, candidates: Vec<Candidate>, wanted: u64) -> u64 {
        let mut freed = 0u64;
        for candidate in candidates {
            if freed >= wanted {
                break;
            }
            match self.runtime.remove_image(&candidate.id).await {
                Ok(()) => {
                    tracing::info!(image = %candidate.id, size = candidate.size, "removed an unused image");
                    freed = freed.saturating_add(candidate.size);
                    self.seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&candidate.id);
                }
                Err(e) => {
                    tracing::warn!(image = %candidate.id, error = %e.message(), "removing an unused image");
                }
            }
        }
        freed
    }
}

/// Removes the log directories (`<ns>_<name>_<uid>`) of pods whose uid is not wanted;
/// only directories made before `listed_at` (a pod that came since is not gone).
pub fn remove_pod_logs(
    pod_log_dir: &Path,
    wanted: &dyn Fn(&str) -> bool,
    listed_at: Option<std::time::SystemTime>,
) {
    for entry in std::fs::read_dir(pod_log_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        // Only what the kubelet made: `<namespace>_<name>_<uid>` directories (none of
        // the three may hold an underscore).
        let parts: Vec<&str> = name.split('_').collect();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            continue;
        }
        let uid = parts[2];
        if wanted(uid) {
            continue;
        }
        if let Some(listed_at) = listed_at {
            let older = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < listed_at);
            if !older {
                continue;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "removing a gone pod's logs");
        }
    }
}

/// The restart count a container's next start gets when the runtime has no earlier
/// instance (a recreated sandbox): one past the highest `<n>.log` in its log directory,
/// as upstream's `calcRestartCountByLogDir`.
pub fn restart_count_from_logs(dir: &Path) -> u32 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
            let rest = &name[digits.len()..];
            (rest == ".log" || rest.starts_with(".log."))
                .then(|| digits.parse::<u32>().ok())
                .flatten()
        })
        .map(|n| n.saturating_add(1))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_counts_come_from_the_highest_log_file() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(restart_count_from_logs(&dir.path().join("missing")), 0);
        for name in ["0.log", "3.log", "2.log.20240101-000000", "x.log", "7.txt"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        std::fs::create_dir(dir.path().join("9.log")).expect("dir");
        assert_eq!(restart_count_from_logs(dir.path()), 4);
    }

    #[test]
    fn log_directories_of_gone_pods_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        for name in [
            "default_web_u1",
            "kube-system_dns_u2",
            "default_old_u3",
            "lost+found",
            "a_b",
        ] {
            std::fs::create_dir(dir.path().join(name)).expect("dir");
        }
        std::fs::write(dir.path().join("x_y_u4"), "").expect("file");
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        remove_pod_logs(dir.path(), &|uid| uid != "u3", Some(later));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "a_b",
                "default_web_u1",
                "kube-system_dns_u2",
                "lost+found",
                "x_y_u4"
            ]
        );
        // Directories newer than the listing stay.
        let earlier = std::time::SystemTime::now() - Duration::from_secs(60);
        remove_pod_logs(dir.path(), &|_| false, Some(earlier));
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 5);
    }
}
