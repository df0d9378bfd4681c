//! The effect of one write, as applied to the tables and as logged in the write-ahead
//! log. Logging effects (not requests) makes replay deterministic: no precondition is
//! evaluated twice, and a replayed write lands exactly as it did the first time.

use bytes::Bytes;
use redb::{Table, WriteTransaction};

use super::read::err;
use super::records::{
    HISTORY, LATEST, LOG, META, META_CURRENT, encode_latest, encode_put, encode_tombstone,
};
use crate::{Error, KeyValue, Result, Revision};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Put(KeyValue),
    Delete { key: Vec<u8>, revision: Revision },
}

impl Effect {
    pub(crate) fn revision(&self) -> Revision {
        match self {
            Effect::Put(kv) => kv.mod_revision,
            Effect::Delete { revision, .. } => *revision,
        }
    }
}

/// The tables one batch of effects writes to.
pub(crate) struct Tables<'t> {
    latest: Table<'t, &'static [u8], &'static [u8]>,
    history: Table<'t, (&'static [u8], i64), &'static [u8]>,
    log: Table<'t, i64, &'static [u8]>,
    meta: Table<'t, &'static str, i64>,
}

impl<'t> Tables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Tables {
            latest: txn
                .open_table(LATEST)
                .map_err(|e| err("opening latest")(e.into()))?,
            history: txn
                .open_table(HISTORY)
                .map_err(|e| err("opening history")(e.into()))?,
            log: txn
                .open_table(LOG)
                .map_err(|e| err("opening log")(e.into()))?,
            meta: txn
                .open_table(META)
                .map_err(|e| err("opening meta")(e.into()))?,
        })
    }

    pub(crate) fn latest(&self) -> &Table<'t, &'static [u8], &'static [u8]> {
        &self.latest
    }

    pub(crate) fn apply(&mut self, effect: &Effect) -> Result<()> {
        match effect {
            Effect::Put(kv) => {
                self.latest
                    .insert(kv.key.as_slice(), encode_latest(kv).as_slice())
                    .map_err(|e| err("writing latest")(e.into()))?;
                self.history
                    .insert(
                        (kv.key.as_slice(), kv.mod_revision),
                        encode_put(kv.create_revision, kv.version, &kv.value).as_slice(),
                    )
                    .map_err(|e| err("writing history")(e.into()))?;
                self.log
                    .insert(kv.mod_revision, kv.key.as_slice())
                    .map_err(|e| err("writing log")(e.into()))?;
            }
            Effect::Delete { key, revision } => {
                self.latest
                    .remove(key.as_slice())
                    .map_err(|e| err("writing latest")(e.into()))?;
                self.history
                    .insert((key.as_slice(), *revision), encode_tombstone().as_slice())
                    .map_err(|e| err("writing history")(e.into()))?;
                self.log
                    .insert(*revision, key.as_slice())
                    .map_err(|e| err("writing log")(e.into()))?;
            }
        }
        Ok(())
    }

    pub(crate) fn set_current(&mut self, revision: Revision) -> Result<()> {
        self.meta
            .insert(META_CURRENT, revision)
            .map_err(|e| err("writing meta")(e.into()))?;
        Ok(())
    }
}

const TAG_PUT: u8 = 0;
const TAG_DELETE: u8 = 1;

/// One write-ahead record: the effects of one group commit.
pub(crate) fn encode(effects: &[Effect]) -> Vec<u8> {
    let size: usize = effects
        .iter()
        .map(|e| match e {
            Effect::Put(kv) => 37 + kv.key.len() + kv.value.len(),
            Effect::Delete { key, .. } => 13 + key.len(),
        })
        .sum();
    let mut out = Vec::with_capacity(size);
    for effect in effects {
        out.extend_from_slice(&effect.revision().to_le_bytes());
        match effect {
            Effect::Put(kv) => {
                out.push(TAG_PUT);
                put_bytes(&mut out, &kv.key);
                out.extend_from_slice(&kv.create_revision.to_le_bytes());
                out.extend_from_slice(&kv.version.to_le_bytes());
                put_bytes(&mut out, &kv.value);
            }
            Effect::Delete { key, .. } => {
                out.push(TAG_DELETE);
                put_bytes(&mut out, key);
            }
        }
    }
    out
}

pub(crate) fn decode(mut raw: &[u8]) -> Result<Vec<Effect>> {
    let bad = || Error::embedded("replaying the write-ahead log", "malformed record");
    let mut effects = Vec::new();
    while !raw.is_empty() {
        let revision = take_i64(&mut raw).ok_or_else(bad)?;
        let (&tag, rest) = raw.split_first().ok_or_else(bad)?;
        raw = rest;
        let key = take_bytes(&mut raw).ok_or_else(bad)?.to_vec();
        effects.push(match tag {
            TAG_PUT => {
                let create_revision = take_i64(&mut raw).ok_or_else(bad)?;
                let version = take_i64(&mut raw).ok_or_else(bad)?;
                let value = Bytes::copy_from_slice(take_bytes(&mut raw).ok_or_else(bad)?);
                Effect::Put(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: revision,
                    version,
                })
            }
            TAG_DELETE => Effect::Delete { key, revision },
            _ => return Err(bad()),
        });
    }
    Ok(effects)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are bounded far below 4 GiB by `check_write`.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take_i64(raw: &mut &[u8]) -> Option<i64> {
    let (head, rest) = raw.split_first_chunk::<8>()?;
    *raw = rest;
    Some(i64::from_le_bytes(*head))
}

fn take_bytes<'a>(raw: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = raw.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let (bytes, rest) = (rest.get(..len)?, rest.get(len..)?);
    *raw = rest;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let effects = vec![
            Effect::Put(KeyValue {
                key: b"/a".to_vec(),
                value: Bytes::from_static(b"v"),
                create_revision: 2,
                mod_revision: 7,
                version: 3,
            }),
            Effect::Delete {
                key: b"/b".to_vec(),
                revision: 8,
            },
        ];
        assert_eq!(decode(&encode(&effects)).expect("decode"), effects);
    }

    #[test]
    fn truncated_records_are_malformed() {
        let raw = encode(&[Effect::Delete {
            key: b"/b".to_vec(),
            revision: 8,
        }]);
        for cut in 1..raw.len() {
            assert!(decode(&raw[..cut]).is_err(), "cut at {cut}");
        }
    }
}
