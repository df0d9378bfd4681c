//! The on-disk layout of the embedded store: four redb tables and their value encodings.
//!
//! - `meta`: the current and the compacted revision.
//! - `latest`: key -> the key's current value (fast path for reads at the head).
//! - `history`: (key, revision) -> the value written at that revision, or a tombstone.
//!   Reads at older revisions and watch replay use it; compaction prunes it.
//! - `log`: revision -> key: the order of writes, for watch replay and compaction.
//!
//! Values are encoded by hand (fixed-width little-endian integers, then the value bytes):
//! the layout is tiny and stable, and avoids a serialisation dependency on the hot path.

use bytes::Bytes;
use redb::TableDefinition;

use crate::{KeyValue, Revision};

pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
pub(crate) const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
pub(crate) const HISTORY: TableDefinition<(&[u8], i64), &[u8]> = TableDefinition::new("history");
pub(crate) const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");

pub(crate) const META_CURRENT: &str = "current";
pub(crate) const META_COMPACTED: &str = "compacted";
/// An empty store is at revision 1, as etcd is.
pub(crate) const INITIAL_REVISION: Revision = 1;

/// `latest` value: create_revision, mod_revision, version, value.
pub(crate) fn encode_latest(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

pub(crate) fn decode_latest(key: &[u8], raw: &[u8]) -> Option<KeyValue> {
    let (create_revision, rest) = take_i64(raw)?;
    let (mod_revision, rest) = take_i64(rest)?;
    let (version, value) = take_i64(rest)?;
    Some(KeyValue {
        key: key.to_vec(),
        value: Bytes::copy_from_slice(value),
        create_revision,
        mod_revision,
        version,
    })
}

/// One entry of `history`.
#[derive(Debug)]
pub(crate) enum Version {
    Put {
        create_revision: Revision,
        version: i64,
        value: Bytes,
    },
    Tombstone,
}

const TAG_PUT: u8 = 0;
const TAG_TOMBSTONE: u8 = 1;

pub(crate) fn encode_put(create_revision: Revision, version: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + value.len());
    out.push(TAG_PUT);
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn encode_tombstone() -> Vec<u8> {
    vec![TAG_TOMBSTONE]
}

pub(crate) fn decode_version(raw: &[u8]) -> Option<Version> {
    match raw.split_first()? {
        (&TAG_TOMBSTONE, []) => Some(Version::Tombstone),
        (&TAG_PUT, rest) => {
            let (create_revision, rest) = take_i64(rest)?;
            let (version, value) = take_i64(rest)?;
            Some(Version::Put {
                create_revision,
                version,
                value: Bytes::copy_from_slice(value),
            })
        }
        _ => None,
    }
}

impl Version {
    /// The key-value this version stands for at `revision`, or `None` for a tombstone.
    pub(crate) fn into_kv(self, key: &[u8], revision: Revision) -> Option<KeyValue> {
        match self {
            Version::Put {
                create_revision,
                version,
                value,
            } => Some(KeyValue {
                key: key.to_vec(),
                value,
                create_revision,
                mod_revision: revision,
                version,
            }),
            Version::Tombstone => None,
        }
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        matches!(self, Version::Tombstone)
    }
}

fn take_i64(raw: &[u8]) -> Option<(i64, &[u8])> {
    let (head, rest) = raw.split_first_chunk::<8>()?;
    Some((i64::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_round_trips() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: Bytes::from_static(b"value"),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
        };
        assert_eq!(decode_latest(b"k", &encode_latest(&kv)), Some(kv));
    }

    #[test]
    fn versions_round_trip_and_reject_garbage() {
        match decode_version(&encode_put(5, 2, b"v")) {
            Some(Version::Put {
                create_revision: 5,
                version: 2,
                value,
            }) => assert_eq!(&value[..], b"v"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode_version(&encode_tombstone()).is_some_and(|v| v.is_tombstone()));
        assert!(decode_version(&[TAG_PUT, 1, 2]).is_none());
        assert!(decode_version(&[7]).is_none());
        assert!(decode_version(&[]).is_none());
    }
}
