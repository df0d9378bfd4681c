//! Reads against one redb snapshot: a read transaction sees one committed revision, so
//! every answer is consistent with the revision it reports.

use redb::{ReadTransaction, ReadableTable};

use super::records::{
    self, HISTORY, LATEST, LOG, META, META_COMPACTED, META_CURRENT, decode_latest, decode_version,
};
use crate::{Error, Event, EventKind, KeyRange, KeyValue, RangeResponse, Result, Revision};

pub(crate) fn err(context: &'static str) -> impl FnOnce(redb::Error) -> Error {
    move |e| Error::embedded(context, e)
}

fn corrupt(what: &str, key: &[u8]) -> Error {
    Error::embedded(
        "reading a record",
        format!(
            "corrupt {what} record for key {}",
            String::from_utf8_lossy(key)
        ),
    )
}

/// The (current, compacted) revisions of this snapshot.
pub(crate) fn meta(txn: &ReadTransaction) -> Result<(Revision, Revision)> {
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok((records::INITIAL_REVISION, 0));
        }
        Err(e) => return Err(err("opening meta")(e.into())),
    };
    let read = |name| -> Result<Option<i64>> {
        Ok(table
            .get(name)
            .map_err(|e| err("reading meta")(e.into()))?
            .map(|v| v.value()))
    };
    Ok((
        read(META_CURRENT)?.unwrap_or(records::INITIAL_REVISION),
        read(META_COMPACTED)?.unwrap_or(0),
    ))
}

/// Checks that `revision` can be read in a snapshot at `current` compacted at `compacted`.
pub(crate) fn check_readable(
    revision: Revision,
    current: Revision,
    compacted: Revision,
) -> Result<()> {
    if revision > current {
        return Err(Error::FutureRevision {
            requested: revision,
            current,
        });
    }
    if revision < compacted {
        return Err(Error::Compacted {
            requested: revision,
            compacted,
        });
    }
    Ok(())
}

pub(crate) fn get(
    txn: &ReadTransaction,
    key: &[u8],
    revision: Option<Revision>,
) -> Result<Option<KeyValue>> {
    let (current, compacted) = meta(txn)?;
    match revision {
        Some(rev) if rev > 0 && rev != current => {
            check_readable(rev, current, compacted)?;
            let history = txn
                .open_table(HISTORY)
                .map_err(|e| err("opening history")(e.into()))?;
            version_at(&history, key, rev)
        }
        _ => {
            let latest = txn
                .open_table(LATEST)
                .map_err(|e| err("opening latest")(e.into()))?;
            let raw = latest
                .get(key)
                .map_err(|e| err("reading latest")(e.into()))?;
            raw.map(|raw| decode_latest(key, raw.value()).ok_or_else(|| corrupt("latest", key)))
                .transpose()
        }
    }
}

/// The value of `key` at `revision` from the history table.
pub(crate) fn version_at(
    history: &impl ReadableTable<(&'static [u8], i64), &'static [u8]>,
    key: &[u8],
    revision: Revision,
) -> Result<Option<KeyValue>> {
    let mut iter = history
        .range::<(&[u8], i64)>((key, i64::MIN)..=(key, revision))
        .map_err(|e| err("reading history")(e.into()))?;
    match iter.next_back() {
        None => Ok(None),
        Some(entry) => {
            let (k, v) = entry.map_err(|e| err("reading history")(e.into()))?;
            let rev = k.value().1;
            let version = decode_version(v.value()).ok_or_else(|| corrupt("history", key))?;
            Ok(version.into_kv(key, rev))
        }
    }
}

pub(crate) fn range(
    txn: &ReadTransaction,
    range: &KeyRange,
    revision: Option<Revision>,
    limit: Option<usize>,
) -> Result<RangeResponse> {
    let (current, compacted) = meta(txn)?;
    let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    match revision {
        Some(rev) if rev > 0 && rev != current => {
            check_readable(rev, current, compacted)?;
            historical_range(txn, range, rev, limit)
        }
        _ => latest_range(txn, range, current, limit),
    }
}

fn latest_range(
    txn: &ReadTransaction,
    range: &KeyRange,
    current: Revision,
    limit: usize,
) -> Result<RangeResponse> {
    let latest = txn
        .open_table(LATEST)
        .map_err(|e| err("opening latest")(e.into()))?;
    let start = range.start.as_slice();
    let iter = match &range.end {
        Some(end) => latest.range::<&[u8]>(start..end.as_slice()),
        None => latest.range::<&[u8]>(start..),
    }
    .map_err(|e| err("reading latest")(e.into()))?;
    let mut out = RangeResponse {
        revision: current,
        ..Default::default()
    };
    for entry in iter {
        let (k, v) = entry.map_err(|e| err("reading latest")(e.into()))?;
        if out.kvs.len() == limit {
            out.more = true;
            break;
        }
        let key = k.value();
        out.kvs
            .push(decode_latest(key, v.value()).ok_or_else(|| corrupt("latest", key))?);
    }
    Ok(out)
}

/// Walks every kept version in the range and takes, per key, the newest one at or below
/// `revision`. Compaction bounds how many versions a key has.
fn historical_range(
    txn: &ReadTransaction,
    range: &KeyRange,
    revision: Revision,
    limit: usize,
) -> Result<RangeResponse> {
    let history = txn
        .open_table(HISTORY)
        .map_err(|e| err("opening history")(e.into()))?;
    let start = (range.start.as_slice(), i64::MIN);
    let iter = match &range.end {
        Some(end) => history.range::<(&[u8], i64)>(start..(end.as_slice(), i64::MIN)),
        None => history.range::<(&[u8], i64)>(start..),
    }
    .map_err(|e| err("reading history")(e.into()))?;

    let mut out = RangeResponse {
        revision,
        ..Default::default()
    };
    // The newest version at or below `revision` of the key being walked.
    let mut candidate: Option<(Vec<u8>, Revision, Vec<u8>)> = None;
    let flush = |candidate: Option<(Vec<u8>, Revision, Vec<u8>)>,
                 out: &mut RangeResponse|
     -> Result<bool> {
        let Some((key, rev, raw)) = candidate else {
            return Ok(true);
        };
        let version = decode_version(&raw).ok_or_else(|| corrupt("history", &key))?;
        if let Some(kv) = version.into_kv(&key, rev) {
            if out.kvs.len() == limit {
                out.more = true;
                return Ok(false);
            }
            out.kvs.push(kv);
        }
        Ok(true)
    };
    for entry in iter {
        let (k, v) = entry.map_err(|e| err("reading history")(e.into()))?;
        let (key, rev) = k.value();
        let same_key = candidate.as_ref().is_some_and(|(c, _, _)| c == key);
        if !same_key && !flush(candidate.take(), &mut out)? {
            return Ok(out);
        }
        if rev <= revision {
            candidate = Some((key.to_vec(), rev, v.value().to_vec()));
        } else if !same_key {
            // The key did not exist yet at `revision`; skip its later versions.
            candidate = None;
        }
    }
    flush(candidate, &mut out)?;
    Ok(out)
}

/// The events with revisions in `[from, to]` whose keys fall in `range`, at most `max`
/// revisions' worth. Returns the events and the next revision to read from.
pub(crate) fn events(
    txn: &ReadTransaction,
    range: &KeyRange,
    from: Revision,
    to: Revision,
    max: usize,
) -> Result<(Vec<Event>, Revision)> {
    let (_, compacted) = meta(txn)?;
    if from < compacted {
        return Err(Error::Compacted {
            requested: from,
            compacted,
        });
    }
    let log = txn
        .open_table(LOG)
        .map_err(|e| err("opening log")(e.into()))?;
    let history = txn
        .open_table(HISTORY)
        .map_err(|e| err("opening history")(e.into()))?;
    let mut out = Vec::new();
    let mut next = from;
    let mut taken = 0;
    for entry in log
        .range(from..=to)
        .map_err(|e| err("reading log")(e.into()))?
        .take(max)
    {
        let (rev, key) = entry.map_err(|e| err("reading log")(e.into()))?;
        let (rev, key) = (rev.value(), key.value());
        next = rev + 1;
        taken += 1;
        if !range.contains(key) {
            continue;
        }
        let raw = history
            .get((key, rev))
            .map_err(|e| err("reading history")(e.into()))?
            .ok_or_else(|| corrupt("log", key))?;
        let version = decode_version(raw.value()).ok_or_else(|| corrupt("history", key))?;
        let prev = version_at(&history, key, rev - 1)?;
        out.push(match version.into_kv(key, rev) {
            Some(kv) => Event {
                kind: if kv.create_revision == rev {
                    EventKind::Created
                } else {
                    EventKind::Modified
                },
                kv,
                prev,
            },
            None => Event {
                kind: EventKind::Deleted,
                kv: deleted_kv(key, rev),
                prev,
            },
        });
    }
    if taken < max {
        // The log in [from, to] is exhausted: the caller has caught up to `to`.
        next = to + 1;
    }
    Ok((out, next))
}

/// The `kv` of a deletion event: the key, no value, the deletion revision.
pub(crate) fn deleted_kv(key: &[u8], revision: Revision) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: bytes::Bytes::new(),
        create_revision: 0,
        mod_revision: revision,
        version: 0,
    }
}
