//! The address allocator: one file per address in use, named by the address and holding
//! who has it (container, interface, host ports), under an exclusive lock of the
//! network's directory. Files are created with O_EXCL and synced before ADD answers, so
//! an address survives a crash or reboot of the node and is never handed out twice;
//! allocation goes round from the last address given, so a freed address is not
//! reused at once (a late packet for the old pod does not reach the new one).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::{NetConf, PortMapping};
use crate::{Error, code};

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
}

/// The network's records, locked for as long as this lives.
pub struct Allocator {
    dir: PathBuf,
    _lock: Flock<File>,
}

const LAST: &str = "last_reserved_ip";
const LOCK: &str = "lock";

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        code::IO,
        format!("address allocator: {what} {}", path.display()),
        e.to_string(),
    )
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

impl Allocator {
    /// Takes the network's lock (waiting for other calls to finish).
    pub fn open(dir: &Path) -> Result<Allocator, Error> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io("locking", &path, e))?;
        Ok(Allocator {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Every address in use and its holder.
    pub fn all(&self) -> Vec<(Ipv4Addr, Record)> {
        let mut records: Vec<(Ipv4Addr, Record)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let ip: Ipv4Addr = entry.file_name().to_str()?.parse().ok()?;
                let bytes = std::fs::read(entry.path()).ok()?;
                Some((ip, serde_json::from_slice(&bytes).ok()?))
            })
            .collect();
        records.sort_by_key(|(ip, _)| *ip);
        records
    }

    /// The address `container`'s `ifname` holds.
    pub fn find(&self, container: &str, ifname: &str) -> Option<(Ipv4Addr, Record)> {
        self.all()
            .into_iter()
            .find(|(_, r)| r.container_id == container && r.ifname == ifname)
    }

    /// The addresses this network hands out, in order.
    fn range(conf: &NetConf) -> (u32, u32) {
        let start = conf
            .range_start
            .map(u32::from)
            .unwrap_or(u32::from(conf.subnet.network()) + 1);
        let end = conf
            .range_end
            .map(u32::from)
            .unwrap_or(u32::from(conf.subnet.broadcast()) - 1);
        (start, end)
    }

    /// How many addresses are left.
    pub fn free(&self, conf: &NetConf) -> u64 {
        let (start, end) = Allocator::range(conf);
        let gateway = u32::from(conf.gateway);
        let size =
            u64::from(end.saturating_sub(start)) + 1 - u64::from((start..=end).contains(&gateway));
        let used = self
            .all()
            .iter()
            .filter(|(ip, _)| (start..=end).contains(&u32::from(*ip)) && *ip != conf.gateway)
            .count() as u64;
        size.saturating_sub(used)
    }

    /// An address for `record`'s container: the one it already holds, or the next free
    /// one after the last handed out.
    pub fn allocate(&self, conf: &NetConf, record: &Record) -> Result<Ipv4Addr, Error> {
        if let Some((ip, _)) = self.find(&record.container_id, &record.ifname) {
            self.write(ip, record, false)?;
            return Ok(ip);
        }
        let (start, end) = Allocator::range(conf);
        if start > end {
            return Err(Error::new(
                code::INVALID_CONFIG,
                "invalid network configuration: rangeStart is after rangeEnd",
                "",
            ));
        }
        let last = std::fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|l| (start..=end).contains(l))
            .unwrap_or(end);
        let size = end - start + 1;
        for step in 1..=size {
            let candidate = Ipv4Addr::from(start + (last - start + step) % size);
            if candidate == conf.gateway {
                continue;
            }
            if self.write(candidate, record, true)? {
                let path = self.dir.join(LAST);
                let temporary = self.dir.join(format!(".{LAST}.tmp"));
                std::fs::write(&temporary, candidate.to_string())
                    .and_then(|()| std::fs::rename(&temporary, &path))
                    .map_err(|e| io("writing", &path, e))?;
                return Ok(candidate);
            }
        }
        Err(Error::new(
            code::TRY_AGAIN,
            format!(
                "no free address in {} for network {:?}",
                conf.subnet, conf.name
            ),
            format!("all {size} addresses are in use"),
        ))
    }

    /// Writes `ip`'s record; with `exclusive`, only if the address is free (false if
    /// taken).
    fn write(&self, ip: Ipv4Addr, record: &Record, exclusive: bool) -> Result<bool, Error> {
        let path = self.dir.join(ip.to_string());
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        let mut file = if exclusive {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(io("creating", &path, e)),
            }
        } else {
            File::create(&path).map_err(|e| io("writing", &path, e))?
        };
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", &path, e))?;
        sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Gives back what `container`'s `ifname` holds (nothing held is not an error).
    pub fn release(
        &self,
        container: &str,
        ifname: &str,
    ) -> Result<Option<(Ipv4Addr, Record)>, Error> {
        let Some((ip, record)) = self.find(container, ifname) else {
            return Ok(None);
        };
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path, e)),
        }
        sync_dir(&self.dir)?;
        Ok(Some((ip, record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path, extra: &str) -> NetConf {
        NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"n","subnet":"10.5.0.0/29","dataDir":"{}"{extra}}}"#,
                dir.display()
            )
            .as_bytes(),
        )
        .expect("conf")
    }

    fn holder(id: &str) -> Record {
        Record {
            container_id: id.into(),
            ifname: "eth0".into(),
            port_mappings: Vec::new(),
        }
    }

    #[test]
    fn addresses_are_unique_persistent_and_go_round() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = conf(dir.path(), "");
        let a = Allocator::open(&conf.ipam_dir()).expect("open");
        // 10.5.0.0/29: .1 is the gateway, .2-.6 for pods.
        assert_eq!(a.free(&conf), 5);
        let first = a.allocate(&conf, &holder("a")).expect("a");
        assert_eq!(first, Ipv4Addr::new(10, 5, 0, 2));
        // The same container asking again keeps its address.
        assert_eq!(a.allocate(&conf, &holder("a")).expect("again"), first);
        let second = a.allocate(&conf, &holder("b")).expect("b");
        assert_eq!(second, Ipv4Addr::new(10, 5, 0, 3));
        drop(a);

        // Another process (a restart) sees the same records.
        let a = Allocator::open(&conf.ipam_dir()).expect("reopen");
        assert_eq!(a.find("b", "eth0").map(|(ip, _)| ip), Some(second));
        assert_eq!(
            a.release("a", "eth0").expect("release").map(|(ip, _)| ip),
            Some(first)
        );
        assert_eq!(a.release("a", "eth0").expect("twice"), None);
        // A freed address is not reused at once.
        let third = a.allocate(&conf, &holder("c")).expect("c");
        assert_eq!(third, Ipv4Addr::new(10, 5, 0, 4));
        for id in ["d", "e", "f"] {
            a.allocate(&conf, &holder(id)).expect(id);
        }
        assert_eq!(a.free(&conf), 0);
        let full = a.allocate(&conf, &holder("g")).expect_err("full");
        assert_eq!(full.code, 11);
        let mut held: Vec<Ipv4Addr> = a.all().into_iter().map(|(ip, _)| ip).collect();
        held.dedup();
        assert_eq!(held.len(), 5, "{held:?}");
        assert!(!held.contains(&conf.gateway));
    }

    #[test]
    fn ranges_are_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = conf(
            dir.path(),
            r#","rangeStart":"10.5.0.5","rangeEnd":"10.5.0.6""#,
        );
        let a = Allocator::open(&conf.ipam_dir()).expect("open");
        assert_eq!(a.free(&conf), 2);
        let ips: Vec<Ipv4Addr> = ["x", "y"]
            .iter()
            .map(|id| a.allocate(&conf, &holder(id)).expect("ip"))
            .collect();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 5, 0, 5), Ipv4Addr::new(10, 5, 0, 6)]
        );
    }
}
