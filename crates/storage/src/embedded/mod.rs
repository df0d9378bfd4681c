//! The embedded backend: the default store, a single file in the data directory.
//!
//! A revision log and MVCC history kept in redb tables (see [`records`] for the layout),
//! written by one committer thread with group commit made durable by a write-ahead log
//! (see [`wal`]), read from redb snapshots, watched through an in-process broadcast
//! backed by the on-disk log. Why redb, and what was
//! measured, is in `docs/adr/0001-embedded-store-engine.md`.

mod committer;
mod effects;
mod read;
mod records;
mod wal;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableDatabase};
use tokio::sync::oneshot;

use crate::{
    Error, KeyRange, KeyValue, RangeResponse, Result, Revision, Store, WatchStream, check_write,
};
use committer::{Committer, Op, Outcome, Request, WriteOp};

/// The database file inside the data directory.
pub const FILE_NAME: &str = "skiff.redb";
/// The write-ahead log beside it.
pub const WAL_FILE_NAME: &str = "skiff.wal";

/// How the embedded store is opened.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory holding the database file; created if missing.
    pub dir: PathBuf,
    /// Page cache size in bytes.
    pub cache_bytes: usize,
    /// Compact history on this schedule, keeping one interval of it (`None`: never).
    pub compaction_interval: Option<Duration>,
}

impl Config {
    /// Defaults for a data directory: 64 MiB of cache, compaction every 5 minutes (as
    /// kube-apiserver compacts etcd).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Config {
            dir: dir.into(),
            cache_bytes: 64 << 20,
            compaction_interval: Some(Duration::from_secs(300)),
        }
    }
}

pub(crate) struct Shared {
    db: Database,
    hub: watch::Hub,
    compacted: AtomicI64,
}

impl Shared {
    fn begin_read(&self) -> Result<ReadTransaction> {
        self.db
            .begin_read()
            .map_err(|e| Error::embedded("beginning a read", e))
    }

    fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }

    fn set_compacted(&self, revision: Revision) {
        self.compacted.store(revision, Ordering::Release);
    }
}

/// The embedded store. Dropping it waits for the committer to finish queued writes.
pub struct Embedded {
    shared: Arc<Shared>,
    writer: Mutex<Option<mpsc::Sender<Request>>>,
    committer: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Embedded {
    /// Opens (or creates) the store. After a crash redb verifies its checksums and
    /// rolls back to the last complete commit, so only acknowledged writes are served; a
    /// file damaged in a way it cannot recover from is refused with [`Error::Open`],
    /// never served.
    pub fn open(config: &Config) -> Result<Self> {
        let path = config.dir.join(FILE_NAME);
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(|e| open_err(e.into()))?;
        let db = open_database(&path, config.cache_bytes).map_err(open_err)?;
        create_tables(&db)?;
        let wal = recover(&db, &config.dir.join(WAL_FILE_NAME))?;
        let (current, compacted) = {
            let txn = db
                .begin_read()
                .map_err(|e| Error::embedded("beginning a read", e))?;
            read::meta(&txn)?
        };
        tracing::debug!(path = %path.display(), current, compacted, "opened embedded store");
        let shared = Arc::new(Shared {
            db,
            hub: watch::Hub::new(current),
            compacted: AtomicI64::new(compacted),
        });
        let (tx, rx) = mpsc::channel();
        let committer = Committer::new(
            shared.clone(),
            rx,
            wal,
            current,
            compacted,
            config.compaction_interval,
        );
        let handle = std::thread::Builder::new()
            .name("skiff-store-committer".into())
            .spawn(move || committer.run())
            .map_err(|e| open_err(e.into()))?;
        Ok(Embedded {
            shared,
            writer: Mutex::new(Some(tx)),
            committer: Some(handle),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit(&self, op: Op) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer
                .as_ref()
                .ok_or(Error::Closed)?
                .send(Request { op, reply })
                .map_err(|_| Error::Closed)?;
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn write(&self, op: WriteOp) -> Result<Outcome> {
        self.submit(Op::Write(op)).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared.begin_read()?))
            .await
            .map_err(|e| Error::embedded("reading", e))?
    }
}

fn open_database(
    path: &Path,
    cache_bytes: usize,
) -> Result<Database, Box<dyn std::error::Error + Send + Sync>> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    // Verify every page on open: a file damaged behind redb's back is refused with an
    // error instead of being trusted (a plain open may panic on it).
    builder.set_check_integrity_on_open(true);
    // redb may panic on some damaged files even so; a server must answer with an error.
    let path = path.to_path_buf();
    let open = std::panic::AssertUnwindSafe(move || builder.create(&path));
    match std::panic::catch_unwind(open) {
        Ok(result) => Ok(result?),
        Err(_) => Err("the database file is damaged (redb panicked while opening it)".into()),
    }
}

/// Replays write-ahead records newer than redb's revision, makes them durable in redb,
/// and returns the emptied log. A torn tail is cut off by [`Wal::open`]: it was never
/// acknowledged.
fn recover(db: &Database, path: &Path) -> Result<wal::Wal> {
    let wal_err = |e: std::io::Error| Error::Open {
        path: path.display().to_string(),
        source: e.into(),
    };
    let (mut wal, recovered) = wal::Wal::open(path).map_err(wal_err)?;
    if recovered.records.is_empty() {
        return Ok(wal);
    }
    let (mut current, _) = {
        let txn = db
            .begin_read()
            .map_err(|e| Error::embedded("beginning a read", e))?;
        read::meta(&txn)?
    };
    let txn = db
        .begin_write()
        .map_err(|e| Error::embedded("replaying the write-ahead log", e))?;
    let mut replayed = 0;
    {
        let mut tables = effects::Tables::open(&txn)?;
        for record in &recovered.records {
            for effect in effects::decode(record)? {
                if effect.revision() > current {
                    tables.apply(&effect)?;
                    current = effect.revision();
                    replayed += 1;
                }
            }
        }
        tables.set_current(current)?;
    }
    txn.commit()
        .map_err(|e| Error::embedded("replaying the write-ahead log", e))?;
    wal.reset();
    tracing::info!(replayed, revision = current, "replayed the write-ahead log");
    Ok(wal)
}

/// Creates the tables on first open, so readers never meet a missing one.
fn create_tables(db: &Database) -> Result<()> {
    let err = |e: redb::Error| Error::embedded("creating tables", e);
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    txn.open_table(records::META).map_err(|e| err(e.into()))?;
    txn.open_table(records::LATEST).map_err(|e| err(e.into()))?;
    txn.open_table(records::HISTORY)
        .map_err(|e| err(e.into()))?;
    txn.open_table(records::LOG).map_err(|e| err(e.into()))?;
    txn.commit().map_err(|e| err(e.into()))
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
    }
}

fn expect_written(outcome: Outcome) -> Result<Revision> {
    match outcome {
        Outcome::Written(rev) => Ok(rev),
        _ => Err(Error::embedded("writing", "unexpected committer outcome")),
    }
}

#[async_trait]
impl Store for Embedded {
    async fn get(&self, key: &[u8], revision: Option<Revision>) -> Result<Option<KeyValue>> {
        let key = key.to_vec();
        self.read(move |txn| read::get(txn, &key, revision)).await
    }

    async fn range(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
        limit: Option<usize>,
    ) -> Result<RangeResponse> {
        let range = range.clone();
        self.read(move |txn| read::range(txn, &range, revision, limit))
            .await
    }

    async fn create(&self, key: &[u8], value: Bytes) -> Result<Revision> {
        check_write(key, Some(&value))?;
        let key = key.to_vec();
        expect_written(self.write(WriteOp::Create { key, value }).await?)
    }

    async fn update(&self, key: &[u8], value: Bytes, expected: Revision) -> Result<Revision> {
        check_write(key, Some(&value))?;
        let key = key.to_vec();
        expect_written(
            self.write(WriteOp::Update {
                key,
                value,
                expected,
            })
            .await?,
        )
    }

    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        check_write(key, None)?;
        let key = key.to_vec();
        match self.write(WriteOp::Delete { key, expected }).await? {
            Outcome::Deleted(rev, prev) => Ok((rev, prev)),
            _ => Err(Error::embedded("deleting", "unexpected committer outcome")),
        }
    }

    async fn watch(&self, range: &KeyRange, start: Revision) -> Result<WatchStream> {
        watch::start(self.shared.clone(), range.clone(), start)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(Op::Compact { revision }).await.map(|_| ())
    }

    /// The revision a read started now would see: at least the last published one (the
    /// watch hub learns of a commit just after readers can see it).
    async fn current_revision(&self) -> Result<Revision> {
        let txn = self.shared.begin_read()?;
        Ok(read::meta(&txn)?.0.max(self.shared.hub.current()))
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted())
    }

    async fn health(&self) -> Result<()> {
        if self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
            || self.committer.as_ref().is_none_or(|h| h.is_finished())
        {
            return Err(Error::Closed);
        }
        self.read(|txn| read::meta(txn).map(|_| ())).await
    }
}
