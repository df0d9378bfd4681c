//! A work queue of object keys: each key is queued once however often it is added, a key
//! being worked on is not handed out twice, and keys can come back after a delay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    busy: HashSet<String>,
    /// Added while busy: queue again when done.
    dirty: HashSet<String>,
    /// Failed syncs in a row per key, for the retry back-off.
    failures: HashMap<String, u32>,
}

/// Upstream's per-item back-off: 5 ms doubling per failure, at most 1000 s.
const RETRY_BASE: Duration = Duration::from_millis(5);
const RETRY_MAX: Duration = Duration::from_secs(1000);

#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    /// Keys are handed out only once this is true (the controller's caches are
    /// synced, as upstream's `WaitForCacheSync`).
    ready: tokio::sync::watch::Receiver<bool>,
    ready_tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for WorkQueue {
    fn default() -> Self {
        Self::with_gate(true)
    }
}

impl WorkQueue {
    fn with_gate(open: bool) -> Self {
        let (ready_tx, ready) = tokio::sync::watch::channel(open);
        WorkQueue {
            inner: Arc::default(),
            notify: Arc::default(),
            ready,
            ready_tx: Arc::new(ready_tx),
        }
    }

    /// A queue that hands out nothing until [`WorkQueue::open`].
    pub fn gated() -> Self {
        Self::with_gate(false)
    }

    pub fn open(&self) {
        self.ready_tx.send_replace(true);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: &str) {
        let mut inner = self.lock();
        if inner.busy.contains(key) {
            inner.dirty.insert(key.to_string());
            return;
        }
        if inner.queued.insert(key.to_string()) {
            inner.queue.push_back(key.to_string());
            drop(inner);
            self.notify.notify_one();
        }
    }

    pub fn add_after(&self, key: &str, delay: Duration) {
        let queue = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&key);
        });
    }

    /// The next key; waits for one (and for the queue to open).
    pub async fn next(&self) -> String {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|open| *open).await;
        loop {
            {
                let mut inner = self.lock();
                if let Some(key) = inner.queue.pop_front() {
                    inner.queued.remove(&key);
                    inner.busy.insert(key.clone());
                    return key;
                }
            }
            self.notify.notified().await;
        }
    }

    /// How long to wait before retrying `key` after another failure.
    pub fn retry_delay(&self, key: &str) -> Duration {
        let mut inner = self.lock();
        let failures = inner.failures.entry(key.to_string()).or_default();
        let delay = RETRY_BASE.saturating_mul(1u32 << (*failures).min(20));
        *failures += 1;
        delay.min(RETRY_MAX)
    }

    /// Forgets `key`'s failures after a successful sync.
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    pub fn done(&self, key: &str) {
        let again = {
            let mut inner = self.lock();
            inner.busy.remove(key);
            inner.dirty.remove(key)
        };
        if again {
            self.add(key);
        }
    }
}

/// A controller's worker tasks: aborted when the controller stops (its future is
/// dropped when leadership is lost), so no worker keeps writing from a stale cache.
#[derive(Default)]
pub struct Workers(Vec<tokio::task::JoinHandle<()>>);

impl Workers {
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task));
    }

    /// `count` workers taking keys off `queue` and syncing them; a sync says when to
    /// look at the key again, and a failed one is retried with a per-key back-off.
    pub fn sync_loop<F, Fut>(
        &mut self,
        count: usize,
        queue: &WorkQueue,
        what: &'static str,
        sync: F,
    ) where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Duration>, kube::Error>> + Send,
    {
        for _ in 0..count {
            let (queue, sync) = (queue.clone(), sync.clone());
            self.spawn(async move {
                loop {
                    let key = queue.next().await;
                    match sync(key.clone()).await {
                        Ok(again) => {
                            queue.forget(&key);
                            if let Some(again) = again {
                                queue.add_after(&key, again);
                            }
                        }
                        Err(e) => {
                            let delay = queue.retry_delay(&key);
                            tracing::warn!(controller = what, key = %key, error = %e, ?delay, "sync failed; retrying");
                            queue.add_after(&key, delay);
                        }
                    }
                    queue.done(&key);
                }
            });
        }
    }
}

/// Every object of kind `K`, kept in `writer`'s store; yields each object as it changes.
pub fn reflect<K>(
    client: &kube::Client,
    writer: kube::runtime::reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + use<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    kube::runtime::reflector::reflector(
        writer,
        kube::runtime::watcher::watcher(
            kube::Api::<K>::all(client.clone()),
            kube::runtime::watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects()
}

/// Opens `queue` once every store in `stores` has its first full list, so no sync
/// ever acts on a cache that is still loading (which would, say, see no pods and make
/// them all again).
pub async fn open_when_synced(queue: WorkQueue, stores: Vec<Box<dyn Synced>>) {
    for store in stores {
        store.synced().await;
    }
    queue.open();
}

/// A reflector store that can say when it has its first full list.
pub trait Synced: Send {
    fn synced(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

impl<K> Synced for kube::runtime::reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn synced(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self.wait_until_ready().await;
        })
    }
}

/// Queues every object of `store` every `period`: objects whose dependents vanished
/// while a watch was re-listing (no event says so) are looked at again.
pub async fn resync<K>(
    queue: WorkQueue,
    store: kube::runtime::reflector::Store<K>,
    period: Duration,
) where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        for object in store.state() {
            queue.add(&object_key(&*object));
        }
    }
}

/// Runs a controller's event `loops` with its queue opened once `stores` have synced and
/// every object of `primary` queued again every [`RESYNC`].
pub async fn drive<K>(
    queue: &WorkQueue,
    stores: Vec<Box<dyn Synced>>,
    primary: kube::runtime::reflector::Store<K>,
    loops: impl std::future::Future,
) where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    futures::future::join3(
        loops,
        open_when_synced(queue.clone(), stores),
        resync(queue.clone(), primary, RESYNC),
    )
    .await;
}

/// How often controllers look at all their objects again.
pub const RESYNC: Duration = Duration::from_secs(60);

/// The key controllers queue: `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// An object's key.
pub fn meta_key(meta: &kube::api::ObjectMeta) -> String {
    key(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// An object's key.
pub fn object_key<K: kube::Resource>(object: &K) -> String {
    meta_key(object.meta())
}

/// The key of `object`'s controller, when that is of `kind`.
pub fn owner_key<K: kube::Resource>(object: &K, kind: &str) -> Option<String> {
    let meta = object.meta();
    let owner = crate::controller_of(meta).filter(|o| o.kind == kind)?;
    Some(key(
        meta.namespace.as_deref().unwrap_or_default(),
        &owner.name,
    ))
}

impl Drop for Workers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_requeued_when_added_while_busy() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.next().await, "a");
        q.add("a");
        assert_eq!(q.next().await, "b");
        q.done("a");
        assert_eq!(q.next().await, "a");
    }

    #[test]
    fn failures_back_off_per_key_until_forgotten() {
        let q = WorkQueue::default();
        let delays: Vec<Duration> = (0..4).map(|_| q.retry_delay("a")).collect();
        assert_eq!(delays, [5, 10, 20, 40].map(Duration::from_millis).to_vec());
        assert_eq!(q.retry_delay("b"), Duration::from_millis(5));
        for _ in 0..40 {
            q.retry_delay("a");
        }
        assert_eq!(q.retry_delay("a"), RETRY_MAX);
        q.forget("a");
        assert_eq!(q.retry_delay("a"), Duration::from_millis(5));
    }
}
