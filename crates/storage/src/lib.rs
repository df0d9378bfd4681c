//! Revisioned key-value storage for the Skiff API server.
//!
//! Kubernetes keeps all cluster state in a store shaped like etcd's v3 KV: one global
//! revision that grows with every write, compare-and-swap on a key's last modification
//! revision, reads at an older revision, and watches that replay history from a revision.
//! The API server builds resourceVersion, optimistic concurrency and watch on exactly
//! these primitives, so this crate offers them and nothing more, behind one trait
//! ([`Store`]) with two backends:
//!
//! - [`embedded::Embedded`]: the default, a revision log on top of redb in the data
//!   directory, with group commit (see `docs/adr/0001-embedded-store-engine.md`).
//! - [`etcd::EtcdStore`]: a real etcd cluster over the v3 gRPC API.
//!
//! Both are checked by one conformance suite (`tests/conformance.rs`).
//!
//! Semantics follow etcd: revisions start at 1 on an empty store, every successful write
//! gets its own new revision, `compact(r)` forgets history older than `r` (reads and
//! watches from below `r` fail with [`Error::Compacted`]), and a watch started at revision
//! `r` delivers every event with revision >= `r`, in order, exactly once.

pub mod embedded;
mod error;
pub mod etcd;
mod types;

pub use error::{Error, Result};
pub use types::{
    Event, EventKind, KeyRange, KeyValue, MAX_KEY_BYTES, MAX_VALUE_BYTES, RangeResponse, Revision,
    WatchStream,
};

use async_trait::async_trait;
use bytes::Bytes;

/// The storage contract the API server is written against.
///
/// Keys are opaque bytes (the API server uses `/registry/<resource>/<ns>/<name>`); values
/// are opaque bytes. Every method is safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of one key at `revision` (`None`: the current revision).
    async fn get(&self, key: &[u8], revision: Option<Revision>) -> Result<Option<KeyValue>>;

    /// Keys in `range` in ascending key order, at `revision` (`None`: current), at most
    /// `limit` of them (`None` or 0: all). The response names the revision it was read at;
    /// pass it back with `range.continue_after(next_key)` to page consistently.
    async fn range(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
        limit: Option<usize>,
    ) -> Result<RangeResponse>;

    /// Creates `key` only if it does not exist. Returns the new revision, or
    /// [`Error::AlreadyExists`].
    async fn create(&self, key: &[u8], value: Bytes) -> Result<Revision>;

    /// Replaces `key` only if its last modification revision is `expected`. Returns the new
    /// revision, or [`Error::Conflict`] carrying the current value (`None` if the key is gone)
    /// so the caller can retry without another read.
    async fn update(&self, key: &[u8], value: Bytes, expected: Revision) -> Result<Revision>;

    /// Deletes `key`, if `expected` is given only when its last modification revision
    /// matches. Returns the deletion revision and the deleted value; [`Error::NotFound`] if
    /// absent, [`Error::Conflict`] on a revision mismatch.
    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)>;

    /// Streams every change in `range` with revision >= `start` (0: changes after now), in
    /// revision order, each exactly once. Fails at once (or later, as a stream item) with
    /// [`Error::Compacted`] when history from `start` is gone.
    async fn watch(&self, range: &KeyRange, start: Revision) -> Result<WatchStream>;

    /// Forgets history older than `revision`. Compacting at or below an earlier compaction
    /// is a no-op; above the current revision is [`Error::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The newest committed revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// The revision history begins at: reads below it fail with [`Error::Compacted`].
    async fn compacted_revision(&self) -> Result<Revision>;

    /// `Ok` when the store can serve reads and writes.
    async fn health(&self) -> Result<()>;
}

/// Every key in `range`, read page by page at one consistent revision (the first
/// page's); the response carries that revision and `more == false`.
pub async fn range_all(store: &dyn Store, range: &KeyRange) -> Result<RangeResponse> {
    let mut all = RangeResponse::default();
    let mut page_range = range.clone();
    let mut revision = None;
    loop {
        let page = store.range(&page_range, revision, Some(10_000)).await?;
        revision = Some(page.revision);
        all.revision = page.revision;
        let next = page.next_page(&page_range);
        all.kvs.extend(page.kvs);
        match next {
            Some(n) => page_range = n,
            None => return Ok(all),
        }
    }
}

/// Checks a key and value against the limits every backend shares, so a bad write is
/// refused with the same error whichever backend is in use.
pub(crate) fn check_write(key: &[u8], value: Option<&[u8]>) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey("key must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey(format!(
            "key is {} bytes, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if let Some(value) = value
        && value.len() > MAX_VALUE_BYTES
    {
        return Err(Error::ValueTooLarge {
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}
