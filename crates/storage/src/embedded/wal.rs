//! The write-ahead log: what makes a group commit durable with one append and one
//! `fdatasync`.
//!
//! redb commits durably only by rewriting and syncing a dozen B-tree pages per commit,
//! which capped the store near 1 ms per commit. Instead each group commit appends one
//! record (the batch's effects) here and syncs it; redb then commits the same batch
//! without syncing, and a periodic checkpoint (one durable redb commit) makes the log
//! redundant so it can be emptied. On open, records newer than redb's revision are
//! replayed.
//!
//! Record framing: `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`, where
//! the payload starts with the batch's first revision. A record that is cut short or
//! whose checksum does not match is a torn tail from a crash mid-append: it and
//! everything after it are ignored, never replayed. Such a record was never acknowledged,
//! because acknowledgement waits for the sync that follows the append.
//!
//! The file is preallocated with zeros and overwritten in place from the start after
//! each checkpoint, as etcd's WAL preallocates its segments: a sync then flushes data
//! only, with no file-size metadata to journal, which halves its cost here. Records left
//! from before a checkpoint are told apart because revisions only grow: parsing stops at
//! the first record whose revision does not follow its predecessor's, and replay skips
//! revisions redb already holds.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// No batch comes near this; a larger length field is damage, not a record.
const MAX_RECORD: usize = 1 << 30;

pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    len: u64,
}

/// Zeroed space kept ahead of the writer.
pub(crate) const PREALLOCATE_BYTES: u64 = 16 << 20;

/// What `Wal::open` found.
pub(crate) struct Recovered {
    pub records: Vec<Vec<u8>>,
}

impl Wal {
    pub(crate) fn open(path: &Path) -> std::io::Result<(Wal, Recovered)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (records, valid) = parse(&data);
        if (data.len() as u64) < PREALLOCATE_BYTES {
            let zeros = vec![0u8; (PREALLOCATE_BYTES - data.len() as u64) as usize];
            file.write_all_at(&zeros, data.len() as u64)?;
            file.sync_all()?;
            // Make the file's directory entry durable too, on first creation.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok((
            Wal {
                file,
                path: path.to_path_buf(),
                len: valid as u64,
            },
            Recovered { records },
        ))
    }

    /// Appends one record and waits until it is on disk.
    pub(crate) fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut record = Vec::with_capacity(HEADER + payload.len());
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::other("write-ahead record too large"))?;
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        // On failure `len` stays put: the next append overwrites whatever part landed.
        self.file.write_all_at(&record, self.len)?;
        self.file.sync_data()?;
        self.len += record.len() as u64;
        Ok(())
    }

    /// Starts over from the beginning once everything in the log is durable elsewhere.
    /// No I/O: what is left in the file is older than anything written next.
    pub(crate) fn reset(&mut self) {
        self.len = 0;
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Splits `data` into records; returns them and the length of the valid prefix.
fn parse(data: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    let mut last_revision = i64::MIN;
    while let Some(header) = data.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(8..=MAX_RECORD).contains(&len) {
            break;
        }
        let Some(payload) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&payload[..8]);
        let first = i64::from_le_bytes(first);
        if first <= last_revision {
            // A record from before the last checkpoint.
            break;
        }
        last_revision = last_revision_of(payload).unwrap_or(first);
        records.push(payload.to_vec());
        at += HEADER + len;
    }
    (records, at)
}

/// The revision of a record's last effect, read without decoding it all.
fn last_revision_of(payload: &[u8]) -> Option<i64> {
    super::effects::decode(payload)
        .ok()?
        .last()
        .map(|e| e.revision())
}

#[cfg(test)]
mod tests {
    use super::super::effects::{Effect, encode};
    use super::*;

    fn record(revision: i64) -> Vec<u8> {
        encode(&[Effect::Delete {
            key: format!("/k{revision}").into_bytes(),
            revision,
        }])
    }

    fn log_with(revisions: &[i64]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let (mut wal, recovered) = Wal::open(&path).expect("open");
        assert!(recovered.records.is_empty());
        for r in revisions {
            wal.append(&record(*r)).expect("append");
        }
        (dir, path)
    }

    #[test]
    fn records_come_back_in_order() {
        let (_dir, path) = log_with(&[1, 2, 3]);
        let (wal, recovered) = Wal::open(&path).expect("reopen");
        assert_eq!(recovered.records, vec![record(1), record(2), record(3)]);
        assert_eq!(wal.len(), 3 * (HEADER + record(1).len()) as u64);
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            PREALLOCATE_BYTES
        );
    }

    #[test]
    fn a_torn_record_is_ignored_and_then_overwritten() {
        let (_dir, path) = log_with(&[1, 2]);
        let size = HEADER + record(1).len();
        let data = std::fs::read(&path).expect("read");
        for keep in 1..size {
            // The second record only partly reached the disk.
            let mut torn = data.clone();
            torn[size + keep..2 * size].fill(0);
            std::fs::write(&path, &torn).expect("write");
            let (mut wal, recovered) = Wal::open(&path).expect("reopen");
            assert_eq!(recovered.records, vec![record(1)], "kept {keep} bytes");
            wal.append(&record(5)).expect("append");
            let (_, recovered) = Wal::open(&path).expect("reopen");
            assert_eq!(recovered.records, vec![record(1), record(5)]);
        }
    }

    #[test]
    fn a_corrupted_record_and_everything_after_it_are_ignored() {
        let (_dir, path) = log_with(&[1, 2, 3]);
        let mut data = std::fs::read(&path).expect("read");
        let size = HEADER + record(1).len();
        data[size + HEADER + 2] ^= 0xff;
        std::fs::write(&path, &data).expect("write");
        let (wal, recovered) = Wal::open(&path).expect("reopen");
        assert_eq!(recovered.records, vec![record(1)]);
        assert_eq!(wal.len(), size as u64);
    }

    #[test]
    fn records_from_before_a_reset_are_not_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path).expect("open");
        for r in [1, 2, 3] {
            wal.append(&record(r)).expect("append");
        }
        wal.reset();
        wal.append(&record(4)).expect("append");
        let (_, recovered) = Wal::open(&path).expect("reopen");
        assert_eq!(recovered.records, vec![record(4)]);
    }
}
