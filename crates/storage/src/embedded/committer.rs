//! The single writer: group commit and background compaction.
//!
//! Every write goes through one thread. It takes whatever requests are queued (up to a
//! batch limit), applies them in order in ONE redb write transaction, each with its own
//! revision and its own compare-and-swap check, appends the batch's effects to the
//! write-ahead log with one `fdatasync`, commits the redb transaction without a sync, and
//! only then publishes the events and answers the callers. Concurrent writers share one
//! sync instead of paying one each, and no caller hears "ok" before its write is on disk.
//! A checkpoint (a durable redb commit) empties the log now and then.
//!
//! Compaction marks the new floor in one small transaction (so reads below it fail at
//! once) and then prunes history in chunks between write batches, so a large compaction
//! never stalls writers for long.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Durability, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::Shared;
use super::effects::{self, Effect, Tables};
use super::read::{deleted_kv, err};
use super::records::{HISTORY, LOG, META, META_COMPACTED, decode_latest, decode_version};
use super::wal::Wal;
use crate::{Error, Event, EventKind, KeyValue, Result, Revision};

pub(crate) enum Op {
    Write(WriteOp),
    Compact { revision: Revision },
}

pub(crate) enum WriteOp {
    Create {
        key: Vec<u8>,
        value: Bytes,
    },
    Update {
        key: Vec<u8>,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: Vec<u8>,
        expected: Option<Revision>,
    },
}

pub(crate) enum Outcome {
    Written(Revision),
    Deleted(Revision, KeyValue),
    Compacted,
}

pub(crate) type Reply = oneshot::Sender<Result<Outcome>>;

pub(crate) struct Request {
    pub op: Op,
    pub reply: Reply,
}

/// Limits of one group commit.
const MAX_BATCH_REQUESTS: usize = 512;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Log entries examined per compaction transaction.
const COMPACTION_CHUNK: usize = 4096;
/// Checkpoint when the write-ahead log grows past this, bounding replay after a crash.
const CHECKPOINT_BYTES: u64 = super::wal::PREALLOCATE_BYTES;
/// Checkpoint when idle this long with anything in the log.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(10);

pub(crate) struct Committer {
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    wal: Wal,
    /// Set when the log and redb may disagree in memory; every write fails until the
    /// store is reopened (which replays the log).
    failed: Option<String>,
    current: Revision,
    compacted: Revision,
    /// Physical pruning still to do: log entries below `target`, from `cursor` on.
    pruning: Option<Pruning>,
    /// After a failed pruning chunk: do not try again before this.
    prune_retry_at: Option<Instant>,
    auto: Option<AutoCompaction>,
}

struct Pruning {
    target: Revision,
    cursor: Revision,
}

/// Upstream kube-apiserver's policy: every interval, compact to the revision that was
/// current one interval ago, so at least one interval of history is always kept.
struct AutoCompaction {
    interval: Duration,
    next_tick: Instant,
    revision_at_last_tick: Option<Revision>,
}

impl Committer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Request>,
        wal: Wal,
        current: Revision,
        compacted: Revision,
        auto_compaction: Option<Duration>,
    ) -> Self {
        Committer {
            shared,
            rx,
            wal,
            failed: None,
            current,
            compacted,
            // Finish whatever a crash interrupted: pruning is idempotent.
            prune_retry_at: None,
            pruning: (compacted > 0).then_some(Pruning {
                target: compacted,
                cursor: i64::MIN,
            }),
            auto: auto_compaction.map(|interval| AutoCompaction {
                interval,
                next_tick: Instant::now() + interval,
                revision_at_last_tick: None,
            }),
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let first = match self.next_request() {
                Ok(first) => first,
                Err(()) => break,
            };
            let idle = first.is_none();
            if let Some(first) = first {
                self.batch(first);
            }
            match self.prune_chunk() {
                Ok(()) => self.prune_retry_at = None,
                Err(e) => {
                    tracing::warn!(error = %e, "compaction chunk failed; retrying in a second");
                    self.prune_retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            self.auto_compact();
            if self.wal.len() > CHECKPOINT_BYTES || (idle && self.wal.len() > 0) {
                self.checkpoint();
            }
        }
        // Clean shutdown: leave nothing to replay.
        if self.wal.len() > 0 {
            self.checkpoint();
        }
    }

    /// Makes everything committed so far durable in redb and empties the log.
    fn checkpoint(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let result = self
            .begin(Durability::Immediate)
            .and_then(|txn| txn.commit().map_err(|e| err("checkpointing")(e.into())));
        match result {
            Ok(()) => {
                self.wal.reset();
                tracing::debug!(revision = self.current, "checkpoint");
            }
            // The log still holds everything: correct, only slower to reopen.
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; will retry"),
        }
    }

    /// Waits for the next request; `Ok(None)` when there is background work to do instead,
    /// `Err` when every sender is gone.
    fn next_request(&mut self) -> Result<Option<Request>, ()> {
        if self.pruning.is_some() && self.prune_retry_at.is_none_or(|at| Instant::now() >= at) {
            return match self.rx.try_recv() {
                Ok(r) => Ok(Some(r)),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(()),
            };
        }
        let mut timeout = match &self.auto {
            Some(auto) => auto.next_tick.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        if self.wal.len() > 0 {
            timeout = timeout.min(CHECKPOINT_IDLE);
        }
        if let Some(at) = self.prune_retry_at {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Ok(Some(r)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    fn batch(&mut self, first: Request) {
        let mut requests = vec![first];
        let mut bytes = 0;
        while requests.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(r) => {
                    bytes += op_bytes(&r.op);
                    requests.push(r);
                }
                Err(_) => break,
            }
        }
        // A compaction is applied on its own, after the writes queued before it.
        let mut writes = Vec::with_capacity(requests.len());
        for request in requests {
            match request.op {
                Op::Compact { revision } => {
                    self.commit_writes(std::mem::take(&mut writes));
                    let result = self.mark_compaction(revision);
                    let _ = request.reply.send(result.map(|()| Outcome::Compacted));
                }
                Op::Write(op) => writes.push((op, request.reply)),
            }
        }
        self.commit_writes(writes);
    }

    fn commit_writes(&mut self, requests: Vec<(WriteOp, Reply)>) {
        if requests.is_empty() {
            return;
        }
        if let Some(failure) = &self.failed {
            for (_, reply) in requests {
                let _ = reply.send(Err(Error::embedded("writing", failure.clone())));
            }
            return;
        }
        let mut results = Vec::with_capacity(requests.len());
        let mut events = Vec::new();
        let outcome = self.apply(&requests, &mut results, &mut events);
        match outcome {
            Ok(revision) => {
                self.current = revision;
                if !events.is_empty() {
                    self.shared.hub.publish(events, revision);
                }
                for ((_, reply), result) in requests.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                let message = e.to_string();
                for (_, reply) in requests {
                    let _ = reply.send(Err(Error::embedded("committing", message.clone())));
                }
            }
        }
    }

    /// Applies `requests` in one transaction. Returns the revision after the commit.
    fn apply(
        &mut self,
        requests: &[(WriteOp, Reply)],
        results: &mut Vec<Result<Outcome>>,
        events: &mut Vec<Event>,
    ) -> Result<Revision> {
        let txn = self.begin(Durability::None)?;
        let mut revision = self.current;
        let mut effects = Vec::with_capacity(requests.len());
        {
            let mut tables = Tables::open(&txn)?;
            for (op, _) in requests {
                let (key, expected) = match op {
                    WriteOp::Create { key, .. } => (key, None),
                    WriteOp::Update { key, expected, .. } => (key, Some(*expected)),
                    WriteOp::Delete { key, expected } => (key, *expected),
                };
                let current = tables
                    .latest()
                    .get(key.as_slice())
                    .map_err(|e| err("reading latest")(e.into()))?
                    .map(|raw| {
                        decode_latest(key, raw.value()).ok_or_else(|| {
                            Error::embedded("reading latest", "corrupt latest record")
                        })
                    })
                    .transpose()?;
                if let Err(e) = check(op, key, expected, current.as_ref()) {
                    results.push(Err(e));
                    continue;
                }
                revision += 1;
                let (effect, event) = match op {
                    WriteOp::Create { value, .. } | WriteOp::Update { value, .. } => {
                        let kv = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: current
                                .as_ref()
                                .map_or(revision, |c| c.create_revision),
                            mod_revision: revision,
                            version: current.as_ref().map_or(1, |c| c.version + 1),
                        };
                        results.push(Ok(Outcome::Written(revision)));
                        let kind = if current.is_some() {
                            EventKind::Modified
                        } else {
                            EventKind::Created
                        };
                        (
                            Effect::Put(kv.clone()),
                            Event {
                                kind,
                                kv,
                                prev: current,
                            },
                        )
                    }
                    WriteOp::Delete { .. } => {
                        let prev = current
                            .ok_or_else(|| Error::embedded("deleting", "checked key vanished"))?;
                        results.push(Ok(Outcome::Deleted(revision, prev.clone())));
                        (
                            Effect::Delete {
                                key: key.clone(),
                                revision,
                            },
                            Event {
                                kind: EventKind::Deleted,
                                kv: deleted_kv(key, revision),
                                prev: Some(prev),
                            },
                        )
                    }
                };
                tables.apply(&effect)?;
                effects.push(effect);
                events.push(event);
            }
            if !effects.is_empty() {
                tables.set_current(revision)?;
            }
        }
        if effects.is_empty() {
            // Every request failed its check: nothing to make durable.
            txn.abort().map_err(|e| err("aborting")(e.into()))?;
            return Ok(revision);
        }
        // Durable first: if the append fails, the transaction is dropped (rolled back)
        // and every caller hears the error.
        self.wal
            .append(&effects::encode(&effects))
            .map_err(|e| Error::embedded("appending to the write-ahead log", e))?;
        if let Err(e) = txn.commit() {
            // The log holds a batch redb does not: refuse further writes until a reopen
            // replays it, rather than serve a history with a hole.
            // The batch is in the log, so a reopen replays it: its callers get an error
            // that says the outcome is unknown, as for a timeout against etcd.
            let message = format!(
                "outcome unknown: the batch is logged but redb refused it ({e}); the store must be reopened"
            );
            tracing::error!(wal = %self.wal.path().display(), "{message}");
            self.failed = Some(message.clone());
            return Err(Error::embedded("committing", message));
        }
        Ok(revision)
    }

    fn begin(&self, durability: Durability) -> Result<WriteTransaction> {
        let mut txn = self
            .shared
            .db
            .begin_write()
            .map_err(|e| err("beginning a write")(e.into()))?;
        txn.set_durability(durability)
            .map_err(|e| Error::embedded("setting durability", e.to_string()))?;
        Ok(txn)
    }

    /// Records the new compaction floor; pruning follows in the background.
    fn mark_compaction(&mut self, revision: Revision) -> Result<()> {
        if revision > self.current {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.current,
            });
        }
        if revision <= self.compacted {
            return Ok(());
        }
        // Durable on its own (it is rare): a compaction floor must never move back.
        let txn = self.begin(Durability::Immediate)?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| err("opening meta")(e.into()))?;
            meta.insert(META_COMPACTED, revision)
                .map_err(|e| err("writing meta")(e.into()))?;
        }
        txn.commit().map_err(|e| err("committing")(e.into()))?;
        self.compacted = revision;
        self.shared.set_compacted(revision);
        match &mut self.pruning {
            // Start the pass over: a version kept by the earlier pass (the newest below
            // the old floor) may be superseded below the new one, and only a pass in
            // revision order removes it before the tombstone that supersedes it.
            Some(p) => {
                p.target = revision;
                p.cursor = i64::MIN;
            }
            None => {
                self.pruning = Some(Pruning {
                    target: revision,
                    cursor: i64::MIN,
                })
            }
        }
        Ok(())
    }

    /// Prunes one chunk of history below the compaction floor. A version is dropped when
    /// a newer version of its key exists at or below the floor, or when it is a
    /// tombstone: either way no read at or above the floor can see it. Log entries go
    /// with their versions; the newest version of each live key stays, with its log
    /// entry, so the next compaction finds it again.
    fn prune_chunk(&mut self) -> Result<()> {
        if self.prune_retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let Some(pruning) = &self.pruning else {
            return Ok(());
        };
        let (target, cursor) = (pruning.target, pruning.cursor);
        // Pruning needs no sync: after a crash it simply runs again.
        let txn = self.begin(Durability::None)?;
        let next_cursor;
        {
            let mut log = txn
                .open_table(LOG)
                .map_err(|e| err("opening log")(e.into()))?;
            let mut history = txn
                .open_table(HISTORY)
                .map_err(|e| err("opening history")(e.into()))?;
            let mut entries = Vec::new();
            for entry in log
                .range(cursor..target)
                .map_err(|e| err("reading log")(e.into()))?
                .take(COMPACTION_CHUNK)
            {
                let (rev, key) = entry.map_err(|e| err("reading log")(e.into()))?;
                entries.push((rev.value(), key.value().to_vec()));
            }
            next_cursor = if entries.len() < COMPACTION_CHUNK {
                target
            } else {
                entries.last().map_or(target, |(rev, _)| rev + 1)
            };
            for (rev, key) in entries {
                let superseded = history
                    // Exclusive of the floor: a version replaced exactly at the floor stays,
                    // so the event at the floor still has its previous value.
                    .range::<(&[u8], i64)>((key.as_slice(), rev + 1)..(key.as_slice(), target))
                    .map_err(|e| err("reading history")(e.into()))?
                    .next()
                    .is_some();
                let tombstone = match history
                    .get((key.as_slice(), rev))
                    .map_err(|e| err("reading history")(e.into()))?
                {
                    Some(raw) => decode_version(raw.value()).is_none_or(|v| v.is_tombstone()),
                    None => true,
                };
                if superseded || tombstone {
                    history
                        .remove((key.as_slice(), rev))
                        .map_err(|e| err("pruning history")(e.into()))?;
                    log.remove(rev).map_err(|e| err("pruning log")(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| err("committing")(e.into()))?;
        if next_cursor >= target {
            tracing::debug!(revision = target, "compaction finished");
            self.pruning = None;
        } else if let Some(p) = &mut self.pruning {
            p.cursor = next_cursor;
        }
        Ok(())
    }

    fn auto_compact(&mut self) {
        let Some(auto) = &mut self.auto else {
            return;
        };
        let now = Instant::now();
        if now < auto.next_tick {
            return;
        }
        auto.next_tick = now + auto.interval;
        let target = auto.revision_at_last_tick.replace(self.current);
        if let Some(target) = target
            && target > self.compacted
        {
            match self.mark_compaction(target) {
                Ok(()) => tracing::info!(revision = target, "compacted the embedded store"),
                Err(e) => tracing::warn!(error = %e, "automatic compaction failed"),
            }
        }
    }
}

/// Checks a write's precondition against the key's current value.
fn check(
    op: &WriteOp,
    key: &[u8],
    expected: Option<Revision>,
    current: Option<&KeyValue>,
) -> Result<()> {
    match (op, current) {
        (WriteOp::Create { .. }, Some(_)) => Err(Error::AlreadyExists { key: key.to_vec() }),
        (WriteOp::Create { .. }, None) => Ok(()),
        (WriteOp::Delete { .. }, None) => Err(Error::NotFound { key: key.to_vec() }),
        (_, current) => match expected {
            Some(expected) if current.map(|c| c.mod_revision) != Some(expected) => {
                Err(Error::Conflict {
                    key: key.to_vec(),
                    expected,
                    current: current.cloned().map(Box::new),
                })
            }
            _ => Ok(()),
        },
    }
}

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Write(WriteOp::Create { key, value } | WriteOp::Update { key, value, .. }) => {
            key.len() + value.len()
        }
        Op::Write(WriteOp::Delete { key, .. }) => key.len(),
        Op::Compact { .. } => 0,
    }
}
