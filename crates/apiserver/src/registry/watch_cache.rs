//! The watch cache: one datastore watch per kind feeds an in-memory copy of the kind's
//! objects and a window of its recent changes, so LISTs at resourceVersion 0 and every
//! watch (from "now", or from a resourceVersion still in the window) cost no datastore
//! reads, however many clients ask (upstream's `cacher`).
//!
//! Each watcher has its own bounded queue. The feed never waits for a watcher: one whose
//! queue is full is too slow and is closed (its client re-watches from the last
//! resourceVersion it saw, as client-go does), so a slow watcher never delays the others.
//! A watch from before the window falls back to the datastore's own history.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use skiff_storage::{Event, EventKind, KeyRange, KeyValue, Revision, Store, WatchStream};
use tokio::sync::{OnceCell, mpsc};

/// Changes kept per kind for watches that resume from a resourceVersion.
pub(crate) const WINDOW: usize = 4096;
/// Changes queued per watcher before it counts as too slow.
pub(crate) const WATCHER_QUEUE: usize = 1024;

pub(crate) struct WatchCache {
    store: Arc<dyn Store>,
    caches: Mutex<HashMap<String, Arc<OnceCell<Arc<Cache>>>>>,
    window: usize,
    queue: usize,
}

/// The objects under one kind's key prefix at `revision`.
pub(crate) struct Snapshot {
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
}

/// A registered watcher: what it missed since the requested revision (or a snapshot to
/// start from), then every later change.
pub(crate) struct Subscription {
    pub snapshot: Option<Snapshot>,
    pub backlog: Vec<Arc<Event>>,
    pub events: mpsc::Receiver<Arc<Event>>,
}

struct Cache {
    state: Mutex<State>,
}

struct State {
    revision: Revision,
    objects: BTreeMap<Vec<u8>, KeyValue>,
    events: VecDeque<Arc<Event>>,
    /// Every change from this revision on is in `events`.
    floor: Revision,
    watchers: Vec<Watcher>,
    /// The datastore watch ended: the next request builds a new cache.
    failed: bool,
}

struct Watcher {
    after: Revision,
    tx: mpsc::Sender<Arc<Event>>,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way
        // that matters more than losing the cache; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WatchCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_sizes(store, WINDOW, WATCHER_QUEUE)
    }

    pub fn with_sizes(store: Arc<dyn Store>, window: usize, queue: usize) -> Self {
        WatchCache {
            store,
            caches: Mutex::new(HashMap::new()),
            window,
            queue,
        }
    }

    /// The cache of the kind stored under `prefix`, built (one LIST, one watch) on first
    /// use, rebuilt after its datastore watch failed.
    async fn cache(&self, prefix: &str) -> skiff_storage::Result<Arc<Cache>> {
        for _ in 0..2 {
            let cell = {
                let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
                caches.entry(prefix.to_string()).or_default().clone()
            };
            let cache = cell.get_or_try_init(|| self.build(prefix)).await?.clone();
            if !cache.lock().failed {
                return Ok(cache);
            }
            let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
            if caches.get(prefix).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                caches.remove(prefix);
            }
        }
        // The datastore's watch failed twice in a row: it is going away.
        Err(skiff_storage::Error::Closed)
    }

    async fn build(&self, prefix: &str) -> skiff_storage::Result<Arc<Cache>> {
        let range = KeyRange::prefix(prefix.as_bytes().to_vec());
        let all = skiff_storage::range_all(self.store.as_ref(), &range).await?;
        let revision = all.revision;
        let objects: BTreeMap<Vec<u8>, KeyValue> =
            all.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        let stream = self.store.watch(&range, revision + 1).await?;
        let cache = Arc::new(Cache {
            state: Mutex::new(State {
                revision,
                objects,
                events: VecDeque::new(),
                floor: revision + 1,
                watchers: Vec::new(),
                failed: false,
            }),
        });
        tokio::spawn(feed(cache.clone(), stream, self.window));
        Ok(cache)
    }

    /// The objects in `range` (inside the kind's `prefix`) as the cache has them.
    pub async fn list(&self, prefix: &str, range: &KeyRange) -> skiff_storage::Result<Snapshot> {
        loop {
            let cache = self.cache(prefix).await?;
            let state = cache.lock();
            if !state.failed {
                return Ok(snapshot(&state, range));
            }
        }
    }

    /// Watches `range` inside the kind's `prefix` from `from`. `None` when asked for
    /// changes older than the window: the caller watches the datastore instead.
    ///
    /// Watchers receive every change of the kind (the watch filters by range), so its
    /// bookmarks follow the kind's progress, not only the changes it forwards.
    pub async fn watch(
        &self,
        prefix: &str,
        range: KeyRange,
        from: From,
    ) -> skiff_storage::Result<Option<Subscription>> {
        let cache = loop {
            let cache = self.cache(prefix).await?;
            if !cache.lock().failed {
                break cache;
            }
        };
        // A snapshot at least as new as a revision the cache has not reached yet is
        // read from the datastore, at its current revision.
        let consistent = match from {
            From::AtLeast(min) if cache.lock().revision < min => {
                Some(self.read_snapshot(&range).await?)
            }
            _ => None,
        };
        let mut state = cache.lock();
        if state.failed {
            return Err(skiff_storage::Error::Closed);
        }
        let (snapshot, after) = match (from, consistent) {
            (_, Some(snap)) => {
                let revision = snap.revision;
                (Some(snap), revision)
            }
            (From::Cached | From::AtLeast(_), None) => {
                let snap = snapshot(&state, &range);
                let revision = snap.revision;
                (Some(snap), revision)
            }
            (From::After(after), None) => (None, after),
        };
        let backlog = if after >= state.revision {
            Vec::new()
        } else if after.saturating_add(1) >= state.floor {
            state
                .events
                .iter()
                .filter(|e| e.revision() > after && range.contains(&e.kv.key))
                .cloned()
                .collect()
        } else {
            return Ok(None);
        };
        let after = after.max(state.revision);
        let (tx, rx) = mpsc::channel(self.queue);
        // Watchers that went away while the kind was quiet.
        state.watchers.retain(|w| !w.tx.is_closed());
        state.watchers.push(Watcher { after, tx });
        Ok(Some(Subscription {
            snapshot,
            backlog,
            events: rx,
        }))
    }

    /// The objects in `range` read from the datastore at its current revision.
    async fn read_snapshot(&self, range: &KeyRange) -> skiff_storage::Result<Snapshot> {
        let all = skiff_storage::range_all(self.store.as_ref(), range).await?;
        Ok(Snapshot {
            revision: all.revision,
            kvs: all.kvs,
        })
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum From {
    /// A snapshot of the cache as it is (resourceVersion "0": any version).
    Cached,
    /// A snapshot at least as new as this revision.
    AtLeast(Revision),
    /// The changes after this revision, no snapshot.
    After(Revision),
}

fn snapshot(state: &State, range: &KeyRange) -> Snapshot {
    let kvs = state
        .objects
        .range(range.start.clone()..)
        .take_while(|(k, _)| range.contains(k))
        .map(|(_, kv)| kv.clone())
        .collect();
    Snapshot {
        revision: state.revision,
        kvs,
    }
}

/// Applies the datastore's changes to the cache and hands each to its watchers.
async fn feed(cache: Arc<Cache>, mut stream: WatchStream, window: usize) {
    while let Some(item) = stream.next().await {
        let Ok(mut event) = item else {
            break;
        };
        let mut state = cache.lock();
        // The cache knows every previous value, even those etcd no longer keeps.
        event.prev = match event.kind {
            EventKind::Deleted => state.objects.remove(&event.kv.key),
            _ => state.objects.insert(event.kv.key.clone(), event.kv.clone()),
        };
        let revision = event.revision();
        state.revision = revision;
        let event = Arc::new(event);
        state.events.push_back(event.clone());
        while state.events.len() > window {
            if let Some(old) = state.events.pop_front() {
                state.floor = old.revision() + 1;
            }
        }
        state.watchers.retain(|w| {
            if revision <= w.after {
                return !w.tx.is_closed();
            }
            // Full: too slow, closed. Closed: the client went away.
            w.tx.try_send(event.clone()).is_ok()
        });
    }
    let mut state = cache.lock();
    state.failed = true;
    state.watchers.clear();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;
    use skiff_storage::embedded::{Config, Embedded};

    use super::*;

    /// The embedded store, counting reads.
    struct Counting {
        inner: Embedded,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Store for Counting {
        async fn get(
            &self,
            key: &[u8],
            rev: Option<Revision>,
        ) -> skiff_storage::Result<Option<KeyValue>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.get(key, rev).await
        }
        async fn range(
            &self,
            range: &KeyRange,
            rev: Option<Revision>,
            limit: Option<usize>,
        ) -> skiff_storage::Result<skiff_storage::RangeResponse> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.range(range, rev, limit).await
        }
        async fn create(&self, key: &[u8], value: Bytes) -> skiff_storage::Result<Revision> {
            self.inner.create(key, value).await
        }
        async fn update(
            &self,
            key: &[u8],
            value: Bytes,
            expected: Revision,
        ) -> skiff_storage::Result<Revision> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(
            &self,
            key: &[u8],
            expected: Option<Revision>,
        ) -> skiff_storage::Result<(Revision, KeyValue)> {
            self.inner.delete(key, expected).await
        }
        async fn watch(
            &self,
            range: &KeyRange,
            start: Revision,
        ) -> skiff_storage::Result<WatchStream> {
            self.inner.watch(range, start).await
        }
        async fn compact(&self, revision: Revision) -> skiff_storage::Result<()> {
            self.inner.compact(revision).await
        }
        async fn current_revision(&self) -> skiff_storage::Result<Revision> {
            self.inner.current_revision().await
        }
        async fn compacted_revision(&self) -> skiff_storage::Result<Revision> {
            self.inner.compacted_revision().await
        }
        async fn health(&self) -> skiff_storage::Result<()> {
            self.inner.health().await
        }
    }

    async fn counting() -> (tempfile::TempDir, Arc<Counting>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = Embedded::open(&Config::new(dir.path())).expect("store");
        (
            dir,
            Arc::new(Counting {
                inner,
                reads: AtomicUsize::new(0),
            }),
        )
    }

    const PREFIX: &str = "/registry/configmaps/";

    async fn put(store: &Counting, name: &str) -> Revision {
        let key = format!("{PREFIX}default/{name}");
        store
            .create(key.as_bytes(), Bytes::from_static(b"{}"))
            .await
            .expect("create")
    }

    async fn next(sub: &mut Subscription) -> Arc<Event> {
        tokio::time::timeout(std::time::Duration::from_secs(10), sub.events.recv())
            .await
            .expect("an event in time")
            .expect("open")
    }

    #[tokio::test]
    async fn many_lists_and_watches_read_the_datastore_once() {
        let (_dir, store) = counting().await;
        for i in 0..10 {
            put(&store, &format!("cm{i}")).await;
        }
        let cache = WatchCache::new(store.clone());
        let range = KeyRange::prefix(format!("{PREFIX}default/"));
        for _ in 0..100 {
            let snap = cache.list(PREFIX, &range).await.expect("list");
            assert_eq!(snap.kvs.len(), 10);
        }
        let mut subs = Vec::new();
        for _ in 0..50 {
            let sub = cache
                .watch(PREFIX, range.clone(), From::Cached)
                .await
                .expect("watch");
            subs.push(sub.expect("cached"));
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        let revision = put(&store, "late").await;
        for sub in &mut subs {
            assert_eq!(next(sub).await.revision(), revision);
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        // A watch resuming inside the window gets what it missed from memory.
        let mut resumed = cache
            .watch(PREFIX, range.clone(), From::After(revision - 1))
            .await
            .expect("watch")
            .expect("in the window");
        assert_eq!(resumed.backlog.len(), 1);
        assert_eq!(
            resumed.backlog[0].kv.key,
            format!("{PREFIX}default/late").into_bytes()
        );
        let deleted = store
            .delete(format!("{PREFIX}default/late").as_bytes(), None)
            .await
            .expect("delete")
            .0;
        let event = next(&mut resumed).await;
        assert_eq!(
            (event.kind, event.revision()),
            (EventKind::Deleted, deleted)
        );
        assert!(event.prev.is_some(), "the cache supplies the deleted value");
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_slow_watcher_is_closed_and_does_not_hold_up_the_others() {
        let (_dir, store) = counting().await;
        let cache = WatchCache::with_sizes(store.clone(), 8, 4);
        let range = KeyRange::prefix(PREFIX);
        let mut slow = cache
            .watch(PREFIX, range.clone(), From::Cached)
            .await
            .expect("w")
            .expect("c");
        let mut fast = cache
            .watch(PREFIX, range.clone(), From::Cached)
            .await
            .expect("w")
            .expect("c");
        let mut last = 0;
        for i in 0..20 {
            last = put(&store, &format!("cm{i}")).await;
            assert_eq!(next(&mut fast).await.revision(), last);
        }
        // The slow one got its queue's worth, then was closed.
        let mut got = 0;
        while slow.events.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, 4);
        // Resuming from before the window is left to the datastore.
        assert!(
            cache
                .watch(PREFIX, range.clone(), From::After(1))
                .await
                .expect("w")
                .is_none()
        );
        assert!(
            cache
                .watch(PREFIX, range.clone(), From::After(last - 2))
                .await
                .expect("w")
                .is_some()
        );
        // A snapshot at least as new as the datastore's head, which the cache may not
        // have reached, is consistent.
        let current = store.current_revision().await.expect("revision");
        let sub = cache
            .watch(PREFIX, range, From::AtLeast(current))
            .await
            .expect("w")
            .expect("subscribed");
        let snapshot = sub.snapshot.expect("snapshot");
        assert!(snapshot.revision >= current);
        assert_eq!(snapshot.kvs.len(), 20);
    }
}
